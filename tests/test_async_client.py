"""AsyncTaskClient against a real task API server, from asyncio code; and TaskClient
being generated from it (the method-by-method rules are in test_client.py, which
runs each of its client tests on both)."""

from __future__ import annotations

import asyncio
import runpy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentic import AsyncTaskClient, Claim
from agentic.errors import ConfigError, ConflictError, NotFoundError, TransportError
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.stores.memory import MemoryEventLog
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    """agentic/client.py is exactly what scripts/unasync.py makes of
    agentic/_async_client.py: the two clients cannot drift apart."""
    script = runpy.run_path(str(ROOT / "scripts" / "unasync.py"))
    wanted = script["generate"]()
    assert (ROOT / "agentic" / "client.py").read_text("utf-8") == wanted, (
        "agentic/client.py is out of date: run python scripts/unasync.py"
    )


@pytest.fixture
def served() -> Iterator[tuple[MemoryTaskStore, str]]:
    """A memory task store recording into an event log, behind a real server."""
    events = MemoryEventLog()
    store = MemoryTaskStore(events=events)
    with running_server(store, requeue_interval=None, events=events) as url:
        yield store, url


def test_a_task_goes_through_its_whole_life_from_asyncio(
    served: tuple[MemoryTaskStore, str],
) -> None:
    """Create, list, claim, update, log, follow, complete, count and read the event
    log, each awaited on one event loop."""
    store, url = served

    async def scenario() -> None:
        async with AsyncTaskClient(url, token="", agent_id="a1") as api:
            await api.ping()
            assert "long_polls" in await api.server_features()
            task = await api.create_task(Task(title="t", labels=["x"]))
            assert [t.id for t in await api.list_tasks(labels=["x"])] == [task.id]
            claimed = await api.claim_task(task.id, job_id="j1")
            assert claimed.claimed_by == "a1" and claimed.job_id == "j1"
            with pytest.raises(ConflictError):
                await api.claim_task(task.id, "a2")
            await api.update_task(task.id, TaskUpdate(progress=50))
            await api.renew_lease(task.id, 60, job_id="j1")
            assert await api.append_logs(task.id, ["one", "two"]) == 2
            assert (await api.get_logs(task.id, 1)).lines == ["two"]
            done = await api.complete_task(task.id, TaskResult(success=True), job_id="j1")
            assert done.status == TaskStatus.COMPLETED
            followed = [e async for e in api.follow_logs(task.id)]
            assert [e.line for e in followed if e.kind == "log"] == ["one", "two"]
            assert followed[-1].kind == "end"
            assert (await api.count_tasks())[TaskStatus.COMPLETED] == 1
            page = await api.read_events()
            kinds = [logged.event.type.value for logged in page.events]
            assert "task_claimed" in kinds and "task_completed" in kinds
            with pytest.raises(NotFoundError):
                await api.get_task("nope")

    asyncio.run(scenario())
    assert store.get(store.list()[0].id).status == TaskStatus.COMPLETED


def test_a_long_poll_waits_without_blocking_the_event_loop(
    served: tuple[MemoryTaskStore, str],
) -> None:
    """A runner's long-poll and the claim that answers it run on the same loop at
    once: the wait ends when the claim is made, long before its timeout."""
    _store, url = served

    async def scenario() -> float:
        async with AsyncTaskClient(url, token="") as api:
            task = await api.create_task(Task(title="t"))
            _tasks, token = await api.watch_tasks(claimed_by="a1")
            started = time.monotonic()

            async def claim_soon() -> None:
                await asyncio.sleep(0.2)
                outcome = await api.claim_tasks([Claim(task.id, "a1")])
                assert isinstance(outcome[0], Task)

            watched, _ = await asyncio.gather(
                api.watch_tasks(token or "", 10, claimed_by="a1"), claim_soon()
            )
            assert [t.id for t in watched[0]] == [task.id]
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 5


def test_a_closed_client_is_a_config_error() -> None:
    """A call on a closed AsyncTaskClient says to make a new one; it is not retried."""

    async def scenario() -> None:
        api = AsyncTaskClient("http://127.0.0.1:9", token="")
        await api.close()
        with pytest.raises(ConfigError, match="closed"):
            await api.get_task("t1")

    asyncio.run(scenario())


def test_a_client_used_on_a_second_event_loop_sends_nothing_and_says_why(
    served: tuple[MemoryTaskStore, str],
) -> None:
    """A client whose connections belong to an event loop that has ended (a second
    asyncio.run) refuses before sending, with a ConfigError that says to make one
    client per loop: the create is not made, so trying again with a new client
    cannot make it twice."""
    store, url = served
    api = AsyncTaskClient(url, token="")
    asyncio.run(api.create_task(Task(title="first")))
    with pytest.raises(ConfigError, match=r"not sent.*one client per event loop"):
        asyncio.run(api.create_task(Task(title="second")))
    assert [t.title for t in store.list()] == ["first"]

    async def follow() -> None:
        async for _event in api.follow_logs("t1"):
            pass

    with pytest.raises(ConfigError, match="another event loop"):
        asyncio.run(follow())


def test_an_unreachable_server_is_retried_with_the_async_sleep() -> None:
    """A connection refused is retried ``retries`` times, waiting with the awaited
    sleep given, then raised as TransportError."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        async with AsyncTaskClient(url, token="", retries=2, sleep=sleep) as api:
            with pytest.raises(TransportError, match="after 3 attempt"):
                await api.claim_task("t1", "a1")

    asyncio.run(scenario())
    assert len(waits) == 2
