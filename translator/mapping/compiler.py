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
from translator.mapping.paths import Path, PathSyntaxError, compile_path
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

    def path(self, text: str, where: YamlPath, *, singular: bool = False) -> Path | None:
        try:
            compiled = compile_path(text)
        except PathSyntaxError as exc:
            self.problem(where, str(exc))
            return None
        if singular and not compiled.singular:
            self.problem(
                where,
                f"{text!r} may select many values; a value or attribute path must select one "
                "(use for_each for one data point per element)",
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
        if fmt is SourceFormat.JSONL:
            for key in ("version_path", "records", "record_key"):
                if key in spec:
                    self.problem((*where, key), f"{key!r} applies only to format: document")
        elif "start_at" in spec:
            self.problem((*where, "start_at"), "'start_at' applies only to format: jsonl")
        if "record_key" in spec and "records" not in spec:
            self.problem((*where, "record_key"), "'record_key' needs 'records' (the history array)")
        version_path = records = None
        if "version_path" in spec:
            version_path = self.path(spec["version_path"], (*where, "version_path"), singular=True)
        if "records" in spec:
            records = self.path(spec["records"], (*where, "records"))
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
            max_bytes=spec.get("max_bytes", 16 * 1024 * 1024),
            stale_after_s=float(spec.get("stale_after_s", 300)),
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
        value_path = self.path(spec["path"], (*where, "path"), singular=True)
        for_each = self.path(spec["for_each"], (*where, "for_each")) if "for_each" in spec else None
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
        enum = spec.get("map")
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
                plain=not enum and "scale" not in spec and "offset" not in spec,
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
        )

    def condition(self, spec: dict[str, Any], where: YamlPath) -> Condition | None:
        exists = absent = equals_path = None
        if "exists" in spec:
            exists = self.path(spec["exists"], (*where, "exists"), singular=True)
        if "absent" in spec:
            absent = self.path(spec["absent"], (*where, "absent"), singular=True)
        equals_value: AttributeValue | None = None
        if "equals" in spec:
            equals_path = self.path(
                spec["equals"]["path"], (*where, "equals", "path"), singular=True
            )
            equals_value = spec["equals"]["value"]
        return Condition(exists, absent, equals_path, equals_value)

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
