"""The client side of the task API's log stream: Server-Sent Events as :class:`LogEvent`.

Apart from the task clients (``_async_client.py``, and ``client.py`` made from it,
which re-exports :class:`LogEvent`) because decoding the stream is its own small
protocol, independent of requests and retries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from .errors import APIError
from .models import TaskStatus

__all__ = ["LogEvent", "SSEDecoder"]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event of a followed log stream.

    ``kind`` is ``"log"`` (``line`` at ``offset``), ``"status"`` (the task's status
    changed to ``status``), ``"end"`` (the task is completed, failed or blocked;
    ``offset`` is the next offset) or ``"ping"`` (a keep-alive, so that consumers get
    a chance to check their own stop flags while the task is quiet). An ``error``
    event from the server raises :class:`APIError` (503).
    """

    kind: Literal["log", "status", "end", "ping"]
    line: str = ""
    offset: int = 0
    status: TaskStatus | None = None


class SSEDecoder:
    """Lines of the server's Server-Sent Events in, :class:`LogEvent` s out: one
    decoder per stream, fed each line as it arrives (by a sync or an async reader)."""

    def __init__(self) -> None:
        self._kind = ""
        self._data: list[str] = []

    def feed(self, line: str) -> LogEvent | None:
        """The event that ``line`` completes, if any."""
        if line.startswith(":"):
            return LogEvent("ping")
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self._kind = value
            elif field == "data":
                self._data.append(value)
            return None
        kind, data = self._kind, self._data
        self._kind, self._data = "", []
        return _decode_event(kind, "\n".join(data)) if data else None


def _decode_event(kind: str, data: str) -> LogEvent | None:
    try:
        payload = json.loads(data)
        if kind == "log":
            return LogEvent("log", line=str(payload["line"]), offset=int(payload["offset"]))
        if kind == "error":  # the server's store failed mid-stream; it closes the stream
            message = str(payload.get("message", "log stream failed"))
            raise APIError(message, 503, data, from_response=True)
        if kind in {"status", "end"}:
            which: Literal["status", "end"] = "status" if kind == "status" else "end"
            offset = int(payload.get("next_offset", 0))
            return LogEvent(which, offset=offset, status=TaskStatus(payload["status"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise APIError(
            f"malformed log event {kind!r}: {data!r}", 200, data, from_response=True
        ) from exc
    return None  # an event kind from a newer server: skip it
