"""Case e: from a write of the document to its data point arriving at a real receiver.

Each write carries a unique ``training_loss`` and a new timestamp; the latency is the
receiver's arrival time (its gRPC handler, ``time.monotonic()``, a system-wide clock)
minus the moment the write began. After each arrival the next write waits a random gap,
uniform over one collection interval, so writes land at every phase of the bridge's
cycle: the figures are what a job writing at an arbitrary moment sees.

With a poll-every-interval loop a sample takes one interval, so several independent
sidecars (each its own file and job.id) run side by side to keep the case short.
"""

from __future__ import annotations

import math
import random
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import DocumentWriter
from bench.modes import Mode
from bench.processes import Sidecar, bridge_command, child_env
from bench.receiver import Receiver
from bench.report import CaseResult, Row

_TARGET_P95_S = 1.0


@dataclass(slots=True)
class _Tally:
    wanted: int
    deadline_s: float
    latencies_s: list[float] = field(default_factory=list)
    lost: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)

    def more_wanted(self) -> bool:
        with self.lock:
            return len(self.latencies_s) < self.wanted and time.monotonic() < self.deadline_s


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _drive(
    index: int, writer: DocumentWriter, job: str, receiver: Receiver, interval_s: float,
    tally: _Tally, stop: threading.Event,
) -> None:
    rng = random.Random(1000 + index)
    wait_s = 2 * interval_s + 5
    sequence = 0
    try:
        while tally.more_wanted() and not stop.is_set():
            if stop.wait(rng.uniform(0.05, interval_s)):
                return
            sequence += 1
            loss = 100.0 + sequence + index / 100
            began = time.monotonic()
            writer.write(loss=loss)
            try:
                arrival = receiver.value_arrival(job, loss, wait_s, after_s=began)
            except TimeoutError:
                with tally.lock:
                    tally.lost += 1
                continue
            with tally.lock:
                tally.latencies_s.append(arrival.received_at_s - began)
    except Exception as exc:  # reported by the case, not lost in a thread
        with tally.lock:
            tally.errors.append(f"sidecar {index}: {type(exc).__name__}: {exc}")


def run(mode: Mode, work: Path) -> list[CaseResult]:
    result = CaseResult("e. latency from a write to the receiver")
    folder = work / "latency"
    folder.mkdir(parents=True, exist_ok=True)
    interval = mode.latency_interval_s
    stop = threading.Event()
    threads: list[threading.Thread] = []
    with ExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        drivers = []
        for i in range(mode.latency_sidecars):
            job = f"bench-latency-{i}"
            writer = DocumentWriter(folder / f"{job}.json", job, seed=i)
            writer.write(loss=1.0)
            sidecar = stack.enter_context(Sidecar(
                bridge_command("run"),
                child_env({
                    "METRICS_FILE_PATH": str(writer.path),
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.address,
                    "COLLECTION_INTERVAL": f"{interval:g}",
                }),
                work / "logs", f"bridge-latency-{i}",
            ))
            drivers.append((writer, job, sidecar))
        for _writer, job, sidecar in drivers:
            try:
                receiver.value_arrival(job, 1.0, timeout_s=30)
            except TimeoutError:
                raise RuntimeError(f"no first export; log:\n{sidecar.log_tail()}") from None
        tally = _Tally(mode.latency_samples, time.monotonic() + mode.latency_budget_s)
        for i, (writer, job, _) in enumerate(drivers):
            thread = threading.Thread(
                target=_drive, args=(i, writer, job, receiver, interval, tally, stop),
                name=f"latency-{i}", daemon=True,
            )
            threads.append(thread)
            thread.start()
        try:
            for thread in threads:
                thread.join(timeout=mode.latency_budget_s + 2 * interval + 30)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
        for _, _, sidecar in drivers:
            sidecar.ensure_alive()
    if tally.errors:
        raise RuntimeError("; ".join(tally.errors))
    samples = tally.latencies_s
    if not samples:
        raise RuntimeError(f"no write arrived ({tally.lost} lost)")
    p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
    what = f"{len(samples)} writes, COLLECTION_INTERVAL={interval:g}"
    result.rows += [
        Row("e", f"write → point at the OTLP/gRPC receiver, p50 ({what})", "s", p50, None,
            "", "—", None),
        Row("e", f"write → point at the OTLP/gRPC receiver, p95 ({what})", "s", p95, None,
            "", "< 1 s", (p95 < _TARGET_P95_S) if mode.judged else None),
    ]
    result.details += [
        f"- {len(samples)} samples from {mode.latency_sidecars} sidecar(s) running side by "
        f"side; {tally.lost} write(s) never arrived within {2 * interval + 5:g} s.",
        f"- min {min(samples) * 1000:.0f} ms, p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {max(samples) * 1000:.0f} ms.",
        "- All samples (ms, in order): " + ", ".join(f"{s * 1000:.0f}" for s in samples) + ".",
    ]
    if len(samples) < mode.latency_samples:
        result.details.append(
            f"- Stopped at the {mode.latency_budget_s:g} s budget with {len(samples)} of "
            f"{mode.latency_samples} samples."
        )
    return [result]
