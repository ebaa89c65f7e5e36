#!/usr/bin/env python3
"""Check that a running Prometheus answers the project brief's queries, and holds every series
ml-metrics-bridge should produce.

`make verify` runs it after `make dev-up`. It does two things, printing one line per check
with the number of series it returned:

1. Runs the brief's queries exactly as the brief writes them (BRIEF_QUERIES), plus the
   brief's `curl -s :8889/metrics | grep ml_metrics` against the collector's endpoint.
2. Asks for every Prometheus name of the default mapping's instruments and of the
   self-metrics the alert rules use (docs/prometheus-names.md), and checks that training
   metrics carry the job_id, model_name and dataset labels.

It exits 1 naming each query that returned nothing and each metric that is missing or
unlabelled, 2 if Prometheus does not answer. With --wait-s it keeps asking until everything
is there or time runs out, since the first points need a collection interval plus a scrape
interval to arrive (and a `rate(...[5m])` two scrapes).

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

# The project brief's queries, verbatim (docs/prometheus-names.md lists the same ones; the
# brief's `curl` check is run separately, see CURL_CHECK). A reviewer pastes these.
BRIEF_QUERIES: tuple[str, ...] = (
    "ml_metrics_ml_training_loss",
    "ml_metrics_ml_training_validation_loss",
    "ml_metrics_ml_training_accuracy",
    "ml_metrics_ml_training_learning_rate",
    "ml_metrics_ml_training_gpu_utilization",
    "ml_metrics_ml_training_batch_number",
    "ml_metrics_ml_training_epoch",
    "ml_metrics_ml_training_processing_time_ms",
    "ml_metrics_ml_training_samples_per_second",
    'ml_metrics_ml_training_loss{model_name="resnet-50"}',
    'ml_metrics_ml_training_accuracy{job_id="training-job-123"}',
    'ml_metrics_ml_training_accuracy{dataset="imagenet"}',
    "avg(ml_metrics_ml_training_loss)",
    "max(ml_metrics_ml_training_gpu_utilization)",
    "rate(ml_metrics_ml_training_processing_time_ms_sum[5m])"
    " / rate(ml_metrics_ml_training_processing_time_ms_count[5m])",
)

# The brief's shell check, run as an HTTP GET of the collector's Prometheus endpoint.
CURL_CHECK = "curl -s :8889/metrics | grep ml_metrics"

# Histograms of the default mapping. Prometheus (classic histograms) stores only
# <name>_bucket, <name>_sum and <name>_count, so the brief's bare names of these two return
# no series by design; for them verify reports the bare query and checks <name>_count.
HISTOGRAMS: tuple[str, ...] = (
    "ml_metrics_ml_training_processing_time_ms",
    "ml_metrics_ml_training_samples_per_second",
)

# Prometheus names of the default mapping's instruments, through the collector's
# prometheus exporter: namespace ml_metrics plus the OTel name with `.` -> `_`, no
# suffixes (translation_strategy: UnderscoreEscapingWithoutSuffixes).
TRAINING_METRICS: tuple[str, ...] = (
    "ml_metrics_ml_training_loss",
    "ml_metrics_ml_training_validation_loss",
    "ml_metrics_ml_training_accuracy",
    "ml_metrics_ml_training_learning_rate",
    "ml_metrics_ml_training_gpu_utilization",
    "ml_metrics_ml_training_batch_number",
    "ml_metrics_ml_training_epoch",
    *(f"{name}_{part}" for name in HISTOGRAMS for part in ("bucket", "sum", "count")),
)

# The bridge's own metrics used by the alert rules. Both are observable instruments, so
# they are exported from the first collection on (the failure counter starts at 0).
SELF_METRICS: tuple[str, ...] = (
    "ml_metrics_ml_metrics_bridge_source_data_age",
    "ml_metrics_ml_metrics_bridge_export_failures",
)

TRAINING_LABELS: tuple[str, ...] = ("job_id", "model_name", "dataset")


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered something that is not a query result."""


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check found wrong; `subject` is the query or Prometheus name it concerns."""

    subject: str
    problem: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.subject}"


@dataclass(frozen=True, slots=True)
class Report:
    """One pass: a printable line per check, and what was wrong."""

    lines: tuple[str, ...]
    findings: tuple[Finding, ...]


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


def exposed_series(metrics_url: str, timeout_s: float) -> int:
    """The number of `ml_metrics...` sample lines the collector's /metrics serves."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8", "replace")
    return sum(1 for line in text.splitlines() if line.startswith(NAMESPACE))


def _series(count: int) -> str:
    return f"{count:4d} series"


def check_brief(prom_url: str, metrics_url: str, timeout_s: float) -> Report:
    """Run the brief's queries verbatim; each one that returns nothing is a finding."""
    lines: list[str] = []
    findings: list[Finding] = []
    for promql in BRIEF_QUERIES:
        count = len(query(prom_url, promql, timeout_s))
        if count == 0 and promql in HISTOGRAMS:
            # A classic histogram has no series under its bare name: check its _count.
            counted = len(query(prom_url, f"{promql}_count", timeout_s))
            lines.append(
                f"{_series(count)}  {promql}  (a histogram: no series under the bare name;"
                f" {promql}_count has {counted})"
            )
            if counted == 0:
                findings.append(Finding(f"{promql} ({promql}_count)", "empty"))
            continue
        lines.append(f"{_series(count)}  {promql}")
        if count == 0:
            findings.append(Finding(promql, "empty"))
    if metrics_url:
        try:
            count = exposed_series(metrics_url, timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            lines.append(f"   ? series  {CURL_CHECK}  ({metrics_url}: {exc})")
            findings.append(Finding(f"{CURL_CHECK} ({metrics_url}: {exc})", "unreachable"))
        else:
            lines.append(f"{_series(count)}  {CURL_CHECK}  ({metrics_url})")
            if count == 0:
                findings.append(Finding(f"{CURL_CHECK} ({metrics_url})", "empty"))
    return Report(tuple(lines), tuple(findings))


def check_metrics(prom_url: str, timeout_s: float) -> Report:
    """Every expected metric is present, and training metrics carry the job labels."""
    lines: list[str] = []
    findings: list[Finding] = []
    for name in TRAINING_METRICS + SELF_METRICS:
        series = query(prom_url, name, timeout_s)
        lines.append(f"{_series(len(series))}  {name}")
        if not series:
            findings.append(Finding(name, "missing"))
            continue
        if name in TRAINING_METRICS:
            for item in series:
                labels = item.get("metric")
                labels = labels if isinstance(labels, dict) else {}
                missing = [label for label in TRAINING_LABELS if not labels.get(label)]
                if missing:
                    findings.append(Finding(name, f"no label {', '.join(missing)}"))
                    break
    return Report(tuple(lines), tuple(findings))


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    parser = argparse.ArgumentParser(
        prog="verify.py",
        description="Run the brief's queries and check that Prometheus has every metric"
        " ml-metrics-bridge should export.",
    )
    parser.add_argument(
        "--prom-url",
        default=os.environ.get("PROM_URL", "http://localhost:9090"),
        help="Prometheus base URL (default: $PROM_URL or http://localhost:9090)",
    )
    parser.add_argument(
        "--metrics-url",
        default=os.environ.get("METRICS_URL", "http://localhost:8889/metrics"),
        help="the collector's Prometheus endpoint for the brief's curl check; empty skips it"
        " (default: $METRICS_URL or http://localhost:8889/metrics)",
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
    reports: tuple[Report, Report] | None = None
    last_error = ""
    while True:
        try:
            reports = (
                check_brief(args.prom_url, args.metrics_url, args.timeout_s),
                check_metrics(args.prom_url, args.timeout_s),
            )
        except PrometheusUnavailable as exc:
            reports, last_error = None, str(exc)
        done = reports is not None and not any(r.findings for r in reports)
        left_s = deadline - time.monotonic()
        if done or left_s < args.retry_interval_s:
            break
        waiting_for = (
            f"{sum(len(r.findings) for r in reports)} check(s) not met yet"
            if reports
            else "Prometheus unavailable"
        )
        print(f"verify: {waiting_for}, retrying for {left_s:.0f} s more", file=stderr)
        time.sleep(args.retry_interval_s)

    if reports is None:
        print(f"verify: Prometheus unavailable: {last_error}", file=stderr)
        return 2
    brief, metrics = reports
    print(f"The brief's queries, verbatim, at {args.prom_url}:", file=stdout)
    for line in brief.lines:
        print(line, file=stdout)
    print("Every Prometheus name of the default mapping and the alerted self-metrics:", file=stdout)
    for line in metrics.lines:
        print(line, file=stdout)

    problems = brief.findings + metrics.findings
    queries = len(BRIEF_QUERIES) + (1 if args.metrics_url else 0)
    expected = len(TRAINING_METRICS) + len(SELF_METRICS)
    if problems:
        absent = sum(1 for finding in metrics.findings if finding.problem == "missing")
        print(
            f"verify: FAILED at {args.prom_url}: {len(brief.findings)} of {queries} brief queries"
            f" returned nothing, {absent} of {expected} expected metrics missing,"
            f" {len(metrics.findings) - absent} without required labels",
            file=stderr,
        )
        for finding in problems:
            print(f"  {finding}", file=stderr)
        return 1
    print(
        f"verify: OK, all {queries} brief queries answered and all {expected} expected metrics"
        f" present at {args.prom_url}",
        file=stdout,
    )
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:], sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
