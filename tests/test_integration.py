"""The bridge as a real process, exporting over real sockets to real OTLP receivers.

Every wait is on a condition with a timeout; nothing here sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.otlp_receiver import OtlpReceiver
from support.process import BridgeProcess, bridge_command, free_port
from support.rotel import RotelCollector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BRIEF = json.loads((ROOT / "tests/cases/brief-default/input.json").read_text())
JOB = {"job.id": "training-job-123", "model.name": "resnet-50", "dataset": "imagenet"}

Spawn = Callable[..., BridgeProcess]


def write_doc(
    path: Path, *, timestamp: str, loss: float = 0.342, batch: int = 150, **extra: Any
) -> None:
    doc = json.loads(json.dumps(BRIEF))
    doc["timestamp"] = timestamp
    doc["training_metrics"].update(training_loss=loss, batch_number=batch, **extra)
    path.write_text(json.dumps(doc))


def bridge_env(receiver: OtlpReceiver, metrics: Path, **extra: str) -> dict[str, str]:
    env = {
        "METRICS_FILE_PATH": str(metrics),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.address
        if receiver.protocol == "grpc"
        else receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if receiver.protocol == "grpc" else "http/protobuf",
        "COLLECTION_INTERVAL": "0.2",
    }
    env.update(extra)
    return env


def test_grpc_export_to_a_scheme_less_endpoint_carries_every_default_metric(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    # "127.0.0.1:PORT" without a scheme, as the seed deployment's "otel-collector:4317".
    spawn_bridge(bridge_command("run"), env=bridge_env(grpc_receiver, metrics))
    loss = grpc_receiver.wait_for_point("ml.training.loss", **JOB)
    assert loss.kind == "gauge" and loss.number == 0.342
    assert loss.resource_attributes["service.name"] == "ml-training-sidecar"
    batches = grpc_receiver.wait_for_point("ml.training.batch_number")
    assert (batches.kind, batches.monotonic, batches.number, batches.unit) == (
        "sum",
        True,
        150,
        "{batch}",
    )
    assert batches.temporality == "cumulative"
    hist = grpc_receiver.wait_for_point("ml.training.processing_time_ms").histogram
    assert (hist.count, hist.sum) == (1, 245)
    assert list(hist.explicit_bounds)[:3] == [10, 25, 50]
    names = grpc_receiver.metric_names()
    assert {
        "ml.training.validation_loss",
        "ml.training.accuracy",
        "ml.training.learning_rate",
        "ml.training.gpu_utilization",
        "ml.training.epoch",
        "ml.training.samples_per_second",
    } <= set(names)


def test_each_process_has_a_service_instance_id_and_self_metrics_name_the_file_path(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    spawn_bridge(bridge_command("run"), env=bridge_env(grpc_receiver, metrics), name="generated")
    # As k8s/training-job/ml-training-job.yaml does with the pod's UID from the downward API.
    pod_uid = "7f3c2a1e-0b5d-4e8a-9c61-2d4f8e0a1b23"
    configured = bridge_env(
        grpc_receiver, metrics, OTEL_RESOURCE_ATTRIBUTES=f"service.instance.id={pod_uid}"
    )
    spawn_bridge(bridge_command("run"), env=configured, name="configured")

    def instance_ids() -> set[str] | None:
        ids = {
            str(p.resource_attributes.get("service.instance.id"))
            for p in grpc_receiver.points("ml.training.loss")
        }
        return ids if len(ids) == 2 else None

    ids = grpc_receiver.wait_for(instance_ids, what="loss from both bridges")
    assert pod_uid in ids
    (generated,) = ids - {pod_uid}
    assert uuid.UUID(generated).version == 4, generated

    age = grpc_receiver.wait_for_point("ml_metrics_bridge.source.data_age")
    assert age.attributes == {"file.path": str(metrics)}
    read = grpc_receiver.wait_for_point("ml_metrics_bridge.records.read")
    assert read.attributes == {"file.path": str(metrics)}


def test_http_protobuf_export(
    tmp_path: Path, http_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1", loss=0.5)
    spawn_bridge(bridge_command("run"), env=bridge_env(http_receiver, metrics))
    point = http_receiver.wait_for_point("ml.training.loss", **JOB)
    assert point.number == 0.5
    assert http_receiver.requests[0].headers["content-type"] == "application/x-protobuf"


def test_through_a_real_collector(
    tmp_path: Path,
    rotel_collector: RotelCollector,
    grpc_receiver: OtlpReceiver,
    spawn_bridge: Spawn,
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1", loss=0.25)
    env = {
        "METRICS_FILE_PATH": str(metrics),
        "OTEL_EXPORTER_OTLP_ENDPOINT": rotel_collector.grpc_address,
    }
    spawn_bridge(bridge_command("run"), env=env)
    assert grpc_receiver.wait_for_point("ml.training.loss", **JOB).number == 0.25


def test_a_new_version_is_exported_promptly_not_at_the_collection_interval(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1", loss=0.9)
    bridge = spawn_bridge(
        bridge_command("run"), env=bridge_env(grpc_receiver, metrics, COLLECTION_INTERVAL="60")
    )
    grpc_receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.9)
    bridge.mark()
    write_doc(metrics, timestamp="t2", loss=0.8)
    # With a 60 s interval only a file event can explain an arrival within 5 s.
    grpc_receiver.wait_for_point("ml.training.loss", where=lambda p: p.number == 0.8, timeout_s=5)


def test_an_unchanged_document_is_never_recorded_twice(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    spawn_bridge(bridge_command("run"), env=bridge_env(grpc_receiver, metrics))
    grpc_receiver.wait_for_point("ml.training.processing_time_ms")
    seen = grpc_receiver.request_count
    grpc_receiver.wait_for(
        lambda: grpc_receiver.request_count >= seen + 4, what="4 heartbeat exports"
    )
    metrics.write_text(metrics.read_text())  # rewritten, same content: not a new version
    grpc_receiver.wait_for(lambda: grpc_receiver.request_count >= seen + 8, what="4 more exports")
    latest_hist = grpc_receiver.latest("ml.training.processing_time_ms")
    latest_batches = grpc_receiver.latest("ml.training.batch_number")
    assert latest_hist is not None and latest_hist.histogram.count == 1
    assert latest_batches is not None and latest_batches.number == 150


def test_series_absent_from_the_newest_document_disappear(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    mapping = tmp_path / "epoch.yaml"
    mapping.write_text(
        "version: 1\nattributes:\n  epoch: {path: $.training_metrics.epoch}\n"
        "metrics:\n  - {name: ml.training.loss, type: gauge, path: $.training_metrics.training_loss}\n"
    )
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1", epoch=1, loss=0.5)
    env = bridge_env(grpc_receiver, metrics, MAPPING_PATH=str(mapping))
    spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("ml.training.loss", epoch=1)
    write_doc(metrics, timestamp="t2", epoch=2, loss=0.4)
    grpc_receiver.wait_for(
        lambda: grpc_receiver.series("ml.training.loss") == [{"epoch": 2}],
        what="only the epoch 2 series in the newest export",
    )


def test_a_stale_file_stops_being_exported(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    mapping = tmp_path / "stale.yaml"
    mapping.write_text(
        "version: 1\nsource: {stale_after_s: 1}\n"
        "metrics:\n  - {name: ml.training.loss, type: gauge, path: $.training_metrics.training_loss}\n"
        "  - {name: ml.training.processing_time, type: histogram, unit: ms,"
        " path: $.training_metrics.processing_time_ms, buckets: [100, 1000]}\n"
    )
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    bridge = spawn_bridge(
        bridge_command("run"), env=bridge_env(grpc_receiver, metrics, MAPPING_PATH=str(mapping))
    )
    grpc_receiver.wait_for_point("ml.training.loss")
    bridge.wait_for_log(r"no new data for 1 s", stream="stderr")
    seen = grpc_receiver.request_count
    grpc_receiver.wait_for(lambda: grpc_receiver.request_count >= seen + 2, what="two more exports")
    assert grpc_receiver.requests[-1].points and all(
        not p.name.startswith("ml.training.") for p in grpc_receiver.requests[-1].points
    ), "neither the gauge nor the histogram of a stale file is exported"


@pytest.mark.parametrize("caught_by", ["process", "another-thread"])
def test_sigterm_flushes_the_latest_values_and_exits_0(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn, caught_by: str
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1", batch=10)
    bridge = spawn_bridge(
        bridge_command("run"), env=bridge_env(grpc_receiver, metrics, COLLECTION_INTERVAL="60")
    )
    grpc_receiver.wait_for_point("ml.training.batch_number", where=lambda p: p.number == 10)
    before = grpc_receiver.request_count
    if caught_by == "process":
        bridge.send_signal(signal.SIGTERM)
    else:
        # Python runs a handler in the main thread between bytecodes: a SIGTERM caught by
        # another thread, or by the main thread just before its select(), interrupted no
        # wait, and the loop slept its whole interval (60 s) first. Seen under load as a
        # bridge still running 10 s after SIGTERM, with no "received SIGTERM" line; a signal
        # sent to a thread other than the main one makes that window certain.
        others = bridge.thread_ids()[1:]
        assert others, "the bridge runs an export thread beside its main thread"
        bridge.send_signal_to_thread(others[0], signal.SIGTERM)
    assert bridge.wait(timeout_s=10) == 0
    assert grpc_receiver.request_count > before, "the final export on SIGTERM"
    assert re.search(r"received SIGTERM: stopping", bridge.stderr)


def test_resource_and_headers_come_from_the_standard_variables(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    env = bridge_env(
        grpc_receiver,
        metrics,
        OTEL_SERVICE_NAME="trainer-7",
        OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=pod-1,deployment.environment=test",
        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=s3cr3t-value",
        LOG_LEVEL="DEBUG",
    )
    bridge = spawn_bridge(bridge_command("run"), env=env)
    point = grpc_receiver.wait_for_point("ml.training.loss")
    assert point.resource_attributes["service.name"] == "trainer-7"
    assert point.resource_attributes["k8s.pod.name"] == "pod-1"
    assert grpc_receiver.requests[-1].headers["x-api-key"] == "s3cr3t-value"
    assert bridge.terminate_and_wait() == 0
    assert "s3cr3t" not in bridge.output


def test_bad_values_are_dropped_counted_and_logged_once(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    metrics = tmp_path / "current.json"
    doc = json.loads(json.dumps(BRIEF))
    doc["training_metrics"]["training_loss"] = float("nan")
    metrics.write_text(json.dumps(doc))  # Python writes the bare NaN literal
    bridge = spawn_bridge(bridge_command("run"), env=bridge_env(grpc_receiver, metrics))
    dropped = grpc_receiver.wait_for_point(
        "ml_metrics_bridge.points.dropped",
        **{"metric.name": "ml.training.loss", "reason": "non_finite"},
    )
    assert dropped.number == 1 and dropped.attributes["rule"] == "metrics[0]"
    assert grpc_receiver.latest("ml.training.loss") is None
    assert grpc_receiver.wait_for_point("ml.training.accuracy").number == 0.876
    bridge.wait_for_log(
        r"metrics\[0\] ml\.training\.loss: point dropped \(non_finite\)", stream="stderr"
    )


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_endpoints_follow_export_outcomes(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    import grpc

    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    port = free_port()
    env = bridge_env(
        grpc_receiver, metrics, HEALTH_PORT=str(port), OTEL_EXPORTER_OTLP_TIMEOUT="500"
    )
    bridge = spawn_bridge(bridge_command("run"), env=env)
    bridge.wait_for_log(r"health endpoints on \S+:\d+", stream="stderr")
    grpc_receiver.wait_for_point("ml.training.loss")
    base = f"http://127.0.0.1:{port}"
    assert _get(base + "/healthz")[0] == 200
    grpc_receiver.wait_for(lambda: _get(base + "/readyz")[0] == 200, what="ready")
    grpc_receiver.fail_with(grpc.StatusCode.UNAVAILABLE)
    grpc_receiver.wait_for(
        lambda: _get(base + "/readyz")[0] == 503, what="not ready while exports fail"
    )
    _, body = _get(base + "/readyz")
    assert body["last_export_ok"] is False
    assert _get(base + "/healthz")[0] == 200, "failing exports do not make the process unhealthy"
    grpc_receiver.succeed()
    grpc_receiver.wait_for(lambda: _get(base + "/readyz")[0] == 200, what="ready again")
    bridge.wait_for_log(r"export to .* failed: .*logged once per outage", stream="stderr")
    bridge.wait_for_log(r"export to .* recovered after \d+ failed attempts", stream="stderr")
    assert len(re.findall(r"export to \S+ \(OTLP/gRPC\) failed:", bridge.stderr)) == 1


def _configmap_dir(root: Path, version: str, mapping: str) -> None:
    """Lay out a directory the way the kubelet mounts a ConfigMap, and swap to ``version``."""
    (root / version).mkdir()
    (root / version / "ml-training.yaml").write_text(mapping)
    tmp = root / "..data_tmp"
    tmp.symlink_to(version)
    os.replace(tmp, root / "..data")
    link = root / "ml-training.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/ml-training.yaml")


def test_configmap_symlink_swap_reloads_and_a_bad_mapping_keeps_the_old_one(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    mounted = tmp_path / "mappings"
    mounted.mkdir()
    head = "version: 1\nsource: {version_path: $.timestamp}\nmetrics:\n"
    loss = "  - {name: ml.training.loss, type: gauge, path: $.training_metrics.training_loss}\n"
    acc = "  - {name: ml.training.accuracy, type: gauge, unit: '1', path: $.training_metrics.accuracy}\n"
    _configmap_dir(mounted, "..v1", head + loss)
    metrics = tmp_path / "current.json"
    write_doc(metrics, timestamp="t1")
    env = bridge_env(grpc_receiver, metrics, MAPPING_PATH=str(mounted))
    bridge = spawn_bridge(bridge_command("run"), env=env)
    grpc_receiver.wait_for_point("ml.training.loss")
    assert grpc_receiver.latest("ml.training.accuracy") is None

    _configmap_dir(mounted, "..v2", head + acc)
    bridge.wait_for_log(r"mapping reloaded from", stream="stderr")
    write_doc(metrics, timestamp="t2")
    grpc_receiver.wait_for(
        lambda: (
            {p.name for p in grpc_receiver.requests[-1].points if p.name.startswith("ml.training")}
            == {"ml.training.accuracy"}
        ),
        what="accuracy exported and loss retired",
    )

    _configmap_dir(
        mounted, "..v3", head + "  - {name: ml.training.loss, type: gauge, path: loss}\n"
    )
    bridge.wait_for_log(r"mapping reload rejected", stream="stderr")
    assert re.search(
        r"ml-training\.yaml:4: metrics\[0\]\.path: 'loss' is not a JSONPath", bridge.stderr
    )
    failures = grpc_receiver.wait_for_point("ml_metrics_bridge.config.reloads", outcome="failure")
    assert failures.number == 1
    write_doc(metrics, timestamp="t3", accuracy=0.9)
    grpc_receiver.wait_for_point("ml.training.accuracy", where=lambda p: p.number == 0.9)


def test_glob_source_tracks_files_appearing_and_disappearing_with_path_attributes(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    runs = tmp_path / "runs"
    (runs / "run-a").mkdir(parents=True)
    mapping = tmp_path / "hf.yaml"
    mapping.write_text(
        (ROOT / "mappings/examples/huggingface-trainer.yaml")
        .read_text()
        .replace(
            "/shared/runs/{run_id}/trainer_state.json", f"{runs}/{{run_id}}/trainer_state.json"
        )
    )

    def state(path: Path, *losses: float) -> None:
        history = [
            {"epoch": i / 10, "loss": loss, "step": (i + 1) * 10} for i, loss in enumerate(losses)
        ]
        path.write_text(json.dumps({"global_step": len(losses) * 10, "log_history": history}))

    state(runs / "run-a" / "trainer_state.json", 1.0, 0.8)
    env = {
        "MAPPING_PATH": str(mapping),
        "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.address,
        "COLLECTION_INTERVAL": "0.2",
    }
    bridge = spawn_bridge(bridge_command("run"), env=env)
    a = grpc_receiver.wait_for_point("hf.trainer.loss", run_id="run-a", split="train")
    assert a.number == 0.8
    assert grpc_receiver.wait_for_point("hf.trainer.step", run_id="run-a").number == 20

    (runs / "run-b").mkdir()
    state(runs / "run-b" / "trainer_state.json", 2.0)
    assert grpc_receiver.wait_for_point("hf.trainer.loss", run_id="run-b").number == 2.0

    (runs / "run-a" / "trainer_state.json").unlink()
    grpc_receiver.wait_for(
        lambda: [s["run_id"] for s in grpc_receiver.series("hf.trainer.loss")] == ["run-b"],
        what="run-a's series gone, run-b's still there",
    )
    bridge.wait_for_log(r"run-a/trainer_state\.json: file is gone", stream="stderr")


def test_preview_of_a_mapping_directory_shows_what_run_exports_glob_attributes_included(
    tmp_path: Path, grpc_receiver: OtlpReceiver, spawn_bridge: Spawn
) -> None:
    """Two mappings read one glob of files (a third reads other files); preview of one file
    must give the very points run --once exports from it: both mappings', with the glob's
    named parts."""
    run_dir = tmp_path / "runs" / "run-7"
    run_dir.mkdir(parents=True)
    data = run_dir / "metrics.csv"
    data.write_text("step,train_loss,val_loss\n1,0.9,\n1,,0.95\n2,0.8,\n")
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    glob = f"{tmp_path}/runs/{{run_id}}/metrics.csv"
    (mappings / "losses.yaml").write_text(
        f"version: 1\nsource: {{path: '{glob}', format: csv}}\nmetrics:\n"
        "  - {name: t.loss, type: gauge, path: $.train_loss, missing: skip, attributes: {split: train}}\n"
        "  - {name: t.loss, type: gauge, path: $.val_loss, missing: skip, attributes: {split: val}}\n"
    )
    (mappings / "steps.yaml").write_text(
        f"version: 1\nsource: {{path: '{tmp_path}/runs/*/metrics.csv', format: csv}}\nmetrics:\n"
        "  - {name: t.rows, type: counter, mode: increment, path: $.step}\n"
    )
    (mappings / "elsewhere.yaml").write_text(
        f"version: 1\nsource: {{path: '{tmp_path}/other/*.json'}}\nmetrics:\n"
        "  - {name: t.other, type: gauge, path: $.x}\n"
    )
    preview = spawn_bridge(
        bridge_command("preview", "--mapping", str(mappings), str(data), "--format", "json"),
        name="preview",
    )
    assert preview.wait(timeout_s=30) == 0, preview.describe()
    rows = json.loads(preview.stdout)
    previewed = [(r["name"], tuple(sorted(r["attributes"].items())), r["value"]) for r in rows]
    # run applies every row; the receiver gets each series' state (a gauge: its newest value).
    run = spawn_bridge(
        bridge_command("run", "--once"),
        env=bridge_env(grpc_receiver, data, MAPPING_PATH=str(mappings)),
    )
    assert run.wait(timeout_s=30) == 0, run.describe()
    latest: dict[tuple[str, Any], Any] = {}  # each series as last exported
    for p in grpc_receiver.points():
        if p.name.startswith("t."):
            latest[(p.name, tuple(sorted(p.attributes.items())))] = p.value
    exported = sorted((n, a, v) for (n, a), v in latest.items())
    newest: dict[tuple[str, Any], Any] = {}
    for name, attributes, value in previewed:
        if name == "t.rows":
            newest[(name, attributes)] = newest.get((name, attributes), 0) + value
        else:
            newest[(name, attributes)] = value  # rows are in file order: the last one wins
    assert {r["mapping"] for r in rows} == {
        str(mappings / "losses.yaml"),
        str(mappings / "steps.yaml"),
    }
    assert exported == sorted((n, a, v) for (n, a), v in newest.items())
    assert ("t.loss", (("run_id", "run-7"), ("split", "train")), 0.8) in exported
