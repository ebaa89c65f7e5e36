"""The instruments a plan declares, their series, and the OTLP data points they export.

Every mapped data point is built here, as the OpenTelemetry data model's points (a
``Gauge``, a cumulative ``Sum`` or a cumulative explicit-bucket ``Histogram`` per
instrument), and :meth:`InstrumentRegistry.complete` adds them to each collection the SDK
makes of the bridge's own metrics, before any exporter (OTLP, console, Prometheus) sees
it. The SDK keeps the exporters, the resource and the bridge's self-metrics; it never
calls into this registry and this registry never calls into it, so the export thread (or a
Prometheus scrape) collecting while the reading thread installs a new plan cannot
deadlock: the only lock on that path is this registry's own, held for plain dict work.
The SDK's cardinality limit does not apply either: ``limits.max_series_per_metric`` is
the only guard, and every point it refuses is counted.

What a point applies to (the two kinds of instrument, see :mod:`translator.series`):

- **State** (gauge, up-down counter, counter ``mode: total``): the newest value of each
  series among the points given, in order. When the points are a source's whole current
  state (``replaces``: a document, a history array) a series they do not have is no
  longer exported (no ghost series); cumulative sums keep their stream aside so that one
  that comes back never goes down under an old start time.
- **Events** (histogram, counter ``mode: increment``): only the points the source marks as
  new add to their series, once.

This is the only module that records mapped metrics. Nothing here raises on data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from translator import __version__
from translator.engine import AttributeSet, Drop, DropReason, Point
from translator.export import METER_NAME
from translator.mapping.plan import CounterMode, InstrumentKind, InstrumentSpec, MetricRule, Plan
from translator.series import UNKNOWN_START, HistogramSeries, NumberSeries

_log = logging.getLogger(__name__)


class InstrumentConflict(ValueError):
    """A new plan redeclares an existing instrument with another type, unit or buckets."""


@dataclass(slots=True)
class _Instrument:
    spec: InstrumentSpec
    max_series: int
    by_source: dict[str, dict[AttributeSet, Any]] = field(default_factory=dict)
    """source key -> attributes -> NumberSeries (HistogramSeries for a histogram)."""
    parked: dict[tuple[str, AttributeSet], NumberSeries] = field(default_factory=dict)
    """Cumulative-sum series no longer exported (absent, stale, file gone, instrument
    removed by a reload): their stream, so that one that comes back carries on, or, if
    its total went down, starts a new stream instead of going down under the old start."""
    retired: bool = False
    overflow_warned: bool = False
    event: bool = False
    """Histogram or counter increment: only new records add to it."""
    histogram: bool = False
    cumulative_sum: bool = False
    """Counter total or up-down counter: a running total with a stream start time."""
    monotonic: bool = False

    def __post_init__(self) -> None:
        spec = self.spec
        self.histogram = spec.kind is InstrumentKind.HISTOGRAM
        self.event = self.histogram or spec.mode is CounterMode.INCREMENT
        self.cumulative_sum = not self.event and spec.kind is not InstrumentKind.GAUGE
        self.monotonic = spec.kind is InstrumentKind.COUNTER

    def live_count(self) -> int:
        return sum(len(s) for s in self.by_source.values())

    def park(self, source: str, series_of: dict[AttributeSet, Any]) -> None:
        if not self.cumulative_sum:
            return
        parked = self.parked
        for attributes, series in series_of.items():
            parked[(source, attributes)] = series
        while len(parked) > self.max_series:  # bounded like live series: the oldest goes
            del parked[next(iter(parked))]


class InstrumentRegistry:
    """Creates instruments from plans, applies data points to their series, exports them.

    ``apply``, ``install`` and ``forget`` run on the reading thread; ``complete`` on the
    export thread or a Prometheus scrape. One lock keeps them apart; nothing outside this
    class is called while it is held.
    """

    def __init__(self, scope: InstrumentationScope | None = None) -> None:
        self._scope = scope or InstrumentationScope(METER_NAME, __version__)
        self._lock = threading.Lock()
        self._instruments: dict[str, _Instrument] = {}
        self.changes = 0
        """Counts the calls that changed what :meth:`saved_state` would hold (install,
        apply, forget): a saver compares it with the count it last saved."""

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
                        f"to {spec.describe()}; a metric's type, unit and buckets stay what "
                        "its consumers first saw: rename it, or restart the bridge"
                    )

    def install(self, plans: Sequence[Plan]) -> None:
        """Make the instruments of ``plans`` the live ones; others stop reporting."""
        self.check(plans)
        wanted: dict[str, tuple[InstrumentSpec, int]] = {}
        for plan in plans:
            for spec in plan.instruments:
                wanted[spec.name] = (spec, plan.max_series)
        with self._lock:
            self.changes += 1
            for name, instrument in self._instruments.items():
                if name not in wanted and not instrument.retired:
                    instrument.retired = True
                    for source, series_of in instrument.by_source.items():
                        instrument.park(source, series_of)
                    instrument.by_source.clear()
            for name, (spec, max_series) in wanted.items():
                live = self._instruments.get(name)
                if live is None:
                    live = self._instruments[name] = _Instrument(spec, max_series)
                else:
                    live.spec = spec  # the description may have changed
                live.retired = False
                live.max_series = max_series

    # --- data ----------------------------------------------------------------------------

    def apply(
        self,
        source: str,
        points: list[Point],
        *,
        replaces: bool,
        first_new: int = 0,
        events: bool = True,
        one_record: bool = False,
        start_ns: int = UNKNOWN_START,
        counts: Counter[str] | None = None,
    ) -> list[Drop]:
        """Apply one read's points, in file order.

        ``replaces``: the points are the source's whole current state. ``points[:first_new]``
        come from records applied before (a history array read again): they set state but
        add no event and are not counted again. ``events`` False: the new points add no
        event either (a document rewritten under the same version key). ``one_record``:
        the points come from one record, where two running totals for one series are a
        mapping mistake. ``start_ns``: the job's start, when the mapping names it.

        Adds the points applied per metric to ``counts``; returns the points refused (by
        the cardinality guard, or as duplicates), as drops.
        """
        drops: list[Drop] = []
        applied: Counter[str] = Counter() if counts is None else counts
        now_ns = time.time_ns()
        if start_ns > now_ns:
            start_ns = now_ns  # a start in the future: the clocks disagree; never after a point
        with self._lock:
            self.changes += 1
            instruments = self._instruments
            newest: dict[str, dict[AttributeSet, tuple[MetricRule, float | int]]] = {}
            for i, (rule, attributes, value) in enumerate(points):
                name = rule.name
                instrument = instruments.get(name)
                if instrument is None or instrument.retired:
                    continue
                if instrument.event:
                    if (
                        events
                        and i >= first_new
                        and self._add_event(
                            instrument, source, rule, attributes, value, now_ns, drops
                        )
                    ):
                        applied[name] += 1
                    continue
                latest = newest.get(name)
                if latest is None:
                    latest = newest[name] = {}
                elif one_record and instrument.monotonic and attributes in latest:
                    # Two running totals for one series in one document (a for_each without
                    # a distinguishing attribute): taking both would look like a reset.
                    detail = f"{name} already has a running total for {dict(attributes)} here"
                    drops.append(Drop(rule, DropReason.DUPLICATE, detail))
                    continue
                latest[attributes] = (rule, value)
                if i >= first_new:
                    applied[name] += 1
            for name, latest in newest.items():
                self._set_state(instruments[name], source, latest, replaces, start_ns, drops)
            if replaces:
                for instrument in instruments.values():
                    if instrument.event or instrument.retired or instrument.spec.name in newest:
                        continue
                    gone = instrument.by_source.pop(source, None)
                    if gone:
                        instrument.park(source, gone)
        return drops

    def _add_event(
        self,
        instrument: _Instrument,
        source: str,
        rule: MetricRule,
        attributes: AttributeSet,
        value: float | int,
        now_ns: int,
        drops: list[Drop],
    ) -> bool:
        series_of = instrument.by_source.get(source)
        if series_of is None:
            series_of = instrument.by_source[source] = {}
        series = series_of.get(attributes)
        if series is None:
            if self._over_limit(instrument, rule, drops, instrument.live_count()):
                return False
            # The bridge starts aggregating now: a true reset at a known start.
            if instrument.histogram:
                series = HistogramSeries(dict(attributes), instrument.spec.buckets or (), now_ns)
            else:
                series = NumberSeries(dict(attributes), 0, now_ns)
            series_of[attributes] = series
        if isinstance(series, HistogramSeries):
            series.record(value)
        else:
            series.value += value
        return True

    def _set_state(
        self,
        instrument: _Instrument,
        source: str,
        latest: dict[AttributeSet, tuple[MetricRule, float | int]],
        replaces: bool,
        start_ns: int,
        drops: list[Drop],
    ) -> None:
        old: dict[AttributeSet, NumberSeries] = instrument.by_source.get(source) or {}
        target = {} if replaces else old
        # The guard counts the other sources' series and this source's as they will be.
        others = instrument.live_count() - len(old)
        cumulative = instrument.cumulative_sum
        for attributes, (rule, value) in latest.items():
            series = old.get(attributes)
            if series is None:
                live = others + (len(target) if replaces else len(old))
                if self._over_limit(instrument, rule, drops, live):
                    continue
                if cumulative:
                    series = instrument.parked.pop((source, attributes), None)
                if series is None:
                    series = NumberSeries(dict(attributes), value, start_ns)
            if cumulative:
                series.set_total(value, start_ns, monotonic=instrument.monotonic)
            else:
                series.value = value
            target[attributes] = series
        if replaces:
            gone = {a: s for a, s in old.items() if a not in target}
            if gone:
                instrument.park(source, gone)
        if target:
            instrument.by_source[source] = target
        else:
            instrument.by_source.pop(source, None)

    def forget(self, source: str) -> None:
        """Stop reporting everything ``source`` contributed (stale, or gone)."""
        with self._lock:
            self.changes += 1
            for instrument in self._instruments.values():
                gone = instrument.by_source.pop(source, None)
                if gone:
                    instrument.park(source, gone)

    # --- export --------------------------------------------------------------------------

    def metrics(self, now_ns: int | None = None) -> list[Metric]:
        """Every live series as the data model's points, stamped ``now_ns``."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cumulative = AggregationTemporality.CUMULATIVE
        out = []
        with self._lock:
            for instrument in self._instruments.values():
                if instrument.retired or not instrument.by_source:
                    continue
                spec = instrument.spec
                every = [s for by_attrs in instrument.by_source.values() for s in by_attrs.values()]
                data: Gauge | Sum | Histogram
                if instrument.histogram:
                    data = Histogram([s.point(now_ns) for s in every], cumulative)
                elif spec.kind is InstrumentKind.GAUGE:
                    data = Gauge([s.number_point(now_ns, cumulative=False) for s in every])
                else:
                    points = [s.number_point(now_ns, cumulative=True) for s in every]
                    data = Sum(points, cumulative, is_monotonic=instrument.monotonic)
                out.append(Metric(spec.name, spec.description, spec.unit, data))
        return out

    def complete(self, data: MetricsData | None, resource: Resource) -> MetricsData:
        """``data`` (one SDK collection of the bridge's own metrics) with every mapped
        metric added to it, in the registry's instrumentation scope."""
        metrics = self.metrics()
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
            scopes.insert(0, ScopeMetrics(self._scope, metrics, ""))
        return MetricsData(resource_metrics=[replace(first, scope_metrics=scopes), *rest])

    # --- state across restarts ---------------------------------------------------------

    def saved_state(self) -> dict[str, Any]:
        """Every live series, as JSON values (for a restart with ``STATE_DIR``)."""
        out: dict[str, Any] = {}
        with self._lock:
            for name, instrument in self._instruments.items():
                if instrument.retired or not instrument.by_source:
                    continue
                spec = instrument.spec
                out[name] = {
                    "identity": _identity_json(spec),
                    "series": [
                        {"source": source, "attributes": list(attributes), **series.to_json()}
                        for source, series_of in instrument.by_source.items()
                        for attributes, series in series_of.items()
                    ],
                }
        return out

    def restore(self, saved: dict[str, Any], sources: set[str]) -> int:
        """Bring back the saved series of ``sources`` whose instrument is installed with the
        same type, unit, mode and buckets; return how many. Raises ValueError, naming the
        instrument, on a saved state that does not hold together."""
        restored = 0
        with self._lock:
            for name, entry in saved.items():
                instrument = self._instruments.get(name)
                if instrument is None or instrument.retired:
                    continue
                try:  # a damaged or hand-edited file can hold any JSON anywhere
                    restored += self._restore_one(instrument, entry, sources)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
                except (AttributeError, KeyError, TypeError) as exc:
                    problem = f"not saved series of the shape this version writes ({exc})"
                    raise ValueError(f"{name}: {problem}") from None
        return restored

    @staticmethod
    def _restore_one(instrument: _Instrument, entry: Any, sources: set[str]) -> int:
        spec = instrument.spec
        if entry.get("identity") != _identity_json(spec):
            return 0  # redefined since: its old series mean something else
        restored = 0
        for item in entry["series"]:
            source = item["source"]
            if source not in sources:
                continue
            attributes = tuple((str(k), v) for k, v in item["attributes"])
            plain = dict(attributes)
            if instrument.histogram:
                series: Any = HistogramSeries.from_json(plain, spec.buckets or (), item)
            else:
                series = NumberSeries.from_json(plain, item)
            if instrument.live_count() < instrument.max_series:  # the guard holds
                instrument.by_source.setdefault(source, {})[attributes] = series
                restored += 1
        return restored

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


def _identity_json(spec: InstrumentSpec) -> list[Any]:
    return [spec.kind.value, spec.unit, spec.mode.value if spec.mode else None,
            list(spec.buckets) if spec.buckets is not None else None]  # fmt: skip
