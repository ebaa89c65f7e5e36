"""Fault suite: the bridge as a real process while its collector and its files misbehave.

Collector absent at start, stopped mid-run and restarted, answering slowly; the document
torn by a writer rewriting it in place, deleted, replaced by a directory, grown past the
cap, made unreadable; JSON Lines truncated, rotated and resumed from a checkpoint. Each
test waits on a condition with a timeout (a log line, a received point, an exit), never on
a sleep. The long variants (``--long``) stretch the outages and the writers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.otlp_receiver import OtlpReceiver, Point
from support.process import BridgeProcess, bridge_command, free_port
from support.rotel import RotelCollector

pytestmark = pytest.mark.integration

Spawn = Callable[..., BridgeProcess]

JOB_METADATA = {"job_id": "job-7", "model_name": "resnet-50", "dataset": "imagenet"}
JOB = {"job.id": "job-7", "model.name": "resnet-50", "dataset": "imagenet"}

#: How long the bridge may take to exit after SIGTERM (Kubernetes gives 30 s by default).
GRACE_S = 12.0
#: VmRSS growth allowed while the collector is down and documents keep changing.
RSS_GROWTH_LIMIT_KIB = 4 * 1024


# --- helpers ------------------------------------------------------------------------------


def brief_doc(
    step: int, *, loss: float | None = None, processing_ms: float = 100.0
) -> dict[str, Any]:
    """The brief's document at `step`: a new timestamp (version) and running totals."""
    return {
        "timestamp": f"2024-10-22T10:30:00.{step:06d}Z",
        "job_metadata": JOB_METADATA,
        "training_metrics": {
            "epoch": 1 + step // 100,
            "batch_number": step,
            "training_loss": step / 1000 if loss is None else loss,
            "validation_loss": 0.4,
            "accuracy": 0.8,
            "learning_rate": 0.001,
            "gpu_utilization": 0.9,
            "processing_time_ms": processing_ms,
            "samples_per_second": 150.0,
        },
    }


def rewrite_in_place(path: Path, document: Any) -> None:
    """What a training job does: open with "w" (truncate), write, close; no rename."""
    with open(path, "w") as fh:
        fh.write(json.dumps(document))


def bridge_env(
    endpoint: OtlpReceiver | str, metrics: Path, protocol: str = "grpc", **extra: str
) -> dict[str, str]:
    if isinstance(endpoint, OtlpReceiver):
        protocol = endpoint.protocol
        endpoint = endpoint.address if protocol == "grpc" else endpoint.endpoint
    env = {
        "METRICS_FILE_PATH": str(metrics),
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if protocol == "grpc" else "http/protobuf",
        "COLLECTION_INTERVAL": "0.2",
        # Short SDK timeouts so that an export to a dead collector fails within 0.5 s.
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
    }
    env.update(extra)
    return env


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/PID/status), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1))


def log_lines(process: BridgeProcess, pattern: str) -> list[str]:
    return [line for line in process.stderr.splitlines() if re.search(pattern, line)]


def assert_no_traceback(process: BridgeProcess) -> None:
    assert "Traceback" not in process.stderr, process.describe()


def number_is(expected: float) -> Callable[[Point], bool]:
    return lambda point: point.number == expected


def from_run(points: list[Point], **resource: str) -> list[Point]:
    """The points sent by the process whose resource has `resource` attributes."""
    return [
        p for p in points if all(p.resource_attributes.get(k) == v for k, v in resource.items())
    ]


@pytest.fixture
def absent_receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """An OTLP receiver (gRPC, or the parametrized protocol) whose port nothing listens on
    until the test calls `start()`."""
    receiver = OtlpReceiver(getattr(request, "param", "grpc"), free_port())
    yield receiver
    receiver.stop()


# --- the collector ------------------------------------------------------------------------


@pytest.mark.parametrize("absent_receiver", ["grpc", "http"], indirect=True)
def test_a_collector_absent_at_start_receives_data_once_it_is_up_without_a_restart(
    tmp_path: Path, absent_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(150, loss=0.342))
    bridge = spawn_bridge(bridge_command("run"), env=bridge_env(absent_receiver, metrics))
    # The cause, over HTTP too (whose SDK exporter says only "timeout, max retries or
    # shutdown" when it gives up).
    bridge.wait_for_log(
        r"export to \S+ \(OTLP/\w+\) failed: .*[Cc]onnection refused.*logged once per outage",
        stream="stderr",
    )

    absent_receiver.start()
    loss = absent_receiver.wait_for_point("ml.training.loss", **JOB)
    assert loss.number == 0.342
    batches = absent_receiver.wait_for_point("ml.training.batch_number", **JOB)
    assert (batches.number, batches.monotonic) == (150, True)
    bridge.wait_for_log(r"export to .* recovered after \d+ failed attempts", stream="stderr")
    assert bridge.running, "the same process, never restarted"
    assert len(log_lines(bridge, r"export to .* failed:")) == 1
    assert_no_traceback(bridge)


def _outage(
    tmp_path: Path,
    spawn: Spawn,
    collector: OtlpReceiver | RotelCollector,
    receiver: OtlpReceiver,
    outage_s: float,
) -> None:
    """Stop `collector` for `outage_s` while new versions keep coming, then bring it back;
    `receiver` is where the data ends up (the collector itself, or behind rotel).

    A second exporter (console, on the bridge's stdout) shows every version being applied
    while OTLP cannot deliver, so the test knows exactly how many versions were applied
    without waiting blindly.
    """
    metrics = tmp_path / "current.json"
    step, processing = 10, [100.0]
    rewrite_in_place(metrics, brief_doc(step, processing_ms=processing[-1]))
    endpoint = collector if isinstance(collector, OtlpReceiver) else collector.grpc_address
    env = bridge_env(endpoint, metrics, OTEL_METRICS_EXPORTER="otlp,console")
    bridge = spawn(bridge_command("run"), env=env)
    first = receiver.wait_for_point("ml.training.batch_number", where=lambda p: p.number == step)
    first_hist = receiver.wait_for_point("ml.training.processing_time_ms")
    assert first_hist.histogram.count == 1

    collector.stop()
    seen_before_outage = receiver.request_count
    bridge.wait_for_log(
        r"export to \S+ \(OTLP/gRPC\) failed: .*logged once per outage", stream="stderr"
    )
    rss_start: int | None = None
    ends_at = time.monotonic() + outage_s
    while time.monotonic() < ends_at or len(processing) < 6:
        step += 7
        processing.append(50.0 + len(processing) % 17 * 10)
        mark = bridge.mark()
        rewrite_in_place(metrics, brief_doc(step, processing_ms=processing[-1]))
        # The console exporter prints the new running total once the version is applied.
        bridge.wait_for_log(
            rf"^  ml\.training\.batch_number\{{[^}}]*\}} {step} ", start=mark, stream="output"
        )
        if rss_start is None and len(processing) == 4:
            rss_start = rss_kib(bridge.pid)  # after a few failed exports: imports are warm
    assert rss_start is not None
    growth = rss_kib(bridge.pid) - rss_start
    assert growth < RSS_GROWTH_LIMIT_KIB, (
        f"VmRSS grew by {growth} KiB over a {outage_s:g} s outage ({len(processing)} versions)"
    )
    assert receiver.request_count == seen_before_outage, "nothing can arrive while it is down"

    collector.start()
    batches = receiver.wait_for_point(
        "ml.training.batch_number", where=lambda p: p.number == step, timeout_s=15, **JOB
    )
    hist = receiver.wait_for_point(
        "ml.training.processing_time_ms",
        where=lambda p: p.request_index >= batches.request_index,
        **JOB,
    )
    # Every version applied exactly once, none lost while the collector was away.
    assert hist.histogram.count == len(processing)
    assert hist.histogram.sum == pytest.approx(sum(processing))
    # The cumulative series went on: same start time, so no reset is seen downstream.
    assert batches.start_time_unix_nano == first.start_time_unix_nano
    assert hist.start_time_unix_nano == first_hist.start_time_unix_nano
    assert (batches.temporality, hist.temporality) == ("cumulative", "cumulative")

    recovered = bridge.wait_for_log(
        r"export to \S+ \(OTLP/gRPC\) recovered after (\d+) failed attempts", stream="stderr"
    )
    failed_attempts = int(recovered.group(1))
    assert failed_attempts >= 1
    assert len(log_lines(bridge, r"export to .* failed:")) == 1, "the outage is logged once"
    assert len(log_lines(bridge, r"export to .* recovered after")) == 1
    # The bridge's own failure counter, in the first export after recovery, agrees.
    failures = receiver.wait_for_point("ml_metrics_bridge.export.failures")
    assert failures.number == failed_attempts
    assert bridge.running
    assert_no_traceback(bridge)


def test_collector_outage_keeps_totals_histograms_and_start_times_and_logs_it_once(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    _outage(tmp_path, spawn_bridge, grpc_receiver, grpc_receiver, outage_s=2.5)


def test_a_restarted_real_collector_passes_on_correct_totals_and_histograms(
    tmp_path: Path,
    rotel_collector: RotelCollector,
    grpc_receiver: OtlpReceiver,
    spawn_bridge: Spawn,
) -> None:
    _outage(tmp_path, spawn_bridge, rotel_collector, grpc_receiver, outage_s=1.0)


@pytest.mark.long
def test_long_collector_outage_with_bounded_memory(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    _outage(tmp_path, spawn_bridge, grpc_receiver, grpc_receiver, outage_s=90)


# --- SIGTERM --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 400], ids=["retried", "not-retried"])
def test_an_http_collector_refusing_exports_is_logged_with_its_status(
    tmp_path: Path, http_receiver: OtlpReceiver, spawn_bridge: Spawn, status: int
) -> None:
    http_receiver.fail_with(status)
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    env = bridge_env(http_receiver, metrics, OTEL_EXPORTER_OTLP_TIMEOUT="1000")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    reason = {503: "Service Unavailable", 400: "Bad Request"}[status]
    bridge.wait_for_log(
        rf"export to \S+ \(OTLP/HTTP\) failed: HTTP {status} {reason}\b.*logged once per outage",
        stream="stderr",
    )
    assert_no_traceback(bridge)


@pytest.mark.parametrize("timeout_ms", ["500", "10000"], ids=["gives-up", "still-retrying"])
@pytest.mark.parametrize("absent_receiver", ["grpc", "http"], indirect=True)
def test_run_once_against_a_dead_collector_exits_1_saying_why(
    tmp_path: Path, absent_receiver: OtlpReceiver, spawn_bridge: Spawn, timeout_ms: str
) -> None:
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    env = bridge_env(absent_receiver, metrics, OTEL_EXPORTER_OTLP_TIMEOUT=timeout_ms)
    bridge = spawn_bridge(bridge_command("run", "--once"), env=env)
    assert bridge.wait(timeout_s=GRACE_S) == 1
    if timeout_ms == "500":  # the exporter gives up within the exit deadline
        cause = r"WARNING export to \S+ \(OTLP/\w+\) failed: .*[Cc]onnection refused.*\n"
        why = r"the export failed \(its cause is logged above\)"
    else:  # still retrying at the 5 s deadline: what it met so far is the cause
        cause = r"WARNING the last export did not finish within 5 s \(so far: .*[Cc]onnection refused.*\); exiting\n"
        why = r"the export did not finish within 5 s"
    assert re.search(rf"{cause}.*ERROR   run --once exits 1: {why}\n\Z", bridge.stderr), bridge.stderr
    assert "shutdown can only be called once" not in bridge.output
    assert_no_traceback(bridge)


@pytest.mark.parametrize("timeout_ms", ["10000", "60000"], ids=["sdk-default-10s", "60s"])
def test_sigterm_during_a_hung_export_exits_0_within_the_grace_period(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn, timeout_ms: str
) -> None:
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    # A hung collector holds an export for the exporter's whole timeout; the bridge's last
    # export is bounded by its own 5 s deadline whatever that timeout is.
    env = bridge_env(grpc_receiver, metrics, OTEL_EXPORTER_OTLP_TIMEOUT=timeout_ms)
    bridge = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("ml.training.batch_number", where=lambda p: p.number == 1)
    grpc_receiver.delay_responses(60)
    seen = grpc_receiver.request_count
    rewrite_in_place(metrics, brief_doc(2))
    # The receiver records a request on arrival; its answer is what hangs.
    grpc_receiver.wait_for(lambda: grpc_receiver.request_count > seen, what="an export in flight")

    bridge.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert time.monotonic() - started < 8, "the 5 s shutdown deadline, plus process exit"
    bridge.wait_for_log(r"received SIGTERM: stopping", stream="stderr")
    assert_no_traceback(bridge)


def test_sigterm_during_a_collector_outage_exits_0_within_the_grace_period(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    # The SDK's default 10 s export timeout: it retries the dead port for that long. The
    # console exporter goes first, so its output shows the OTLP export is under way.
    env = bridge_env(
        grpc_receiver,
        metrics,
        OTEL_EXPORTER_OTLP_TIMEOUT="10000",
        OTEL_METRICS_EXPORTER="console,otlp",
    )
    bridge = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("ml.training.loss")
    grpc_receiver.stop()
    mark = bridge.mark()
    # A collection printed by the console exporter: the OTLP export follows it at once,
    # into the dead port, retrying with back-off until its 10 s deadline.
    bridge.wait_for_log(r"^--- export at ", start=mark, stream="output")

    bridge.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert time.monotonic() - started < GRACE_S
    assert_no_traceback(bridge)


def test_sigterm_right_after_a_new_version_exports_that_version_last(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The trainer writes its final document and exits; Kubernetes then stops the sidecar.

    Whatever was complete on disk when SIGTERM arrived must be in the final export.
    """
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1, loss=0.5))
    # A long interval: no heartbeat export can deliver the new version by chance.
    env = bridge_env(grpc_receiver, metrics, COLLECTION_INTERVAL="60")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.5)

    rewrite_in_place(metrics, brief_doc(2, loss=0.25))
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    final = grpc_receiver.requests[-1]
    losses = [p.number for p in final.points if p.name == "ml.training.loss"]
    batches = [p.number for p in final.points if p.name == "ml.training.batch_number"]
    assert (losses, batches) == ([0.25], [2]), (
        "the final export must carry the version on disk at SIGTERM\n" + grpc_receiver.describe()
    )


# --- the document ---------------------------------------------------------------------------

_TEARING_WRITER = r"""
import json, sys, time
path, duration_s = sys.argv[1], float(sys.argv[2])
meta = {"job_id": "job-7", "model_name": "resnet-50", "dataset": "imagenet"}
padding = list(range(3000))  # ~15 KB: written in several chunks, so a reader can see half
step, ends = 0, time.monotonic() + duration_s
while time.monotonic() < ends:
    step += 1
    text = json.dumps({"timestamp": str(step), "job_metadata": meta,
                       "training_metrics": {"training_loss": step / 1000, "batch_number": step,
                                            "padding": padding}})
    with open(path, "w") as fh:  # in place: truncate, then write in 4 KiB pieces
        for i in range(0, len(text), 4096):
            fh.write(text[i:i + 4096])
            fh.flush()
print(f"wrote {step} versions", flush=True)
"""


def _torn_reads(tmp_path: Path, receiver: OtlpReceiver, spawn: Spawn, duration_s: float) -> None:
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(0, loss=0.0))
    bridge = spawn(bridge_command("run"), env=bridge_env(receiver, metrics))
    receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.0)

    writer = spawn(
        [sys.executable, "-c", _TEARING_WRITER, str(metrics), str(duration_s)], name="writer"
    )
    # Half-written documents are read again, not applied. A document is applied once it
    # held still for 5 ms (sources._SECOND_READ_S), which this writer, flat out, may never
    # do: what it wrote may all be skipped until it stops, and nothing torn goes out.
    assert writer.wait(timeout_s=duration_s + 20) == 0
    written = int(writer.wait_for_log(r"wrote (\d+) versions", stream="stdout").group(1))

    # After the writer: one more version, so the last export is known to follow every read.
    rewrite_in_place(metrics, brief_doc(written + 1, loss=(written + 1) / 1000))
    receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == (written + 1) / 1000)
    assert bridge.running
    assert_no_traceback(bridge)

    allowed = {0.0} | {step / 1000 for step in range(1, written + 2)}
    exported = [p.number for p in receiver.points("ml.training.loss")]
    torn = sorted(set(exported) - allowed)
    assert not torn, f"values that were never written (torn reads): {torn[:10]}"
    assert exported == sorted(exported), "an older version was exported after a newer one"
    assert exported[-1] == (written + 1) / 1000


def test_a_document_rewritten_in_place_as_fast_as_possible_is_never_read_torn(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    _torn_reads(tmp_path, grpc_receiver, spawn_bridge, duration_s=2.0)


@pytest.mark.long
def test_long_racing_writer_is_never_read_torn(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    _torn_reads(tmp_path, grpc_receiver, spawn_bridge, duration_s=60.0)


_CAP_BYTES = 2048


def _file_bridge(
    tmp_path: Path, receiver: OtlpReceiver, spawn: Spawn, argv_prefix: tuple[str, ...] = ()
) -> tuple[Path, BridgeProcess]:
    """A bridge reading `value` from one small document, with a 2 KiB size cap."""
    metrics = tmp_path / "data" / "current.json"
    metrics.parent.mkdir()
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "version: 1\n"
        f"source: {{path: '{metrics}', max_bytes: {_CAP_BYTES}}}\n"
        "metrics:\n  - {name: test.value, type: gauge, path: $.value}\n"
    )
    metrics.write_text(json.dumps({"value": 1}))
    env = bridge_env(receiver, metrics, MAPPING_PATH=str(mapping))
    bridge = spawn([*argv_prefix, *bridge_command("run")], env=env)
    receiver.wait_for_point("test.value", where=lambda p: p.number == 1)
    return metrics, bridge


def _oversized(value: int) -> str:
    return json.dumps({"value": value, "padding": "x" * (_CAP_BYTES * 2)})


def test_each_file_fault_is_logged_with_path_and_reason_and_the_restored_file_is_read(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics, bridge = _file_bridge(tmp_path, grpc_receiver, spawn_bridge)
    path = re.escape(str(metrics))

    def replace_by_a_directory() -> None:
        metrics.unlink()
        metrics.mkdir()

    def grow_past_the_cap() -> None:
        metrics.write_text(_oversized(999))

    def nothing() -> None:
        pass

    faults: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("does not exist \\(yet\\)", metrics.unlink, nothing),
        ("is not a regular file \\(a directory\\?\\)", replace_by_a_directory, metrics.rmdir),
        (
            f"is \\d+ bytes, over the {_CAP_BYTES}-byte cap \\(source\\.max_bytes\\)",
            grow_past_the_cap,
            nothing,
        ),
    ]
    for value, (message, break_it, clean_up) in enumerate(faults, start=2):
        mark = bridge.mark()
        break_it()
        bridge.wait_for_log(rf"{path}: {message}", start=mark, stream="output")
        clean_up()
        metrics.write_text(json.dumps({"value": value}))
        grpc_receiver.wait_for_point("test.value", where=number_is(value))
        bridge.wait_for_log(rf"{path}: reading again", start=mark, stream="output")
    assert 999 not in [p.number for p in grpc_receiver.points("test.value")]
    assert bridge.running
    assert_no_traceback(bridge)


def test_a_new_kind_of_file_fault_is_logged_even_while_the_previous_one_lasts(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """Missing, then a directory, then too big, with no good read in between: each problem
    is a different message and must be logged, not swallowed as a repeat of the first."""
    metrics, bridge = _file_bridge(tmp_path, grpc_receiver, spawn_bridge)
    path = re.escape(str(metrics))
    metrics.unlink()
    bridge.wait_for_log(rf"{path}: does not exist", stream="stderr")
    metrics.mkdir()
    bridge.wait_for_log(rf"{path}: is not a regular file", stream="stderr", timeout_s=5)
    metrics.rmdir()
    metrics.write_text(_oversized(999))
    bridge.wait_for_log(
        rf"{path}: is \d+ bytes, over the {_CAP_BYTES}-byte cap", stream="stderr", timeout_s=5
    )
    metrics.write_text(json.dumps({"value": 5}))
    grpc_receiver.wait_for_point("test.value", where=lambda p: p.number == 5)
    assert bridge.running


def _without_file_permission_bypass() -> tuple[str, ...] | None:
    """A command prefix under which chmod 000 really stops reads, or None if there is none.

    As root, permission bits do not apply (CAP_DAC_OVERRIDE). Switching to `nobody` is not
    possible here: the interpreter lives under /root (mode 0700). Dropping the two
    capabilities that bypass file permissions from the bounding and inheritable sets keeps
    uid 0 (so every root-owned file stays reachable through its owner bits) but makes a
    mode-000 file unreadable, exactly as for an unprivileged sidecar.
    """
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = (
        setpriv,
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
    )
    probe = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            "import os, sys, tempfile\n"
            "fd, name = tempfile.mkstemp(); os.close(fd); os.chmod(name, 0)\n"
            "try:\n    open(name).close()\nexcept PermissionError:\n    sys.exit(0)\n"
            "finally:\n    os.unlink(name)\nsys.exit(3)\n",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return prefix if probe.returncode == 0 else None


def test_an_unreadable_file_is_logged_and_read_again_once_readable(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    prefix = _without_file_permission_bypass()
    if prefix is None:
        pytest.skip(
            "running as root without setpriv or CAP_SETPCAP: chmod 000 cannot "
            "stop a root process from reading"
        )
    metrics, bridge = _file_bridge(tmp_path, grpc_receiver, spawn_bridge, prefix)
    metrics.write_text(json.dumps({"value": 2}))
    grpc_receiver.wait_for_point("test.value", where=lambda p: p.number == 2)
    mark = bridge.mark()
    metrics.write_text(json.dumps({"value": 998}))
    metrics.chmod(0)
    bridge.wait_for_log(
        rf"{re.escape(str(metrics))}: cannot be read: Permission denied",
        start=mark,
        stream="stderr",
    )
    metrics.chmod(0o644)
    metrics.write_text(json.dumps({"value": 3}))
    grpc_receiver.wait_for_point("test.value", where=lambda p: p.number == 3)
    # 998 was on disk only while unreadable: had it been exported, the test ran privileged.
    assert 998 not in [p.number for p in grpc_receiver.points("test.value")]
    assert bridge.running
    assert_no_traceback(bridge)


# --- JSON Lines -----------------------------------------------------------------------------

_JSONL_WRITER = r"""
import json, os, sys, time
path, first, count, rotate_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pause_every = int(sys.argv[5]) if len(sys.argv) > 5 else 0
fh = open(path, "a")
for seq in range(first, first + count):
    if seq == rotate_at:  # logrotate's default: rename, then the writer opens a new file
        fh.close()
        os.rename(path, path + ".1")
        fh = open(path, "a")
    line = json.dumps({"one": 1, "seq": seq, "note": "x" * (seq % 23)}) + "\n"
    fh.write(line[:9])  # a line arrives in two writes: the reader must wait for its end
    fh.flush()
    fh.write(line[9:])
    fh.flush()
    if pause_every and seq % pause_every == 0:
        time.sleep(0.005)  # pacing, so that the reader runs while lines keep coming
fh.close()
print(f"appended {count}", flush=True)
"""

_JSONL_MAPPING = """\
version: 1
source: {{path: '{path}', format: jsonl}}
metrics:
  - name: test.records
    type: counter
    mode: increment
    path: $.one
"""


def _jsonl_bridge(
    tmp_path: Path, receiver: OtlpReceiver, spawn: Spawn, **extra: str
) -> tuple[Path, BridgeProcess]:
    log = tmp_path / "metrics.jsonl"
    log.touch()
    mapping = tmp_path / "jsonl.yaml"
    mapping.write_text(_JSONL_MAPPING.format(path=log))
    env = bridge_env(receiver, log, MAPPING_PATH=str(mapping), **extra)
    return log, spawn(bridge_command("run"), env=env)


def _append(
    spawn: Spawn, log: Path, first: int, count: int, *, rotate_at: int = 0, pause_every: int = 0
) -> BridgeProcess:
    argv = [
        sys.executable,
        "-c",
        _JSONL_WRITER,
        str(log),
        str(first),
        str(count),
        str(rotate_at),
        str(pause_every),
    ]
    return spawn(argv, name=f"writer {first}..{first + count - 1}")


def _records_total_is(receiver: OtlpReceiver, expected: int, **resource: str) -> Point:
    def reached() -> Point | None:
        points = from_run(receiver.points("test.records"), **resource)
        if points and points[-1].number > expected:
            raise AssertionError(
                f"test.records = {points[-1].number} > {expected}: "
                f"records applied twice\n{receiver.describe()}"
            )
        return points[-1] if points and points[-1].number == expected else None

    return receiver.wait_for(reached, timeout_s=15, what=f"test.records == {expected}")


def _stays(receiver: OtlpReceiver, expected: int, **resource: str) -> None:
    """Two more exports later the total is still `expected` (nothing applied late)."""
    seen = receiver.request_count
    receiver.wait_for(lambda: receiver.request_count >= seen + 2, what="two more exports")
    points = from_run(receiver.points("test.records"), **resource)
    assert points[-1].number == expected


def test_jsonl_rotation_while_a_writer_appends_loses_and_repeats_nothing(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    log, bridge = _jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge)
    # The bridge has the first file open before the writer starts, so that rotation
    # happens under a running reader (else it would simply never see the first file).
    assert _append(spawn_bridge, log, 1, 1).wait(timeout_s=10) == 0
    _records_total_is(grpc_receiver, 1)
    writer = _append(spawn_bridge, log, 2, 1199, rotate_at=600, pause_every=40)
    assert writer.wait(timeout_s=30) == 0
    _records_total_is(grpc_receiver, 1200)
    _stays(grpc_receiver, 1200)
    assert (tmp_path / "metrics.jsonl.1").exists()
    assert_no_traceback(bridge)


def test_jsonl_copytruncate_loses_and_repeats_nothing(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    log, bridge = _jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge)
    assert _append(spawn_bridge, log, 1, 600, pause_every=40).wait(timeout_s=30) == 0
    # copytruncate loses lines written between the copy and the truncation, whoever reads
    # the file; so the truncation comes once the bridge has them all, like a quiet writer.
    _records_total_is(grpc_receiver, 600)
    shutil.copyfile(log, tmp_path / "metrics.jsonl.1")
    os.truncate(log, 0)
    # Fewer bytes than before the truncation: the only sign of it is a smaller size.
    assert _append(spawn_bridge, log, 601, 400, pause_every=40).wait(timeout_s=30) == 0
    _records_total_is(grpc_receiver, 1000)
    _stays(grpc_receiver, 1000)
    assert_no_traceback(bridge)


def test_jsonl_restart_mid_file_resumes_from_the_checkpoint(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    total = 2000
    log, first = _jsonl_bridge(
        tmp_path,
        grpc_receiver,
        spawn_bridge,
        STATE_DIR=str(state),
        OTEL_RESOURCE_ATTRIBUTES="bridge.run=1",
    )
    # Every phase waits on a condition, none on the clock: on a busy machine a writer that
    # did not wait for the bridge wrote all 2,000 lines before the bridge read any of them.
    # 1. The first bridge is reading the file (and exporting) before the writer starts.
    assert _append(spawn_bridge, log, 1, 1).wait(timeout_s=10) == 0
    _records_total_is(grpc_receiver, 1, **{"bridge.run": "1"})
    # 2. Up to line 1000 while the first bridge runs; it stops once it has applied 200.
    assert _append(spawn_bridge, log, 2, 999, pause_every=20).wait(timeout_s=30) == 0
    grpc_receiver.wait_for_point("test.records", where=lambda p: p.number >= 200)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=GRACE_S) == 0
    applied_first = from_run(grpc_receiver.points("test.records"), **{"bridge.run": "1"})
    checkpointed = int(applied_first[-1].number)
    assert list(state.iterdir()), "a checkpoint was written"
    # 3. Lines written while no bridge runs: the restart resumes mid-file by construction.
    assert _append(spawn_bridge, log, 1001, 500, pause_every=20).wait(timeout_s=30) == 0
    assert checkpointed <= 1000 < log.read_text().count("\n"), "the restart resumes mid-file"

    mapping = tmp_path / "jsonl.yaml"
    env = bridge_env(
        grpc_receiver,
        log,
        MAPPING_PATH=str(mapping),
        STATE_DIR=str(state),
        OTEL_RESOURCE_ATTRIBUTES="bridge.run=2",
    )
    second = spawn_bridge(bridge_command("run"), env=env, name="bridge (restarted)")
    # 4. The rest while the second bridge starts and runs.
    assert _append(spawn_bridge, log, 1501, 500, pause_every=20).wait(timeout_s=30) == 0
    # The new process goes on with the first one's stream (its series are restored from
    # STATE_DIR, same start time): it must apply exactly the rest, so the total is every line.
    resumed = _records_total_is(grpc_receiver, total, **{"bridge.run": "2"})
    assert resumed.start_time_unix_nano == applied_first[-1].start_time_unix_nano
    _stays(grpc_receiver, total, **{"bridge.run": "2"})
    assert_no_traceback(second)


# --- hostile files (issue #15) ----------------------------------------------------------------

_FIFO_SWAPPER = r"""
import json, os, sys, time
path, duration_s = sys.argv[1], float(sys.argv[2])
fifo, regular = path + ".fifo", path + ".new"
swaps, ends = 0, time.monotonic() + duration_s
while time.monotonic() < ends:
    swaps += 1
    with open(regular, "w") as fh:
        json.dump({"value": swaps % 1000}, fh)
    os.rename(regular, path)  # a regular file, which stat() approves...
    os.mkfifo(fifo)
    os.rename(fifo, path)  # ...then a FIFO with no writer in its place
print(f"swapped {swaps} times", flush=True)
"""


def test_a_fifo_renamed_over_the_document_never_blocks_reading_or_sigterm(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A FIFO put in place by rename() between the bridge's stat() and open(): a blocking
    open() would hang the reading loop for good, and SIGTERM with it."""
    metrics = tmp_path / "current.json"
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "version: 1\n"
        f"source: {{path: '{metrics}'}}\n"
        "metrics:\n  - {name: test.value, type: gauge, path: $.value}\n"
    )
    metrics.write_text(json.dumps({"value": 5000}))
    env = bridge_env(grpc_receiver, metrics, MAPPING_PATH=str(mapping), COLLECTION_INTERVAL="0.05")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("test.value", where=number_is(5000))
    swapper = spawn_bridge(
        [sys.executable, "-c", _FIFO_SWAPPER, str(metrics), "4"], name="fifo swapper"
    )
    assert swapper.wait(timeout_s=30) == 0
    swapper.wait_for_log(r"swapped \d+ times", stream="stdout")

    final = tmp_path / "final.json"
    final.write_text(json.dumps({"value": 7000}))
    os.replace(final, metrics)
    grpc_receiver.wait_for_point("test.value", where=number_is(7000), timeout_s=15)
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert_no_traceback(bridge)


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it.
        if int(stat_line.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_mapping_is_validated_at_start_exits_0_with_a_line_saying_so(
    tmp_path: Path, spawn_bridge: Spawn, sig: signal.Signals
) -> None:
    """Kubernetes may stop a pod at any moment, also in the bridge's first tenths of a
    second, while its mapping is validated by a child process."""
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    bridge = spawn_bridge(bridge_command("run"), env=bridge_env("localhost:1", metrics))
    deadline = time.monotonic() + 20
    while not _children_of(bridge.pid):  # the validate child: handlers must be in place
        assert bridge.running and time.monotonic() < deadline, bridge.describe()
        time.sleep(0.002)
    bridge.send_signal(sig)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    bridge.wait_for_log(rf"received {sig.name} while starting: exiting", stream="stderr")
    assert_no_traceback(bridge)


def test_an_otlp_http_header_the_sdk_would_quote_in_a_warning_is_sent_and_never_logged(
    tmp_path: Path, http_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The SDK's HTTP exporter re-parses OTEL_EXPORTER_OTLP_HEADERS on its own and logs a
    value it dislikes (quotes, ';') in full: `Header format invalid! ...: x-api-key=...`."""
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(3, loss=0.3))
    env = bridge_env(
        http_receiver, metrics, OTEL_EXPORTER_OTLP_HEADERS='x-api-key="SECRET;1234",x-t=a b'
    )
    bridge = spawn_bridge(bridge_command("run"), env=env)
    http_receiver.wait_for_point("ml.training.loss", where=number_is(0.3))
    assert http_receiver.requests[-1].headers["x-api-key"] == '"SECRET;1234"'
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert "SECRET" not in bridge.output, bridge.describe()


def test_control_characters_in_collector_errors_and_paths_never_forge_a_log_line(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    hostile = folder / "x\nFORGED ERROR from the path\x1b[2J.json"
    hostile.write_text("{not json")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "version: 1\n"
        f"source: {{path: '{folder}/*.json'}}\n"
        "metrics:\n  - {name: test.value, type: gauge, path: $.value}\n"
    )
    (folder / "good.json").write_text(json.dumps({"value": 1}))
    grpc_receiver.fail_with(grpc.StatusCode.INVALID_ARGUMENT, message="rejected\nFORGED ERROR from the collector")
    env = bridge_env(grpc_receiver, folder / "good.json", MAPPING_PATH=str(mapping))
    bridge = spawn_bridge(bridge_command("run"), env=env)
    bridge.wait_for_log(r"export to .* failed: .*FORGED ERROR from the collector", stream="stderr")
    bridge.wait_for_log(r"FORGED ERROR from the path.*is not valid JSON", stream="stderr")
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    forged = [line for line in bridge.stderr.splitlines() if line.startswith("FORGED")]
    assert not forged, bridge.describe()
    assert "\x1b" not in bridge.stderr
    assert r"x\nFORGED ERROR from the path\x1b[2J.json" in bridge.stderr


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _probe(port: int) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # refused or closed: not answered


def test_idle_health_connections_are_capped_timed_out_and_closing_them_prints_nothing(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """Each idle connection held a thread and a file descriptor for ever: 58 of them used
    up nofile=64, and the metrics file "could not be read"."""
    import socket
    import struct

    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    port = free_port()
    env = bridge_env(grpc_receiver, metrics, HEALTH_PORT=str(port), HEALTH_HOST="127.0.0.1")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    bridge.wait_for_log(rf"health endpoints on 127\.0\.0\.1:{port} ", stream="stderr")
    grpc_receiver.wait_for_point("ml.training.loss")
    assert _probe(port) == 200
    fds_before = _open_fds(bridge.pid)

    idle = []
    for _ in range(60):
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        idle.append(client)
    grpc_receiver.wait_for(lambda: _open_fds(bridge.pid) >= fds_before + 4, what="some accepted")
    assert _open_fds(bridge.pid) <= fds_before + 16, "idle connections are capped"
    # Every idle connection ends: closed on arrival (over the cap) or after the read timeout.
    for client in idle:
        assert client.recv(1) == b"", "the bridge closes an idle connection"
    grpc_receiver.wait_for(lambda: _probe(port) == 200, what="probes answered again")
    # Clients that reset their connection mid-request: no traceback for any of them.
    for _ in range(20):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    for client in idle:
        client.close()
    assert _probe(port) == 200
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert_no_traceback(bridge)
    assert "Exception occurred during processing" not in bridge.stderr


_SAME_LENGTH_WRITER = r"""
import json, sys, time
path, duration_s = sys.argv[1], float(sys.argv[2])
meta = {"job_id": "job-7", "model_name": "resnet-50", "dataset": "imagenet"}
template = json.dumps({"timestamp": "TTTTTT", "job_metadata": meta, "training_metrics": {
    "batch_number": 111111111, "training_loss": 0.222222222}})
def text(step):
    # Same length every time; each field changes in every digit from one step to the next.
    return (template.replace("TTTTTT", f"{step:06d}")
            .replace("111111111", f"{100000000 + step * 1000003:09d}")
            .replace("0.222222222", f"0.{(step * 7919) % 10**9:09d}"))
cuts = (template.index("111111111") + 5, template.index("0.222222222") + 6)
step, ends = 0, time.monotonic() + duration_s
with open(path, "r+b") as fh:
    fh.write(text(0).encode())  # the first version, whole
    fh.flush()
    while time.monotonic() < ends:
        step += 1
        data = text(step).encode()
        fh.seek(0)
        for start, end in zip((0, *cuts), (*cuts, len(data))):  # three chunks, 1 ms apart
            fh.write(data[start:end])
            fh.flush()
            if end < len(data):
                written_at = time.monotonic()
                time.sleep(0.001)
                if time.monotonic() - written_at > 0.004:
                    # Stalled (a busy machine): this mix held still long enough to be taken
                    # for a version; report it, the test cannot blame the reader for it.
                    mix = json.loads(data[:end] + text(step - 1).encode()[end:])
                    print("stalled", json.dumps(mix["training_metrics"]), flush=True)
        time.sleep(0.003)  # about 200 versions a second
print(f"wrote {step} versions", flush=True)
"""


def test_a_same_length_overwrite_in_place_is_never_applied_half_written(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """No truncation, same length: between the writer's chunks the file holds a mix of two
    versions that parses. Such a mix must never be exported: not as a loss nobody wrote,
    nor as a running total going down and up again (a phantom reset)."""
    metrics = tmp_path / "current.json"
    metrics.write_bytes(b" " * 300)  # trailing blanks stay: JSON allows them
    writer = spawn_bridge(
        [sys.executable, "-c", _SAME_LENGTH_WRITER, str(metrics), "0"], name="first version"
    )
    assert writer.wait(timeout_s=30) == 0
    bridge = spawn_bridge(bridge_command("run"), env=bridge_env(grpc_receiver, metrics))
    grpc_receiver.wait_for_point("ml.training.loss")

    writer = spawn_bridge(
        [sys.executable, "-c", _SAME_LENGTH_WRITER, str(metrics), "3"], name="same-length writer"
    )
    assert writer.wait(timeout_s=40) == 0
    written = int(writer.wait_for_log(r"wrote (\d+) versions", stream="stdout").group(1))
    last_loss = ((written * 7919) % 10**9) / 10**9
    grpc_receiver.wait_for_point("ml.training.loss", where=number_is(last_loss), timeout_s=15)
    losses = {((step * 7919) % 10**9) / 10**9 for step in range(written + 1)}
    batches = {100000000 + step * 1000003 for step in range(written + 1)}
    for mix in re.findall(r"^stalled (.*)$", writer.stdout, re.MULTILINE):
        losses.add(json.loads(mix)["training_loss"])
        batches.add(json.loads(mix)["batch_number"])
    exported_losses = [p.number for p in grpc_receiver.points("ml.training.loss")]
    exported_batches = [p.number for p in grpc_receiver.points("ml.training.batch_number")]
    torn = sorted(set(exported_losses) - losses)
    assert not torn, (
        f"{len(torn)} of {len(exported_losses)} exported losses were never written, "
        f"e.g. {torn[:5]}"
    )
    assert set(exported_batches) <= batches, "a running total never written was exported"
    if not re.search("^stalled", writer.stdout, re.MULTILINE):
        assert exported_batches == sorted(exported_batches), "a phantom reset of a running total"
    assert bridge.running
    assert_no_traceback(bridge)


def _same_head_lines(first: int, count: int) -> bytes:
    """JSON Lines whose first 128 bytes are the same whatever `first` is."""
    pad = "p" * 150
    return b"".join(
        json.dumps({"one": 1, "pad": pad, "seq": seq, "note": "x" * (seq % 23)}).encode() + b"\n"
        for seq in range(first, first + count)
    )


def test_jsonl_copytruncate_grown_back_past_the_offset_before_a_poll_loses_nothing(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The first 128 bytes are the same after the truncation and the file is already
    longer than the bridge's offset when it looks: only the line before the offset tells."""
    log, bridge = _jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge, COLLECTION_INTERVAL="1")
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(1, 600))
    _records_total_is(grpc_receiver, 600)
    shutil.copyfile(log, tmp_path / "metrics.jsonl.1")
    with open(log, "r+b") as fh:  # truncate and grow back in one go, well inside a poll
        fh.truncate(0)
        fh.write(_same_head_lines(1001, 700))
    assert log.stat().st_size > (tmp_path / "metrics.jsonl.1").stat().st_size
    _records_total_is(grpc_receiver, 1300)
    _stays(grpc_receiver, 1300)
    bridge.wait_for_log(r"metrics\.jsonl: was truncated or rewritten in place", stream="stderr")
    assert "not JSON" not in bridge.stderr, "a resume mid-line reads half a line"
    assert_no_traceback(bridge)


def test_jsonl_rewritten_with_the_same_head_while_the_bridge_is_down_is_read_whole(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    state, log = _first_run_with_state(tmp_path, grpc_receiver, spawn_bridge, lines=1000)

    with open(log, "r+b") as fh:  # same inode, same first bytes, 2,000 other lines
        fh.truncate(0)
        fh.write(_same_head_lines(5001, 2000))
    second = _restarted_jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge, state)
    # The first run's 1,000 (restored from STATE_DIR) and all 2,000 new lines: resuming at
    # the old offset would have skipped about half of them.
    _records_total_is(grpc_receiver, 3000, **{"bridge.run": "2"})
    _stays(grpc_receiver, 3000, **{"bridge.run": "2"})
    second.wait_for_log(r"metrics\.jsonl: was rotated or rewritten while the sidecar was stopped")
    assert_no_traceback(second)


def _checkpointed_offset(state: Path) -> int | None:
    from translator.sources import read_jsonl_checkpoint

    for checkpoint in state.glob("jsonl-*.json"):
        _, position = read_jsonl_checkpoint(str(checkpoint))
        return None if position is None else position.offset
    return None


def test_jsonl_lines_read_while_the_collector_was_down_are_delivered_after_a_restart(
    tmp_path: Path, absent_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """Lines applied but not delivered when the bridge stops are in the series saved under
    STATE_DIR, and the checkpoint says they were read: the next process exports them (the
    restored series) and applies none of them again. Before, the checkpoint had moved past
    them and the new process started from zero: 2,000 of 3,000 lines never arrived."""
    state = tmp_path / "state"
    state.mkdir()
    absent_receiver.start()
    log, first = _jsonl_bridge(
        tmp_path, absent_receiver, spawn_bridge, STATE_DIR=str(state),
        OTEL_RESOURCE_ATTRIBUTES="bridge.run=1", OTEL_METRICS_EXPORTER="otlp,console",
    )  # fmt: skip
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(1, 1000))
    _records_total_is(absent_receiver, 1000, **{"bridge.run": "1"})
    absent_receiver.stop()
    first.wait_for_log(r"export to .* failed", stream="stderr")
    mark = first.mark()
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(1001, 2000))
    # The console exporter shows the lines applied while OTLP cannot deliver them.
    first.wait_for_log(r"^  test\.records(\{[^}]*\})? 3000\b", start=mark, stream="output")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=GRACE_S) == 0
    assert _checkpointed_offset(state) == len(_same_head_lines(1, 3000))

    absent_receiver.start()
    second = _restarted_jsonl_bridge(tmp_path, absent_receiver, spawn_bridge, state)
    _records_total_is(absent_receiver, 3000, **{"bridge.run": "2"})
    _stays(absent_receiver, 3000, **{"bridge.run": "2"})
    assert_no_traceback(second)


def _first_run_with_state(
    tmp_path: Path, receiver: OtlpReceiver, spawn: Spawn, lines: int
) -> tuple[Path, Path]:
    """Run 1 (``bridge.run=1``) with a STATE_DIR: ``lines`` lines read and exported, then
    a clean stop; the state directory and the log."""
    state = tmp_path / "state"
    state.mkdir()
    log, first = _jsonl_bridge(
        tmp_path, receiver, spawn, STATE_DIR=str(state), OTEL_RESOURCE_ATTRIBUTES="bridge.run=1"
    )
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(1, lines))
    _records_total_is(receiver, lines, **{"bridge.run": "1"})
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=GRACE_S) == 0
    return state, log


def _restarted_jsonl_bridge(
    tmp_path: Path, receiver: OtlpReceiver, spawn: Spawn, state: Path, run: str = "2"
) -> BridgeProcess:
    env = bridge_env(
        receiver, tmp_path / "metrics.jsonl", MAPPING_PATH=str(tmp_path / "jsonl.yaml"),
        STATE_DIR=str(state), OTEL_RESOURCE_ATTRIBUTES=f"bridge.run={run}",
    )  # fmt: skip
    return spawn(bridge_command("run"), env=env, name=f"bridge (run {run})")


@pytest.mark.parametrize("fault", ["series-cannot-be-saved", "no-new-file"])
def test_jsonl_lines_are_applied_once_across_a_restart_when_state_dir_cannot_take_the_series(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn, fault: str
) -> None:
    """The checkpoint must never run ahead of the saved series (a restart would skip the
    lines in between) nor behind them (it would apply them twice). "series-cannot-be-saved":
    the series file cannot be replaced while a small checkpoint still could be written (a
    nearly full STATE_DIR). "no-new-file": STATE_DIR takes no new file at all (mode 555
    without the permission bypass), as a full one."""
    prefix: tuple[str, ...] = ()
    if fault == "no-new-file":
        found = _without_file_permission_bypass()
        if found is None:
            pytest.skip("running as root without setpriv: a mode-555 directory stays writable")
        prefix = found
    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "metrics.jsonl"
    log.touch()
    (tmp_path / "jsonl.yaml").write_text(_JSONL_MAPPING.format(path=log))
    env = bridge_env(
        grpc_receiver, log, MAPPING_PATH=str(tmp_path / "jsonl.yaml"), STATE_DIR=str(state),
        OTEL_RESOURCE_ATTRIBUTES="bridge.run=1",
    )  # fmt: skip
    first = spawn_bridge([*prefix, *bridge_command("run")], env=env, name="bridge (run 1)")
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(1, 500))
    _records_total_is(grpc_receiver, 500, **{"bridge.run": "1"})
    grpc_receiver.wait_for(
        lambda: _checkpointed_offset(state) == len(_same_head_lines(1, 500)), what="checkpoint"
    )
    (series,) = state.glob("series-*.json")
    blocker = Path(f"{series}.tmp")
    if fault == "no-new-file":
        state.chmod(0o555)
    else:
        blocker.mkdir()  # the series' next version cannot be written
    try:
        with open(log, "ab") as fh:
            fh.write(_same_head_lines(501, 1000))
        _records_total_is(grpc_receiver, 1500, **{"bridge.run": "1"})
        first.wait_for_log(r"cannot save the series", stream="stderr")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout_s=GRACE_S) == 0
    finally:
        state.chmod(0o755)  # the next start checks STATE_DIR is writable
        if blocker.is_dir():
            blocker.rmdir()

    second = _restarted_jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge, state)
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(1501, 10))
    # The old series (500) come back and the 1,010 lines after their checkpoint are read:
    # every line once, none lost, none twice.
    _records_total_is(grpc_receiver, 1510, **{"bridge.run": "2"})
    _stays(grpc_receiver, 1510, **{"bridge.run": "2"})
    assert_no_traceback(second)


def test_health_clients_trickling_a_request_are_hung_up_on_so_probes_get_in_again(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A byte every second never trips a read timeout: 8 such clients held every slot."""
    import socket

    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    port = free_port()
    env = bridge_env(grpc_receiver, metrics, HEALTH_PORT=str(port), HEALTH_HOST="127.0.0.1")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    bridge.wait_for_log(rf"health endpoints on 127\.0\.0\.1:{port} ", stream="stderr")
    assert _probe(port) == 200
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    for client in slow:
        client.sendall(b"GET /healthz HTTP/1.1\r\n")
    open_ones = list(slow)
    deadline = time.monotonic() + 40
    while open_ones:  # one more header byte a second from each, until the bridge hangs up
        assert time.monotonic() < deadline, f"{len(open_ones)} trickling clients still served"
        for client in list(open_ones):
            try:
                client.sendall(b"X")
                client.setblocking(False)
                try:
                    closed = client.recv(1) == b""
                except BlockingIOError:
                    closed = False
                finally:
                    client.setblocking(True)
            except OSError:
                closed = True
            if closed:
                open_ones.remove(client)
        time.sleep(1)  # the client's pace, not a wait for the bridge
    grpc_receiver.wait_for(lambda: _probe(port) == 200, what="probes answered again")
    for client in slow:
        client.close()
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert_no_traceback(bridge)


def test_health_host_not_of_this_machine_exits_2_naming_health_host(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """An address no interface has (a pod IP copied from another pod) was blamed on
    HEALTH_PORT; the port was fine."""
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    port = free_port()
    env = bridge_env(grpc_receiver, metrics, HEALTH_PORT=str(port), HEALTH_HOST="192.0.2.1")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    assert bridge.wait(timeout_s=30) == 2
    said = f"HEALTH_HOST: 192.0.2.1 is not an address of this host (listening on 192.0.2.1:{port}: "
    assert said in bridge.stderr, bridge.stderr
    assert_no_traceback(bridge)


def test_health_host_can_be_an_ipv6_address(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """An IPv6-only cluster probes the pod's IPv6 address: '::' (or '::1') was refused as
    'not an address of this host' (the server was IPv4 only)."""
    import socket
    import urllib.request

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    metrics = tmp_path / "current.json"
    rewrite_in_place(metrics, brief_doc(1))
    port = free_port()
    env = bridge_env(grpc_receiver, metrics, HEALTH_PORT=str(port), HEALTH_HOST="::1")
    bridge = spawn_bridge(bridge_command("run"), env=env)
    bridge.wait_for_log(rf"health endpoints on \[::1\]:{port} ", stream="stderr")
    with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=5) as answer:
        assert answer.status == 200
    assert_no_traceback(bridge)


@pytest.mark.parametrize("damage", ["damaged", "deleted"])
def test_jsonl_positions_are_not_resumed_when_the_series_they_went_into_are_not_restored(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn, damage: str
) -> None:
    """A read position says which lines the saved series hold. When those series cannot
    be restored (the series file damaged, deleted, or of another version), the lines
    before the position were in nothing: the restart resumed there anyway, and 1,000
    lines counted by run 1 were counted by no series of run 2."""
    state, log = _first_run_with_state(tmp_path, grpc_receiver, spawn_bridge, lines=1000)
    [series] = state.glob("series-*.json")
    if damage == "damaged":
        series.write_bytes(b'{"format": 1, "series": {')
    else:
        series.unlink()

    second = _restarted_jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge, state)
    second.wait_for_log(
        rf"{re.escape(str(log))}: its read position under STATE_DIR is not used: the "
        r"series it went into were not restored; reading it as start_at says",
        stream="stderr",
    )
    _records_total_is(grpc_receiver, 1000, **{"bridge.run": "2"})
    _stays(grpc_receiver, 1000, **{"bridge.run": "2"})
    assert_no_traceback(second)


@pytest.mark.parametrize(
    "series",
    [{"test.records": [1]}, {"test.records": {"identity": None, "series": 5}}],
    ids=["entry-not-an-object", "series-not-a-list"],
)
def test_a_series_file_of_the_wrong_shape_is_warned_about_and_the_bridge_reads_on(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn, series: dict[str, Any]
) -> None:
    """A series file that is JSON of the right format but the wrong shape (damaged, edited
    by hand) ended the bridge with an AttributeError or TypeError traceback at its first
    read: restore raised what its callers did not expect."""
    state, log = _first_run_with_state(tmp_path, grpc_receiver, spawn_bridge, lines=10)
    [saved] = state.glob("series-*.json")
    content = json.loads(saved.read_text())
    if isinstance(series["test.records"], dict):
        series["test.records"]["identity"] = content["series"]["test.records"]["identity"]
    saved.write_text(json.dumps({**content, "series": series}))

    second = _restarted_jsonl_bridge(tmp_path, grpc_receiver, spawn_bridge, state)
    second.wait_for_log(
        rf"{re.escape(str(saved))}: test\.records: .*; the rest of the saved series are not "
        "restored",
        stream="stderr",
    )
    with open(log, "ab") as fh:
        fh.write(_same_head_lines(11, 5))
    _records_total_is(grpc_receiver, 5, **{"bridge.run": "2"})
    assert second.running
    assert_no_traceback(second)


@pytest.mark.parametrize("where", ["jsonl-checkpoint", "series-file"])
def test_a_fifo_in_state_dir_never_blocks_start_reading_or_sigterm(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn, where: str
) -> None:
    """A FIFO where a checkpoint or the series file goes (state restored from a backup
    tool, a mistaken mkfifo): the plain open() blocked at start for good, SIGTERM too."""
    from translator.sources import _checkpoint_file
    from translator.statefile import SeriesStateFile

    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "metrics.jsonl"
    mapping = tmp_path / "jsonl.yaml"
    fifo = (
        _checkpoint_file(str(state), str(log))
        if where == "jsonl-checkpoint"
        else SeriesStateFile(str(state), str(mapping)).path
    )
    os.mkfifo(fifo)
    log.write_bytes(_same_head_lines(1, 10))
    mapping.write_text(_JSONL_MAPPING.format(path=log))
    env = bridge_env(grpc_receiver, log, MAPPING_PATH=str(mapping), STATE_DIR=str(state))
    bridge = spawn_bridge(bridge_command("run"), env=env)
    _records_total_is(grpc_receiver, 10)
    bridge.wait_for_log(rf"{re.escape(fifo)}.*not a regular file", stream="stderr")
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=GRACE_S) == 0
    assert_no_traceback(bridge)


def test_run_once_on_a_document_that_never_holds_still_exits_1_saying_so(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A document rewritten in place every millisecond is never applied (no read can tell
    a torn state from a whole one): run --once read it once, applied nothing and exited 0
    as if all were well. Now it reads again for 2 s as run does, then says why it exits 1."""
    metrics = tmp_path / "current.json"
    metrics.write_bytes(b'{"v": 10000000}\n')
    script = (
        "import os, sys, time\n"
        "version = 0\n"
        "while True:\n"
        "    version += 1\n"
        "    fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "    os.pwrite(fd, b'{\"v\": 1%07d}\\n' % version, 0)\n"
        "    os.close(fd)\n"
        "    time.sleep(0.001)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(metrics)])
    try:
        bridge = spawn_bridge(bridge_command("run", "--once"), env=bridge_env(grpc_receiver, metrics))
        status = bridge.wait(timeout_s=30)
    finally:
        writer.kill()
        writer.wait(timeout=10)
    assert status == 1, bridge.describe()
    assert bridge.stderr.endswith(
        f"ERROR   run --once exits 1: {metrics}: changed during every read, so not applied\n"
    ), bridge.stderr
