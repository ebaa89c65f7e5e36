"""Case d: resident memory of the running sidecar, exporting over gRPC to a real receiver.

The bridge runs the default mapping with COLLECTION_INTERVAL=0.1 while the document is
rewritten in place 10 times a second, so (nearly) every version is read, applied and
exported: the soak exercises the whole path, not a sleeping process. RSS (VmRSS) is read
at the first successful export and at the end of the soak. The hand-coded sidecar of
``bench.baseline`` reads the same file on the same schedule and exports to the same
receiver, for comparison.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench.baseline import SERVICE_NAME as BASELINE_SERVICE
from bench.data import DocumentWriter
from bench.modes import Mode
from bench.processes import (
    Sidecar,
    bridge_command,
    child_env,
    module_command,
    peak_rss_kib,
    rss_kib,
)
from bench.receiver import Arrival, Receiver
from bench.report import CaseResult, Row

_JOB = "bench-soak"
_MIB = 1024.0
_TARGET_RSS_MIB = 50.0
_TARGET_GROWTH_MIB = 1.0


def _from_bridge(arrival: Arrival) -> bool:
    return arrival.service != BASELINE_SERVICE and _JOB in arrival.values


def _from_baseline(arrival: Arrival) -> bool:
    return arrival.service == BASELINE_SERVICE


def _writer(writer: DocumentWriter, interval_s: float, stop: threading.Event) -> None:
    next_at = time.monotonic()
    while not stop.is_set():
        writer.write()
        next_at += interval_s
        stop.wait(max(0.0, next_at - time.monotonic()))


def run(mode: Mode, work: Path) -> list[CaseResult]:
    result = CaseResult("d. resident memory over a soak")
    folder = work / "soak"
    folder.mkdir(parents=True, exist_ok=True)
    document = folder / "current.json"
    writer = DocumentWriter(document, _JOB)
    writer.write()
    interval = mode.soak_write_interval_s
    stop = threading.Event()
    with ExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        bridge = stack.enter_context(Sidecar(
            bridge_command("run"),
            child_env({
                "METRICS_FILE_PATH": str(document),
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.address,
                "COLLECTION_INTERVAL": str(interval),
            }),
            work / "logs", "bridge-soak",
        ))
        baseline = stack.enter_context(Sidecar(
            module_command("bench.baseline", "watch", str(document), "--endpoint",
                           receiver.address, "--interval-s", str(interval)),
            child_env(), work / "logs", "baseline-soak",
        ))
        try:
            receiver.first_arrival(_from_bridge, 30, "a first export from the bridge")
        except TimeoutError:
            raise RuntimeError(f"no export from the bridge:\n{bridge.log_tail()}") from None
        bridge_start = rss_kib(bridge.pid)
        try:
            receiver.first_arrival(_from_baseline, 30, "a first export from the baseline")
        except TimeoutError:
            raise RuntimeError(f"no export from the baseline:\n{baseline.log_tail()}") from None
        baseline_start = rss_kib(baseline.pid)
        exports_before = sum(map(_from_bridge, receiver.arrivals()))

        thread = threading.Thread(target=_writer, args=(writer, interval, stop), daemon=True)
        soak_started = time.monotonic()
        thread.start()
        samples: list[tuple[float, int, int]] = []
        try:
            while (elapsed := time.monotonic() - soak_started) < mode.soak_s:
                bridge.ensure_alive()
                baseline.ensure_alive()
                samples.append((elapsed, rss_kib(bridge.pid), rss_kib(baseline.pid)))
                time.sleep(min(1.0, max(0.0, mode.soak_s - elapsed)))
        finally:
            stop.set()
            thread.join(timeout=5)
        bridge_end, baseline_end = rss_kib(bridge.pid), rss_kib(baseline.pid)
        bridge_peak, baseline_peak = peak_rss_kib(bridge.pid), peak_rss_kib(baseline.pid)
        samples.append((time.monotonic() - soak_started, bridge_end, baseline_end))
        exports = sum(map(_from_bridge, receiver.arrivals())) - exports_before
        baseline_exports = sum(map(_from_baseline, receiver.arrivals()))

    judged = mode.judged
    soak = (
        f"{mode.soak_s:g} s soak, document rewritten every {interval:g} s, "
        f"COLLECTION_INTERVAL={interval:g}"
    )
    start_mib, end_mib = bridge_start / _MIB, bridge_end / _MIB
    result.rows += [
        Row("d", "RSS after the first successful OTLP/gRPC export", "MiB", start_mib,
            baseline_start / _MIB, "hand-coded SDK sidecar", "< 50 MiB",
            (start_mib < _TARGET_RSS_MIB) if judged else None),
        Row("d", f"RSS at the end of a {soak}", "MiB", end_mib, baseline_end / _MIB,
            "hand-coded SDK sidecar", "< 50 MiB", (end_mib < _TARGET_RSS_MIB) if judged else None),
        Row("d", "RSS growth over the soak (end - start)", "MiB", end_mib - start_mib,
            (baseline_end - baseline_start) / _MIB, "hand-coded SDK sidecar", "< 1 MiB",
            (end_mib - start_mib < _TARGET_GROWTH_MIB) if judged else None),
    ]
    half = [s for s in samples if s[0] >= mode.soak_s / 2]
    late_growth = (samples[-1][1] - half[0][1]) / _MIB if half else float("nan")
    marks = _quartiles(samples)
    result.details += [
        f"- Exports received from the bridge during the soak: {exports} "
        f"(about {exports / mode.soak_s:.1f}/s); from the baseline in all: {baseline_exports}.",
        "- Bridge RSS at 0/25/50/75/100% of the soak: "
        + " / ".join(f"{s[1] / _MIB:.1f}" for s in marks)
        + f" MiB; peak (VmHWM) {bridge_peak / _MIB:.1f} MiB; "
        f"growth over the second half {late_growth:+.2f} MiB.",
        "- Baseline RSS at the same points: "
        + " / ".join(f"{s[2] / _MIB:.1f}" for s in marks)
        + f" MiB; peak {baseline_peak / _MIB:.1f} MiB.",
    ]
    return [result]


def _quartiles(samples: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    last = len(samples) - 1
    return [samples[round(last * q)] for q in (0, 0.25, 0.5, 0.75, 1.0)]
