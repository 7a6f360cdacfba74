"""Updates made only onto the task as read (``if_pending``): on every backend, over the
task API (409 when stale, 422 when malformed) and through both clients. The
dispatcher's failure record is made so (see test_dispatcher, test_retry_races)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentic import AsyncTaskClient
from agentic.client import TaskClient
from agentic.errors import ConfigError, ConflictError
from agentic.events import EventType
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.server import create_app
from agentic.stores.base import EventLog, RunSeen, TaskStore
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import FakeClock, running_server
from tests.conftest import Backend
from tests.test_server import ADMIN, TOKENS, assert_error
from tests.test_task_events import recorded, recording_store
from tests.test_task_store import BLOCKED, COMPLETED, FAILED, IN_PROGRESS, PENDING

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette asks for httpx2 here
    from fastapi.testclient import TestClient

FAIL = TaskResult(success=False, error_message="boom")


@pytest.fixture
def pair(backend: Backend, request: pytest.FixtureRequest) -> Iterator[tuple[TaskStore, EventLog]]:
    """A task store recording events on each backend, and the event log it records in."""
    made, log, _bodies = recording_store(backend, request)
    yield made, log
    made.close()
    log.close()


def failure_record(task: Task, backend: Backend) -> TaskUpdate:
    """What the dispatcher stores when a dispatch of ``task`` (as read) failed."""
    now = datetime.fromtimestamp(backend.clock(), UTC)
    return TaskUpdate(
        retry_count=task.retry_count + 1,
        last_attempt=now,
        next_attempt_at=now + timedelta(seconds=30),
        fail_reason="claim refused",
    )


DEAD_LETTER = TaskUpdate(status=TaskStatus.FAILED, fail_reason="max retries exceeded")


def _claimed(store: TaskStore, task_id: str, backend: Backend) -> None:
    store.claim(task_id, "a1", 30, job_id="j2")


def _failed(store: TaskStore, task_id: str, backend: Backend) -> None:
    store.claim(task_id, "a1", 30, job_id="j2")
    store.complete(task_id, FAIL, job_id="j2")


def _expired(store: TaskStore, task_id: str, backend: Backend) -> None:
    store.claim(task_id, "a1", 10, job_id="j2")
    backend.clock.advance(11)
    assert [t.id for t in store.requeue_expired()] == [task_id]


def _retried(store: TaskStore, task_id: str, backend: Backend) -> None:
    store.update(task_id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    store.retry(task_id, reruns=0)


def _held(store: TaskStore, task_id: str, backend: Backend) -> None:
    store.update(task_id, TaskUpdate(status=TaskStatus.BLOCKED))


def _completed(store: TaskStore, task_id: str, backend: Backend) -> None:
    store.claim(task_id, "a1", 30, job_id="j2")
    store.complete(task_id, TaskResult(success=True), job_id="j2")


#: what may happen to a listed pending task before its failure is recorded, and the
#: status, reruns and retry count it leaves the task with
CHANGES: dict[str, tuple[Callable[[TaskStore, str, Backend], None], tuple[str, int, int]]] = {
    "claimed": (_claimed, (IN_PROGRESS, 0, 0)),
    "failed": (_failed, (PENDING, 0, 1)),
    "lease expired": (_expired, (PENDING, 0, 1)),
    "failed and retried": (_retried, (PENDING, 1, 0)),
    "held": (_held, (BLOCKED, 0, 0)),
    "completed": (_completed, (COMPLETED, 0, 0)),
}


@pytest.mark.parametrize("record", ["failure", "dead letter"])
@pytest.mark.parametrize("change", CHANGES)
def test_an_update_onto_a_task_changed_since_it_was_read_is_refused(
    pair: tuple[TaskStore, EventLog], backend: Backend, change: str, record: str
) -> None:
    """A failure record or dead letter made if_pending the task as read is a ConflictError
    once the task was claimed, failed, retried, held or finished since: nothing changes
    and no event is recorded."""
    store, log = pair
    read = store.create(Task(title="t", max_retries=2))
    make, (status, reruns, retry_count) = CHANGES[change]
    make(store, read.id, backend)
    before, events = store.get(read.id), recorded(log)
    assert (before.status, before.reruns, before.retry_count) == (status, reruns, retry_count)
    update = failure_record(read, backend) if record == "failure" else DEAD_LETTER
    with pytest.raises(ConflictError, match=f"task {read.id} changed since it was read") as info:
        store.update(read.id, update, if_pending=RunSeen.of(read))
    assert info.value.message.endswith(
        f"it is {status}, retried {reruns} time(s), with {retry_count} failed attempt(s)"
        " counted, not pending, retried 0 time(s), with 0: nothing updated"
    )
    assert store.get(read.id) == before
    assert recorded(log) == events


@pytest.mark.parametrize("record", ["failure", "dead letter"])
def test_an_update_onto_the_task_as_read_applies(
    pair: tuple[TaskStore, EventLog], backend: Backend, record: str
) -> None:
    """The same update made if_pending the task as it still is applies: the failure is
    counted, or the task dead-lettered with its event naming this run."""
    store, log = pair
    store.create(Task(id="t", title="t", max_retries=0))
    _retried(store, "t", backend)
    read = store.get("t")
    if record == "failure":
        stored = store.update("t", failure_record(read, backend), if_pending=RunSeen.of(read))
        assert (stored.status, stored.reruns, stored.retry_count) == (PENDING, 1, 1)
        assert stored.fail_reason == "claim refused"
        return
    stored = store.update("t", DEAD_LETTER, if_pending=RunSeen(1, 0))
    assert (stored.status, stored.reruns, stored.fail_reason) == (FAILED, 1, "max retries exceeded")
    dead = [e for e in recorded(log) if e[0] == EventType.TASK_DEAD_LETTERED]
    assert [e[1] for e in dead] == ["t:task_dead_lettered", "t:task_dead_lettered:1"]


def test_a_claim_given_back_since_leaves_the_task_as_read(
    pair: tuple[TaskStore, EventLog], backend: Backend
) -> None:
    """A claim made and given back (released) between the read and the update counted
    nothing: the failure record computed from the read is still the task's next one."""
    store, _log = pair
    read = store.create(Task(title="t"))
    store.claim(read.id, "a1", 30, job_id="j2")
    store.release(read.id, "a1", job_id="j2")
    stored = store.update(read.id, failure_record(read, backend), if_pending=RunSeen.of(read))
    assert (stored.status, stored.retry_count) == (PENDING, 1)


@pytest.mark.parametrize(
    "seen",
    [RunSeen(-1, 0), RunSeen(0, -1), RunSeen(True, 0), RunSeen(0, 1.5), RunSeen(2**51, 0), (0, 0)],  # type: ignore[arg-type]
    ids=["negative reruns", "negative count", "bool", "fraction", "too large", "a tuple"],
)
def test_a_condition_no_task_could_meet_is_a_config_error(
    pair: tuple[TaskStore, EventLog], seen: Any
) -> None:
    """A negative, boolean, fractional or too large count, or no RunSeen at all, is a
    ConfigError naming it; nothing changes."""
    store, _log = pair
    task = store.create(Task(title="t"))
    with pytest.raises(ConfigError, match="if_pending"):
        store.update(task.id, DEAD_LETTER, if_pending=seen)
    assert store.get(task.id) == task


# --- over the task API --------------------------------------------------------------


@pytest.fixture
def store() -> MemoryTaskStore:
    """An empty memory task store on a fake clock."""
    return MemoryTaskStore(clock=FakeClock())


@pytest.fixture
def api(store: MemoryTaskStore) -> Iterator[TestClient]:
    """A client of a server with admin and agent tokens over ``store``."""
    with TestClient(create_app(store, requeue_interval=None, **TOKENS)) as client:
        yield client


def retried_meanwhile(store: MemoryTaskStore) -> Task:
    """A pending task as read, then dead-lettered and retried by an operator."""
    read = store.create(Task(title="t", max_retries=0))
    store.claim(read.id, "a1", 30, job_id="j1")
    store.complete(read.id, FAIL, job_id="j1")
    store.retry(read.id, reruns=0)
    return read


def test_a_stale_conditional_patch_is_a_409_and_a_fresh_one_applies(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """PATCH with if_pending naming a run retried since is a 409 saying what changed,
    nothing stored; naming the run as it is, it applies."""
    read = retried_meanwhile(store)
    before = store.get(read.id)
    path = f"/api/tasks/{read.id}"
    stale = {"status": "failed", "if_pending": {"reruns": 0, "retry_count": 0}}
    body = assert_error(api.patch(path, json=stale, headers=ADMIN), 409)
    assert body["message"] == (
        f"task {read.id} changed since it was read: it is pending, retried 1 time(s), with 0"
        " failed attempt(s) counted, not pending, retried 0 time(s), with 0: nothing updated"
    )
    assert store.get(read.id) == before
    fresh = {"retry_count": 1, "if_pending": {"reruns": 1, "retry_count": 0}}
    answer = api.patch(path, json=fresh, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["retry_count"], answer.json()["reruns"]) == (1, 1)
    assert "if_pending" not in answer.json()


@pytest.mark.parametrize(
    ("condition", "said"),
    [
        ({"reruns": -1, "retry_count": 0}, "body.if_pending.reruns: Input should be greater"),
        ({"reruns": 0}, "body.if_pending.retry_count: Field required"),
        ({"reruns": 0, "retry_count": "x"}, "body.if_pending.retry_count: Input should be a"),
        ({"reruns": 0, "retry_count": 2**51}, "body.if_pending.retry_count: Input should be less"),
        ([0, 0], "body.if_pending: Input should be a valid dictionary"),
        (
            {"reruns": 0, "retry_cont": 0},
            "unknown field body.if_pending.retry_cont (did you mean 'retry_count'?);"
            " accepted fields: reruns, retry_count",
        ),
    ],
    ids=["negative", "missing", "not a number", "too large", "a list", "misspelt"],
)
def test_a_malformed_condition_is_a_422_saying_what_is_wrong(
    api: TestClient, store: MemoryTaskStore, condition: Any, said: str
) -> None:
    """An if_pending the server cannot read is a 422 naming the field and the problem,
    and nothing changes."""
    task = store.create(Task(title="t"))
    body = {"status": "failed", "if_pending": condition}
    refused = assert_error(api.patch(f"/api/tasks/{task.id}", json=body, headers=ADMIN), 422)
    assert said in refused["message"]
    assert store.get(task.id) == task


def test_both_clients_send_the_condition_and_get_the_409() -> None:
    """update_task(..., if_pending) of both clients applies onto the task as read and
    raises ConflictError once it was retried since, changing nothing."""
    store = MemoryTaskStore()
    with running_server(store, requeue_interval=None) as url:
        read = retried_meanwhile(store)
        with TaskClient(url, token="") as client:
            assert "update_fencing" in client.server_features()
            with pytest.raises(ConflictError, match="changed since it was read"):
                client.update_task(read.id, DEAD_LETTER, if_pending=RunSeen.of(read))
            assert store.get(read.id).status is TaskStatus.PENDING
            done = client.update_task(read.id, TaskUpdate(retry_count=1), RunSeen(1, 0))
            assert done.retry_count == 1

        async def scenario() -> None:
            async with AsyncTaskClient(url, token="") as api:
                with pytest.raises(ConflictError, match="changed since it was read"):
                    await api.update_task(read.id, DEAD_LETTER, if_pending=RunSeen(1, 0))
                dead = await api.update_task(read.id, DEAD_LETTER, if_pending=RunSeen(1, 1))
                assert (dead.status, dead.reruns) == (TaskStatus.FAILED, 1)

        asyncio.run(scenario())


def test_a_client_making_an_update_conditional_needs_a_server_that_can() -> None:
    """if_pending given to a server without update_fencing is a ConfigError before any
    update (an older server would drop or refuse the condition); without it, as before."""
    store = MemoryTaskStore()
    with running_server(store, requeue_interval=None) as url:
        task = store.create(Task(title="t"))
        with TaskClient(url, token="") as client:
            client.server_features = lambda: frozenset({"strict_bodies"})  # type: ignore[method-assign]
            with pytest.raises(ConfigError, match="cannot make an update conditional"):
                client.update_task(task.id, DEAD_LETTER, if_pending=RunSeen.of(task))
            assert store.get(task.id) == task
            assert client.update_task(task.id, DEAD_LETTER).status is TaskStatus.FAILED
