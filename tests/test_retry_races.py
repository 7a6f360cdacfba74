"""Operators' retries under real concurrency: OS processes on one SQLite file / one
Redis retrying failed tasks while workers claim, fail and complete them and a
creator adds dependents behind them."""

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
TASKS = 120
FAILING = 2.0  # seconds in which a worker fails about a third of its attempts


def _finished(store: Any, created: Any) -> bool:
    counts = store.counts()
    return bool(created.is_set()) and counts[TaskStatus.COMPLETED] == TASKS


def _create(url: str, created: Any, barrier: Any, out: Any) -> None:
    store = open_task_store(url)
    rng = random.Random(7)
    barrier.wait(60)
    for n in range(TASKS):
        deps = rng.sample(range(n), k=min(n, rng.choice([0, 1, 1, 2]))) if n else []
        store.create(
            Task(id=f"t{n}", title=f"t{n}", max_retries=0, dependencies=[f"t{d}" for d in deps])
        )
        if n % 10 == 0:
            time.sleep(0.01)
    created.set()
    store.close()
    out.put(("creator", []))


def _work(url: str, worker: int, created: Any, barrier: Any, out: Any) -> None:
    store = open_task_store(url)
    rng = random.Random(worker)
    agent = f"agent-{worker}"
    succeeded: list[str] = []
    barrier.wait(60)
    start = time.monotonic()
    deadline = start + 90
    attempt = 0
    while time.monotonic() < deadline and not _finished(store, created):
        ready = store.list(ready=True, limit=4)
        if not ready:
            time.sleep(0.002)
            continue
        for task in ready:
            attempt += 1
            job = f"{agent}-{attempt}"
            try:
                store.claim(task.id, agent, 60, job_id=job)
            except ConflictError:
                continue
            fail = time.monotonic() - start < FAILING and rng.random() < 0.35
            result = TaskResult(success=not fail, error_message="boom" if fail else "")
            store.complete(task.id, result, agent_id=agent, job_id=job)
            if not fail:
                succeeded.append(task.id)
    store.close()
    out.put((agent, succeeded))


def _retry(url: str, operator: int, created: Any, barrier: Any, out: Any) -> None:
    store = open_task_store(url)
    retried: list[str] = []
    barrier.wait(60)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not _finished(store, created):
        failed = store.list(status=TaskStatus.FAILED, limit=10)
        if not failed:
            time.sleep(0.005)
            continue
        for task in failed:
            try:
                store.retry(task.id)
            except ConflictError:
                continue  # the other operator retried it first
            retried.append(task.id)
    store.close()
    out.put((f"operator-{operator}", retried))


def test_retries_racing_claims_failures_and_creates_lose_and_double_no_task(
    shared_url: str,
) -> None:
    """Two operators retrying, two workers failing and completing, one creator adding
    dependents: every task ends completed, each completed by exactly one success."""
    out = SPAWN.Queue()
    created = SPAWN.Event()
    barrier = SPAWN.Barrier(5)
    procs = [SPAWN.Process(target=_create, args=(shared_url, created, barrier, out))]
    procs += [
        SPAWN.Process(target=_work, args=(shared_url, w, created, barrier, out)) for w in range(2)
    ]
    procs += [
        SPAWN.Process(target=_retry, args=(shared_url, o, created, barrier, out)) for o in range(2)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=150) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    store = open_task_store(shared_url)
    tasks = store.list(limit=1000)
    store.close()
    stuck = [(t.id, t.status, t.blockers) for t in tasks if t.status != TaskStatus.COMPLETED]
    assert stuck == []
    successes = results["agent-0"] + results["agent-1"]
    assert sorted(successes) == sorted(t.id for t in tasks)  # each exactly once
    retried = results["operator-0"] + results["operator-1"]
    assert retried  # the race was run: failures were retried
    assert {t.id: t.reruns for t in tasks if t.reruns} == {
        task_id: retried.count(task_id) for task_id in set(retried)
    }


ONCE_TASKS = 40
ROUNDS = 3


def _retry_once(url: str, barrier: Any, out: Any) -> None:
    store = open_task_store(url)
    made: list[str] = []
    barrier.wait(60)
    for _ in range(ROUNDS):  # repeats, as after lost answers, while the re-runs fail again
        for n in range(ONCE_TASKS):
            if not store.retry(f"r{n}", reruns=0).repeated:
                made.append(f"r{n}")
    store.close()
    out.put(made)


def _fail_reruns(url: str, barrier: Any, retried: Any, out: Any) -> None:
    store = open_task_store(url)
    barrier.wait(60)
    attempt = 0
    while True:
        done = retried.is_set()  # read before the list: nothing is made pending after it
        ready = store.list(status=TaskStatus.PENDING, limit=100)
        for task in ready:
            attempt += 1
            store.claim(task.id, "a1", 60, job_id=f"again{attempt}")
            failure = TaskResult(success=False, error_message="boom again")
            store.complete(task.id, failure, job_id=f"again{attempt}")
        if done and not ready:
            break
        time.sleep(0.002)
    store.close()
    out.put([])


def test_operators_retrying_the_same_run_rerun_each_task_once(shared_url: str) -> None:
    """Four processes retrying the same dead letters again and again, each naming the run
    it saw, while a worker fails every re-run: each task is re-run exactly once."""
    store = open_task_store(shared_url)
    for n in range(ONCE_TASKS):
        store.create(Task(id=f"r{n}", title=f"r{n}", max_retries=0))
        store.claim(f"r{n}", "a1", 60, job_id=f"j{n}")
        store.complete(f"r{n}", TaskResult(success=False, error_message="boom"), job_id=f"j{n}")
    operators, failer = SPAWN.Queue(), SPAWN.Queue()
    retried = SPAWN.Event()
    barrier = SPAWN.Barrier(5)
    procs = [
        SPAWN.Process(target=_retry_once, args=(shared_url, barrier, operators)) for _ in range(4)
    ]
    worker = SPAWN.Process(target=_fail_reruns, args=(shared_url, barrier, retried, failer))
    for p in (*procs, worker):
        p.start()
    made = [task_id for _ in procs for task_id in operators.get(timeout=120)]
    retried.set()
    failer.get(timeout=60)
    for p in (*procs, worker):
        p.join(30)
        assert p.exitcode == 0
    tasks = store.list(limit=1000)
    store.close()
    assert sorted(made) == sorted(f"r{n}" for n in range(ONCE_TASKS))
    assert {(t.status, t.reruns) for t in tasks} == {(TaskStatus.FAILED, 1)}
