"""Operators' retries under real concurrency: OS processes on one SQLite file / one
Redis retrying failed tasks while workers claim, fail and complete them and a
creator adds dependents behind them, or while dispatchers dead-letter them."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from typing import Any

import pytest

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher
from agentic.errors import ConflictError
from agentic.models import Task, TaskResult, TaskStatus
from agentic.router import DefaultRouter
from agentic.stores import open_allowance_store, open_registry, open_task_store
from agentic.testing import running_server

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


DEAD_LETTERS = 150


def _dead_letter_passes(store_url: str, base_url: str, barrier: Any, done: Any, out: Any) -> None:
    """Child: dispatcher passes (no agent registered, so a pass only dead-letters what it
    lists past its retries) until the operator is done; what it dead-lettered."""
    registry = open_registry(store_url)
    allowance = AllowanceService(open_allowance_store(store_url))
    dead: list[str] = []
    with TaskClient(base_url, token="", retries=2) as client:
        dispatcher = Dispatcher(registry, DefaultRouter(), allowance, client)
        barrier.wait(60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            finished = done.is_set()  # read before the pass: nothing fails after it
            dead.extend(dispatcher.run_once().dead_lettered)
            if finished:
                break
    out.put((dead, dispatcher.errors))


def _retry_dead_letters(store_url: str, barrier: Any, done: Any, out: Any) -> None:
    """Child: an operator retrying each dead letter of a first run as soon as it shows."""
    store = open_task_store(store_url)
    retried: set[str] = set()
    barrier.wait(60)
    deadline = time.monotonic() + 90
    while len(retried) < DEAD_LETTERS and time.monotonic() < deadline:
        for task in store.list(status=TaskStatus.FAILED, limit=1000):
            if task.reruns == 0 and not store.retry(task.id, reruns=0).repeated:
                retried.add(task.id)
        time.sleep(0.001)
    done.set()
    store.close()
    out.put(sorted(retried))


def test_dispatchers_dead_lettering_while_an_operator_retries_fail_no_new_run(
    shared_url: str,
) -> None:
    """Two dispatcher processes dead-letter tasks listed past their retries while an
    operator retries each dead letter at once: each first run is dead-lettered once, and
    no dead letter computed from a first run lands on its retried run (without the
    update's condition, stale ones failed re-runs that had never been tried)."""
    store = open_task_store(shared_url)
    for n in range(DEAD_LETTERS):
        store.create(Task(id=f"d{n}", title=f"d{n}", max_retries=0, retry_count=1))
    with running_server(store, requeue_interval=None) as base_url:
        dispatchers, operator = SPAWN.Queue(), SPAWN.Queue()
        done, barrier = SPAWN.Event(), SPAWN.Barrier(3)
        procs = [
            SPAWN.Process(
                target=_dead_letter_passes, args=(shared_url, base_url, barrier, done, dispatchers)
            )
            for _ in range(2)
        ]
        procs.append(
            SPAWN.Process(target=_retry_dead_letters, args=(shared_url, barrier, done, operator))
        )
        for p in procs:
            p.start()
        retried = operator.get(timeout=150)
        results = [dispatchers.get(timeout=150) for _ in range(2)]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    tasks = store.list(limit=1000)
    store.close()
    assert retried == sorted(f"d{n}" for n in range(DEAD_LETTERS))
    stale = [(t.id, t.status, t.reruns, t.fail_reason) for t in tasks if t.status != "pending"]
    assert stale == []
    assert {(t.reruns, t.retry_count) for t in tasks} == {(1, 0)}
    dead = [task_id for dead_lettered, _errors in results for task_id in dead_lettered]
    assert sorted(dead) == sorted(retried)  # each first run dead-lettered once, by one
    assert sum(errors for _dead, errors in results) == 0
