"""``/healthz`` and ``/readyz`` for Kubernetes probes, on HEALTH_PORT (off unless set).

``/healthz``: the process answers and its reading loop went round recently.
``/readyz``: a mapping is loaded and the last export succeeded (or none was tried yet).
Each answers a small JSON body saying why. This module only reads the bridge's state.

Whoever can reach the port may connect: a connection that sends nothing is closed after
``READ_TIMEOUT_S``, one that trickles its request a byte at a time is closed
``CONNECTION_DEADLINE_S`` after it arrived, at most ``MAX_CONNECTIONS`` are served at once
(more are closed on arrival, before a thread or a read), and a client that disconnects
early is not an error worth a traceback. So idle or slow clients cannot take the process's
threads or file descriptors, and one slow client holds a slot 10 s at most. Clients that
reconnect as fast as they are hung up on can still keep every slot, and so the probes,
out: nothing but the kubelet should reach the port (the shipped NetworkPolicy lets no
other pod in).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_log = logging.getLogger(__name__)

#: A probe sends its request at once; an idle connection is closed after this long.
READ_TIMEOUT_S = 5.0
#: Connections served at the same time; probes come one at a time, every few seconds.
MAX_CONNECTIONS = 8
#: However it trickles in, a connection is closed this long after it arrived.
CONNECTION_DEADLINE_S = 10.0


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if ":" in address[0]:  # an IPv6 address ('::' for all): an IPv6-only cluster's pod IP
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: close it now rather than queue a thread
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # The read timeout bounds each wait, not a request sent a byte every few seconds.
        deadline = threading.Timer(CONNECTION_DEADLINE_S, _hang_up, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away (reset, broken pipe, timeout): nothing to report
        _log.error("health endpoint: unexpected error (a bug: please report it)", exc_info=True)


def _hang_up(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the handler
        connection.shutdown(socket.SHUT_RDWR)


class HealthServer:
    def __init__(
        self, port: int, check: Callable[[], dict[str, Any]], host: str = "0.0.0.0"
    ) -> None:
        state = check

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # applied to the socket: every read is bounded

            def do_GET(self) -> None:
                if self.path not in ("/healthz", "/readyz"):
                    self._answer(404, {"error": "try /healthz or /readyz"})
                    return
                report = state()
                ok = report["alive"] if self.path == "/healthz" else report["ready"]
                self._answer(200 if ok else 503, report)

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the log

        self._server = _BoundedServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = str(self._server.server_address[0]), self.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


__all__ = ["CONNECTION_DEADLINE_S", "MAX_CONNECTIONS", "READ_TIMEOUT_S", "HealthServer"]
