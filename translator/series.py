"""The state of one exported series, and the OTLP data point it is at a given time.

A series is one stream of the OpenTelemetry data model: a metric name and an attribute
set, with a start time for sums and histograms. Two kinds of instrument keep two kinds of
state (see the README, "What the bridge guarantees"):

- **State** (gauge, up-down counter, counter ``mode: total``): the value is what the
  newest data says. :meth:`NumberSeries.set_total` starts a new cumulative stream when a
  running total goes down (a resumed job rewound it), with the file's value: it never adds
  the old value, and never goes down under an old start time.
- **Events** (histogram, counter ``mode: increment``): every record adds to the series
  once; the stream starts when the bridge starts aggregating it.

Start times follow the data model's rules. A known start (the job's, named by the
mapping's ``source.start_time_path``) is used when it is after the stream's current start.
Otherwise a cumulative stream whose start is unknown gets it at its first export: that
point's start time equals its time ("Cumulative streams: handling unknown start time":
a zero-duration point with a non-zero value starts an unbroken sequence whose first rate
contribution is zero).

No locks and no OpenTelemetry SDK objects other than the data model's point classes:
the registry (:mod:`translator.instruments`) serialises access.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

from translator.engine import INT64_MAX

UNKNOWN_START = 0
"""``start_ns`` of a cumulative stream whose start is not known: set at its first export."""


@dataclass(slots=True)
class NumberSeries:
    """A gauge, a counter or an up-down counter series."""

    attributes: dict[str, Any]
    value: float | int = 0
    start_ns: int = UNKNOWN_START

    def set_total(self, value: float | int, known_start_ns: int, *, monotonic: bool) -> None:
        """A running total (counter ``total``, up-down counter) now reads ``value``.

        A counter that goes down starts a new stream with the file's value; so does any
        sum whose known start is later than the stream's (the job was started again).
        """
        current = self.start_ns
        # An unknown start is never replaced by a known one: after a reset the known start
        # is the old stream's, and the new stream must not go down under it.
        if known_start_ns > current and current != UNKNOWN_START:
            self.start_ns = known_start_ns  # a later run of the job: a new stream
        elif monotonic and value < self.value and current != UNKNOWN_START:
            # A rewound total (resume from a checkpoint): a reset, a new stream. With no
            # later known start, the new stream's start is set at its first export.
            self.start_ns = UNKNOWN_START
        self.value = value

    def number_point(self, now_ns: int, *, cumulative: bool) -> NumberDataPoint:
        start = 0
        if cumulative:
            if self.start_ns == UNKNOWN_START:
                self.start_ns = now_ns
            start = self.start_ns
        return NumberDataPoint(
            attributes=self.attributes,
            start_time_unix_nano=start,
            time_unix_nano=now_ns,
            value=exportable(self.value),
        )

    def to_json(self) -> dict[str, Any]:
        return {"value": _json_number(self.value), "start_ns": self.start_ns}

    @classmethod
    def from_json(cls, attributes: dict[str, Any], saved: dict[str, Any]) -> NumberSeries:
        return cls(attributes, _number(saved["value"]), int(saved["start_ns"]))


@dataclass(slots=True)
class HistogramSeries:
    """One cumulative explicit-bucket histogram series."""

    attributes: dict[str, Any]
    bounds: tuple[float, ...]
    start_ns: int = field(default_factory=time.time_ns)
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0
    low: float = math.inf
    high: float = -math.inf

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
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

    def to_json(self) -> dict[str, Any]:
        return {
            "start_ns": self.start_ns,
            "counts": self.counts,
            "count": self.count,
            "sum": _json_number(self.total),
            "min": _json_number(self.low),
            "max": _json_number(self.high),
        }

    @classmethod
    def from_json(
        cls, attributes: dict[str, Any], bounds: tuple[float, ...], saved: dict[str, Any]
    ) -> HistogramSeries:
        counts = [int(c) for c in saved["counts"]]
        if len(counts) != len(bounds) + 1:
            raise ValueError("bucket counts do not match the buckets")
        return cls(
            attributes,
            bounds,
            int(saved["start_ns"]),
            counts,
            int(saved["count"]),
            float(_number(saved["sum"])),
            float(_number(saved["min"])),
            float(_number(saved["max"])),
        )


def start_time_ns(raw: Any) -> int | str:
    """The job start time ``raw`` (from the document) in nanoseconds, or what is wrong
    with it. An ISO 8601 string (a zone-less one is UTC) or seconds since 1970."""
    kind = type(raw)
    if kind is str:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return f"{raw[:40]!r} is not an ISO 8601 time"
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    elif kind is int or kind is float:
        seconds = raw
    else:
        return "is not a time (an ISO 8601 string or seconds since 1970)"
    if not 0 < seconds < 1e11:  # NaN fails too; 1e11 s is the year 5138
        return f"{raw!r} is not a plausible time"
    return int(seconds * 1e9)


def exportable(value: float | int) -> float | int:
    """OTLP carries int64: a value past it goes out as a double, never an error that would
    fail the whole export."""
    if type(value) is int and not -INT64_MAX <= value <= INT64_MAX:
        return float(value)
    return value


def _json_number(value: float | int) -> float | int | str:
    """Strict JSON has no NaN or Infinity (``non_finite: keep`` gauges have them)."""
    if type(value) is float and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf': float() reads them back
    return value


def _number(saved: Any) -> float | int:
    if type(saved) is str:
        return float(saved)
    if type(saved) not in (int, float):
        raise ValueError(f"{saved!r} is not a number")
    return saved  # type: ignore[no-any-return]
