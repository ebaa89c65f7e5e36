"""Check a loaded mapping against the JSON Schema, with messages written for people.

Kept apart from the compiler because jsonschema costs about 9 MB of resident memory:
the long-running sidecar has ``ml-metrics-bridge validate`` run this in a child process
(``files.py``) and never imports it itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema

from translator.errors import Problem
from translator.mapping._yaml import LoadedYaml, YamlPath, format_path
from translator.mapping.compiler import schema


@cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(schema())


def schema_problems(loaded: LoadedYaml, file: str) -> Iterator[Problem]:
    seen: set[tuple[int | None, str, str]] = set()
    for error in _validator().iter_errors(loaded.data):
        for path, message in _explain(error):
            problem = Problem(file, loaded.line_of(path), format_path(path), message)
            key = (problem.line, problem.yaml_path, problem.message)
            if key not in seen:
                seen.add(key)
                yield problem


def _home_of(key: str) -> str | None:
    """Where a key misplaced at another level belongs (``unit:`` at the top: on a metric)."""
    defs = schema()["$defs"]
    for name, where in (("metric", "a metric (an entry of metrics:)"), ("source", "source:")):
        if key in defs[name]["properties"]:
            return where
    return None


def _explain(error: jsonschema.ValidationError) -> Iterator[tuple[YamlPath, str]]:
    path: YamlPath = tuple(error.absolute_path)
    kind = error.validator
    last = path[-1] if path else None
    # jsonschema types these as unions with "Unset"; for errors from iter_errors they are set.
    instance: Any = error.instance
    expected: Any = error.validator_value
    rule: Any = error.schema
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(rule.get("properties", {}))
        if not allowed:  # an attribute map: any key, but the values were wrong
            yield path, str(error.message)
            return
        for key in sorted(set(instance) - set(allowed)):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            home = _home_of(key)
            if home is not None and not close:
                hint = f"{key!r} belongs on {home}"
            yield (*path, key), f"unknown key {key!r}; {hint}"
    elif kind == "oneOf" and rule is schema()["$defs"]["metric"]:
        if isinstance(instance, dict) and "path" in instance and "count" in instance:
            yield (
                path,
                "give either 'path' (the value) or 'count' (how many values a path selects), "
                "not both",
            )
        else:
            yield path, "missing required key 'path' (the JSONPath of the value) or 'count'"
    elif kind == "oneOf" and rule is schema()["$defs"]["attributeValue"]:
        yield (
            path,
            (
                "an attribute is a string, number or boolean, or a mapping with exactly one of "
                "'value', 'env', 'path', 'root_path' (and optionally 'default')"
            ),
        )
    elif kind == "required":
        missing = [k for k in expected if k not in instance]
        for key in missing:
            hint = {
                "mode": "; counters say mode: total (the file holds a running total) "
                "or mode: increment (each record holds an amount to add)",
                "buckets": "; histograms need explicit bucket boundaries, e.g. [10, 50, 100]",
                "version": "; start the file with 'version: 1'",
            }.get(key, "")
            yield path, f"missing required key {key!r}{hint}"
    elif kind == "not" and isinstance(expected, dict):
        (key,) = expected.get("required", ["?"])
        kind_name = instance.get("type") if isinstance(instance, dict) else None
        if kind_name not in ("gauge", "counter", "updowncounter", "histogram"):
            return  # the unknown type is reported on its own; this would only echo it
        applies = "counter and updowncounter" if key == "mode" else "histogram"
        yield (*path, key), f"{key!r} applies only to {applies}, not to {kind_name}"
    elif kind == "pattern" and last == "name":
        yield (
            path,
            (
                f"{instance!r} is not a valid OpenTelemetry instrument name: start with a "
                "letter, then letters, digits, '_', '.', '-' or '/', at most 255 characters"
            ),
        )
    elif kind == "pattern" and last == "unit":
        yield (
            path,
            f"{instance!r} is not a valid unit: printable ASCII, at most 63 characters",
        )
    elif kind == "type" and isinstance(instance, dict) and rule.get("pattern") == "^\\$":
        # path: {metric} -- YAML reads an unquoted {...} as a mapping, not as text
        keys = ", ".join(map(str, instance))
        yield (
            path,
            f"{{{keys}}} is a YAML mapping, not a JSONPath; a JSONPath starts with '$' and is "
            "quoted when it holds {, [ or *, e.g. \"$['{metric}']\"",
        )
    elif kind == "pattern" and expected == "^\\$":
        yield path, f"{instance!r} is not a JSONPath; it must start with '$' (e.g. $.loss)"
    elif kind == "minProperties" and last == "range":
        yield path, "range needs min, max or both, e.g. range: {min: 0}"
    elif kind == "enum":
        allowed = [str(v) for v in expected]
        close = difflib.get_close_matches(str(instance), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield path, f"{instance!r} is not one of: {', '.join(allowed)}{hint}"
    elif kind == "const" and path == ("version",):
        yield path, f"version {instance!r} is not supported; this bridge reads version 1"
    else:
        yield path, str(error.message)
