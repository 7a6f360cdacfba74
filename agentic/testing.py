"""Public fakes for users' own tests (and ours)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .stores.base import TaskStore

__all__ = ["FakeClock", "Delivery", "running_server", "webhook_receiver"]


class FakeClock:
    """A clock tests move by hand: call it for epoch seconds, ``advance`` to move it.

    Pass it as ``clock=`` to a memory or SQLite store (or a Redis store in tests) so
    period rollover, reservation expiry and reaping happen without sleeping.
    """

    def __init__(self, start: float | datetime = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)) -> None:
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float | datetime) -> None:
        """Jump to an absolute time."""
        with self._lock:
            self._now = when.timestamp() if isinstance(when, datetime) else float(when)


@contextmanager
def running_server(store: TaskStore, **app_options: Any) -> Iterator[str]:
    """Serve ``create_app(store, **app_options)`` on a free loopback port in a thread.

    Yields the base URL; the server stops when the block exits. The socket is bound
    before the server starts, so there is no window in which another process can take
    the port.
    """
    import uvicorn

    from .server import create_app

    # IPPROTO_TCP explicitly: asyncio enables TCP_NODELAY only then (else ~40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(store, **app_options), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass(frozen=True)
class Delivery:
    """One request a :func:`webhook_receiver` got: its headers (lower-case names) and
    raw body, as :func:`agentic.webhook.verify` takes them."""

    headers: dict[str, str]
    body: bytes


@contextmanager
def webhook_receiver(status: int = 204) -> Iterator[tuple[str, list[Delivery]]]:
    """An HTTP server on a free loopback port that answers every POST with ``status``.

    Yields its URL and the list it appends each :class:`Delivery` to (in arrival
    order); the server stops when the block exits.
    """
    received: list[Delivery] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            received.append(Delivery(headers, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: what arrived is in the list, not in an access log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", received
    finally:
        server.shutdown()
        server.server_close()
