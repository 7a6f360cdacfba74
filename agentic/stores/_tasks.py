"""The task rules once, for every TaskStore backend.

Memory and SQLite apply these pure functions inside their lock / transaction; Redis
mirrors the transitions in Lua (``redis/lua/task_*.lua``) but still validates input
and words its errors here, so a caller sees the same messages on every backend.

A task's life::

    pending ──claim──> in_progress ──complete(success)──> completed
       ^  ^                 │
       │  └──release────────┤
       │                    └──complete(failure) / lease expiry──> pending (retry)
       │                                                   └─ past max_retries ─> failed
       └───────── retry (an operator's: a failed task starts afresh) ── failed
    blocked (a dependency is failed, or put on hold by update)

``completed`` is final; so is ``failed`` (the dead letter) for everything but an
operator's retry, which starts the task afresh (:func:`rerun`). When a task is
dead-lettered, every transitive dependent still pending or blocked becomes blocked
and names it in ``blockers``; when it is retried, the blocked tasks below it find
their blockers again, and those left with none are pending again
(:func:`unblock_dependents`).

Refusals (claim conflicts, and the holder / job-id fence of renew, release and
complete) are worded in ``_task_conflicts.py`` and re-exported here.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from pydantic import ValidationError

from ..errors import ConfigError, ConflictError
from ..events import Event, EventType, transition_id
from ..models import MAX_COUNT, Priority, Task, TaskResult, TaskStatus, TaskUpdate
from ._task_conflicts import (
    FINAL,
    claim_conflict,
    claim_repeat,
    made_as_far_as_known,
    require_fresh_job,
    require_holder,
)
from .base import RunSeen, require_amount, require_id

__all__ = [
    "FINAL",
    "MAX_REASON",
    "RERUN_REASON",
    "STORE_SOURCE",
    "LIST_FIELDS",
    "MAX_COUNT",
    "TIME_FIELDS",
    "blocked_by",
    "claim_conflict",
    "claim_repeat",
    "claimed",
    "completed",
    "creation_blockers",
    "dead_letter",
    "dt",
    "failed_attempt",
    "given_back",
    "lease_expired_reason",
    "lifecycle_events",
    "made_as_far_as_known",
    "list_filters",
    "matches",
    "new_id",
    "order_key",
    "prepare_new",
    "released",
    "require_rerunnable",
    "rerun",
    "rerun_events",
    "renewed",
    "require_fence",
    "require_fresh_job",
    "require_holder",
    "require_job_id",
    "require_label",
    "require_lease",
    "require_limit",
    "require_name",
    "require_lines",
    "require_reason",
    "require_retry_at",
    "require_seen",
    "require_update",
    "stamp_new",
    "ts",
    "unblock_dependents",
    "unblocked_reason",
    "updated",
]

#: Task fields that are times (stored as epoch seconds) and lists (stored as JSON)
TIME_FIELDS = frozenset(
    {"created_at", "updated_at", "claimed_at", "last_attempt", "next_attempt_at",
     "lease_expires_at"}
)  # fmt: skip
LIST_FIELDS = frozenset({"labels", "files", "dependencies", "blockers"})

# Ids end up in URL paths (/api/tasks/{id}) and Redis keys: keep them path-safe.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def ts(value: datetime | None) -> float | None:
    """Epoch seconds of a time (``None`` stays ``None``): what stores keep."""
    return None if value is None else value.timestamp()


def dt(value: float | None) -> datetime | None:
    """The UTC time of epoch seconds (``None`` stays ``None``)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _now(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


# --- input checks ----------------------------------------------------------------------


def require_lease(lease_seconds: float) -> float:
    """A lease must be a finite number of seconds > 0 (an endless lease never requeues)."""
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float):
        raise ConfigError(f"lease_seconds must be a number, got {lease_seconds!r}")
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
        raise ConfigError(f"lease_seconds must be finite and > 0, got {lease_seconds!r}")
    return float(lease_seconds)


def require_retry_at(retry_at: float | None) -> float | None:
    """``retry_at`` is ``None`` (retry at once) or finite epoch seconds."""
    if retry_at is None:
        return None
    if isinstance(retry_at, bool) or not isinstance(retry_at, int | float):
        raise ConfigError(f"retry_at must be epoch seconds, got {retry_at!r}")
    if not math.isfinite(retry_at):
        raise ConfigError(f"retry_at must be finite, got {retry_at!r}")
    return float(retry_at)


def require_completion(
    result: TaskResult, agent_id: str | None, retry_at: float | None, job_id: str | None
) -> float | None:
    """Check the arguments of ``TaskStore.complete``; the ``retry_at`` to use."""
    if not isinstance(result, TaskResult):
        raise ConfigError(f"complete needs a TaskResult, got {type(result).__name__}")
    if agent_id is not None:
        require_id("agent id", agent_id)
    require_fence(job_id)
    return require_retry_at(retry_at)


def require_job_id(job_id: str) -> str:
    """The quota reservation of a claim: a string, empty when none was made."""
    if not isinstance(job_id, str):
        raise ConfigError(f"job_id must be a string, got {job_id!r}")
    return job_id


def require_fence(job_id: str | None) -> str | None:
    """The job id fencing a renew / release / complete: ``None`` (not checked) or a string."""
    return None if job_id is None else require_job_id(job_id)


def require_limit(kind: str, value: int | None) -> int | None:
    """``None`` (no limit) or an integer >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{kind} must be an integer >= 0 or None, got {value!r}")
    return value


def require_label(kind: str, value: str) -> str:
    """``value`` if it can be a label (of a task) or a capability (of an agent): not
    blank, and with no comma, since labels travel comma-joined in ``?labels=a,b``."""
    if not value.strip() or "," in value:
        raise ConfigError(f"{kind} {value!r} must not be blank and must contain no comma")
    return value


def require_name(kind: str, value: object) -> str:
    """``value`` if it is a valid id of a task or an agent (it travels in URL paths
    and query strings unescaped by some clients); else a ConfigError saying the rule."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigError(
            f"{kind} {value!r} is not a valid id: 1-128 characters from"
            " letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return value


def prepare_new(task: Task) -> Task:
    """Check a task to create and return a clean copy; raises ConfigError, stores nothing.

    Server-decided fields are filled later by :func:`stamp_new`. The task is validated
    again because a caller may have mutated a model after building it.
    """
    if not isinstance(task, Task):
        raise ConfigError(f"create needs a Task, got {type(task).__name__}")
    try:
        task = Task.model_validate(task.model_dump())
    except ValidationError as exc:
        raise ConfigError(f"invalid task: {exc}") from exc
    if not task.title.strip():
        raise ConfigError("title must not be blank")
    if task.id:
        require_name("task id", task.id)
    if task.status not in {None, TaskStatus.PENDING, TaskStatus.BLOCKED}:
        raise ConfigError(
            f"a new task is pending or blocked, not {task.status}: claim or complete it"
            " after creating it"
        )
    if task.claimed_by or task.claimed_at or task.lease_expires_at or task.lease_seconds:
        raise ConfigError("a new task cannot carry a claim: create it, then claim it")
    for name in ("max_retries", "retry_count", "estimated_tokens", "reruns"):
        require_amount(name, getattr(task, name))
    for label in task.labels:
        require_label("label", label)
    dependencies = list(dict.fromkeys(task.dependencies))
    for dependency in dependencies:
        require_name("dependency", dependency)
    if task.id and task.id in dependencies:
        raise ConfigError(f"task {task.id!r} cannot depend on itself")
    return task.model_copy(update={"dependencies": dependencies, "blockers": []})


#: what a task's creator decides and no later change touches: a create repeated under
#: one idempotency key must ask for the same of each
_CREATED_AS = (
    "title",
    "description",
    "priority",
    "labels",
    "files",
    "project",
    "dependencies",
    "max_retries",
    "model",
    "estimated_tokens",
)


def first_created(key: str, asked: Task, first: Task) -> Task:
    """``first``, the task idempotency key ``key`` created, when the repeated create
    (``asked``, as :func:`prepare_new` gave it) asks for the same task: the same given
    id, if any, and the same of every field its creator decides (not the notes or a
    hold, which updates change). Otherwise the key was reused for another task: a
    ConflictError answered 422 (as the Idempotency-Key draft asks), naming the fields
    that differ, and nothing is created."""
    differ = [name for name in _CREATED_AS if getattr(asked, name) != getattr(first, name)]
    if asked.id and asked.id != first.id:
        differ.insert(0, "id")
    if differ:
        raise ConflictError(
            f"idempotency key {key!r} created task {first.id} with another {', '.join(differ)}:"
            " a repeat must send the same task, and a new task needs a new key",
            422,
        )
    return first


def creation_blockers(dependencies: Iterable[Task]) -> list[str]:
    """Failed tasks a new task would wait on forever: failed deps, and blocked deps' blockers."""
    found: list[str] = []
    for dependency in dependencies:
        if dependency.status == TaskStatus.FAILED:
            found.append(dependency.id)
        elif dependency.status == TaskStatus.BLOCKED:
            found.extend(dependency.blockers)
    return list(dict.fromkeys(found))


def new_id() -> str:
    """A new task id: a uuid4 in hex."""
    return uuid.uuid4().hex


def stamp_new(task: Task, now: float, blockers: list[str]) -> Task:
    """Fill what the store decides: id, status (blocked when a blocker exists), times."""
    status = TaskStatus.BLOCKED if blockers else (task.status or TaskStatus.PENDING)
    return task.model_copy(
        update={
            "id": task.id or new_id(),
            "status": status,
            "created_at": task.created_at or _now(now),
            "updated_at": _now(now),
            "blockers": blockers,
        }
    )


def require_lines(lines: list[str]) -> list[str]:
    """Log lines are a list of strings (each stored as one entry, newlines and all)."""
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ConfigError("log lines must be a list of strings")
    return lines


#: Most characters in a release reason (it travels in every requeued event)
MAX_REASON = 1000


def require_reason(reason: str) -> str:
    """A release reason: a string of at most :data:`MAX_REASON` characters."""
    if not isinstance(reason, str):
        raise ConfigError(f"a release reason must be a string, got {type(reason).__name__}")
    if len(reason) > MAX_REASON:
        raise ConfigError(
            f"a release reason has at most {MAX_REASON} characters, got {len(reason)}:"
            " shorten it (the task's logs can hold the details)"
        )
    return reason


# --- listing ---------------------------------------------------------------------------


def list_filters(
    status: TaskStatus | str | None,
    priority: Priority | str | None,
    labels: list[str] | None,
    limit: int | None,
    labels_within: list[str] | None = None,
) -> tuple[TaskStatus | None, Priority | None, list[str] | None, int | None, list[str] | None]:
    """Checked list filters: enum values coerced, label filters lists of strings,
    limit >= 0."""
    try:
        status = None if status is None else TaskStatus(status)
        priority = None if priority is None else Priority(priority)
    except ValueError as exc:
        raise ConfigError(f"bad list filter: {exc}") from exc
    for name, given in (("labels", labels), ("labels_within", labels_within)):
        if given is not None and (
            not isinstance(given, list) or not all(isinstance(x, str) for x in given)
        ):
            raise ConfigError(f"{name} must be a list of strings, got {given!r}")
    return status, priority, labels, require_limit("limit", limit), labels_within


def order_key(task: Task) -> tuple[int, float, str]:
    """Most urgent first, then oldest, then id: the order of every list."""
    return (task.priority.rank, ts(task.created_at) or 0.0, task.id)


def matches(
    task: Task,
    status: TaskStatus | None,
    priority: Priority | None,
    project: str | None,
    claimed_by: str | None,
    labels: list[str] | None,
    labels_within: list[str] | None = None,
) -> bool:
    """Whether a task passes the plain field filters (``ready`` needs its dependencies)."""
    return (
        (status is None or task.status == status)
        and (priority is None or task.priority == priority)
        and (project is None or task.project == project)
        and (claimed_by is None or task.claimed_by == claimed_by)
        and (not labels or set(labels) <= set(task.labels))
        and (labels_within is None or set(task.labels) <= set(labels_within))
    )


# --- transitions (pure: each returns a new Task) ---------------------------------------


def claimed(task: Task, agent_id: str, now: float, lease_seconds: float, job_id: str) -> Task:
    """In progress for ``agent_id`` until ``now + lease_seconds``, under quota ``job_id``."""
    return task.model_copy(
        update={
            "job_id": job_id,
            "status": TaskStatus.IN_PROGRESS,
            "claimed_by": agent_id,
            "claimed_at": _now(now),
            "lease_expires_at": _now(now + lease_seconds),
            "lease_seconds": lease_seconds,
            "updated_at": _now(now),
        }
    )


def renewed(task: Task, now: float, lease_seconds: float) -> Task:
    """The lease pushed to ``now + lease_seconds`` (and its length recorded)."""
    return task.model_copy(
        update={
            "lease_expires_at": _now(now + lease_seconds),
            "lease_seconds": lease_seconds,
            "updated_at": _now(now),
        }
    )


_NO_LEASE = {"lease_expires_at": None, "lease_seconds": None}
_NO_CLAIM = {"claimed_by": "", "claimed_at": None, **_NO_LEASE}


def released(task: Task, now: float) -> Task:
    """Back to pending, unclaimed, no retry counted."""
    return task.model_copy(
        update={**_NO_CLAIM, "status": TaskStatus.PENDING, "updated_at": _now(now)}
    )


def given_back(task: Task, now: float) -> Task:
    """Released by its holder: pending, and the claim's job id goes too.

    Whoever releases a claim deals with its reservation; a failure or an expired
    lease keeps the job id, for the dispatcher to expire the dead attempt's.
    """
    return released(task, now).model_copy(update={"job_id": ""})


def completed(task: Task, result: TaskResult, now: float) -> Task:
    """Done: the claimer stays recorded; the lease ends."""
    return task.model_copy(
        update={
            "status": TaskStatus.COMPLETED,
            "result": result.model_copy(deep=True),
            "progress": 100,
            **_NO_LEASE,
            "updated_at": _now(now),
        }
    )


def dead_letter(task: Task, now: float, reason: str) -> Task:
    """Failed for good (the dead letter), unclaimed, with the reason; no next attempt."""
    return task.model_copy(
        update={
            **_NO_CLAIM,
            "status": TaskStatus.FAILED,
            "fail_reason": reason,
            "next_attempt_at": None,
            "updated_at": _now(now),
        }
    )


def failed_attempt(
    task: Task, now: float, reason: str, retry_at: float | None, result: TaskResult | None
) -> Task:
    """A real failure: one more retry counted; past ``max_retries`` the dead letter."""
    task = task.model_copy(
        update={
            "retry_count": task.retry_count + 1,
            "last_attempt": _now(now),
            "result": result.model_copy(deep=True) if result else task.result,
        }
    )
    if task.retry_count > task.max_retries:
        return dead_letter(task, now, f"max retries exceeded ({task.max_retries}): {reason}")
    released_task = released(task, now)
    return released_task.model_copy(update={"next_attempt_at": dt(retry_at)})


def lease_expired_reason(task: Task) -> str:
    """The failure reason recorded when a lease runs out."""
    return f"lease of agent {task.claimed_by} expired"


def blocked_by(task: Task, failed_id: str, now: float) -> Task:
    """A dependent of a dead-lettered task: blocked, naming it."""
    blockers = [*task.blockers, failed_id] if failed_id not in task.blockers else task.blockers
    return task.model_copy(
        update={"status": TaskStatus.BLOCKED, "blockers": blockers, "updated_at": _now(now)}
    )


def require_rerunnable(task: Task) -> None:
    """ConflictError unless ``task`` is failed, saying what its status allows instead."""
    if task.status == TaskStatus.FAILED:
        return
    reasons: dict[TaskStatus | None, str] = {
        TaskStatus.PENDING: "it is waiting to run already",
        TaskStatus.IN_PROGRESS: (
            f"agent {task.claimed_by or '?'} is running it; cancel it first to run it"
            " again from the start"
        ),
        TaskStatus.COMPLETED: "a completed task stays completed; submit a new task to run it again",
        TaskStatus.BLOCKED: (
            f"it waits on failed task(s) {', '.join(task.blockers)}: retry those, and it is"
            " unblocked with them"
            if task.blockers
            else "it is on hold: update its status to pending to release it"
        ),
    }
    what = reasons.get(task.status, "only a failed task can be retried")
    raise ConflictError(f"task {task.id} is {task.status}, not failed: {what}")


def require_reruns(reruns: int | None) -> None:
    """ConfigError unless ``reruns`` is None or a count a task can hold."""
    if reruns is not None:
        require_amount("reruns", reruns)


def retry_wanted(task: Task, reruns: int | None) -> bool:
    """Whether an operator's retry of ``task`` is still to be made.

    ``reruns`` is the task's :attr:`Task.reruns` the asker saw (None: no condition).
    When the task has been retried since, the retry asked for was made already (this
    one is a repeat, after a lost answer, say, or a second operator's): False, and
    nothing is to change, even when that re-run failed again. Otherwise True when the
    task is failed; ConflictError when it is not (:func:`require_rerunnable`), or when
    ``reruns`` is ahead of the task's own count.
    """
    if reruns is not None:
        if reruns < task.reruns:
            return False
        if reruns > task.reruns:
            raise ConflictError(
                f"task {task.id} has been retried {task.reruns} time(s), not {reruns}:"
                " give the reruns count the task shows"
            )
    require_rerunnable(task)
    return True


def rerun(task: Task, now: float, blockers: list[str]) -> Task:
    """A failed task started afresh by an operator: pending (blocked when a dependency
    is failed, naming the ``blockers`` :func:`creation_blockers` finds), with no retry
    counted, no backoff, failure, result, progress or claim, and one more rerun. Id,
    title, description, labels, priority, dependencies and notes stay.

    The last attempt's job id goes: the store retires it (as a release does), so a
    report or claim of that attempt arriving late is refused.
    """
    return task.model_copy(
        update={
            **_NO_CLAIM,
            "status": TaskStatus.BLOCKED if blockers else TaskStatus.PENDING,
            "blockers": blockers,
            "retry_count": 0,
            "last_attempt": None,
            "next_attempt_at": None,
            "fail_reason": "",
            "result": None,
            "progress": 0,
            "job_id": "",
            "reruns": task.reruns + 1,
            "updated_at": _now(now),
        }
    )


def unblock_dependents(
    retried: Task,
    dependents_of: Callable[[str], Iterable[Task]],
    task_of: Callable[[str], Task],
    now: float,
) -> list[Task]:
    """The tasks a retry of ``retried`` changes, as they become (in dependency order).

    Every task downstream of it that a failed task blocks has its ``blockers`` found
    again from its dependencies as they now are (:func:`creation_blockers`: the
    failed ones, and the blocked ones' blockers), dependencies first: those the
    retry leaves with none are pending again, the others stay blocked naming what
    still blocks them. So a blocked task names only failed tasks, however the
    failures, cancellations and retries upstream came in turn (lists edited name by
    name kept, past a task whose own blockers a retry had found again, names of
    tasks retried since: blocked for good). A hold (blocked, naming nothing), a
    pending task and a failed one (cancelled while blocked: its history) stay as
    they are, the failed one walked through. ``dependents_of(id)`` gives the stored
    tasks that depend on ``id``, ``task_of(id)`` a stored task.
    """
    below: dict[str, Task] = {}
    children: dict[str, list[str]] = {}
    queue = deque([retried.id])
    while queue:
        parent = queue.popleft()
        found = sorted(dependents_of(parent), key=lambda t: t.id)
        children[parent] = [t.id for t in found]
        for task in found:
            if task.id not in below:
                below[task.id] = task
                queue.append(task.id)
    # Kahn's order (ids sorted among equals, as the Lua does): each task after its
    # dependencies below the retried one, which it reads as they become.
    waits = {t.id: sum(d in below for d in t.dependencies) for t in below.values()}
    ready = deque(child for child in children[retried.id] if waits[child] == 0)
    now_as: dict[str, Task] = {retried.id: retried}
    changed: list[Task] = []
    while ready:
        task = below[ready.popleft()]
        if task.status == TaskStatus.BLOCKED and task.blockers:
            blockers = creation_blockers(now_as.get(d) or task_of(d) for d in task.dependencies)
            if set(blockers) != set(task.blockers):
                status = TaskStatus.BLOCKED if blockers else TaskStatus.PENDING
                update = {"status": status, "blockers": blockers, "updated_at": _now(now)}
                task = task.model_copy(update=update)
                changed.append(task)
        now_as[task.id] = task
        for child in children[task.id]:
            waits[child] -= 1
            if waits[child] == 0:
                ready.append(child)
    return changed


def updated(task: Task, update: TaskUpdate, now: float, if_pending: RunSeen | None = None) -> Task:
    """Apply a partial update; a status change must be one an update may make.

    Allowed: pending <-> blocked (a hold; a task blocked by a failed dependency stays
    blocked), and any unfinished task -> failed (the dispatcher's dead letter). Claims
    go through claim / release / complete, and final tasks stay final: of a completed
    or failed task only the notes may change. With ``if_pending``, only while the
    task is as the caller read it (:func:`require_seen`), checked first.
    """
    require_update(update, if_pending)
    require_seen(task, if_pending)
    fields = update.model_dump(exclude_none=True, exclude={"status"})
    target = update.status
    if task.status in FINAL and set(fields) - {"notes"}:
        changed = ", ".join(sorted(set(fields) - {"notes"}))
        raise ConflictError(
            f"task {task.id} is {task.status}, which is final: only its notes may change,"
            f" not {changed}"
        )
    new = task.model_copy(update={**fields, "updated_at": _now(now)})
    if target is None or target == task.status:
        return new
    if target == TaskStatus.FAILED and task.status not in FINAL:
        return dead_letter(new, now, update.fail_reason or "marked failed")
    _check_status_change(task, target)
    return new.model_copy(update={"status": target})


def require_update(update: TaskUpdate, if_pending: RunSeen | None = None) -> None:
    """ConfigError unless ``update`` is a TaskUpdate a store can hold and
    ``if_pending`` None or a RunSeen of counts a task can hold."""
    if not isinstance(update, TaskUpdate):
        raise ConfigError(f"update needs a TaskUpdate, got {type(update).__name__}")
    if update.retry_count is not None:
        require_amount("retry_count", update.retry_count)
    if if_pending is None:
        return
    if not isinstance(if_pending, RunSeen):
        raise ConfigError(f"if_pending needs a RunSeen, got {type(if_pending).__name__}")
    require_amount("if_pending.reruns", if_pending.reruns)
    require_amount("if_pending.retry_count", if_pending.retry_count)


def require_seen(task: Task, seen: RunSeen | None) -> None:
    """ConflictError unless ``task`` is still the pending task ``seen`` describes: the
    same run (``reruns``) and the same failed attempts counted in it (``retry_count``).

    What a failure record (the dispatcher's) is computed from. A claim made since
    shows as not pending, or, once it ended, as a count moved (a failure, an expired
    lease) or as a final status; a retry by an operator as another run. A claim given
    back since counted nothing, so the record is still the task's next one.
    ``redis/lua/task_update.lua`` mirrors it.
    """
    if seen is None:
        return
    if (task.status, task.reruns, task.retry_count) == (
        TaskStatus.PENDING,
        seen.reruns,
        seen.retry_count,
    ):
        return
    raise ConflictError(
        f"task {task.id} changed since it was read: it is {task.status}, retried"
        f" {task.reruns} time(s), with {task.retry_count} failed attempt(s) counted, not"
        f" pending, retried {seen.reruns} time(s), with {seen.retry_count}: nothing updated"
    )


def _check_status_change(task: Task, target: TaskStatus) -> None:
    current = task.status
    if current in FINAL:
        raise ConflictError(f"task {task.id} is {current}, which is final")
    if target == TaskStatus.IN_PROGRESS:
        raise ConflictError(f"task {task.id}: use claim to put it in progress")
    if target == TaskStatus.COMPLETED:
        raise ConflictError(f"task {task.id}: use complete to finish it")
    if current == TaskStatus.IN_PROGRESS:
        raise ConflictError(f"task {task.id} is claimed: use release or complete")
    if current == TaskStatus.BLOCKED and task.blockers:
        raise ConflictError(
            f"task {task.id} stays blocked while failed task(s) {', '.join(task.blockers)} block it"
        )


# --- the events a transition records (the store's outbox) -----------------------------

#: ``source`` of the events a task store records
STORE_SOURCE = "agentic.tasks"


def lifecycle_events(before: Task, after: Task, reason: str = "") -> list[Event]:
    """The events a store records, with the change, when ``before`` became ``after``.

    Claimed (pending -> in progress); then, for the claim that ends: completed, an
    attempt that failed (a retry counted) or requeued (given back without one), each
    with ``reason``, the why of the change (the failure, the holder's reason for
    giving the task back; "released" when it gave none); and ``task_dead_lettered``
    whenever a task becomes failed. Other changes record nothing. Ids come from
    :func:`~agentic.events.transition_id`; ``redis/lua/task_lib.lua`` (record)
    mirrors this function.
    """
    if before.status == TaskStatus.PENDING and after.status == TaskStatus.IN_PROGRESS:
        return [_event(EventType.TASK_CLAIMED, after, after.claimed_by, after.job_id)]
    agent, job = before.claimed_by, before.job_id
    events = []
    if before.status == TaskStatus.IN_PROGRESS and after.status != TaskStatus.IN_PROGRESS:
        if after.status == TaskStatus.COMPLETED:
            events.append(_event(EventType.TASK_COMPLETED, after, agent, job))
        elif after.retry_count > before.retry_count:
            count = after.retry_count
            why = reason or after.fail_reason  # an update's dead letter gives no other
            failed = _event(EventType.TASK_FAILED, after, agent, job, retry_count=count, reason=why)
            events.append(failed)
        elif after.status == TaskStatus.PENDING:
            why = reason or "released"
            events.append(_event(EventType.TASK_REQUEUED, after, agent, job, reason=why))
    if after.status == TaskStatus.FAILED and before.status != TaskStatus.FAILED:
        reason = after.fail_reason
        events.append(_event(EventType.TASK_DEAD_LETTERED, after, agent, job, reason=reason))
    return events


def blocked_reason(failed_id: str) -> str:
    """The reason of the ``task_blocked`` a failure records for a task it blocks."""
    return f"blocked: task {failed_id} failed"


def blocked_events(failed_id: str, blocked: Iterable[Task]) -> list[Event]:
    """What a task that becomes failed records for the tasks downstream it blocks:
    ``task_blocked`` for each that was pending (one blocked already only gains a
    blocker), with the reason and its blockers, by no agent and under no job (a new
    event each time: a task unblocked by a retry can be blocked again), in id order.
    After the failure's own events; ``redis/lua/task_lib.lua`` (record) mirrors it."""
    reason = blocked_reason(failed_id)
    return [
        _event(EventType.TASK_BLOCKED, task, "", "", reason=reason, blockers=task.blockers)
        for task in sorted(blocked, key=lambda task: task.id)
    ]


#: the reason of the ``task_requeued`` a retry records for the task retried
RERUN_REASON = "retried by an operator"


def unblocked_reason(retried_id: str) -> str:
    """The reason of the ``task_requeued`` a retry records for a dependent it unblocks."""
    return f"unblocked: {retried_id} was {RERUN_REASON}"


def rerun_events(retried: Task, changed: Iterable[Task]) -> list[Event]:
    """What a retry records: ``task_requeued`` for the task (when it is pending, not
    blocked by a failed dependency) and for each dependent it makes pending, by no
    agent and under no job (each a new event: a task can be retried, and
    unblocked, more than once). ``redis/lua/task_retry.lua`` mirrors it."""
    pending = [t for t in (retried, *changed) if t.status == TaskStatus.PENDING]
    return [
        _event(
            EventType.TASK_REQUEUED,
            task,
            "",
            "",
            reason=RERUN_REASON if task.id == retried.id else unblocked_reason(retried.id),
        )
        for task in pending
    ]


def _event(kind: EventType, task: Task, agent_id: str, job_id: str, **payload: object) -> Event:
    return Event(
        id=transition_id(task.id, kind, job_id, task.reruns),
        type=kind,
        time=task.updated_at or datetime.now(UTC),
        source=STORE_SOURCE,
        task_id=task.id,
        agent_id=agent_id,
        payload={"job_id": job_id, **payload},
    )
