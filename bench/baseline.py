"""The comparison sidecar: the hand-coded approach of the brief's sample sidecars.

``json.loads`` per record, direct dict access, and one synchronous OpenTelemetry SDK
instrument call per field: gauges ``set``, counters ``add`` of the delta, histograms
``record``, each with the same three attributes (job.id, model.name, dataset) and the
default mapping's names, units and buckets. Written out field by field on purpose: that
is what such a sidecar looks like, and what the bridge is compared against.

    python -m bench.baseline jsonl FILE
        Apply every line of FILE, collect once from an InMemoryMetricReader, print a JSON
        summary (records applied, histogram count) on stdout. Case a.
    python -m bench.baseline watch FILE --endpoint HOST:PORT [--interval-s S]
        Re-read FILE every S seconds; apply a new timestamp; export over OTLP/gRPC every
        S seconds until SIGTERM. Case d's memory comparison.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

SERVICE_NAME = "bench-baseline-sidecar"
_TIME_BUCKETS = [10, 25, 50, 100, 150, 200, 250, 300, 400, 500, 750, 1000, 2500, 5000]
_RATE_BUCKETS = [10, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500, 1000]


class HandCodedSidecar:
    """Instruments created once; :meth:`apply` is the per-record work being compared."""

    def __init__(self, reader: MetricReader) -> None:
        self.provider = MeterProvider(
            metric_readers=[reader], resource=Resource.create({"service.name": SERVICE_NAME})
        )
        meter = self.provider.get_meter("bench.baseline")
        self.loss = meter.create_gauge("ml.training.loss")
        self.validation_loss = meter.create_gauge("ml.training.validation_loss")
        self.accuracy = meter.create_gauge("ml.training.accuracy", unit="1")
        self.learning_rate = meter.create_gauge("ml.training.learning_rate")
        self.gpu_utilization = meter.create_gauge("ml.training.gpu_utilization", unit="1")
        self.batches = meter.create_counter("ml.training.batch_number", unit="{batch}")
        self.epochs = meter.create_counter("ml.training.epoch", unit="{epoch}")
        self.processing_time = meter.create_histogram(
            "ml.training.processing_time_ms", unit="ms",
            explicit_bucket_boundaries_advisory=_TIME_BUCKETS,
        )
        self.throughput = meter.create_histogram(
            "ml.training.samples_per_second", unit="{sample}/s",
            explicit_bucket_boundaries_advisory=_RATE_BUCKETS,
        )
        self._last_batch = 0
        self._last_epoch = 0

    def apply(self, document: dict[str, Any]) -> None:
        meta = document["job_metadata"]
        metrics = document["training_metrics"]
        attrs = {
            "job.id": meta["job_id"],
            "model.name": meta["model_name"],
            "dataset": meta["dataset"],
        }
        self.loss.set(metrics["training_loss"], attrs)
        self.validation_loss.set(metrics["validation_loss"], attrs)
        self.accuracy.set(metrics["accuracy"], attrs)
        self.learning_rate.set(metrics["learning_rate"], attrs)
        self.gpu_utilization.set(metrics["gpu_utilization"], attrs)
        batch = metrics["batch_number"]
        # A smaller running total is a restart: count it from zero again.
        self.batches.add(batch - self._last_batch if batch >= self._last_batch else batch, attrs)
        self._last_batch = batch
        epoch = metrics["epoch"]
        self.epochs.add(epoch - self._last_epoch if epoch >= self._last_epoch else epoch, attrs)
        self._last_epoch = epoch
        self.processing_time.record(metrics["processing_time_ms"], attrs)
        self.throughput.record(metrics["samples_per_second"], attrs)


def _jsonl(path: str) -> int:
    reader = InMemoryMetricReader()
    sidecar = HandCodedSidecar(reader)
    applied = 0
    with open(path, "rb") as fh:
        for line in fh:
            sidecar.apply(json.loads(line))
            applied += 1
    data = reader.get_metrics_data()
    histogram_count = 0
    if data is not None:
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != "ml.training.processing_time_ms":
                        continue
                    for point in metric.data.data_points:
                        if isinstance(point, HistogramDataPoint):
                            histogram_count += point.count
    sidecar.provider.shutdown()
    print(json.dumps({"records": applied, "histogram_count": histogram_count}))
    return 0


def _watch(path: str, endpoint: str, interval_s: float) -> int:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_s * 1000)
    sidecar = HandCodedSidecar(reader)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    last_timestamp = None
    while not stop.is_set():
        try:
            with open(path, "rb") as fh:
                document = json.loads(fh.read())
        except (OSError, ValueError):
            document = None  # missing or half-written: try again next time
        if document is not None and document.get("timestamp") != last_timestamp:
            last_timestamp = document.get("timestamp")
            sidecar.apply(document)
        stop.wait(interval_s)
    sidecar.provider.shutdown()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    commands = parser.add_subparsers(dest="mode", required=True)
    jsonl = commands.add_parser("jsonl")
    jsonl.add_argument("file")
    watch = commands.add_parser("watch")
    watch.add_argument("file")
    watch.add_argument("--endpoint", required=True)
    watch.add_argument("--interval-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.mode == "jsonl":
        return _jsonl(args.file)
    return _watch(args.file, args.endpoint, args.interval_s)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
