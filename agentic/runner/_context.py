"""TaskContext (what a handler gets besides the task) and how a handler is called."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

from .._client_wire import LOG_FULL
from ..client import TaskClient
from ..errors import AgenticError, APIError, ConfigError
from ..models import Task, TaskResult, TaskUpdate
from ._journal import JobJournal, bad_tokens
from ._sizes import clean, head_within, json_bytes

__all__ = [
    "Handler",
    "HandlerResult",
    "InfrastructureError",
    "TaskCancelled",
    "TaskContext",
    "call_handler",
]

log = logging.getLogger("agentic.runner")

HandlerResult: TypeAlias = str | TaskResult | None
#: ``(task, ctx) -> str | TaskResult | None``, or a coroutine function returning that.
Handler: TypeAlias = Callable[[Task, "TaskContext"], HandlerResult | Awaitable[HandlerResult]]

# One log line past this is cut: a runaway line must not make an append request
# exceed the server's body limit.
MAX_LINE_CHARS = 16 * 1024
# Lines per append request and bytes of JSON per request (see _sizes: the server
# refuses bodies over 1 MiB by default).
_BATCH_LINES = 500
_BATCH_BYTES = 256 * 1024
# A line the task API refuses alone (413: a lower body limit) is sent cut to this
# many bytes of JSON; refused again, replaced by _REFUSED_LINE.
_REFUSED_LINE_BYTES = 1024
_REFUSED_LINE = "[agentic: a log line was dropped: the task API refused it even cut]"
_CUT_MARK = " [cut: the task API refused it whole]"


class InfrastructureError(AgenticError):
    """The task could not run here for a reason that is not the task's fault.

    A dirty workspace, a missing agent binary, git failing. The runner gives such a
    task back (release: pending again, no retry counted) instead of failing it, so it
    can run on a healthy agent.

    ``before_work``: raised before the task's work began (the binary is missing, the
    tree is dirty): the job is then not counted against the agent's quota, as for a
    task given back unrun. Left false (the default) when the work may have run (a
    commit or push that failed after it): the job counts.
    """

    def __init__(self, *args: object, before_work: bool = False) -> None:
        super().__init__(*args)
        self.before_work = before_work


class TaskCancelled(AgenticError):
    """The handler stopped because ``ctx.cancelled`` was set (timeout or shutdown)."""


class TaskContext:
    """What a running task can do besides computing its result.

    * ``log(line)``: buffered, sent to the task's log in batches by the runner; the
      attempt's first batch starts with a line naming it (agent, job, failures before,
      the operator's re-runs, and ``again`` when this job's run before here stopped
      unreported, saying why).
    * ``progress(pct, notes="")``: sets progress (0-100) and notes on the server now.
    * ``usage(model, tokens_in, tokens_out)``: adds tokens the task used; the runner
      settles the sum with the quota store when the task ends.
    * ``cancelled`` / ``cancel_event``: set when the task must stop (timeout,
      shutdown, lost lease); handlers should check it between steps.
    * ``workdir``: the directory to work in when a wrapper (``GitWorkspace``) set one.

    Reporting calls never raise into the handler: an unreachable task server is the
    runner's problem (logged and counted), not a reason to fail the task.
    """

    def __init__(
        self,
        task: Task,
        client: TaskClient,
        *,
        on_error: Callable[[str, Exception], None] | None = None,
        max_buffered_lines: int = 10_000,
        cancel_grace: float = 5.0,
        again: str = "",
    ) -> None:
        self._task = task
        #: why this job runs again here ("": its first run here), for the log's header
        self._again = again
        self._client = client
        self._on_error = on_error
        self._max_lines = max_buffered_lines
        #: seconds a handler has, once cancelled, before the runner abandons it
        self.cancel_grace = cancel_grace
        self.workdir: Path | None = None
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._cancel_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        # Only one flush at a time, so lines reach the server in the order logged.
        self._flush_lock = threading.Lock()
        self._lines: list[str] = []
        self._dropped = 0
        self._log_full = False  # the server refused lines for want of room: none sent
        self._headed = False  # the attempt's first line is in the buffer or sent
        self._tokens: dict[str, list[int]] = {}
        self._settled = False  # the runner read the totals: later usage is too late
        #: the job's usage file (None: quotas off), which outlives this process
        self.journal: JobJournal | None = None

    @property
    def task(self) -> Task:
        """The task being run (as claimed)."""
        return self._task

    # --- cancellation ---
    @property
    def cancelled(self) -> bool:
        """True once the task must stop."""
        return self._cancel.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """The event behind ``cancelled``, to ``wait()`` on instead of sleeping."""
        return self._cancel

    @property
    def cancel_reason(self) -> str:
        """Why the task was cancelled ("" while it was not)."""
        return self._cancel_reason

    def cancel(self, reason: str) -> None:
        """Ask the handler to stop; the first reason is kept."""
        with self._lock:
            if self._cancel.is_set():
                return
            self._cancel_reason = reason
            self._cancel.set()
            callbacks = list(self._cancel_callbacks)
        for callback in callbacks:
            callback()

    def _on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on cancellation (now if already cancelled); returns an undo."""
        with self._lock:
            if not self._cancel.is_set():
                self._cancel_callbacks.append(callback)
                return lambda: self._forget_callback(callback)
        callback()
        return lambda: None

    def _forget_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._cancel_callbacks:
                self._cancel_callbacks.remove(callback)

    # --- logs ---
    def log(self, line: str) -> None:
        """Add a line (several if it contains newlines) to the task's log; dropped once
        the task API said the log is full (its ``max_log_lines``)."""
        parts = clean(str(line)).splitlines() or [""]
        with self._lock:
            if self._log_full:
                return
            self._lines.extend(
                part if len(part) <= MAX_LINE_CHARS else part[:MAX_LINE_CHARS] + " [cut]"
                for part in parts
            )
            # Past the bound the oldest lines go: the server is unreachable for a long
            # time and memory must not grow without end. The loss is said in the log.
            excess = len(self._lines) - self._max_lines
            if excess > 0:
                del self._lines[:excess]
                self._dropped += excess

    def flush_logs(self) -> bool:
        """Send buffered lines; True when nothing is left. Failures keep the lines.

        A send whose answer was lost may be repeated by the next flush, so a line can
        appear twice in the log after a network failure; it is never lost silently.
        """
        try:
            self._send_logs()
        except AgenticError as exc:
            self._report("log flush", exc)
            return False
        return True

    def _send_logs(self) -> None:
        """:meth:`flush_logs`, raising the error that stopped it (lines kept)."""
        with self._flush_lock:
            with self._lock:
                lines, self._lines = self._lines, []
                if self._dropped:
                    lines.insert(0, f"[agentic: {self._dropped} log lines dropped]")
                    self._dropped = 0
                if lines and not self._headed:
                    # Attempts of a retried task share its log: each one that logs
                    # starts with who ran it (none for a silent one: no request).
                    lines.insert(0, self._header())
                    self._headed = True
            sent = 0
            try:
                for batch in _batches(lines):
                    self._append(batch)
                    sent += len(batch)
            except AgenticError as exc:
                if _log_full(exc):
                    # Sending again cannot help: this attempt's lines from here go.
                    with self._lock:
                        self._log_full = True
                        self._lines.clear()
                    log.warning(
                        "task %s: %s; its %d line(s) not sent and those to come are dropped",
                        self._task.id,
                        exc,
                        len(lines) - sent,
                    )
                    return
                with self._lock:
                    self._lines[:0] = lines[sent:]
                raise

    def _append(self, batch: list[str]) -> None:
        """Send ``batch``; refused as too large (a task API with a lower body limit),
        sent in halves; a line refused alone is sent cut, and if even that is
        refused, replaced by a short note (refused too: the error is raised)."""
        try:
            self._client.append_logs(self._task.id, batch)
        except APIError as exc:
            if not (exc.from_response and exc.code == 413):
                raise
            if len(batch) > 1:
                self._append(batch[: len(batch) // 2])
                self._append(batch[len(batch) // 2 :])
                return
            line = batch[0]
            self._report("sending a log line whole (it is sent cut)", exc)
            for smaller in (head_within(line, _REFUSED_LINE_BYTES, _CUT_MARK), _REFUSED_LINE):
                if json_bytes(smaller) >= json_bytes(line):
                    continue  # no smaller than what was refused
                try:
                    self._client.append_logs(self._task.id, [smaller])
                except APIError as again:
                    if not (again.from_response and again.code == 413):
                        raise
                    line = smaller
                else:
                    return
            raise

    def _header(self) -> str:
        # The job id tells attempts apart; retries counts the failed ones before (a
        # released claim is run again without counting one), reruns the operator's
        # retries (which start the count of failures again). A job run again under the
        # same id (its run before stopped unreported) says so, or the log would show
        # two headers alike with nothing between.
        task = self._task
        job = f" job {task.job_id}" if task.job_id else ""
        again = f" again (its run before stopped unreported: {self._again})" if self._again else ""
        retries = f", after {task.retry_count} failed" if task.retry_count else ""
        reruns = f", re-run {task.reruns} by an operator" if task.reruns else ""
        return f"[agentic: {task.claimed_by or '?'} runs{job}{again}{retries}{reruns}]"

    # --- progress and usage ---
    def progress(self, pct: float, notes: str = "") -> bool:
        """Report progress (clamped to 0-100) and, if given, notes; True when stored."""
        update = TaskUpdate(progress=max(0, min(100, int(pct))), notes=notes or None)
        try:
            self._client.update_task(self._task.id, update)
        except AgenticError as exc:
            self._report("progress update", exc)
            return False
        return True

    def usage(self, model: str, tokens_in: int, tokens_out: int) -> None:
        """Add tokens used on ``model`` (called as often as the handler likes)."""
        self._use(model, tokens_in, tokens_out, record=True)

    def recorded_usage(self, model: str, tokens_in: int, tokens_out: int) -> None:
        """:meth:`usage` for tokens a file of the job keeps on disk already (its
        command's usage file, beside the job's): counted, not written twice."""
        self._use(model, tokens_in, tokens_out, record=False)

    def _use(self, model: str, tokens_in: int, tokens_out: int, record: bool) -> None:
        problem = bad_tokens(tokens_in, tokens_out)
        if problem:
            raise ConfigError(problem)
        with self._lock:
            late = self._settled
            if not late:
                self._add(model, tokens_in, tokens_out)
        if not late and record and self.journal is not None:
            self.journal.usage(str(model), tokens_in, tokens_out)
        if late:
            self._report(
                "usage",
                AgenticError(
                    f"{tokens_in} + {tokens_out} tokens on {model!r} reported after the job"
                    " was settled: not charged"
                ),
            )

    def attach_journal(self, journal: JobJournal) -> None:
        """Write each later usage to ``journal`` too, and count what an earlier run of
        this job recorded there (its runner was killed) as spent by this one."""
        with self._lock:
            self.journal = journal
            for model, tokens_in, tokens_out in journal.recovered:
                self._add(model, tokens_in, tokens_out)

    def _add(self, model: str, tokens_in: int, tokens_out: int) -> None:
        totals = self._tokens.setdefault(str(model), [0, 0])
        totals[0] += tokens_in
        totals[1] += tokens_out

    def settle_tokens(self) -> tuple[int, int]:
        """The totals, as :attr:`tokens`, for the runner's settle; usage reported
        after this is too late to charge and is reported as an error."""
        with self._lock:
            self._settled = True
        return self.tokens

    @property
    def tokens(self) -> tuple[int, int]:
        """Total (tokens_in, tokens_out) reported so far, all models together."""
        with self._lock:
            return (
                sum(t[0] for t in self._tokens.values()),
                sum(t[1] for t in self._tokens.values()),
            )

    @property
    def models(self) -> list[str]:
        """The models usage was reported for, in first-reported order."""
        with self._lock:
            return [m for m in self._tokens if m]

    def _report(self, what: str, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(f"task {self._task.id}: {what} failed", exc)
        else:
            log.warning("task %s: %s failed: %s", self._task.id, what, exc)


def _log_full(exc: AgenticError) -> bool:
    """Whether ``exc`` is the task API saying the task's log has no room left."""
    return (
        isinstance(exc, APIError)
        and exc.from_response
        and exc.code == 409
        and exc.details == LOG_FULL
    )


def _batches(lines: list[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = json_bytes(line) + 1
        if current and (len(current) >= _BATCH_LINES or size + length > _BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        batches.append(current)
    return batches


def to_result(value: object) -> TaskResult:
    """A handler's return value as a TaskResult (``None`` and ``str`` mean success)."""
    if value is None:
        return TaskResult(success=True)
    if isinstance(value, TaskResult):
        return value
    if isinstance(value, str):
        return TaskResult(success=True, output=value)
    raise TypeError(f"a handler returns str, TaskResult or None, not {type(value).__name__}")


def call_handler(handler: Handler, task: Task, ctx: TaskContext) -> TaskResult:
    """Run ``handler`` on this thread; an async one gets its own event loop."""
    value = handler(task, ctx)
    if inspect.isawaitable(value):
        value = asyncio.run(_until_cancelled(value, ctx))
    return to_result(value)


async def _until_cancelled(awaitable: Awaitable[Any], ctx: TaskContext) -> Any:
    """Await the handler, cancelling its asyncio task when ``ctx`` is cancelled."""
    job = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()

    def cancel_job() -> None:
        # Called from the runner's thread; the loop may already be gone.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(job.cancel)

    undo = ctx._on_cancel(cancel_job)
    try:
        return await job
    except asyncio.CancelledError:
        if ctx.cancelled:
            raise TaskCancelled(ctx.cancel_reason) from None
        raise
    finally:
        undo()
