"""What the OpenTelemetry SDK exports after points are applied (InMemoryMetricReader)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from translator.engine import DropReason, evaluate
from translator.instruments import InstrumentConflict, InstrumentRegistry
from translator.mapping import Plan, compile_mapping
from translator.series import start_time_ns
from translator.statefile import SeriesStateFile


def compile_metrics(metrics: str, extra: str = "") -> Plan:
    return compile_mapping(f"version: 1\n{extra}metrics:\n{metrics}", "m.yaml", environ={})


class Harness:
    def __init__(self, plan: Plan) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.registry = InstrumentRegistry()
        self.registry.install([plan])
        self.plan = plan

    def apply(self, record: Any, *, source: str = "f.json", replaces: bool = True) -> list[Any]:
        result = evaluate(self.plan, record)
        return self.registry.apply(source, result.points, replaces=replaces, one_record=True)

    def points(self) -> dict[str, list[Any]]:
        """The data points an exporter gets, by metric name."""
        out: dict[str, list[Any]] = {}
        data = self.registry.complete(self.reader.get_metrics_data(), Resource.create())
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out

    def collect(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for name, points in self.points().items():
            for p in points:
                value = getattr(p, "value", None)
                if value is None:
                    value = (p.count, p.sum, list(p.bucket_counts))
                out.setdefault(name, []).append((dict(p.attributes), value))
        return out


@pytest.fixture
def harness_of() -> Iterator[Any]:
    made: list[Harness] = []

    def make(plan: Plan) -> Harness:
        made.append(Harness(plan))
        return made[-1]

    yield make
    for h in made:
        h.provider.shutdown()


def test_gauge_series_absent_from_the_newest_document_is_no_longer_exported(
    harness_of: Any,
) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: loss, type: gauge, path: $.loss}\n",
            extra="attributes:\n  epoch: {path: $.epoch}\n",
        )
    )
    h.apply({"epoch": 1, "loss": 0.5})
    assert h.collect()["loss"] == [({"epoch": 1}, 0.5)]
    h.apply({"epoch": 2, "loss": 0.4})
    assert h.collect()["loss"] == [({"epoch": 2}, 0.4)]


def test_running_total_is_reported_as_is_and_a_decrease_starts_a_new_stream(
    harness_of: Any,
) -> None:
    h = harness_of(compile_metrics("  - {name: batches, type: counter, mode: total, path: $.b}\n"))
    reported = []
    for total in (150, 150, 160, 100, 120):
        h.apply({"b": total})
        (point,) = h.points()["batches"]
        reported.append((point.value, point.start_time_unix_nano))
    # 160 -> 100: the job was resumed from a checkpoint. The file's value, in a new stream
    # (a counter reset to Prometheus), never the old value added on top.
    assert [value for value, _ in reported] == [150, 150, 160, 100, 120]
    starts = [start for _, start in reported]
    assert starts[0] == starts[1] == starts[2] < starts[3] == starts[4]


def test_a_running_total_with_an_unknown_start_starts_with_a_zero_duration_point(
    harness_of: Any,
) -> None:
    """OTel data model, "Cumulative streams: handling unknown start time": the first point of
    a stream whose start is unknown has its start time equal to its time."""
    h = harness_of(compile_metrics("  - {name: batches, type: counter, mode: total, path: $.b}\n"))
    h.apply({"b": 5000})
    (first,) = h.points()["batches"]
    assert first.start_time_unix_nano == first.time_unix_nano
    h.apply({"b": 5100})
    (second,) = h.points()["batches"]
    assert second.start_time_unix_nano == first.start_time_unix_nano < second.time_unix_nano


def test_increment_counter_adds_every_record(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics("  - {name: tokens, type: counter, mode: increment, path: $.n}\n")
    )
    for n in (5, 7, 0):
        h.apply({"n": n}, replaces=False)
    assert h.collect()["tokens"] == [({}, 12)]


def test_histogram_records_one_observation_per_applied_document(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: step_time, type: histogram, unit: ms, path: $.t, buckets: [100, 200, 300]}\n"
        )
    )
    for t in (50, 250, 250):
        h.apply({"t": t})
    ((_, (count, total, buckets)),) = h.collect()["step_time"]
    assert (count, total, buckets) == (3, 550, [1, 0, 2, 0])


def test_forgetting_a_source_stops_its_series_and_only_its_series(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: loss, type: gauge, path: $.loss}\n",
            extra="attributes:\n  run: {path: $.run}\n",
        )
    )
    h.apply({"run": "a", "loss": 1.0}, source="a.json")
    h.apply({"run": "b", "loss": 2.0}, source="b.json")
    h.registry.forget("a.json")
    assert h.collect()["loss"] == [({"run": "b"}, 2.0)]


def test_cardinality_guard_drops_and_counts_series_past_the_limit(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: loss, type: gauge, path: $.loss}\n",
            extra="limits: {max_series_per_metric: 2}\nattributes:\n  step: {path: $.step}\n",
        )
    )
    drops = []
    for step in range(4):
        drops += h.apply({"step": step, "loss": 0.1}, replaces=False)
    assert [d.reason for d in drops] == [DropReason.CARDINALITY] * 2
    assert sorted(a["step"] for a, _ in h.collect()["loss"]) == [0, 1]


def test_reinstalling_a_plan_retires_instruments_it_no_longer_has(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: loss, type: gauge, path: $.loss}\n  - {name: acc, type: gauge, path: $.acc}\n"
        )
    )
    h.apply({"loss": 1.0, "acc": 0.5})
    smaller = compile_metrics("  - {name: loss, type: gauge, path: $.loss}\n")
    h.registry.install([smaller])
    h.plan = smaller
    h.apply({"loss": 0.9, "acc": 0.6})
    assert set(h.collect()) == {"loss"}


def test_reinstalling_with_a_changed_instrument_type_is_refused(harness_of: Any) -> None:
    h = harness_of(compile_metrics("  - {name: loss, type: gauge, path: $.loss}\n"))
    with pytest.raises(InstrumentConflict, match="would change from gauge"):
        h.registry.install(
            [compile_metrics("  - {name: loss, type: counter, mode: total, path: $.loss}\n")]
        )


def test_histogram_series_of_a_forgotten_source_are_no_longer_exported_until_it_returns(
    harness_of: Any,
) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: t, type: histogram, path: $.t, buckets: [10]}\n",
            extra="attributes:\n  run: {path: $.run}\n",
        )
    )
    h.apply({"run": "a", "t": 1}, source="a.json")
    h.apply({"run": "b", "t": 2}, source="b.json")
    h.registry.forget("a.json")
    assert [a for a, _ in h.collect()["t"]] == [{"run": "b"}]
    h.apply({"run": "a", "t": 3}, source="a.json")  # back: a new stream, counted afresh
    assert sorted((a["run"], v[0]) for a, v in h.collect()["t"]) == [("a", 1), ("b", 1)]


def test_a_histogram_the_new_plan_drops_is_no_longer_exported(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: t, type: histogram, path: $.t, buckets: [10]}\n"
            "  - {name: loss, type: gauge, path: $.loss}\n"
        )
    )
    h.apply({"t": 1, "loss": 0.5})
    assert set(h.collect()) == {"t", "loss"}
    smaller = compile_metrics("  - {name: loss, type: gauge, path: $.loss}\n")
    h.registry.install([smaller])
    h.plan = smaller
    h.apply({"loss": 0.4})
    assert set(h.collect()) == {"loss"}


def test_cardinality_guard_counts_the_series_of_the_document_being_applied(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: util, type: gauge, for_each: '$.gpus[*]', path: $.u,"
            " attributes: {gpu: {path: $.i}}}\n",
            extra="limits: {max_series_per_metric: 3}\n",
        )
    )
    drops = h.apply({"gpus": [{"i": i, "u": i} for i in range(50)]})
    assert len(h.collect()["util"]) == 3
    assert [d.reason for d in drops] == [DropReason.CARDINALITY] * 47


def test_a_rotating_series_at_the_limit_replaces_the_old_one(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: loss, type: gauge, path: $.loss}\n",
            extra="limits: {max_series_per_metric: 1}\nattributes:\n  epoch: {path: $.epoch}\n",
        )
    )
    h.apply({"epoch": 1, "loss": 0.5})
    assert h.apply({"epoch": 2, "loss": 0.4}) == []
    assert h.collect()["loss"] == [({"epoch": 2}, 0.4)]


def test_a_counter_that_goes_away_and_comes_back_never_goes_down_under_its_old_start(
    harness_of: Any,
) -> None:
    h = harness_of(compile_metrics("  - {name: steps, type: counter, mode: total, path: $.s}\n"))
    reported = []
    for doc in ({"s": 100}, {"s": 110}, {}, {"s": 120}, {}, {"s": 6}):
        h.apply(doc)
        reported.append([(p.value, p.start_time_unix_nano) for p in h.points().get("steps", [])])
    assert [[v for v, _ in r] for r in reported] == [[100], [110], [], [120], [], [6]]
    start = reported[0][0][1]
    assert reported[1][0][1] == reported[3][0][1] == start  # carried on: it went up
    assert reported[5][0][1] > start  # came back lower: a new stream
    h.registry.forget("f.json")  # stale, then writing again
    h.apply({"s": 25})
    assert h.collect()["steps"] == [({}, 25)]


def test_two_running_totals_for_one_series_in_one_document_are_not_a_reset(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: c, type: counter, mode: total, for_each: '$.g[*]', path: $.v}\n"
        )
    )
    for _ in range(3):
        drops = h.apply({"g": [{"v": 100}, {"v": 50}]})
    assert h.collect()["c"] == [({}, 100)]
    assert [d.reason for d in drops] == [DropReason.DUPLICATE]


def test_cardinality_guard_covers_the_series_a_key_pattern_makes(harness_of: Any) -> None:
    h = harness_of(
        compile_metrics(
            "  - {name: summary, type: gauge, path: \"$['{metric}']\"}\n",
            extra="limits: {max_series_per_metric: 2}\n",
        )
    )
    drops = h.apply({"a": 1, "b": 2, "c": 3})
    assert [d.reason for d in drops] == [DropReason.CARDINALITY]
    assert sorted(a["metric"] for a, _ in h.collect()["summary"]) == ["a", "b"]


def test_a_known_job_start_starts_the_stream_and_a_rewind_under_it_starts_a_new_one(
    harness_of: Any,
) -> None:
    h = harness_of(compile_metrics("  - {name: steps, type: counter, mode: total, path: $.s}\n"))
    job_start = 1_700_000_000 * 10**9
    reported = []
    for total in (250, 100, 150):
        h.registry.apply("f.json", evaluate(h.plan, {"s": total}).points, replaces=True,
                         start_ns=job_start)  # fmt: skip
        (point,) = h.points()["steps"]
        reported.append((point.value, point.start_time_unix_nano, point.time_unix_nano))
    assert reported[0][:2] == (250, job_start)
    # Rewound under the same job start: a new stream that starts when it is first exported.
    assert reported[1][0] == 100 and reported[1][1] == reported[1][2]
    assert reported[2][:2] == (150, reported[1][1])
    later_start = reported[2][2] + 1
    h.registry.apply("f.json", evaluate(h.plan, {"s": 160}).points, replaces=True,
                     start_ns=later_start)  # fmt: skip
    (point,) = h.points()["steps"]
    assert (point.value, point.start_time_unix_nano) == (160, later_start)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-10-22T10:00:00Z", 1_729_591_200 * 10**9),
        ("2024-10-22T12:00:00+02:00", 1_729_591_200 * 10**9),
        ("2024-10-22T10:00:00", 1_729_591_200 * 10**9),  # no zone: UTC
        (1_729_591_200, 1_729_591_200 * 10**9),
        (1_729_591_200.5, 1_729_591_200_500_000_000),
    ],
)
def test_a_job_start_time_is_an_iso_8601_string_or_seconds(raw: Any, expected: int) -> None:
    assert start_time_ns(raw) == expected


@pytest.mark.parametrize("raw", ["yesterday", True, None, {"t": 1}, float("nan"), -5, 1e14])
def test_an_unusable_job_start_time_says_what_is_wrong(raw: Any) -> None:
    assert isinstance(start_time_ns(raw), str)


def test_saved_series_come_back_with_their_values_and_stream_starts(
    harness_of: Any, tmp_path: Any
) -> None:
    plan = compile_metrics(
        "  - {name: loss, type: gauge, path: $.loss, non_finite: keep}\n"
        "  - {name: steps, type: counter, mode: total, path: $.s}\n"
        "  - {name: t, type: histogram, path: $.t, buckets: [10]}\n"
    )
    h = harness_of(plan)
    h.apply({"loss": float("nan"), "s": 7, "t": 3})
    before = h.points()
    state = SeriesStateFile(str(tmp_path), "m.yaml")
    state.save(h.registry.saved_state(), {"m.yaml|f.json": {"event": None, "sequence": []}})
    saved, problem = state.load()
    assert problem == "" and saved is not None
    again = harness_of(plan)
    assert again.registry.restore(saved["series"], {"f.json"}) == 3
    after = again.points()
    assert math.isnan(after["loss"][0].value)
    assert (after["steps"][0].value, after["steps"][0].start_time_unix_nano) == (
        7,
        before["steps"][0].start_time_unix_nano,
    )
    assert (after["t"][0].count, after["t"][0].start_time_unix_nano) == (
        1,
        before["t"][0].start_time_unix_nano,
    )
    assert harness_of(plan).registry.restore(saved["series"], {"other.json"}) == 0


def test_a_damaged_series_file_says_what_is_wrong(tmp_path: Any) -> None:
    state = SeriesStateFile(str(tmp_path), "m.yaml")
    assert state.load() == (None, "")
    with open(state.path, "w") as fh:
        fh.write("{half")
    saved, problem = state.load()
    assert saved is None and problem.startswith("is not valid JSON")
    with open(state.path, "w") as fh:
        fh.write('{"format": 99}')
    assert state.load() == (None, "is not a series state file of format 1")
