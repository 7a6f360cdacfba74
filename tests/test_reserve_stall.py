"""A reserve whose answer a Redis stall lost (SIGSTOP, then SIGCONT), on a real redis-server.

The stalled server runs the reserve when it resumes, after the client timed out: the
reservation is made though the caller was told the store failed. Each test starts a
redis-server of its own (stopping the session's would stall every other test), with
a half-second timeout, and always resumes and stops it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher
from agentic.errors import ConflictError, StoreUnavailableError
from agentic.models import AgentAllowance, AgentInfo, Reservation, Task, TaskStatus
from agentic.router import DefaultRouter
from agentic.stores.memory import MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.stores.redis import RedisAllowanceStore
from agentic.testing import running_server
from tests.conftest import RedisServer, start_redis_server
from tests.test_long_poll import wait_until


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may stall; resumed and stopped whatever happens."""
    server = start_redis_server(tmp_path)
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.process.terminate()
        server.process.wait(10)


def quota_on(
    server: RedisServer, kind: type[RedisAllowanceStore] = RedisAllowanceStore
) -> RedisAllowanceStore:
    """An allowance store on ``server`` with a half-second timeout (as ``?timeout=0.5``),
    agent x set to one slot, and the reserve and settle code loaded (a first call to a
    stalled server would otherwise be the library's load, the reserve behind it refused)."""
    timeout = 0.5
    client = redis.Redis(port=server.port, socket_timeout=timeout, socket_connect_timeout=timeout)
    store = kind(client, close_client=True)
    store.set_allowance(AgentAllowance(agent_id="x", concurrent_jobs=1))
    store.reserve("x", "", 0, "warm-up")
    store.unreserve("warm-up")
    return store


def test_a_reserve_a_stall_made_unseen_is_withdrawn(own_redis: RedisServer) -> None:
    """A reserve timed out by a stall lands on resume; withdraw gives its slot back."""
    store = quota_on(own_redis)
    service = AllowanceService(store)
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailableError):
            service.reserve("x", "", 0, "job-1")
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    wait_until(lambda: store.get_usage("x").active_jobs == 1, 5)  # the defect: it landed
    done = service.withdraw("job-1")
    assert done is not None and done.agent_id == "x"
    usage = store.get_usage("x")
    assert (usage.active_jobs, usage.jobs_started) == (0, 0)
    service.reserve("x", "", 0, "job-2")  # the one slot is free
    store.close()


def test_a_reserve_and_its_withdraw_both_lost_to_a_stall_hold_nothing(
    own_redis: RedisServer,
) -> None:
    """Reserve and withdraw both sent into a stall, in whatever order Redis runs them
    on resume: once a withdraw answers, the job holds nothing and never will."""
    store = quota_on(own_redis)
    service = AllowanceService(store)
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailableError):
            service.reserve("x", "", 0, "job-1")
        with pytest.raises(StoreUnavailableError):
            service.withdraw("job-1")
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    service.withdraw("job-1")  # the store answers now
    for _ in range(2):  # and still after anything left in Redis's buffers ran
        usage = store.get_usage("x")
        assert (usage.active_jobs, usage.jobs_started) == (0, 0)
        time.sleep(0.2)
    with pytest.raises(ConflictError):
        store.reserve("x", "", 0, "job-1")
    store.close()


class StallingStore(RedisAllowanceStore):
    """Stalls its Redis (SIGSTOP) just as a reserve is sent, when ``pid`` is set."""

    pid = 0

    def reserve(self, *args: Any, **kwargs: Any) -> Reservation:
        if self.pid:
            os.kill(self.pid, signal.SIGSTOP)
            self.pid = 0
        return super().reserve(*args, **kwargs)


def test_the_dispatcher_withdraws_a_reserve_a_stall_made_unseen(own_redis: RedisServer) -> None:
    """A pass whose reserve a stall timed out fails; the next withdraws the reservation
    that landed on resume and dispatches the task in the agent's one slot."""
    store = quota_on(own_redis, StallingStore)
    assert isinstance(store, StallingStore)
    registry, tasks = MemoryRegistry(), MemoryTaskStore()
    registry.register(AgentInfo(id="x", max_load=1))
    with running_server(tasks, requeue_interval=None) as url:
        client = TaskClient(url, token="", retries=0)
        dispatcher = Dispatcher(registry, DefaultRouter(), AllowanceService(store), client)
        task = tasks.create(Task(title="t"))
        store.pid = own_redis.process.pid
        try:
            with pytest.raises(StoreUnavailableError):
                dispatcher.run_once()
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        wait_until(lambda: store.get_usage("x").active_jobs == 1, 5)  # landed unseen
        report = dispatcher.run_once()
        assert report.dispatched == {task.id: "x"}
        assert tasks.get(task.id).status is TaskStatus.IN_PROGRESS
        usage = store.get_usage("x")
        assert (usage.active_jobs, usage.jobs_started) == (1, 1)
        client.close()
    store.close()
