"""TaskStore.retry, on every backend: an operator's re-run of a failed task, and the
tasks its failure blocked made pending again, in one atomic step."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.errors import ConfigError, ConflictError, NotFoundError
from agentic.events import EventType
from agentic.models import Task, TaskResult, TaskUpdate
from agentic.stores import open_task_store
from agentic.stores.base import EventLog, TaskStore
from tests.conftest import Backend
from tests.test_task_events import recorded, recording_store
from tests.test_task_store import (
    BLOCKED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    PENDING,
    _make_store,
)


@pytest.fixture
def store(backend: Backend, request: pytest.FixtureRequest) -> Iterator[TaskStore]:
    """A fresh task store on each backend of the table."""
    made = _make_store(backend, request)
    yield made
    made.close()


@pytest.fixture
def pair(backend: Backend, request: pytest.FixtureRequest) -> Iterator[tuple[TaskStore, EventLog]]:
    """A task store recording events on each backend, and the event log it records in."""
    made, log, _bodies = recording_store(backend, request)
    yield made, log
    made.close()
    log.close()


def new(store: TaskStore, task_id: str, **fields: Any) -> Task:
    return store.create(Task.model_validate({"title": task_id, "id": task_id, **fields}))


def dead_letter(store: TaskStore, task_id: str, job_id: str = "j1") -> Task:
    """Claim ``task_id`` and fail it past its (zero) retries."""
    store.claim(task_id, "a1", 30, job_id=job_id)
    failure = TaskResult(success=False, error_message="boom", output="half done")
    return store.complete(task_id, failure, job_id=job_id)


def test_a_dead_letter_is_pending_again_with_a_fresh_retry_state(
    store: TaskStore, backend: Backend
) -> None:
    """A dead letter is pending again as if new: no retries, backoff, failure, claim."""
    new(store, "dep")
    store.claim("dep", "a1", 30)
    store.complete("dep", TaskResult(success=True))
    new(store, "t", max_retries=0, labels=["py"], priority="high", dependencies=["dep"])
    store.update("t", TaskUpdate(notes="keep me"))
    store.claim("t", "a1", 30, job_id="j1")
    store.update("t", TaskUpdate(progress=40))
    store.complete("t", TaskResult(success=False, error_message="boom"), job_id="j1")
    failed = store.get("t")
    assert (failed.status, failed.retry_count) == (FAILED, 1)
    backend.clock.advance(5)
    retried = store.retry("t")
    assert retried.unblocked == []
    task = retried.task
    assert task == store.get("t")
    assert (task.status, task.retry_count, task.reruns) == (PENDING, 0, 1)
    assert (task.fail_reason, task.result, task.progress) == ("", None, 0)
    assert (task.last_attempt, task.next_attempt_at, task.lease_expires_at) == (None, None, None)
    assert (task.claimed_by, task.claimed_at, task.job_id) == ("", None, "")
    assert (task.title, task.labels, task.priority, task.dependencies, task.notes) == (
        "t",
        ["py"],
        failed.priority,
        ["dep"],
        "keep me",
    )
    assert task.created_at == failed.created_at
    assert task.updated_at is not None and task.updated_at > (failed.updated_at or task.updated_at)
    assert [t.id for t in store.list(ready=True)] == ["t"]
    assert store.counts()[FAILED] == 0 and store.counts()[PENDING] == 1
    with pytest.raises(ConflictError):  # the failed attempt's job id may not claim it again
        store.claim("t", "a1", 30, job_id="j1")
    assert store.claim("t", "a1", 30, job_id="j2").status == IN_PROGRESS


def test_a_cancelled_task_is_retried_too(store: TaskStore) -> None:
    """A task failed by an update (agentic cancel), never claimed, is pending again."""
    new(store, "t")
    store.update("t", TaskUpdate(status=FAILED, fail_reason="cancelled"))
    assert store.retry("t").task.status == PENDING
    assert [t.id for t in store.list(ready=True)] == ["t"]


def test_retry_unblocks_every_transitive_dependent(store: TaskStore) -> None:
    """Its blocked dependents, transitively, are pending again, waiting on their dependencies."""
    new(store, "root", max_retries=0)
    new(store, "child", dependencies=["root"])
    new(store, "grandchild", dependencies=["child"])
    new(store, "other", dependencies=["root"])
    dead_letter(store, "root")
    assert {t.id for t in store.list(status=BLOCKED)} == {"child", "grandchild", "other"}
    retried = store.retry("root")
    assert retried.unblocked == ["child", "grandchild", "other"]
    for task_id in ("child", "grandchild", "other"):
        task = store.get(task_id)
        assert (task.status, task.blockers) == (PENDING, [])
    assert [t.id for t in store.list(ready=True)] == ["root"]
    assert {t.id for t in store.list(ready=False, status=PENDING)} == {
        "child",
        "grandchild",
        "other",
    }
    with pytest.raises(ConflictError, match="waiting for dependencies: root"):
        store.claim("child", "a1", 30)
    store.claim("root", "a1", 30)
    store.complete("root", TaskResult(success=True))
    assert {t.id for t in store.list(ready=True)} == {"child", "other"}
    store.claim("child", "a1", 30)
    store.complete("child", TaskResult(success=True))
    assert {t.id for t in store.list(ready=True)} == {"grandchild", "other"}


def test_a_dependent_of_two_failed_tasks_waits_for_both_retries(store: TaskStore) -> None:
    """A task blocked by two failed tasks stays blocked until both are retried."""
    new(store, "a", max_retries=0)
    new(store, "b", max_retries=0)
    new(store, "both", dependencies=["a", "b"])
    new(store, "after", dependencies=["both"])
    dead_letter(store, "a")
    dead_letter(store, "b", job_id="j2")
    assert store.get("both").blockers == ["a", "b"]
    assert store.retry("a").unblocked == []
    for task_id in ("both", "after"):
        task = store.get(task_id)
        assert (task.status, task.blockers) == (BLOCKED, ["b"])
    assert store.retry("b").unblocked == ["after", "both"]
    assert {store.get(t).status for t in ("a", "b", "both", "after")} == {PENDING}


def test_a_task_whose_dependency_is_failed_comes_back_blocked(store: TaskStore) -> None:
    """A task whose dependency is failed comes back blocked by it, and so do its dependents."""
    new(store, "root", max_retries=0)
    new(store, "mid", dependencies=["root"])
    new(store, "leaf", dependencies=["mid"])
    dead_letter(store, "root")
    store.update("mid", TaskUpdate(status=FAILED, fail_reason="cancelled"))
    assert store.get("leaf").blockers == ["root", "mid"]
    retried = store.retry("mid")
    assert (retried.task.status, retried.task.blockers, retried.unblocked) == (
        BLOCKED,
        ["root"],
        [],
    )
    assert (store.get("leaf").status, store.get("leaf").blockers) == (BLOCKED, ["root"])
    assert store.retry("root").unblocked == ["leaf", "mid"]
    assert {store.get(t).status for t in ("root", "mid", "leaf")} == {PENDING}


@pytest.mark.parametrize("status", [PENDING, IN_PROGRESS, COMPLETED, BLOCKED, "on hold"])
def test_only_a_failed_task_can_be_retried(store: TaskStore, status: str) -> None:
    """Any status but failed is a ConflictError naming it and what to do; nothing changes."""
    new(store, "root", max_retries=0)
    new(store, "t", dependencies=["root"] if status == BLOCKED else [])
    if status == IN_PROGRESS:
        store.claim("t", "a1", 30, job_id="j1")
    elif status == COMPLETED:
        store.claim("t", "a1", 30)
        store.complete("t", TaskResult(success=True))
    elif status == BLOCKED:
        dead_letter(store, "root")
    elif status == "on hold":
        store.update("t", TaskUpdate(status=BLOCKED))
    before = store.get("t")
    counts = store.counts()
    expected = {
        PENDING: "pending, not failed: it is waiting to run already",
        IN_PROGRESS: "in_progress, not failed: agent a1 is running it; cancel it first",
        COMPLETED: "completed, not failed: .*submit a new task",
        BLOCKED: r"blocked, not failed: it waits on failed task\(s\) root: retry those",
        "on hold": "blocked, not failed: it is on hold",
    }[status]
    with pytest.raises(ConflictError, match=f"task t is {expected}"):
        store.retry("t")
    assert store.get("t") == before
    assert store.counts() == counts


def test_a_retry_naming_the_run_it_saw_is_made_once(store: TaskStore) -> None:
    """Asked again with the same reruns, a retry changes nothing and says it was repeated,
    even once that re-run failed again; the next run's count retries it."""
    new(store, "root", max_retries=0)
    new(store, "leaf", dependencies=["root"])
    dead_letter(store, "root")
    first = store.retry("root", reruns=0)
    assert (first.task.status, first.task.reruns, first.unblocked, first.repeated) == (
        PENDING,
        1,
        ["leaf"],
        False,
    )
    before, counts = store.get("root"), store.counts()
    again = store.retry("root", reruns=0)
    assert (again.task, again.unblocked, again.repeated) == (before, [], True)
    assert store.counts() == counts
    dead_letter(store, "root", job_id="j2")
    failed = store.get("root")
    repeat = store.retry("root", reruns=0)
    assert (repeat.task, repeat.repeated) == (failed, True)
    assert store.get("leaf").status == BLOCKED
    second = store.retry("root", reruns=1)
    assert (second.task.status, second.task.reruns, second.repeated) == (PENDING, 2, False)
    assert second.unblocked == ["leaf"]


def test_a_reruns_count_ahead_of_the_task_is_refused(store: TaskStore) -> None:
    """A retry naming more reruns than the task has had is a ConflictError; nothing changes."""
    new(store, "t", max_retries=0)
    failed = dead_letter(store, "t")
    with pytest.raises(ConflictError, match=r"task t has been retried 0 time\(s\), not 1"):
        store.retry("t", reruns=1)
    assert store.get("t") == failed


@pytest.mark.parametrize("reruns", [-1, True, 1.5, "0", 2**51])
def test_a_reruns_count_that_no_task_holds_is_a_config_error(store: TaskStore, reruns: Any) -> None:
    """A negative, boolean, fractional, textual or too large reruns is a ConfigError."""
    new(store, "t", max_retries=0)
    failed = dead_letter(store, "t")
    with pytest.raises(ConfigError, match="reruns must be"):
        store.retry("t", reruns=reruns)
    assert store.get("t") == failed


def test_a_repeated_retry_records_no_event(pair: tuple[TaskStore, EventLog]) -> None:
    """Only the retry made records its task_requeued; its repeat records nothing."""
    store, log = pair
    new(store, "t", max_retries=0)
    dead_letter(store, "t")
    store.retry("t", reruns=0)
    count = len(recorded(log))
    assert store.retry("t", reruns=0).repeated
    assert len(recorded(log)) == count


def test_an_unknown_task_is_not_found(store: TaskStore) -> None:
    """Retrying an id no task has raises NotFoundError."""
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        store.retry("nope")


def test_a_retry_records_a_requeue_per_task_made_pending(
    pair: tuple[TaskStore, EventLog],
) -> None:
    """A retry records task_requeued per task made pending; a second dead letter is a new event."""
    store, log = pair
    new(store, "root", max_retries=0)
    new(store, "child", dependencies=["root"])
    dead_letter(store, "root")
    start = len(recorded(log))
    store.retry("root")
    requeues = recorded(log)[start:]
    assert [(kind, agent, payload) for kind, _id, agent, payload in requeues] == [
        (EventType.TASK_REQUEUED, "", {"job_id": "", "reason": "retried by an operator"}),
        (
            EventType.TASK_REQUEUED,
            "",
            {"job_id": "", "reason": "unblocked: root was retried by an operator"},
        ),
    ]
    assert [e.event.task_id for e in log.read()][start:] == ["root", "child"]
    dead_letter(store, "root", job_id="j2")
    dead = [e for e in recorded(log) if e[0] == EventType.TASK_DEAD_LETTERED]
    assert [event_id for _kind, event_id, *_ in dead] == [
        "root:task_dead_lettered",
        "root:task_dead_lettered:1",
    ]
    store.retry("root")
    assert len([e for e in recorded(log) if e[0] == EventType.TASK_REQUEUED]) == 4


def test_a_task_below_a_cancelled_one_is_unblocked_by_the_retries_it_waits_for(
    store: TaskStore,
) -> None:
    """Retries above and below a cancelled task, in any order, leave no task blocked for good."""
    for task_id, dependency in [("f", None), ("p", "f"), ("t", "p"), ("d", "t"), ("e", "d")]:
        new(store, task_id, max_retries=0, dependencies=[dependency] if dependency else [])
    cancel = TaskUpdate(status=FAILED, fail_reason="cancelled")
    store.update("t", cancel)
    store.update("d", cancel)
    dead_letter(store, "f")
    assert store.retry("t").task.blockers == ["f"]
    assert (store.get("e").status, store.get("e").blockers) == (BLOCKED, ["d"])
    store.retry("f")
    assert (store.get("e").status, store.get("e").blockers) == (BLOCKED, ["d"])
    assert store.retry("d").unblocked == ["e"]
    assert {store.get(t).status for t in ("f", "p", "t", "d", "e")} == {PENDING}


def test_a_retry_below_a_cancelled_task_then_above_it_leaves_nothing_blocked(
    store: TaskStore,
) -> None:
    """A chain retried below a cancelled task, then above it, then at it, runs again."""
    new(store, "x", max_retries=0)
    for task_id, dependency in [("y", "x"), ("z", "y"), ("w", "z")]:
        new(store, task_id, dependencies=[dependency])
    dead_letter(store, "x")
    cancel = TaskUpdate(status=FAILED, fail_reason="cancelled")
    store.update("y", cancel)
    store.update("z", cancel)
    assert store.get("w").blockers == ["x", "y", "z"]
    assert store.retry("z").task.blockers == ["y"]
    assert store.get("w").blockers == ["y"]
    assert store.retry("x").unblocked == []
    assert store.retry("y").unblocked == ["w", "z"]
    assert {store.get(t).status for t in ("x", "y", "z", "w")} == {PENDING}


def _blockers_are_failed(store: TaskStore) -> None:
    failed = {t.id for t in store.list(status=FAILED)}
    for task in store.list(status=BLOCKED):
        assert set(task.blockers) <= failed, (task.id, task.blockers, sorted(failed))


@pytest.mark.parametrize("seed", [4, 34, 44, 177])  # each left a task blocked for good once
def test_a_blocked_task_names_only_failed_tasks_whatever_the_retries(
    store: TaskStore, seed: int
) -> None:
    """Random chains cancelled, dead-lettered, retried and run: a blocked task names only
    failed tasks, and retrying every failed one lets all of them run to the end."""
    rng = random.Random(seed)
    ids: list[str] = []
    cancel = TaskUpdate(status=FAILED, fail_reason="cancelled")
    for step in range(60):
        op = rng.choice(["create"] * 3 + ["cancel"] * 2 + ["fail", "retry", "retry", "run"])
        task_id = rng.choice(ids) if ids else "none"
        ready = [t.id for t in store.list(status=PENDING, ready=True)]
        if op in ("fail", "run") and ready:
            task_id = rng.choice(ready)
        try:
            if op == "create":
                deps = rng.sample(ids[-6:], k=min(len(ids[-6:]), rng.choice([0, 1, 1, 2])))
                new(store, f"t{step}", dependencies=deps, max_retries=0)
                ids.append(f"t{step}")
            elif op == "cancel":
                store.update(task_id, cancel)
            elif op == "fail":
                dead_letter(store, task_id, job_id=f"j{step}")
            elif op == "retry":
                failed = [t.id for t in store.list(status=FAILED)]
                store.retry(rng.choice(failed) if failed else task_id)
            else:
                store.claim(task_id, "a1", 30)
                store.complete(task_id, TaskResult(success=True))
        except (ConflictError, NotFoundError):
            pass
        _blockers_are_failed(store)
    for _ in range(len(ids) * 2):
        next_ready = store.list(status=PENDING, ready=True, limit=1)
        next_failed = store.list(status=FAILED, limit=1)
        if next_ready:
            store.claim(next_ready[0].id, "a1", 30)
            store.complete(next_ready[0].id, TaskResult(success=True))
        elif next_failed:
            store.retry(next_failed[0].id)
        else:
            break
        _blockers_are_failed(store)
    assert store.counts()[COMPLETED] == len(ids), store.counts()


def test_counts_at_their_bound_stay_exact_through_a_failure_and_a_retry(store: TaskStore) -> None:
    """A retry count and a rerun count reaching 2**50 are stored exactly (Redis wrote 1.1e+15)."""
    new(store, "t", max_retries=2**50, retry_count=2**50 - 1, reruns=2**50 - 1)
    store.claim("t", "a1", 30, job_id="j1")
    store.complete("t", TaskResult(success=False, error_message="boom"), job_id="j1")
    assert store.get("t").retry_count == 2**50
    store.update("t", TaskUpdate(status=FAILED, fail_reason="cancelled"))
    assert store.retry("t").task.reruns == 2**50
    assert store.get("t").reruns == 2**50


def _one_step(store: TaskStore, op: str, pick: float, step: int, deps: list[str]) -> Any:
    ids = sorted((t.id for t in store.list(limit=1000)), key=lambda i: int(i[1:]))
    task_id = ids[int(pick * len(ids))] if ids else "none"
    ready = sorted(t.id for t in store.list(status=PENDING, ready=True))
    failed = sorted(t.id for t in store.list(status=FAILED))
    try:
        if op == "create":
            task = new(store, f"t{step}", dependencies=deps, max_retries=0)
            return (task.status, task.blockers)
        if op == "cancel":
            task = store.update(task_id, TaskUpdate(status=FAILED, fail_reason="cancelled"))
            return (task.status, task.blockers)
        if op in ("fail", "run"):
            task_id = ready[int(pick * len(ready))] if ready else task_id
            store.claim(task_id, "a1", 30, job_id=f"j{step}")
            result = TaskResult(success=op == "run", error_message="boom")
            return (store.complete(task_id, result, job_id=f"j{step}").status,)
        target = failed[int(pick * len(failed))] if failed else task_id
        if op == "retry_once":  # naming a run before, at or after the task's own
            reruns = max(0, store.get(target).reruns + step % 3 - 1)
            retried = store.retry(target, reruns=reruns)
        else:
            retried = store.retry(target)
        return (retried.task.status, retried.task.blockers, retried.unblocked, retried.repeated)
    except (ConflictError, NotFoundError) as exc:
        return ("refused", type(exc).__name__)


@pytest.mark.slow
def test_the_backends_agree_on_every_retry(redis_server: Any, tmp_path: Path) -> None:
    """Random cancels, dead letters, retries and runs: memory, SQLite and Redis (the Lua)
    answer alike and hold the same tasks, blockers in the same order, after every step."""
    for seed in range(6):
        prefix = f"agree{uuid.uuid4().hex[:8]}"
        stores = {
            "memory": open_task_store("memory://"),
            "sqlite": open_task_store(f"sqlite:///{tmp_path / f'{seed}.db'}"),
            "redis": open_task_store(f"{redis_server.url}?prefix={prefix}"),
        }
        rng = random.Random(seed)
        ids: list[str] = []
        for step in range(70):
            op = rng.choice(
                ["create"] * 3 + ["cancel"] * 2 + ["fail", "retry", "retry_once", "run"]
            )
            pick = rng.random()
            deps = rng.sample(ids[-6:], k=min(len(ids[-6:]), rng.choice([0, 1, 1, 2])))
            answers = {name: _one_step(s, op, pick, step, deps) for name, s in stores.items()}
            if op == "create":
                ids.append(f"t{step}")
            assert answers["memory"] == answers["sqlite"] == answers["redis"], (seed, step, op)
            held = {
                name: [(t.id, t.status, t.blockers, t.reruns) for t in s.list(limit=1000)]
                for name, s in stores.items()
            }
            assert held["memory"] == held["sqlite"] == held["redis"], (seed, step, op)
        for made in stores.values():
            made.close()
