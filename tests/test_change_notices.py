"""Change notices between task API servers that share one Redis: a long-poll answered
by one server wakes for a change made through another (behind a load balancer)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentic.client import TaskClient
from agentic.errors import APIError, StoreUnavailableError
from agentic.models import Task, TaskStatus
from agentic.server._changes import Changes, Relay, notice
from agentic.server._metrics import Metrics
from agentic.stores.keys import notices_channel
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.testing import running_server

from .conftest import RedisServer, free_port
from .test_long_poll import later, timed, token_of


@pytest.fixture(autouse=True)
def quick_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers count their peers about every 0.05 s instead of every second."""
    monkeypatch.setattr(Relay, "COUNT_EVERY", 0.05)
    monkeypatch.setattr(Relay, "RECEIVE_WAIT", 0.05)


def counted() -> None:
    """Sleep until every relay has counted its peers since now (with room for a
    slow, busy machine: ten counts' time)."""
    time.sleep((Relay.COUNT_EVERY + Relay.RECEIVE_WAIT) * 10)


def listeners(client: Any, prefix: str) -> int:
    """How many subscriptions the notices channel of ``prefix`` (database 0) has."""
    return int(sum(count for _, count in client.pubsub_numsub(notices_channel(prefix, 0))))


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Return once ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def servers(client: Any, count: int) -> Iterator[tuple[str, list[TaskClient]]]:
    """``count`` task API servers over one Redis prefix (each its own store object, as
    separate processes would have), a client of each, once every one listens."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        apis = []
        for _ in range(count):
            store = RedisTaskStore(client, prefix=prefix)
            url = stack.enter_context(running_server(store, requeue_interval=None))
            apis.append(stack.enter_context(TaskClient(url, token="")))
        wait_for(lambda: listeners(client, prefix) == count)
        counted()  # each has counted the others since
        yield prefix, apis


def counter(api: TaskClient, name: str) -> int:
    """The value of counter ``agentic_<name>_total`` on the server of ``api``."""
    text = httpx.get(f"{api.base_url}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith(f"agentic_{name}_total "))
    return int(float(line.split()[1]))


def test_a_claim_through_one_server_wakes_a_runner_waiting_on_another(redis_client: Any) -> None:
    """A runner long-polling server B for its claims is answered at once when a
    dispatcher claims a task for it through server A."""
    with servers(redis_client, 2) as (_prefix, (api_a, api_b)):
        task = api_a.create_task(Task(title="t"))
        token = token_of(api_b, claimed_by="a1")
        with later(0.2, lambda: api_a.claim_task(task.id, "a1")):
            (claimed, new), took = timed(lambda: api_b.watch_tasks(token, 10, claimed_by="a1"))
    assert [t.id for t in claimed] == [task.id] and new != token and took < 5


def test_a_create_through_one_server_wakes_a_dispatcher_waiting_on_another(
    redis_client: Any,
) -> None:
    """A dispatcher long-polling server B wakes when a task is submitted through A,
    and the notice reaches every other server, not only one."""
    with servers(redis_client, 3) as (_prefix, (api_a, api_b, api_c)):
        tokens = [token_of(api, status=TaskStatus.PENDING) for api in (api_b, api_c)]
        with later(0.2, lambda: api_a.create_task(Task(title="new"))):
            (tasks, _new), took = timed(
                lambda: api_b.watch_tasks(tokens[0], 10, status=TaskStatus.PENDING)
            )
        (others, _n), took_c = timed(
            lambda: api_c.watch_tasks(tokens[1], 10, status=TaskStatus.PENDING)
        )
    assert [t.title for t in tasks] == ["new"] and took < 5
    assert [t.title for t in others] == ["new"] and took_c < 5


@contextmanager
def serve_process(url: str, tmp: Path, name: str) -> Iterator[TaskClient]:
    """``agentic serve`` as an OS process over ``url``, and a client of it."""
    port = free_port()
    agentic = Path(sys.executable).with_name("agentic")
    with (tmp / f"{name}.log").open("wb") as out:
        process = subprocess.Popen(
            [str(agentic), "serve", "--store", url, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    try:
        with TaskClient(f"http://127.0.0.1:{port}", token="") as api:
            wait_for(lambda: process.poll() is None and healthy(api), timeout=30)
            yield api
    finally:
        process.terminate()
        assert process.wait(20) == 0, (tmp / f"{name}.log").read_text()


def healthy(api: TaskClient) -> bool:
    """The server answers its health check."""
    try:
        api.ping()
    except APIError:
        return False
    return True


def test_server_processes_on_one_redis_wake_each_others_runners(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two ``agentic serve`` OS processes on one real Redis: a runner long-polling one
    is answered at once when a task is claimed for it through the other."""
    import redis

    prefix = f"t{uuid.uuid4().hex[:12]}"
    url = f"{redis_server.url}?prefix={prefix}"
    client = redis.Redis(port=redis_server.port)
    with serve_process(url, tmp_path, "a") as api_a, serve_process(url, tmp_path, "b") as api_b:
        wait_for(lambda: listeners(client, prefix) == 2)
        time.sleep(2.5)  # each has counted the other (once a second in a real server)
        task = api_a.create_task(Task(title="t"))
        token = token_of(api_b, claimed_by="a1")
        with later(0.2, lambda: api_a.claim_task(task.id, "a1")):
            (claimed, _new), took = timed(lambda: api_b.watch_tasks(token, 20, claimed_by="a1"))
    client.close()
    assert [t.id for t in claimed] == [task.id] and took < 10


def test_a_lone_server_publishes_nothing_and_a_second_one_starts_it(redis_client: Any) -> None:
    """With no other server listening, writes send no notice (a lone server pays
    nothing); once a second server listens, each write sends one."""
    with servers(redis_client, 1) as (prefix, (api_a,)):
        api_a.create_task(Task(title="one"))
        assert counter(api_a, "notices_sent") == 0
        store = RedisTaskStore(redis_client, prefix=prefix)
        with running_server(store, requeue_interval=None) as url_b:
            wait_for(lambda: listeners(redis_client, prefix) == 2)
            counted()
            api_a.create_task(Task(title="two"))
            wait_for(lambda: counter(api_a, "notices_sent") == 1)
            with TaskClient(url_b, token="") as api_b:
                wait_for(lambda: counter(api_b, "notices_received") == 1)


def test_a_stopped_server_stops_listening(redis_client: Any) -> None:
    """Stopping a server ends its listener: no subscription (nor thread) outlives it."""
    with servers(redis_client, 1) as (prefix, _apis):
        assert listeners(redis_client, prefix) == 1
    assert listeners(redis_client, prefix) == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("agentic-notices")]


def test_stores_without_notices_start_no_listener() -> None:
    """A memory (one process) task store carries no notices: its server starts no
    listener thread."""
    assert MemoryTaskStore().notices() is None
    with running_server(MemoryTaskStore(), requeue_interval=None):
        assert not [t for t in threading.enumerate() if t.name.startswith("agentic-notices")]


# --- failures: logged, counted, never raised into a request ---


class FlakyNotices:
    """Notices whose calls fail while ``down`` is set; records what was published
    and hands out what is queued in ``inbox``."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.subscribes = 0
        self.published: list[str] = []
        self.inbox: list[str] = []
        self.peers = 2

    def _check(self) -> None:
        if self.down.is_set():
            raise StoreUnavailableError("Redis unavailable during a test: connection refused")

    def publish(self, message: str) -> None:
        self._check()
        self.published.append(message)

    def listeners(self) -> int:
        self._check()
        return self.peers

    def subscribe(self) -> FlakyNotices:
        self.subscribes += 1
        self._check()
        return self

    def receive(self, timeout: float) -> str | None:
        self._check()
        if self.inbox:
            return self.inbox.pop(0)
        time.sleep(min(timeout, 0.01))
        return None

    def close(self) -> None:
        pass


@contextmanager
def relaying(notices: FlakyNotices) -> Iterator[tuple[Changes, Relay, Metrics]]:
    """A relay over ``notices`` delivering to an event loop run in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    changes, metrics = Changes(), Metrics()
    relay = Relay(changes, notices, metrics)
    relay.start(loop)
    changes.relay = relay
    try:
        yield changes, relay, metrics
    finally:
        changes.relay = None
        relay.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_an_unreachable_redis_is_logged_counted_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Redis is down the listener logs and counts each failure and waits longer
    each time (no busy loop); once it is back, notices flow again."""
    notices = FlakyNotices()
    notices.down.set()
    with (
        caplog.at_level(logging.WARNING, logger="agentic"),
        relaying(notices) as (changes, _relay, metrics),
    ):
        time.sleep(1.2)  # attempts at 0, 0.5 and 1.5 s: two in this span
        failed = metrics.value("notice_errors")
        assert 1 <= failed <= 3 and notices.subscribes == failed
        assert "connection refused" in caplog.text and "trying again" in caplog.text
        notices.down.clear()
        notices.inbox.append(notice("elsewhere", ["dispatch"]))
        wait_for(lambda: changes.token("dispatch").endswith(".1"))
    assert metrics.value("notices_received") == 1


def test_own_and_malformed_notices_are_not_taken_for_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server's own notice, echoed back, is skipped; a message that is not a notice
    is logged and counted, and the listener goes on."""
    notices = FlakyNotices()
    with (
        caplog.at_level(logging.WARNING, logger="agentic"),
        relaying(notices) as (changes, _relay, metrics),
    ):
        notices.inbox.extend(
            [notice(changes.instance, ["dispatch"]), "not json", "[1, 2]", notice("b", ["x"])]
        )
        wait_for(lambda: changes.token("x").endswith(".1"))
    assert changes.token("dispatch").endswith(".0")
    assert metrics.value("notice_errors") == 2 and metrics.value("notices_received") == 1
    assert "'not json'" in caplog.text


def test_a_failed_publish_is_counted_and_warned_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A notice that cannot be sent does not fail the write it follows (it is sent by
    another thread): each failure is counted, the outage warned about once, and what
    was bumped meanwhile goes in one notice once sending works again."""
    notices = FlakyNotices()
    with (
        caplog.at_level(logging.WARNING, logger="agentic"),
        relaying(notices) as (changes, relay, metrics),
    ):
        wait_for(lambda: relay._peers)
        notices.down.set()
        changes.bump("dispatch")
        wait_for(lambda: metrics.value("notice_errors") >= 1)
        changes.bump("claims:a1")
        wait_for(lambda: metrics.value("notice_errors") >= 2)  # after a 0.5 s pause
        warned = caplog.text.count("could not tell the other servers")
        notices.down.clear()
        changes.bump("claims:a2")
        wait_for(lambda: metrics.value("notices_sent") == 1)
    assert warned == 1 and notices.published == [
        notice(changes.instance, ["claims:a1", "claims:a2"])
    ]


def test_a_hung_publish_does_not_hold_up_the_writes_it_follows() -> None:
    """Publishing happens off the event loop: while a publish hangs, bumps return at
    once and pile into the next notice."""
    notices = FlakyNotices()
    entered, release = threading.Event(), threading.Event()
    sent: list[str] = []

    def hang(message: str) -> None:
        entered.set()
        release.wait(10)
        sent.append(message)

    notices.publish = hang  # type: ignore[method-assign]
    with relaying(notices) as (changes, relay, _metrics):
        wait_for(lambda: relay._peers)
        changes.bump("claims:a0")
        assert entered.wait(10)  # the sender hangs in that publish
        started = time.monotonic()
        for n in range(50):
            changes.bump(f"claims:a{n % 2}")
        took = time.monotonic() - started
        release.set()
        wait_for(lambda: len(sent) == 2)
    assert took < 0.5
    assert sent == [
        notice(changes.instance, ["claims:a0"]),
        notice(changes.instance, ["claims:a0", "claims:a1"]),
    ]


def test_without_peers_nothing_is_published() -> None:
    """A relay that counts no other listener sends no notice."""
    notices = FlakyNotices()
    notices.peers = 1
    with relaying(notices) as (changes, _relay, metrics):
        counted()
        changes.bump("dispatch")
    assert notices.published == [] and metrics.value("notices_sent") == 0
