"""Claims under real concurrency: OS processes on one SQLite file / one Redis."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

import pytest

from agentic.errors import ConflictError
from agentic.models import Task, TaskResult, TaskStatus
from agentic.stores import open_task_store

pytestmark = pytest.mark.slow
SPAWN = mp.get_context("spawn")
PROCESSES = 4


def _claim_all(url: str, worker: int, ids: list[str], barrier: Any, out: Any) -> None:
    store = open_task_store(url)
    won: list[str] = []
    lost = 0
    barrier.wait(60)
    # Every worker walks the same ids in the same order: maximum contention.
    for task_id in ids:
        try:
            store.claim(task_id, f"agent-{worker}", 300)
            won.append(task_id)
        except ConflictError:
            lost += 1
    store.close()
    out.put((worker, won, lost))


def _work(url: str, worker: int, barrier: Any, out: Any) -> None:
    store = open_task_store(url)
    agent = f"agent-{worker}"
    done: list[str] = []
    barrier.wait(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = store.list(ready=True, limit=8)
        if not ready:
            busy = store.list(status=TaskStatus.IN_PROGRESS, limit=1)
            if not busy and not store.list(status=TaskStatus.PENDING, limit=1):
                break
            time.sleep(0.001)
            continue
        for task in ready:
            try:
                store.claim(task.id, agent, 60)
            except ConflictError:
                continue
            store.append_logs(task.id, [f"{agent} ran it"])
            store.complete(task.id, TaskResult(success=True), agent_id=agent)
            done.append(task.id)
    store.close()
    out.put((worker, done, 0))


def _run(target: Any, url: str, *args: Any) -> list[tuple[int, list[str], int]]:
    out = SPAWN.Queue()
    barrier = SPAWN.Barrier(PROCESSES)
    procs = [
        SPAWN.Process(target=target, args=(url, w, *args, barrier, out)) for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def test_each_task_is_claimed_exactly_once(shared_url: str) -> None:
    """4 processes claiming the same 500 tasks: every task won once, every other try lost."""
    store = open_task_store(shared_url)
    ids = [store.create(Task(title=f"t{i}")).id for i in range(500)]
    results = _run(_claim_all, shared_url, ids)
    won = [task_id for _w, claimed, _lost in results for task_id in claimed]
    assert sorted(won) == sorted(ids)
    assert sum(lost for _w, _c, lost in results) == (PROCESSES - 1) * len(ids)
    for worker, claimed, _lost in results:
        for task_id in claimed:
            task = store.get(task_id)
            assert (task.status, task.claimed_by) == (TaskStatus.IN_PROGRESS, f"agent-{worker}")
    store.close()


def test_workers_respect_dependencies(shared_url: str) -> None:
    """4 processes working a 150-task DAG run each task once, after its dependencies."""
    store = open_task_store(shared_url)
    rng = random.Random(7)
    ids: list[str] = []
    for i in range(150):
        deps = rng.sample(ids, k=min(len(ids), rng.randint(0, 2)))
        ids.append(store.create(Task(title=f"t{i}", dependencies=deps)).id)
    results = _run(_work, shared_url)
    done = [task_id for _w, finished, _n in results for task_id in finished]
    assert sorted(done) == sorted(ids)
    tasks = {t.id: t for t in store.list()}
    for task in tasks.values():
        assert task.status == TaskStatus.COMPLETED
        assert len(store.logs(task.id).lines) == 1
        assert task.claimed_at is not None
        for dep in task.dependencies:
            finished_at = tasks[dep].updated_at
            assert finished_at is not None
            assert task.claimed_at >= finished_at
    store.close()


def _create_dependents(
    url: str, roots: list[str], count: int, done: Any, barrier: Any, out: Any
) -> None:
    """Create ``count`` tasks, each on one or two tasks made before it (``roots`` or its
    own), while the workers complete and fail those: a create racing its dependency."""
    store = open_task_store(url)
    rng = random.Random(11)
    made: list[str] = []
    barrier.wait(60)
    for i in range(count):
        deps = rng.sample(roots + made, k=rng.randint(1, 2))
        title = "fail" if rng.random() < 0.1 else "run"
        task = Task(id=f"c{i}", title=title, dependencies=deps, max_retries=0)
        made.append(store.create(task).id)
    store.close()
    done.set()
    out.put((-1, made, 0))


def _work_until_done(url: str, worker: int, done: Any, barrier: Any, out: Any) -> None:
    """Claim ready tasks and finish them (those titled "fail" dead-lettered) until the
    creator is done and nothing is pending or in progress."""
    store = open_task_store(url)
    agent = f"agent-{worker}"
    finished: list[str] = []
    barrier.wait(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = store.list(status=TaskStatus.PENDING, ready=True, limit=4)
        if not ready:
            counts = store.counts()
            if done.is_set() and counts[TaskStatus.PENDING] == counts[TaskStatus.IN_PROGRESS] == 0:
                break
            time.sleep(0.002)
            continue
        for task in ready:
            try:
                store.claim(task.id, agent, 60)
            except ConflictError:
                continue
            assert [t.id for t in store.list(status=TaskStatus.IN_PROGRESS, claimed_by=agent)] == [
                task.id
            ]
            store.append_logs(task.id, [f"{agent} ran it"])
            result = TaskResult(success=task.title != "fail", error_message="planned")
            store.complete(task.id, result, agent_id=agent)
            finished.append(task.id)
    store.close()
    out.put((worker, finished, 0))


def test_creates_racing_the_completion_of_their_dependencies_lose_no_task(
    shared_url: str,
) -> None:
    """One process creates tasks on tasks three others are completing or dead-lettering:
    each task ends completed, failed or blocked by a failed one, none ran twice or before
    its dependencies, and the ready and claims listings are exact at the end."""
    from tests.test_task_indexes import check

    store = open_task_store(shared_url)
    roots = [store.create(Task(id=f"r{i}", title="run")).id for i in range(20)]
    done, out, barrier = SPAWN.Event(), SPAWN.Queue(), SPAWN.Barrier(PROCESSES)
    procs = [
        SPAWN.Process(target=_create_dependents, args=(shared_url, roots, 200, done, barrier, out))
    ]
    procs += [
        SPAWN.Process(target=_work_until_done, args=(shared_url, w, done, barrier, out))
        for w in range(PROCESSES - 1)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ran = [task_id for worker, ids, _n in results if worker >= 0 for task_id in ids]
    assert len(ran) == len(set(ran))
    tasks = {t.id: t for t in store.list()}
    assert len(tasks) == 220
    for task in tasks.values():
        deps = [tasks[d] for d in task.dependencies]
        if task.status == TaskStatus.BLOCKED:
            assert task.blockers and all(
                tasks[b].status == TaskStatus.FAILED for b in task.blockers
            )
            continue
        assert all(d.status == TaskStatus.COMPLETED for d in deps), task.id
        want = TaskStatus.FAILED if task.title == "fail" else TaskStatus.COMPLETED
        assert task.status == want, task.id
        assert task.id in ran and len(store.logs(task.id).lines) == 1
        ran_at = task.claimed_at or task.last_attempt  # a dead letter drops its claim
        assert ran_at is not None
        assert all(d.updated_at is not None and ran_at >= d.updated_at for d in deps)
    check(store)
    store.close()
