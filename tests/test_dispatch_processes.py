"""Dispatchers as real OS processes: two against one server and one store, and one
killed between reserve and claim."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from typing import Any, cast

import pytest

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher
from agentic.events import CallbackEmitter, Event, EventType
from agentic.models import AgentAllowance, AgentInfo, Task, TaskStatus
from agentic.router import DefaultRouter
from agentic.stores import open_allowance_store, open_registry, open_task_store
from agentic.testing import running_server

pytestmark = pytest.mark.slow
SPAWN = mp.get_context("spawn")
CAPS = ["py", "go", "docs", "review"]


def _dispatch_until_done(
    store_url: str, base_url: str, out: Any, start: Any, claim_batch: int
) -> None:
    """Child: pass after pass until nothing is left to dispatch; report what it claimed
    and how many claims it tried (claimed, or lost to the other dispatcher)."""
    registry = open_registry(store_url)
    allowance = AllowanceService(open_allowance_store(store_url))
    with TaskClient(base_url, token="", retries=2) as client:
        dispatcher = Dispatcher(
            registry, DefaultRouter(), allowance, client, claim_batch=claim_batch
        )
        claimed: list[str] = []
        tried = 0
        start.wait(60)  # both dispatchers begin together, on the same pending list
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            report = dispatcher.run_once()
            claimed.extend(report.dispatched)
            lost = [why for why in report.waiting.values() if why.startswith("claimed elsewhere")]
            tried += len(report.dispatched) + len(lost)
            if not report.dispatched and not client.list_tasks(status=TaskStatus.PENDING, limit=1):
                break
        out.put((claimed, tried, dispatcher.errors))


@pytest.mark.parametrize("claim_batch", [1, 50], ids=["one claim per request", "batches"])
def test_two_dispatcher_processes_share_the_work(shared_url: str, claim_batch: int) -> None:
    """Two dispatcher processes racing (not exclusive), 1,000 tasks: each claimed once,
    no quota exceeded. Both race for the same tasks in the same order; which one wins
    how many is timing (one ahead of the other can win them all)."""
    registry = open_registry(shared_url)
    quota = open_allowance_store(shared_url)
    tasks = open_task_store(shared_url)
    limits = {"daily_job_limit": 450, "concurrent_jobs": 300, "daily_token_limit": 450 * 40}
    for n in range(4):
        agent_id = f"agent-{n}"
        registry.register(AgentInfo(id=agent_id, capabilities=CAPS[: n + 1]))
        quota.set_allowance(AgentAllowance(agent_id=agent_id, **limits))
    ids = {
        tasks.create(Task(title=f"t{i}", labels=CAPS[: i % 3], estimated_tokens=40)).id
        for i in range(1000)
    }
    with running_server(tasks, requeue_interval=None) as base_url:
        out, start = SPAWN.Queue(), SPAWN.Barrier(2)
        procs = [
            SPAWN.Process(
                target=_dispatch_until_done, args=(shared_url, base_url, out, start, claim_batch)
            )
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        results = [out.get(timeout=180) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    claimed = [task_id for ids_, _tried, _errors in results for task_id in ids_]
    assert len(claimed) == len(set(claimed)) == 1000
    assert set(claimed) == ids
    assert all(tried > 0 for _, tried, _ in results), "one dispatcher never raced"
    assert sum(errors for _, _, errors in results) == 0
    stored = tasks.list(limit=2000)
    assert all(t.status is TaskStatus.IN_PROGRESS for t in stored)
    for usage in quota.usages():
        assert usage.jobs_started <= limits["daily_job_limit"]
        assert usage.active_jobs <= limits["concurrent_jobs"]
        assert usage.tokens_reserved <= limits["daily_token_limit"]
    assert sum(u.active_jobs for u in quota.usages()) == 1000
    for store in (registry, quota, tasks):
        store.close()


class _DieOnClaim(TaskClient):
    """A client whose process is killed (SIGKILL) the moment it tries to claim."""

    def claim_task(self, *args: Any, **kwargs: Any) -> Task:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def _reserve_then_die(store_url: str, base_url: str, task_id: str) -> None:
    registry = open_registry(store_url)
    allowance = AllowanceService(open_allowance_store(store_url))
    client = _DieOnClaim(base_url, token="", retries=0)
    task = client.get_task(task_id)
    Dispatcher(registry, DefaultRouter(), allowance, client).dispatch(task)


def test_dispatcher_killed_between_reserve_and_claim_leaks_nothing(shared_url: str) -> None:
    """A dispatcher killed after reserving leaves a reservation that expires by itself."""
    url = f"{shared_url}{'&' if '?' in shared_url else '?'}reservation_ttl=1.5"
    registry = open_registry(url)
    quota = open_allowance_store(url)
    tasks = open_task_store(url)
    registry.register(AgentInfo(id="a"))
    quota.set_allowance(AgentAllowance(agent_id="a", concurrent_jobs=1))
    task = tasks.create(Task(title="t"))
    with running_server(tasks, requeue_interval=None) as base_url:
        child = SPAWN.Process(target=_reserve_then_die, args=(url, base_url, task.id))
        child.start()
        child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert quota.get_usage("a").active_jobs == 1  # the reservation was made...
    assert tasks.get(task.id).status is TaskStatus.PENDING  # ...the claim never was
    deadline = time.monotonic() + 10
    while quota.get_usage("a").active_jobs and time.monotonic() < deadline:
        time.sleep(0.1)
    usage = quota.get_usage("a")
    assert (usage.active_jobs, usage.tokens_reserved) == (0, 0)
    assert quota.check("a").allowed
    for store in (registry, quota, tasks):
        store.close()


def _dispatch_forever(store_url: str, base_url: str, name: str, out: Any) -> None:
    """Child: an exclusive dispatcher (lease 1 s) that reports each task it dispatched."""
    registry = open_registry(store_url)
    allowance = AllowanceService(open_allowance_store(store_url))
    client = TaskClient(base_url, token="", retries=2)

    def report(event: Event) -> None:
        if event.type is EventType.TASK_DISPATCHED:
            out.put((name, event.task_id))

    dispatcher = Dispatcher(
        registry,
        DefaultRouter(),
        allowance,
        client,
        CallbackEmitter(report),
        name=name,
        active_lease=1.0,
    )
    dispatcher.run(interval=0.1)


def test_a_standby_dispatcher_process_takes_over_from_one_killed(shared_url: str) -> None:
    """Two exclusive dispatcher processes: only the lease holder dispatches; kill -9 it
    and the standby dispatches the next task once the lease has run out."""
    registry = open_registry(shared_url)
    quota = open_allowance_store(shared_url)
    tasks = open_task_store(shared_url)
    registry.register(AgentInfo(id="a"))
    quota.set_allowance(AgentAllowance(agent_id="a"))
    with running_server(tasks, requeue_interval=None) as base_url:
        # One queue per process: a process killed while its queue's feeder holds the
        # queue's lock would leave a shared queue locked for the other for good.
        outs = {name: SPAWN.Queue() for name in ("d1", "d2")}
        procs = {
            name: SPAWN.Process(
                target=_dispatch_forever, args=(shared_url, base_url, name, outs[name]), daemon=True
            )
            for name in ("d1", "d2")
        }

        def next_dispatch(timeout: float, names: tuple[str, ...] = ("d1", "d2")) -> tuple[str, str]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for name in names:
                    try:
                        return cast(tuple[str, str], outs[name].get(timeout=0.05))
                    except queue.Empty:
                        continue
            raise AssertionError(f"no dispatch within {timeout} s")

        try:
            for p in procs.values():
                p.start()
            first = tasks.create(Task(title="first"))
            active, dispatched = next_dispatch(60)
            assert dispatched == first.id
            second = tasks.create(Task(title="second"))
            assert next_dispatch(30) == (active, second.id)  # the standby stayed idle
            procs[active].kill()
            procs[active].join(10)
            third = tasks.create(Task(title="third"))
            standby = "d2" if active == "d1" else "d1"
            # the killed one's queue is not read: it may hold half a message
            assert next_dispatch(30, (standby,)) == (standby, third.id)
        finally:
            for p in procs.values():
                if p.is_alive():
                    p.terminate()
                p.join(10)
    stored = {t.id: t for t in tasks.list()}
    assert all(t.status is TaskStatus.IN_PROGRESS for t in stored.values())
    for store in (registry, quota, tasks):
        store.close()
