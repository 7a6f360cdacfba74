"""TaskStore on an SQLite file, shared by every process of one machine.

Every write is one ``BEGIN IMMEDIATE`` transaction: the rules of ``stores/_tasks.py``
run on rows read under the write lock, and nothing is half-written on error (any
exception rolls back). The claim is a single compare-and-set ``UPDATE ... WHERE
status = 'pending' AND NOT EXISTS (an unfinished dependency)``, so two processes can
never both win it.

Each Task field is a column: times are REAL epoch seconds, lists and the result JSON
text. Dependencies are also rows of ``task_deps`` (indexed both ways) so readiness and
the dead-letter cascade are joins. A partial index holds only leased tasks by expiry,
so ``requeue_expired`` reads the expired ones and nothing else: O(expired).
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from ...errors import ConflictError, NotFoundError, StoreError
from ...models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from .. import _tasks as rules
from .._url import StoreURL
from ..base import LogPage, Retried, RunSeen, TaskStore, event_json, require_count, require_id
from . import _path_and_timeout
from ._db import DEFAULT_TIMEOUT, Database, Migration
from .eventlog import MIGRATIONS as EVENT_MIGRATIONS
from .eventlog import append_rows

__all__ = ["SQLiteTaskStore", "task_store_from_url"]

MIGRATIONS: list[Migration] = [
    (
        """CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            description TEXT NOT NULL,
            priority TEXT NOT NULL,
            priority_rank INTEGER NOT NULL,  -- 0 critical .. 3 low, for ORDER BY
            status TEXT NOT NULL,
            labels TEXT NOT NULL,            -- JSON arrays of strings
            files TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            claimed_by TEXT NOT NULL,
            claimed_at REAL,
            project TEXT NOT NULL,
            dependencies TEXT NOT NULL,      -- in the order given; task_deps for joins
            blockers TEXT NOT NULL,
            max_retries INTEGER NOT NULL,
            retry_count INTEGER NOT NULL,
            last_attempt REAL,
            fail_reason TEXT NOT NULL,
            next_attempt_at REAL,
            lease_expires_at REAL,           -- set only while in progress
            progress INTEGER NOT NULL,
            notes TEXT NOT NULL,
            model TEXT NOT NULL,
            estimated_tokens INTEGER NOT NULL,
            job_id TEXT NOT NULL DEFAULT '', -- the quota reservation of the last claim
            result TEXT                      -- TaskResult JSON
        )""",
        "CREATE INDEX tasks_by_order ON tasks (priority_rank, created_at, id)",
        "CREATE INDEX tasks_by_status ON tasks (status, priority_rank, created_at, id)",
        """CREATE INDEX tasks_by_lease ON tasks (lease_expires_at)
            WHERE lease_expires_at IS NOT NULL""",
        """CREATE TABLE task_deps (
            task_id TEXT NOT NULL,
            dep_id TEXT NOT NULL,
            PRIMARY KEY (task_id, dep_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX task_deps_by_dep ON task_deps (dep_id, task_id)",
        "CREATE TABLE task_keys (key TEXT PRIMARY KEY, task_id TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE task_logs (
            task_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            line TEXT NOT NULL,
            PRIMARY KEY (task_id, seq)
        ) WITHOUT ROWID""",
    ),
    (
        # Job ids that may no longer claim a task; made = 1 if that claim was made
        # (replaced by a later claim, or released), 0 if withdrawn before it was.
        """CREATE TABLE task_retired_jobs (
            task_id TEXT NOT NULL,
            job_id TEXT NOT NULL,
            made INTEGER NOT NULL,
            PRIMARY KEY (task_id, job_id)
        ) WITHOUT ROWID""",
    ),
    (
        # The length of the lease of the last claim or renewal (Task.lease_seconds);
        # NULL for the tasks already stored, as for any task no lease holds.
        "ALTER TABLE tasks ADD COLUMN lease_seconds REAL",
    ),
    (
        # A runner's poll lists the tasks in progress claimed for it: by this index it
        # reads its own, not every task in progress in the fleet (10,000 of them took
        # 1.2 ms a poll without it).
        """CREATE INDEX tasks_by_claim ON tasks (claimed_by, status, priority_rank,
            created_at, id) WHERE status = 'in_progress'""",
    ),
    (
        # waiting = 1: a dependency of the task is not completed (dependencies only
        # ever complete, so it is set once, at creation, and cleared once). The ready
        # listing reads the pending tasks not waiting by an index of their own, not
        # walking a chain of thousands waiting behind one task. Triggers keep it, so
        # any writer of the file does (a process of an older version too).
        "ALTER TABLE tasks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0",
        """UPDATE tasks SET waiting = 1 WHERE EXISTS (
            SELECT 1 FROM task_deps d JOIN tasks dep ON dep.id = d.dep_id
            WHERE d.task_id = tasks.id AND dep.status != 'completed')""",
        "CREATE INDEX tasks_ready ON tasks (status, waiting, priority_rank, created_at, id)",
        """CREATE TRIGGER tasks_dependency_added AFTER INSERT ON task_deps
            WHEN (SELECT status FROM tasks WHERE id = NEW.dep_id) IS NOT 'completed'
            BEGIN UPDATE tasks SET waiting = 1 WHERE id = NEW.task_id; END""",
        """CREATE TRIGGER tasks_dependency_completed AFTER UPDATE OF status ON tasks
            WHEN NEW.status = 'completed' AND OLD.status != 'completed'
            BEGIN
                UPDATE tasks SET waiting = 0 WHERE waiting = 1
                AND id IN (SELECT task_id FROM task_deps WHERE dep_id = NEW.id)
                AND NOT EXISTS (
                    SELECT 1 FROM task_deps d JOIN tasks dep ON dep.id = d.dep_id
                    WHERE d.task_id = tasks.id AND dep.status != 'completed');
            END""",
    ),
    (
        # How many times the task was retried after it failed (Task.reruns). A retry
        # changes no dependency's completion, so the waiting flag stays right.
        "ALTER TABLE tasks ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0",
    ),
]

#: The fewest of the steps above a process must know to use the task tables (recorded
#: in the file for older processes, Database.migrate). Every step since the second
#: leaves them usable to one that does not know it: new columns with defaults, an
#: index, triggers that keep the waiting flag for any writer. A step that an older
#: process would get wrong (a column it must write, a meaning changed) raises it to
#: the new count.
OLDEST = 2

# Derived from the model so that a field added to Task without a migration fails
# loudly (no such column) instead of being dropped silently.
_FIELDS = tuple(Task.model_fields)
_TIMES, _LISTS = rules.TIME_FIELDS, rules.LIST_FIELDS
_SELECT = f"SELECT {', '.join(_FIELDS)} FROM tasks"
# The same columns from the outer row ``t`` of the queries that test readiness.
_SELECT_T = f"SELECT {', '.join('t.' + f for f in _FIELDS)} FROM tasks AS t"
_INSERT = (
    f"INSERT INTO tasks ({', '.join(_FIELDS)}, priority_rank)"
    f" VALUES ({', '.join('?' for _ in _FIELDS)}, ?)"
)
_UPDATE = (
    f"UPDATE tasks SET {', '.join(f + ' = ?' for f in _FIELDS)}, priority_rank = ? WHERE id = ?"
)

_COMPLETED = TaskStatus.COMPLETED.value
# Dependencies of task t.id that are not completed (t is the outer row).
_UNFINISHED = f"""SELECT 1 FROM task_deps d JOIN tasks dep ON dep.id = d.dep_id
    WHERE d.task_id = t.id AND dep.status != '{_COMPLETED}'"""
_READY = f"(t.status = '{TaskStatus.PENDING.value}' AND NOT EXISTS ({_UNFINISHED}))"
# ?5 is the claim's job id: one that already had its attempt may not claim again.
_CLAIM = f"""UPDATE tasks AS t SET status = '{TaskStatus.IN_PROGRESS.value}', claimed_by = ?1,
    claimed_at = ?2, lease_expires_at = ?3, updated_at = ?4, job_id = ?5, lease_seconds = ?7
    WHERE id = ?6
    AND {_READY} AND (?5 = '' OR (t.job_id != ?5 AND NOT EXISTS (
        SELECT 1 FROM task_retired_jobs r WHERE r.task_id = t.id AND r.job_id = ?5)))"""
_RETIRED = "SELECT made FROM task_retired_jobs WHERE task_id = ? AND job_id = ?"
_RETIRE = "INSERT OR IGNORE INTO task_retired_jobs (task_id, job_id, made) VALUES (?, ?, ?)"
_JOB = "SELECT job_id FROM tasks WHERE id = ?"
_DEPENDENTS = f"{_SELECT_T} JOIN task_deps d ON d.task_id = t.id WHERE d.dep_id = ?"
# Pending/blocked tasks downstream of a task, through pending/blocked tasks only (the
# ones a dead letter blocks; a manually failed dependent already blocks its own).
_OPEN = f"('{TaskStatus.PENDING.value}', '{TaskStatus.BLOCKED.value}')"
_DOWNSTREAM = f"""WITH RECURSIVE down(id) AS (
        SELECT d.task_id FROM task_deps d JOIN tasks t ON t.id = d.task_id
            WHERE d.dep_id = ? AND t.status IN {_OPEN}
        UNION
        SELECT d.task_id FROM task_deps d JOIN down ON d.dep_id = down.id
            JOIN tasks t ON t.id = d.task_id WHERE t.status IN {_OPEN}
    ) {_SELECT} WHERE id IN down"""


def _task(row: sqlite3.Row) -> Task:
    """The task a row holds; a row that does not parse (damaged, or edited by hand) is
    a StoreError saying so, as on Redis, not a parser's error."""
    data = dict(zip(_FIELDS, row, strict=True))
    try:
        for name in _TIMES:
            data[name] = rules.dt(data[name])
        for name in _LISTS:
            data[name] = json.loads(data[name])
        data["result"] = None if data["result"] is None else json.loads(data["result"])
        return Task.model_validate(data)
    except (ValueError, TypeError, OverflowError, ValidationError) as exc:
        raise StoreError(f"corrupt task record {data.get('id')!r} in SQLite: {exc}") from exc


def _values(task: Task) -> list[object]:
    values: list[object] = []
    for name in _FIELDS:
        value = getattr(task, name)
        if name in _TIMES:
            value = rules.ts(value)
        elif name in _LISTS:
            value = json.dumps(value)
        elif isinstance(value, TaskResult):
            value = value.model_dump_json()
        values.append(value)
    values.append(task.priority.rank)
    return values


def _missing(task_id: str) -> NotFoundError:
    return NotFoundError(f"task {task_id!r} does not exist")


class SQLiteTaskStore(TaskStore):
    """TaskStore over one SQLite file; safe across threads and processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
        record_events: bool = False,
    ) -> None:
        self._clock = clock
        self._db = Database.open(path, timeout, "tasks", MIGRATIONS, OLDEST)
        # The lifecycle of tasks goes to this file's event log, in the transaction of
        # each change (the log's tables made here when the log was never opened).
        self._record_events = record_events
        if record_events:
            self._db.migrate("events", EVENT_MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def store_id(self) -> str:
        return self._db.store_id()

    # --- helpers, inside a transaction ---
    @staticmethod
    def _load(conn: sqlite3.Connection, task_id: str) -> Task:
        row = conn.execute(f"{_SELECT} WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise _missing(task_id)
        return _task(row)

    @staticmethod
    def _save(conn: sqlite3.Connection, task: Task) -> Task:
        conn.execute(_UPDATE, [*_values(task), task.id])
        if task.status == TaskStatus.COMPLETED:  # no claim of it can be made any more
            conn.execute("DELETE FROM task_retired_jobs WHERE task_id = ?", (task.id,))
        return task

    def _record(
        self, conn: sqlite3.Connection, before: Task, after: Task, reason: str = ""
    ) -> None:
        """Append the events of ``before`` -> ``after`` to the log, in this transaction."""
        if self._record_events:
            events = rules.lifecycle_events(before, after, reason)
            append_rows(conn, [(event.id, event_json(event)) for event in events])

    def _save_outcome(
        self, conn: sqlite3.Connection, before: Task, after: Task, now: float, reason: str = ""
    ) -> Task:
        """Save ``after`` and record its events; a task that just became failed blocks
        its dependents."""
        self._save(conn, after)
        self._record(conn, before, after, reason)
        if after.status == TaskStatus.FAILED and before.status != TaskStatus.FAILED:
            newly = []
            for row in conn.execute(_DOWNSTREAM, (after.id,)).fetchall():
                task = _task(row)
                blocked = self._save(conn, rules.blocked_by(task, after.id, now))
                if task.status == TaskStatus.PENDING:
                    newly.append(blocked)
            if self._record_events and newly:
                events = rules.blocked_events(after.id, newly)
                append_rows(conn, [(event.id, event_json(event)) for event in events])
        return after

    @staticmethod
    def _unfinished(conn: sqlite3.Connection, task: Task) -> builtins.list[str]:
        rows = conn.execute(
            f"""SELECT d.dep_id FROM task_deps d JOIN tasks dep ON dep.id = d.dep_id
                WHERE d.task_id = ? AND dep.status != '{_COMPLETED}'""",
            (task.id,),
        )
        unfinished = {r[0] for r in rows}
        return [d for d in task.dependencies if d in unfinished]

    # --- TaskStore ---
    def create(self, task: Task, idempotency_key: str | None = None) -> Task:
        prepared = rules.prepare_new(task)
        if idempotency_key is not None:
            require_id("idempotency key", idempotency_key)
        with self._db.transaction("creating a task") as conn:
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT task_id FROM task_keys WHERE key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    first = self._load(conn, row[0])
                    return rules.first_created(idempotency_key, prepared, first)
            if (
                prepared.id
                and conn.execute("SELECT 1 FROM tasks WHERE id = ?", (prepared.id,)).fetchone()
            ):
                raise ConflictError(f"task {prepared.id!r} already exists")
            found = self._many(conn, prepared.dependencies)
            missing = [d for d in prepared.dependencies if d not in found]
            if missing:
                raise NotFoundError(f"dependency {missing[0]!r} does not exist")
            blockers = rules.creation_blockers(found[d] for d in prepared.dependencies)
            new = rules.stamp_new(prepared, self._clock(), blockers)
            conn.execute(_INSERT, _values(new))
            conn.executemany(
                "INSERT INTO task_deps (task_id, dep_id) VALUES (?, ?)",
                [(new.id, d) for d in new.dependencies],
            )
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO task_keys (key, task_id) VALUES (?, ?)", (idempotency_key, new.id)
                )
        return new

    @staticmethod
    def _many(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Task]:
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        rows = conn.execute(f"{_SELECT} WHERE id IN ({marks})", list(ids)).fetchall()
        return {task.id: task for task in map(_task, rows)}

    def get(self, task_id: str) -> Task:
        rows = self._db.query(f"{_SELECT} WHERE id = ?", (task_id,), "reading a task")
        if not rows:
            raise _missing(task_id)
        return _task(rows[0])

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
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if after is not None:
            require_id("after", after)
            start = self._db.query(
                "SELECT priority_rank, created_at, id FROM tasks WHERE id = ?", [after], "paging"
            )
            if not start:
                raise NotFoundError(f"task {after!r} does not exist")
            where.append("(t.priority_rank, t.created_at, t.id) > (?, ?, ?)")
            params.extend(start[0])
        for column, value in (
            ("status", status),
            ("priority", priority),
            ("project", project),
            ("claimed_by", claimed_by),
        ):
            if value is not None:
                where.append(f"t.{column} = ?")
                params.append(str(value))
        if labels:
            where.append(
                "NOT EXISTS (SELECT 1 FROM json_each(?) AS want"
                " WHERE want.value NOT IN (SELECT value FROM json_each(t.labels)))"
            )
            params.append(json.dumps(labels))
        if within is not None:
            where.append(
                "NOT EXISTS (SELECT 1 FROM json_each(t.labels) AS has"
                " WHERE has.value NOT IN (SELECT value FROM json_each(?)))"
            )
            params.append(json.dumps(within))
        if ready is not None:
            # waiting = 0 lets the planner read the ready tasks by their index; the
            # dependencies are still checked (the flag is a shortcut, not the rule).
            where.append(f"(t.waiting = 0 AND {_READY})" if ready else f"NOT {_READY}")
        sql = (
            f"{_SELECT_T} WHERE {' AND '.join(where) or '1'}"
            " ORDER BY t.priority_rank, t.created_at, t.id LIMIT ?"
        )
        rows = self._db.query(sql, [*params, -1 if limit is None else limit], "listing tasks")
        return [_task(row) for row in rows]

    def counts(self) -> dict[TaskStatus, int]:
        rows = self._db.query(
            "SELECT status, COUNT(*) FROM tasks GROUP BY status", (), "counting tasks"
        )
        found = {str(row[0]): int(row[1]) for row in rows}
        return {status: found.get(status.value, 0) for status in TaskStatus}

    def claim(self, task_id: str, agent_id: str, lease_seconds: float, job_id: str = "") -> Task:
        require_id("agent id", agent_id)
        lease = rules.require_lease(lease_seconds)
        rules.require_job_id(job_id)
        with self._db.transaction(f"claiming task {task_id!r}") as conn:
            now = self._clock()
            before = conn.execute(_JOB, (task_id,)).fetchone()
            won = conn.execute(
                _CLAIM, (agent_id, now, now + lease, now, job_id, task_id, lease)
            ).rowcount
            if won and before[0]:
                conn.execute(_RETIRE, (task_id, before[0], 1))  # replaced: it was made
            task = self._load(conn, task_id)
            if won:
                self._record(conn, task.model_copy(update={"status": TaskStatus.PENDING}), task)
            if won or rules.claim_repeat(task, agent_id, job_id):
                return task
            unfinished = self._unfinished(conn, task)
            if task.status == TaskStatus.PENDING and not unfinished:
                retired = conn.execute(_RETIRED, (task_id, job_id)).fetchone() is not None
                rules.require_fresh_job(task, job_id, retired)
            raise rules.claim_conflict(task, unfinished)

    def withdraw_claim(self, task_id: str, job_id: str) -> bool:
        require_id("job id", job_id)
        with self._db.transaction(f"withdrawing a claim of task {task_id!r}") as conn:
            if rules.made_as_far_as_known(self._load(conn, task_id), job_id):
                return True
            conn.execute(_RETIRE, (task_id, job_id, 0))
            return bool(conn.execute(_RETIRED, (task_id, job_id)).fetchone()[0])

    def renew(
        self, task_id: str, agent_id: str, lease_seconds: float, job_id: str | None = None
    ) -> Task:
        require_id("agent id", agent_id)
        lease = rules.require_lease(lease_seconds)
        rules.require_fence(job_id)
        with self._db.transaction(f"renewing the lease of task {task_id!r}") as conn:
            task = self._load(conn, task_id)
            rules.require_holder(task, agent_id, "renew", job_id)
            return self._save(conn, rules.renewed(task, self._clock(), lease))

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
        with self._db.transaction(f"releasing task {task_id!r}") as conn:
            task = self._load(conn, task_id)
            rules.require_holder(task, agent_id, "release", job_id)
            if task.job_id:
                conn.execute(_RETIRE, (task_id, task.job_id, 1))
            after = rules.given_back(task, self._clock())
            self._record(conn, task, after, reason)
            return self._save(conn, after)

    def update(self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None) -> Task:
        rules.require_update(update, if_pending)
        with self._db.transaction(f"updating task {task_id!r}") as conn:
            task = self._load(conn, task_id)
            now = self._clock()
            after = rules.updated(task, update, now, if_pending)
            return self._save_outcome(conn, task, after, now)

    def complete(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        retry_at: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        retry_at = rules.require_completion(result, agent_id, retry_at, job_id)
        with self._db.transaction(f"completing task {task_id!r}") as conn:
            task = self._load(conn, task_id)
            rules.require_holder(task, agent_id, "complete", job_id)
            now = self._clock()
            if result.success:
                done = rules.completed(task, result, now)
                self._record(conn, task, done)
                return self._save(conn, done)
            reason = result.error_message or "the task failed"
            after = rules.failed_attempt(task, now, reason, retry_at, result)
            return self._save_outcome(conn, task, after, now, reason)

    def retry(self, task_id: str, reruns: int | None = None) -> Retried:
        require_id("task id", task_id)
        rules.require_reruns(reruns)
        with self._db.transaction(f"retrying task {task_id!r}") as conn:
            task = self._load(conn, task_id)
            if not rules.retry_wanted(task, reruns):
                return Retried(task, [], repeated=True)
            now = self._clock()
            found = self._many(conn, task.dependencies)
            blockers = rules.creation_blockers(found[d] for d in task.dependencies)
            if task.job_id:
                conn.execute(_RETIRE, (task_id, task.job_id, 1))
            again = rules.rerun(task, now, blockers)
            changed = rules.unblock_dependents(
                again,
                lambda dep_id: map(_task, conn.execute(_DEPENDENTS, (dep_id,))),
                lambda task_id: self._load(conn, task_id),
                now,
            )
            for moved in (again, *changed):
                self._save(conn, moved)
            if self._record_events:
                events = rules.rerun_events(again, changed)
                append_rows(conn, [(event.id, event_json(event)) for event in events])
        unblocked = sorted(t.id for t in changed if t.status == TaskStatus.PENDING)
        return Retried(again, unblocked)

    def requeue_expired(self) -> builtins.list[Task]:
        changed: builtins.list[Task] = []
        with self._db.transaction("requeueing expired leases") as conn:
            now = self._clock()
            rows = conn.execute(
                f"{_SELECT} WHERE lease_expires_at IS NOT NULL AND lease_expires_at <= ?"
                " ORDER BY lease_expires_at, id",
                (now,),
            ).fetchall()
            for task in map(_task, rows):
                reason = rules.lease_expired_reason(task)
                after = rules.failed_attempt(task, now, reason, None, None)
                changed.append(self._save_outcome(conn, task, after, now, reason))
        return changed

    def append_logs(self, task_id: str, lines: builtins.list[str]) -> int:
        rules.require_lines(lines)
        with self._db.transaction(f"appending logs of task {task_id!r}") as conn:
            self._load(conn, task_id)
            (start,) = conn.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM task_logs WHERE task_id = ?", (task_id,)
            ).fetchone()
            conn.executemany(
                "INSERT INTO task_logs (task_id, seq, line) VALUES (?, ?, ?)",
                [(task_id, start + i, line) for i, line in enumerate(lines)],
            )
        return int(start) + len(lines)

    def logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        require_count("offset", offset)
        limit = rules.require_limit("limit", limit)
        # Tasks are never deleted, so checking existence first cannot race the read.
        self.get(task_id)
        rows = self._db.query(
            "SELECT line FROM task_logs WHERE task_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (task_id, offset, -1 if limit is None else limit),
            f"reading logs of task {task_id!r}",
        )
        lines = [row[0] for row in rows]
        return LogPage(lines=lines, offset=offset, next_offset=offset + len(lines))


def task_store_from_url(url: StoreURL, record_events: bool = False) -> SQLiteTaskStore:
    """``sqlite://...``: a task store on that file."""
    path, timeout = _path_and_timeout(url)
    return SQLiteTaskStore(path, timeout=timeout, record_events=record_events)
