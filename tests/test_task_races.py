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
