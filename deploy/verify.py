#!/usr/bin/env python3
"""Check that a running Prometheus holds every series ml-metrics-bridge should produce.

`make verify` runs it after `make dev-up`: it asks Prometheus's HTTP API for each expected
metric name (the collector's Prometheus names, see docs/prometheus-names.md), checks that
training metrics carry the job_id, model_name and dataset labels, and exits non-zero naming
whatever is missing. With --wait-s it keeps asking until everything is there or time runs
out, since the first points need a collection interval plus a scrape interval to arrive.

Standard library only, so it runs from any Python 3.11 without installing the project.
It only reads: it must never write to Prometheus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

NAMESPACE = "ml_metrics"

# Prometheus names of the default mapping's instruments, through the collector's
# prometheus exporter with `namespace: ml_metrics` and unit/type suffixes.
TRAINING_METRICS: tuple[str, ...] = (
    "ml_metrics_ml_training_loss",
    "ml_metrics_ml_training_validation_loss",
    "ml_metrics_ml_training_accuracy_ratio",
    "ml_metrics_ml_training_learning_rate",
    "ml_metrics_ml_training_gpu_utilization_ratio",
    "ml_metrics_ml_training_batch_number_total",
    "ml_metrics_ml_training_epoch_total",
    "ml_metrics_ml_training_processing_time_milliseconds_bucket",
    "ml_metrics_ml_training_processing_time_milliseconds_sum",
    "ml_metrics_ml_training_processing_time_milliseconds_count",
    "ml_metrics_ml_training_throughput_per_second_bucket",
    "ml_metrics_ml_training_throughput_per_second_sum",
    "ml_metrics_ml_training_throughput_per_second_count",
)

# The bridge's own metrics used by the alert rules. Both are observable instruments, so
# they are exported from the first collection on (the failure counter starts at 0).
SELF_METRICS: tuple[str, ...] = (
    "ml_metrics_ml_metrics_bridge_source_data_age_seconds",
    "ml_metrics_ml_metrics_bridge_export_failures_total",
)

TRAINING_LABELS: tuple[str, ...] = ("job_id", "model_name", "dataset")


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered something that is not a query result."""


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check found wrong; `metric` is the Prometheus name it concerns."""

    metric: str
    problem: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.metric}"


def query(prom_url: str, promql: str, timeout_s: float) -> list[dict[str, object]]:
    """Run an instant query and return its result vector."""
    url = f"{prom_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PrometheusUnavailable(f"{url}: {exc}") from exc
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusUnavailable(f"{url}: unexpected answer {body!r:.200}")
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        raise PrometheusUnavailable(f"{url}: answer has no result list")
    return [item for item in data["result"] if isinstance(item, dict)]


def check(prom_url: str, timeout_s: float) -> list[Finding]:
    """Return the expected metrics that are missing or unlabelled, after one pass."""
    problems: list[Finding] = []
    for name in TRAINING_METRICS + SELF_METRICS:
        series = query(prom_url, name, timeout_s)
        if not series:
            problems.append(Finding(name, "missing"))
            continue
        if name in TRAINING_METRICS:
            for item in series:
                labels = item.get("metric")
                labels = labels if isinstance(labels, dict) else {}
                missing = [label for label in TRAINING_LABELS if not labels.get(label)]
                if missing:
                    problems.append(Finding(name, f"no label {', '.join(missing)}"))
                    break
    return problems


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    parser = argparse.ArgumentParser(
        prog="verify.py",
        description="Check that Prometheus has every metric ml-metrics-bridge should export.",
    )
    parser.add_argument(
        "--prom-url",
        default=os.environ.get("PROM_URL", "http://localhost:9090"),
        help="Prometheus base URL (default: $PROM_URL or http://localhost:9090)",
    )
    parser.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        help="keep retrying for this long until everything is present (default: one pass)",
    )
    parser.add_argument(
        "--retry-interval-s", type=float, default=5.0, help="pause between passes (default: 5)"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=5.0, help="timeout of one HTTP request (default: 5)"
    )
    args = parser.parse_args(argv)

    deadline = time.monotonic() + max(args.wait_s, 0.0)
    problems: list[Finding] | None = None
    last_error = ""
    while True:
        try:
            problems = check(args.prom_url, args.timeout_s)
        except PrometheusUnavailable as exc:
            problems, last_error = None, str(exc)
        if problems == [] or time.monotonic() + args.retry_interval_s > deadline:
            break
        time.sleep(args.retry_interval_s)

    if problems is None:
        print(f"verify: Prometheus unavailable: {last_error}", file=stderr)
        return 2
    expected = len(TRAINING_METRICS) + len(SELF_METRICS)
    if problems:
        absent = sum(1 for finding in problems if finding.problem == "missing")
        print(
            f"verify: FAILED at {args.prom_url}: {absent} of {expected} expected metrics missing,"
            f" {len(problems) - absent} without required labels",
            file=stderr,
        )
        for finding in problems:
            print(f"  {finding}", file=stderr)
        return 1
    print(f"verify: OK, all {expected} expected metrics present at {args.prom_url}", file=stdout)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:], sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
