"""Child processes for the benchmarks: measured one-shot runs and long-running sidecars.

Every child runs in its own session with a scrubbed environment and its output going to
files (a chatty child never blocks on a full pipe). Whatever is still running when its
owner leaves a ``with`` block is terminated, then killed, by process group: a benchmark
must never leave a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
_code_root = REPO_ROOT


def code_root() -> Path:
    """Where the code under test is: the working tree, or the run's snapshot of it."""
    return _code_root


def set_code_root(path: Path) -> None:
    global _code_root  # one run measures one copy; see bench.snapshot
    _code_root = path

#: Variables the bridge reads; a child gets only what a case sets explicitly.
_BRIDGE_VARIABLES = (
    "METRICS_FILE_PATH",
    "MAPPING_PATH",
    "COLLECTION_INTERVAL",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "HEALTH_PORT",
    "STATE_DIR",
)


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` without OTEL_* and the bridge's own variables, plus ``overrides``."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("OTEL_") and k not in _BRIDGE_VARIABLES
    }
    # The code under test, not whatever copy of the packages may be installed elsewhere.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_code_root), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(overrides or {})
    return env


def bridge_command(*args: str) -> list[str]:
    """``python -m translator ARGS``: the ``ml-metrics-bridge`` command of the code under test."""
    return [sys.executable, "-m", "translator", *args]


def module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished child: its wall time, its own CPU time (from wait4) and its output."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    exit_code: int
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def check(self, what: str) -> Measured:
        if self.exit_code != 0:
            raise RuntimeError(
                f"{what} exited with {self.exit_code}\n--- stderr (end) ---\n{self.stderr[-3000:]}"
            )
        return self


def run_measured(
    command: Sequence[str], env: Mapping[str, str], log_dir: Path, *, timeout_s: float
) -> Measured:
    """Run ``command`` to completion; CPU and peak RSS come from ``os.wait4`` on its pid.

    ``wait4`` reports exactly this child's resource use (``RUSAGE_CHILDREN`` would mix in
    every other child this process ever reaped).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = log_dir / f"run-{time.monotonic_ns()}"
    out_path, err_path = stem.with_suffix(".out"), stem.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(command), env=dict(env), cwd=_code_root, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        timer = threading.Timer(timeout_s, _kill_group, args=(proc.pid,))
        timer.daemon = True
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall_s = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4: tell Popen, so it never waits on the pid again
    return Measured(
        wall_s=wall_s,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,
        exit_code=code,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Sidecar:
    """A long-running child (the bridge or the baseline sidecar), stopped on exit.

    ``stop`` sends SIGTERM to the child's process group, waits ``grace_s``, then kills the
    group. Nothing is signalled once the child has been reaped (its id may be reused).
    """

    def __init__(
        self, command: Sequence[str], env: Mapping[str, str], log_dir: Path, name: str
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at_s = 0.0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._proc.pid

    def start(self) -> Sidecar:
        with open(self.log_path, "ab") as log:
            self.started_at_s = time.monotonic()
            self._proc = subprocess.Popen(
                self.command, env=self.env, cwd=_code_root, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_alive(self) -> None:
        if not self.alive():
            code = None if self._proc is None else self._proc.returncode
            raise RuntimeError(f"{self.name} exited ({code}); log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
        return proc.returncode

    def __enter__(self) -> Sidecar:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS from /proc/PID/status), in KiB."""
    return _status_field(pid, "VmRSS:")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size of ``pid`` so far (VmHWM), in KiB."""
    return _status_field(pid, "VmHWM:")


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")
