"""The real Rust collector rotel (PyPI `rotel`) as a child process, for end-to-end tests.

bridge -> rotel -> `OtlpReceiver` proves that what the bridge sends is accepted and passed
on by an actual collector, not only by our own decoder. The debug variant (`--exporter
blackhole --debug-log metrics`) prints every received metric on stdout instead.

It must never leave a collector running: `stop()` terminates, then kills after a timeout,
and every start failure carries the collector's output.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from .otlp_receiver import OtlpReceiver, TransportProtocol
from .process import ChildProcess, free_port

__all__ = ["RotelCollector", "rotel_agent_path"]

_HOST: Final = "127.0.0.1"
_START_ATTEMPTS: Final = 3  # a port handed out by free_port() can be taken meanwhile
_ADDRESS_IN_USE: Final = re.compile(r"address already in use|addrinuse|os error 98", re.I)


def rotel_agent_path() -> Path:
    """The `rotel-agent` binary shipped inside the installed `rotel` wheel."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `rotel` package is not installed (pip install rotel)")
    for location in spec.submodule_search_locations:
        binary = Path(location) / "rotel-agent"
        if binary.is_file():
            return binary
    raise RuntimeError(f"no rotel-agent binary in {list(spec.submodule_search_locations)}")


class RotelCollector:
    """One rotel agent listening for OTLP on 127.0.0.1 (gRPC and HTTP ports).

    `batch_timeout_ms` sets how long rotel holds data before exporting (its default, 200 ms,
    adds that much latency to every test); None passes `--disable-batching`. The retry
    backoffs are shortened from rotel's 5 s / 30 s so a downstream restart is seen quickly.
    Ports chosen at the first `start()` are kept, so a stopped collector can come back at
    the same address.
    """

    def __init__(
        self,
        *,
        exporter: Literal["otlp", "blackhole"] = "otlp",
        exporter_endpoint: str | None = None,
        exporter_protocol: TransportProtocol = "grpc",
        debug_log: bool = False,
        batch_timeout_ms: int | None = 10,
        retry_initial_backoff_ms: int = 50,
        retry_max_backoff_ms: int = 500,
        grpc_port: int = 0,
        http_port: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if exporter == "otlp" and exporter_endpoint is None:
            raise ValueError("the otlp exporter needs exporter_endpoint")
        self.exporter: Final = exporter
        self.exporter_endpoint: Final = exporter_endpoint
        self.exporter_protocol: Final = exporter_protocol
        self.debug_log: Final = debug_log
        self.batch_timeout_ms: Final = batch_timeout_ms
        self.retry_initial_backoff_ms: Final = retry_initial_backoff_ms
        self.retry_max_backoff_ms: Final = retry_max_backoff_ms
        self.extra_args: Final = tuple(extra_args)
        self.downstream: OtlpReceiver | None = None
        self._requested_ports = (grpc_port, http_port)
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._ports_fixed = bool(grpc_port and http_port)
        self._process: ChildProcess | None = None
        self._past_runs: list[ChildProcess] = []

    @classmethod
    def forwarding_to(cls, receiver: OtlpReceiver, **options: object) -> RotelCollector:
        """A collector exporting over OTLP to `receiver`, in the receiver's protocol."""
        collector = cls(
            exporter="otlp",
            exporter_endpoint=receiver.endpoint,
            exporter_protocol=receiver.protocol,
            **options,  # type: ignore[arg-type]  # keyword options of __init__
        )
        collector.downstream = receiver
        return collector

    @classmethod
    def debug(cls, **options: object) -> RotelCollector:
        """A collector that drops everything but prints each metric in detail on stdout."""
        return cls(exporter="blackhole", debug_log=True, **options)  # type: ignore[arg-type]

    # -- addresses ---------------------------------------------------------------------

    @property
    def grpc_address(self) -> str:
        return f"{_HOST}:{self._require_port(self._grpc_port)}"

    @property
    def http_address(self) -> str:
        return f"{_HOST}:{self._require_port(self._http_port)}"

    @property
    def grpc_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`: the OTLP/gRPC endpoint to export to."""
        return f"http://{self.grpc_address}"

    @property
    def http_endpoint(self) -> str:
        """`http://127.0.0.1:PORT`: the OTLP/HTTP base endpoint (append /v1/metrics)."""
        return f"http://{self.http_address}"

    def endpoint(self, protocol: TransportProtocol) -> str:
        return self.grpc_endpoint if protocol == "grpc" else self.http_endpoint

    def argv(self) -> list[str]:
        """The full rotel-agent command line for the current ports."""
        args = [
            str(rotel_agent_path()),
            "start",
            "--otlp-grpc-endpoint", self.grpc_address,
            "--otlp-http-endpoint", self.http_address,
            "--exporter", self.exporter,
        ]  # fmt: skip
        if self.exporter == "otlp":
            assert self.exporter_endpoint is not None
            args += [
                "--otlp-exporter-endpoint", self.exporter_endpoint,
                "--otlp-exporter-protocol", self.exporter_protocol,
                "--otlp-exporter-retry-initial-backoff", f"{self.retry_initial_backoff_ms}ms",
                "--otlp-exporter-retry-max-backoff", f"{self.retry_max_backoff_ms}ms",
            ]  # fmt: skip
        if self.batch_timeout_ms is None:
            args.append("--disable-batching")
        else:
            args += ["--batch-timeout", f"{self.batch_timeout_ms}ms"]
        if self.debug_log:
            args += ["--debug-log", "metrics", "--debug-log-verbosity", "detailed"]
        return [*args, *self.extra_args]

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def process(self) -> ChildProcess:
        """The current (or last) rotel process."""
        if self._process is None:
            raise RuntimeError("rotel was not started")
        return self._process

    def start(self, timeout_s: float = 10.0) -> RotelCollector:
        """Start rotel and wait until both OTLP ports accept connections."""
        if self.running:
            raise RuntimeError("rotel is already running")
        if self._process is not None:
            self._past_runs.append(self._process)  # its output stays in describe()
        for attempt in range(1, _START_ATTEMPTS + 1):
            if not self._ports_fixed:
                self._grpc_port = self._grpc_port or free_port()
                self._http_port = self._http_port or free_port()
            process = ChildProcess(
                self.argv(),
                # NO_COLOR keeps ANSI escapes out of the log; ROTEL_* variables could add
                # settings that the command line does not show.
                env={"NO_COLOR": "1"},
                name="rotel",
                drop_env_prefixes=("OTEL_", "ROTEL_"),
            )
            self._process = process.start()
            try:
                self._wait_until_listening(process, timeout_s)
                return self
            except _PortTaken:
                process.close()
                if self._ports_fixed or attempt == _START_ATTEMPTS:
                    raise AssertionError(
                        f"rotel could not bind its ports\n{process.describe()}"
                    ) from None
                self._past_runs.append(process)
                self._grpc_port, self._http_port = self._requested_ports
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns rotel's exit code. Idempotent.

        The ports are kept, so `start()` brings the collector back at the same address.
        """
        process = self._process
        if process is None:
            return None
        try:
            if process.running:
                return process.terminate_and_wait(timeout_s)
            return process.wait(timeout_s)
        finally:
            process.close()
            self._ports_fixed = True

    def __enter__(self) -> RotelCollector:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- output ------------------------------------------------------------------------

    @property
    def output(self) -> str:
        """Everything the current (or last) run printed; debug metrics go to stdout."""
        return self.process.output

    def wait_for_output(
        self, pattern: str | re.Pattern[str], timeout_s: float = 10.0, *, start: int = 0
    ) -> re.Match[str]:
        return self.process.wait_for_log(pattern, timeout_s, start=start)

    def describe(self) -> str:
        if self._process is None:
            return "rotel: not started"
        earlier = [f"(earlier run)\n{p.describe()}" for p in self._past_runs]
        return "\n".join([*earlier, self._process.describe()])

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _require_port(port: int) -> int:
        if port == 0:
            raise RuntimeError("ports are chosen at the first start(); start rotel first")
        return port

    def _wait_until_listening(self, process: ChildProcess, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [self._grpc_port, self._http_port]
        while pending and process.running:
            if time.monotonic() >= deadline:
                process.close()
                raise AssertionError(
                    f"rotel did not listen on {pending} within {timeout_s:g}s\n{process.describe()}"
                )
            try:
                with socket.create_connection((_HOST, pending[0]), timeout=0.2):
                    pending.pop(0)
            except OSError:
                time.sleep(0.01)  # poll interval of the readiness condition, not a guess
        # Checked after the ports answer too: a port taken by another program answers
        # while rotel is busy exiting with "unable to bind".
        if not process.running or _ADDRESS_IN_USE.search(process.output):
            process.close()
            process.wait(timeout_s=1.0)  # drain the output before reading it
            if _ADDRESS_IN_USE.search(process.output):
                raise _PortTaken
            raise AssertionError(f"rotel exited during startup\n{process.describe()}")


class _PortTaken(Exception):
    pass
