"""The command line: ``run``, ``validate``, ``preview``, ``init``, ``demo`` and ``simulate``.

``main()`` is ``sys.exit(run(argv, stdout, stderr))`` so tests call :func:`run` in-process.
Exit status: 0 success, 1 a run that could not deliver (``--once``), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TextIO

from translator import __version__
from translator.errors import ConfigError, MappingError, Problem, SourceError
from translator.logs import configure as configure_logging
from translator.mapping import Plan, load_plan, load_plans, mapping_files
from translator.mapping.compiler import DEFAULT_SOURCE_PATH, conflicts_between
from translator.mapping.plan import SourceFormat
from translator.scaffold import DEFAULT_PREFIX, PREFIX_PATTERN
from translator.settings import Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def main() -> None:
    try:
        status = run(sys.argv[1:], sys.stdout, sys.stderr)
        sys.stdout.flush()
    except BrokenPipeError:
        # `init SAMPLE | head`: the reader has gone, which is not an error worth a
        # traceback. stdout goes to /dev/null so that Python's own flush at exit succeeds.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_FAILED
    sys.exit(status)


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.handler(args, stdout, stderr))
    except ConfigError as exc:
        stderr.write(f"ml-metrics-bridge: configuration error:\n{exc}\n")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ml-metrics-bridge",
        description="Turn ML-training JSON metric files into OpenTelemetry metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("run", help="run the sidecar (settings from the environment)")
    p.add_argument(
        "--mapping", metavar="PATH", help="mapping file or directory (default: $MAPPING_PATH)"
    )
    p.add_argument("--once", action="store_true", help="read every source once, export, exit")
    p.set_defaults(handler=_run)

    p = commands.add_parser("validate", help="load and compile mapping files; report every error")
    p.add_argument("paths", nargs="*", metavar="PATH", help="mapping files or directories")
    p.add_argument(
        "--settings", action="store_true",
        help="instead of PATHs: check what `run` would start with, the settings in the "
        "environment (read as `run` reads them) and the mapping MAPPING_PATH names",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="text: PATH:LINE: yaml.path: message lines; json: a list of problem objects",
    )  # fmt: skip
    p.set_defaults(handler=_validate)

    p = commands.add_parser("preview", help="show the data points run would export from INPUT")
    p.add_argument(
        "--mapping", metavar="PATH", required=True,
        help="the mapping file to apply to INPUT (its source.format says how INPUT is read)",
    )  # fmt: skip
    p.add_argument("input", metavar="INPUT", help="a JSON document, JSON Lines or CSV file")
    p.add_argument(
        "--format", choices=("table", "json"), default="table",
        help="table: one line per data point, then drops and series counts; json: a list",
    )  # fmt: skip
    p.set_defaults(handler=_preview)

    p = commands.add_parser("demo", help="simulated training job + bridge printing to the console")
    p.add_argument("--duration-s", type=float, default=0, help="stop after this long (0: Ctrl-C)")
    p.add_argument("--interval-s", type=float, default=1.0, help="seconds between documents")
    p.set_defaults(handler=_demo)

    p = commands.add_parser("init", help="print a commented first mapping for a sample file")
    p.add_argument(
        "sample", metavar="SAMPLE",
        help="what the job writes: a JSON document, JSON Lines, a history array or CSV",
    )  # fmt: skip
    p.add_argument(
        "--prefix", type=_prefix, default=DEFAULT_PREFIX,
        help=f"the start of every metric name (default: {DEFAULT_PREFIX})",
    )  # fmt: skip
    p.set_defaults(handler=_init)

    p = commands.add_parser("simulate", help="write a metrics document repeatedly (a mock job)")
    p.add_argument("--output", required=True, metavar="PATH", help="the file to write")
    p.add_argument(
        "--interval-s", type=float, default=10.0, help="seconds between writes (default: 10)"
    )
    p.add_argument("--count", type=int, default=0, help="stop after this many writes (0: never)")
    p.add_argument("--atomic", action="store_true", help="write a temporary file and rename it")
    p.set_defaults(handler=_simulate)
    return parser


# --- run ----------------------------------------------------------------------------------


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    settings = load_settings(mapping_path=args.mapping)
    return _run_bridge(settings, stdout, stderr, once=args.once)


def _run_bridge(
    settings: Settings, stdout: TextIO, stderr: TextIO, *, once: bool, duration_s: float = 0
) -> int:
    from translator.runtime import Bridge, SignalLatch, install_signal_handlers

    # Handlers first: SIGTERM or Ctrl-C while the mappings load (the validate child runs
    # for a few tenths of a second) must end the process cleanly, with a line saying so.
    latch = SignalLatch()
    restore_signals = None
    if threading.current_thread() is threading.main_thread():
        restore_signals = install_signal_handlers(latch)
    try:
        configure_logging(settings.log_level, settings.log_format, stderr)
        log = logging.getLogger("translator")
        plans = load_plans(
            settings.mapping_path,
            default_source_path=settings.metrics_file_path,
            schema_in_child=True,
        )
        if latch.received is not None:
            log.info("received %s while starting: exiting before reading anything", latch.name)
            return EXIT_OK
        bridge = Bridge(settings, plans, console=stdout)
        latch.hand_to(bridge.on_signal)
        if duration_s:
            timer = threading.Timer(duration_s, bridge.stop)
            timer.daemon = True
            timer.start()
        log.info(
            "ml-metrics-bridge %s: %d mapping(s) from %s, exporters %s, every %g s",
            __version__,
            len(plans),
            settings.mapping_path,
            ",".join(settings.export.exporters) or "none",
            settings.collection_interval_s,
        )
        return bridge.run(once=once)
    finally:
        if restore_signals is not None:
            restore_signals()


# --- validate -----------------------------------------------------------------------------


class _AnyEnvironment(Mapping[str, str]):
    """For ``validate``: a CI machine lacks the pod's variables, which is not an error."""

    def __getitem__(self, key: str) -> str:
        return os.environ.get(key, f"<{key}>")

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def _validate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    if args.settings == bool(args.paths):
        stderr.write("ml-metrics-bridge validate: give either mapping PATHs or --settings\n")
        return EXIT_CONFIG
    paths: list[str] = args.paths
    environ: Mapping[str, str] = _AnyEnvironment()
    default_source_path = DEFAULT_SOURCE_PATH
    if args.settings:
        # The very call `run` makes: a bad value raises SettingsError, which run() reports
        # in the words `run` uses. Then the mapping is compiled as the sidecar will, with
        # the real environment: an `env:` attribute it lacks is an error here too.
        settings = load_settings()
        stderr.write("settings valid\n")
        paths, environ = [settings.mapping_path], os.environ
        default_source_path = settings.metrics_file_path
    files = [f for path in paths for f in mapping_files(path)]
    problems: list[Problem] = []
    for path in paths:  # the files of one path are loaded together by the sidecar
        plans = []
        for file in mapping_files(path):
            try:
                plans.append(
                    load_plan(file, environ=environ, default_source_path=default_source_path)
                )
            except MappingError as exc:
                problems.extend(exc.problems)
        problems.extend(conflicts_between(plans))
    if args.format == "json":
        json.dump([dataclasses.asdict(p) for p in problems], stdout)
        stdout.write("\n")
    else:
        stdout.writelines(f"{problem}\n" for problem in problems)
    if not files:
        stderr.write("no mapping files found in: " + ", ".join(paths) + "\n")
        return EXIT_CONFIG
    bad = len({p.file for p in problems})
    stderr.write(f"{len(files) - bad} of {len(files)} mapping file(s) valid\n")
    return EXIT_CONFIG if problems else EXIT_OK


# --- preview ------------------------------------------------------------------------------


def _preview(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """What ``run`` would export from INPUT: every mapping whose source names it (every
    mapping, when none does), with the attributes named parts of a glob give it."""
    from translator.sources import PathPattern

    plans = load_plans(args.mapping)
    named = {plan.mapping_file: _source_name(PathPattern(plan.source.path), args.input)
             for plan in plans}  # fmt: skip
    chosen = [plan for plan in plans if named[plan.mapping_file] is not None] or plans
    several = len(chosen) > 1
    status = EXIT_OK
    rows: list[dict[str, Any]] = []
    read: list[Plan] = []
    for plan in chosen:
        pattern = PathPattern(plan.source.path)
        source_name = named[plan.mapping_file]
        if source_name is None and pattern.names:
            stderr.write(
                f"note: {args.input} is not a file of {plan.mapping_file}'s source.path "
                f"{plan.source.path}: run would add the attributes "
                f"{', '.join(pattern.names)} from its path\n"
            )
        try:
            records, root_of = _read_input(plan, args.input, stderr)
        except (OSError, SourceError, ValueError) as exc:
            where = f" with {plan.mapping_file}" if several else ""
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            stderr.write(f"ml-metrics-bridge: cannot read {args.input}{where}: {reason}\n")
            status = EXIT_FAILED
            continue
        read.append(plan)
        extra = pattern.attributes(source_name) if source_name is not None else ()
        plan_rows = _preview_rows(plan, records, root_of, extra)
        if several:
            for row in plan_rows:
                row["mapping"] = plan.mapping_file
        rows += plan_rows
    if not read:
        return status
    if args.format == "json":
        json.dump(rows, stdout, indent=2, default=str)
        stdout.write("\n")
    else:
        for plan in read:
            if several:
                stdout.write(f"== {plan.mapping_file}\n")
            mine = [r for r in rows if r.get("mapping", plan.mapping_file) == plan.mapping_file]
            _print_table(mine, plan, stdout)
    return status


def _source_name(pattern: Any, path: str) -> str | None:
    """``path`` as the sidecar names it when it reads it for ``pattern``, or None when the
    pattern does not take in that file (patterns are matched as written: absolute or not)."""
    for name in (path, os.path.abspath(path), os.path.normpath(path)):
        if pattern.matches(name):
            return name
    return None


def _preview_rows(
    plan: Plan, records: list[Any], root_of: Any, extra: tuple[tuple[str, str], ...]
) -> list[dict[str, Any]]:
    """The data points an exporter would get after ``run`` read ``records``, then the drops.

    The same path as ``run``: one snapshot of the records, evaluated and applied to a
    registry, whose points are what goes out (a gauge: the newest record's value; a
    counter total: the file's; an increment: the sum; a histogram: its buckets).
    """
    from translator.instruments import InstrumentRegistry
    from translator.runtime import apply_snapshot, job_start_ns
    from translator.series import UNKNOWN_START
    from translator.sources import Snapshot

    appended = plan.source.format in (SourceFormat.JSONL, SourceFormat.CSV)
    root = None if appended or not records else root_of(records[0])
    snapshot = Snapshot(plan.mapping_file, records, root, not appended, time.time())
    registry = InstrumentRegistry()
    registry.install([plan])
    start = job_start_ns(plan, snapshot)
    drops = apply_snapshot(
        registry, plan, snapshot, plan.mapping_file, extra,
        start_ns=start if isinstance(start, int) else UNKNOWN_START,
    )  # fmt: skip
    kinds = {spec.name: spec.kind.value for spec in plan.instruments}
    rows: list[dict[str, Any]] = []
    for metric in registry.metrics():
        for point in metric.data.data_points:
            row = _row(None, metric.name, kinds[metric.name], metric.unit or "", _value(point))
            row["attributes"] = dict(point.attributes or {})
            rows.append(row)
    for number, drop in drops:
        rule = drop.rule
        row = _row(number, rule.name, rule.kind.value, rule.unit, None)
        row["dropped"] = {
            "reason": drop.reason.value,
            "detail": drop.detail,
            "rule": f"metrics[{rule.index}]",
        }
        rows.append(row)
    return rows


def _row(record: int | None, name: str, kind: str, unit: str, value: Any) -> dict[str, Any]:
    row: dict[str, Any] = {} if record is None else {"record": record}
    row.update(name=name, type=kind, unit=unit, value=value, attributes={})
    return row


def _value(point: Any) -> Any:
    """A data point's value as strict JSON (NaN and Infinity as text)."""
    if hasattr(point, "bucket_counts"):  # a HistogramDataPoint
        return {
            "count": point.count, "sum": _strict(point.sum), "min": _strict(point.min),
            "max": _strict(point.max), "bucket_counts": list(point.bucket_counts),
            "explicit_bounds": list(point.explicit_bounds),
        }  # fmt: skip
    return _strict(point.value)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    return value


def _read_input(plan: Plan, path: str, stderr: TextIO) -> tuple[list[Any], Any]:
    from translator.sources import csv_records, other_format_hint, parse_json

    with open(path, "rb") as fh:
        data = fh.read()
    if plan.source.format is SourceFormat.JSONL:
        records, skipped = [], []
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(parse_json(line))
            except ValueError as exc:  # the sidecar skips such a line too, and counts it
                skipped.append(f"{path}:{number}: not JSON ({exc}); skipped\n")
        if not records and len(skipped) > 1:
            try:
                parse_json(data)
            except ValueError:
                pass
            else:  # a pretty-printed document: a "not JSON" per line would hide the cause
                raise ValueError(
                    "it is one JSON document, not JSON Lines (one object per line): say "
                    "source.format: document in the mapping"
                )
        stderr.write("".join(skipped))
        return records, lambda record: record
    if plan.source.format is SourceFormat.CSV:
        rows, errors = csv_records(data)
        for error in errors:
            stderr.write(f"{path}: {error}\n")
        return rows, lambda record: record
    try:
        document = parse_json(data)
    except ValueError as exc:
        raise ValueError(f"{exc}{other_format_hint(data)}") from None
    if plan.source.records is not None:
        return plan.source.records.all(document), lambda record: document
    return [document], lambda record: document


def _print_table(rows: list[dict[str, Any]], plan: Plan, out: TextIO) -> None:
    points = [r for r in rows if "dropped" not in r]
    dropped = [r for r in rows if "dropped" in r]
    width = max([len(r["name"]) for r in rows] + [6])
    # The unit has a column of its own: beside the value, "0.876 1" read as two numbers.
    unit_width = max([len(r["unit"] or "") for r in points] + [4])
    out.write(
        f"{'METRIC':<{width}}  {'TYPE':<13} {'VALUE':>12}  {'UNIT':<{unit_width}}  ATTRIBUTES\n"
    )
    for r in points:
        attrs = " ".join(f"{k}={v}" for k, v in r["attributes"].items())
        value = r["value"]
        if isinstance(value, dict):  # a histogram
            text = f"count={value['count']} sum={value['sum']:g}"
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        out.write(
            f"{r['name']:<{width}}  {r['type']:<13} {text:>12}  "
            f"{r['unit'] or '':<{unit_width}}  {attrs}\n"
        )
    if dropped:
        out.write(f"\ndropped ({len(dropped)}):\n")
        for r in dropped:
            d = r["dropped"]
            # The registry's drops (duplicate_series) come from no one record.
            record = "" if r.get("record") is None else f"record {r['record']}: "
            out.write(f"  {record}{r['name']}  {d['rule']}: {d['reason']}: {d['detail']}\n")
    counts = Counter(r["name"] for r in points)
    out.write("\nseries per metric (distinct attribute sets):\n")
    for instrument in plan.instruments:
        n = counts.get(instrument.name, 0)
        warn = "   <- high cardinality" if n > 100 else ""
        out.write(f"  {instrument.name:<{width}}  {n}{warn}\n")


# --- init ---------------------------------------------------------------------------------


def _prefix(text: str) -> str:
    if not PREFIX_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a letter, then letters, digits, '_', '.', '-' or '/' (e.g. ml.training)"
        )
    return text


def _init(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from translator.scaffold import ScaffoldError, scaffold

    try:
        mapping = scaffold(args.sample, prefix=args.prefix)
    except ScaffoldError as exc:
        stderr.write(f"ml-metrics-bridge init: {exc}\n")
        return EXIT_FAILED
    stdout.write(mapping)
    return EXIT_OK


# --- demo and simulate --------------------------------------------------------------------


def _demo(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from translator.simulate import run_simulator

    with tempfile.TemporaryDirectory(prefix="ml-metrics-bridge-demo-") as folder:
        path = os.path.join(folder, "current.json")
        environ = dict(os.environ)
        environ.update(METRICS_FILE_PATH=path, OTEL_METRICS_EXPORTER="console")
        environ.setdefault("COLLECTION_INTERVAL", str(args.interval_s))
        settings = load_settings(environ)
        settings = replace(settings, metrics_file_path=path)
        stdout.write(
            f"demo: a simulated training job writes {path} every {args.interval_s:g} s;\n"
            f"the bridge maps it with {settings.mapping_path}\n"
            "and prints each export below (Ctrl-C to stop).\n"
        )
        stdout.flush()
        stop = threading.Event()
        writer = threading.Thread(
            target=run_simulator,
            args=(path,),
            kwargs={"interval_s": args.interval_s, "stop": stop},
            daemon=True,
        )
        writer.start()
        try:
            return _run_bridge(settings, stdout, stderr, once=False, duration_s=args.duration_s)
        finally:
            stop.set()
            writer.join(timeout=2)


def _simulate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from translator.simulate import run_until_signalled

    return run_until_signalled(
        args.output, interval_s=args.interval_s, count=args.count, atomic=args.atomic
    )
