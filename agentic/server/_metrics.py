"""Request accounting, body limits and browser refusals as one ASGI middleware, and
Prometheus text.

The exposition is written by hand (text format 0.0.4) so the server needs no
metrics dependency. Requests are labelled by route template (``/api/tasks/{task_id}``),
never by raw path: ids and fuzzed URLs must not create unbounded label sets.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._browsers import browser_refusal

__all__ = ["COUNTERS", "Guard", "Metrics"]

# name -> help text; every counter exists (as 0) from the start, so dashboards and
# alerts see the series before the first event.
COUNTERS = {
    "task_claims": "Tasks claimed.",
    "task_conflicts": "Answers 409: a claim lost or an action on a task in the wrong state.",
    "tasks_requeued": "Tasks whose lease expired, requeued or dead-lettered.",
    "task_retries": "Failed tasks retried by an operator (POST /api/tasks/{id}/retry).",
    "requeue_errors": "Background requeue passes that failed.",
    "store_errors": "Requests answered 503 because the store failed.",
    "notices_sent": "Change notices sent to the other servers of the store.",
    "notices_received": "Change notices received from the other servers of the store.",
    "notice_errors": "Change notices that could not be sent, received or read.",
    "rate_limit_errors": "Rate-limit checks the shared buckets failed (own buckets used).",
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters: endpoints run in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, int]] = Counter()
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))

    def request(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1

    def inc(self, name: str, amount: int = 1) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        with self._lock:
            self._counters[name] += amount

    def value(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def render(self) -> str:
        """The Prometheus text exposition of every counter."""
        with self._lock:
            requests = sorted(self._requests.items())
            counters = dict(self._counters)
        out = [
            "# HELP agentic_http_requests_total HTTP requests by method, route and status.",
            "# TYPE agentic_http_requests_total counter",
        ]
        for (method, route, status), count in requests:
            out.append(
                f'agentic_http_requests_total{{method="{_label(method)}",'
                f'route="{_label(route)}",status="{status}"}} {count}'
            )
        for name, help_text in COUNTERS.items():
            out += [
                f"# HELP agentic_{name}_total {help_text}",
                f"# TYPE agentic_{name}_total counter",
                f"agentic_{name}_total {counters[name]}",
            ]
        return "\n".join(out) + "\n"


class Guard:
    """Counts every answer by route and status, refuses bodies over the limit (413)
    and requests a web page made (403: :func:`browser_refusal`).

    A declared ``Content-Length`` over the limit is refused before the app runs; a
    body streamed without one is counted as it arrives and refused as soon as it
    passes the limit, so a client cannot make the server buffer more than that.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        trusted_hosts: Collection[str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.trusted_hosts = trusted_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app dies before answering
        limit = self.max_body_bytes

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        try:
            refusal = self._check_length(scope) or browser_refusal(
                scope["headers"], self.trusted_hosts
            )
            if refusal is not None:
                await _answer(counting_send, *refusal)
                return
            await self.app(scope, limited_receive, counting_send)
        finally:
            self.metrics.request(scope["method"], _route_of(scope), status)

    def _check_length(self, scope: Scope) -> tuple[int, str] | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return 400, "Content-Length is not a number"
                if length > self.max_body_bytes:
                    return 413, f"request body over {self.max_body_bytes} bytes"
        return None


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"code": status, "message": message, "details": None}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Requests refused before routing (413 on Content-Length) are matched here.
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(candidate.path)
    return "unmatched"
