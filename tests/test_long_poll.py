"""Long-polls of GET /api/tasks (runners and dispatchers wake on changes, not timers)
and of GET /api/events (readers of the log through the API wake on new events)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentic.allowance import AllowanceService
from agentic.client import Claim, TaskClient
from agentic.dispatcher import Dispatcher
from agentic.errors import APIError, ConfigError
from agentic.events import Event, EventType
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    Task,
    TaskResult,
    TaskStatus,
    TaskUpdate,
    utcnow,
)
from agentic.router import DefaultRouter
from agentic.runner import AgentRunner
from agentic.server import app as app_module
from agentic.server._changes import Changes
from agentic.stores.memory import MemoryAllowanceStore, MemoryEventLog, MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.stores.redis import RedisEventLog
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.testing import running_server


@pytest.fixture
def served() -> Iterator[tuple[MemoryTaskStore, TaskClient]]:
    """A memory task store behind a real server, and a client of it."""
    store = MemoryTaskStore()
    with running_server(store, requeue_interval=None) as url, TaskClient(url, token="") as api:
        yield store, api


@contextmanager
def later(seconds: float, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` in a thread after ``seconds``; the block waits for it to end,
    so its request never outlives the client it uses."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(10)


def token_of(api: TaskClient, **filters: Any) -> str:
    """The current change token of the topic these filters watch."""
    _tasks, token = api.watch_tasks(**filters)
    assert token is not None
    return token


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """What ``call()`` returned, and the seconds it took."""
    started = time.monotonic()
    return call(), time.monotonic() - started


# --- the server's change notices ---


def test_a_create_wakes_a_dispatchers_wait(served: tuple[MemoryTaskStore, TaskClient]) -> None:
    """A wait on the dispatch topic returns as soon as a task is created, with it listed
    and a new token; with nothing happening it times out with the same token."""
    _store, api = served
    first, token = api.watch_tasks(status=TaskStatus.PENDING)
    assert first == [] and token is not None
    (tasks, same), took = timed(lambda: api.watch_tasks(token, 0.3, status=TaskStatus.PENDING))
    assert (tasks, same, took >= 0.25) == ([], token, True)
    with later(0.2, lambda: api.create_task(Task(title="new"))):
        (tasks, new), took = timed(lambda: api.watch_tasks(token, 10, status=TaskStatus.PENDING))
    assert [t.title for t in tasks] == ["new"] and new != token and took < 5


@pytest.mark.parametrize("change", ["release", "complete", "update"])
def test_every_change_that_frees_work_wakes_the_dispatcher(
    served: tuple[MemoryTaskStore, TaskClient], change: str
) -> None:
    """A release, a completion and an update of a dispatch field (here the time of the
    next attempt) each wake a dispatcher's wait."""
    store, api = served
    task = store.claim(store.create(Task(title="t")).id, "a1", 60)
    token = token_of(api)
    actions: dict[str, Callable[[], object]] = {
        "release": lambda: api.release_task(task.id, "a1"),
        "complete": lambda: api.complete_task(task.id, TaskResult(success=True), "a1"),
        "update": lambda: api.update_task(task.id, TaskUpdate(next_attempt_at=utcnow())),
    }
    with later(0.2, actions[change]):
        (_tasks, new), took = timed(lambda: api.watch_tasks(token, 10))
    assert new != token and took < 5


def test_progress_and_notes_wake_no_dispatcher(
    served: tuple[MemoryTaskStore, TaskClient],
) -> None:
    """Updates written while a task runs (progress, notes) change nothing a dispatcher
    can act on: its wait runs its course."""
    store, api = served
    task = store.claim(store.create(Task(title="t")).id, "a1", 60)
    token = token_of(api)
    with later(0.1, lambda: api.update_task(task.id, TaskUpdate(progress=50, notes="half"))):
        (_l, same), took = timed(lambda: api.watch_tasks(token, 0.5))
    assert same == token and took >= 0.45


def test_a_requeued_lease_wakes_the_dispatcher() -> None:
    """A task requeued because its lease expired is new work: the wait ends at once."""
    store = MemoryTaskStore()
    task = store.create(Task(title="t"))
    with running_server(store, requeue_interval=0.1) as url, TaskClient(url, token="") as api:
        token = token_of(api)
        # Claimed (straight in the store: no notice) only now, so the lease runs out
        # after the token was taken, however slow the machine.
        store.claim(task.id, "gone", 0.3)
        (tasks, new), took = timed(lambda: api.watch_tasks(token, 10, status=TaskStatus.PENDING))
    assert [t.title for t in tasks] == ["t"] and new != token and took < 5


def test_a_claim_wakes_only_its_agents_wait(served: tuple[MemoryTaskStore, TaskClient]) -> None:
    """Claims wake the runner of the agent claimed for (batch claims too), not others."""
    store, api = served
    tasks = [store.create(Task(title=f"t{n}")) for n in range(3)]
    mine, theirs = token_of(api, claimed_by="a1"), token_of(api, claimed_by="a2")
    with later(0.2, lambda: api.claim_task(tasks[0].id, "a1")):
        (claimed, mine_now), took = timed(lambda: api.watch_tasks(mine, 10, claimed_by="a1"))
    assert [t.id for t in claimed] == [tasks[0].id] and took < 5
    assert mine_now is not None
    with later(0.2, lambda: api.claim_tasks([Claim(t.id, "a1") for t in tasks[1:]])):
        (claimed, _t), took = timed(lambda: api.watch_tasks(mine_now, 10, claimed_by="a1"))
    assert len(claimed) >= 2 and took < 5
    (_l, still), took = timed(lambda: api.watch_tasks(theirs, 0.3, claimed_by="a2"))
    assert still == theirs and took >= 0.25


def test_a_token_of_another_server_waits_instead_of_answering_at_once(
    served: tuple[MemoryTaskStore, TaskClient],
) -> None:
    """A token this server did not issue (another process, a restart) is not compared:
    the wait runs its course, so a client alternating servers cannot spin."""
    _store, api = served
    (_l, token), took = timed(lambda: api.watch_tasks("elsewhere.7", 0.3))
    assert took >= 0.25 and token and not token.startswith("elsewhere.")


def test_a_wait_over_a_minute_is_refused(served: tuple[MemoryTaskStore, TaskClient]) -> None:
    """wait is bounded (60 s): longer is a ConfigError before sending, 422 from the API."""
    _store, api = served
    with pytest.raises(Exception, match="wait must be"):
        api.watch_tasks("", 61)
    with pytest.raises(APIError) as refused:
        api._request("GET", "/api/tasks", safe=True, params={"wait": "61"})
    assert refused.value.code == 422


@pytest.fixture
def logged() -> Iterator[tuple[MemoryTaskStore, MemoryEventLog, TaskClient]]:
    """A task store recording into an event log, both served, and a client."""
    log = MemoryEventLog()
    store = MemoryTaskStore(events=log)
    with (
        running_server(store, requeue_interval=None, events=log) as url,
        TaskClient(url, token="") as api,
    ):
        yield store, log, api


def test_an_event_read_waits_for_the_next_event(
    logged: tuple[MemoryTaskStore, MemoryEventLog, TaskClient],
) -> None:
    """read_events(wait=) with nothing new times out empty; an event another process
    appends meanwhile is answered (the server reads the log again while waiting)."""
    _store, log, api = logged
    (page, took) = timed(lambda: api.read_events(0, 10, wait=0.3))
    assert (page.events, took >= 0.25) == ([], True)
    late = Event(type=EventType.AGENT_OFFLINE, agent_id="b")
    with later(0.2, lambda: log.append([late])):
        page, took = timed(lambda: api.read_events(0, 10, wait=10))
    assert [e.event.id for e in page.events] == [late.id] and took < 5


def test_an_append_by_another_process_wakes_an_event_read_on_redis(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Redis a waiting read of the log wakes when anything appends to it (XREAD
    BLOCK), not at the server's next read: with that re-read made 30 s apart, an
    append straight to the store still answers the wait at once."""
    monkeypatch.setattr(app_module, "_EVENTS_POLL", 30.0)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    log = RedisEventLog(redis_client, prefix=prefix)
    store = RedisTaskStore(redis_client, prefix=prefix)
    with (
        running_server(store, requeue_interval=None, events=log) as url,
        TaskClient(url, token="") as api,
    ):
        late = Event(type=EventType.AGENT_OFFLINE, agent_id="b")
        other = RedisEventLog(redis_client, prefix=prefix)  # as another process's
        with later(0.3, lambda: other.append([late])):
            page, took = timed(lambda: api.read_events(0, 10, wait=10))
    assert [e.event.id for e in page.events] == [late.id] and took < 5


def test_a_change_the_server_records_wakes_an_event_read(
    logged: tuple[MemoryTaskStore, MemoryEventLog, TaskClient],
) -> None:
    """A claim through the API (recorded in the log with it) answers a waiting read
    with its task_claimed event."""
    store, _log, api = logged
    task = store.create(Task(title="t"))
    with later(0.2, lambda: api.claim_task(task.id, "a1")):
        page, took = timed(lambda: api.read_events(0, 10, wait=10))
    assert [(e.event.type, e.event.task_id) for e in page.events] == [
        (EventType.TASK_CLAIMED, task.id)
    ] and took < 5


def test_an_event_read_past_the_newest_offset_answers_at_once(
    logged: tuple[MemoryTaskStore, MemoryEventLog, TaskClient],
) -> None:
    """Nothing can come after an offset past the log's newest (the log went back): a
    waiting read answers at once with the newest offset, so the reader sees it."""
    _store, log, api = logged
    log.append([Event(type=EventType.AGENT_OFFLINE, agent_id="a")])
    page, took = timed(lambda: api.read_events(10, 10, wait=10))
    assert (page.events, page.last_offset) == ([], 1) and took < 5


def test_an_event_read_over_a_minute_is_refused(
    logged: tuple[MemoryTaskStore, MemoryEventLog, TaskClient],
) -> None:
    """wait is bounded (60 s): longer is a ConfigError before sending, 422 from the API."""
    _store, _log, api = logged
    with pytest.raises(ConfigError, match="wait must be from 0 to 60 seconds"):
        api.read_events(wait=61)
    with pytest.raises(APIError) as info:
        api._request("GET", "/api/events", safe=True, params={"wait": "61"})
    assert info.value.code == 422


def test_waiters_leave_nothing_behind() -> None:
    """Topics waited on and timed out, or woken, keep no event around."""

    async def scenario() -> Changes:
        changes = Changes()
        token = changes.token("claims:a")
        await changes.wait("claims:a", token, 0.01)
        waiter = asyncio.create_task(changes.wait("dispatch", changes.token("dispatch"), 5))
        await asyncio.sleep(0.01)
        changes.bump("dispatch")
        assert (await waiter).endswith(".1")
        return changes

    changes = asyncio.run(scenario())
    assert not changes._events and not changes._waiting


# --- runners and dispatchers use them ---


@dataclass
class Fleet:
    """Agent "a1" (its registry and allowance) and the runners and dispatcher loops
    started for it; ``close`` stops them all."""

    api: TaskClient
    registry: MemoryRegistry = field(default_factory=MemoryRegistry)
    quota: MemoryAllowanceStore = field(default_factory=MemoryAllowanceStore)
    _stops: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.quota.set_allowance(AgentAllowance(agent_id="a1"))

    def runner(
        self,
        handler: Any,
        *,
        max_load: int = 1,
        client: TaskClient | None = None,
        **options: Any,
    ) -> AgentRunner:
        """Start a runner for a1 and wait until it is registered."""
        runner = AgentRunner(
            AgentInfo(id="a1", max_load=max_load),
            client or self.api,
            self.registry,
            handler,
            AllowanceService(self.quota),
            **options,
        )
        runner.start()
        self._stops.append(runner.stop)
        wait_until(lambda: self.registry.list() != [])
        return runner

    def dispatcher(self, interval: float) -> Dispatcher:
        """Start Dispatcher.run(interval) in a thread."""
        dispatcher = Dispatcher(
            self.registry, DefaultRouter(), AllowanceService(self.quota), self.api
        )
        stop = threading.Event()
        loop = threading.Thread(target=dispatcher.run, args=(stop, interval), daemon=True)
        loop.start()

        def end() -> None:
            stop.set()
            loop.join(5)
            assert not loop.is_alive()

        self._stops.insert(0, end)
        return dispatcher

    def close(self) -> None:
        for stop in self._stops:
            stop()


@pytest.fixture
def fleet(served: tuple[MemoryTaskStore, TaskClient]) -> Iterator[Fleet]:
    """A fleet of agent a1 on the served task API, stopped after the test."""
    made = Fleet(served[1])
    yield made
    made.close()


def test_a_runner_starts_a_claimed_task_long_before_its_poll_interval(
    served: tuple[MemoryTaskStore, TaskClient], fleet: Fleet
) -> None:
    """With a 5 s poll interval, a task claimed for the agent starts within a second."""
    store, api = served
    started = threading.Event()
    fleet.runner(lambda task, ctx: started.set(), poll_interval=5.0)
    time.sleep(0.3)  # the runner is now in its long-poll
    task = store.create(Task(title="t"))
    claimed_at = time.monotonic()
    api.claim_task(task.id, "a1", job_id="j1")  # as a dispatcher claims
    assert started.wait(5)
    assert time.monotonic() - claimed_at < 1.0  # not its 2 s long-poll running out


def test_a_dispatcher_dispatches_a_new_task_long_before_its_interval(
    served: tuple[MemoryTaskStore, TaskClient], fleet: Fleet
) -> None:
    """With a 10 s interval, a task created while the dispatcher waits is claimed
    within a second or two."""
    store, api = served
    fleet.registry.register(AgentInfo(id="a1", max_load=5))
    dispatcher = fleet.dispatcher(10.0)
    time.sleep(0.5)  # the first pass found nothing; the dispatcher waits
    created_at = time.monotonic()
    task = api.create_task(Task(title="t"))
    wait_until(lambda: store.get(task.id).status is TaskStatus.IN_PROGRESS, 5)
    assert time.monotonic() - created_at < 3
    assert dispatcher.errors == 0


class NotWatching(TaskClient):
    """A client of a server that does not watch: answers come at once, with no token."""

    calls = 0

    def watch_tasks(self, since: str = "", wait: float = 0.0, **filters: Any) -> Any:
        self.calls += 1
        tasks, _token = super().watch_tasks(**filters)
        return tasks, None


def test_without_watching_the_runner_polls_at_its_interval(
    served: tuple[MemoryTaskStore, TaskClient], fleet: Fleet
) -> None:
    """Against a server without long-polls the runner reads every poll_interval: it
    still takes its tasks, and never spins."""
    store, api = served
    client = NotWatching(api.base_url, token="")
    done = threading.Event()
    fleet.runner(lambda task, ctx: done.set(), client=client, poll_interval=0.2)
    api.claim_task(store.create(Task(title="t")).id, "a1", job_id="j1")
    assert done.wait(5)
    calls, time_then = client.calls, time.monotonic()
    time.sleep(1.0)
    assert client.calls - calls <= (time.monotonic() - time_then) / 0.2 + 2
    fleet.close()
    client.close()


class Replicas(TaskClient):
    """Each long-poll is answered by another server process: after its full wait, with
    that process's token (a load balancer alternating between two replicas)."""

    def __init__(self) -> None:
        super().__init__("http://replicas.invalid", token="")
        self.calls = 0

    def watch_tasks(self, since: str = "", wait: float = 0.0, **filters: Any) -> Any:
        self.calls += 1
        time.sleep(wait)
        return [], f"replica{(self.calls - 1) % 2}.7"  # replica0 first, then replica1


def test_tokens_of_other_replicas_are_not_taken_for_changes() -> None:
    """Behind a load balancer a wait answered by another replica returns its own token
    after its full wait: the dispatcher keeps waiting to its interval, it does not run
    a pass every long-poll."""
    client = Replicas()
    dispatcher = Dispatcher(
        MemoryRegistry(), DefaultRouter(), AllowanceService(MemoryAllowanceStore()), client
    )
    started = time.monotonic()
    token, changed = dispatcher._wait_for_work("replica1.3", 0.6, threading.Event())
    assert not changed and token.startswith("replica")
    assert time.monotonic() - started >= 0.55
    client.close()


def test_a_finished_task_frees_its_agent_for_the_next_at_once(
    served: tuple[MemoryTaskStore, TaskClient], fleet: Fleet
) -> None:
    """One agent that takes one task at a time, a backlog of five, a 5 s interval: each
    completion lets the next task go out within a fraction of a second, though the
    agent publishes its freed slot a heartbeat after the completion wakes the
    dispatcher (the dispatcher looks again shortly after a woken pass)."""
    store, _api = served
    fleet.runner(lambda task, ctx: time.sleep(0.05))
    tasks = [store.create(Task(title=f"t{n}")) for n in range(5)]
    started = time.monotonic()
    fleet.dispatcher(5.0)
    wait_until(lambda: all(store.get(t.id).status is TaskStatus.COMPLETED for t in tasks), 20)
    assert time.monotonic() - started < 10  # an interval per task would be 25 s


def test_an_unlimited_agent_capped_by_its_workers_is_not_over_routed(
    served: tuple[MemoryTaskStore, TaskClient], fleet: Fleet
) -> None:
    """An agent registered unlimited whose runner runs one task at a time is published
    with that limit: the dispatcher routes it one task, not three to give back in a
    claim-and-release ping-pong."""
    store, _api = served
    release = threading.Event()
    runner = fleet.runner(
        lambda task, ctx: None if release.wait(5) else "timed out", max_load=0, max_workers=1
    )
    assert fleet.registry.get("a1").max_load == 1
    for n in range(3):
        store.create(Task(title=f"t{n}"))
    fleet.dispatcher(5.0)
    time.sleep(1.0)
    assert runner.released == 0
    assert len([t for t in store.list() if t.status is TaskStatus.IN_PROGRESS]) == 1
    release.set()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until it is true, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
