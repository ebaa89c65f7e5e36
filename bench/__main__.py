"""``python -m bench [--smoke] [--long] [--cases a,b,...] [--output PATH]``.

Copies the code under test (see :mod:`bench.snapshot`), runs every case on that copy,
prints the results table and writes it (with the machine and per-case details) to
``bench/results.md``; ``--smoke`` writes ``bench/out/results-smoke.md`` instead, so a CI
run never overwrites measured results. The exit status is 1 when a case failed to run; a
target that is not met is a result, not a failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench import snapshot
from bench.modes import DEFAULT, LONG, SMOKE, Mode
from bench.processes import REPO_ROOT
from bench.report import CaseResult, code_hash, machine, results_markdown, table, tree_changed_note

CaseRunner = Callable[[Mode, Path], list[CaseResult]]

#: In order; a and b share one backlog and one run. Modules are imported only once the
#: snapshot is taken: they import ``translator``, which must come from the snapshot.
_CASES: dict[str, tuple[str, str]] = {
    "ab": ("a, b: throughput", "bench.case_throughput"),
    "c": ("c: poll cost", "bench.case_poll"),
    "d": ("d: memory soak", "bench.case_memory"),
    "e": ("e: latency", "bench.case_latency"),
    "f": ("f: start-up", "bench.case_startup"),
}


def _selected(raw: str | None) -> list[str]:
    if raw is None:
        return list(_CASES)
    wanted = {c.strip().lower() for c in raw.split(",") if c.strip()}
    chosen = [key for key in _CASES if wanted & set(key)]
    unknown = wanted - set("abcdef")
    if unknown or not chosen:
        raise SystemExit(f"--cases: use letters a-f, e.g. --cases a,c (got {raw!r})")
    return chosen


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # Unwinds every `with` block, so children and servers are stopped on the way out:
    # they run in their own sessions and would outlive a bench killed by SIGTERM.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (< 30 s), every case runs, no target is judged")
    parser.add_argument("--long", action="store_true", help="the memory soak lasts 10 minutes")
    parser.add_argument("--cases", help="only these cases, e.g. a,c,f (a and b run together)")
    parser.add_argument("--output", type=Path, help="where the results go (markdown)")
    args = parser.parse_args(argv)
    if args.smoke and args.long:
        parser.error("--smoke and --long exclude each other")
    mode = SMOKE if args.smoke else LONG if args.long else DEFAULT
    output = args.output or (
        REPO_ROOT / "bench" / "out" / "results-smoke.md" if args.smoke
        else REPO_ROOT / "bench" / "results.md"
    )
    cases = _selected(args.cases)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)

    started = time.monotonic()
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="ml-metrics-bridge-bench-") as folder:
        work = Path(folder)
        snapshot.take(work / "code")
        machine_at_start = machine()
        measured_hash = code_hash()
        for key in cases:
            label, module = _CASES[key]
            runner: CaseRunner = importlib.import_module(module).run
            print(f"[{time.monotonic() - started:6.1f} s] {label} ...", file=sys.stderr, flush=True)
            case_dir = work / key
            case_dir.mkdir()
            load_before = os.getloadavg()[0]
            case_started = time.monotonic()
            try:
                found = runner(mode, case_dir)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(exc)).strip()
                traceback.print_exc()
                found = [CaseResult(label, error=detail.replace("\n", " ")[:2000])]
            # Other programs running meanwhile skew wall times (CPU times much less): say so.
            if found[-1].details and found[-1].details[-1].startswith("|"):
                found[-1].details.append("")
            found[-1].details.append(
                f"- Took {time.monotonic() - case_started:.0f} s; load average (1 min) "
                f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on "
                f"{os.cpu_count()} cores."
            )
            results += found
    elapsed = time.monotonic() - started

    rows = [row for result in results for row in result.rows]
    print()
    print(table(rows, judged=mode.judged))
    for failed in (r for r in results if r.error):
        print(f"\nFAILED {failed.name}: {failed.error}")
    note = tree_changed_note(measured_hash)
    if note:
        print(f"\n{note}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(results_markdown(
        mode.name, elapsed, results, judged=mode.judged, machine_at_start=machine_at_start,
        note=note,
    ))
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; written to {output}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
