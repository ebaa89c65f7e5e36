"""Issue #10: exported numbers stay true when jobs resume, mappings reload and the sidecar
restarts. The bridge runs as a real process exporting to real receivers.

Every wait is on a condition with a timeout; nothing here sleeps and hopes.
"""

from __future__ import annotations

import json
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
        # The export thread is alive: heartbeats keep arriving after the last reload.
        grpc_receiver.wait_for_requests(grpc_receiver.request_count + 3, timeout_s=30)
    finally:
        stop.set()
        scraper.join(timeout=15)
    assert not failures, failures
    assert scrapes, "no Prometheus scrape succeeded"
    began = time.monotonic()
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout_s=10) == 0
    assert time.monotonic() - began < 5


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
