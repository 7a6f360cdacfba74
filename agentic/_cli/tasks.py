"""``agentic submit``, ``cancel``, ``retry``, ``logs`` and ``tasks``: tasks through the
task API."""

from __future__ import annotations

import heapq
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.text import Text

from .._printable import printable
from ..client import TaskClient
from ..config import Config
from ..errors import AgenticError, ConflictError, NotFoundError, TransportError
from ..logs import FINISHED, stream_logs
from ..models import Priority, Task, TaskStatus, TaskUpdate
from ..stores._tasks import order_key
from ..submit import submit_task
from ._common import (
    ConfigOption,
    JsonOption,
    client,
    config,
    handled,
    interrupt_exits,
    one_of,
    print_json,
    stdout,
    warn,
)
from ._tables import Col, FittedTable

# How often ``logs --json -f`` asks for news: interactive, yet cheap for the server.
_JSON_POLL = 0.5


@handled
def submit(
    title: Annotated[str, typer.Argument(metavar="TITLE", help="What to do.")],
    config_path: ConfigOption = None,
    description: Annotated[str, typer.Option("--description", "-d", help="Details.")] = "",
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="Capability an agent needs (repeatable)."),
    ] = None,
    priority: Annotated[
        Priority, typer.Option("--priority", "-p", **one_of(Priority, "a priority", Priority))
    ] = Priority.MEDIUM,
    project: Annotated[str | None, typer.Option(help="Project (default: config's).")] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option("--depends-on", metavar="ID", help="Task that must complete first."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model the task will use (for quotas).")] = "",
    estimated_tokens: Annotated[
        int, typer.Option(min=0, help="Tokens to reserve when dispatching.")
    ] = 0,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries before the dead letter.")] = 3,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Create at most one task for KEY (re-running a submission that got no answer).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a pending task; prints its id."""
    cfg = config(config_path)
    key = idempotency_key or str(uuid.uuid4())
    with client(cfg) as api, _unanswered_submission(key):
        task = submit_task(
            api,
            title,
            description=description,
            labels=label or (),
            priority=priority,
            project=cfg.project if project is None else project,
            dependencies=depends_on or (),
            model=model,
            estimated_tokens=estimated_tokens,
            max_retries=max_retries,
            idempotency_key=key,
        )
    if task.status is TaskStatus.BLOCKED:
        # Created, but it will never run: said, so a script's next step is not a wait.
        blockers = ", ".join(task.blockers) or "a dependency"
        warn(f"task {task.id} is blocked at once: {blockers} failed, so it will not run")
    if json_output:
        print_json(task)
    else:
        sys.stdout.write(task.id + "\n")


@contextmanager
def _unanswered_submission(key: str) -> Iterator[None]:
    """A create that got no answer may still have been made (the server was slow, not
    down): the error names the key that makes running the submission again safe."""
    try:
        yield
    except TransportError as exc:
        raise TransportError(
            f"{exc.message}; the task may have been created: run the same submit again with"
            f" --idempotency-key {key} to create it at most once"
        ) from exc


@handled
def cancel(
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="Task id.")],
    config_path: ConfigOption = None,
    reason: Annotated[str, typer.Option(help="Why, kept as its fail reason.")] = "",
    json_output: JsonOption = False,
) -> None:
    """Fail a task that has not ended (its dead letter): it never runs (again).

    Tasks depending on it become blocked; an agent running it loses its lease and is
    stopped at its next renewal. `agentic retry` runs it again."""
    cfg = config(config_path)
    why = f"cancelled: {reason}" if reason else "cancelled"
    with client(cfg) as api:
        try:
            task = api.update_task(task_id, TaskUpdate(status=TaskStatus.FAILED, fail_reason=why))
        except NotFoundError as exc:
            raise _no_task(task_id, cfg.base_url) from exc
        except ConflictError as exc:
            ended = api.get_task(task_id)
            if ended.status not in FINISHED:
                raise
            raise AgenticError(
                f"task {task_id} has ended already ({ended.status}): nothing to cancel"
            ) from exc
    if json_output:
        print_json(task)
    else:
        sys.stdout.write(f"{task.id} {task.status}: {task.fail_reason}\n")


def _no_task(task_id: str, base_url: str) -> NotFoundError:
    """The error for a task id the task server does not know, saying where to look."""
    return NotFoundError(
        f"no task {task_id!r} on the task server at {base_url} (agentic tasks lists them)", 404
    )


@handled
def retry(
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="Task id.")],
    config_path: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run a failed task (dead-lettered, or cancelled) again from the start.

    It is pending again with no retry counted; the tasks its failure blocked are
    pending again once no other failed task blocks them. Prints what was re-queued.
    Made once: if the task was retried meanwhile (by someone else, say), nothing
    changes and it says so."""
    cfg = config(config_path)
    with client(cfg) as api:
        try:
            retried = api.retry_task(task_id)
        except ConflictError as exc:  # not failed: the server's message says what to do
            raise AgenticError(exc.message) from exc
        except NotFoundError as exc:
            if "task_retry" not in api.server_features():
                raise AgenticError(
                    f"the task server at {cfg.base_url} cannot retry tasks (it is older"
                    " than this agentic): upgrade it, or submit the task again"
                ) from exc
            raise _no_task(task_id, cfg.base_url) from exc
    task = retried.task
    if json_output:
        print_json(
            {
                "task": task.model_dump(mode="json"),
                "unblocked": retried.unblocked,
                "repeated": retried.repeated,
            }
        )
        return
    if retried.repeated:
        sys.stdout.write(f"{task.id} {task.status}\n")
        warn(
            f"task {task.id} was retried already (by this retry's first try, whose answer"
            " was lost, or by someone else): nothing more changed"
        )
    elif task.status is TaskStatus.BLOCKED:
        blockers = ", ".join(task.blockers)
        sys.stdout.write(f"{task.id} blocked\n")
        warn(f"task {task.id} is blocked by failed task(s) {blockers}: retry those to run it")
    else:
        sys.stdout.write(f"{task.id} {task.status}\n")
    for unblocked in retried.unblocked:
        sys.stdout.write(f"{unblocked} pending (unblocked)\n")


@handled
def logs(
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="Task id.")],
    config_path: ConfigOption = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help=(
                "Keep printing until the task ends; exit 1 if it ends failed or blocked,"
                " 130 if stopped (Ctrl-C, SIGTERM) before it ends."
            ),
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (status, log).")
    ] = False,
) -> None:
    """Print a task's status changes and log lines (Ctrl-C stops following)."""
    cfg = config(config_path)
    # Stopped before the task ended, it did not succeed: never 0 (a script waiting
    # with -f must not go on).
    with client(cfg) as api, interrupt_exits(130):
        try:
            if json_output:
                status = _json_lines(api, task_id, follow)
            else:
                hint = _why_pending(cfg, api, api.get_task(task_id)) if follow else None
                try:
                    status = stream_logs(api, task_id, sys.stdout, follow=follow)
                finally:
                    if hint is not None:
                        hint.cancel()
        except NotFoundError as exc:
            raise _no_task(task_id, cfg.base_url) from exc
    # Followed to its end, a task that will not complete is an error: a script that
    # waits on it (`agentic logs -f ID && next`) must not go on.
    if follow and status in (TaskStatus.FAILED, TaskStatus.BLOCKED):
        raise typer.Exit(1)


#: seconds a followed task waits before `logs -f` says where to read why: a task just
#: submitted is claimed within moments (a new task wakes the dispatcher at once)
PENDING_HINT_AFTER = 5.0


def _why_pending(cfg: Config, api: TaskClient, task: Task) -> threading.Timer | None:
    """Warn why a pending task waits (nothing in its log says so): its unfinished
    dependencies at once; else, once it has been pending for ``PENDING_HINT_AFTER``
    seconds, where to read why (the timer doing that, to cancel when the task ends)."""
    if task.status is not TaskStatus.PENDING:
        return None
    waiting_on = [dep for dep in task.dependencies if not _completed(api, dep)]
    if waiting_on:
        warn(f"task {task.id} is pending: it waits for {', '.join(waiting_on)} to complete")
        return None
    since = task.updated_at or task.created_at
    waited = (datetime.now(UTC) - since).total_seconds() if since else PENDING_HINT_AFTER
    timer = threading.Timer(max(0.0, PENDING_HINT_AFTER - waited), _still_pending, (cfg, task.id))
    timer.daemon = True
    timer.start()
    return timer


def _still_pending(cfg: Config, task_id: str) -> None:
    """The hint of :func:`_why_pending`, if the task is pending still (a client of its
    own: the follower's is busy with the stream)."""
    try:
        with client(cfg) as api:
            pending = api.get_task(task_id).status is TaskStatus.PENDING
    except AgenticError:
        return  # a hint: the follower reports the task API's failures itself
    if pending:
        warn(
            f"task {task_id} is pending: agentic events --task {task_id} says"
            " why it waits (no capable agent with room, quota, its turn)"
        )


def _completed(api: TaskClient, task_id: str) -> bool:
    try:
        return api.get_task(task_id).status is TaskStatus.COMPLETED
    except NotFoundError:
        return False


def _json_lines(api: TaskClient, task_id: str, follow: bool) -> TaskStatus | None:
    """NDJSON: ``{"kind": "status", ...}`` on each change, ``{"kind": "log", ...}`` per line.

    Polls the plain endpoints rather than following the SSE stream: twice a second
    is interactive enough and cheap for the server, and the code stays trivial.
    """
    status: TaskStatus | None = None
    offset = 0
    while True:
        task = api.get_task(task_id)
        if task.status != status:
            status = task.status
            print_json({"kind": "status", "task_id": task_id, "status": status}, indent=None)
        # Status first, then the log: once a final status is printed, every line
        # written before the task ended follows it.
        while (page := api.get_logs(task_id, offset)).lines:
            for index, line in enumerate(page.lines, start=page.offset):
                print_json({"kind": "log", "offset": index, "line": line}, indent=None)
            offset = page.next_offset
        if not follow or status in FINISHED:
            return status
        time.sleep(_JSON_POLL)


# --- tasks ---
#: tasks asked for per request: enough for a screen, small for the server
_PAGE = 200
_STATUSES = ", ".join(status.value for status in TaskStatus)
_STYLES = {
    TaskStatus.IN_PROGRESS: "cyan",
    TaskStatus.COMPLETED: "green",
    TaskStatus.BLOCKED: "magenta",
    TaskStatus.FAILED: "red",
}
# Dropped at narrow widths from the highest rank down; ID and Status stay.
_TASK_COLUMNS = (
    Col("ID"),
    Col("Status"),
    Col("Priority", drop=6),
    Col("Title", drop=1, wrap=16),
    Col("Labels", drop=7, wrap=10),
    Col("Agent", drop=3),  # who holds it: kept before retries and age
    Col("Retries", drop=5, justify="right"),
    Col("Created", drop=8, justify="right"),
    Col("Updated", drop=4, justify="right"),
)


@handled
def tasks(
    config_path: ConfigOption = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            metavar="S",
            help=f"Only tasks in this status (repeatable, or comma separated): {_STATUSES}.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", min=1, help="Show at most N tasks.")
    ] = 50,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the tasks as a JSON list instead of a table.")
    ] = False,
) -> None:
    """List tasks, most urgent and oldest first (all statuses unless --status)."""
    wanted = _statuses(status or [])
    cfg = config(config_path)
    with client(cfg) as api:
        found = list_tasks(api, wanted, limit + 1)  # one more: are there more?
    shown, more = found[:limit], len(found) > limit
    if json_output:
        print_json(shown)
        return
    stdout().print(tasks_table(shown, more, datetime.now(UTC)))


def _statuses(given: list[str]) -> list[TaskStatus]:
    """The statuses asked for, each once; a usage error names the valid ones."""
    chosen: list[TaskStatus] = []
    for value in (part.strip() for item in given for part in item.split(",")):
        try:
            status = TaskStatus(value.lower())
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not a task status; valid: {_STATUSES}", param_hint="--status"
            ) from None
        if status not in chosen:
            chosen.append(status)
    return chosen


def list_tasks(api: TaskClient, statuses: list[TaskStatus], count: int) -> list[Task]:
    """The first ``count`` tasks in list order (most urgent, then oldest) among
    ``statuses`` (all when empty), read a page at a time: one listing per status,
    merged, and no page read that is not needed."""
    listings: list[TaskStatus | None] = [*statuses] or [None]
    streams = [_paged(api, status, count) for status in listings]
    merged = heapq.merge(*streams, key=order_key)
    return [task for task, _ in zip(merged, range(count), strict=False)]


def _paged(api: TaskClient, status: TaskStatus | None, count: int) -> Iterator[Task]:
    """The tasks of one listing, page after page (``limit`` and ``after``), at most
    ``count``. A server that ignores the cursor (it repeats a page) or the limit (it
    answers more) has answered everything it will: the listing ends there."""
    size = min(count, _PAGE)
    seen: set[str] = set()
    after: str | None = None
    while len(seen) < count:
        page = api.list_tasks(status=status, limit=size, after=after)
        fresh = [task for task in page if task.id not in seen]
        seen.update(task.id for task in fresh)
        yield from fresh
        if len(fresh) != len(page) or len(page) != size:
            return
        after = page[-1].id


def _age(when: datetime | None, now: datetime) -> str:
    """``"12s"``, ``"3m"``, ``"5h"``, ``"2d"``; ``"-"`` when unknown."""
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def tasks_table(shown: list[Task], more: bool, now: datetime) -> FittedTable:
    """The tasks, one a row; at narrow widths the least needed columns are left out.
    Text taken from tasks is never read as rich markup, and its control characters
    are shown as escapes (a title must not command the terminal)."""
    rows = [
        [
            Text(task.id),
            Text(str(task.status or "-"), style=_STYLES.get(task.status or TaskStatus.PENDING, "")),
            task.priority.value,
            Text(printable(task.title)),
            Text(printable(", ".join(task.labels)) or "-"),
            Text(printable(task.claimed_by) or "-"),
            f"{task.retry_count}/{task.max_retries}",
            _age(task.created_at, now),
            _age(task.updated_at or task.created_at, now),
        ]
        for task in shown
    ]
    title = f"Tasks: {len(shown)}" + (" (more: raise --limit)" if more else "")
    return FittedTable(_TASK_COLUMNS, rows, title=title, title_justify="left")
