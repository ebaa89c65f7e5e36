"""``python3 bench/first_metrics.py [--runs N] [--ref REF]``: `make demo`'s time to first metrics.

What a new user sees: a fresh clone of REF (default HEAD) in a temporary folder, ``make demo``
run in a pseudo-terminal (so every program buffers its output as on a screen), and the time
from starting ``make`` to the first metric line the demo prints (``  ml.training.NAME{...}
VALUE``), read as the bytes arrive. The venv, the install and the bridge's start-up all
count; nothing is warmed up beforehand except what the machine already has (pip's cache).
Each run gets its own clone, and the load average at its start is printed beside it:
other programs running meanwhile change the figure a lot. Standard library only, so it runs
before any install; it never writes into this working tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
METRIC_LINE = re.compile(rb"^\s+ml\.training\.[\w.]+\{[^}]*\} \S", re.MULTILINE)
#: Give up on a run after this long without a metric line.
LIMIT_S = 300.0


def first_metrics_s(folder: Path) -> float | None:
    """Seconds from starting `make demo` in `folder` to its first metric line (None: none)."""
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # the child: make, in the pty's own session
        os.chdir(folder)
        os.execvp("make", ["make", "demo"])
    seen = b""
    try:
        while time.monotonic() - started < LIMIT_S:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the pty closed: make exited
                return None
            if not chunk:
                return None
            seen = seen[-4096:] + chunk
            if METRIC_LINE.search(seen):
                return time.monotonic() - started
        return None
    finally:
        with_children_stopped(pid)
        os.close(fd)


def with_children_stopped(pid: int) -> None:
    """Stop make and the demo under it (one session, led by `pid`), then reap make."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.05)  # polling an exit: there is no event to wait on without a thread
    with contextlib.suppress(ChildProcessError):  # reaped in the loop above
        os.waitpid(pid, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ref", default="HEAD", help="the commit to clone (default: HEAD)")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{args.ref}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    print(f"make demo on fresh clones of {commit[:12]}", flush=True)
    failed = False
    for run in range(1, args.runs + 1):
        folder = Path(tempfile.mkdtemp(prefix="first-metrics-"))
        try:
            clone = folder / "repo"
            subprocess.run(
                ["git", "clone", "--quiet", "--no-checkout", str(REPO_ROOT), str(clone)],
                check=True,
            )
            subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", commit], check=True)
            load = os.getloadavg()[0]
            seconds = first_metrics_s(clone)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        shown = "no metric line" if seconds is None else f"{seconds:.1f} s"
        print(f"run {run}: first metrics after {shown} (load average {load:.2f})", flush=True)
        failed |= seconds is None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
