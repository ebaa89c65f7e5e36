"""Cases a and b: how fast a JSON Lines backlog goes through, as a whole program.

a. The default mapping as JSON Lines (``bench/mappings/ml-training-jsonl.yaml``),
   ``run --once`` with OTEL_METRICS_EXPORTER=none, against the hand-coded sidecar of
   ``bench.baseline`` (synchronous SDK instruments and an InMemoryMetricReader collected
   once). A second bridge run with the console exporter (a reader attached, one export at
   the end) checks that every record arrived and makes the SDK aggregation comparable.
b. Gauges and counters only, against reading and ``json.loads`` of every line (the floor),
   with ``orjson.loads`` (the bridge's own parser) shown for context.

Every program runs as a child; rates come from its own CPU time (wait4) and wall time,
start-up and imports included. Runs are interleaved; the best of the repeats counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.data import gauges_counters_mapping, jsonl_mapping, write_backlog
from bench.modes import Mode
from bench.processes import Measured, bridge_command, child_env, module_command, run_measured
from bench.report import CaseResult, Row

_HISTOGRAM_COUNT = re.compile(r"^\s*ml\.training\.processing_time_ms\{[^}]*\} count=(\d+)", re.M)


@dataclass(frozen=True, slots=True)
class _Program:
    key: str
    label: str
    command: list[str]
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Best:
    wall_s: float
    cpu_s: float
    max_rss_kib: int
    runs: tuple[Measured, ...]

    def rate_cpu(self, records: int) -> float:
        return records / self.cpu_s

    def rate_wall(self, records: int) -> float:
        return records / self.wall_s


def _programs(backlog: Path) -> list[_Program]:
    def bridge(exporter: str) -> dict[str, str]:
        return child_env({"METRICS_FILE_PATH": str(backlog), "OTEL_METRICS_EXPORTER": exporter})

    run_once = ("run", "--once", "--mapping")
    full, gauges_counters = jsonl_mapping(), gauges_counters_mapping()
    return [
        _Program("ours", "bridge, default mapping as JSON Lines, exporter none",
                 bridge_command(*run_once, str(full)), bridge("none")),
        _Program("ours_reader", "bridge, same, console exporter (reader attached)",
                 bridge_command(*run_once, str(full)), bridge("console")),
        _Program("baseline", "hand-coded SDK sidecar (bench/baseline.py)",
                 module_command("bench.baseline", "jsonl", str(backlog)), child_env()),
        _Program("ours_gc", "bridge, gauges and counters only, exporter none",
                 bridge_command(*run_once, str(gauges_counters)), bridge("none")),
        _Program("floor_json", "read + json.loads per line (bench/floor.py)",
                 module_command("bench.floor", str(backlog)), child_env()),
        _Program("floor_orjson", "read + orjson.loads per line",
                 module_command("bench.floor", str(backlog), "--parser", "orjson"), child_env()),
    ]


def _check_output(program: _Program, measured: Measured, records: int) -> None:
    """Each program must have applied every record; a fast wrong answer is no answer."""
    measured.check(program.label)
    if program.key == "ours_reader":
        counts = [int(c) for c in _HISTOGRAM_COUNT.findall(measured.stdout)]
        if counts != [records]:
            raise RuntimeError(
                f"{program.label}: expected one processing_time histogram with count={records}, "
                f"found {counts}"
            )
    elif program.key == "baseline":
        summary = json.loads(measured.stdout.strip().splitlines()[-1])
        if summary != {"records": records, "histogram_count": records}:
            raise RuntimeError(f"{program.label}: applied {summary}, expected {records} records")
    elif program.key.startswith("floor") and measured.stdout.strip() != str(records):
        raise RuntimeError(f"{program.label}: parsed {measured.stdout.strip()!r} lines")


def _run_all(
    programs: Sequence[_Program], records: int, repeats: int, logs: Path
) -> dict[str, _Best]:
    runs: dict[str, list[Measured]] = {p.key: [] for p in programs}
    for _ in range(repeats):
        for program in programs:
            measured = run_measured(program.command, program.env, logs, timeout_s=900)
            _check_output(program, measured, records)
            runs[program.key].append(measured)
    return {
        key: _Best(
            wall_s=min(m.wall_s for m in found),
            cpu_s=min(m.cpu_s for m in found),
            max_rss_kib=max(m.max_rss_kib for m in found),
            runs=tuple(found),
        )
        for key, found in runs.items()
    }


def run(mode: Mode, work: Path) -> list[CaseResult]:
    a = CaseResult("a. throughput, default mapping (JSON Lines backlog)")
    b = CaseResult("b. throughput, gauges and counters only, against JSON parsing")
    backlog = work / "backlog.jsonl"
    size = write_backlog(backlog, mode.records)
    one = work / "one-record.jsonl"
    write_backlog(one, 1)
    programs = _programs(backlog)
    logs = work / "logs"
    best = _run_all(programs, mode.records, mode.throughput_repeats, logs)
    # The fixed cost of a run (interpreter, imports, set-up, shutdown): one record.
    fixed = _run_all(_programs(one), 1, 1, logs)
    n = mode.records
    judged = mode.judged

    def times(
        ours: _Best, other: _Best, rate: str, target: float
    ) -> tuple[float, float, bool | None]:
        mine = ours.rate_cpu(n) if rate == "cpu" else ours.rate_wall(n)
        theirs = other.rate_cpu(n) if rate == "cpu" else other.rate_wall(n)
        return mine, theirs, (mine / theirs >= target) if judged else None

    what = f"{n:,} records ({size / 1e6:.0f} MB)"
    for rate, label in (("cpu", "CPU time"), ("wall", "wall time")):
        mine, theirs, met = times(best["ours"], best["baseline"], rate, 3.0)
        a.rows.append(Row("a", f"records/s by {label}, {what}, 9 metrics, exporter none",
                          "rec/s", mine, theirs, "hand-coded SDK sidecar", "≥ 3x", met))
    mine, theirs, met = times(best["ours_reader"], best["baseline"], "cpu", 3.0)
    a.rows.append(Row("a", "same by CPU time, console exporter: a reader aggregates, as in "
                      "the baseline", "rec/s", mine, theirs, "hand-coded SDK sidecar", "≥ 3x", met))
    for rate, label in (("cpu", "CPU time"), ("wall", "wall time")):
        mine, theirs, _ = times(best["ours_gc"], best["floor_json"], rate, 0.3)
        met = (mine / theirs >= 0.3) if judged else None
        b.rows.append(Row("b", f"records/s by {label}, {what}, 7 gauges and counters",
                          "rec/s", mine, theirs, "read + json.loads", "≥ 30%", met, "percent"))
    mine, theirs, _ = times(best["ours_gc"], best["floor_orjson"], "cpu", 0.3)
    b.rows.append(Row("b", "same by CPU time, against the bridge's own parser", "rec/s",
                      mine, theirs, "read + orjson.loads", "—", None, "percent"))

    def line(key: str) -> str:
        program = next(p for p in programs if p.key == key)
        found, once = best[key], fixed[key]
        net_cpu = found.cpu_s - once.cpu_s
        net = f"{n / net_cpu:,.0f} rec/s" if net_cpu > 0 else "—"
        per_record = f"{1e6 * net_cpu / n:.1f} µs" if net_cpu > 0 else "—"
        runs = ", ".join(f"{m.wall_s:.2f} s wall / {m.cpu_s:.2f} s CPU" for m in found.runs)
        return (
            f"| {program.label} | {runs} | {found.max_rss_kib / 1024:.0f} MiB | "
            f"{once.cpu_s:.2f} s | {net} | {per_record} |"
        )

    header = [
        f"Backlog: {n:,} documents of the brief's shape, one per line, {size / 1e6:.1f} MB. "
        f"Best of {mode.throughput_repeats} interleaved run(s) per program.",
        "",
        "| Program | Runs | Peak RSS | Fixed cost (1-record run, CPU) | Rate without the "
        "fixed cost (CPU) | CPU per record |",
        "|---|---|---:|---:|---:|---:|",
    ]
    a.details += [*header, *(line(k) for k in ("ours", "ours_reader", "baseline"))]
    a.details += [
        "",
        f"Checked: the console-exporter run exported one `ml.training.processing_time_ms` "
        f"histogram with count={n}; the baseline applied {n} records.",
    ]
    b.details += [*header, *(line(k) for k in ("ours_gc", "floor_json", "floor_orjson"))]
    return [a, b]
