"""Load, validate and compile a mapping file into a :class:`~.plan.Plan`.

Validation reports every problem at once, each as ``FILE:LINE: yaml.path: message``:
first the YAML itself, then the JSON Schema, then what a schema cannot say (JSONPath
syntax, environment variables, instruments declared twice with different types).
``validate`` and a reload run exactly this code, so a mapping that validates will run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any

from translator.errors import MappingError, Problem
from translator.mapping._yaml import LoadedYaml, YamlPath, format_path, load_yaml
from translator.mapping.paths import Path, PathSyntaxError, compile_path, counting
from translator.mapping.plan import (
    Attribute,
    AttributeValue,
    Condition,
    CounterMode,
    InstrumentKind,
    InstrumentSpec,
    MetricRule,
    Plan,
    Scope,
    SourceFormat,
    SourceSpec,
    ValueSpec,
)

DEFAULT_SOURCE_PATH = "/shared/metrics/current.json"
_MAX_MAPPING_BYTES = 4 * 1024 * 1024


@cache
def schema() -> dict[str, Any]:
    """The mapping JSON Schema shipped inside the package (same file as schemas/)."""
    text = resources.files("translator").joinpath("data/mapping.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load_plan(
    file: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    default_source_path: str = DEFAULT_SOURCE_PATH,
    check_schema: bool = True,
) -> Plan:
    """Read and compile a mapping file; raise :class:`MappingError` listing every problem."""
    name = os.fspath(file)
    try:
        with open(name, "rb") as fh:
            raw = fh.read(_MAX_MAPPING_BYTES + 1)
    except OSError as exc:
        problem = Problem(name, None, "", f"cannot read the mapping: {exc.strerror}")
        raise MappingError([problem]) from None
    if len(raw) > _MAX_MAPPING_BYTES:
        raise MappingError(
            [Problem(name, None, "", f"the mapping is larger than {_MAX_MAPPING_BYTES} bytes")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MappingError(
            [Problem(name, None, "", f"not UTF-8 (byte {exc.start}); save the file as UTF-8")]
        ) from None
    return compile_mapping(
        text,
        name,
        environ=os.environ if environ is None else environ,
        default_source_path=default_source_path,
        check_schema=check_schema,
    )


def compile_mapping(
    text: str,
    file: str,
    *,
    environ: Mapping[str, str],
    default_source_path: str = DEFAULT_SOURCE_PATH,
    check_schema: bool = True,
) -> Plan:
    """Compile mapping ``text``. ``check_schema=False`` is for a file that was just
    validated by ``ml-metrics-bridge validate`` in a child process (see ``files.py``)."""
    loaded, problems = load_yaml(text, file)
    if loaded is None:
        raise MappingError(problems)
    if check_schema:
        from translator.mapping.schema_check import schema_problems

        problems = list(schema_problems(loaded, file))
        if problems:
            in_schema = list(problems)
            # The compiler needs a schema-valid file; its JSONPath checks do not, and a bad
            # path should not wait for the other mistakes to be fixed to be reported.
            reported = {(p.line, p.yaml_path) for p in problems}
            problems += [
                p for p in _path_problems(loaded, file) if (p.line, p.yaml_path) not in reported
            ]
            reported = {(p.line, p.yaml_path) for p in problems}
            problems += [
                p
                for p in _rule_problems(loaded, file, in_schema, environ, default_source_path)
                if (p.line, p.yaml_path) not in reported
            ]
            raise MappingError(_in_file_order(problems))
    compiler = _Compiler(loaded, file, environ, default_source_path)
    try:
        plan = compiler.compile()
    except (KeyError, TypeError, ValueError, AttributeError):
        if check_schema:
            raise
        # Validated out of process, then changed before we read it: try the next version.
        raise MappingError(
            [Problem(file, None, "", "changed while being loaded and no longer validates")]
        ) from None
    if compiler.problems:
        raise MappingError(_in_file_order(compiler.problems))
    return plan


#: Keys whose string values are JSONPaths, wherever they appear in a mapping.
_PATH_KEYS = frozenset(
    {"path", "root_path", "for_each", "count", "exists", "absent", "version_path", "records"}
)


def _path_problems(loaded: LoadedYaml, file: str) -> list[Problem]:
    """JSONPath syntax errors anywhere in the file, found without trusting its structure."""
    problems = []

    def visit(node: Any, where: YamlPath) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                is_file_path = where == ("source",) and key == "path"
                if key in _PATH_KEYS and isinstance(value, str) and not is_file_path:
                    if value.startswith("$"):  # the schema reports the others
                        check(value, (*where, key))
                elif key == "record_key" and isinstance(value, list):
                    for i, item in enumerate(value):
                        if isinstance(item, str) and item.startswith("$"):
                            check(item, (*where, key, i))
                else:
                    visit(value, (*where, key))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                visit(item, (*where, i))

    def check(text: str, where: YamlPath) -> None:
        try:
            compile_path(text)
        except PathSyntaxError as exc:
            problems.append(Problem(file, loaded.line_of(where), format_path(where), str(exc)))

    visit(loaded.data, ())
    return problems


def _rule_problems(
    loaded: LoadedYaml,
    file: str,
    schema_problems: list[Problem],
    environ: Mapping[str, str],
    default_path: str,
) -> list[Problem]:
    """What the compiler finds in each metric the schema found nothing wrong with (an
    upside-down range, a filter in a value path...), so that a file's mistakes are all
    reported at once rather than these only after the schema's are fixed."""
    metrics = loaded.data.get("metrics") if isinstance(loaded.data, dict) else None
    if not isinstance(metrics, list):
        return []
    compiler = _Compiler(loaded, file, environ, default_path)
    for index, spec in enumerate(metrics):
        where = f"metrics[{index}]"
        if any(
            p.yaml_path == where or p.yaml_path.startswith((f"{where}.", f"{where}["))
            for p in schema_problems
        ):
            continue
        try:
            compiler.rule(index, spec, [])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a shape only the schema's messages describe
    return compiler.problems


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.yaml_path))


# --- semantic compilation ------------------------------------------------------------------


class _Compiler:
    def __init__(
        self, loaded: LoadedYaml, file: str, environ: Mapping[str, str], default_path: str
    ) -> None:
        self.loaded = loaded
        self.file = file
        self.environ = environ
        self.default_path = default_path
        self.problems: list[Problem] = []
        # Equal attribute lists become one tuple, so the engine can resolve them once per
        # record for every rule that shares them (identity is the cache key).
        self._interned: dict[tuple[Attribute, ...], tuple[Attribute, ...]] = {}

    def problem(self, path: YamlPath, message: str) -> None:
        self.problems.append(
            Problem(self.file, self.loaded.line_of(path), format_path(path), message)
        )

    def path(
        self, text: str, where: YamlPath, *, singular: bool = False, patterns: bool = False
    ) -> Path | None:
        """Compile ``text`` at ``where``. ``singular``: it must select one value (a value or
        attribute); ``patterns``: ``{name}`` key patterns are allowed (path, for_each)."""
        try:
            compiled = compile_path(text)
        except PathSyntaxError as exc:
            self.problem(where, str(exc))
            return None
        if compiled.names and not patterns:
            self.problem(
                where,
                f"{text!r} has a key pattern ({{{compiled.names[0]}}}); key patterns are "
                "allowed in a metric's path and for_each only",
            )
            return None
        if singular and not compiled.singular:
            if compiled.uses_filter:
                reason = "uses a filter ([?(...)]), which may select many values"
            else:
                reason = "may select many values"
            self.problem(
                where,
                f"{text!r} {reason}; a value or attribute path must select one (filters and "
                "wildcards belong in for_each, count, when: {exists/absent} and "
                "source.records)",
            )
            return None
        return compiled

    def compile(self) -> Plan:
        data = self.loaded.data
        source = self.source(data.get("source", {}))
        resource = self.attributes(data.get("resource", {}), ("resource",), Scope.ROOT)
        common = self.attributes(data.get("attributes", {}), ("attributes",), Scope.RECORD)
        max_series = data.get("limits", {}).get("max_series_per_metric", 1000)
        rules = [self.rule(i, spec, common) for i, spec in enumerate(data["metrics"])]
        instruments = self.instruments(data["metrics"], [r for r in rules if r is not None])
        return Plan(
            mapping_file=self.file,
            source=source,
            resource=tuple(resource),
            rules=tuple(r for r in rules if r is not None),
            instruments=instruments,
            max_series=max_series,
        )

    def source(self, spec: dict[str, Any]) -> SourceSpec:
        where: YamlPath = ("source",)
        fmt = SourceFormat(spec.get("format", "document"))
        if fmt is not SourceFormat.DOCUMENT:
            for key in ("version_path", "records", "record_key"):
                if key in spec:
                    self.problem((*where, key), f"{key!r} applies only to format: document")
        elif "start_at" in spec:
            self.problem((*where, "start_at"), "'start_at' applies only to format: jsonl or csv")
        if "record_key" in spec and "records" not in spec:
            self.problem((*where, "record_key"), "'record_key' needs 'records' (the history array)")
        version_path = records = None
        if "version_path" in spec:
            version_path = self.path(spec["version_path"], (*where, "version_path"), singular=True)
        if "records" in spec:
            records = self.path(spec["records"], (*where, "records"))
        start_time_path = None
        if "start_time_path" in spec:
            start_time_path = self.path(
                spec["start_time_path"], (*where, "start_time_path"), singular=True
            )
        record_key = tuple(
            p
            for i, text in enumerate(spec.get("record_key", []))
            if (p := self.path(text, (*where, "record_key", i), singular=True)) is not None
        )
        return SourceSpec(
            path=spec.get("path", self.default_path),
            path_from_mapping="path" in spec,
            format=fmt,
            version_path=version_path,
            records=records,
            record_key=record_key,
            start_at_end=spec.get("start_at", "beginning") == "end",
            # Parsing costs up to ~33x the document's size in memory (small objects; arrays
            # of numbers ~7x): 1 MiB stays inside the shipped pod limit (README, Settings).
            max_bytes=spec.get("max_bytes", 1024 * 1024),
            stale_after_s=float(spec.get("stale_after_s", 300)),
            start_time_path=start_time_path,
        )

    def attributes(
        self, spec: dict[str, Any], where: YamlPath, scope: Scope = Scope.ELEMENT
    ) -> list[Attribute]:
        """``scope`` is what a plain ``path`` is evaluated on; ``root_path`` is always ROOT."""
        out = []
        for key, value in spec.items():
            attribute = self.attribute(key, value, (*where, key), scope)
            if attribute is not None:
                out.append(attribute)
        return out

    def attribute(self, key: str, value: Any, where: YamlPath, scope: Scope) -> Attribute | None:
        if not isinstance(value, dict):
            return Attribute(key, constant=value)
        default = value.get("default")
        if "value" in value:
            return Attribute(key, constant=value["value"])
        if "env" in value:
            name = value["env"]
            found = self.environ.get(name)
            if found is None and default is None:
                self.problem(
                    where, f"environment variable {name} is not set and no 'default' is given"
                )
                return None
            return Attribute(key, constant=found if found is not None else default)
        text = str(value.get("path", value.get("root_path")))
        path = self.path(text, (*where, "path" if "path" in value else "root_path"), singular=True)
        if path is None:
            return None
        if "root_path" in value:
            scope = Scope.ROOT
        return Attribute(key, path=path, scope=scope, default=default)

    def rule(self, index: int, spec: dict[str, Any], common: list[Attribute]) -> MetricRule | None:
        where: YamlPath = ("metrics", index)
        kind = InstrumentKind(spec["type"])
        count_before = len(self.problems)
        value_path = self.value_path(spec, where)
        for_each = None
        if "for_each" in spec:
            for_each = self.path(spec["for_each"], (*where, "for_each"), patterns=True)
        when = self.condition(spec["when"], (*where, "when")) if "when" in spec else None
        buckets = None
        if "buckets" in spec:
            buckets = tuple(float(b) for b in spec["buckets"])
            if not all(math.isfinite(b) for b in buckets) or any(
                a >= b for a, b in itertools.pairwise(buckets)
            ):
                self.problem(
                    (*where, "buckets"), "bucket boundaries must be finite and strictly increasing"
                )
        own = self.attributes(spec.get("attributes", {}), (*where, "attributes"))
        merged = {a.key: a for a in common} | {a.key: a for a in own}
        placeholders = [n for p in (for_each, value_path) if p is not None for n in p.names]
        for name in placeholders:
            if name in merged:
                self.problem(
                    where,
                    f"the key pattern {{{name}}} makes the attribute {name!r}, which is also "
                    "declared in attributes; rename one",
                )
        if len(set(placeholders)) < len(placeholders):
            self.problem(
                (*where, "for_each"),
                "for_each and path use the same placeholder name; each names one attribute",
            )
        low, high = self.range(spec, where)
        enum = spec.get("map")
        if "count" in spec:
            never = "count always gives a number (0 when its path selects nothing)"
        elif value_path is not None and value_path.names:
            never = "a key pattern gives one point per matching key, and none when none matches"
        else:
            never = ""
        for key in ("default", "missing") if never else ():
            if key in spec:
                self.problem((*where, key), f"'{key}' never applies here: {never}")
        if len(self.problems) > count_before or value_path is None:
            return None
        missing_value = spec.get("missing", "drop")
        ordered = tuple(merged[k] for k in sorted(merged))
        attributes = self._interned.setdefault(ordered, ordered)
        if "default" in spec and "missing" in spec:
            self.problem((*where, "missing"), "give either 'default' or 'missing', not both")
        if kind in (InstrumentKind.HISTOGRAM, InstrumentKind.COUNTER) and (
            spec.get("non_finite") == "keep"
        ):
            self.problem(
                (*where, "non_finite"),
                f"a {kind} cannot keep NaN or Infinity (a sum or a bucket count would be "
                "lost for good); use non_finite: drop",
            )
        plain = not enum and not {"scale", "offset", "range"} & spec.keys()
        return MetricRule(
            index=index,
            name=spec["name"],
            kind=kind,
            unit=spec.get("unit", ""),
            description=spec.get("description", ""),
            value=ValueSpec(
                path=value_path,
                enum={_enum_key(k): float(v) for k, v in enum.items()} if enum else None,
                parse_strings=spec.get("parse_strings", False),
                booleans=spec.get("booleans", False),
                scale=spec.get("scale"),
                offset=spec.get("offset"),
                default=spec.get("default"),
                skip_missing=missing_value == "skip",
                keep_non_finite=spec.get("non_finite", "drop") == "keep",
                plain=plain,
                range_min=low,
                range_max=high,
            ),
            mode=CounterMode(spec["mode"]) if "mode" in spec else None,
            buckets=buckets,
            for_each=for_each,
            when=when,
            attributes=attributes,
            record_level_attributes=for_each is None
            or all(a.path is None or a.scope is not Scope.ELEMENT for a in attributes),
            constants=(
                tuple((k, merged[k].constant) for k in sorted(merged))  # type: ignore[misc]
                if all(a.path is None for a in merged.values())
                else None
            ),
            monotonic=kind in (InstrumentKind.COUNTER, InstrumentKind.HISTOGRAM),
            attributes_id=id(attributes),
            key_patterns=bool(placeholders),
            direct=plain and for_each is None and when is None and not placeholders,
        )

    def value_path(self, spec: dict[str, Any], where: YamlPath) -> Path | None:
        """``path:`` (one value, key patterns allowed) or ``count:`` (how many are selected)."""
        if "count" not in spec:
            return self.path(spec["path"], (*where, "path"), singular=True, patterns=True)
        text = spec["count"]
        counted = self.path(text, (*where, "count"))
        if counted is None:
            return None
        if counted.singular:
            self.problem(
                (*where, "count"),
                f"{text!r} selects at most one value, so its count is 0 or 1; to count the "
                f"elements of a list write {text}[*]",
            )
            return None
        return counting(counted)

    def range(self, spec: dict[str, Any], where: YamlPath) -> tuple[float | None, float | None]:
        bounds = spec.get("range", {})
        low, high = bounds.get("min"), bounds.get("max")
        if low is not None and high is not None and low > high:
            self.problem((*where, "range"), f"range min {low} is above max {high}")
        return (
            None if low is None else float(low),
            None if high is None else float(high),
        )

    def condition(self, spec: dict[str, Any], where: YamlPath) -> Condition | None:
        """exists / absent hold when the path selects anything (a filter may select many);
        equals compares one value; not negates a whole condition."""
        exists = absent = equals_path = negated = None
        if "exists" in spec:
            exists = self.path(spec["exists"], (*where, "exists"))
        if "absent" in spec:
            absent = self.path(spec["absent"], (*where, "absent"))
        equals_value: AttributeValue | None = None
        if "equals" in spec:
            text = spec["equals"]["path"]
            equals_path = self.path(text, (*where, "equals", "path"))
            if equals_path is not None and not equals_path.singular:
                self.problem(
                    (*where, "equals", "path"),
                    f"{text!r} may select many values; equals compares one value (to test "
                    "whether any element fits, use exists: with a filter, "
                    "e.g. $.items[?(@.x == 1)])",
                )
            equals_value = spec["equals"]["value"]
        if "not" in spec:
            negated = self.condition(spec["not"], (*where, "not"))
        return Condition(exists, absent, equals_path, equals_value, negated)

    def instruments(
        self, specs: list[dict[str, Any]], rules: list[MetricRule]
    ) -> tuple[InstrumentSpec, ...]:
        by_name: dict[str, InstrumentSpec] = {}
        for rule in rules:
            where = ("metrics", rule.index, "name")
            spec = InstrumentSpec(
                rule.name, rule.kind, rule.unit, rule.description, rule.mode, rule.buckets,
                declared_at=(rule.index, self.loaded.line_of(where)),
            )  # fmt: skip
            first = by_name.setdefault(rule.name, spec)
            if first.identity != spec.identity:
                self.problem(
                    where,
                    f"{rule.name!r} is also declared at metrics[{first.declared_at[0]}] with a "
                    "different type, unit, mode or buckets; rules of one name feed one "
                    "instrument and must agree",
                )
            elif not first.description and spec.description:
                by_name[rule.name] = replace(first, description=spec.description)
        return tuple(by_name.values())


def conflicts_between(plans: list[Plan]) -> list[Problem]:
    """One instrument name must mean one instrument across all mapping files."""
    problems = []
    seen: dict[str, tuple[InstrumentSpec, str]] = {}
    for plan in plans:
        for spec in plan.instruments:
            first, file = seen.setdefault(spec.name, (spec, plan.mapping_file))
            if first.identity != spec.identity:
                index, line = spec.declared_at
                problems.append(
                    Problem(
                        plan.mapping_file,
                        line,
                        f"metrics[{index}].name",
                        f"{spec.name!r} is {spec.describe()} here but {first.describe()} in "
                        f"{file}; one name is one instrument across all mapping files",
                    )
                )
    return problems


def _enum_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)
