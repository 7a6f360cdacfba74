"""``stream_logs``: print a task's status changes and log lines (``agentic logs``).

Status lines keep go-agentic's format, ``[YYYY-MM-DD HH:MM:SS] Status: X`` (UTC),
but are written when the status changes rather than on every poll, stamped with when
the change happened (the claim's time for in progress, else the task's last update;
go-agentic stamped the time it looked); a failed task's
is followed by ``Reason: ...`` and a blocked one's by ``Blocked by: <task ids>``. The stream stops
when the task is completed, failed or blocked (go-agentic never stopped on failed:
its defect 17), or when ``stop`` is set.

With ``follow`` the server's Server-Sent Events are used; when they fail (an older
server, a proxy that buffers, a dropped connection) the function falls back to
polling from the last offset it printed, so no line is printed twice or lost.

Written to a terminal, log lines and failure reasons have their control characters
and escape sequences shown as escapes (colours are kept): a task's output must not
command the operator's terminal. A file or a pipe gets them as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from ._printable import is_terminal, printable
from .client import TaskClient
from .errors import APIError, NotFoundError
from .models import Task, TaskStatus
from .retry import doubled
from .stores.base import require_id

__all__ = ["FINISHED", "stream_logs"]

log = logging.getLogger(__name__)

#: statuses after which a task's log does not grow any more
FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.BLOCKED})


class Writer(Protocol):
    """Anything with ``write(str)``: a file, ``sys.stdout``, ``io.StringIO``."""

    def write(self, text: str, /) -> object: ...


def _stamp(task: Task | None = None) -> str:
    """When ``task`` got its status: the claim for in progress, else its last update
    (now, for a server that keeps neither, and without a task: an error's time)."""
    claimed = task.claimed_at if task and task.status == TaskStatus.IN_PROGRESS else None
    when = claimed or (task.updated_at if task else None) or datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _transient(exc: APIError) -> bool:
    # No answer, rate limited or a server-side failure: worth asking again.
    return exc.code in {0, 429} or exc.code >= 500


class _Printer:
    """What has been printed: the last status and the next log offset."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.status: TaskStatus | None = None
        self.offset = 0
        # To a terminal, what tasks wrote is shown with its control characters escaped.
        self.terminal = is_terminal(writer)

    def _shown(self, text: str, *, colours: bool = False) -> str:
        return printable(text, colours=colours) if self.terminal else text

    def show_status(self, status: TaskStatus | None, task: Task | Callable[[], Task]) -> None:
        """A changed status, stamped when it happened; a failed or blocked one says why
        (read from ``task``, or from what it returns when it is a function)."""
        if status is not None and status != self.status:
            # Read before the status counts as shown: should the read fail, the
            # polling that takes over prints this status (its line is not lost).
            known = task if isinstance(task, Task) else task()
            self.status = status
            # Read back after a later change, the task's times are that change's.
            stamp = _stamp(known if known.status == status else None)
            self.writer.write(f"[{stamp}] Status: {status}\n")
            if status is TaskStatus.FAILED:
                reason = self._shown(known.fail_reason or "not given")
                self.writer.write(f"[{stamp}] Reason: {reason}\n")
            elif status is TaskStatus.BLOCKED:
                blockers = ", ".join(known.blockers) or "a hold (no failed dependency)"
                self.writer.write(f"[{stamp}] Blocked by: {blockers}\n")

    def show_line(self, line: str, offset: int) -> None:
        # An offset below ours was printed already (a resumed stream may repeat).
        if offset >= self.offset:
            self.writer.write(self._shown(line, colours=True) + "\n")
            self.offset = offset + 1

    def drain(self, client: TaskClient, task_id: str) -> None:
        while True:
            page = client.get_logs(task_id, self.offset)
            for index, line in enumerate(page.lines, start=page.offset):
                self.show_line(line, index)
            if not page.lines:
                return

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def stream_logs(
    client: TaskClient,
    task_id: str,
    writer: Writer,
    follow: bool = True,
    poll_interval: float = 1.0,
    stop: threading.Event | None = None,
) -> TaskStatus | None:
    """Write the task's status and log lines to ``writer``; returns the last status seen.

    Without ``follow`` it prints what exists now and returns. :class:`NotFoundError`
    and other non-transient API errors are raised; transient ones while polling are
    printed as ``[...] Error: ...`` lines and polling goes on, as go-agentic did, but
    each cause is printed once (not at every poll of an outage), the polls of an
    outage back off (doubling, up to 10 intervals), and its end is said
    (``Reachable again after N failed tries``).
    """
    require_id("task_id", task_id)
    printer = _Printer(writer)
    first = client.get_task(task_id)
    printer.show_status(first.status, first)
    printer.drain(client, task_id)
    if not follow or printer.finished:
        return printer.status
    try:
        for event in client.follow_logs(task_id, printer.offset):
            if event.kind == "log":
                printer.show_line(event.line, event.offset)
            elif event.kind in ("status", "end"):
                printer.show_status(event.status, lambda: client.get_task(task_id))
            if event.kind == "end" or (stop is not None and stop.is_set()):
                return printer.status
    except NotFoundError:
        raise
    except APIError as exc:
        log.info("log stream of task %s failed (%s); polling instead", task_id, exc)
    return _poll(client, task_id, printer, poll_interval, stop)


#: the longest pause between polls while the task API keeps failing, in poll intervals
#: (an outage is not asked about every poll, and its end is seen within 10 intervals)
_MOST_POLLS = 10


def _poll(
    client: TaskClient,
    task_id: str,
    printer: _Printer,
    poll_interval: float,
    stop: threading.Event | None,
) -> TaskStatus | None:
    # Transient failures in a row, the error last printed, and whether the end of
    # the outage was said: it ends when a whole poll answers (the status read alone
    # answering while the log read fails is said once, not at every poll).
    failures, said, back = 0, "", False
    while stop is None or not stop.is_set():
        try:
            # Status first, then the log: once a final status is seen, every line
            # written before the task finished is printed before returning.
            current = client.get_task(task_id)
            if failures and not back:
                tries = "try" if failures == 1 else "tries"
                printer.writer.write(
                    f"[{_stamp()}] Reachable again after {failures} failed {tries}\n"
                )
                back = True
            printer.show_status(current.status, current)
            printer.drain(client, task_id)
            failures, said, back = 0, "", False
        except NotFoundError:
            raise
        except APIError as exc:
            if not _transient(exc):
                raise
            failures += 1
            if str(exc) != said:  # once per cause, not a line per poll of an outage
                said = str(exc)
                printer.writer.write(f"[{_stamp()}] Error: {exc} (asking again, less often)\n")
        else:
            if printer.finished:
                break
        if stop is not None:
            stop.wait(doubled(poll_interval, failures, _MOST_POLLS))
        else:
            time.sleep(doubled(poll_interval, failures, _MOST_POLLS))
    return printer.status
