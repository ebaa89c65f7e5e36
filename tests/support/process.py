"""Child processes for integration tests: the bridge (and the collector) as real programs.

A `ChildProcess` runs a command in its own session with a scrubbed environment, drains its
stdout and stderr on reader threads (so a chatty child never blocks on a full pipe), and
lets a test wait for a log line, signal it, and collect its exit code, each with a timeout.
Failures carry the captured output. Whatever is still running at `close()` is killed: a test
must never leave a process behind, and must never sleep hoping the child is ready.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Literal

__all__ = [
    "BridgeProcess",
    "ChildProcess",
    "Stream",
    "bridge_command",
    "clean_env",
    "free_port",
]

Stream = Literal["output", "stdout", "stderr"]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
_SHOWN_CHARS: Final = 20_000  # of each stream, in failure messages
_READER_JOIN_S: Final = 5.0

_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago and was not handed out before in this run.

    The port is released before returning, so another program may still take it; callers
    that bind it in a child process should treat "address in use" as a reason to retry.
    """
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((host, 0))
                port: int = probe.getsockname()[1]
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port


def clean_env(
    overrides: Mapping[str, str] | None = None,
    *,
    drop_prefixes: Sequence[str] = ("OTEL_",),
) -> dict[str, str]:
    """A copy of os.environ without variables starting with `drop_prefixes`, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}
    env.update(overrides or {})
    return env


def bridge_command(*args: str) -> list[str]:
    """The command that runs the bridge from this working tree: `python -m translator ARGS`."""
    return [sys.executable, "-m", "translator", *args]


class ChildProcess:
    """One real child process whose output is captured while it runs.

    The environment is os.environ minus `drop_env_prefixes`, then `env` on top. The child
    gets its own session so `close()` can kill anything it spawned as well. Exit codes
    follow subprocess: a child ended by signal N reports -N.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        drop_env_prefixes: Sequence[str] = ("OTEL_",),
    ) -> None:
        self.argv: Final[list[str]] = [os.fspath(a) for a in argv]
        self.env: Final[dict[str, str]] = clean_env(env, drop_prefixes=drop_env_prefixes)
        self.cwd: Final = cwd
        self.name: Final = name or Path(self.argv[0]).name
        self._popen: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._combined: list[str] = []
        self._combined_text = ""  # "".join(self._combined[: self._combined_joined])
        self._combined_joined = 0
        self._open_streams = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ChildProcess:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started; make a new ChildProcess")
        self._popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._popen.stdout is not None and self._popen.stderr is not None
        self._open_streams = 2
        for stream, pipe, sink in (
            ("stdout", self._popen.stdout, self._stdout),
            ("stderr", self._popen.stderr, self._stderr),
        ):
            reader = threading.Thread(
                target=self._drain,
                args=(pipe, sink),
                name=f"{self.name}-{stream}-reader",
                daemon=True,
            )
            reader.start()
            self._readers.append(reader)
        return self

    def close(self) -> None:
        """Kill the child and its session if still running, reap it, join the readers."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            # The leader is not reaped yet, so its process group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
        self._join_readers()

    def __enter__(self) -> ChildProcess:
        return self if self._popen is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._popen is not None

    @property
    def pid(self) -> int:
        return self._require_popen().pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while the child runs."""
        return self._require_popen().poll()

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    # -- output ------------------------------------------------------------------------

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    @property
    def output(self) -> str:
        """stdout and stderr interleaved line by line in the order they were read.

        Each stream keeps its own order, but the two are read by separate threads: a line
        printed on stdout before one on stderr may appear after it. Wait on the stream that
        carries the line you need.
        """
        with self._cond:
            return self._text("output")

    def mark(self) -> int:
        """The current length of `output`; pass it as `start` to wait for newer lines only."""
        with self._cond:
            return len(self._text("output"))

    def wait_for_log(
        self,
        pattern: str | re.Pattern[str],
        timeout_s: float = 10.0,
        *,
        start: int = 0,
        stream: Stream = "output",
    ) -> re.Match[str]:
        """Wait until `pattern` (MULTILINE) matches the captured text from offset `start`.

        Fails at once, not at the timeout, if the child exits without printing it. The match
        positions index the whole stream, so `match.end()` is a good next `start`.
        """
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        self._require_popen()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                text = self._text(stream)
                match = regex.search(text, start)
                if match is not None:
                    return match
                if self._open_streams == 0:
                    problem = "closed its output without printing it"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    problem = f"not printed within {timeout_s:g}s"
                    break
                self._cond.wait(remaining)
        if problem.startswith("closed"):
            # Both pipes hit EOF: normally the child is exiting; let it finish so the
            # message shows its exit code.
            try:
                self._require_popen().wait(1.0)
                problem = "exited without printing it"
            except subprocess.TimeoutExpired:
                pass
        raise AssertionError(
            f"{self.name}: /{regex.pattern}/ in {stream} {problem}\n{self.describe()}"
        )

    # -- control -----------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the child itself (not to its session)."""
        popen = self._require_popen()
        if popen.poll() is not None:
            raise AssertionError(
                f"{self.name} already exited; cannot send {signal.Signals(sig).name}\n"
                f"{self.describe()}"
            )
        popen.send_signal(sig)

    def thread_ids(self) -> list[int]:
        """The child's threads (Linux: /proc/PID/task), the main thread (tid == pid) first."""
        pid = self.pid
        others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        return [pid, *others]

    def send_signal_to_thread(self, tid: int, sig: int) -> None:
        """Send `sig` to one thread of the child (tgkill): the signal is caught in that
        thread, as the kernel may do with a signal sent to the process."""
        pid = self._require_popen().pid
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.tgkill(pid, tid, sig) != 0:
            error = ctypes.get_errno()
            raise AssertionError(
                f"{self.name}: tgkill({pid}, {tid}, {signal.Signals(sig).name}): "
                f"{os.strerror(error)}\n{self.describe()}"
            )

    def wait(self, timeout_s: float = 10.0) -> int:
        """Wait for the child to exit and its output to be drained; return its exit code."""
        popen = self._require_popen()
        try:
            code = popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout_s:g}s\n{self.describe()}"
            ) from None
        self._join_readers()
        return code

    def terminate_and_wait(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then wait; a child that ignores it is killed and the test fails."""
        popen = self._require_popen()
        if popen.poll() is None:
            popen.terminate()
        try:
            return self.wait(timeout_s)
        except AssertionError as error:
            self.close()
            raise AssertionError(f"{error}\n(killed after ignoring SIGTERM)") from None

    def describe(self, max_chars: int = _SHOWN_CHARS) -> str:
        """Command, state and the tail of both streams, for failure messages."""
        if self._popen is None:
            return f"{self.name}: not started; argv={self.argv!r}"
        code = self._popen.poll()
        state = "running" if code is None else f"exited with {code}"
        return (
            f"{self.name} (pid {self._popen.pid}, {state}); argv={self.argv!r}\n"
            f"--- {self.name} stdout ---\n{_tail(self.stdout, max_chars)}\n"
            f"--- {self.name} stderr ---\n{_tail(self.stderr, max_chars)}\n"
            f"--- end of {self.name} output ---"
        )

    # -- internals ---------------------------------------------------------------------

    def _require_popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._popen

    def _text(self, stream: Stream) -> str:
        if stream == "output":
            # Joined lazily: the reader threads only append, so draining stays linear.
            if self._combined_joined < len(self._combined):
                fresh = self._combined[self._combined_joined :]
                self._combined_text += "".join(fresh)
                self._combined_joined += len(fresh)
            return self._combined_text
        return "".join(self._stdout if stream == "stdout" else self._stderr)

    def _drain(self, pipe: IO[bytes], sink: list[str]) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                with self._cond:
                    sink.append(line)
                    self._combined.append(line)
                    self._cond.notify_all()
        finally:
            pipe.close()
            with self._cond:
                self._open_streams -= 1
                self._cond.notify_all()

    def _join_readers(self) -> None:
        # A grandchild that inherited the pipes can keep them open; do not hang on it.
        for reader in self._readers:
            reader.join(_READER_JOIN_S)


class BridgeProcess(ChildProcess):
    """The bridge as a real process; see `bridge_command` for the usual argv.

    Python children get unbuffered output (log lines arrive as they are written) and this
    working tree first on PYTHONPATH, unless `env` says otherwise.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str = "bridge",
    ) -> None:
        inherited = os.environ.get("PYTHONPATH")
        python_path = os.pathsep.join(p for p in (str(REPO_ROOT), inherited) if p)
        defaults = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}
        super().__init__(argv, env={**defaults, **(env or {})}, cwd=cwd, name=name)

    def start(self) -> BridgeProcess:
        super().start()
        return self


def _tail(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text.rstrip("\n") or "(empty)"
    return f"[... {len(text) - max_chars} characters cut ...]\n{text[-max_chars:].rstrip()}"
