"""A minimal OTLP/gRPC metrics receiver that timestamps arrivals, for the benchmarks.

A real ``grpc.server`` serving the official ``MetricsService`` stubs of opentelemetry-proto
on 127.0.0.1: what the bridge sends goes over a real socket through the real exporter. It
keeps only what the benchmarks need per request (arrival time, ``service.name``, and the
values of one watched gauge by ``job.id``), so a ten-minute soak stays small here.

The test suite has a complete receiver in ``tests/support``; this one is kept apart so
the benchmarks do not move with the test harness, and so its own cost stays tiny.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2

_HOST = "127.0.0.1"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One accepted export request."""

    received_at_s: float
    """``time.monotonic()`` when the request reached the handler (system-wide clock)."""
    service: str
    values: dict[str, float]
    """The watched gauge's value per ``job.id`` attribute in this request."""


class Receiver:
    """``with Receiver() as r:`` listens on a free port; ``r.address`` is ``127.0.0.1:PORT``."""

    def __init__(self, watched_gauge: str = "ml.training.loss") -> None:
        self.watched_gauge = watched_gauge
        self._cond = threading.Condition()
        self._arrivals: list[Arrival] = []
        self._server: grpc.Server | None = None
        self._pool: futures.ThreadPoolExecutor | None = None
        self._port = 0

    @property
    def address(self) -> str:
        if not self._port:
            raise RuntimeError("start the receiver first")
        return f"{_HOST}:{self._port}"

    def start(self) -> Receiver:
        pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="bench-receiver")
        server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
        # The generated registration helper is untyped (no stubs ship for *_pb2_grpc).
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Service(self), server
        )
        self._port = server.add_insecure_port(f"{_HOST}:0")
        server.start()
        self._server, self._pool = server, pool
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- recorded data ------------------------------------------------------------------

    def arrivals(self, service: str | None = None) -> list[Arrival]:
        with self._cond:
            found = list(self._arrivals)
        return [a for a in found if service is None or a.service == service]

    def wait_for(
        self, predicate: Callable[[], _T | None], timeout_s: float, what: str
    ) -> _T:
        """The first truthy result of ``predicate``, re-checked at every arrival."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                seen = len(self._arrivals)
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: not within {timeout_s:g} s")
            with self._cond:
                if len(self._arrivals) == seen:
                    self._cond.wait(min(remaining, 0.5))

    def first_arrival(
        self, match: Callable[[Arrival], bool], timeout_s: float, what: str, *, after_s: float = 0.0
    ) -> Arrival:
        """The earliest request that arrived at or after ``after_s`` (monotonic) and matches."""

        def first() -> Arrival | None:
            return next(
                (a for a in self.arrivals() if a.received_at_s >= after_s and match(a)), None
            )

        return self.wait_for(first, timeout_s, what)

    def value_arrival(
        self, job_id: str, value: float, timeout_s: float, *, after_s: float = 0.0
    ) -> Arrival:
        """The first request after ``after_s`` carrying the watched gauge = ``value``."""
        return self.first_arrival(
            lambda a: a.values.get(job_id) == value, timeout_s,
            f"{self.watched_gauge}={value} for job.id={job_id}", after_s=after_s,
        )

    def job_arrival(self, job_id: str, timeout_s: float, *, after_s: float = 0.0) -> Arrival:
        """The first request after ``after_s`` with a watched-gauge point of ``job_id``."""
        return self.first_arrival(
            lambda a: job_id in a.values, timeout_s,
            f"a first export of job.id={job_id}", after_s=after_s,
        )

    # --- ingestion (gRPC threads) -------------------------------------------------------

    def _receive(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        received_at_s = time.monotonic()
        service = ""
        values: dict[str, float] = {}
        for resource_metrics in request.resource_metrics:
            for attribute in resource_metrics.resource.attributes:
                if attribute.key == "service.name":
                    service = attribute.value.string_value
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != self.watched_gauge or not metric.HasField("gauge"):
                        continue
                    for point in metric.gauge.data_points:
                        job = _string_attribute(point.attributes, "job.id")
                        if point.HasField("as_double"):
                            values[job] = point.as_double
                        else:
                            values[job] = float(point.as_int)
        with self._cond:
            self._arrivals.append(Arrival(received_at_s, service, values))
            self._cond.notify_all()


def _string_attribute(attributes: list[common_pb2.KeyValue], key: str) -> str:
    for attribute in attributes:
        if attribute.key == key:
            return str(attribute.value.string_value)
    return ""


class _Service(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def Export(  # the name is fixed by the service definition
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._receive(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()
