"""TaskStore on Redis: a hash per task, sorted-set indexes, one Lua script per write.

Each mutation is ONE script call (``lua/task_*.lua``), so it is atomic across every
machine: the claim is a single compare-and-set, and a failure, its dead letter and
the cascade that blocks the dependents happen in the same step. Time is the server's
``TIME`` unless a clock is injected (tests). Keys are listed in
:class:`agentic.stores.keys.TaskKeys`.

Lua decides and writes; Python validates the input first and words the errors:
when a script refuses, it returns the task as it found it, and the rules of
``stores/_tasks.py`` explain why, with the memory store's messages. Should the two
rule sets ever disagree, that is reported as a StoreError instead of passing.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from pydantic import ValidationError

from ...errors import ConflictError, NotFoundError, StoreError
from ...models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from .. import _tasks as rules
from .._url import StoreURL
from ..base import Buckets, LogPage, Notices, Retried, RunSeen, TaskStore, require_count, require_id
from ..keys import EventLogKeys, TaskKeys
from ._conn import (
    DEFAULT_PREFIX,
    Script,
    checked_read,
    connect,
    now_arg,
    open_identity,
    text,
)
from .buckets import RedisBuckets
from .notices import RedisNotices

__all__ = ["RedisTaskStore", "task_store_from_url"]

_PRELUDE = ("common.lua", "log_lib.lua", "task_lib.lua")
_CREATE = Script(*_PRELUDE, "task_create.lua")
_CLAIM = Script(*_PRELUDE, "task_claim.lua")
_HOLD = Script(*_PRELUDE, "task_hold.lua")
_UPDATE = Script(*_PRELUDE, "task_update.lua")
_REQUEUE = Script(*_PRELUDE, "task_requeue.lua")
_LIST = Script(*_PRELUDE, "task_list.lua")
_APPEND_LOGS = Script(*_PRELUDE, "task_logs.lua")
_WITHDRAW = Script(*_PRELUDE, "task_withdraw.lua")
_RETRY = Script(*_PRELUDE, "task_retry.lua")

_FIELDS = tuple(Task.model_fields)


def _value(name: str, value: Any) -> str:
    """A Task field as the text the hash keeps."""
    if name in rules.TIME_FIELDS:
        return "" if value is None else repr(value.timestamp())
    if name in rules.LIST_FIELDS:
        return json.dumps(value)
    if isinstance(value, TaskResult):
        return value.model_dump_json()
    return "" if value is None else str(value)


def _pairs(task: Task) -> builtins.list[str]:
    return [part for name in _FIELDS for part in (name, _value(name, getattr(task, name)))]


def _task(fields: Mapping[str, str]) -> Task:
    """A Task from its hash fields (missing ones, from an older version, get defaults)."""
    data: dict[str, Any] = {}
    try:
        for name in _FIELDS:
            if name not in fields:
                continue
            value = fields[name]
            if name in rules.TIME_FIELDS:
                data[name] = rules.dt(float(value)) if value else None
            elif name in rules.LIST_FIELDS:
                data[name] = json.loads(value)
            elif name == "result":
                data[name] = json.loads(value) if value else None
            elif name == "lease_seconds":
                data[name] = float(value) if value else None
            else:
                data[name] = value
        return Task.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise StoreError(f"corrupt task record in Redis: {exc}") from exc


def _from_flat(raw: Sequence[object]) -> Task:
    return _task({text(k): text(v) for k, v in zip(raw[::2], raw[1::2], strict=True)})


def _missing(task_id: str) -> NotFoundError:
    return NotFoundError(f"task {task_id!r} does not exist")


def _disagreement(task_id: str, action: str) -> StoreError:
    return StoreError(
        f"Redis refused to {action} task {task_id!r} but the rules allow it: the Lua and"
        " Python task rules disagree (a bug; please report it)"
    )


class RedisTaskStore(TaskStore):
    """TaskStore shared by every machine that reaches one Redis server.

    ``client`` is a redis-py client; it is closed by :meth:`close` only when
    ``close_client`` is true (stores opened from a URL own their client).
    """

    blocking = False  # one round trip per call, bounded by the socket timeout

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
        close_client: bool = False,
        record_events: bool = False,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._keys = TaskKeys.under(require_id("prefix", prefix))
        # The event log's keys follow the task heads ('' for none): the scripts
        # record a task's lifecycle in the log with each change (task_lib.lua).
        log = EventLogKeys.under(prefix)
        logged = (log.seq, log.stream, log.ids) if record_events else ("", "", "")
        self._heads = [*self._keys.heads(), *logged]
        self._clock = clock
        self._close_client = close_client
        self._identity = open_identity(client, prefix, close_client)

    def close(self) -> None:
        if self._close_client:
            self._client.close()

    def store_id(self) -> str:
        return self._identity.check(self._client)

    def notices(self) -> Notices | None:
        return RedisNotices(self._client, self._prefix)

    def rate_buckets(self) -> Buckets | None:
        return RedisBuckets(self._client, self._prefix, self._clock)

    def _run(self, script: Script, *args: str, reads: bool = False) -> Any:
        """The script's reply; a call that ``reads`` only (a listing, whose repairs of
        its indexes any later listing redoes) is not counted as a write."""
        return script(self._client, [*self._heads, *args], identity=self._identity, reads=reads)

    def _now(self) -> str:
        return now_arg(self._clock)[0]

    def _answer(self, reply: Any, task_id: str) -> Task:
        """The task of an ``{'ok', task}`` reply; NotFoundError for ``{'missing'}``."""
        kind = text(reply[0])
        if kind == "missing":
            raise _missing(task_id)
        return _from_flat(reply[1])

    # --- TaskStore ---
    def create(self, task: Task, idempotency_key: str | None = None) -> Task:
        asked = rules.prepare_new(task)
        if idempotency_key is not None:
            require_id("idempotency key", idempotency_key)
        prepared = asked.model_copy(
            update={
                "id": asked.id or rules.new_id(),
                "status": asked.status or TaskStatus.PENDING,
            }
        )
        reply = self._run(_CREATE, self._now(), idempotency_key or "", *_pairs(prepared))
        kind = text(reply[0])
        if kind == "first" and idempotency_key is not None:
            return rules.first_created(idempotency_key, asked, _from_flat(reply[1]))
        if kind == "exists":
            raise ConflictError(f"task {prepared.id!r} already exists")
        if kind == "missing":
            raise NotFoundError(f"dependency {text(reply[1])!r} does not exist")
        return _from_flat(reply[1])

    def get(self, task_id: str) -> Task:
        # With the store id, in the same round trip: a task missing from a store
        # emptied under this process is not "unknown" (a runner would drop its report).
        key = self._keys.data(task_id)
        [raw] = checked_read(self._client, self._identity, "get task", lambda p: p.hgetall(key))
        if not raw:
            raise _missing(task_id)
        return _task({text(k): text(v) for k, v in raw.items()})

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
        reply = self._run(
            _LIST,
            "" if status is None else status.value,
            "" if priority is None else priority.value,
            # '=' marks a given value, so that an empty project can be asked for
            "" if project is None else "=" + project,
            "" if claimed_by is None else "=" + claimed_by,
            json.dumps(labels) if labels else "",
            "" if ready is None else str(int(ready)),
            "" if limit is None else str(limit),
            after or "",
            "" if within is None else json.dumps(within),
            reads=True,
        )
        if reply and not isinstance(reply[0], list):  # {'missing'}: an unknown after
            raise _missing(str(after))
        return [_from_flat(raw) for raw in reply]

    def counts(self) -> dict[TaskStatus, int]:
        # The status index has one sorted set per status and priority rank; MULTI reads
        # them all at one instant.
        ranks = [p.rank for p in Priority]
        head = self._keys.status_head

        def count(pipe: Any) -> None:
            for status in TaskStatus:
                for rank in ranks:
                    pipe.zcard(f"{head}{status.value}:{rank}")

        counted = checked_read(self._client, self._identity, "counting tasks", count, True)
        sizes = iter(counted)
        return {status: sum(int(next(sizes)) for _ in ranks) for status in TaskStatus}

    def claim(self, task_id: str, agent_id: str, lease_seconds: float, job_id: str = "") -> Task:
        require_id("agent id", agent_id)
        lease = rules.require_lease(lease_seconds)
        rules.require_job_id(job_id)
        reply = self._run(_CLAIM, self._now(), task_id, agent_id, repr(lease), job_id)
        kind = text(reply[0])
        if kind == "conflict":
            raise rules.claim_conflict(_from_flat(reply[1]), [text(d) for d in reply[2]])
        if kind == "spent":
            rules.require_fresh_job(_from_flat(reply[1]), job_id, retired=True)
            raise _disagreement(task_id, "claim")
        return self._answer(reply, task_id)

    def withdraw_claim(self, task_id: str, job_id: str) -> bool:
        require_id("job id", job_id)
        outcome = text(self._run(_WITHDRAW, task_id, job_id)[0])
        if outcome == "missing":
            raise _missing(task_id)
        return outcome == "made"

    def _hold(
        self, task_id: str, action: str, agent_id: str | None, job_id: str | None, *args: str
    ) -> Task:
        if agent_id is not None:
            require_id("agent id", agent_id)
        rules.require_fence(job_id)
        # '=' marks a given job id, so that a claim made without one can be fenced too.
        fence = "" if job_id is None else "=" + job_id
        reply = self._run(_HOLD, self._now(), task_id, action, agent_id or "", fence, *args)
        if text(reply[0]) == "conflict":
            rules.require_holder(_from_flat(reply[1]), agent_id, action, job_id)
            raise _disagreement(task_id, action)
        return self._answer(reply, task_id)

    def renew(
        self, task_id: str, agent_id: str, lease_seconds: float, job_id: str | None = None
    ) -> Task:
        require_id("agent id", agent_id)
        lease = rules.require_lease(lease_seconds)
        return self._hold(task_id, "renew", agent_id, job_id, repr(lease))

    def release(
        self,
        task_id: str,
        agent_id: str | None = None,
        job_id: str | None = None,
        reason: str = "",
    ) -> Task:
        reason = rules.require_reason(reason)
        return self._hold(task_id, "release", agent_id, job_id, reason)

    def update(self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None) -> Task:
        rules.require_update(update, if_pending)
        fields = update.model_dump(exclude_none=True, exclude={"status"})
        pairs = [part for name, value in fields.items() for part in (name, _value(name, value))]
        reply = self._run(
            _UPDATE,
            self._now(),
            task_id,
            "" if update.status is None else update.status.value,
            update.fail_reason or "marked failed",
            "" if if_pending is None else str(if_pending.reruns),
            "" if if_pending is None else str(if_pending.retry_count),
            *pairs,
        )
        if text(reply[0]) == "conflict":
            rules.updated(_from_flat(reply[1]), update, 0.0, if_pending)
            raise _disagreement(task_id, "update")
        return self._answer(reply, task_id)

    def complete(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        retry_at: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        retry_at = rules.require_completion(result, agent_id, retry_at, job_id)
        return self._hold(
            task_id,
            "complete",
            agent_id,
            job_id,
            str(int(result.success)),
            result.model_dump_json(),
            result.error_message or "the task failed",
            "" if retry_at is None else repr(retry_at),
        )

    def retry(self, task_id: str, reruns: int | None = None) -> Retried:
        require_id("task id", task_id)
        rules.require_reruns(reruns)
        reply = self._run(
            _RETRY,
            self._now(),
            task_id,
            rules.RERUN_REASON,
            rules.unblocked_reason(task_id),
            "" if reruns is None else str(reruns),
        )
        kind = text(reply[0])
        if kind in ("conflict", "repeated"):
            # The Lua refused or made no change: the Python rule must say the same.
            task = _from_flat(reply[1])
            if rules.retry_wanted(task, reruns) or kind == "conflict":
                raise _disagreement(task_id, "retry")
            return Retried(task, [], repeated=True)
        task = self._answer(reply, task_id)
        return Retried(task, sorted(text(found) for found in reply[2]))

    def requeue_expired(self) -> builtins.list[Task]:
        return [_from_flat(raw) for raw in self._run(_REQUEUE, self._now())]

    def append_logs(self, task_id: str, lines: builtins.list[str]) -> int:
        rules.require_lines(lines)
        length = int(self._run(_APPEND_LOGS, task_id, *lines))
        if length < 0:
            raise _missing(task_id)
        return length

    def logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        require_count("offset", offset)
        limit = rules.require_limit("limit", limit)
        end = -1 if limit is None else offset + limit - 1
        data, logs = self._keys.data(task_id), self._keys.logs(task_id)
        # MULTI: the existence check and the read see one state.
        exists, raw = checked_read(
            self._client,
            self._identity,
            "read task logs",
            lambda pipe: pipe.exists(data).lrange(logs, offset, end),
            transaction=True,
        )
        if not exists:
            raise _missing(task_id)
        # LRANGE offset offset-1 would mean "to the end" when offset is 0.
        lines = [] if limit == 0 else [text(line) for line in raw]
        return LogPage(lines=lines, offset=offset, next_offset=offset + len(lines))


def task_store_from_url(url: StoreURL, record_events: bool = False) -> RedisTaskStore:
    """``redis://``: a task store on the server of ``url`` (pinged at open)."""
    conn = connect(url)
    return RedisTaskStore(
        conn.client, prefix=conn.prefix, close_client=True, record_events=record_events
    )
