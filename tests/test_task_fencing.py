"""Attempt fencing on every backend: renew, release and complete given a job id act only
on the claim made under it, so an old attempt's late report cannot finish a new claim."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentic.errors import ConfigError, ConflictError, NotFoundError
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.stores.base import TaskStore
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.stores.redis._conn import sync
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.stores.sqlite.tasks import SQLiteTaskStore
from tests.conftest import Backend
from tests.test_task_store import _make_store

OK = TaskResult(success=True, output="done")
FAIL = TaskResult(success=False, error_message="boom")

Op = Callable[[TaskStore, str, Any], Task]
#: the three calls a job id fences, each made by agent a1 (complete both ways)
OPS: dict[str, Op] = {
    "complete": lambda s, task_id, job: s.complete(task_id, OK, "a1", job_id=job),
    "fail": lambda s, task_id, job: s.complete(task_id, FAIL, "a1", job_id=job),
    "release": lambda s, task_id, job: s.release(task_id, "a1", job_id=job),
    "renew": lambda s, task_id, job: s.renew(task_id, "a1", 60, job_id=job),
}
ACTION = {"complete": "complete", "fail": "complete", "release": "release", "renew": "renew"}
#: the status each call leaves a claimed task in when it is accepted
AFTER = {
    "complete": TaskStatus.COMPLETED,
    "fail": TaskStatus.PENDING,
    "release": TaskStatus.PENDING,
    "renew": TaskStatus.IN_PROGRESS,
}


@pytest.fixture
def store(backend: Backend, request: pytest.FixtureRequest) -> Iterator[TaskStore]:
    """A fresh task store on each backend of the table."""
    made = _make_store(backend, request)
    yield made
    made.close()


def reclaimed(store: TaskStore, backend: Backend) -> Task:
    """A task claimed by a1 under job-1, lease expired and requeued, claimed by a1 under job-2."""
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 10, job_id="job-1")
    backend.clock.advance(10)
    assert [t.id for t in store.requeue_expired()] == [task.id]
    return store.claim(task.id, "a1", 10, job_id="job-2")


@pytest.mark.parametrize("op", OPS)
def test_stale_job_id_is_refused_and_changes_nothing(
    store: TaskStore, backend: Backend, op: str
) -> None:
    """An old attempt's job id cannot act on the same agent's new claim; nothing changes."""
    task = reclaimed(store, backend)
    backend.clock.advance(1)
    message = (
        f"cannot {ACTION[op]} task {task.id} for job 'job-1': a stale attempt:"
        " the task was claimed again since (job 'job-2')"
    )
    with pytest.raises(ConflictError) as refused:
        OPS[op](store, task.id, "job-1")
    assert refused.value.message == message
    assert store.get(task.id) == task
    backend.clock.advance(9)
    assert [t.id for t in store.requeue_expired()] == [task.id]  # the lease was not renewed


@pytest.mark.parametrize("op", OPS)
def test_current_job_id_is_accepted(store: TaskStore, backend: Backend, op: str) -> None:
    """The job id of the current claim acts exactly as an unfenced call would."""
    task = reclaimed(store, backend)
    backend.clock.advance(1)
    got = OPS[op](store, task.id, "job-2")
    # a release hands the reservation to its releaser: the job id goes with the claim
    kept = "" if op == "release" else "job-2"
    assert (got.status, got.job_id) == (AFTER[op], kept)
    assert got.updated_at != task.updated_at
    assert store.get(task.id) == got


@pytest.mark.parametrize("op", OPS)
def test_no_job_id_keeps_the_unfenced_behaviour(
    store: TaskStore, backend: Backend, op: str
) -> None:
    """Without a job id (go-agentic's client) only the holder is checked, as before: the
    call acts on whatever claim the agent holds now (the hazard the job id closes)."""
    task = reclaimed(store, backend)
    backend.clock.advance(1)
    got = OPS[op](store, task.id, None)
    assert got.status == AFTER[op]
    assert got.updated_at != task.updated_at
    assert store.get(task.id) == got


@pytest.mark.parametrize("op", OPS)
def test_job_id_on_a_task_not_in_progress_conflicts(
    store: TaskStore, backend: Backend, op: str
) -> None:
    """A fenced call on a requeued (pending) or finished task is refused and changes nothing."""
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 10, job_id="job-1")
    backend.clock.advance(10)
    (pending,) = store.requeue_expired()
    with pytest.raises(ConflictError, match="pending, not claimed"):
        OPS[op](store, task.id, "job-1")
    assert store.get(task.id) == pending
    store.claim(task.id, "a1", 10, job_id="job-2")
    done = store.complete(task.id, OK, job_id="job-2")
    with pytest.raises(ConflictError, match="completed, not claimed"):
        OPS[op](store, task.id, "job-2")
    assert store.get(task.id) == done


def test_empty_job_id_is_a_fence_too(store: TaskStore, backend: Backend) -> None:
    """``""`` (a claim made without a reservation) is checked like any other job id."""
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 10)
    backend.clock.advance(10)
    store.requeue_expired()
    claim = store.claim(task.id, "a1", 10, job_id="job-2")
    with pytest.raises(ConflictError, match="for job '': a stale attempt"):
        store.complete(task.id, OK, job_id="")
    assert store.get(task.id) == claim
    store.release(task.id, job_id="job-2")
    store.claim(task.id, "a1", 10)
    assert store.renew(task.id, "a1", 30, job_id="").job_id == ""


def test_other_agent_is_named_before_the_job(store: TaskStore, backend: Backend) -> None:
    """A claim taken over by another agent is reported as held by that agent."""
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 10, job_id="job-1")
    backend.clock.advance(10)
    store.requeue_expired()
    store.claim(task.id, "a2", 10, job_id="job-2")
    with pytest.raises(ConflictError, match="claimed by 'a2', not 'a1'"):
        store.complete(task.id, OK, "a1", job_id="job-1")
    with pytest.raises(ConflictError, match="stale attempt"):
        store.complete(task.id, OK, job_id="job-1")  # an admin call naming no agent


@pytest.mark.parametrize("op", OPS)
def test_bad_job_id_is_refused_before_anything(store: TaskStore, backend: Backend, op: str) -> None:
    """A job id that is not a string raises ConfigError and leaves the claim alone."""
    task = reclaimed(store, backend)
    with pytest.raises(ConfigError, match="job_id must be a string"):
        OPS[op](store, task.id, 7)
    assert store.get(task.id) == task


# --- claims: idempotent per job id, and a job id claims a task once --------------------


def test_a_repeated_claim_is_answered_as_made(store: TaskStore, backend: Backend) -> None:
    """The same agent claiming again under the holding job id gets the task, unchanged."""
    task = store.create(Task(title="t"))
    first = store.claim(task.id, "a1", 10, job_id="job-1")
    backend.clock.advance(3)
    again = store.claim(task.id, "a1", 10, job_id="job-1")
    assert again == first  # the lease is not moved: a repeat changes nothing
    with pytest.raises(ConflictError, match="already claimed by 'a1'"):
        store.claim(task.id, "a2", 10, job_id="job-1")
    with pytest.raises(ConflictError, match="already claimed by 'a1'"):
        store.claim(task.id, "a1", 10, job_id="job-2")


@pytest.mark.parametrize("end", ["fail", "release", "expire"])
def test_a_job_id_whose_attempt_ended_cannot_claim_again(
    store: TaskStore, backend: Backend, end: str
) -> None:
    """After a failure, release or expired lease the old job id is refused; a new one claims."""
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 10, job_id="job-1")
    if end == "expire":
        backend.clock.advance(10)
        store.requeue_expired()
    else:
        OPS[end](store, task.id, "job-1")
    assert store.get(task.id).status == TaskStatus.PENDING
    with pytest.raises(ConflictError, match="already had its attempt or was withdrawn"):
        store.claim(task.id, "a1", 10, job_id="job-1")
    assert store.get(task.id).status == TaskStatus.PENDING
    assert store.claim(task.id, "a1", 10, job_id="job-2").job_id == "job-2"


@pytest.mark.parametrize("between", ["job-2", ""], ids=["another job", "no job id"])
@pytest.mark.parametrize("end", ["fail", "expire"])
def test_a_job_id_replaced_by_a_later_claim_cannot_claim_again(
    store: TaskStore, backend: Backend, end: str, between: str
) -> None:
    """Once a later claim (with or without a job id) replaced it, an old job id stays refused."""
    task = store.create(Task(title="t"))

    def attempt(job: str) -> None:
        store.claim(task.id, "a1", 10, job_id=job)
        if end == "expire":
            backend.clock.advance(10)
            store.requeue_expired()
        else:
            store.complete(task.id, FAIL, "a1", job_id=job)

    attempt("job-1")
    attempt(between)
    with pytest.raises(ConflictError, match="already had its attempt or was withdrawn"):
        store.claim(task.id, "a1", 10, job_id="job-1")
    assert store.withdraw_claim(task.id, "job-1") is True  # it was made, long ago
    assert store.claim(task.id, "a1", 10, job_id="job-3").job_id == "job-3"


def test_claims_without_a_job_id_are_not_fenced(store: TaskStore) -> None:
    """A client that sends no job id (go-agentic's) claims again after a release."""
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 10)
    store.release(task.id, "a1")
    assert store.claim(task.id, "a1", 10).status == TaskStatus.IN_PROGRESS


def test_withdrawing_a_claim_never_made_refuses_it_for_good(store: TaskStore) -> None:
    """withdraw_claim of a claim not made says so, and that claim is refused if it arrives."""
    task = store.create(Task(title="t"))
    assert store.withdraw_claim(task.id, "job-1") is False
    assert store.withdraw_claim(task.id, "job-1") is False  # idempotent
    with pytest.raises(ConflictError, match="already had its attempt or was withdrawn"):
        store.claim(task.id, "a1", 10, job_id="job-1")
    assert store.get(task.id).status == TaskStatus.PENDING
    assert store.claim(task.id, "a2", 10, job_id="job-2").claimed_by == "a2"


def test_withdrawing_a_claim_that_was_made_changes_nothing(
    store: TaskStore, backend: Backend
) -> None:
    """withdraw_claim of a claim made (held, ended, released or replaced since) is True."""
    task = store.create(Task(title="t"))
    held = store.claim(task.id, "a1", 10, job_id="job-1")
    assert store.withdraw_claim(task.id, "job-1") is True
    assert store.get(task.id) == held
    store.complete(task.id, FAIL, "a1", job_id="job-1")
    assert store.withdraw_claim(task.id, "job-1") is True  # its attempt reports for itself
    # another dispatcher's lost claim of the task, now pending again
    assert store.withdraw_claim(task.id, "job-9") is False
    assert store.claim(task.id, "a1", 10, job_id="job-2").status == TaskStatus.IN_PROGRESS
    store.release(task.id, "a1", job_id="job-2")
    # made, then released or replaced: still made
    assert store.withdraw_claim(task.id, "job-2") is True
    assert store.withdraw_claim(task.id, "job-1") is True
    assert store.withdraw_claim(task.id, "job-9") is False


def test_withdraw_claim_checks_its_arguments(store: TaskStore) -> None:
    """An unknown task is NotFoundError and an empty job id a ConfigError."""
    task = store.create(Task(title="t"))
    with pytest.raises(NotFoundError):
        store.withdraw_claim("nope", "job-1")
    with pytest.raises(ConfigError, match="job id"):
        store.withdraw_claim(task.id, "")


def retired_records(store: TaskStore, task_id: str) -> int:
    """How many retired job ids the store keeps for a task (each backend's own place)."""
    if isinstance(store, MemoryTaskStore):
        return len(store._retired.get(task_id, {}))
    if isinstance(store, SQLiteTaskStore):
        with store._db.transaction("counting") as conn:
            sql = "SELECT COUNT(*) FROM task_retired_jobs WHERE task_id = ?"
            return int(conn.execute(sql, (task_id,)).fetchone()[0])
    assert isinstance(store, RedisTaskStore)
    return int(sync(store._client.hlen(store._keys.retired_head + task_id)))


def test_a_completed_task_forgets_its_retired_job_ids(store: TaskStore) -> None:
    """Once no claim of a task can be made, its retired job ids are dropped, and a
    withdraw of it adds none and answers "made" (the safe side: nothing given back)."""
    task = store.create(Task(title="t", max_retries=1))
    store.claim(task.id, "a1", 10, job_id="job-1")
    store.release(task.id, "a1", job_id="job-1")
    assert store.withdraw_claim(task.id, "lost") is False
    assert retired_records(store, task.id) == 2
    store.claim(task.id, "a1", 10, job_id="job-2")
    store.complete(task.id, OK, "a1", job_id="job-2")
    assert retired_records(store, task.id) == 0
    # unknown once pruned: "made", so the caller lets the reservation expire instead
    # of taking back one a job that ran may still settle
    assert store.withdraw_claim(task.id, "job-1") is True
    assert store.withdraw_claim(task.id, "late") is True
    assert store.withdraw_claim(task.id, "job-2") is True  # the task still carries it
    assert retired_records(store, task.id) == 0
    with pytest.raises(ConflictError):
        store.claim(task.id, "a1", 10, job_id="late")


@pytest.mark.parametrize("failure", ["dead letter", "cancel"])
def test_a_failed_task_keeps_its_retired_job_ids_for_its_retry(
    store: TaskStore, failure: str
) -> None:
    """A failed task can be retried: every job id retired before still cannot claim it."""
    task = store.create(Task(title="t", max_retries=1))
    store.claim(task.id, "a1", 10, job_id="job-1")
    store.complete(task.id, FAIL, "a1", job_id="job-1")  # a retry counted, pending
    assert store.withdraw_claim(task.id, "lost") is False  # its reservation given back
    store.claim(task.id, "a1", 10, job_id="job-2")
    store.release(task.id, "a1", job_id="job-2")
    store.claim(task.id, "a1", 10, job_id="job-3")
    if failure == "dead letter":
        store.complete(task.id, FAIL, "a1", job_id="job-3")
    else:
        store.update(task.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    assert store.get(task.id).status == TaskStatus.FAILED
    # a lost claim of the failed task: not made, and never will be (given back)
    assert store.withdraw_claim(task.id, "late") is False
    for made in ("job-1", "job-2", "job-3"):
        assert store.withdraw_claim(task.id, made) is True
    assert store.retry(task.id).task.status == TaskStatus.PENDING
    for job in ("job-1", "lost", "job-2", "job-3", "late"):
        with pytest.raises(ConflictError, match="already had its attempt or was withdrawn"):
            store.claim(task.id, "a1", 10, job_id=job)
    assert store.claim(task.id, "a1", 10, job_id="job-4").job_id == "job-4"
