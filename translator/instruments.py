"""The OpenTelemetry instruments a plan declares, and the state they report.

Gauges, up-down counters and counters are *observable*: they report the newest values
this registry holds, so a series the newest document no longer has simply stops being
reported (no ghost series), and a file that went stale takes its series with it.
Counters keep their own cumulative state here: a running total from the file is reported
as is, and a total that goes down starts a new run on top of the old one (a reset is
never a negative add). Histograms are synchronous: each observation is recorded once.
The SDK keeps a histogram series for the life of the process, so series that should no
longer be reported (their file went stale or away, their instrument left the mapping)
are taken out of each collection by :meth:`InstrumentRegistry.hide_retired`.

This is the only module that calls the OpenTelemetry metrics API for mapped metrics.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import Histogram, Metric, MetricsData

from translator.engine import AttributeSet, Drop, DropReason, Point
from translator.mapping.plan import CounterMode, InstrumentKind, InstrumentSpec, MetricRule, Plan

_log = logging.getLogger(__name__)


class InstrumentConflict(ValueError):
    """A new plan redeclares an existing instrument with another type, unit or buckets."""


@dataclass(slots=True)
class _Series:
    attributes: dict[str, Any]
    value: float | int = 0
    base: float | int = 0
    """Counters in total mode: what earlier runs (before a reset) added up to."""


@dataclass(slots=True)
class _Instrument:
    spec: InstrumentSpec
    max_series: int
    sdk: Any = None
    by_source: dict[str, dict[AttributeSet, _Series]] = field(default_factory=dict)
    histogram_series: dict[AttributeSet, dict[str, Any]] = field(default_factory=dict)
    retired: bool = False
    overflow_warned: bool = False
    histogram: bool = False
    histogram_sources: dict[str, set[AttributeSet]] = field(default_factory=dict)
    hidden: set[AttributeSet] = field(default_factory=set)
    """Histogram series no source reports any more; taken out of collections."""

    def __post_init__(self) -> None:
        self.histogram = self.spec.kind is InstrumentKind.HISTOGRAM

    def live_count(self) -> int:
        if self.spec.kind is InstrumentKind.HISTOGRAM:
            return len(self.histogram_series)
        return sum(len(s) for s in self.by_source.values())


class InstrumentRegistry:
    """Creates instruments from plans and applies data points to them.

    ``apply`` runs on the reading thread, the observable callbacks on the export thread;
    one lock keeps them apart. Neither raises on data.
    """

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._lock = threading.Lock()
        self._instruments: dict[str, _Instrument] = {}

    # --- plans ---------------------------------------------------------------------------

    def check(self, plans: Sequence[Plan]) -> None:
        """Raise :class:`InstrumentConflict` if ``plans`` cannot be installed over these."""
        seen: dict[str, tuple[InstrumentSpec, str]] = {}
        for plan in plans:
            for spec in plan.instruments:
                other = seen.setdefault(spec.name, (spec, plan.mapping_file))
                if _identity(other[0]) != _identity(spec):
                    raise InstrumentConflict(
                        f"instrument {spec.name!r} is {_describe(other[0])} in {other[1]} but "
                        f"{_describe(spec)} in {plan.mapping_file}; one name is one instrument"
                    )
                current = self._instruments.get(spec.name)
                if current is not None and _identity(current.spec) != _identity(spec):
                    raise InstrumentConflict(
                        f"instrument {spec.name!r} would change from {_describe(current.spec)} "
                        f"to {_describe(spec)}; the OpenTelemetry SDK cannot redefine an "
                        "instrument in a running process: rename it, or restart the bridge"
                    )

    def install(self, plans: Sequence[Plan]) -> None:
        """Make the instruments of ``plans`` the live ones; others stop reporting."""
        self.check(plans)
        wanted: dict[str, tuple[InstrumentSpec, int]] = {}
        for plan in plans:
            max_series = plan.rules[0].max_series if plan.rules else 1000
            for spec in plan.instruments:
                wanted[spec.name] = (spec, max_series)
        with self._lock:
            for name, instrument in self._instruments.items():
                if name not in wanted:
                    instrument.retired = True
                    instrument.by_source.clear()
            for name, (spec, max_series) in wanted.items():
                live = self._instruments.get(name)
                if live is None:
                    live = _Instrument(spec, max_series)
                    live.sdk = self._create(live)
                    self._instruments[name] = live
                live.retired = False
                live.max_series = max_series

    def _create(self, instrument: _Instrument) -> Any:
        spec = instrument.spec
        kw: dict[str, Any] = {"name": spec.name, "unit": spec.unit, "description": spec.description}
        callback = self._callback(instrument)
        if spec.kind is InstrumentKind.GAUGE:
            return self._meter.create_observable_gauge(callbacks=[callback], **kw)
        if spec.kind is InstrumentKind.COUNTER:
            return self._meter.create_observable_counter(callbacks=[callback], **kw)
        if spec.kind is InstrumentKind.UPDOWNCOUNTER:
            return self._meter.create_observable_up_down_counter(callbacks=[callback], **kw)
        return self._meter.create_histogram(
            explicit_bucket_boundaries_advisory=list(spec.buckets or ()), **kw
        )

    def _callback(self, instrument: _Instrument) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                if instrument.retired:
                    return []
                return [
                    Observation(series.base + series.value, series.attributes)
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
                applied[name] += 1
                spec = instrument.spec
                if instrument.histogram:
                    attrs = instrument.histogram_series.get(attributes)
                    if attrs is None:
                        if self._over_limit(instrument, rule, drops):
                            continue
                        attrs = instrument.histogram_series[attributes] = dict(attributes)
                    instrument.sdk.record(value, attrs)
                    seen = instrument.histogram_sources.get(source)
                    if seen is None:
                        seen = instrument.histogram_sources[source] = set()
                    seen.add(attributes)
                    if instrument.hidden:
                        instrument.hidden.discard(attributes)
                    continue
                old = instrument.by_source.get(source)
                if replaces and spec.mode is not CounterMode.INCREMENT:
                    target = fresh.setdefault(name, {})
                elif old is None:
                    target = old = instrument.by_source[source] = {}
                else:
                    target = old
                series = target.get(attributes)
                if series is None:
                    # A series seen in the previous read carries on (counters keep their run).
                    series = old.get(attributes) if old is not None else None
                    if series is None:
                        if self._over_limit(instrument, rule, drops):
                            continue
                        series = _Series(dict(attributes))
                    target[attributes] = series
                if spec.mode is None:
                    series.value = value  # a gauge: the newest value
                else:
                    _update(spec, series, value)
            if replaces:
                for instrument in self._instruments.values():
                    if instrument.spec.mode is CounterMode.INCREMENT or (
                        instrument.spec.kind is InstrumentKind.HISTOGRAM
                    ):
                        continue
                    replacement = fresh.get(instrument.spec.name)
                    if replacement:
                        instrument.by_source[source] = replacement
                    else:
                        instrument.by_source.pop(source, None)
        return drops

    def forget(self, source: str) -> None:
        """Stop reporting everything ``source`` contributed (stale, or gone)."""
        with self._lock:
            for instrument in self._instruments.values():
                instrument.by_source.pop(source, None)
                gone = instrument.histogram_sources.pop(source, None)
                if gone:
                    still = set().union(*instrument.histogram_sources.values())
                    instrument.hidden |= gone - still

    def hide_retired(self, data: MetricsData) -> MetricsData:
        """``data`` without the histogram series this registry no longer reports."""
        with self._lock:
            hidden = {
                name: (instrument.retired, frozenset(instrument.hidden))
                for name, instrument in self._instruments.items()
                if instrument.histogram and (instrument.retired or instrument.hidden)
            }
        if not hidden:
            return data
        return _without(data, hidden)

    def series_count(self, name: str) -> int:
        with self._lock:
            instrument = self._instruments.get(name)
            return 0 if instrument is None else instrument.live_count()

    def _over_limit(self, instrument: _Instrument, rule: MetricRule, drops: list[Drop]) -> bool:
        if instrument.live_count() < instrument.max_series:
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


def _without(
    data: MetricsData, hidden: dict[str, tuple[bool, frozenset[AttributeSet]]]
) -> MetricsData:
    """A copy of ``data`` leaving out hidden histogram series (all of a retired one)."""

    def keep_metric(metric: Metric) -> Metric | None:
        rule = hidden.get(metric.name)
        if rule is None or not isinstance(metric.data, Histogram):
            return metric
        retired, series = rule
        if retired:
            return None
        points = [
            p for p in metric.data.data_points
            if tuple(sorted((p.attributes or {}).items())) not in series
        ]  # fmt: skip
        if not points:
            return None
        return replace(metric, data=replace(metric.data, data_points=points))

    resource_metrics = []
    for rm in data.resource_metrics:
        scopes = []
        for sm in rm.scope_metrics:
            metrics = [m for m in map(keep_metric, sm.metrics) if m is not None]
            if metrics:
                scopes.append(replace(sm, metrics=metrics))
        resource_metrics.append(replace(rm, scope_metrics=scopes))
    return MetricsData(resource_metrics=resource_metrics)


def _update(spec: InstrumentSpec, series: _Series, value: float | int) -> None:
    if spec.mode is CounterMode.INCREMENT:
        series.value += value
    elif spec.kind is InstrumentKind.COUNTER and value < series.value:
        # The job restarted (e.g. from a checkpoint): a new run on top of the old one.
        series.base += series.value
        series.value = value
    else:
        series.value = value


def _identity(spec: InstrumentSpec) -> tuple[Any, ...]:
    return (spec.kind, spec.unit, spec.mode, spec.buckets)


def _describe(spec: InstrumentSpec) -> str:
    mode = f" ({spec.mode})" if spec.mode else ""
    return f"{spec.kind}{mode} unit {spec.unit!r}"
