"""The compiled, immutable form of a mapping: what the engine runs.

A :class:`Plan` is built once per load (and per reload) by :mod:`.compiler`. Nothing in it
is a YAML dict: paths are compiled, constants are resolved, defaults are filled in. The
hot loop reads plain attributes of frozen, slotted dataclasses and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from translator.mapping.paths import Path

AttributeValue = str | int | float | bool


class InstrumentKind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    UPDOWNCOUNTER = "updowncounter"
    HISTOGRAM = "histogram"


class CounterMode(StrEnum):
    TOTAL = "total"
    INCREMENT = "increment"


class Scope(StrEnum):
    """What a path is evaluated on."""

    ELEMENT = "element"  # the for_each element; the record when there is no for_each
    RECORD = "record"  # the record: the document, or one entry of a history array / JSONL
    ROOT = "root"  # the whole document


class SourceFormat(StrEnum):
    DOCUMENT = "document"
    JSONL = "jsonl"
    CSV = "csv"


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute: a constant (resolved at compile time) or a path read per record."""

    key: str
    constant: AttributeValue | None = None
    path: Path | None = None
    scope: Scope = Scope.ELEMENT
    default: AttributeValue | None = None


@dataclass(frozen=True, slots=True)
class Condition:
    """A record filter; every part that is set must hold."""

    exists: Path | None = None
    absent: Path | None = None
    equals_path: Path | None = None
    equals_value: AttributeValue | None = None
    negated: Condition | None = None
    """``not:``: holds when this condition does not."""


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """Where a value is and how it becomes a number."""

    path: Path
    """The value's path; for ``count:`` a path whose value is the count."""
    enum: dict[str, float] | None = None
    parse_strings: bool = False
    booleans: bool = False
    scale: float | None = None
    offset: float | None = None
    default: float | None = None
    skip_missing: bool = False
    keep_non_finite: bool = False
    plain: bool = False
    """A number in the file is exported as it is (no map, scale, offset or range)."""
    range_min: float | None = None
    range_max: float | None = None
    """``range:``: bounds of the number read (before scale and offset), inclusive."""


@dataclass(frozen=True, slots=True)
class MetricRule:
    """One entry of ``metrics:``; several rules may feed the same instrument (same name)."""

    index: int
    name: str
    kind: InstrumentKind
    unit: str
    description: str
    value: ValueSpec
    mode: CounterMode | None
    buckets: tuple[float, ...] | None
    for_each: Path | None
    when: Condition | None
    attributes: tuple[Attribute, ...]
    """Every attribute (common ones merged in, the rule's own win), sorted by key."""
    constants: tuple[tuple[str, AttributeValue], ...] | None
    """The attribute set itself when every attribute is known at compile time, else None."""
    record_level_attributes: bool
    """No attribute depends on the for_each element: one resolution serves the record."""
    monotonic: bool = False
    """Values must not be negative: counters and (in the OpenTelemetry SDK) histograms."""
    attributes_id: int = 0
    """``id(attributes)``: the engine's per-record cache key (equal lists are one tuple)."""
    key_patterns: bool = False
    """The value path or for_each has ``{name}`` key patterns: one point per match."""
    direct: bool = False
    """A number taken as it is from a path (or a ``count:``) of the record itself: no
    ``when``, ``for_each``, key pattern, map, scale, offset or range. The engine evaluates
    such a rule inline, so that what the other rules use costs it nothing per record."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    path: str
    path_from_mapping: bool
    format: SourceFormat
    version_path: Path | None
    records: Path | None
    record_key: tuple[Path, ...]
    start_at_end: bool
    max_bytes: int
    stale_after_s: float
    start_time_path: Path | None = None
    """Where the job's start time is: the start of its running totals' streams."""


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """What the OpenTelemetry SDK instrument is created with; one per distinct name."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    mode: CounterMode | None
    buckets: tuple[float, ...] | None
    declared_at: tuple[int, int | None] = field(default=(0, None), compare=False)
    """(index in ``metrics:``, line) of the first rule of this name, for messages."""

    @property
    def identity(self) -> tuple[Any, ...]:
        """What one name must keep everywhere (rules, files, reloads): all but the text."""
        return (self.kind, self.unit, self.mode, self.buckets)

    def describe(self) -> str:
        mode = f" ({self.mode})" if self.mode else ""
        return f"{self.kind}{mode} unit {self.unit!r}"


@dataclass(frozen=True, slots=True)
class Plan:
    mapping_file: str
    source: SourceSpec
    resource: tuple[Attribute, ...]
    rules: tuple[MetricRule, ...]
    instruments: tuple[InstrumentSpec, ...]
    max_series: int = 1000
    """limits.max_series_per_metric: the cardinality guard of every instrument here."""

    @property
    def needs_document_for_resource(self) -> bool:
        return any(a.path is not None for a in self.resource)
