"""An in-process OTLP metrics receiver that tests export to over a real socket.

It listens on 127.0.0.1 either as a real gRPC server (``grpc.server`` serving the official
``MetricsService`` stubs from opentelemetry-proto) or as a real HTTP server (stdlib
``ThreadingHTTPServer`` accepting ``POST /v1/metrics``). Every request is decoded into flat
`Point` records; the raw messages and their headers (gRPC metadata) are kept as well.

It never interprets what it receives: no aggregation, no conversion, no de-duplication.
Tests assert on exactly what went over the wire. It can be told to fail (`fail_with`) or to
answer slowly (`delay_responses`), and it restarts on the same port, like a collector that
crashed and came back.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import SHUT_RDWR, socket
from types import TracebackType
from typing import Final, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

__all__ = [
    "AttributeValue",
    "ExponentialHistogramValue",
    "HistogramValue",
    "MetricKind",
    "OtlpReceiver",
    "Point",
    "PointValue",
    "ReceivedRequest",
    "SummaryValue",
    "Temporality",
    "TransportProtocol",
]

TransportProtocol: TypeAlias = Literal["grpc", "http"]
MetricKind: TypeAlias = Literal["gauge", "sum", "histogram", "exponential_histogram", "summary"]
Temporality: TypeAlias = Literal["unspecified", "delta", "cumulative"]
AttributeValue: TypeAlias = (
    "str | bool | int | float | bytes | tuple[AttributeValue, ...] | dict[str, AttributeValue]"
    " | None"
)

_HOST: Final = "127.0.0.1"
_T = TypeVar("_T")

_TEMPORALITY: Final[Mapping[int, Temporality]] = {
    metrics_pb2.AGGREGATION_TEMPORALITY_UNSPECIFIED: "unspecified",
    metrics_pb2.AGGREGATION_TEMPORALITY_DELTA: "delta",
    metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}

# The usual pairs, so one `fail_with` call reads the same for both flavours
# (OTLP spec, "Failures" for OTLP/gRPC and OTLP/HTTP).
_GRPC_TO_HTTP: Final[Mapping[grpc.StatusCode, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_HTTP_TO_GRPC: Final[Mapping[int, grpc.StatusCode]] = {
    **{status: code for code, status in _GRPC_TO_HTTP.items()},
    502: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """The value of one explicit-bucket histogram point."""

    count: int
    sum: float | None
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    min: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class ExponentialHistogramValue:
    """The value of one exponential histogram point."""

    count: int
    sum: float | None
    scale: int
    zero_count: int
    zero_threshold: float
    positive_offset: int
    positive_bucket_counts: tuple[int, ...]
    negative_offset: int
    negative_bucket_counts: tuple[int, ...]
    min: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class SummaryValue:
    """The value of one summary point; `quantiles` holds (quantile, value) pairs."""

    count: int
    sum: float
    quantiles: tuple[tuple[float, float], ...]


PointValue: TypeAlias = (
    "int | float | HistogramValue | ExponentialHistogramValue | SummaryValue | None"
)


@dataclass(frozen=True, slots=True)
class Point:
    """One data point as received, flattened with its metric, scope, resource and request.

    `value` is an int or float for gauges and sums (None when the point carries no value),
    otherwise one of the `*Value` classes. `monotonic` is set for sums only, `temporality`
    for sums and histograms. `received_at_s` is `time.monotonic()` at arrival.
    """

    name: str
    kind: MetricKind
    value: PointValue
    attributes: dict[str, AttributeValue] = field(hash=False)
    resource_attributes: dict[str, AttributeValue] = field(hash=False)
    unit: str
    description: str
    monotonic: bool | None
    temporality: Temporality | None
    start_time_unix_nano: int
    time_unix_nano: int
    flags: int
    scope_name: str
    scope_version: str
    request_index: int
    received_at_s: float

    @property
    def number(self) -> int | float:
        """The value of a gauge or sum point; fails the test for any other point."""
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise AssertionError(f"{self.name} is a {self.kind} point, not a number: {self!r}")
        return self.value

    @property
    def histogram(self) -> HistogramValue:
        """The value of a histogram point; fails the test for any other point."""
        if not isinstance(self.value, HistogramValue):
            raise AssertionError(f"{self.name} is a {self.kind} point, not a histogram: {self!r}")
        return self.value


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One export request as it arrived, whether it was accepted or answered with a failure.

    `headers` has lower-case names; for gRPC it is the invocation metadata (binary `-bin`
    values decoded as latin-1). `message` is the decoded ExportMetricsServiceRequest.
    """

    index: int
    protocol: TransportProtocol
    accepted: bool
    received_at_s: float
    received_unix_nano: int
    headers: dict[str, str] = field(hash=False)
    message: metrics_service_pb2.ExportMetricsServiceRequest = field(hash=False)
    points: tuple[Point, ...]


@dataclass(slots=True)
class _Failure:
    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    retry_after_s: float | None
    remaining: int | None


@dataclass(frozen=True, slots=True)
class _Verdict:
    failure: _Failure | None
    delay_s: float
    stopping: threading.Event

    def wait_delay(self) -> None:
        # Waiting on the stop event lets stop() cut a slow answer short.
        if self.delay_s > 0:
            self.stopping.wait(self.delay_s)


class OtlpReceiver:
    """A real OTLP metrics endpoint on 127.0.0.1 that records what it receives.

    `port=0` picks a free port at the first `start()`; later starts reuse it, so a test can
    stop the receiver and bring it back where the exporter expects it.
    """

    def __init__(
        self,
        protocol: TransportProtocol = "grpc",
        port: int = 0,
        *,
        http_path: str = "/v1/metrics",
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        self.protocol: Final[TransportProtocol] = protocol
        self.http_path: Final = http_path
        self._port = port
        self._cond = threading.Condition()
        self._accepted: list[ReceivedRequest] = []
        self._rejected: list[ReceivedRequest] = []
        self._next_index = 0
        self._failure: _Failure | None = None
        self._delay_s = 0.0
        self._stopping = threading.Event()
        self._grpc_server: grpc.Server | None = None
        self._grpc_pool: futures.ThreadPoolExecutor | None = None
        self._http_server: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._grpc_server is not None or self._http_server is not None

    def start(self, bind_timeout_s: float = 5.0) -> OtlpReceiver:
        """Listen and serve; retries a busy port until `bind_timeout_s` has passed."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._stopping = threading.Event()
        deadline = time.monotonic() + bind_timeout_s
        while True:
            try:
                if self.protocol == "grpc":
                    self._start_grpc()
                else:
                    self._start_http()
                return self
            except OSError as error:
                if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop serving and drop open connections; idempotent. Recorded data is kept."""
        self._stopping.set()
        if self._grpc_server is not None:
            # grace=None aborts in-flight RPCs, like a collector that is killed.
            self._grpc_server.stop(grace=None).wait()
            self._grpc_server = None
        if self._grpc_pool is not None:
            self._grpc_pool.shutdown(wait=True)
            self._grpc_pool = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.drop_connections()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join()
            self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_grpc(self) -> None:
        pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-receiver")
        # Without SO_REUSEPORT (on by default in grpc) a second bind of a taken port fails
        # loudly instead of silently sharing it with another process.
        server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
        # The generated registration helper is untyped (no stubs ship for *_pb2_grpc).
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _GrpcMetricsService(self), server
        )
        try:
            port = server.add_insecure_port(f"{_HOST}:{self._port}")
        except RuntimeError as error:  # grpc reports a failed bind this way
            server.stop(grace=None).wait()
            pool.shutdown(wait=True)
            raise OSError(errno.EADDRINUSE, f"cannot bind {_HOST}:{self._port}: {error}") from None
        server.start()
        self._port = port
        self._grpc_server, self._grpc_pool = server, pool

    def _start_http(self) -> None:
        server = _HttpServer((_HOST, self._port), self)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"otlp-receiver-http-{self._port}",
            daemon=True,
        )
        thread.start()
        self._http_server, self._http_thread = server, thread

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the port is chosen at the first start(); start the receiver first")
        return self._port

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"{_HOST}:{self.port}"

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, the form OTEL_EXPORTER_OTLP_ENDPOINT takes."""
        return f"http://{self.address}"

    @property
    def metrics_url(self) -> str:
        """The full URL of the metrics path, the form OTEL_EXPORTER_OTLP_METRICS_ENDPOINT takes."""
        return f"{self.endpoint}{self.http_path}"

    def __repr__(self) -> str:
        where = f"{_HOST}:{self._port}" if self._port else "unbound"
        state = "running" if self.running else "stopped"
        return f"OtlpReceiver({self.protocol}, {where}, {state})"

    # -- behaviour ---------------------------------------------------------------------

    def fail_with(
        self,
        code: grpc.StatusCode | int,
        *,
        times: int | None = None,
        retry_after_s: float | None = None,
        message: str = "failure injected by the test",
    ) -> None:
        """Answer the next `times` requests (all, if None) with a failure.

        `code` is a gRPC status or an HTTP status; it is translated for the other flavour
        (UNAVAILABLE <-> 503, RESOURCE_EXHAUSTED <-> 429, ...). `retry_after_s` is sent as
        gRPC RetryInfo / HTTP Retry-After, which the SDK exporters honour as their backoff.
        Failed requests are recorded in `rejected`, not in `requests`.
        """
        if isinstance(code, grpc.StatusCode):
            grpc_code = code
            http_status = _GRPC_TO_HTTP.get(code)
            if http_status is None and self.protocol == "http":
                raise ValueError(f"no HTTP status for {code}; pass an int")
        else:
            http_status = code
            grpc_code = _HTTP_TO_GRPC.get(code)
            if grpc_code is None and self.protocol == "grpc":
                raise ValueError(f"no gRPC status for HTTP {code}; pass a grpc.StatusCode")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        with self._cond:
            self._failure = _Failure(
                grpc_code=grpc_code or grpc.StatusCode.UNKNOWN,
                http_status=http_status or 500,
                message=message,
                retry_after_s=retry_after_s,
                remaining=times,
            )

    def delay_responses(self, delay_s: float) -> None:
        """Hold every answer for `delay_s` (a hung collector); 0 answers at once again."""
        with self._cond:
            self._delay_s = delay_s

    def succeed(self) -> None:
        """Answer every request promptly with success again."""
        with self._cond:
            self._failure = None
            self._delay_s = 0.0

    # -- recorded data -----------------------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Accepted requests in arrival order."""
        with self._cond:
            return list(self._accepted)

    @property
    def rejected(self) -> list[ReceivedRequest]:
        """Requests answered with an injected failure, in arrival order."""
        with self._cond:
            return list(self._rejected)

    @property
    def request_count(self) -> int:
        with self._cond:
            return len(self._accepted)

    @property
    def rejected_count(self) -> int:
        with self._cond:
            return len(self._rejected)

    def clear(self) -> None:
        """Forget everything received so far (request indexes keep growing)."""
        with self._cond:
            self._accepted.clear()
            self._rejected.clear()
            self._cond.notify_all()

    def points(self, name: str | None = None) -> list[Point]:
        """Every accepted point (of metric `name`, if given) in arrival order."""
        with self._cond:
            requests = list(self._accepted)
        return [p for r in requests for p in r.points if name is None or p.name == name]

    def metric_names(self) -> list[str]:
        """Sorted names of every metric received in accepted requests."""
        return sorted({p.name for p in self.points()})

    def latest(self, name: str, /, **attrs: AttributeValue) -> Point | None:
        """The most recent point of `name` whose attributes include `attrs` (equal values).

        Attribute keys that are not identifiers go through a dict: `**{"ml.job": "a"}`.
        """
        for point in reversed(self.points(name)):
            if _has_attributes(point, attrs):
                return point
        return None

    def series(self, name: str) -> list[dict[str, AttributeValue]]:
        """Distinct attribute sets of `name` in the newest accepted request that has it."""
        with self._cond:
            requests = list(self._accepted)
        for request in reversed(requests):
            found: list[dict[str, AttributeValue]] = []
            for point in request.points:
                if point.name == name and point.attributes not in found:
                    found.append(point.attributes)
            if found:
                return found
        return []

    def wait_for(
        self,
        predicate: Callable[[], _T | None],
        timeout_s: float = 10.0,
        poll_s: float = 0.02,
        *,
        what: str | None = None,
    ) -> _T:
        """Return the first truthy result of `predicate`, re-evaluated on every arrival and
        at least every `poll_s`; after `timeout_s` fail with a summary of what did arrive.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                generation = self._next_index
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                label = what or getattr(predicate, "__name__", "condition")
                raise AssertionError(f"{label} not met within {timeout_s:g}s\n{self.describe()}")
            with self._cond:
                if self._next_index == generation:
                    self._cond.wait(min(poll_s, remaining))

    def wait_for_point(
        self,
        name: str,
        /,
        where: Callable[[Point], bool] | None = None,
        timeout_s: float = 10.0,
        **attrs: AttributeValue,
    ) -> Point:
        """Wait for a point of `name` with `attrs` (and `where(point)`); return the newest."""

        def newest_match() -> Point | None:
            for point in reversed(self.points(name)):
                if _has_attributes(point, attrs) and (where is None or where(point)):
                    return point
            return None

        shown = ", ".join(f"{k}={v!r}" for k, v in attrs.items())
        extra = " satisfying `where`" if where is not None else ""
        return self.wait_for(
            newest_match, timeout_s, what=f"a point of {name!r} {{{shown}}}{extra}"
        )

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[ReceivedRequest]:
        """Wait until at least `count` requests were accepted; return them all."""
        return self.wait_for(
            lambda: self.requests if self.request_count >= count else None,
            timeout_s,
            what=f"{count} accepted request(s)",
        )

    def describe(self, max_series: int = 5) -> str:
        """A human summary of what was received, for failure messages."""
        with self._cond:
            accepted, rejected = list(self._accepted), list(self._rejected)
        lines = [f"{self!r}: {len(accepted)} accepted request(s), {len(rejected)} rejected"]
        newest: dict[str, dict[tuple[tuple[str, str], ...], Point]] = {}
        for request in accepted:
            for point in request.points:
                key = tuple(sorted((k, repr(v)) for k, v in point.attributes.items()))
                newest.setdefault(point.name, {})[key] = point
        for name in sorted(newest):
            series = list(newest[name].values())
            first = series[0]
            kind = f"{first.kind}{'/monotonic' if first.monotonic else ''}"
            lines.append(f"  {name} [{kind}, unit={first.unit!r}] {len(series)} series:")
            for point in series[-max_series:]:
                attrs = ", ".join(f"{k}={v!r}" for k, v in sorted(point.attributes.items()))
                shown = _show(point.value)
                lines.append(f"    {{{attrs}}} = {shown} (request {point.request_index})")
            if len(series) > max_series:
                lines.append(f"    ... and {len(series) - max_series} more")
        if rejected:
            names = sorted({p.name for r in rejected for p in r.points})
            lines.append(f"  rejected requests carried: {', '.join(names) or '(no points)'}")
        return "\n".join(lines)

    # -- ingestion (called from server threads) -----------------------------------------

    def _receive(
        self,
        protocol: TransportProtocol,
        headers: dict[str, str],
        message: metrics_service_pb2.ExportMetricsServiceRequest,
    ) -> _Verdict:
        received_at_s = time.monotonic()
        received_unix_nano = time.time_ns()
        with self._cond:
            index = self._next_index
            self._next_index += 1
            failure = self._failure
            if failure is not None and failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining == 0:
                    self._failure = None
            request = ReceivedRequest(
                index=index,
                protocol=protocol,
                accepted=failure is None,
                received_at_s=received_at_s,
                received_unix_nano=received_unix_nano,
                headers=headers,
                message=message,
                points=tuple(_flatten(message, index, received_at_s)),
            )
            (self._accepted if failure is None else self._rejected).append(request)
            self._cond.notify_all()
            return _Verdict(failure, self._delay_s, self._stopping)


# -- gRPC flavour ---------------------------------------------------------------------------


class _GrpcMetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(  # the name is fixed by the service definition
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        headers = _join_headers(
            (key, value if isinstance(value, str) else value.decode("latin-1"))
            for key, value in context.invocation_metadata()
        )
        verdict = self._receiver._receive("grpc", headers, request)
        verdict.wait_delay()
        failure = verdict.failure
        if failure is not None:
            if failure.retry_after_s is not None:
                info = error_details_pb2.RetryInfo()
                info.retry_delay.FromNanoseconds(int(failure.retry_after_s * 1e9))
                context.set_trailing_metadata(
                    (("google.rpc.retryinfo-bin", info.SerializeToString()),)
                )
            context.abort(failure.grpc_code, failure.message)
        return metrics_service_pb2.ExportMetricsServiceResponse()


# -- HTTP flavour ---------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    # Non-daemon handler threads are joined by server_close(), so stop() leaves none behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        self._connections: set[socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _HttpMetricsHandler)

    # TCP servers only ever get a socket (the stubs also allow UDP's (bytes, socket)).
    def process_request(self, request: socket, client_address: object) -> None:  # type: ignore[override]
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket) -> None:  # type: ignore[override]
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: socket | tuple[bytes, socket], client_address: object) -> None:
        # A client that went away (or a connection dropped by stop()) is not a test failure.
        if isinstance(sys.exception(), OSError):
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        # Keep-alive connections would otherwise outlive the server and keep answering.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(SHUT_RDWR)


class _HttpMetricsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def do_POST(self) -> None:  # the name is fixed by BaseHTTPRequestHandler
        receiver = self.server.receiver
        if urlsplit(self.path).path != receiver.http_path:
            self._reply(HTTPStatus.NOT_FOUND, "text/plain", b"unknown path", close=True)
            return
        try:
            body = self._read_body()
        except ValueError as error:
            self._reply(HTTPStatus.BAD_REQUEST, "text/plain", str(error).encode(), close=True)
            return
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        content_type = self.headers.get_content_type()
        message = metrics_service_pb2.ExportMetricsServiceRequest()
        try:
            body = _decompress(body, encoding)
            if content_type == "application/x-protobuf":
                message.ParseFromString(body)
            elif content_type == "application/json":
                json_format.Parse(body, message)
            else:
                self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "text/plain", content_type.encode())
                return
        except (ValueError, OSError, zlib.error, DecodeError, json_format.ParseError) as error:
            self._reply(HTTPStatus.BAD_REQUEST, "text/plain", f"undecodable: {error}".encode())
            return

        verdict = receiver._receive("http", _join_headers(self.headers.items()), message)
        verdict.wait_delay()
        failure = verdict.failure
        if failure is not None:
            status = status_pb2.Status(code=failure.grpc_code.value[0], message=failure.message)
            extra = {}
            if failure.retry_after_s is not None:
                extra["Retry-After"] = f"{failure.retry_after_s:g}"
            self._reply_message(failure.http_status, content_type, status, extra)
            return
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        self._reply_message(HTTPStatus.OK, content_type, response, {})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            raise ValueError("neither Content-Length nor chunked Transfer-Encoding")
        return self.rfile.read(int(length))

    def _reply_message(
        self,
        status: int,
        content_type: str,
        message: status_pb2.Status | metrics_service_pb2.ExportMetricsServiceResponse,
        extra_headers: Mapping[str, str],
    ) -> None:
        if content_type == "application/json":
            body = json_format.MessageToJson(message).encode()
        else:
            content_type, body = "application/x-protobuf", message.SerializeToString()
        self._reply(status, content_type, body, extra_headers=extra_headers)

    def _reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        *,
        close: bool = False,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # stdlib signature
        pass  # tests read requests from the receiver, not from stderr


# -- decoding -------------------------------------------------------------------------------


def _join_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in items:
        key = key.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _show(value: PointValue) -> str:
    if isinstance(value, HistogramValue):
        return f"histogram(count={value.count}, sum={value.sum!r}, buckets={value.bucket_counts})"
    if isinstance(value, ExponentialHistogramValue):
        return f"exponential_histogram(count={value.count}, sum={value.sum!r})"
    if isinstance(value, SummaryValue):
        return f"summary(count={value.count}, sum={value.sum!r})"
    return repr(value)


def _has_attributes(point: Point, attrs: Mapping[str, AttributeValue]) -> bool:
    return all(
        key in point.attributes and point.attributes[key] == value for key, value in attrs.items()
    )


def _any_value(value: common_pb2.AnyValue) -> AttributeValue:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "string_value_strindex":
        # Only meaningful with a profiles dictionary, which metrics never carry.
        return f"<strindex {value.string_value_strindex}>"
    decoded: AttributeValue = getattr(value, which)
    return decoded


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, AttributeValue]:
    return {kv.key: _any_value(kv.value) for kv in pairs}


def _optional_float(
    point: metrics_pb2.HistogramDataPoint | metrics_pb2.ExponentialHistogramDataPoint,
    name: Literal["min", "max"],
) -> float | None:
    return float(getattr(point, name)) if point.HasField(name) else None


def _flatten(
    message: metrics_service_pb2.ExportMetricsServiceRequest,
    request_index: int,
    received_at_s: float,
) -> list[Point]:
    points: list[Point] = []
    for resource_metrics in message.resource_metrics:
        resource_attributes = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for kind, value, (monotonic, temporality), data_point in _metric_values(metric):
                    points.append(
                        Point(
                            name=metric.name,
                            kind=kind,
                            value=value,
                            attributes=_attributes(data_point.attributes),
                            resource_attributes=dict(resource_attributes),
                            unit=metric.unit,
                            description=metric.description,
                            monotonic=monotonic,
                            temporality=temporality,
                            start_time_unix_nano=data_point.start_time_unix_nano,
                            time_unix_nano=data_point.time_unix_nano,
                            flags=data_point.flags,
                            scope_name=scope_metrics.scope.name,
                            scope_version=scope_metrics.scope.version,
                            request_index=request_index,
                            received_at_s=received_at_s,
                        )
                    )
    return points


_AnyDataPoint: TypeAlias = (
    "metrics_pb2.NumberDataPoint | metrics_pb2.HistogramDataPoint"
    " | metrics_pb2.ExponentialHistogramDataPoint | metrics_pb2.SummaryDataPoint"
)


def _metric_values(
    metric: metrics_pb2.Metric,
) -> list[tuple[MetricKind, PointValue, tuple[bool | None, Temporality | None], _AnyDataPoint]]:
    which = metric.WhichOneof("data")
    extra: tuple[bool | None, Temporality | None]
    if which == "gauge":
        return [("gauge", _number(p), (None, None), p) for p in metric.gauge.data_points]
    if which == "sum":
        extra = (metric.sum.is_monotonic, _TEMPORALITY[metric.sum.aggregation_temporality])
        return [("sum", _number(p), extra, p) for p in metric.sum.data_points]
    if which == "histogram":
        extra = (None, _TEMPORALITY[metric.histogram.aggregation_temporality])
        return [
            (
                "histogram",
                HistogramValue(
                    count=p.count,
                    sum=p.sum if p.HasField("sum") else None,
                    bucket_counts=tuple(p.bucket_counts),
                    explicit_bounds=tuple(p.explicit_bounds),
                    min=_optional_float(p, "min"),
                    max=_optional_float(p, "max"),
                ),
                extra,
                p,
            )
            for p in metric.histogram.data_points
        ]
    if which == "exponential_histogram":
        extra = (None, _TEMPORALITY[metric.exponential_histogram.aggregation_temporality])
        return [
            (
                "exponential_histogram",
                ExponentialHistogramValue(
                    count=p.count,
                    sum=p.sum if p.HasField("sum") else None,
                    scale=p.scale,
                    zero_count=p.zero_count,
                    zero_threshold=p.zero_threshold,
                    positive_offset=p.positive.offset,
                    positive_bucket_counts=tuple(p.positive.bucket_counts),
                    negative_offset=p.negative.offset,
                    negative_bucket_counts=tuple(p.negative.bucket_counts),
                    min=_optional_float(p, "min"),
                    max=_optional_float(p, "max"),
                ),
                extra,
                p,
            )
            for p in metric.exponential_histogram.data_points
        ]
    if which == "summary":
        return [
            (
                "summary",
                SummaryValue(
                    count=p.count,
                    sum=p.sum,
                    quantiles=tuple((q.quantile, q.value) for q in p.quantile_values),
                ),
                (None, None),
                p,
            )
            for p in metric.summary.data_points
        ]
    return []  # a metric without data: nothing to flatten


def _number(point: metrics_pb2.NumberDataPoint) -> int | float | None:
    which = point.WhichOneof("value")
    if which == "as_int":
        return point.as_int
    if which == "as_double":
        return point.as_double
    return None
