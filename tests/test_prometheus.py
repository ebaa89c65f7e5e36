"""OTEL_METRICS_EXPORTER=prometheus: a real Prometheus server scrapes the bridge and answers PromQL.

The bridge's own endpoint is the Python SDK's Prometheus exporter, which appends unit and
`_total` suffixes and has no namespace; the collector path (no suffixes, namespace
ml_metrics) is checked statically, see tests/test_prometheus_names.py and
docs/prometheus-names.md.
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.otlp_receiver import OtlpReceiver
from support.process import BridgeProcess, ChildProcess, bridge_command, free_port
from support.scripts import deploy_verify

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BRIEF = ROOT / "tests/cases/brief-default/input.json"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start Debian's Prometheus scraping 127.0.0.1:<port> every second; yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, (
        "prometheus is not installed: run `make system-deps` (apt-get install prometheus)"
    )
    started: list[ChildProcess] = []

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: bridge\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        port = free_port()
        process = ChildProcess(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            name="prometheus",
        )
        started.append(process)
        process.start()
        process.wait_for_log(r"Server is ready to receive web requests", timeout_s=30)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_query(
    base: str, promql: str, process: BridgeProcess, timeout_s: float = 30
) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(base, promql)
        if result:
            return result
        time.sleep(0.25)  # polling an HTTP API: there is no event to wait on
    raise AssertionError(
        f"Prometheus has no result for {promql!r} after {timeout_s} s:\n{process.describe()}"
    )


def test_prometheus_scrapes_the_bridge_and_answers_with_the_files_values(
    tmp_path: Path,
    prometheus: Callable[[int], str],
    grpc_receiver: OtlpReceiver,
    spawn_bridge: Callable[..., BridgeProcess],
) -> None:
    metrics_port = free_port()
    env = {
        "METRICS_FILE_PATH": str(BRIEF),
        "OTEL_METRICS_EXPORTER": "otlp,prometheus",  # both at once
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
        "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.address,
        "COLLECTION_INTERVAL": "0.5",
    }
    bridge = spawn_bridge(bridge_command("run"), env=env)
    bridge.wait_for_log(r"serving Prometheus metrics on", stream="stderr")
    base = prometheus(metrics_port)
    (loss,) = wait_for_query(base, "ml_training_loss", bridge)
    assert float(loss["value"][1]) == 0.342
    assert loss["metric"]["job_id"] == "training-job-123"
    (batches,) = wait_for_query(base, "ml_training_batch_number_total", bridge)
    assert float(batches["value"][1]) == 150
    (count,) = wait_for_query(base, "ml_training_processing_time_ms_milliseconds_count", bridge)
    assert float(count["value"][1]) == 1
    (throughput,) = wait_for_query(base, "ml_training_samples_per_second_sum", bridge)
    assert float(throughput["value"][1]) == 156.2
    (age,) = wait_for_query(base, "ml_metrics_bridge_source_data_age_seconds", bridge)
    assert age["metric"]["file_path"] == str(BRIEF)
    (target,) = wait_for_query(base, 'target_info{service_name="ml-training-sidecar"}', bridge)
    assert uuid.UUID(target["metric"]["service_instance_id"]).version == 4
    assert grpc_receiver.wait_for_point("ml.training.loss").number == 0.342


def test_every_brief_query_is_promql_a_real_prometheus_accepts_and_verify_names_each_empty_one(
    prometheus: Callable[[int], str],
) -> None:
    # Nothing listens on the target: every query is valid and returns nothing. A query that
    # Prometheus refused (bad PromQL) would make verify exit 2, not 1.
    base = prometheus(free_port())
    out, err = io.StringIO(), io.StringIO()
    with deploy_verify() as verify:
        code = verify.run(["--prom-url", base, "--metrics-url", ""], out, err)
    assert code == 1, err.getvalue()
    for promql in verify.BRIEF_QUERIES:
        assert f"   0 series  {promql}" in out.getvalue()
        assert f"  empty: {promql}" in err.getvalue()
    for name in verify.TRAINING_METRICS + verify.SELF_METRICS:
        assert f"  missing: {name}\n" in err.getvalue()

