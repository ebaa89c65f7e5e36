"""The integration harness itself: receivers, rotel and child processes, driven by the real SDK.

If these fail, no integration test result means anything.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from support.otlp_receiver import HistogramValue, OtlpReceiver, TransportProtocol
from support.process import BridgeProcess, ChildProcess, free_port
from support.rotel import RotelCollector

pytestmark = pytest.mark.integration

_EXPORT_TIMEOUT_S = 2.0
_RESOURCE = {"service.name": "harness-test", "ml.job": "resnet-50"}


def _exporter(
    protocol: TransportProtocol, endpoint: str, headers: dict[str, str] | None = None
) -> MetricExporter:
    if protocol == "grpc":
        return GrpcMetricExporter(
            endpoint=endpoint, insecure=True, timeout=_EXPORT_TIMEOUT_S, headers=headers
        )
    return HttpMetricExporter(
        endpoint=f"{endpoint}/v1/metrics",
        compression=Compression.Gzip,
        timeout=_EXPORT_TIMEOUT_S,
        headers=headers,
    )


@contextmanager
def _meter_provider(exporter: MetricExporter) -> Iterator[MeterProvider]:
    # An interval of an hour: exports happen only on force_flush() and at shutdown.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create(_RESOURCE))
    try:
        yield provider
    finally:
        provider.shutdown()


def _record_training_metrics(provider: MeterProvider) -> None:
    meter = provider.get_meter("harness-test", "1.2.3")
    meter.create_gauge("ml.training.loss", unit="1", description="training loss").set(
        0.25, {"epoch": 3, "phase": "train"}
    )
    steps = meter.create_counter("ml.training.steps", unit="{step}")
    steps.add(5, {"job": "resnet"})
    steps.add(7, {"job": "resnet"})
    step_time = meter.create_histogram(
        "ml.training.step_time", unit="ms", explicit_bucket_boundaries_advisory=[10, 100, 1000]
    )
    for value in (5.0, 50.0, 500.0, 5000.0):
        step_time.record(value, {"device": "gpu0"})


def _assert_training_metrics(receiver: OtlpReceiver) -> None:
    loss = receiver.wait_for_point("ml.training.loss", epoch=3)
    assert loss.kind == "gauge"
    assert loss.value == 0.25
    assert loss.unit == "1"
    assert loss.description == "training loss"
    assert loss.attributes == {"epoch": 3, "phase": "train"}
    assert loss.resource_attributes["service.name"] == "harness-test"
    assert loss.resource_attributes["ml.job"] == "resnet-50"
    assert (loss.scope_name, loss.scope_version) == ("harness-test", "1.2.3")
    assert loss.time_unix_nano > 0

    steps = receiver.wait_for_point("ml.training.steps", job="resnet")
    assert (steps.kind, steps.monotonic, steps.temporality) == ("sum", True, "cumulative")
    assert steps.value == 12
    assert isinstance(steps.value, int)
    assert steps.unit == "{step}"
    assert 0 < steps.start_time_unix_nano <= steps.time_unix_nano

    step_time = receiver.wait_for_point("ml.training.step_time", device="gpu0")
    assert (step_time.kind, step_time.temporality) == ("histogram", "cumulative")
    assert step_time.unit == "ms"
    assert step_time.histogram == HistogramValue(
        count=4,
        sum=5555.0,
        bucket_counts=(1, 1, 1, 1),
        explicit_bounds=(10.0, 100.0, 1000.0),
        min=5.0,
        max=5000.0,
    )
    assert receiver.series("ml.training.step_time") == [{"device": "gpu0"}]


@pytest.fixture(params=["grpc", "http"])
def receiver(request: pytest.FixtureRequest) -> OtlpReceiver:
    fixture: OtlpReceiver = request.getfixturevalue(f"{request.param}_receiver")
    return fixture


# -- receivers ------------------------------------------------------------------------------


def test_receiver_decodes_gauge_counter_and_histogram_from_the_sdk(
    receiver: OtlpReceiver,
) -> None:
    with _meter_provider(_exporter(receiver.protocol, receiver.endpoint)) as provider:
        _record_training_metrics(provider)
        assert provider.force_flush(timeout_millis=5_000)
        _assert_training_metrics(receiver)
        assert receiver.request_count == 1
        assert receiver.metric_names() == [
            "ml.training.loss",
            "ml.training.step_time",
            "ml.training.steps",
        ]


def test_receiver_keeps_request_headers(receiver: OtlpReceiver) -> None:
    exporter = _exporter(receiver.protocol, receiver.endpoint, headers={"x-tenant": "ml-team"})
    with _meter_provider(exporter) as provider:
        provider.get_meter("t").create_counter("c").add(1)
        assert provider.force_flush(timeout_millis=5_000)
        (request,) = receiver.wait_for_requests(1)
    assert request.headers["x-tenant"] == "ml-team"
    assert request.headers["user-agent"].startswith("OTel-OTLP-Exporter-Python")
    assert request.message.resource_metrics[0].scope_metrics[0].metrics[0].name == "c"
    if receiver.protocol == "http":
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers["content-encoding"] == "gzip"


def test_latest_picks_the_newest_point_of_the_matching_series(receiver: OtlpReceiver) -> None:
    with _meter_provider(_exporter(receiver.protocol, receiver.endpoint)) as provider:
        gauge = provider.get_meter("t").create_gauge("ml.eval.accuracy")
        gauge.set(0.5, {"epoch": 1, "ml.split": "val"})
        provider.force_flush()
        gauge.set(0.7, {"epoch": 2, "ml.split": "val"})
        provider.force_flush()
        receiver.wait_for_requests(2)

    latest = receiver.latest("ml.eval.accuracy", **{"ml.split": "val"})
    assert latest is not None and latest.value == 0.7
    first = receiver.latest("ml.eval.accuracy", epoch=1)
    assert first is not None and first.value == 0.5
    assert receiver.latest("ml.eval.accuracy", epoch=99) is None
    assert receiver.latest("no.such.metric") is None
    # A synchronous gauge keeps exporting every attribute set it has seen.
    assert receiver.series("ml.eval.accuracy") == [
        {"epoch": 1, "ml.split": "val"},
        {"epoch": 2, "ml.split": "val"},
    ]
    receiver.clear()
    assert receiver.points() == []
    assert receiver.request_count == 0
    assert receiver.series("ml.eval.accuracy") == []


def test_receiver_restarts_on_the_same_port(receiver: OtlpReceiver) -> None:
    with _meter_provider(_exporter(receiver.protocol, receiver.endpoint)) as provider:
        counter = provider.get_meter("t").create_counter("ml.restarts")
        counter.add(1)
        provider.force_flush()
        receiver.wait_for_point("ml.restarts")
        port = receiver.port

        receiver.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()

        receiver.start()
        assert receiver.port == port
        counter.add(1)
        provider.force_flush()
        assert receiver.wait_for_point("ml.restarts", where=lambda p: p.value == 2).value == 2
    assert receiver.request_count >= 2


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_receiver_refuses_a_port_that_is_taken(protocol: TransportProtocol) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        receiver = OtlpReceiver(protocol, holder.getsockname()[1])
        with pytest.raises(OSError, match=r"in use|cannot bind"):
            receiver.start(bind_timeout_s=0.2)
    assert not receiver.running


def test_fail_with_unavailable_makes_the_sdk_retry(receiver: OtlpReceiver) -> None:
    receiver.fail_with(grpc.StatusCode.UNAVAILABLE, times=1, retry_after_s=0.05)
    with _meter_provider(_exporter(receiver.protocol, receiver.endpoint)) as provider:
        provider.get_meter("t").create_counter("ml.retried").add(1)
        assert provider.force_flush(timeout_millis=5_000)
        assert receiver.wait_for_point("ml.retried").value == 1
        assert receiver.rejected_count == 1
        assert receiver.request_count == 1
        assert [p.name for p in receiver.rejected[0].points] == ["ml.retried"]


def test_fail_with_a_permanent_error_is_not_retried(receiver: OtlpReceiver) -> None:
    receiver.fail_with(400 if receiver.protocol == "http" else grpc.StatusCode.INVALID_ARGUMENT)
    with _meter_provider(_exporter(receiver.protocol, receiver.endpoint)) as provider:
        provider.get_meter("t").create_counter("ml.refused").add(1)
        provider.force_flush(timeout_millis=5_000)
        receiver.wait_for(lambda: receiver.rejected_count >= 1)
        receiver.succeed()
    assert receiver.rejected_count == 1
    # Only the export at shutdown, after succeed(), was accepted.
    assert receiver.request_count == 1


def test_delayed_responses_hold_the_exporter(receiver: OtlpReceiver) -> None:
    receiver.delay_responses(0.3)
    with _meter_provider(_exporter(receiver.protocol, receiver.endpoint)) as provider:
        provider.get_meter("t").create_counter("ml.slow").add(1)
        started = time.monotonic()
        assert provider.force_flush(timeout_millis=5_000)
        assert time.monotonic() - started >= 0.3
        receiver.succeed()


def test_wait_for_failure_lists_what_was_received(grpc_receiver: OtlpReceiver) -> None:
    with _meter_provider(_exporter("grpc", grpc_receiver.endpoint)) as provider:
        provider.get_meter("t").create_gauge("ml.training.loss").set(0.125, {"epoch": 7})
        provider.force_flush()
        grpc_receiver.wait_for_requests(1)
        with pytest.raises(AssertionError) as failure:
            grpc_receiver.wait_for_point("ml.training.accuracy", timeout_s=0.1)
    message = str(failure.value)
    assert "'ml.training.accuracy'" in message
    assert "ml.training.loss [gauge" in message
    assert "{epoch=7} = 0.125" in message


def test_http_receiver_rejects_unknown_paths_and_media_types(http_receiver: OtlpReceiver) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", http_receiver.port, timeout=5)
    try:
        connection.request("POST", "/v1/traces", b"", {"Content-Type": "application/x-protobuf"})
        assert connection.getresponse().status == 404
        connection.close()
        connection.request("POST", "/v1/metrics", b"x", {"Content-Type": "text/plain"})
        response = connection.getresponse()
        response.read()
        assert response.status == 415
        connection.request("POST", "/v1/metrics", b"{}", {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"{}")
    finally:
        connection.close()
    assert http_receiver.request_count == 1
    assert http_receiver.points() == []


# -- rotel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_rotel_forwards_sdk_export_to_the_receiver(
    rotel_collector: RotelCollector, grpc_receiver: OtlpReceiver, protocol: TransportProtocol
) -> None:
    exporter = _exporter(protocol, rotel_collector.endpoint(protocol))
    with _meter_provider(exporter) as provider:
        _record_training_metrics(provider)
        assert provider.force_flush(timeout_millis=5_000)
        _assert_training_metrics(grpc_receiver)
    assert grpc_receiver.requests[0].headers["user-agent"].startswith("Rotel")


def test_rotel_forwards_over_otlp_http_to_the_http_receiver(http_receiver: OtlpReceiver) -> None:
    with (
        RotelCollector.forwarding_to(http_receiver) as collector,
        _meter_provider(_exporter("grpc", collector.grpc_endpoint)) as provider,
    ):
        _record_training_metrics(provider)
        assert provider.force_flush(timeout_millis=5_000)
        _assert_training_metrics(http_receiver)
        assert http_receiver.requests[0].headers["content-encoding"] == "gzip"


def test_rotel_debug_collector_prints_received_metrics(
    rotel_debug_collector: RotelCollector,
) -> None:
    with _meter_provider(_exporter("grpc", rotel_debug_collector.grpc_endpoint)) as provider:
        provider.get_meter("t").create_gauge("ml.training.loss", unit="1").set(0.25, {"epoch": 3})
        assert provider.force_flush(timeout_millis=5_000)
        name = rotel_debug_collector.wait_for_output(r"-> Name: ml\.training\.loss$")
        rotel_debug_collector.wait_for_output(r"-> epoch: Int\(3\)", start=name.end())
        rotel_debug_collector.wait_for_output(r"^Value: 0\.25$", start=name.end())


def test_rotel_restarts_on_the_same_ports_and_forwards_again(
    rotel_collector: RotelCollector, grpc_receiver: OtlpReceiver
) -> None:
    with _meter_provider(_exporter("grpc", rotel_collector.grpc_endpoint)) as provider:
        counter = provider.get_meter("t").create_counter("ml.collector.restarts")
        counter.add(1)
        provider.force_flush()
        grpc_receiver.wait_for_point("ml.collector.restarts")
        address = rotel_collector.grpc_address

        assert rotel_collector.stop() == 0
        rotel_collector.start()
        assert rotel_collector.grpc_address == address
        counter.add(1)
        provider.force_flush()
        grpc_receiver.wait_for_point("ml.collector.restarts", where=lambda p: p.value == 2)


def test_rotel_retries_while_the_receiver_is_down(
    rotel_collector: RotelCollector, grpc_receiver: OtlpReceiver
) -> None:
    grpc_receiver.stop()
    with _meter_provider(_exporter("grpc", rotel_collector.grpc_endpoint)) as provider:
        provider.get_meter("t").create_counter("ml.buffered").add(1)
        assert provider.force_flush(timeout_millis=5_000)  # rotel accepted it
        grpc_receiver.start()
        grpc_receiver.wait_for_point("ml.buffered")


def test_rotel_that_cannot_start_reports_its_output(grpc_receiver: OtlpReceiver) -> None:
    collector = RotelCollector.forwarding_to(grpc_receiver, extra_args=["--no-such-flag"])
    with pytest.raises(AssertionError, match=r"(?s)rotel exited during startup.*no-such-flag"):
        collector.start()
    assert not collector.running


# -- child processes ------------------------------------------------------------------------


_PATIENT_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    def stop(signum, frame):
        print("stopping on", signal.Signals(signum).name, flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, stop)
    seen = sorted(k + "=" + v for k, v in os.environ.items() if k.startswith("OTEL_"))
    print("otel:", ";".join(seen))
    print("ready", file=sys.stderr)
    while True:
        signal.pause()
    """
)


def test_child_gets_only_the_test_otel_variables_and_stops_on_sigterm(
    monkeypatch: pytest.MonkeyPatch, spawn_bridge: Callable[..., BridgeProcess]
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "leaked-from-the-parent")
    child = spawn_bridge(
        [sys.executable, "-c", _PATIENT_CHILD],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
    )
    seen = child.wait_for_log("^otel: (.*)$", stream="stdout")
    assert seen.group(1) == "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:1"
    child.wait_for_log("^ready$", stream="stderr")
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout_s=5) == 3
    assert "stopping on SIGTERM" in child.output


def test_wait_for_log_fails_at_once_when_the_child_exits(
    spawn_bridge: Callable[..., BridgeProcess],
) -> None:
    child = spawn_bridge([sys.executable, "-c", "print('boom'); raise SystemExit(2)"])
    started = time.monotonic()
    with pytest.raises(
        AssertionError, match=r"(?s)exited without printing it.*exited with 2.*boom"
    ):
        child.wait_for_log("never printed", timeout_s=30)
    assert time.monotonic() - started < 10


def test_wait_for_log_can_wait_for_newer_lines_only(
    spawn_bridge: Callable[..., BridgeProcess],
) -> None:
    child = spawn_bridge([sys.executable, "-c", _PATIENT_CHILD])
    ready = child.wait_for_log("^ready$")
    with pytest.raises(AssertionError, match=r"not printed within 0\.1s"):
        child.wait_for_log("^ready$", timeout_s=0.1, start=ready.end())
    assert child.terminate_and_wait(timeout_s=5) == 3


def test_chatty_child_never_blocks_on_a_full_pipe(
    spawn_bridge: Callable[..., BridgeProcess],
) -> None:
    chatter = (
        "import sys\n"
        "for _ in range(2048):\n"
        "    print('x' * 1023, file=sys.stdout)\n"
        "    print('x' * 1023, file=sys.stderr)\n"
    )
    child = spawn_bridge([sys.executable, "-c", chatter])
    assert child.wait(timeout_s=20) == 0
    assert len(child.stdout) == len(child.stderr) == 2048 * 1024


def test_child_ignoring_sigterm_is_killed_and_reported() -> None:
    ignore = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    with ChildProcess([sys.executable, "-c", ignore], name="stubborn") as child:
        child.wait_for_log("ready")
        with pytest.raises(AssertionError, match=r"(?s)stubborn still running after 0\.2s.*killed"):
            child.terminate_and_wait(timeout_s=0.2)
        assert not child.running
        assert child.returncode == -signal.SIGKILL


def test_free_port_hands_out_distinct_bindable_ports() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", ports.pop()))


def test_otel_environment_is_cleared_for_every_test() -> None:
    assert not [name for name in os.environ if name.startswith("OTEL_")]
