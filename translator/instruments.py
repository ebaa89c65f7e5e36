"""The instruments a plan declares, and the state they report. Points are recorded here.

Gauges, up-down counters and counters are OpenTelemetry *observable* instruments: they
report the newest values this registry holds, so a series the newest document no longer
has simply stops being reported (no ghost series), and a file that went stale takes its
series with it. Counters keep their own cumulative state: a running total from the file
is reported as is, and a total that goes down starts a new run on top of the old one (a
reset is never a negative add).

Histograms are aggregated here too, into explicit-bucket cumulative histograms that
:meth:`InstrumentRegistry.add_histograms` puts into each collection before any exporter
sees it. The SDK's synchronous histogram would cost about 6 us per observation with a
reader attached (a third of the whole hot path), and it keeps every series it ever saw
for the life of the process; here a series goes when its file does, and a series that
comes back starts a new stream (a new start time), as OTLP expects.

This is the only module that records mapped metrics.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from translator.engine import INT64_MAX, AttributeSet, Drop, DropReason, Point
from translator.mapping.plan import CounterMode, InstrumentKind, InstrumentSpec, MetricRule, Plan

_log = logging.getLogger(__name__)


class InstrumentConflict(ValueError):
    """A new plan redeclares an existing instrument with another type, unit or buckets."""


@dataclass(slots=True)
class _Series:
    """A gauge, counter or up-down counter series."""

    attributes: dict[str, Any]
    value: float | int = 0
    base: float | int = 0
    """Counters in total mode: what earlier runs (before a reset) added up to."""


@dataclass(slots=True)
class _HistogramSeries:
    """One cumulative explicit-bucket histogram series."""

    attributes: dict[str, Any]
    bounds: tuple[float, ...]
    start_ns: int = field(default_factory=time.time_ns)
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0
    low: float = float("inf")
    high: float = float("-inf")

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def record(self, value: float) -> None:
        # Bucket i holds (bounds[i-1], bounds[i]]: the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value

    def point(self, now_ns: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            attributes=self.attributes,
            start_time_unix_nano=self.start_ns,
            time_unix_nano=now_ns,
            count=self.count,
            sum=self.total,
            bucket_counts=tuple(self.counts),
            explicit_bounds=self.bounds,
            min=self.low,
            max=self.high,
        )


@dataclass(slots=True)
class _Instrument:
    spec: InstrumentSpec
    max_series: int
    by_source: dict[str, dict[AttributeSet, Any]] = field(default_factory=dict)
    """source path -> attributes -> _Series (or _HistogramSeries for a histogram)."""
    parked: dict[tuple[str, AttributeSet], _Series] = field(default_factory=dict)
    """Counter series no longer reported (absent, stale, file gone): kept so that one that
    comes back carries on from where it was. The SDK keeps an observable series' start
    time, so restarting it from zero would be a cumulative sum going backwards."""
    retired: bool = False
    overflow_warned: bool = False
    histogram: bool = False

    def __post_init__(self) -> None:
        self.histogram = self.spec.kind is InstrumentKind.HISTOGRAM

    def live_count(self) -> int:
        return sum(len(s) for s in self.by_source.values())


class InstrumentRegistry:
    """Creates instruments from plans and applies data points to them.

    ``apply`` runs on the reading thread; the observable callbacks and
    ``add_histograms`` on the export thread. One lock keeps them apart. Nothing here
    raises on data.
    """

    def __init__(self, meter: Meter, scope: InstrumentationScope | None = None) -> None:
        self._meter = meter
        self._scope = scope or InstrumentationScope(meter.name, meter.version)
        self._lock = threading.Lock()
        self._instruments: dict[str, _Instrument] = {}

    # --- plans ---------------------------------------------------------------------------

    def check(self, plans: Sequence[Plan]) -> None:
        """Raise :class:`InstrumentConflict` if ``plans`` cannot be installed over these."""
        seen: dict[str, tuple[InstrumentSpec, str]] = {}
        for plan in plans:
            for spec in plan.instruments:
                other = seen.setdefault(spec.name, (spec, plan.mapping_file))
                if other[0].identity != spec.identity:
                    raise InstrumentConflict(
                        f"instrument {spec.name!r} is {other[0].describe()} in {other[1]} but "
                        f"{spec.describe()} in {plan.mapping_file}; one name is one instrument"
                    )
                current = self._instruments.get(spec.name)
                if current is not None and current.spec.identity != spec.identity:
                    raise InstrumentConflict(
                        f"instrument {spec.name!r} would change from {current.spec.describe()} "
                        f"to {spec.describe()}; the OpenTelemetry SDK cannot redefine an "
                        "instrument in a running process: rename it, or restart the bridge"
                    )

    def install(self, plans: Sequence[Plan]) -> None:
        """Make the instruments of ``plans`` the live ones; others stop reporting."""
        self.check(plans)
        wanted: dict[str, tuple[InstrumentSpec, int]] = {}
        for plan in plans:
            max_series = plan.max_series
            for spec in plan.instruments:
                wanted[spec.name] = (spec, max_series)
        with self._lock:
            for name, instrument in self._instruments.items():
                if name not in wanted:
                    instrument.retired = True
                    instrument.by_source.clear()
                    instrument.parked.clear()
            for name, (spec, max_series) in wanted.items():
                live = self._instruments.get(name)
                if live is None:
                    live = self._instruments[name] = _Instrument(spec, max_series)
                    self._create(live)
                live.retired = False
                live.max_series = max_series

    def _create(self, instrument: _Instrument) -> None:
        spec = instrument.spec
        if spec.kind is InstrumentKind.HISTOGRAM:
            return  # aggregated here; see add_histograms
        kw: dict[str, Any] = {"name": spec.name, "unit": spec.unit, "description": spec.description}
        callbacks = [self._callback(instrument)]
        if spec.kind is InstrumentKind.GAUGE:
            self._meter.create_observable_gauge(callbacks=callbacks, **kw)
        elif spec.kind is InstrumentKind.COUNTER:
            self._meter.create_observable_counter(callbacks=callbacks, **kw)
        else:
            self._meter.create_observable_up_down_counter(callbacks=callbacks, **kw)

    def _callback(self, instrument: _Instrument) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                if instrument.retired:
                    return []
                return [
                    Observation(_exportable(series.base + series.value), series.attributes)
                    for by_attrs in instrument.by_source.values()
                    for series in by_attrs.values()
                ]

        return observe

    # --- data ----------------------------------------------------------------------------

    def apply(
        self,
        source: str,
        points: list[Point],
        *,
        replaces: bool,
        counts: Counter[str] | None = None,
    ) -> list[Drop]:
        """Apply one read's points. ``replaces``: they are the source's whole current state.

        Adds the points applied per metric to ``counts``; returns the points refused by the
        cardinality guard, as drops.
        """
        drops: list[Drop] = []
        applied: Counter[str] = Counter() if counts is None else counts
        with self._lock:
            fresh: dict[str, dict[AttributeSet, _Series]] = {}
            instruments = self._instruments
            for rule, attributes, value in points:
                name = rule.name
                instrument = instruments.get(name)
                if instrument is None or instrument.retired:
                    continue
                spec = instrument.spec
                old = instrument.by_source.get(source)
                if instrument.histogram:
                    # Observations accumulate whatever the read: a histogram is not a state.
                    if old is None:
                        old = instrument.by_source[source] = {}
                    observed = old.get(attributes)
                    if observed is None:
                        if self._over_limit(instrument, rule, drops, instrument.live_count()):
                            continue
                        observed = old[attributes] = _HistogramSeries(
                            dict(attributes), spec.buckets or ()
                        )
                    observed.record(value)
                    applied[name] += 1
                    continue
                snapshot = replaces and spec.mode is not CounterMode.INCREMENT
                if snapshot:
                    target = fresh.get(name)
                    if target is None:
                        target = fresh[name] = {}
                elif old is None:
                    target = old = instrument.by_source[source] = {}
                else:
                    target = old
                series = target.get(attributes)
                if series is None:
                    # A series seen in the previous read carries on (counters keep their run).
                    series = old.get(attributes) if old is not None else None
                    if series is None:
                        series = instrument.parked.pop((source, attributes), None)
                    if series is None:
                        live = instrument.live_count()
                        if snapshot:  # this read replaces the source's old series
                            live += len(target) - len(old or ())
                        if self._over_limit(instrument, rule, drops, live):
                            continue
                        series = _Series(dict(attributes))
                    target[attributes] = series
                elif snapshot and spec.mode is CounterMode.TOTAL:
                    # Two running totals for one series in one document (a for_each without
                    # a distinguishing attribute): taking both would look like a reset.
                    detail = f"{name} already has a running total for {dict(attributes)} here"
                    drops.append(Drop(rule, DropReason.DUPLICATE, detail))
                    continue
                if spec.mode is None:
                    series.value = value  # a gauge: the newest value
                else:
                    _update(spec, series, value)
                applied[name] += 1
            if replaces:
                for instrument in self._instruments.values():
                    if instrument.spec.mode is CounterMode.INCREMENT or instrument.histogram:
                        continue
                    replacement = fresh.get(instrument.spec.name)
                    previous = instrument.by_source.get(source)
                    if previous and instrument.spec.mode is not None:
                        for attributes in previous.keys() - (replacement or {}).keys():
                            _park(instrument, source, attributes, previous[attributes])
                    if replacement:
                        instrument.by_source[source] = replacement
                    else:
                        instrument.by_source.pop(source, None)
        return drops

    def forget(self, source: str) -> None:
        """Stop reporting everything ``source`` contributed (stale, or gone)."""
        with self._lock:
            for instrument in self._instruments.values():
                gone = instrument.by_source.pop(source, None)
                if gone and instrument.spec.mode is not None:
                    for attributes, series in gone.items():
                        _park(instrument, source, attributes, series)

    def add_histograms(self, data: MetricsData | None, resource: Resource) -> MetricsData:
        """``data`` (one SDK collection) with the histograms aggregated here added to it."""
        now_ns = time.time_ns()
        with self._lock:
            metrics = []
            for instrument in self._instruments.values():
                if not instrument.histogram or instrument.retired:
                    continue
                points = [
                    series.point(now_ns)
                    for by_attrs in instrument.by_source.values()
                    for series in by_attrs.values()
                ]
                if points:
                    spec = instrument.spec
                    histogram = Histogram(points, AggregationTemporality.CUMULATIVE)
                    metrics.append(Metric(spec.name, spec.description, spec.unit, histogram))
        if not metrics:
            return data if data is not None else MetricsData(resource_metrics=[])
        if data is None or not data.resource_metrics:
            scope = ScopeMetrics(self._scope, metrics, "")
            return MetricsData(resource_metrics=[ResourceMetrics(resource, [scope], "")])
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == self._scope.name:
                scopes[i] = replace(scope_metrics, metrics=[*scope_metrics.metrics, *metrics])
                break
        else:
            scopes.append(ScopeMetrics(self._scope, metrics, ""))
        return MetricsData(resource_metrics=[replace(first, scope_metrics=scopes), *rest])

    def _over_limit(
        self, instrument: _Instrument, rule: MetricRule, drops: list[Drop], live: int
    ) -> bool:
        if live < instrument.max_series:
            return False
        detail = (
            f"{instrument.spec.name} already has {instrument.max_series} series "
            "(limits.max_series_per_metric); is an attribute taken from a per-step value?"
        )
        if not instrument.overflow_warned:
            instrument.overflow_warned = True
            _log.warning("cardinality limit reached: %s; new series are dropped", detail)
        drops.append(Drop(rule, DropReason.CARDINALITY, detail))
        return True


def _park(instrument: _Instrument, source: str, attributes: AttributeSet, series: _Series) -> None:
    parked = instrument.parked
    parked[(source, attributes)] = series
    if len(parked) > instrument.max_series:  # bounded like live series: the oldest goes
        del parked[next(iter(parked))]


def _update(spec: InstrumentSpec, series: _Series, value: float | int) -> None:
    if spec.mode is CounterMode.INCREMENT:
        series.value += value
    elif spec.kind is InstrumentKind.COUNTER and value < series.value:
        # The job restarted (e.g. from a checkpoint): a new run on top of the old one.
        series.base += series.value
        series.value = value
    else:
        series.value = value


def _exportable(value: float | int) -> float | int:
    """OTLP carries int64: a sum that grew past it goes out as a double, never an error
    that would fail the whole export."""
    if type(value) is int and not -INT64_MAX <= value <= INT64_MAX:
        return float(value)
    return value
