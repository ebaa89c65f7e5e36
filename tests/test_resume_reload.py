"""Issue #10: exported numbers stay true when jobs resume, mappings reload and the sidecar
restarts. The bridge runs as a real process exporting to real receivers.

Every wait is on a condition with a timeout; nothing here sleeps and hopes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.otlp_receiver import OtlpReceiver
from support.process import BridgeProcess, bridge_command, free_port

pytestmark = pytest.mark.integration

Spawn = Callable[..., BridgeProcess]


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file and rename it over ``path``, as a ConfigMap update does."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def otlp_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.address,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "COLLECTION_INTERVAL": "0.2",
    }
    env.update(extra)
    return env


# --- the lock inversion -----------------------------------------------------------------------


def _gpu_mapping(extra_metrics: int) -> str:
    lines = [
        "version: 1",
        "limits: {max_series_per_metric: 5000}",
        "metrics:",
        "  - {name: util, type: gauge, for_each: '$.gpus[*]', path: $.u,"
        " attributes: {gpu: {path: $.i}}}",
    ]
    # Each reload adds a new instrument: the SDK used to create it under the registry lock.
    lines += [
        f"  - {{name: extra_{n}, type: gauge, for_each: '$.gpus[*]', path: $.u,"
        " attributes: {gpu: {path: $.i}}}"
        for n in range(extra_metrics)
    ]
    return "\n".join(lines) + "\n"


def test_reloads_adding_metrics_while_exports_and_scrapes_run_never_freeze_the_bridge(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The export thread and Prometheus scrapes collect while the reading thread installs
    new instruments: 2,000 series, a collection every 0.05 s, a reload every 0.2 s. Before
    the registry built its own points this froze (SDK lock vs registry lock), and SIGTERM
    could not stop it."""
    document = tmp_path / "gpus.json"
    document.write_text(json.dumps({"gpus": [{"i": i, "u": i / 2000} for i in range(2000)]}))
    mapping = tmp_path / "mapping.yaml"
    write_atomically(mapping, _gpu_mapping(0))
    metrics_port = free_port()
    env = otlp_env(
        grpc_receiver,
        METRICS_FILE_PATH=str(document),
        MAPPING_PATH=str(mapping),
        COLLECTION_INTERVAL="0.05",
        OTEL_METRICS_EXPORTER="otlp,prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
    )
    bridge = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("util", timeout_s=30, gpu=1999)

    scrapes: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
                ) as response:
                    response.read()
                scrapes.append(1)
            except (OSError, urllib.error.URLError) as exc:  # a frozen bridge times out here
                failures.append(repr(exc))
                return

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        reloads = 12
        start = bridge.mark()
        for n in range(1, reloads + 1):
            write_atomically(mapping, _gpu_mapping(n))
            match = bridge.wait_for_log(
                rf"mapping reloaded from .*: 1 mapping\(s\), {n + 1} instrument\(s\)",
                timeout_s=30,
                start=start,
                stream="stderr",
            )
            start = match.end()
            time.sleep(0.2)  # the reload cadence under test, not a wait for a condition
        # The export thread is alive, and the metric the last reload added is exported
        # (the file is unchanged: the reload re-evaluated it).
        grpc_receiver.wait_for_point(f"extra_{reloads - 1}", timeout_s=30, gpu=1999)
        grpc_receiver.wait_for_requests(grpc_receiver.request_count + 3, timeout_s=30)
    finally:
        stop.set()
        scraper.join(timeout=15)
    assert not failures, failures
    assert scrapes, "no Prometheus scrape succeeded"
    bridge.send_signal(signal.SIGTERM)
    # The bridge bounds its last export by its own 5 s deadline and says so when it hits
    # it; that line, not the wall clock of a busy machine, is what shows the promise held.
    assert bridge.wait(timeout_s=15) == 0
    assert "did not finish within" not in bridge.stderr, bridge.stderr[-2000:]


def test_a_metric_past_2000_series_is_exported_whole_not_folded_into_an_overflow_series(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The SDK folds series past its own limit (2,000) into otel.metric.overflow; the
    bridge's guard (limits.max_series_per_metric) must be the only one."""
    document = tmp_path / "gpus.json"
    document.write_text(json.dumps({"gpus": [{"i": i, "u": 1} for i in range(2500)]}))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(_gpu_mapping(0).replace("5000", "3000"))
    env = otlp_env(grpc_receiver, METRICS_FILE_PATH=str(document), MAPPING_PATH=str(mapping))
    spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("util", timeout_s=30, gpu=2499)

    def one_export() -> list[Any] | None:
        for request in reversed(grpc_receiver.requests):
            found = [p for p in request.points if p.name == "util"]
            if found:
                return found
        return None

    points = grpc_receiver.wait_for(one_export, timeout_s=30, what="an export of util")
    assert sorted(p.attributes["gpu"] for p in points) == list(range(2500))
    assert not [p for p in points if "otel.metric.overflow" in p.attributes]


# --- running totals: resume, start times --------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
BRIEF = json.loads((ROOT / "tests/cases/brief-default/input.json").read_text())
JOB_START_NS = 1_729_591_200 * 10**9  # the brief's job_metadata.start_time, 2024-10-22T10:00Z


def write_brief(path: Path, timestamp: str, **metrics: Any) -> None:
    doc = json.loads(json.dumps(BRIEF))
    doc["timestamp"] = timestamp
    doc["training_metrics"].update(metrics)
    write_atomically(path, json.dumps(doc))


def test_a_job_restarted_at_epoch_1_exports_epoch_1_in_a_new_stream_not_6(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The brief's document, epoch 5 -> 1 (the job restarted): the epoch panel must show 1."""
    metrics = tmp_path / "current.json"
    write_brief(metrics, "t1", epoch=5, batch_number=150)
    spawn_bridge(bridge_command("run"), env=otlp_env(grpc_receiver, METRICS_FILE_PATH=str(metrics)))
    before = grpc_receiver.wait_for_point("ml.training.epoch", where=lambda p: p.number == 5)
    # The default mapping names the job's start time: the stream starts there.
    assert before.start_time_unix_nano == JOB_START_NS
    restarted_ns = JOB_START_NS + 3600 * 10**9
    doc = json.loads(json.dumps(BRIEF))
    doc["timestamp"] = "t2"
    doc["job_metadata"]["start_time"] = "2024-10-22T11:00:00Z"
    doc["training_metrics"].update(epoch=1, batch_number=3)
    write_atomically(metrics, json.dumps(doc))
    after = grpc_receiver.wait_for_point("ml.training.epoch", where=lambda p: p.number != 5)
    assert after.number == 1
    assert after.start_time_unix_nano == restarted_ns
    batches = grpc_receiver.wait_for_point(
        "ml.training.batch_number", where=lambda p: p.number != 150
    )
    assert (batches.number, batches.start_time_unix_nano) == (3, restarted_ns)


def test_a_rewound_total_under_the_same_job_start_is_a_new_stream_with_the_files_value(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A Hugging Face resume from checkpoint-100: global_step 250 -> 100 -> 150 -> 200 -> 312
    must be exported as exactly that (not 450, 562), and never down under one start time."""
    state = tmp_path / "trainer_state.json"
    mapping = tmp_path / "hf.yaml"
    mapping.write_text(
        "version: 1\n"
        f"source: {{path: '{state}'}}\n"
        "metrics:\n"
        "  - {name: hf.trainer.step, type: counter, mode: total, path: $.global_step}\n"
    )
    env = otlp_env(grpc_receiver, MAPPING_PATH=str(mapping))
    steps = (250, 100, 150, 200, 312)
    write_atomically(state, json.dumps({"global_step": steps[0]}))
    spawn_bridge(bridge_command("run"), env=env)
    for step in steps:
        write_atomically(state, json.dumps({"global_step": step}))
        grpc_receiver.wait_for_point("hf.trainer.step", where=lambda p, s=step: p.number == s)
    seen = [
        (p.number, p.start_time_unix_nano, p.time_unix_nano)
        for p in grpc_receiver.points("hf.trainer.step")
    ]
    assert {n for n, _, _ in seen} == set(steps)
    for (n1, s1, _), (n2, s2, _) in itertools.pairwise(seen):
        assert s1 == s2 or s2 > s1
        if s1 == s2:
            assert n2 >= n1, f"{n1} -> {n2} under one start time"
    # No known start: each stream's first point has its start time equal to its time.
    firsts = {}
    for n, start, at in seen:
        firsts.setdefault(start, (n, at))
    assert all(start == at for start, (_, at) in firsts.items())
    assert firsts[min(firsts)][0] == 250 and len(firsts) == 2


def test_a_counter_removed_by_one_reload_and_added_by_the_next_never_goes_down_under_its_start(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    document = tmp_path / "doc.json"
    mapping = tmp_path / "mapping.yaml"
    gauge = "  - {name: loss, type: gauge, path: $.loss}\n"
    counter = "  - {name: steps, type: counter, mode: total, path: $.steps}\n"
    write_atomically(mapping, "version: 1\nmetrics:\n" + gauge + counter)
    write_atomically(document, json.dumps({"loss": 1, "steps": 105}))
    bridge = spawn_bridge(
        bridge_command("run"),
        env=otlp_env(grpc_receiver, METRICS_FILE_PATH=str(document), MAPPING_PATH=str(mapping)),
    )
    first = grpc_receiver.wait_for_point("steps", where=lambda p: p.number == 105)
    write_atomically(mapping, "version: 1\nmetrics:\n" + gauge)
    bridge.wait_for_log(r"mapping reloaded .*1 instrument\(s\)", stream="stderr")
    write_atomically(document, json.dumps({"loss": 2, "steps": 6}))
    grpc_receiver.wait_for_point("loss", where=lambda p: p.number == 2)
    write_atomically(mapping, "version: 1\nmetrics:\n" + gauge + counter)
    bridge.wait_for_log(r"mapping reloaded .*2 instrument\(s\)", stream="stderr")
    write_atomically(document, json.dumps({"loss": 3, "steps": 6}))
    again = grpc_receiver.wait_for_point("steps", where=lambda p: p.number == 6)
    assert again.start_time_unix_nano > first.time_unix_nano


# --- history arrays and JSON Lines: state and events -------------------------------------

_HISTORY_MAPPING = """\
version: 1
source: {{path: '{path}', records: '$.log_history[*]'}}
metrics:
  - {{name: loss, type: gauge, path: $.loss, when: {{exists: $.loss}}, attributes: {{split: train}}}}
  - {{name: loss, type: gauge, path: $.eval_loss, when: {{exists: $.eval_loss}},
      attributes: {{split: eval}}}}
  - {{name: tokens, type: counter, mode: increment, path: $.tokens}}
"""


def test_a_history_that_shrinks_on_resume_and_regrows_exports_the_newest_records(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """Gauges: the newest record in file order. Events: every record once, re-logged
    records included (same step, new values); an unchanged rewrite adds nothing."""
    state = tmp_path / "trainer_state.json"
    mapping = tmp_path / "hf.yaml"
    mapping.write_text(_HISTORY_MAPPING.format(path=state))

    def train(step: int, loss: float) -> dict[str, Any]:
        return {"step": step, "loss": loss, "tokens": 10}

    def write(*records: dict[str, Any]) -> None:
        write_atomically(state, json.dumps({"log_history": list(records)}))

    before = [train(1, 0.9), train(2, 0.8), {"step": 2, "eval_loss": 0.85}, train(3, 0.5803)]
    write(*before)
    spawn_bridge(bridge_command("run"), env=otlp_env(grpc_receiver, MAPPING_PATH=str(mapping)))
    grpc_receiver.wait_for_point("tokens", where=lambda p: p.number == 30)
    assert grpc_receiver.wait_for_point("loss", split="train").number == 0.5803
    # Resumed from the checkpoint of step 1: the array shrinks, then re-logs steps 2 and 3.
    write(*before[:1])
    grpc_receiver.wait_for_point("loss", where=lambda p: p.number == 0.9, split="train")
    resumed = [*before[:1], train(2, 0.9521), {"step": 2, "eval_loss": 0.7}, train(3, 0.7107)]
    write(*resumed)
    grpc_receiver.wait_for_point("loss", where=lambda p: p.number == 0.7107, split="train")
    assert grpc_receiver.latest("loss", split="eval").number == 0.7  # type: ignore[union-attr]
    write(*resumed, train(4, 0.6301))
    grpc_receiver.wait_for_point("loss", where=lambda p: p.number == 0.6301, split="train")
    # Tokens: 3 records before, 2 re-logged, 1 new: each counted once.
    tokens = grpc_receiver.wait_for_point("tokens", where=lambda p: p.number != 30)
    if tokens.number == 50:  # the export between the regrowth and the last record
        tokens = grpc_receiver.wait_for_point("tokens", where=lambda p: p.number != 50)
    assert tokens.number == 60
    write(*resumed, train(4, 0.6301))  # rewritten, identical: nothing more
    marker = grpc_receiver.request_count
    grpc_receiver.wait_for_requests(marker + 3)
    assert grpc_receiver.latest("tokens").number == 60  # type: ignore[union-attr]


def test_a_json_lines_log_that_rewinds_on_resume_exports_the_files_values(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A Ray trial restored from a checkpoint: training_iteration 4 -> 3 -> 4 was exported
    as 7, 8; it must be 3, 4 in a new stream, and the gauge the newest line's."""
    log = tmp_path / "result.jsonl"
    mapping = tmp_path / "ray.yaml"
    mapping.write_text(
        "version: 1\n"
        f"source: {{path: '{log}', format: jsonl}}\n"
        "metrics:\n"
        "  - {name: ray.iteration, type: counter, mode: total, path: $.training_iteration}\n"
        "  - {name: ray.loss, type: gauge, path: $.loss}\n"
    )
    lines = [{"training_iteration": i, "loss": 1 / i} for i in (1, 2, 3, 4)]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    spawn_bridge(bridge_command("run"), env=otlp_env(grpc_receiver, MAPPING_PATH=str(mapping)))
    first = grpc_receiver.wait_for_point("ray.iteration", where=lambda p: p.number == 4)
    with log.open("a") as fh:
        fh.write(json.dumps({"training_iteration": 3, "loss": 0.3}) + "\n")
    rewound = grpc_receiver.wait_for_point("ray.iteration", where=lambda p: p.number != 4)
    assert rewound.number == 3
    assert rewound.start_time_unix_nano > first.start_time_unix_nano
    assert grpc_receiver.wait_for_point("ray.loss", where=lambda p: p.number == 0.3)
    with log.open("a") as fh:
        fh.write(json.dumps({"training_iteration": 4, "loss": 0.25}) + "\n")
    again = grpc_receiver.wait_for_point(
        "ray.iteration", where=lambda p: p.number != 3 and p.time_unix_nano > rewound.time_unix_nano
    )
    assert (again.number, again.start_time_unix_nano) == (4, rewound.start_time_unix_nano)


def test_a_rewrite_under_the_same_version_key_exports_its_new_values_and_no_new_event(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The default mapping keys versions by a one-second timestamp: a trainer writing twice
    a second rewrites under the same key. The new loss must go out; the version's
    histogram observation was counted once."""
    metrics = tmp_path / "current.json"
    write_brief(metrics, "2024-10-22T10:30:00Z", training_loss=0.5)
    spawn_bridge(bridge_command("run"), env=otlp_env(grpc_receiver, METRICS_FILE_PATH=str(metrics)))
    grpc_receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.5)
    write_brief(metrics, "2024-10-22T10:30:00Z", training_loss=0.4)
    grpc_receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.4)
    assert grpc_receiver.latest("ml.training.processing_time_ms").histogram.count == 1  # type: ignore[union-attr]
    write_brief(metrics, "2024-10-22T10:30:01Z", training_loss=0.3)
    grpc_receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.3)
    assert grpc_receiver.latest("ml.training.processing_time_ms").histogram.count == 2  # type: ignore[union-attr]


# --- reloads and restarts ------------------------------------------------------------------


def test_a_rule_added_by_a_reload_is_exported_within_2_s_while_the_file_is_unchanged(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A trainer_state.json written at checkpoint saves may not change for half an hour."""
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"step": 1, "loss": 0.9, "grad_norm": 2.5}]}))
    mapping = tmp_path / "hf.yaml"
    head = f"version: 1\nsource: {{path: '{state}', records: '$.log_history[*]'}}\nmetrics:\n"
    loss = "  - {name: loss, type: gauge, path: $.loss}\n"
    write_atomically(mapping, head + loss)
    bridge = spawn_bridge(
        bridge_command("run"),
        env=otlp_env(grpc_receiver, MAPPING_PATH=str(mapping), COLLECTION_INTERVAL="30"),
    )
    grpc_receiver.wait_for_point("loss")
    write_atomically(
        mapping, head + loss + "  - {name: grad_norm, type: gauge, path: $.grad_norm}\n"
    )
    bridge.wait_for_log(r"mapping reloaded", stream="stderr")
    reloaded_at = time.monotonic()
    point = grpc_receiver.wait_for_point("grad_norm", timeout_s=10)
    assert point.number == 2.5
    assert point.received_at_s - reloaded_at < 2


def _ap_mapping(log: Path) -> str:
    return (
        "version: 1\n"
        f"source: {{path: '{log}', format: jsonl, stale_after_s: 0}}\n"
        "metrics:\n"
        "  - {name: bbox.ap, type: gauge, path: \"$['bbox/AP']\", missing: skip}\n"
        "  - {name: loss, type: gauge, path: $.total_loss, missing: skip}\n"
        "  - {name: iterations, type: counter, mode: increment, path: $.one, missing: skip}\n"
    )


def test_a_restart_with_state_dir_exports_the_gauges_at_the_first_export(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A Detectron2 metrics.json: the AP gauges come from an evaluation line every few
    thousand iterations; after a restart they must not vanish until the next one."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    log = tmp_path / "metrics.json"
    lines = [{"iteration": i, "total_loss": 1 / i, "one": 1} for i in range(1, 6)]
    lines.insert(3, {"iteration": 4, "bbox/AP": 37.5})
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    mapping = tmp_path / "d2.yaml"
    mapping.write_text(_ap_mapping(log))
    env = otlp_env(grpc_receiver, MAPPING_PATH=str(mapping), STATE_DIR=str(state_dir))
    first = spawn_bridge(bridge_command("run"), env={**env, "OTEL_RESOURCE_ATTRIBUTES": "run=1"})
    before = grpc_receiver.wait_for_point("iterations", where=lambda p: p.number == 5)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=10) == 0
    grpc_receiver.clear()
    spawn_bridge(
        bridge_command("run"), env={**env, "OTEL_RESOURCE_ATTRIBUTES": "run=2"}, name="restarted"
    )
    first_export = grpc_receiver.wait_for_requests(1, timeout_s=15)[0]
    names = {p.name: p for p in first_export.points}
    assert names["bbox.ap"].number == 37.5
    assert names["loss"].number == 1 / 5
    # The same stream goes on: same start time, nothing counted twice.
    assert (names["iterations"].number, names["iterations"].start_time_unix_nano) == (
        5,
        before.start_time_unix_nano,
    )
    with log.open("a") as fh:
        fh.write(json.dumps({"iteration": 6, "total_loss": 0.1, "one": 1}) + "\n")
    assert grpc_receiver.wait_for_point("iterations", where=lambda p: p.number != 5).number == 6


def test_a_series_gone_stale_before_a_restart_with_state_dir_does_not_come_back(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """A JSON Lines log that stopped being written: its gauge went stale and stopped being
    exported. The series file must say so, or the restarted sidecar exports it again."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"iteration": 1, "total_loss": 0.5}) + "\n")
    mapping = tmp_path / "stale.yaml"
    mapping.write_text(
        "version: 1\n"
        f"source: {{path: '{log}', format: jsonl, stale_after_s: 1}}\n"
        "metrics:\n"
        "  - {name: loss, type: gauge, path: $.total_loss}\n"
    )
    env = otlp_env(
        grpc_receiver, MAPPING_PATH=str(mapping), STATE_DIR=str(state_dir),
        COLLECTION_INTERVAL="0.3",
    )  # fmt: skip
    first = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("loss", where=lambda p: p.number == 0.5)
    first.wait_for_log(r"no new data for", stream="stderr", timeout_s=15)
    # The heartbeat exports go on without the gauge.
    grpc_receiver.wait_for(
        lambda: not [p for p in grpc_receiver.requests[-1].points if p.name == "loss"],
        timeout_s=15,
        what="an export without the stale gauge",
    )
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=10) == 0
    grpc_receiver.clear()
    spawn_bridge(bridge_command("run"), env=env, name="restarted")
    requests = grpc_receiver.wait_for_requests(2, timeout_s=15)
    assert not [p for r in requests for p in r.points if p.name == "loss"], requests[0].points


def test_a_document_read_again_after_a_restart_adds_no_histogram_observation_twice(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    metrics = tmp_path / "current.json"
    write_brief(metrics, "t1")
    env = otlp_env(grpc_receiver, METRICS_FILE_PATH=str(metrics), STATE_DIR=str(state_dir))
    first = spawn_bridge(bridge_command("run"), env=env)
    before = grpc_receiver.wait_for_point("ml.training.processing_time_ms")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout_s=10) == 0
    grpc_receiver.clear()
    spawn_bridge(bridge_command("run"), env=env, name="restarted")
    again = grpc_receiver.wait_for_point("ml.training.processing_time_ms", timeout_s=15)
    # The same stream goes on across the restart, and the unchanged version adds nothing.
    assert again.histogram.count == 1
    assert again.start_time_unix_nano == before.start_time_unix_nano
    write_brief(metrics, "t2")
    more = grpc_receiver.wait_for_point(
        "ml.training.processing_time_ms", where=lambda p: p.histogram.count != 1
    )
    assert more.histogram.count == 2
    assert more.start_time_unix_nano == again.start_time_unix_nano


# --- non_finite: keep ------------------------------------------------------------------------


def test_non_finite_keep_arrives_at_a_real_receiver_as_nan_and_infinity(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """The SDK drops NaN from observable callbacks; the bridge builds its own points."""
    document = tmp_path / "doc.json"
    document.write_text('{"loss": NaN, "ratio": Infinity, "low": -Infinity, "ok": 1}')
    mapping = tmp_path / "keep.yaml"
    mapping.write_text(
        "version: 1\nmetrics:\n"
        "  - {name: loss, type: gauge, path: $.loss, non_finite: keep}\n"
        "  - {name: ratio, type: gauge, path: $.ratio, non_finite: keep}\n"
        "  - {name: low, type: updowncounter, mode: total, path: $.low, non_finite: keep}\n"
        "  - {name: ok, type: gauge, path: $.ok}\n"
    )
    env = otlp_env(grpc_receiver, METRICS_FILE_PATH=str(document), MAPPING_PATH=str(mapping))
    spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("ok")
    loss = grpc_receiver.wait_for_point("loss")
    assert math.isnan(loss.number)
    assert grpc_receiver.wait_for_point("ratio").number == math.inf
    assert grpc_receiver.wait_for_point("low").number == -math.inf
    # What is counted as emitted is what left.
    emitted = grpc_receiver.wait_for_point(
        "ml_metrics_bridge.points.emitted", **{"metric.name": "loss"}
    )
    assert emitted.number == 1
