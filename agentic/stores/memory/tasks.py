"""In-process TaskStore: dicts under one lock; the rules are ``stores/_tasks.py``.

Leases sit in a heap keyed by expiry, so ``requeue_expired`` pops only what has
expired: O(expired). A renewed lease pushes a new entry; the old one is skipped when
popped because it no longer matches the task.
"""

from __future__ import annotations

import builtins
import heapq
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from ...errors import ConflictError, NotFoundError
from ...models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from .. import _tasks as rules
from .._url import StoreURL
from ..base import LogPage, Retried, RunSeen, TaskStore, require_count, require_id
from .eventlog import MemoryEventLog, memory_store_id, private_log_refused, require_memory_log

__all__ = ["MemoryTaskStore", "task_store_from_url"]


class MemoryTaskStore(TaskStore):
    """TaskStore for tests and single-process use; one lock makes each call atomic."""

    blocking = False  # one lock held for microseconds

    def __init__(
        self, clock: Callable[[], float] = time.time, events: MemoryEventLog | None = None
    ) -> None:
        self._clock = clock
        # The log the lifecycle of tasks is recorded in, under this store's lock.
        self._events = require_memory_log(events)
        self._store_id = memory_store_id(self._events)
        self._lock = threading.Lock()
        # Stored tasks are never mutated in place (transitions return copies), so
        # handing out deep copies is enough to keep callers from changing them.
        self._tasks: dict[str, Task] = {}
        self._dependents: dict[str, builtins.list[str]] = {}
        self._keys: dict[str, str] = {}
        self._leases: builtins.list[tuple[float, str]] = []
        self._logs: dict[str, builtins.list[str]] = {}
        # task id -> job ids that may no longer claim it -> whether that claim was
        # made (replaced by a later claim, or released) or withdrawn before it was
        self._retired: dict[str, dict[str, bool]] = {}

    def store_id(self) -> str:
        return self._store_id

    # --- helpers, called with the lock held ---
    def _get(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"task {task_id!r} does not exist")
        return task

    def _put(self, task: Task, reason: str = "") -> Task:
        before = self._tasks.get(task.id)
        if self._events is not None and before is not None:
            recorded = rules.lifecycle_events(before, task, reason)
            if recorded:
                self._events.append(recorded)
        self._tasks[task.id] = task
        if task.status == TaskStatus.COMPLETED:
            # No claim of it can be made any more (a failed task can be retried).
            self._retired.pop(task.id, None)
        if task.status == TaskStatus.IN_PROGRESS and task.lease_expires_at is not None:
            heapq.heappush(self._leases, (task.lease_expires_at.timestamp(), task.id))
        return task.model_copy(deep=True)

    def _unfinished(self, task: Task) -> builtins.list[str]:
        return [d for d in task.dependencies if self._tasks[d].status != TaskStatus.COMPLETED]

    def _store_outcome(self, before: Task, after: Task, now: float, reason: str = "") -> Task:
        """Store ``after``; a task that just became failed blocks its dependents."""
        stored = self._put(after, reason)
        if after.status == TaskStatus.FAILED and before.status != TaskStatus.FAILED:
            self._block_dependents(after.id, now)
        return stored

    def _block_dependents(self, failed_id: str, now: float) -> None:
        queue = deque(self._dependents.get(failed_id, ()))
        seen: set[str] = set()
        newly: builtins.list[Task] = []
        while queue:
            task_id = queue.popleft()
            if task_id in seen:
                continue
            seen.add(task_id)
            task = self._tasks[task_id]
            # Only pending/blocked tasks can depend on an unfinished task; a claim
            # needs every dependency completed.
            if task.status in {TaskStatus.PENDING, TaskStatus.BLOCKED}:
                self._tasks[task_id] = blocked = rules.blocked_by(task, failed_id, now)
                if task.status == TaskStatus.PENDING:
                    newly.append(blocked)
                queue.extend(self._dependents.get(task_id, ()))
        if self._events is not None and newly:
            self._events.append(rules.blocked_events(failed_id, newly))

    # --- TaskStore ---
    def create(self, task: Task, idempotency_key: str | None = None) -> Task:
        prepared = rules.prepare_new(task)
        if idempotency_key is not None:
            require_id("idempotency key", idempotency_key)
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._keys:
                first = self._tasks[self._keys[idempotency_key]]
                return rules.first_created(idempotency_key, prepared, first).model_copy(deep=True)
            if prepared.id in self._tasks:
                raise ConflictError(f"task {prepared.id!r} already exists")
            missing = [d for d in prepared.dependencies if d not in self._tasks]
            if missing:
                raise NotFoundError(f"dependency {missing[0]!r} does not exist")
            blockers = rules.creation_blockers(self._tasks[d] for d in prepared.dependencies)
            new = rules.stamp_new(prepared, self._clock(), blockers)
            for dependency in new.dependencies:
                self._dependents.setdefault(dependency, []).append(new.id)
            if idempotency_key is not None:
                self._keys[idempotency_key] = new.id
            return self._put(new)

    def get(self, task_id: str) -> Task:
        with self._lock:
            return self._get(task_id).model_copy(deep=True)

    def list(
        self,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        project: str | None = None,
        claimed_by: str | None = None,
        labels: builtins.list[str] | None = None,
        ready: bool | None = None,
        limit: int | None = None,
        after: str | None = None,
        labels_within: builtins.list[str] | None = None,
    ) -> builtins.list[Task]:
        status, priority, labels, limit, within = rules.list_filters(
            status, priority, labels, limit, labels_within
        )
        if after is not None:
            require_id("after", after)
        with self._lock:
            start = rules.order_key(self._get(after)) if after is not None else None
            found = [
                t
                for t in self._tasks.values()
                if (start is None or rules.order_key(t) > start)
                and rules.matches(t, status, priority, project, claimed_by, labels, within)
                and (
                    ready is None
                    or ready == (t.status == TaskStatus.PENDING and not self._unfinished(t))
                )
            ]
        found.sort(key=rules.order_key)
        return [t.model_copy(deep=True) for t in found[:limit]]

    def counts(self) -> dict[TaskStatus, int]:
        with self._lock:
            found = Counter(t.status for t in self._tasks.values())
        return {status: found[status] for status in TaskStatus}

    def claim(self, task_id: str, agent_id: str, lease_seconds: float, job_id: str = "") -> Task:
        require_id("agent id", agent_id)
        lease = rules.require_lease(lease_seconds)
        rules.require_job_id(job_id)
        with self._lock:
            task = self._get(task_id)
            if rules.claim_repeat(task, agent_id, job_id):
                return task.model_copy(deep=True)
            unfinished = self._unfinished(task)
            if task.status != TaskStatus.PENDING or unfinished:
                raise rules.claim_conflict(task, unfinished)
            rules.require_fresh_job(task, job_id, job_id in self._retired.get(task_id, {}))
            self._retire(task, made=True)
            return self._put(rules.claimed(task, agent_id, self._clock(), lease, job_id))

    def _retire(self, task: Task, made: bool, job_id: str | None = None) -> None:
        """Remember that ``job_id`` (default: the task's last claim's) may not claim it again."""
        job = task.job_id if job_id is None else job_id
        if job:
            self._retired.setdefault(task.id, {}).setdefault(job, made)

    def withdraw_claim(self, task_id: str, job_id: str) -> bool:
        require_id("job id", job_id)
        with self._lock:
            task = self._get(task_id)
            if rules.made_as_far_as_known(task, job_id):
                return True
            self._retire(task, made=False, job_id=job_id)
            return self._retired[task_id][job_id]

    def renew(
        self, task_id: str, agent_id: str, lease_seconds: float, job_id: str | None = None
    ) -> Task:
        require_id("agent id", agent_id)
        lease = rules.require_lease(lease_seconds)
        rules.require_fence(job_id)
        with self._lock:
            task = self._get(task_id)
            rules.require_holder(task, agent_id, "renew", job_id)
            return self._put(rules.renewed(task, self._clock(), lease))

    def release(
        self,
        task_id: str,
        agent_id: str | None = None,
        job_id: str | None = None,
        reason: str = "",
    ) -> Task:
        if agent_id is not None:
            require_id("agent id", agent_id)
        rules.require_fence(job_id)
        reason = rules.require_reason(reason)
        with self._lock:
            task = self._get(task_id)
            rules.require_holder(task, agent_id, "release", job_id)
            self._retire(task, made=True)
            return self._put(rules.given_back(task, self._clock()), reason)

    def update(self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None) -> Task:
        rules.require_update(update, if_pending)
        with self._lock:
            task = self._get(task_id)
            now = self._clock()
            return self._store_outcome(task, rules.updated(task, update, now, if_pending), now)

    def complete(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        retry_at: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        retry_at = rules.require_completion(result, agent_id, retry_at, job_id)
        with self._lock:
            task = self._get(task_id)
            rules.require_holder(task, agent_id, "complete", job_id)
            now = self._clock()
            if result.success:
                return self._put(rules.completed(task, result, now))
            reason = result.error_message or "the task failed"
            after = rules.failed_attempt(task, now, reason, retry_at, result)
            return self._store_outcome(task, after, now, reason)

    def retry(self, task_id: str, reruns: int | None = None) -> Retried:
        require_id("task id", task_id)
        rules.require_reruns(reruns)
        with self._lock:
            task = self._get(task_id)
            if not rules.retry_wanted(task, reruns):
                return Retried(task.model_copy(deep=True), [], repeated=True)
            now = self._clock()
            blockers = rules.creation_blockers(self._tasks[d] for d in task.dependencies)
            self._retire(task, made=True)
            again = rules.rerun(task, now, blockers)
            changed = rules.unblock_dependents(
                again,
                lambda dep_id: [self._tasks[d] for d in self._dependents.get(dep_id, ())],
                self._tasks.__getitem__,
                now,
            )
            for moved in (again, *changed):
                self._tasks[moved.id] = moved
            if self._events is not None:
                recorded = rules.rerun_events(again, changed)
                if recorded:
                    self._events.append(recorded)
            unblocked = sorted(t.id for t in changed if t.status == TaskStatus.PENDING)
            return Retried(again.model_copy(deep=True), unblocked)

    def requeue_expired(self) -> builtins.list[Task]:
        changed: builtins.list[Task] = []
        with self._lock:
            now = self._clock()
            while self._leases and self._leases[0][0] <= now:
                expires_at, task_id = heapq.heappop(self._leases)
                task = self._tasks[task_id]
                lease = task.lease_expires_at
                if task.status != TaskStatus.IN_PROGRESS or lease is None:
                    continue
                if lease.timestamp() != expires_at:
                    continue  # renewed since: a later heap entry holds the live lease
                reason = rules.lease_expired_reason(task)
                after = rules.failed_attempt(task, now, reason, None, None)
                changed.append(self._store_outcome(task, after, now, reason))
        return changed

    def append_logs(self, task_id: str, lines: builtins.list[str]) -> int:
        rules.require_lines(lines)
        with self._lock:
            self._get(task_id)
            log = self._logs.setdefault(task_id, [])
            log.extend(lines)
            return len(log)

    def logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        require_count("offset", offset)
        limit = rules.require_limit("limit", limit)
        with self._lock:
            self._get(task_id)
            log = self._logs.get(task_id, [])
            end = len(log) if limit is None else offset + limit
            lines = log[offset:end]
        return LogPage(lines=lines, offset=offset, next_offset=offset + len(lines))


def task_store_from_url(url: StoreURL, record_events: bool = False) -> MemoryTaskStore:
    """``memory://``: a new, empty task store.

    It cannot record events: its log would be private to this process, unreadable
    through any URL and never trimmed (give the store its ``events`` log instead).
    """
    url.take({})
    if record_events:
        raise private_log_refused("task events", "MemoryTaskStore")
    return MemoryTaskStore()
