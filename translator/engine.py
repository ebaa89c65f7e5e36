"""Turn one record (a parsed JSON value) into data points, following a compiled plan.

Pure and total: no I/O, no clock, no OpenTelemetry, and it never raises on any JSON
input. A value that cannot be trusted becomes a :class:`Drop` with a reason, never a
point; the other points of the record still come out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from translator.mapping.paths import MISSING, Captured, Path, PathTooCostly
from translator.mapping.plan import (
    Attribute,
    AttributeValue,
    Condition,
    CounterMode,
    InstrumentKind,
    MetricRule,
    Plan,
    Scope,
    ValueSpec,
)

#: Attribute strings longer than this are refused: they are almost always a mistake
#: (a whole log line, a path into the wrong field) and would bloat every export.
MAX_ATTRIBUTE_CHARS = 1024
INT64_MAX = 2**63 - 1
"""OTLP integers are 64-bit: beyond, a value goes out as a double."""

_SCOPE_INDEX = {Scope.ELEMENT: 0, Scope.RECORD: 1, Scope.ROOT: 2}

AttributeSet = tuple[tuple[str, AttributeValue], ...]
Number = int | float


class DropReason(StrEnum):
    MISSING = "missing"
    NOT_A_NUMBER = "not_a_number"
    UNMAPPED = "unmapped_value"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    NEGATIVE = "negative"
    MISSING_ATTRIBUTE = "missing_attribute"
    BAD_ATTRIBUTE = "bad_attribute"
    CARDINALITY = "cardinality_limit"
    DUPLICATE = "duplicate_series"
    TOO_LARGE = "too_large"  # for a jsonpath-ng path (mapping.paths.MAX_JSONPATH_ELEMENTS)


Point = tuple[MetricRule, AttributeSet, Number]
"""One data point: ``(rule, attributes, value)``. A plain tuple: the hot loop makes millions,
and building one is a single bytecode, where a named tuple or dataclass is a call."""


@dataclass(frozen=True, slots=True)
class Drop:
    rule: MetricRule
    reason: DropReason
    detail: str


@dataclass(slots=True)
class Evaluation:
    points: list[Point] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)


def evaluate(plan: Plan, record: Any, root: Any = MISSING) -> Evaluation:
    """All points of one record. ``root`` is the enclosing document for history records."""
    out = Evaluation()
    evaluate_into(plan, record, record if root is MISSING else root, out)
    return out


def evaluate_into(
    plan: Plan, record: Any, root: Any, out: Evaluation, extra: AttributeSet = ()
) -> None:
    """Append ``record``'s points and drops to ``out``.

    ``extra`` attributes (from named parts of the file's path) go on every point; the
    mapping's own attributes of the same key win.
    """
    points = out.points
    drops = out.drops
    first = len(points)
    resolved: dict[int, AttributeSet | _Refused] = {}  # per record, by attribute list
    for rule in plan.rules:
        try:
            if rule.direct:
                # Most rules (see MetricRule.direct), inline: the general path's calls (two
                # per rule, with seven arguments each) were a third of the engine's time.
                raw = rule.value.path.first(record)
                kind = type(raw)
                if (
                    (kind is float and raw - raw == 0)
                    or (kind is int and -INT64_MAX <= raw <= INT64_MAX)
                ) and not (rule.monotonic and raw < 0):
                    attributes = rule.constants
                    if attributes is None:
                        attributes = resolved.get(rule.attributes_id)  # type: ignore[assignment]
                        if attributes is None:
                            attributes = resolved[rule.attributes_id] = _attributes(  # type: ignore[assignment]
                                rule.attributes, (record, record, root)
                            )
                    if type(attributes) is tuple:
                        points.append((rule, attributes, raw))
                        continue
                # Missing, not a finite number, negative, or its attributes refused: the
                # general path reads it again (pure, and rare) and says why.
            if rule.when is not None and not _holds(rule.when, record):
                continue
            cache = resolved if rule.record_level_attributes else None
            if rule.key_patterns:
                _evaluate_patterns(rule, record, root, points, drops, cache)
            elif rule.for_each is None:
                _evaluate_element(rule, record, record, root, points, drops, cache)
            else:
                for element in rule.for_each.all(record):
                    _evaluate_element(rule, element, record, root, points, drops, cache)
        except PathTooCostly as exc:  # the one way a path evaluation fails (see paths.py)
            drops.append(Drop(rule, DropReason.TOO_LARGE, str(exc)))
    if extra:
        for i in range(first, len(points)):
            rule, attributes, value = points[i]
            merged = dict(extra)
            merged.update(attributes)
            points[i] = (rule, tuple(sorted(merged.items())), value)


def _evaluate_element(
    rule: MetricRule,
    element: Any,
    record: Any,
    root: Any,
    points: list[Point],
    drops: list[Drop],
    cache: dict[int, AttributeSet | _Refused] | None,
) -> None:
    spec = rule.value
    raw = spec.path.first(element)
    kind = type(raw)
    # The common case first: a finite float, or an int of 64 bits, taken as it is.
    if spec.plain and (
        (kind is float and raw - raw == 0) or (kind is int and -INT64_MAX <= raw <= INT64_MAX)
    ):
        value = raw
    else:
        if raw is MISSING or raw is None:
            if spec.default is None:
                if not spec.skip_missing:
                    detail = f"{spec.path.text} selects nothing"
                    if raw is None:
                        detail = f"{spec.path.text} is null"
                    drops.append(Drop(rule, DropReason.MISSING, detail))
                return
            raw = spec.default
        value = to_number(spec, raw)
        if type(value) is DropReason:
            drops.append(Drop(rule, value, _why(spec, spec.path.text, raw, value)))
            return
    _emit(rule, value, element, record, root, points, drops, cache)


def _evaluate_patterns(
    rule: MetricRule,
    record: Any,
    root: Any,
    points: list[Point],
    drops: list[Drop],
    cache: dict[int, AttributeSet | _Refused] | None,
) -> None:
    """A rule with key patterns: one point per match, the matched text as attributes.

    Under a value key pattern, a key whose value is not a number is not a metric (W&B's
    ``_wandb`` object, a string note): it is skipped, not dropped.
    """
    spec = rule.value
    elements: list[tuple[Any, Captured]] = (
        [(record, ())] if rule.for_each is None else rule.for_each.matches(record)
    )
    for element, outer in elements:
        if not spec.path.names:
            before, dropped = len(points), len(drops)
            _evaluate_element(rule, element, record, root, points, drops, cache)
            for i in range(dropped, len(drops) if outer else 0):  # which element it was
                drops[i] = Drop(rule, drops[i].reason, f"{_named(outer)}: {drops[i].detail}")
            if outer and len(points) > before:
                _add_captured(points, drops, outer)
            continue
        for raw, captured in spec.path.matches(element):
            if raw is None or type(raw) is dict or type(raw) is list:
                continue
            value = to_number(spec, raw)
            if isinstance(value, DropReason):
                if value is not DropReason.NOT_A_NUMBER:
                    detail = _why(spec, _matched_key(spec.path, captured), raw, value)
                    if outer:
                        detail = f"{_named(outer)}: {detail}"
                    drops.append(Drop(rule, value, detail))
                continue
            before = len(points)
            _emit(rule, value, element, record, root, points, drops, cache)
            if len(points) > before:
                _add_captured(points, drops, outer + captured)


def _add_captured(points: list[Point], drops: list[Drop], captured: Captured) -> None:
    """Put what the key patterns matched on the last point, or drop it: a key is text from
    the file like any attribute value (too long, a lone surrogate would fail the export)."""
    rule, attributes, value = points[-1]
    for name, text in captured:
        _, problem = exportable_attribute(text)
        if problem:
            points.pop()
            detail = f"attribute {name!r}: the matched key {_preview(text)} {problem}"
            drops.append(Drop(rule, DropReason.BAD_ATTRIBUTE, detail))
            return
    points[-1] = (rule, tuple(sorted(attributes + captured)), value)


def _named(captured: Captured) -> str:
    """``class=tree``: the for_each element a drop's relative path was read in."""
    return " ".join(f"{name}={_preview(text)[1:-1]}" for name, text in captured)


def _matched_key(path: Path, captured: Captured) -> str:
    """The path with the placeholders filled in, for a drop's detail."""
    text = path.text
    for name, matched in captured:
        text = text.replace("{" + name + "}", matched)
    return text


def _why(spec: ValueSpec, text: str, raw: Any, reason: DropReason) -> str:
    detail = f"{text} = {_preview(raw)}"
    if reason is DropReason.NOT_A_NUMBER and type(raw) is bool:
        detail += " (booleans: true exports true/false as 1/0)"
    elif reason is DropReason.NOT_A_NUMBER and type(raw) is str and _numeric_text(raw):
        detail += " (parse_strings: true reads numbers written as text)"
    if reason is DropReason.OUT_OF_RANGE and (
        spec.range_min is not None or spec.range_max is not None
    ):
        low = "" if spec.range_min is None else f"min {spec.range_min:g}"
        high = "" if spec.range_max is None else f"max {spec.range_max:g}"
        detail += f", outside range ({', '.join(b for b in (low, high) if b)})"
    return detail


def _emit(
    rule: MetricRule,
    value: Number,
    element: Any,
    record: Any,
    root: Any,
    points: list[Point],
    drops: list[Drop],
    cache: dict[int, AttributeSet | _Refused] | None,
) -> None:
    """Append the point of ``value`` with its attributes, or the drop that prevents it."""
    if rule.monotonic and value < 0:
        if rule.kind is InstrumentKind.HISTOGRAM:
            what = "a histogram observation"  # the SDK would ignore it with a warning
        else:
            what = "a counter " + (
                "running total" if rule.mode is CounterMode.TOTAL else "increment"
            )
        drops.append(Drop(rule, DropReason.NEGATIVE, f"{what} cannot be {value}"))
        return
    attributes = rule.constants
    if attributes is None:
        if cache is None:
            resolved = _attributes(rule.attributes, (element, record, root))
        else:
            resolved = cache.get(rule.attributes_id)  # type: ignore[assignment]
            if resolved is None:
                resolved = cache[rule.attributes_id] = _attributes(
                    rule.attributes, (element, record, root)
                )
        if type(resolved) is _Refused:
            drops.append(Drop(rule, resolved.reason, resolved.detail))
            return
        attributes = resolved  # type: ignore[assignment]
    points.append((rule, attributes, value))  # type: ignore[arg-type]


def to_number(spec: ValueSpec, raw: Any) -> Number | DropReason:
    """The exported number for ``raw``, or why there is none."""
    kind = type(raw)
    value: Number
    if spec.enum is not None and (kind is str or kind is bool or kind is int):
        key = raw if kind is str else ("true" if raw else "false") if kind is bool else str(raw)
        mapped = spec.enum.get(key)
        if mapped is None:
            return DropReason.UNMAPPED
        value = mapped
    elif kind is float or kind is int:
        value = raw
        if kind is int and not -INT64_MAX <= raw <= INT64_MAX:
            try:
                value = float(raw)
            except OverflowError:
                return DropReason.OUT_OF_RANGE
    elif kind is bool:
        if not spec.booleans:
            return DropReason.NOT_A_NUMBER
        value = 1 if raw else 0
    elif kind is str:
        if not spec.parse_strings or len(raw) > 64:
            return DropReason.NOT_A_NUMBER
        try:
            value = float(raw)
        except ValueError:
            return DropReason.NOT_A_NUMBER
    else:
        return DropReason.NOT_A_NUMBER
    if (spec.range_min is not None and value < spec.range_min) or (
        spec.range_max is not None and value > spec.range_max
    ):  # NaN compares false both ways: it follows non_finite below
        return DropReason.OUT_OF_RANGE
    if spec.scale is not None:
        value = value * spec.scale
    if spec.offset is not None:
        value = value + spec.offset
    if type(value) is int and not -INT64_MAX <= value <= INT64_MAX:
        value = float(value)  # OTLP carries int64; past it, a double (never an overflow)
    if type(value) is float and not math.isfinite(value) and not spec.keep_non_finite:
        return DropReason.NON_FINITE
    return value


def _attributes(
    attributes: tuple[Attribute, ...], scopes: tuple[Any, Any, Any]
) -> AttributeSet | _Refused:
    """``scopes`` is (element, record, root), indexed by :class:`Scope` order."""
    out = []
    for attribute in attributes:
        if attribute.path is None:
            out.append((attribute.key, attribute.constant))
            continue
        raw = attribute.path.first(scopes[_SCOPE_INDEX[attribute.scope]])
        if raw is MISSING or raw is None:
            if attribute.default is None:
                return _bad(DropReason.MISSING_ATTRIBUTE, attribute, "selects nothing")
            raw = attribute.default
        if type(raw) is str and raw.isascii() and len(raw) <= MAX_ATTRIBUTE_CHARS:
            out.append((attribute.key, raw))  # the common case, inline: a short ASCII string
            continue
        value, problem = exportable_attribute(raw)
        if problem:
            return _bad(DropReason.BAD_ATTRIBUTE, attribute, problem)
        out.append((attribute.key, value))
    return tuple(out)  # type: ignore[arg-type]


def exportable_attribute(raw: Any) -> tuple[AttributeValue | None, str]:
    """``(value, "")`` for a JSON value OTLP can carry as an attribute, else
    ``(None, what is wrong with it)``. Used for data-point and resource attributes.

    The one rule for an integer past int64 (which OTLP's int cannot hold): its exact
    decimal text, a string. sources.parse_json always reads such an integer as an exact
    int, so the rule holds whatever else the document holds (a NaN, another parser)."""
    kind = type(raw)
    if kind is str:
        if len(raw) > MAX_ATTRIBUTE_CHARS:
            return None, f"is {len(raw)} characters long (limit {MAX_ATTRIBUTE_CHARS})"
        if not raw.isascii() and not _utf8_encodable(raw):
            return None, "is not valid Unicode (a lone surrogate)"
    elif kind is int:
        if not -INT64_MAX <= raw <= INT64_MAX:  # past int64 OTLP would fail the whole export
            text = str(raw) if raw.bit_length() < 213 else ""  # cheap bound before str()
            if not text or len(text) > 64:
                return None, "is an enormous integer"
            return text, ""
    elif kind is float:
        if raw - raw != 0:  # NaN or infinite: NaN != NaN would make a new series each time
            return None, f"is {raw}"
    elif kind is not bool:
        return None, f"is an {_json_type(raw)}, not a scalar"  # object or array
    return raw, ""


@dataclass(frozen=True, slots=True)
class _Refused:
    """Why an attribute set could not be built; the caller turns it into a Drop."""

    reason: DropReason
    detail: str


def _bad(reason: DropReason, attribute: Attribute, what: str) -> _Refused:
    path = attribute.path.text if attribute.path is not None else ""
    return _Refused(reason, f"attribute {attribute.key!r}: {path} {what}")


def _utf8_encodable(text: str) -> bool:
    """OTLP strings are UTF-8; JSON's "\\ud800" escape makes a str that UTF-8 cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _holds(condition: Condition, record: Any) -> bool:
    if condition.negated is not None and _holds(condition.negated, record):
        return False
    if condition.exists is not None and not _selects(condition.exists, record):
        return False
    if condition.absent is not None and _selects(condition.absent, record):
        return False
    if condition.equals_path is not None:
        found = condition.equals_path.first(record)
        expected = condition.equals_value
        if found is MISSING or (type(found) is bool) != (type(expected) is bool):
            return False  # true is not 1, and 1 is not true
        return bool(found == expected)
    return True


def _numeric_text(raw: str) -> bool:
    try:
        float(raw[:64])
    except ValueError:
        return False
    return len(raw) <= 64


def _selects(path: Path, record: Any) -> bool:
    """The path selects a value that is not null (any one of many, for a filter)."""
    if path.singular:
        return path.first(record) not in (MISSING, None)
    return any(value is not None for value in path.all(record))


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _preview(raw: Any) -> str:
    """``raw`` as the file writes it (``false``, ``null``, ``"high"``, ``NaN``), shortened."""
    kind = type(raw)
    if kind is str:
        text = json.dumps(raw[:40])
        return text if len(raw) <= 40 else text[:-1] + '..."'
    if kind is bool or raw is None:
        return json.dumps(raw)
    if kind is float and raw - raw != 0:
        return "NaN" if raw != raw else ("Infinity" if raw > 0 else "-Infinity")
    text = repr(raw) if not isinstance(raw, dict | list) else _json_type(raw)
    return text if len(text) <= 40 else text[:37] + "..."
