"""``/healthz`` and ``/readyz`` for Kubernetes probes, on HEALTH_PORT (off unless set).

``/healthz``: the process answers and its reading loop went round recently.
``/readyz``: a mapping is loaded and the last export succeeded (or none was tried yet).
Each answers a small JSON body saying why. This module only reads the bridge's state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HealthServer:
    def __init__(
        self, port: int, check: Callable[[], dict[str, Any]], host: str = "0.0.0.0"
    ) -> None:
        state = check

        class Handler(BaseHTTPRequestHandler):
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

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
