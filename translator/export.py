"""Wire the OpenTelemetry SDK: resource, meter provider, readers and exporters.

Exports happen when the runtime asks (:meth:`Pipeline.export`): right after a new
version is applied, and as a heartbeat every collection interval. The SDK's own 60 s
timer is not used. Exporter failures are logged here once per outage, with a count on
recovery, instead of a line per attempt; the values of OTLP headers are never logged.
Heavy exporter modules (gRPC, HTTP, Prometheus) are imported only when configured.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry.sdk import metrics as sdk_metrics
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from translator import __version__
from translator.errors import SettingsError
from translator.selfmetrics import Stats
from translator.settings import ExportSettings

_log = logging.getLogger(__name__)
METER_NAME = "ml-metrics-bridge"
"""The instrumentation scope of the mapped metrics (built by translator.instruments)."""
SELF_METER_NAME = "ml-metrics-bridge.self"
"""The bridge's own metrics live in their own instrumentation scope."""


SERVICE_INSTANCE_ID = str(uuid.uuid4())
"""This process's ``service.instance.id`` unless one is configured (in Kubernetes the pod's UID,
through OTEL_RESOURCE_ATTRIBUTES). Generated here, not left to the SDK: its own detector came
in 1.43 and pyproject.toml allows 1.38. One per process, so every pipeline of a run shares it."""


def build_resource(attributes: Mapping[str, Any]) -> Resource:
    """SDK defaults < the mapping's ``resource:`` < OTEL_RESOURCE_ATTRIBUTES < OTEL_SERVICE_NAME."""
    own = {"service.name": "ml-metrics-bridge", "service.instance.id": SERVICE_INSTANCE_ID}
    return Resource.create({**own, **attributes}).merge(OTELResourceDetector().detect())


class _LastMessage(logging.Handler):
    """Keeps the SDK exporters' latest complaint instead of printing one per retry."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.message = ""
        self.cause = ""
        """What the last HTTP request met (a status, a refused connection, a timeout): the
        SDK's HTTP exporter ends with a generic "due to timeout, max retries or shutdown"."""
        self.secrets: tuple[str, ...] = ()
        """Header values: an exporter's error may quote a request's headers."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must not break exporting
            message = str(record.msg)
        self.message = self.scrub(message)

    def reset(self) -> None:
        self.message = self.cause = ""

    def reason(self) -> str:
        """The cause first, then the SDK's own last word unless it only repeats the cause."""
        if not self.cause:
            return self.message
        if not self.message or self.message.startswith("Transient error"):
            return self.cause
        return f"{self.cause}; {self.message}"

    def scrub(self, message: str) -> str:
        for secret in self.secrets:
            message = message.replace(secret, "<header value>")
        return message


_SDK_EXPORTER_LOG = _LastMessage()


def exporter_complaint() -> str:
    """What the export under way has met so far ("" if nothing): the cause of an export
    that is still retrying when the bridge must exit."""
    return _SDK_EXPORTER_LOG.reason()


def _capture_sdk_exporter_logs() -> None:
    """Route the SDK exporters' per-attempt log lines to _SDK_EXPORTER_LOG, whose latest
    message goes into our once-per-outage line. Idempotent."""
    for name in (
        "opentelemetry.exporter.otlp",
        "opentelemetry.sdk.metrics._internal.export",
        "opentelemetry.util.re",  # its "Header format invalid!" quotes the whole header
    ):
        logger = logging.getLogger(name)
        if _SDK_EXPORTER_LOG not in logger.handlers:
            logger.addHandler(_SDK_EXPORTER_LOG)
        logger.propagate = False


class _ObservedExporter(MetricExporter):
    """Delegates to a real exporter and keeps score of what happened."""

    def __init__(
        self, inner: MetricExporter, target: str, stats: Stats, pipeline: Pipeline
    ) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._pipeline = pipeline
        self.target = target
        self._stats = stats
        self.failing_since: float | None = None
        self.failures_in_outage = 0
        self.last_ok: bool | None = None

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        _SDK_EXPORTER_LOG.reset()
        try:
            completed = self._pipeline.completed(metrics_data) or metrics_data
            result = self._inner.export(completed, timeout_millis=timeout_millis)
        except Exception as exc:  # an exporter bug must not stop the bridge
            _SDK_EXPORTER_LOG.message = _SDK_EXPORTER_LOG.scrub(f"{type(exc).__name__}: {exc}")
            result = MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        self._record(ok)
        return result

    def _record(self, ok: bool) -> None:
        self.last_ok = ok
        self._stats.exports["success" if ok else "failure"] += 1
        if ok:
            if self.failing_since is not None:
                _log.info(
                    "export to %s recovered after %d failed attempts over %.0f s",
                    self.target,
                    self.failures_in_outage,
                    time.monotonic() - self.failing_since,
                )
            self.failing_since, self.failures_in_outage = None, 0
            return
        self.failures_in_outage += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            reason = _SDK_EXPORTER_LOG.reason() or "no detail from the exporter"
            _log.warning(
                "export to %s failed: %s (logged once per outage, with a count when it recovers)",
                self.target,
                reason,
            )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return bool(self._inner.force_flush(timeout_millis=timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        # The SDK's reader passes `timeout=` (milliseconds) rather than `timeout_millis=`.
        self._inner.shutdown(timeout_millis=kwargs.get("timeout", timeout_millis))


class CompactConsoleExporter(MetricExporter):
    """One line per data point: ``name{attr=value,...} value``, for people watching a terminal."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._out = out
        self._printed_resource = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        lines = []
        for resource_metrics in metrics_data.resource_metrics:
            if not self._printed_resource:
                self._printed_resource = True
                attrs = _format_attributes(resource_metrics.resource.attributes)
                lines.append(f"resource {attrs}")
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name == SELF_METER_NAME:
                    continue  # people watching a terminal want the training metrics
                for metric in sorted(scope_metrics.metrics, key=lambda m: m.name):
                    unit = f" [{metric.unit}]" if metric.unit else ""
                    for point in metric.data.data_points:
                        lines.append(
                            f"  {metric.name}{_format_attributes(point.attributes)} "
                            f"{_format_point(point)}{unit}"
                        )
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self._out.write(
            f"--- export at {stamp} UTC: {len(lines)} lines\n" + "\n".join(lines) + "\n"
        )
        self._out.flush()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _format_attributes(attributes: Mapping[str, Any] | None) -> str:
    if not attributes:
        return ""
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(attributes.items())) + "}"


def _format_point(point: Any) -> str:
    if isinstance(point, NumberDataPoint):
        return f"{point.value:g}" if isinstance(point.value, float) else str(point.value)
    if isinstance(point, HistogramDataPoint):
        return f"count={point.count} sum={point.sum:g} min={point.min:g} max={point.max:g}"
    return str(point)


class Pipeline:
    """The meter provider with its readers; ``export`` pushes to every push exporter now."""

    def __init__(
        self, settings: ExportSettings, resource: Resource, *, stats: Stats, console: TextIO
    ) -> None:
        _capture_sdk_exporter_logs()
        self.settings = settings
        self.resource = resource
        self._complete: Callable[[MetricsData | None], MetricsData] | None = None
        self._push: list[PeriodicExportingMetricReader] = []
        self._observed: list[_ObservedExporter] = []
        readers: list[MetricReader] = []
        for name in settings.exporters:
            if name == "prometheus":
                readers.append(_prometheus_reader(settings, self))
                continue
            if name == "otlp":
                inner, target = _otlp_exporter(settings)
            else:
                inner, target = CompactConsoleExporter(console), "console"
            observed = _ObservedExporter(inner, target, stats, self)
            reader = PeriodicExportingMetricReader(observed, export_interval_millis=math.inf)
            self._observed.append(observed)
            self._push.append(reader)
            readers.append(reader)
        self.meter_provider = MeterProvider(
            resource=resource,
            metric_readers=readers,
            # No traces run in the sidecar, so exemplars would be empty; the default filter
            # still costs a context look-up on every histogram observation.
            exemplar_filter=AlwaysOffExemplarFilter(),
            # The runtime shuts it down within its exit deadline. The SDK's atexit shutdown
            # would run a second time after a last export cut short by that deadline, and
            # print "shutdown can only be called once" as the process leaves.
            shutdown_on_exit=False,
        )
        self.self_meter = self.meter_provider.get_meter(SELF_METER_NAME, __version__)
        self._lock = threading.Lock()

    def set_completion(self, complete: Callable[[MetricsData | None], MetricsData]) -> None:
        """Every collection passes through ``complete`` before any exporter sees it: the
        registry adds every mapped metric, built by itself (the SDK collects only the
        bridge's own metrics and never calls into the registry)."""
        self._complete = complete

    def completed(self, data: MetricsData | None) -> MetricsData | None:
        return data if self._complete is None else self._complete(data)

    @property
    def last_export_ok(self) -> bool | None:
        """None before any push export, else whether every exporter's last export succeeded."""
        outcomes = [e.last_ok for e in self._observed if e.last_ok is not None]
        return None if not outcomes else all(outcomes)

    def export(self, timeout_s: float) -> bool:
        """Collect and push now; True when every push exporter succeeded (or there is none).

        Waits at most ``timeout_s`` for an export already under way on another thread.
        """
        if not self._lock.acquire(timeout=max(timeout_s, 0.0)):
            return False
        try:
            for reader in self._push:
                try:
                    reader.collect(timeout_millis=timeout_s * 1000)
                except Exception as exc:  # collection timeouts and SDK errors: try next time
                    _log.warning("metric collection failed: %s", exc)
        finally:
            self._lock.release()
        return self.last_export_ok is not False

    def shutdown(self, timeout_s: float) -> None:
        try:
            self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)
        except Exception as exc:  # shutting down must not fail the exit
            _log.warning("exporter shutdown: %s", exc)


#: Cumulative for every instrument, whatever OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
#: says: Prometheus needs it, and the histograms the registry aggregates are cumulative.
_CUMULATIVE: dict[type, AggregationTemporality] = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        sdk_metrics.Counter,
        sdk_metrics.UpDownCounter,
        sdk_metrics.Histogram,
        sdk_metrics.ObservableCounter,
        sdk_metrics.ObservableUpDownCounter,
        sdk_metrics.ObservableGauge,
    )
}


@contextlib.contextmanager
def _headers_hidden_from_sdk() -> Iterator[None]:
    """The SDK's HTTP exporter parses OTEL_EXPORTER_OTLP_*HEADERS itself whatever headers
    it is given, and logs a value it dislikes verbatim. settings has parsed and checked
    them: the exporter gets them as an argument and does not see the variables."""
    names = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _otlp_exporter(settings: ExportSettings) -> tuple[MetricExporter, str]:
    # Very short values would garble every message and are no secret worth the name.
    _SDK_EXPORTER_LOG.secrets = tuple(v for v in settings.headers.values() if len(v) >= 4)
    with _headers_hidden_from_sdk():
        return _new_otlp_exporter(settings)


def _new_otlp_exporter(settings: ExportSettings) -> tuple[MetricExporter, str]:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        credentials = None
        if not settings.insecure:
            import grpc

            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.certificate_file),
                private_key=_read(settings.client_key_file),
                certificate_chain=_read(settings.client_certificate_file),
            )
        grpc_exporter = OTLPMetricExporter(
            preferred_temporality=_CUMULATIVE,
            endpoint=settings.endpoint,
            insecure=settings.insecure,
            credentials=credentials,
            headers=dict(settings.headers),
            timeout=settings.timeout_s,
        )
        return grpc_exporter, f"{settings.endpoint} (OTLP/gRPC)"
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    http_exporter = HttpExporter(
        session=_observed_http_session(),
        preferred_temporality=_CUMULATIVE,
        endpoint=settings.endpoint,
        certificate_file=settings.certificate_file,
        client_certificate_file=settings.client_certificate_file,
        client_key_file=settings.client_key_file,
        headers=dict(settings.headers),
        timeout=settings.timeout_s,
    )
    return http_exporter, f"{settings.endpoint} (OTLP/HTTP)"


def _observed_http_session() -> Any:
    """A requests session that notes what each export request met for the failure line."""
    import requests

    class ObservedSession(requests.Session):
        def send(self, request: Any, **kwargs: Any) -> Any:
            try:
                response = super().send(request, **kwargs)
            except requests.RequestException as exc:
                _SDK_EXPORTER_LOG.cause = _SDK_EXPORTER_LOG.scrub(_request_failure(exc))
                raise
            if response.status_code >= 400:
                _SDK_EXPORTER_LOG.cause = f"HTTP {response.status_code} {response.reason}"
            return response

    return ObservedSession()


def _request_failure(exc: BaseException) -> str:
    """"connection refused", "timed out", ...: the innermost OS error under requests' and
    urllib3's wrappers, else the exception itself."""
    import requests

    if isinstance(exc, requests.Timeout):
        return "timed out"
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.strerror:
            return error.strerror[:1].lower() + error.strerror[1:]
        # urllib3 keeps the underlying error in `reason`; requests in args[0].
        inner = [error.__cause__, error.__context__, getattr(error, "reason", None)]
        inner += [a for a in error.args if isinstance(a, BaseException)]
        pending.extend(e for e in inner if isinstance(e, BaseException))
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "timed out"):
        if known in text:
            return known[:1].lower() + known[1:]
    return f"{type(exc).__name__}: {text}"


def _prometheus_reader(settings: ExportSettings, pipeline: Pipeline) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    class FilteredReader(PrometheusMetricReader):
        def _receive_metrics(self, metrics_data: MetricsData, *args: Any, **kwargs: Any) -> None:
            completed = pipeline.completed(metrics_data) or metrics_data
            super()._receive_metrics(completed, *args, **kwargs)

    try:
        start_http_server(settings.prometheus_port, addr=settings.prometheus_host)
    except OSError as exc:
        where = f"{settings.prometheus_host}:{settings.prometheus_port}"
        raise SettingsError(
            [("OTEL_EXPORTER_PROMETHEUS_PORT", f"cannot listen on {where}: {exc.strerror}")]
        ) from None
    _log.info(
        "serving Prometheus metrics on http://%s:%d/metrics",
        settings.prometheus_host,
        settings.prometheus_port,
    )
    return FilteredReader()


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()
