"""The task store's outbox, on every backend: each change records its lifecycle event in
the event log in the same atomic step, with an id every writer of it derives alike."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agentic.errors import ConfigError, ConflictError
from agentic.events import Event, EventType, transition_id
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.stores.base import EventLog, TaskStore, event_json
from agentic.stores.keys import EventLogKeys
from tests.conftest import Backend, fake_redis_6
from tests.test_task_store import _make_store

CLAIMED, COMPLETED, FAILED, REQUEUED, DEAD, BLOCKED = (
    EventType.TASK_CLAIMED,
    EventType.TASK_COMPLETED,
    EventType.TASK_FAILED,
    EventType.TASK_REQUEUED,
    EventType.TASK_DEAD_LETTERED,
    EventType.TASK_BLOCKED,
)


#: Each recorded event's JSON as stored, in log order
Bodies = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def pair(stored: tuple[TaskStore, EventLog, Bodies]) -> tuple[TaskStore, EventLog]:
    """A task store that records events, and the event log of the same storage."""
    return stored[0], stored[1]


@pytest.fixture
def stored(
    backend: Backend, request: pytest.FixtureRequest
) -> Iterator[tuple[TaskStore, EventLog, Bodies]]:
    """A recording task store, its event log, and how to read the log's raw bodies."""
    store, log, bodies = recording_store(backend, request)
    yield store, log, bodies
    store.close()
    log.close()


def recording_store(
    backend: Backend, request: pytest.FixtureRequest
) -> tuple[TaskStore, EventLog, Bodies]:
    """A task store on ``backend`` that records events, its event log, and how to read
    the log's raw bodies (the caller closes the two)."""
    store: TaskStore
    log: EventLog
    bodies: Bodies
    if backend.name == "memory":
        from agentic.stores.memory import MemoryEventLog
        from agentic.stores.memory.tasks import MemoryTaskStore

        log = memory_log = MemoryEventLog()
        store = MemoryTaskStore(clock=backend.clock, events=log)

        def bodies() -> list[dict[str, Any]]:
            return [json.loads(event_json(e.event)) for e in memory_log.read()]
    elif backend.name == "sqlite":
        from agentic.stores.sqlite import SQLiteEventLog
        from agentic.stores.sqlite.tasks import SQLiteTaskStore

        path = Path("/" + urlsplit(backend.url or "").path.lstrip("/"))
        store = SQLiteTaskStore(path, clock=backend.clock, record_events=True)
        log = SQLiteEventLog(path)

        def bodies() -> list[dict[str, Any]]:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                rows = conn.execute("SELECT body FROM events ORDER BY position").fetchall()
            return [json.loads(body) for (body,) in rows]
    else:
        from agentic.stores.redis import RedisEventLog
        from agentic.stores.redis.tasks import RedisTaskStore

        client: Any
        if backend.name == "redis":
            import redis

            parts = urlsplit(backend.url or "")
            client = redis.Redis(host=parts.hostname or "", port=parts.port or 6379)
            prefix = parse_qs(parts.query)["prefix"][0]
        else:
            client, prefix = fake_redis_6(), "t"
        request.addfinalizer(client.close)
        store = RedisTaskStore(client, prefix=prefix, clock=backend.clock, record_events=True)
        log = RedisEventLog(client, prefix=prefix)
        stream = EventLogKeys.under(prefix).stream

        def bodies() -> list[dict[str, Any]]:
            return [json.loads(fields[b"body"]) for _id, fields in client.xrange(stream)]

    return store, log, bodies


def recorded(log: EventLog) -> list[tuple[EventType, str, str, dict[str, Any]]]:
    """(type, id, agent, payload) of every event in the log, in order."""
    return [(e.event.type, e.event.id, e.event.agent_id, e.event.payload) for e in log.read()]


def fail(message: str = "boom") -> TaskResult:
    return TaskResult(success=False, error_message=message)


def test_a_claim_and_its_completion_are_recorded(pair: tuple[TaskStore, EventLog]) -> None:
    """claim -> task_claimed, complete -> task_completed: ids, agent and job as written."""
    store, log = pair
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30, job_id="j1")
    store.complete(task.id, TaskResult(success=True), job_id="j1")
    assert recorded(log) == [
        (CLAIMED, f"{task.id}:j1:task_claimed", "a1", {"job_id": "j1"}),
        (COMPLETED, f"{task.id}:task_completed", "a1", {"job_id": "j1"}),
    ]
    events = [e.event for e in log.read()]
    assert {e.source for e in events} == {"agentic.tasks"}
    assert {e.task_id for e in events} == {task.id}


def test_failures_then_the_dead_letter_are_recorded(pair: tuple[TaskStore, EventLog]) -> None:
    """Each failed attempt records task_failed with its retry count and its failure; the
    last one also task_dead_lettered with the reason."""
    store, log = pair
    task = store.create(Task(title="t", max_retries=1))
    for job in ("j1", "j2"):
        store.claim(task.id, "a1", 30, job_id=job)
        store.complete(task.id, fail("disk full"), job_id=job)
    events = recorded(log)
    assert [kind for kind, *_ in events] == [CLAIMED, FAILED, CLAIMED, FAILED, DEAD]
    assert events[1] == (
        FAILED,
        f"{task.id}:j1:task_failed",
        "a1",
        {"job_id": "j1", "retry_count": 1, "reason": "disk full"},
    )
    assert events[3][3] == {"job_id": "j2", "retry_count": 2, "reason": "disk full"}
    _kind, event_id, agent, payload = events[4]
    assert (event_id, agent, payload["job_id"]) == (f"{task.id}:task_dead_lettered", "a1", "j2")
    assert "max retries exceeded" in payload["reason"] and "disk full" in payload["reason"]


def test_a_release_is_recorded_as_requeued(pair: tuple[TaskStore, EventLog]) -> None:
    """Giving a claim back records task_requeued with the holder's reason, else
    "released"; no retry."""
    store, log = pair
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30, job_id="j1")
    store.release(task.id, "a1", job_id="j1", reason="agent a1 is at capacity")
    store.claim(task.id, "a1", 30, job_id="j2")
    store.release(task.id, "a1", job_id="j2")
    events = recorded(log)
    assert events[1] == (
        REQUEUED,
        f"{task.id}:j1:task_requeued",
        "a1",
        {"job_id": "j1", "reason": "agent a1 is at capacity"},
    )
    assert events[3][3] == {"job_id": "j2", "reason": "released"}


def test_a_release_reason_past_the_limit_is_refused(pair: tuple[TaskStore, EventLog]) -> None:
    """A release reason over 1,000 characters is refused and the claim stays held."""
    store, log = pair
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30, job_id="j1")
    with pytest.raises(ConfigError, match="at most 1000 characters"):
        store.release(task.id, "a1", job_id="j1", reason="x" * 1001)
    assert store.get(task.id).status == TaskStatus.IN_PROGRESS
    assert [kind for kind, *_ in recorded(log)] == [CLAIMED]


def test_an_expired_lease_is_a_recorded_failure(
    pair: tuple[TaskStore, EventLog], backend: Backend
) -> None:
    """A lease that runs out records the failed attempt (and the dead letter past retries)."""
    store, log = pair
    task = store.create(Task(title="t", max_retries=0))
    store.claim(task.id, "a1", 30, job_id="j1")
    backend.clock.advance(31)
    store.requeue_expired()
    assert [kind for kind, *_ in recorded(log)] == [CLAIMED, FAILED, DEAD]
    assert recorded(log)[1][3]["reason"] == "lease of agent a1 expired"
    assert "lease of agent a1 expired" in recorded(log)[2][3]["reason"]


def test_a_dead_letter_by_update_is_recorded(pair: tuple[TaskStore, EventLog]) -> None:
    """An update to failed (an operator's dead letter) records task_dead_lettered only."""
    store, log = pair
    task = store.create(Task(title="t"))
    store.update(task.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="obsolete"))
    assert recorded(log) == [
        (DEAD, f"{task.id}:task_dead_lettered", "", {"job_id": "", "reason": "obsolete"})
    ]


def test_the_tasks_a_failure_blocks_are_recorded_blocked(
    pair: tuple[TaskStore, EventLog],
) -> None:
    """A failure records task_blocked, after its dead letter, for each pending task
    downstream it blocks (in id order), naming it; a task blocked already records none."""
    store, log = pair
    other = store.create(Task(id="other", title="other"))
    root = store.create(Task(id="root", title="root", max_retries=0))
    store.create(Task(id="z-child", title="z", dependencies=[root.id]))
    store.create(Task(id="a-grandchild", title="a", dependencies=["z-child", other.id]))
    store.update(other.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    assert store.get("a-grandchild").status == TaskStatus.BLOCKED  # by other already
    before = len(recorded(log))
    store.claim(root.id, "a1", 30, job_id="j1")
    store.complete(root.id, fail(), job_id="j1")
    events = recorded(log)[before:]
    assert [kind for kind, *_ in events] == [CLAIMED, FAILED, DEAD, BLOCKED]
    _kind, _id, agent, payload = events[3]
    assert (agent, payload) == (
        "",
        {"job_id": "", "reason": "blocked: task root failed", "blockers": ["root"]},
    )
    assert [e.event.task_id for e in log.read()][-1] == "z-child"
    # Unblocked by a retry and blocked again: a new event, under a new id.
    store.retry(root.id)
    store.claim(root.id, "a1", 30, job_id="j2")
    store.complete(root.id, fail(), job_id="j2")
    again = [(e.event.type, e.event.id) for e in log.read() if e.event.task_id == "z-child"]
    assert [kind for kind, _ in again] == [BLOCKED, REQUEUED, BLOCKED]
    assert again[0][1] != again[2][1]


def test_blocks_made_without_recording_never_reach_a_later_record(
    backend: Backend, request: pytest.FixtureRequest, pair: tuple[TaskStore, EventLog]
) -> None:
    """A failure that blocks tasks through a store recording no events leaves nothing
    behind for a later call to record (a Redis function library keeps its state)."""
    store, log = pair
    quiet = _make_store(backend, request)
    request.addfinalizer(quiet.close)
    quiet.create(Task(id="q-root", title="q"))
    quiet.create(Task(id="q-child", title="c", dependencies=["q-root"]))
    quiet.update("q-root", TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    task = store.create(Task(title="t"))
    store.update(task.id, TaskUpdate(progress=5))  # the same script as the failure
    store.claim(task.id, "a1", 30, job_id="j1")
    store.complete(task.id, TaskResult(success=True), job_id="j1")
    assert [kind for kind, *_ in recorded(log)] == [CLAIMED, COMPLETED]


def test_what_changes_no_lifecycle_records_nothing(pair: tuple[TaskStore, EventLog]) -> None:
    """Creates, renewals, progress, repeated claims and refused calls record nothing."""
    store, log = pair
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30, job_id="j1")
    store.claim(task.id, "a1", 30, job_id="j1")  # a repeat of the claim that holds it
    store.renew(task.id, "a1", 60, job_id="j1")
    store.update(task.id, TaskUpdate(progress=50))
    with pytest.raises(ConflictError):
        store.claim(task.id, "a2", 30, job_id="j2")
    with pytest.raises(ConflictError):
        store.complete(task.id, TaskResult(success=True), job_id="stale")
    assert [kind for kind, *_ in recorded(log)] == [CLAIMED]


def test_a_process_emitting_the_same_transition_adds_nothing(
    pair: tuple[TaskStore, EventLog],
) -> None:
    """The dispatcher's or runner's own event of a recorded change has the same id: the
    log keeps the store's."""
    store, log = pair
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30, job_id="j1")
    store.complete(task.id, TaskResult(success=True), job_id="j1")
    echoes = [
        Event(id=transition_id(task.id, CLAIMED, "j1"), type=CLAIMED, task_id=task.id),
        Event(id=transition_id(task.id, COMPLETED, "j1"), type=COMPLETED, task_id=task.id),
    ]
    assert log.append(echoes) == [1, 2]
    assert [e.event.source for e in log.read()] == ["agentic.tasks", "agentic.tasks"]


def test_claims_without_a_job_id_get_distinct_ids(pair: tuple[TaskStore, EventLog]) -> None:
    """go-agentic's claims carry no job id: each claim is still its own event, even
    two in the same instant."""
    store, log = pair
    task = store.create(Task(title="t"))
    for _ in range(2):
        store.claim(task.id, "a1", 30)
        store.release(task.id, "a1")
    ids = [event_id for _kind, event_id, *_ in recorded(log)]
    assert len(ids) == len(set(ids)) == 4


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 1, 15, 10, 0, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2000, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2100, 12, 31, 12, 30, 5, 250_000, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        # binary ties between two microseconds: to the even one, as Python rounds
        1700000000.0078125,
        5e-07,
        1_000_000_000.0234375 - 0.015625,
    ],
)
def test_recorded_times_are_iso_8601_as_every_writer_writes_them(
    stored: tuple[TaskStore, EventLog, Bodies], backend: Backend, when: datetime | float
) -> None:
    """A recorded event's time is stored as the ISO-8601 UTC text Event JSON holds
    (the Redis scripts format it as the Python stores do), to the microsecond, the
    task's own updated_at."""
    store, _log, bodies = stored
    task = store.create(Task(title="t"))
    backend.clock.set(when)
    held = store.claim(task.id, "a1", 30, job_id="j1")
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)
    assert held.updated_at == moment
    expected = Event(type=CLAIMED, time=moment).model_dump(mode="json")["time"]
    assert [body["time"] for body in bodies()] == [expected]


def test_an_update_that_fails_a_held_task_records_its_reason(
    pair: tuple[TaskStore, EventLog],
) -> None:
    """An update that counts a retry and fails a held task records task_failed with the
    update's reason, then the dead letter."""
    store, log = pair
    task = store.create(Task(title="t", max_retries=3))
    store.claim(task.id, "a1", 30, job_id="j1")
    store.update(
        task.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="obsolete", retry_count=1)
    )
    events = recorded(log)
    assert [kind for kind, *_ in events] == [CLAIMED, FAILED, DEAD]
    assert events[1][3]["reason"] == "obsolete"
