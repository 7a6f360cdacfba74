"""EventLog.wait on every backend: readers wake when an event is appended (by a thread
or another OS process), not at their next poll; consumers and followers use it."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from agentic.eventlog import EventConsumer
from agentic.events import Event, EventType
from agentic.stores import EventLog, base, open_event_log
from agentic.stores.redis import RedisEventLog

from .conftest import Backend, RedisServer

SPAWN = mp.get_context("spawn")


def _event(n: int = 0) -> Event:
    return Event(type=EventType.TASK_COMPLETED, task_id=f"t{n}")


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """What ``call()`` returned, and the seconds it took."""
    started = time.monotonic()
    return call(), time.monotonic() - started


def append_soon(log: EventLog, seconds: float = 0.2) -> threading.Thread:
    """Append one event from a thread after ``seconds``."""

    def run() -> None:
        time.sleep(seconds)
        log.append([_event(99)])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


class TestWait:
    """wait(after, timeout) on every backend."""

    def test_an_event_already_after_answers_at_once(self, backend: Backend) -> None:
        """With an event after ``after`` in the log, wait returns True at once."""
        log = backend.event_log()
        log.append([_event(1), _event(2)])
        assert timed(lambda: log.wait(1, 5))[0] is True
        (found, took) = timed(lambda: log.wait(0, 5))
        assert found is True and took < 1

    def test_nothing_appended_times_out_false(self, backend: Backend) -> None:
        """With nothing after ``after``, wait returns False once ``timeout`` has passed."""
        log = backend.event_log()
        log.append([_event(1)])
        found, took = timed(lambda: log.wait(1, 0.4))
        assert found is False and 0.35 <= took < 3

    def test_an_append_wakes_a_waiter(self, backend: Backend) -> None:
        """An event appended while a reader waits ends its wait long before the timeout
        (at once on memory and Redis; within a 0.2 s poll on SQLite)."""
        log = backend.event_log()
        thread = append_soon(log)
        found, took = timed(lambda: log.wait(0, 10))
        thread.join()
        assert found is True and took < 3

    def test_a_log_trimmed_empty_has_nothing_to_wait_for(self, backend: Backend) -> None:
        """A log trimmed empty keeps its last offset but no event: wait times out
        False (a reader would find nothing), it does not answer True at once."""
        log = backend.event_log()
        log.append([_event(1), _event(2), _event(3)])
        log.trim(0)
        found, took = timed(lambda: log.wait(0, 0.4))
        assert found is False and took >= 0.35
        assert log.wait(3, 0) is False

    def test_a_log_that_hears_appends_does_not_poll(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Memory and Redis wake on the append itself: with polling pushed to 30 s,
        an append still ends the wait at once."""
        log = backend.event_log()
        if not log.hears_appends:
            pytest.skip("SQLite has no notification across processes: it polls")
        monkeypatch.setattr(base, "WAIT_POLL", 30.0)
        thread = append_soon(log)
        found, took = timed(lambda: log.wait(0, 20))
        thread.join()
        assert found is True and took < 5

    def test_a_bad_offset_or_timeout_is_refused(self, backend: Backend) -> None:
        """A negative offset or timeout is a ConfigError, before any wait."""
        log = backend.event_log()
        with pytest.raises(Exception, match="after"):
            log.wait(-1, 1)
        with pytest.raises(Exception, match="timeout"):
            log.wait(0, -1)


@pytest.mark.parametrize("socket_timeout", [0.05, 0.2, 0.3])
def test_redis_waits_within_a_small_socket_timeout(
    redis_server: RedisServer, socket_timeout: float
) -> None:
    """Blocks stay inside the client's socket timeout (Redis ends a block only on
    its next tick), and a timeout too small to block in is served by polling: no
    wait fails on a healthy Redis."""
    import redis

    client = redis.Redis(port=redis_server.port, socket_timeout=socket_timeout)
    log = RedisEventLog(client, prefix=f"t{uuid.uuid4().hex[:12]}")
    try:
        for _ in range(3):
            assert log.wait(0, 0.6) is False
        thread = append_soon(log)
        assert log.wait(0, 10) is True
        thread.join()
    finally:
        client.close()


def test_a_consumer_of_a_log_trimmed_empty_does_not_spin(backend: Backend) -> None:
    """A caught-up consumer of a log trimmed empty waits, reading a few times a second
    at most, not in a busy loop."""
    log = backend.event_log()
    log.append([_event(1), _event(2)])
    consumer = EventConsumer(log, "c", lambda logged: None)
    consumer.poll()
    log.trim(0)
    reads = 0
    read = log.read

    def counted(after: int = 0, limit: int = 100) -> Any:
        nonlocal reads
        reads += 1
        return read(after, limit)

    log.read = counted  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop, 0.5))
    runner.start()
    time.sleep(1.0)
    stop.set()
    runner.join(10)
    assert reads <= 10


def _append_later(url: str, seconds: float) -> None:
    time.sleep(seconds)
    with open_event_log(url) as log:
        log.append([_event(7)])


@pytest.mark.slow
def test_an_append_by_another_process_wakes_a_waiter(shared_url: str) -> None:
    """A reader waiting on one SQLite file or one Redis wakes when another OS process
    appends, long before its timeout."""
    with open_event_log(shared_url) as log:
        process = SPAWN.Process(target=_append_later, args=(shared_url, 0.5))
        process.start()
        try:
            found, took = timed(lambda: log.wait(0, 30))
        finally:
            process.join(30)
    assert found is True and took < 15


def test_a_consumer_handles_a_new_event_before_its_poll_interval(backend: Backend) -> None:
    """A caught-up consumer waits on the log, not a timer: an event appended while it
    runs with a 30 s interval is handled within seconds, and a stop ends it promptly."""
    log = backend.event_log()
    handled = threading.Event()
    consumer = EventConsumer(log, "c", lambda logged: handled.set())
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop, 30.0))
    runner.start()
    try:
        time.sleep(0.3)  # caught up, waiting
        log.append([_event(1)])
        assert handled.wait(5)
    finally:
        stopped_at = time.monotonic()
        stop.set()
        runner.join(10)
    assert not runner.is_alive() and time.monotonic() - stopped_at < 2
    assert log.committed("c") == 1
