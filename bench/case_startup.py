"""Case f: from process start to the first export arriving at a real OTLP/gRPC receiver.

The document exists before the bridge starts; the clock starts just before the child is
spawned and stops in the receiver's gRPC handler. The comparison is the floor any Python
OTLP/gRPC sidecar pays: starting Python and importing the SDK and the gRPC exporter.
One more run under ``python -X importtime`` lists where import time goes.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.data import DocumentWriter
from bench.modes import Mode
from bench.processes import Sidecar, bridge_command, child_env, rss_kib, run_measured
from bench.receiver import Receiver
from bench.report import CaseResult, Row

_TARGET_S = 1.0
_FLOOR_IMPORTS = (
    "import opentelemetry.sdk.metrics, opentelemetry.sdk.resources; "
    "import opentelemetry.exporter.otlp.proto.grpc.metric_exporter"
)


@dataclass(frozen=True, slots=True)
class ImportTime:
    module: str
    self_us: int
    cumulative_us: int
    depth: int


def parse_importtime(text: str) -> list[ImportTime]:
    """The lines ``python -X importtime`` writes to stderr, in order."""
    found = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        name = parts[2][1:]  # one space follows the bar; then two per nesting level
        depth = (len(name) - len(name.lstrip(" "))) // 2
        found.append(ImportTime(name.strip(), int(parts[0]), int(parts[1]), depth))
    return found


def _start_once(
    receiver: Receiver, work: Path, run: int, *, python_flags: tuple[str, ...] = ()
) -> tuple[float, int, Sidecar]:
    job = f"bench-startup-{run}"
    writer = DocumentWriter(work / f"{job}.json", job)
    writer.write()
    command = bridge_command("run")
    command[1:1] = python_flags
    sidecar = Sidecar(
        command,
        child_env({
            "METRICS_FILE_PATH": str(writer.path),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.address,
        }),
        work / "logs", f"bridge-startup-{run}",
    )
    with sidecar:
        try:
            arrival = receiver.job_arrival(job, timeout_s=30, after_s=sidecar.started_at_s)
        except TimeoutError:
            raise RuntimeError(f"no first export; log:\n{sidecar.log_tail()}") from None
        rss = rss_kib(sidecar.pid)
    return arrival.received_at_s - sidecar.started_at_s, rss, sidecar


def run(mode: Mode, work: Path) -> list[CaseResult]:
    result = CaseResult("f. start-up to the first export")
    folder = work / "startup"
    folder.mkdir(parents=True, exist_ok=True)
    times: list[float] = []
    rss: list[int] = []
    with Receiver() as receiver:
        for i in range(mode.startup_runs):
            took, resident, _ = _start_once(receiver, folder, i)
            times.append(took)
            rss.append(resident)
        _, _, traced = _start_once(
            receiver, folder, mode.startup_runs, python_flags=("-X", "importtime")
        )
    floor = [
        run_measured([sys.executable, "-c", _FLOOR_IMPORTS], child_env(), work / "logs",
                     timeout_s=60).check("the import floor").wall_s
        for _ in range(mode.startup_runs)
    ]
    median, floor_median = statistics.median(times), statistics.median(floor)
    result.rows.append(Row(
        "f", f"process start → first export at the receiver (median of {len(times)})", "s",
        median, floor_median, "python + import SDK and OTLP/gRPC exporter", "< 1 s",
        (median < _TARGET_S) if mode.judged else None,
    ))
    result.details += [
        "- Runs (ms): " + ", ".join(f"{t * 1000:.0f}" for t in times)
        + f"; RSS at the first export {statistics.median(rss) / 1024:.1f} MiB (median).",
        "- Floor runs, `python -c` importing the SDK and the gRPC exporter (ms): "
        + ", ".join(f"{t * 1000:.0f}" for t in floor) + ".",
    ]
    imports = parse_importtime(traced.log_path.read_text(errors="replace"))
    if imports:
        top = sorted((i for i in imports if i.depth == 0), key=lambda i: -i.cumulative_us)
        total_us = sum(i.cumulative_us for i in imports if i.depth == 0)
        heaviest = sorted(imports, key=lambda i: -i.self_us)[:10]
        result.details += [
            "",
            f"Import time under `python -X importtime` (one extra run, not in the median): "
            f"{total_us / 1000:.0f} ms in all. Top-level imports by cumulative time "
            "(lazy imports inside functions show up as top-level):",
            "",
            "| Module | Cumulative | Self |",
            "|---|---:|---:|",
            *(f"| `{i.module}` | {i.cumulative_us / 1000:.1f} ms | {i.self_us / 1000:.1f} ms |"
              for i in top[:12]),
            "",
            "Heaviest single modules by self time: "
            + ", ".join(f"`{i.module}` {i.self_us / 1000:.1f} ms" for i in heaviest) + ".",
        ]
    return [result]
