"""The listings a dispatcher and a runner rely on, on every backend, after every change:
the ready listing holds each pending task whose dependencies are all completed exactly
once and no other; an agent's claims listing holds exactly its tasks in progress. On
Redis and SQLite the indexes behind them (the ready / waiting split and the claims
index; the ``waiting`` column) are checked themselves, before any listing could
repair them: a task missing from one is a task the listing finds only by an audit."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from agentic.errors import ConfigError, ConflictError, NotFoundError
from agentic.models import Priority, Task, TaskResult, TaskUpdate
from agentic.stores.base import TaskStore
from agentic.stores.redis._conn import sync, text
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.stores.sqlite.tasks import SQLiteTaskStore
from tests.conftest import Backend
from tests.test_task_store import (
    BLOCKED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    OK,
    PENDING,
    _make_store,
)

FAIL = TaskResult(success=False, error_message="boom")
AGENTS = ("a1", "a2", "a3")


@pytest.fixture
def store(backend: Backend, request: pytest.FixtureRequest) -> Iterator[TaskStore]:
    """A fresh task store on each backend of the table."""
    made = _make_store(backend, request)
    yield made
    made.close()


def _ids(tasks: list[Task]) -> list[str]:
    return [t.id for t in tasks]


def _is_ready(task: Task, by_id: dict[str, Task]) -> bool:
    return task.status == PENDING and all(by_id[d].status == COMPLETED for d in task.dependencies)


def check_indexes(store: TaskStore) -> None:
    """The index each listing reads holds exactly what it should (Redis, SQLite)."""
    if isinstance(store, RedisTaskStore):
        _check_redis_indexes(store)
    elif isinstance(store, SQLiteTaskStore):
        _check_waiting_column(store)


def _check_redis_indexes(store: RedisTaskStore) -> None:
    # Read the raw sets first: a listing would audit (and repair) what it reads.
    client, keys = store._client, store._keys

    def members(key: str) -> set[str]:
        return {text(m) for m in sync(client.zrange(key, 0, -1))}

    ready = {r: members(f"{keys.ready_head}{r}") for r in range(4)}
    waiting = {r: members(f"{keys.waiting_head}{r}") for r in range(4)}
    claims = {(r, a): members(f"{keys.claims_head}{r}:{a}") for r in range(4) for a in AGENTS}
    claimed = int(sync(client.get(keys.claimed)) or 0)
    by_id = {t.id: t for t in store.list()}
    for rank in range(4):
        pending = {t.id for t in by_id.values() if t.status == PENDING and t.priority.rank == rank}
        want = {i for i in pending if _is_ready(by_id[i], by_id)}
        assert (ready[rank], waiting[rank]) == (want, pending - want), f"rank {rank}"
        for agent in AGENTS:
            held = {
                t.id
                for t in by_id.values()
                if t.status == IN_PROGRESS and t.claimed_by == agent and t.priority.rank == rank
            }
            assert claims[rank, agent] == held, f"claims of {agent}, rank {rank}"
    assert claimed == sum(len(ids) for ids in claims.values())


def _check_waiting_column(store: SQLiteTaskStore) -> None:
    by_id = {t.id: t for t in store.list()}
    with sqlite3.connect(store._db.path) as conn:
        rows = conn.execute("SELECT id, waiting FROM tasks").fetchall()
    for task_id, waiting in rows:
        task = by_id[task_id]
        unfinished = any(by_id[d].status != COMPLETED for d in task.dependencies)
        assert bool(waiting) == unfinished, f"{task_id} ({task.status}): waiting={waiting}"


def check_listings(store: TaskStore) -> None:
    """Every listing a dispatcher or a runner makes answers what the tasks say."""
    everything = store.list()
    by_id = {t.id: t for t in everything}
    ready = [t.id for t in everything if _is_ready(t, by_id)]
    assert _ids(store.list(status=PENDING, ready=True)) == ready
    assert _ids(store.list(ready=True)) == ready
    pending = [t.id for t in everything if t.status == PENDING]
    assert _ids(store.list(status=PENDING, ready=False)) == [i for i in pending if i not in ready]
    for priority in Priority:
        assert _ids(store.list(status=PENDING, ready=True, priority=priority)) == [
            i for i in ready if by_id[i].priority == priority
        ]
    # a dispatcher's pages, two at a time, and its wait (limit=1)
    paged: list[str] = []
    while True:
        after = paged[-1] if paged else None
        page = _ids(store.list(status=PENDING, ready=True, limit=2, after=after))
        paged.extend(page)
        if len(page) < 2:
            break
    assert paged == ready
    assert _ids(store.list(status=PENDING, ready=True, limit=1)) == ready[:1]
    for agent in AGENTS:
        held = [t.id for t in everything if t.status == IN_PROGRESS and t.claimed_by == agent]
        assert _ids(store.list(status=IN_PROGRESS, claimed_by=agent)) == held, agent
        assert _ids(store.list(status=IN_PROGRESS, claimed_by=agent, limit=1)) == held[:1]


def check(store: TaskStore) -> None:
    check_indexes(store)
    check_listings(store)


def new(store: TaskStore, task_id: str, **fields: Any) -> Task:
    return store.create(Task.model_validate({"id": task_id, "title": task_id, **fields}))


# --- dependencies in every state at creation ------------------------------------------


def test_a_task_is_filed_by_the_state_of_its_dependencies_at_creation(
    store: TaskStore, backend: Backend
) -> None:
    """Created on a completed dependency: ready at once; on one pending, claimed or held:
    waiting; on a failed or blocked one: blocked, in no ready listing."""
    for name in ("done", "open", "claimed", "held", "dead"):
        new(store, name, max_retries=0)
        backend.clock.advance(1)
    store.claim("done", "a1", 30)
    store.complete("done", OK, "a1")
    store.claim("claimed", "a2", 30)
    store.update("held", TaskUpdate(status=BLOCKED))
    store.claim("dead", "a1", 30)
    store.complete("dead", FAIL, "a1")
    new(store, "on-dead-chain", dependencies=["open", "dead"])
    check(store)
    for name in ("done", "open", "claimed", "held", "dead", "on-dead-chain"):
        backend.clock.advance(1)
        new(store, f"after-{name}", dependencies=[name], priority=Priority.HIGH)
        check(store)
    ready = _ids(store.list(status=PENDING, ready=True))
    assert ready == ["after-done", "open"]
    assert store.get("after-dead").blockers == ["dead"]
    assert store.get("after-on-dead-chain").blockers == ["dead"]
    # the waiting ones become ready when their dependency completes, held or not
    store.complete("claimed", OK, "a2")
    check(store)
    store.update("held", TaskUpdate(status=PENDING))
    store.claim("held", "a3", 30)
    store.complete("held", OK, "a3")
    check(store)
    ready = _ids(store.list(status=PENDING, ready=True))
    assert ready == ["after-done", "after-claimed", "after-held", "open"]


def test_a_held_task_whose_dependency_completed_is_ready_when_let_go(
    store: TaskStore, backend: Backend
) -> None:
    """A task put on hold while waiting, its dependency completing during the hold, is
    ready (not waiting) the moment the hold ends."""
    new(store, "dep")
    new(store, "child", dependencies=["dep"])
    store.update("child", TaskUpdate(status=BLOCKED))
    store.claim("dep", "a1", 30)
    store.complete("dep", OK, "a1")
    check(store)
    store.update("child", TaskUpdate(status=PENDING))
    check(store)
    assert _ids(store.list(status=PENDING, ready=True)) == ["child"]


def test_a_failed_dependency_takes_its_waiting_dependents_out_of_every_listing(
    store: TaskStore, backend: Backend
) -> None:
    """A dependency dead-lettered (by its last failure, its lease, or an update) blocks
    its waiting dependents of every priority: listed neither ready nor pending."""
    for way in ("failure", "lease", "update"):
        root = f"root-{way}"
        new(store, root, max_retries=0)
        for priority in Priority:
            new(store, f"{way}-{priority.value}", dependencies=[root], priority=priority)
        new(store, f"{way}-grandchild", dependencies=[f"{way}-low"])
    check(store)
    store.claim("root-failure", "a1", 30)
    store.complete("root-failure", FAIL, "a1")
    store.claim("root-lease", "a2", 5)
    backend.clock.advance(10)
    store.requeue_expired()
    store.update("root-update", TaskUpdate(status=FAILED))
    check(store)
    assert _ids(store.list(status=PENDING)) == []
    assert len(store.list(status=BLOCKED)) == 15


def test_an_agents_claims_listing_spans_every_priority(store: TaskStore, backend: Backend) -> None:
    """Claims of one agent at every priority are listed most urgent first, paged, and
    leave the listing by each way a claim ends."""
    for priority in Priority:
        for i in range(2):
            backend.clock.advance(1)
            new(store, f"{priority.value}-{i}", priority=priority, max_retries=1)
    for task in store.list(status=PENDING, ready=True):
        store.claim(task.id, "a1", 30 if "0" in task.id else 5)
    check(store)
    held = _ids(store.list(status=IN_PROGRESS, claimed_by="a1"))
    assert held[:2] == ["critical-0", "critical-1"] and len(held) == 8
    assert _ids(store.list(status=IN_PROGRESS, claimed_by="a1", after=held[3])) == held[4:]
    store.complete("critical-0", OK, "a1")
    store.complete("high-0", FAIL, "a1")
    store.release("medium-0", "a1")
    store.update("low-0", TaskUpdate(status=FAILED))
    backend.clock.advance(10)  # the "-1" leases run out
    store.requeue_expired()
    check(store)
    assert store.list(status=IN_PROGRESS, claimed_by="a1") == []
    store.claim("high-0", "a2", 30)
    store.claim("critical-1", "a1", 30)
    check(store)


# --- random sequences -------------------------------------------------------------------


def _step(
    rng: random.Random, step: int, ids: list[str], store: TaskStore, backend: Backend
) -> None:
    """One random change; refusals are part of the sequence."""
    task_id = rng.choice(ids) if ids else "none"
    agent = rng.choice(AGENTS)
    op = rng.choice(["create"] * 4 + ["claim"] * 5 + ["complete"] * 4 + ["release", "update"]
                    + ["requeue", "hold"] + ["retry"] * 2)  # fmt: skip
    try:
        if op == "create":
            deps = rng.sample(ids, k=min(len(ids), rng.choice([0, 1, 1, 2, 3])))
            hold = rng.random() < 0.1
            new(
                store,
                f"t{step}",
                dependencies=deps,
                max_retries=rng.choice([0, 1]),
                priority=rng.choice(list(Priority)),
                status=BLOCKED if hold else None,
            )
            ids.append(f"t{step}")
        elif op == "claim":
            store.claim(task_id, agent, rng.choice([5, 30]))
        elif op == "complete":
            store.complete(task_id, OK if rng.random() < 0.7 else FAIL)
        elif op == "release":
            store.release(task_id)
        elif op == "update":
            store.update(task_id, TaskUpdate(status=rng.choice([FAILED, PENDING, BLOCKED])))
        elif op == "hold":
            store.update(task_id, TaskUpdate(status=rng.choice([PENDING, BLOCKED])))
        elif op == "retry":  # mostly of a failed task: a refusal changes nothing
            failed = [t.id for t in store.list(status=FAILED)]
            store.retry(rng.choice(failed) if failed and rng.random() < 0.8 else task_id)
        else:
            backend.clock.advance(rng.choice([2, 10]))
            store.requeue_expired()
    except (ConflictError, NotFoundError, ConfigError):
        pass


@pytest.mark.parametrize("seed", range(3))
def test_listings_and_indexes_follow_every_change(
    store: TaskStore, backend: Backend, seed: int
) -> None:
    """Random creates (on dependencies in every state), claims, completions, failures,
    releases, holds, dead letters, retries and lease expiries keep every index and
    listing exact."""
    rng = random.Random(seed)
    ids: list[str] = []
    for step in range(70):
        _step(rng, step, ids, store, backend)
        check_indexes(store)
    check_listings(store)
    # everything left runs to its end, holds let go: no task is lost on the way
    for _ in range(len(ids) * 3):
        ready = store.list(status=PENDING, ready=True, limit=1)
        if not ready:
            claimed = store.list(status=IN_PROGRESS)
            holds = [t for t in store.list(status=BLOCKED) if not t.blockers]
            if claimed:
                store.complete(claimed[0].id, OK)
            elif holds:
                store.update(holds[0].id, TaskUpdate(status=PENDING))
            else:
                break
            continue
        store.claim(ready[0].id, "a1", 30)
        check_indexes(store)
    check(store)
    counts = store.counts()
    assert counts[PENDING] == counts[IN_PROGRESS] == 0, counts
