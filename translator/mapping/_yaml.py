"""Load a mapping file as plain data plus the line of every node.

Only the YAML core schema is accepted: scalars, lists and string-keyed mappings.
Tags that construct objects are refused, duplicate keys are refused, and alias expansion
is bounded, so a hostile file can neither run code nor exhaust memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from translator.errors import Problem

#: Alias expansion beyond this many nodes is treated as a "billion laughs" attack.
MAX_NODES = 100_000

_PLAIN_TAGS = frozenset("tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null"))
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"

YamlPath = tuple[str | int, ...]

_YAML12_FLOAT = re.compile(r"^[-+]?(?:\.\d+|\d+(?:\.\d*)?)[eE][-+]?\d+$")

#: Where the mapping language takes numbers: only there does an unquoted `1e-3` (a string
#: to YAML 1.1) become the number people mean; a description "1e5" stays text.
_NUMERIC_KEYS = frozenset(
    {"scale", "offset", "default", "value", "stale_after_s", "max_bytes", "max_series_per_metric"}
    | {"min", "max"}  # range:
)
_NUMERIC_LISTS_AND_MAPS = frozenset({"buckets", "map"})


_QUOTE = "a JSONPath inside {...} must be quoted, e.g. "
#: What PyYAML's messages for the commonest slips mean, said for a person editing a mapping.
_YAML_HINTS = (
    (
        "expected <block end>",
        "this line is indented differently from the keys above it; the keys of one mapping "
        "must start in the same column",
    ),
    (
        "mapping values are not allowed here",
        "a ':' where a value was expected; is this key indented further than the keys above "
        "it, or does a value contain ': ' (then quote it)?",
    ),
    # Inside a {...} flow mapping a plain value cannot hold '{', '[' or '*': a JSONPath
    # there ($.losses.{split}, $.gpus[0], $.loss[*]) must be quoted.
    ("expected ',' or '}', but got '{'", _QUOTE + "path: '$.losses.{split}'"),
    ("expected ',' or '}', but got '['", _QUOTE + "path: '$.gpus[0]'"),
    (
        "expected alphabetic or numeric character, but found ']'",
        "'*' starts a YAML alias; " + _QUOTE + "count: '$.loss[*]'",
    ),
)


def _numeric_place(path: YamlPath) -> bool:
    if path and path[-1] in _NUMERIC_KEYS:
        return True
    return len(path) >= 2 and path[-2] in _NUMERIC_LISTS_AND_MAPS


def format_path(path: YamlPath) -> str:
    """``('metrics', 2, 'unit')`` -> ``metrics[2].unit``; odd keys are quoted."""
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part}" if out else part)
        else:
            out.append(f'["{part}"]')
    return "".join(out)


@dataclass(frozen=True, slots=True)
class LoadedYaml:
    data: Any
    lines: dict[YamlPath, int]
    key_lines: dict[YamlPath, int]

    def line_of(self, path: YamlPath) -> int | None:
        """The line of the key naming ``path`` (or of the node), else of its nearest ancestor."""
        while True:
            line = self.key_lines.get(path) or self.lines.get(path)
            if line is not None:
                return line
            if not path:
                return None
            path = path[:-1]


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.nodes = 0
        self.lines: dict[YamlPath, int] = {}
        self.key_lines: dict[YamlPath, int] = {}
        self.problems: list[Problem] = []
        self._scalars = yaml.SafeLoader("")

    def problem(self, node: yaml.Node, path: YamlPath, message: str) -> None:
        self.problems.append(
            Problem(self.file, node.start_mark.line + 1, format_path(path), message)
        )

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge(node)
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _PLAIN_TAGS:
                self.problem(node, path, f"YAML tag {node.tag!r} is not allowed; use a plain value")
                return None
            value = self._scalars.construct_object(node)
            if (
                node.style is None
                and isinstance(value, str)
                and _YAML12_FLOAT.match(value)
                and _numeric_place(path)
            ):
                return float(value)  # YAML 1.1 reads `1e-3` as a string; people mean a number
            return value
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self.problem(node, path, f"YAML tag {node.tag!r} is not allowed; use a plain list")
                return None
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                self.problem(
                    node, path, f"YAML tag {node.tag!r} is not allowed; use a plain mapping"
                )
                return None
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag in (
                    "tag:yaml.org,2002:merge",
                ):
                    self.problem(key_node, path, "keys must be plain strings (no '<<' merge keys)")
                    continue
                key = self._scalars.construct_object(key_node)
                if isinstance(key, bool):  # `true:` as a key (enum maps) means "true"
                    key = "true" if key else "false"
                elif isinstance(key, int | float):
                    key = str(key)
                if not isinstance(key, str):
                    self.problem(key_node, path, "keys must be strings")
                    continue
                if key in out:
                    self.problem(key_node, (*path, key), "duplicate key; each key may appear once")
                    continue
                self.key_lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key))
            return out
        raise AssertionError(f"unknown YAML node {node!r}")  # pragma: no cover


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


def load_yaml(text: str, file: str) -> tuple[LoadedYaml | None, list[Problem]]:
    """Parse ``text``; return the data with its line map, or the problems found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        for start, hint in _YAML_HINTS:
            if what.startswith(start) and mark is not None:
                what += f" (column {mark.column + 1}): {hint}"
        return None, [Problem(file, line, "", f"not valid YAML: {what}")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, None, "", f"not valid YAML: {exc}")]
    if root is None:
        return None, [
            Problem(file, 1, "", "the file is empty; expected a mapping with 'version: 1'")
        ]
    builder = _Builder(file)
    try:
        data = builder.build(root, ())
    except _TooLarge as exc:
        return None, [
            Problem(
                file,
                exc.node.start_mark.line + 1,
                "",
                f"the mapping expands to more than {MAX_NODES} nodes "
                "(YAML anchors and aliases?); refusing to load it",
            )
        ]
    except RecursionError:
        return None, [Problem(file, None, "", "the mapping is nested too deeply")]
    if builder.problems:
        return None, builder.problems
    return LoadedYaml(data, builder.lines, builder.key_lines), []
