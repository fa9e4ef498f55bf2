"""The HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while every queue loop is alive and polled recently (restart me
otherwise); ``/readyz`` answers 200 when every queue has its assignment, its dedup store is
restored, the broker is reachable and the schema registry answers (send me traffic). Both
answer 503 otherwise, with a JSON body saying what is wrong.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Check", "HealthServer"]

Check = Callable[[], dict[str, str]]
"""Returns the problems found, by component; empty when all is well."""


class HealthServer:
    """Serves the endpoints on ``host:port`` from a daemon thread (port 0 picks a free one)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, healthy: Check, ready: Check
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _verdict(healthy()),
            "/readyz": lambda: _verdict(ready()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, kind, body = route() if route else (404, "text/plain", b"not found\n")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes every few seconds are not news: no access log."""

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def _verdict(problems: dict[str, str]) -> tuple[int, str, bytes]:
    body = {"status": "ok" if not problems else "unavailable", "problems": problems}
    return (200 if not problems else 503), "application/json", json.dumps(body).encode() + b"\n"
