"""A runner keeps its running jobs' quota reservations alive past their lifetime."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher
from agentic.errors import QuotaExceededError, StoreError
from agentic.models import AgentAllowance, Reservation, Task, TaskStatus
from agentic.router import DefaultRouter
from agentic.runner import TaskContext
from agentic.runner._keepalive import Keepalive
from agentic.stores.memory import MemoryAllowanceStore, MemoryEventLog, MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server
from tests.test_runner import AGENT, Recorder, System, wait_for

GONE = "is gone while the job runs"


@contextlib.contextmanager
def quota_system(reservation_ttl: float) -> Iterator[System]:
    """test_runner's System, with a quota store whose reservations live ``reservation_ttl``."""
    log = MemoryEventLog()
    tasks = MemoryTaskStore(events=log)
    with running_server(tasks, requeue_interval=None) as url:
        registry, events = MemoryRegistry(), Recorder()
        quota = MemoryAllowanceStore(reservation_ttl=reservation_ttl)
        client = TaskClient(url, token="", retries=0)
        dispatcher = Dispatcher(registry, DefaultRouter(), AllowanceService(quota), client)
        made = System(url, tasks, registry, quota, client, dispatcher, events, log)
        try:
            yield made
        finally:
            for runner in made.runners:
                runner.stop()
            client.close()


def one_at_a_time(system: System, handler: Any) -> None:
    """Start a runner of ``handler`` for an agent allowed one job at a time by its
    quota (not by its load: a dispatcher asks the quota)."""
    runner = system.runner(handler, max_load=2)
    system.quota.set_allowance(AgentAllowance(agent_id=AGENT, concurrent_jobs=1))
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})


def test_a_job_longer_than_its_reservation_keeps_its_slot() -> None:
    """A job running three reservation lifetimes keeps its slot all along, then settles."""
    with quota_system(reservation_ttl=1.0) as system:
        gate = threading.Event()

        def handler(task: Task, ctx: TaskContext) -> str:
            ctx.usage("m", 30, 20)
            gate.wait(10)  # runs until the test has seen three lifetimes pass
            return "done"

        one_at_a_time(system, handler)
        first = system.submit("long")
        deadline = time.monotonic() + 3.0
        second = system.tasks.create(Task(title="next", labels=["py"]))
        while time.monotonic() < deadline:
            with pytest.raises(QuotaExceededError, match="concurrent job limit"):
                system.dispatcher.dispatch(system.tasks.get(second.id))
            assert system.quota.get_usage(AGENT).active_jobs == 1
            time.sleep(0.2)
        gate.set()
        system.finished(first.id)
        assert system.tasks.get(first.id).status == TaskStatus.COMPLETED
        usage = system.quota.get_usage(AGENT)
        assert (usage.tokens_used, usage.active_jobs) == (50, 0)
        assert system.runners[0].errors == 0
        assert system.runners[0].keepalive.extended >= 3
        assert system.tasks.get(second.id).status == TaskStatus.PENDING
        assert system.dispatcher.dispatch(system.tasks.get(second.id)) == AGENT  # free now


def test_a_reservation_gone_while_its_job_runs_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reservation ended under a running job is warned about once; the job is charged."""
    with quota_system(reservation_ttl=1.0) as system:

        def handler(task: Task, ctx: TaskContext) -> str:
            ctx.usage("m", 30, 20)
            time.sleep(1.5)
            return "done"

        one_at_a_time(system, handler)
        with caplog.at_level(logging.WARNING, logger="agentic.runner"):
            task = system.submit("long")
            runner = system.runners[0]
            keepalive = runner.keepalive
            wait_for(lambda: keepalive.extended >= 1)
            system.quota.expire(system.tasks.get(task.id).job_id)  # as a dispatcher may
            assert system.finished(task.id).status == TaskStatus.COMPLETED
        said = [r for r in caplog.records if GONE in r.getMessage()]
        assert len(said) == 1
        assert "will still be charged when it settles" in said[0].getMessage()
        assert runner.errors == 1
        assert system.quota.get_usage(AGENT).tokens_used == 50  # charged after the expiry


class FlakyStore(MemoryAllowanceStore):
    """A store whose extend fails like an unreachable backend while ``down`` is set."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.down = True
        self.extends = 0

    def extend(self, job_id: str) -> Reservation:
        self.extends += 1
        if self.down:
            raise StoreError("connection refused")
        return super().extend(job_id)


@pytest.mark.parametrize("fail_open", [False, True])
def test_an_outage_is_retried_each_heartbeat_then_a_third_of_the_lifetime_apart(
    fail_open: bool,
) -> None:
    """A store outage is counted and tried again at the next tick; once an extension
    lands, the next waits a third of the reservation's lifetime."""
    store = FlakyStore(reservation_ttl=3600)
    store.set_allowance(AgentAllowance(agent_id=AGENT))
    store.reserve(AGENT, "", 0, "j1")
    errors: list[str] = []
    keepalive = Keepalive(
        AllowanceService(store, fail_open=fail_open),
        0.0,
        lambda _name, call: call(),  # a round runs at once, on this thread
        lambda what, exc: errors.append(what),
    )
    attempt: Any = SimpleNamespace(
        task=SimpleNamespace(id="t1", job_id="j1"),
        started=time.monotonic(),
        reporting=False,
        stop_kind=None,
    )
    for _ in range(3):
        keepalive.tick([attempt])
    assert (store.extends, len(errors), keepalive.extended) == (3, 3, 0)
    assert "not extended" in errors[0] or "trying again at the next heartbeat" in errors[0]
    store.down = False
    keepalive.tick([attempt])
    keepalive.tick([attempt])  # not due: about 20 minutes away
    assert (store.extends, len(errors), keepalive.extended) == (4, 3, 1)
    attempt.reporting = True  # settling: its reservation is ending, not kept
    keepalive.tick([attempt])
    assert store.extends == 4
