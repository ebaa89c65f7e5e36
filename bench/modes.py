"""Sizes and durations of each benchmark mode: --smoke, default, --long."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    judged: bool
    """Whether targets are judged; --smoke only checks that every case runs."""
    records: int
    throughput_repeats: int
    poll_iterations: int
    glob_files: int
    glob_iterations: int
    soak_s: float
    soak_write_interval_s: float
    latency_samples: int
    latency_sidecars: int
    latency_interval_s: float
    latency_budget_s: float
    startup_runs: int


SMOKE = Mode(
    name="smoke", judged=False, records=2_000, throughput_repeats=1, poll_iterations=2_000,
    glob_files=100, glob_iterations=3, soak_s=3.0, soak_write_interval_s=0.1,
    latency_samples=3, latency_sidecars=1, latency_interval_s=0.2, latency_budget_s=10.0,
    startup_runs=1,
)
DEFAULT = Mode(
    name="default", judged=True, records=200_000, throughput_repeats=2, poll_iterations=50_000,
    glob_files=1_000, glob_iterations=30, soak_s=60.0, soak_write_interval_s=0.1,
    latency_samples=30, latency_sidecars=3, latency_interval_s=10.0, latency_budget_s=150.0,
    startup_runs=5,
)
LONG = Mode(
    name="long", judged=True, records=200_000, throughput_repeats=2, poll_iterations=50_000,
    glob_files=1_000, glob_iterations=30, soak_s=600.0, soak_write_interval_s=0.1,
    latency_samples=30, latency_sidecars=3, latency_interval_s=10.0, latency_budget_s=150.0,
    startup_runs=5,
)
