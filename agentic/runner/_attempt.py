"""One run of one claimed task, and how its end is turned into a report."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from ..models import QuotaEvent, Task, TaskResult
from ._context import InfrastructureError, TaskContext
from ._sizes import clean, tail_within, within

__all__ = [
    "Attempt",
    "Outcome",
    "RenewalLength",
    "Report",
    "Stop",
    "attempt_key",
    "bare",
    "claim_lease",
    "decide",
    "describe",
    "shrink",
]

log = logging.getLogger("agentic.runner")

# The complete request must stay under the server's body limit (1 MiB by default):
# bytes of JSON (see _sizes), whatever the characters.
_MAX_OUTPUT_BYTES = 256 * 1024
_MAX_ERROR_BYTES = 16 * 1024
_MAX_ARTIFACTS_BYTES = 64 * 1024
# What is sent when the task API refuses even that (413: a lower limit configured).
_SHRUNK_OUTPUT_BYTES = 8 * 1024
_SHRUNK_ERROR_BYTES = 4 * 1024


def attempt_key(task: Task) -> tuple[str, str, str]:
    """Identifies one claim of a task: a requeued and re-claimed task gets a new key."""
    claimed = task.claimed_at.isoformat() if task.claimed_at else ""
    return (task.id, task.job_id, claimed)


class Stop(StrEnum):
    """Why the runner asked a handler to stop."""

    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    LOST = "lost"  # the lease is gone: the task is no longer this agent's
    #: another runner took this agent's id lease: its tasks are that runner's now,
    #: so nothing is reported or charged here
    DISPLACED = "displaced"
    #: this runner's id lease ran out unrenewed (the registry out of reach): another
    #: runner may take the id and these claims, so nothing is reported or charged here
    LAPSED = "lapsed"


class Report(StrEnum):
    """What the runner tells the task server at the end of an attempt."""

    COMPLETED = "completed"  # complete(success=True)
    FAILED = "failed"  # complete(success=False): counts a retry on the server
    RELEASED = "released"  # release: pending again, no retry counted
    NOTHING = "nothing"  # the task is not ours any more

    @property
    def quota_event(self) -> QuotaEvent:
        """How the attempt's reservation is settled."""
        return _SETTLE[self]


_SETTLE = {
    Report.COMPLETED: QuotaEvent.JOB_COMPLETED,
    Report.FAILED: QuotaEvent.JOB_FAILED,
    Report.RELEASED: QuotaEvent.JOB_CANCELLED,
    # Tokens spent on a task whose lease was lost were still spent.
    Report.NOTHING: QuotaEvent.JOB_FAILED,
}


@dataclass(frozen=True)
class Outcome:
    """The decided end of an attempt: what to report, the result, and why."""

    report: Report
    result: TaskResult
    reason: str = ""
    #: the agent, not the task, is at fault (an InfrastructureError)
    infrastructure: bool = False
    #: that error came before the task's work began: its job is not counted
    before_work: bool = False


@dataclass(eq=False)
class Attempt:
    """A claimed task being run: its context, handler result and who reports it.

    Exactly one thread reports an attempt (``take``): the supervisor when the handler
    ends or times out, or the shutdown path when the handler outlives the grace.
    """

    task: Task
    ctx: TaskContext
    key: tuple[str, str, str]
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: TaskResult | None = None
    error: BaseException | None = None
    stop_kind: Stop | None = None
    #: seconds a lease lasts from a claim or renewal (the claim's own, else the server
    #: default's), and the monotonic time the last one known to have landed runs out
    lease_ttl: float = 300.0
    lease_until: float = field(init=False, default=0.0)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _taken: bool = False

    def __post_init__(self) -> None:
        self.lease_until = self.started + self.lease_ttl

    def renewed(self) -> None:
        """A lease renewal landed: the claim holds ``lease_ttl`` from now."""
        self.lease_until = time.monotonic() + self.lease_ttl

    def holds_lease(self) -> bool:
        """Whether the claim may still be ours: its lease has not run out unrenewed."""
        return time.monotonic() < self.lease_until

    def stop(self, kind: Stop, reason: str) -> None:
        """Ask the handler to stop; the first kind wins."""
        with self._changed:
            if self.stop_kind is None:
                self.stop_kind = kind
            self._changed.notify_all()
        self.ctx.cancel(reason)

    def set_done(self) -> None:
        """The handler returned or raised."""
        with self._changed:
            self.done.set()
            self._changed.notify_all()

    def wait(self, timeout: float | None) -> bool:
        """Wait until the handler is done or asked to stop; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self.done.is_set() or self.stop_kind is not None, timeout
            )

    def take(self) -> bool:
        """True for the one caller that gets to report this attempt."""
        with self._changed:
            taken, self._taken = self._taken, True
            return not taken

    @property
    def reporting(self) -> bool:
        """True once someone took the attempt to report it."""
        with self._changed:
            return self._taken


#: stops after which the attempt's end is another's to decide (the task claimed again,
#: the agent id taken)
_NOT_OURS = (Stop.LOST, Stop.DISPLACED)


def decide(attempt: Attempt, max_job_duration: float | None) -> Outcome:
    """Turn how the handler ended (or did not) into what to report."""
    timed_out = f"timed out after {max_job_duration or 0:g} s"
    kind = attempt.stop_kind
    result, error = attempt.result, attempt.error
    finished = attempt.done.is_set() and error is None
    if finished and result is not None and result.success and kind not in _NOT_OURS:
        # Finished, even if asked to stop: redoing finished work would spend twice
        # (lapsed: not reported, but its end is written down and reported once the
        # id is back).
        return Outcome(Report.COMPLETED, _clip(result))
    if kind in (Stop.LOST, Stop.DISPLACED, Stop.LAPSED):
        return Outcome(Report.NOTHING, TaskResult(success=False), attempt.ctx.cancel_reason)
    if not attempt.done.is_set():
        if kind is Stop.TIMEOUT:
            return _failed(TaskResult(success=False), f"{timed_out} (the handler did not stop)")
        reason = "the agent shut down before the task finished"
        return Outcome(Report.RELEASED, TaskResult(success=False), reason)
    if isinstance(error, InfrastructureError):
        unrun = TaskResult(success=False)
        return Outcome(Report.RELEASED, unrun, str(error), True, error.before_work)
    if kind is Stop.SHUTDOWN:
        return Outcome(Report.RELEASED, TaskResult(success=False), "cancelled by agent shutdown")
    failed = result or TaskResult(success=False)
    if kind is Stop.TIMEOUT:
        return _failed(failed, timed_out)
    if error is not None:
        return _failed(failed, describe(error))
    return _failed(failed, failed.error_message or "the handler reported failure")


def describe(error: BaseException) -> str:
    """The error's message, else its type's name; never raises, whatever the
    exception's ``__str__`` does (the task must still be reported)."""
    try:
        return str(error) or type(error).__name__
    except Exception as exc:
        return f"{type(error).__name__} (its message could not be read: {type(exc).__name__})"


def _failed(result: TaskResult, reason: str) -> Outcome:
    failed = result.model_copy(update={"success": False, "error_message": reason})
    return Outcome(Report.FAILED, _clip(failed), reason)


def _clip(result: TaskResult) -> TaskResult:
    return result.model_copy(
        update={
            "output": tail_within(clean(result.output), _MAX_OUTPUT_BYTES),
            "error_message": tail_within(clean(result.error_message), _MAX_ERROR_BYTES),
            "artifacts": within([clean(a) for a in result.artifacts], _MAX_ARTIFACTS_BYTES),
        }
    )


def bare(result: TaskResult) -> TaskResult:
    """``result`` with a one-line note for all its text: for a task API that refused
    even its cut version."""
    note = "[agentic: the task API refused the result as too large, even cut]"
    return TaskResult(
        success=result.success, output=note, error_message="" if result.success else note
    )


def shrink(result: TaskResult) -> TaskResult:
    """``result`` cut to a few KiB, for a task API that refused it whole (413)."""
    note = "[agentic: the task API refused the whole result as too large]\n"
    return result.model_copy(
        update={
            "output": note + tail_within(result.output, _SHRUNK_OUTPUT_BYTES),
            "error_message": tail_within(result.error_message, _SHRUNK_ERROR_BYTES),
            "artifacts": within(result.artifacts, _SHRUNK_ERROR_BYTES),
        }
    )


def claim_lease(task: Task) -> float | None:
    """Seconds the task's claim lasts from its last claim or renewal (None: it tells
    nothing): the length recorded with it (exact, also for a task updated since
    its last renewal), else the time from its last renewal (which sets updated_at)
    to its expiry. A recorded length shorter than that time is an older server's
    leftover (it renewed for a longer one and left the field as it was): the time
    wins then. (A true record is never shorter: an update since the renewal only
    shortens the time. A stale one longer than the time cannot be told from a true
    one: renewing for it keeps the claim the longer, never loses it.)
    """
    derived = None
    if task.lease_expires_at is not None and task.claimed_at is not None:
        since = max(task.claimed_at, task.updated_at or task.claimed_at)
        derived = max(0.0, (task.lease_expires_at - since).total_seconds())
    recorded = task.lease_seconds
    if recorded is not None and (derived is None or recorded >= derived - 1.0):
        return recorded
    return derived


# Seconds a lease lasts when neither the runner nor the claim says (the server's default).
_DEFAULT_LEASE = 300.0
# Seconds a lease is renewed for when the claim's own is too short to renew safely
# (two renewals or less): three renewals, 15 s at the default heartbeat_interval.
_SAFE_RENEWALS = 3


class RenewalLength:
    """How long a task's lease lasts from a claim or renewal, the length every
    renewal sends: the runner's (``lease_seconds``), else the claim's own (the
    dispatcher's, or the server's default), else the server's shipped default. A
    claim's lease too short to renew safely (twice ``heartbeat_interval`` or less:
    one late renewal would lose it) is renewed for three heartbeat intervals instead
    (15 s by default), said once per runner."""

    def __init__(self, lease_seconds: float | None, heartbeat_interval: float) -> None:
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval
        self._told = False

    def __call__(self, task: Task) -> float:
        if self.lease_seconds is not None:
            return self.lease_seconds
        claimed = claim_lease(task)
        if claimed is None:
            return _DEFAULT_LEASE
        if claimed > 2 * self.heartbeat_interval:
            return claimed
        safe = _SAFE_RENEWALS * self.heartbeat_interval
        if not self._told:
            self._told = True
            log.warning(
                "task %s was claimed with a lease of %g s, too short to renew safely every"
                " %g s: its lease (and every such claim's) is renewed for %g s instead."
                " Give the dispatcher a longer dispatcher.lease_seconds, or set"
                " agent.lease_seconds. (Said once.)",
                task.id,
                claimed,
                self.heartbeat_interval,
                safe,
            )
        return safe
