"""The bridge's own health, exported through the same pipeline as the mapped metrics.

Counts are plain integers, bumped on the reading thread (exports: on the export thread)
and read by observable callbacks, which copy each dict with ``list(d.items())`` (one step
under the GIL); no lock is taken on the hot path.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

PREFIX = "ml_metrics_bridge"
FILE_PATH = "file.path"
"""The attribute naming the file a self-metric is about: the semantic conventions'
``file.path``. Not ``source.path``: ``source.*`` is their network namespace (``source.address``)."""

_Reader = Callable[[], list[tuple[dict[str, str], float | int]]]


class Stats:
    """What the bridge did so far; every field is cumulative except ``newest_data``."""

    def __init__(self) -> None:
        self.records_read: Counter[str] = Counter()  # by source path
        self.read_errors: Counter[tuple[str, str]] = Counter()  # (source path, kind)
        self.points_emitted: Counter[str] = Counter()  # by metric name
        self.points_dropped: Counter[tuple[str, str, str]] = Counter()  # (metric, rule, reason)
        self.exports: Counter[str] = Counter()  # by outcome: success / failure
        self.reloads: Counter[str] = Counter()  # by outcome
        self.newest_data: dict[str, float] = {}  # source path -> wall time of the newest read

    def data_age_s(self, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        return {path: max(0.0, now - at) for path, at in list(self.newest_data.items())}

    def register(self, meter: Meter) -> None:
        """Create the observable instruments that report these numbers."""

        def counter(name: str, unit: str, description: str, read: _Reader) -> None:
            meter.create_observable_counter(
                f"{PREFIX}.{name}",
                callbacks=[_callback(read)],
                unit=unit,
                description=description,
            )

        counter(
            "records.read",
            "{record}",
            "Documents or JSON Lines records applied.",
            lambda: [({FILE_PATH: p}, n) for p, n in list(self.records_read.items())],
        )
        counter(
            "read.errors",
            "{error}",
            "Failed reads of a source, by kind.",
            lambda: [
                ({FILE_PATH: p, "error.type": k}, n)
                for (p, k), n in list(self.read_errors.items())
            ],
        )
        counter(
            "points.emitted",
            "{point}",
            "Data points produced, by metric.",
            lambda: [({"metric.name": m}, n) for m, n in list(self.points_emitted.items())],
        )
        counter(
            "points.dropped",
            "{point}",
            "Data points dropped, by metric, mapping rule and reason.",
            lambda: [
                ({"metric.name": m, "rule": r, "reason": why}, n)
                for (m, r, why), n in list(self.points_dropped.items())
            ],
        )
        counter(
            "export.failures",
            "{failure}",
            "Exports that failed (the collector was unreachable?).",
            lambda: [({}, self.exports["failure"])],
        )
        counter(
            "config.reloads",
            "{reload}",
            "Mapping reloads, by outcome.",
            lambda: [({"outcome": o}, n) for o, n in list(self.reloads.items())],
        )
        meter.create_observable_gauge(
            f"{PREFIX}.source.data_age",
            callbacks=[
                _callback(
                    lambda: [({FILE_PATH: p}, age) for p, age in self.data_age_s().items()]
                )
            ],
            unit="s",
            description="Seconds since the newest data was read from a source; alert on growth.",
        )


def _callback(read: _Reader) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attrs) for attrs, value in list(read())]

    return observe
