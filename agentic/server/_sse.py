"""Server-Sent Events of a task's log: lines and status changes until the task ends.

Events (``data`` is JSON)::

    event: status   {"status": "in_progress"}          when the status changes
    id: 8
    event: log      {"offset": 7, "line": "..."}       each line; id = next offset
    event: end      {"status": "failed", "next_offset": 8}   then the stream closes
    event: error    {"message": "..."}                 the store failed; stream closes
    : keep-alive                                       while nothing happens

The store has no change notifications, so the stream polls it. Each pass reads the
task's status *before* draining the log, so when a final status is seen every line
appended before the task finished has been sent before ``end``. The first event is the
status; a later change is sent after the lines drained with it, so a follower shows
the work, then "completed".
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio

from ..errors import AgenticError
from ..models import TaskStatus
from ..stores.base import TaskStore
from ._calls import StoreCalls

__all__ = ["FINISHED", "follow_log"]

log = logging.getLogger(__name__)

#: statuses that end a followed log (go-agentic stopped on completed and blocked only)
FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.BLOCKED})
_PAGE = 500


def _event(kind: str, payload: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(payload)}\n\n"


async def follow_log(
    store: TaskStore,
    calls: StoreCalls,
    task_id: str,
    offset: int,
    poll_interval: float,
    keepalive: float = 10.0,
) -> AsyncIterator[str]:
    """Yield SSE text for ``task_id`` from ``offset`` until the task is finished."""
    last_status: TaskStatus | None = None
    quiet = 0.0
    try:
        while True:
            task = await calls(store.get, task_id)
            if last_status is None:  # where the task stands, before anything else
                last_status = task.status
                yield _event("status", {"status": str(task.status)})
            while True:
                page = await calls(store.logs, task_id, offset, _PAGE)
                for index, line in enumerate(page.lines, start=offset):
                    yield _event("log", {"offset": index, "line": line}, index + 1)
                offset = page.next_offset
                if page.lines:
                    quiet = 0.0
                if len(page.lines) < _PAGE:
                    break
            # Told after the lines drained with it, so a follower shows them first.
            if task.status != last_status:
                last_status = task.status
                yield _event("status", {"status": str(task.status)})
                quiet = 0.0
            if last_status in FINISHED:
                yield _event("end", {"status": str(last_status), "next_offset": offset})
                return
            await anyio.sleep(poll_interval)
            quiet += poll_interval
            if quiet >= keepalive:
                yield ": keep-alive\n\n"
                quiet = 0.0
    except AgenticError as exc:
        # The status line is long gone; tell the client in-band and close, so it can
        # resume from its last offset or fall back to polling.
        log.warning("log stream of task %s stopped: %s", task_id, exc)
        yield _event("error", {"message": str(exc)})
