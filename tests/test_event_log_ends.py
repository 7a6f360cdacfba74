"""EventLogEmitter (appends in the background) and EventConsumer (replays, resumes)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from agentic.errors import ConfigError, StoreError, StoreUnavailableError
from agentic.eventlog import EventConsumer, EventLogEmitter
from agentic.events import Event, EventType
from agentic.retry import RetryPolicy
from agentic.stores.base import EventLog, LoggedEvent
from agentic.stores.memory import MemoryEventLog

from .conftest import Backend

FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.001)


def _events(n: int) -> list[Event]:
    return [Event(type=EventType.TASK_CLAIMED, task_id=f"t{i}") for i in range(n)]


class FlakyLog(MemoryEventLog):
    """A memory log whose appends fail as told: before or after the append landed."""

    def __init__(self, failures: list[BaseException], after_append: bool = False) -> None:
        super().__init__()
        self.failures, self.after_append, self.closed = failures, after_append, False

    def append(self, events: list[Event]) -> list[int]:
        if self.failures and not self.after_append:
            raise self.failures.pop(0)
        offsets = super().append(events)
        if self.failures:
            raise self.failures.pop(0)  # the answer of an append that landed is lost
        return offsets

    def close(self) -> None:
        self.closed = True


class TestEventLogEmitter:
    """Emitted events reach the log in order, once, with retries and retention."""

    def test_emitted_events_are_appended_in_order(self, backend: Backend) -> None:
        """Every event emitted reaches the log of each backend, in emit order."""
        log = backend.event_log()
        events = _events(250)
        with EventLogEmitter(log) as emitter:
            for event in events:
                emitter.emit(event)
            assert emitter.flush(10)
        assert [e.event for e in log.read(0, 1000)] == events
        assert (emitter.delivered, emitter.dropped, emitter.errors) == (250, 0, 0)

    def test_an_unavailable_store_is_retried(self) -> None:
        """StoreUnavailableError is retried with backoff; nothing is lost."""
        log = FlakyLog([StoreUnavailableError("down"), StoreUnavailableError("down")])
        with EventLogEmitter(log, retry=FAST) as emitter:
            emitter.emit(_events(1)[0])
            assert emitter.flush(5)
        assert log.last_offset() == 1
        assert (emitter.delivered, emitter.dropped) == (1, 0)

    def test_a_retry_after_a_lost_answer_writes_nothing_twice(self) -> None:
        """An append that landed but whose answer was lost is retried without a duplicate."""
        log = FlakyLog([StoreUnavailableError("timeout")], after_append=True)
        events = _events(3)
        with EventLogEmitter(log, retry=FAST) as emitter:
            for event in events:
                emitter.emit(event)
            assert emitter.flush(5)
        assert [e.event for e in log.read()] == events

    def test_a_refused_append_is_dropped_and_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A StoreError that would fail again drops the batch, logged and counted."""
        log = FlakyLog([StoreError("corrupt")])
        with (
            caplog.at_level(logging.WARNING, "agentic.events"),
            EventLogEmitter(log, retry=FAST) as emitter,
        ):
            emitter.emit(_events(1)[0])
            assert emitter.flush(5)
        assert (emitter.delivered, emitter.dropped, emitter.errors) == (0, 1, 1)
        assert "dropped: corrupt" in caplog.text

    def test_retries_used_up_drop_the_batch(self) -> None:
        """When the retries run out the events are dropped and counted."""
        log = FlakyLog([StoreUnavailableError("down")] * 10)
        with EventLogEmitter(log, retry=FAST) as emitter:
            emitter.emit(_events(1)[0])
            assert emitter.flush(5)
        assert (emitter.delivered, emitter.dropped) == (0, 1)

    def test_the_log_is_trimmed_to_keep(self) -> None:
        """With keep=20 the log holds the newest 20 events, give or take one trim step."""
        log = MemoryEventLog()
        with EventLogEmitter(log, keep=20) as emitter:
            for event in _events(100):
                emitter.emit(event)
                emitter.flush(5)  # one append per event, so trims run on the way
        kept = log.read(0, 1000)
        assert 20 <= len(kept) <= 22
        assert kept[-1].offset == 100

    def test_keep_zero_never_trims(self) -> None:
        """keep=0 keeps every event."""
        log = MemoryEventLog()
        with EventLogEmitter(log, keep=0) as emitter:
            for event in _events(30):
                emitter.emit(event)
            assert emitter.flush(5)
        assert len(log.read()) == 30

    def test_an_event_that_is_not_json_is_dropped_alone(self) -> None:
        """One payload the log cannot hold costs that event only, not its batch."""
        log = MemoryEventLog()
        good = _events(4)
        bad = Event(type=EventType.TASK_FAILED, payload={"error": object()})
        with EventLogEmitter(log) as emitter:
            for event in [*good[:2], bad, *good[2:]]:
                emitter.emit(event)
            assert emitter.flush(5)
        assert [e.event for e in log.read()] == good
        assert (emitter.delivered, emitter.dropped) == (4, 1)

    def test_a_short_lived_emitter_trims_when_it_closes(self) -> None:
        """Emitters that close before a trim step (dispatch --once) still keep the log bounded."""
        log = MemoryEventLog()
        for _ in range(4):
            with EventLogEmitter(log, keep=5) as emitter:
                for event in _events(3):
                    emitter.emit(event)
        assert [e.offset for e in log.read()] == [8, 9, 10, 11, 12]

    def test_keep_unread_spares_what_the_slowest_consumer_has_not_handled(
        self, backend: Backend
    ) -> None:
        """With keep_unread the trims keep every event after the slowest consumer's
        position, up to keep_unread more than keep; without consumers, keep alone."""
        log = backend.event_log()
        log.commit("billing", 3)
        log.commit("audit", 9)
        with EventLogEmitter(log, keep=2, keep_unread=5) as emitter:
            for event in _events(10):
                emitter.emit(event)
        # billing handled 1-3: 4-10 are spared (7 events, within 2 + 5)
        assert [e.offset for e in log.read()] == [4, 5, 6, 7, 8, 9, 10]
        with EventLogEmitter(log, keep=2, keep_unread=5) as emitter:
            for event in _events(5):
                emitter.emit(event)
        # 15 appended: billing still at 3, but at most 2 + 5 kept: 9-15
        assert [e.offset for e in log.read()] == list(range(9, 16))
        log.forget("billing")
        log.forget("audit")
        with EventLogEmitter(log, keep=2, keep_unread=5) as emitter:
            emitter.emit(_events(1)[0])
        assert [e.offset for e in log.read()] == [15, 16]

    def test_keep_unread_off_trims_to_keep(self) -> None:
        """keep_unread=0 (the default) trims to keep whatever consumers have read."""
        log = MemoryEventLog()
        log.commit("billing", 1)
        with EventLogEmitter(log, keep=2) as emitter:
            for event in _events(6):
                emitter.emit(event)
        assert [e.offset for e in log.read()] == [5, 6]
        with pytest.raises(ConfigError, match="keep_unread must be an integer >= 0"):
            EventLogEmitter(log, keep_unread=-1)

    def test_a_failing_trim_counts_an_error_not_a_drop(self) -> None:
        """When trimming fails the events are still delivered; the error is counted."""

        class NoTrim(MemoryEventLog):
            def trim(self, keep: int, up_to: int | None = None) -> int:
                raise OverflowError("too big for this backend")

        log = NoTrim()
        with EventLogEmitter(log, keep=1) as emitter:
            for event in _events(3):
                emitter.emit(event)
            assert emitter.flush(5)
            assert (emitter.delivered, emitter.dropped) == (3, 0)
        assert emitter.errors >= 1
        assert log.last_offset() == 3

    def test_close_log_closes_the_log(self) -> None:
        """close_log=True closes the log with the emitter; otherwise it stays open."""
        owned, lent = FlakyLog([]), FlakyLog([])
        EventLogEmitter(owned, close_log=True).close()
        EventLogEmitter(lent).close()
        assert (owned.closed, lent.closed) == (True, False)

    def test_a_negative_keep_is_refused(self) -> None:
        """keep < 0 is a ConfigError that says what to give."""
        with pytest.raises(ConfigError, match="keep must be an integer >= 0"):
            EventLogEmitter(MemoryEventLog(), keep=-1)


class TestEventConsumer:
    """Events reach the handler in offset order, at least once, from the committed position."""

    def test_poll_handles_in_order_and_commits(self, backend: Backend) -> None:
        """poll hands every event over in order and commits each one."""
        log = backend.event_log()
        log.append(_events(5))
        seen: list[int] = []
        consumer = EventConsumer(log, "audit", lambda e: seen.append(e.offset), batch=3)
        assert consumer.poll() == 3
        assert consumer.poll() == 2
        assert consumer.poll() == 0
        assert seen == [1, 2, 3, 4, 5]
        assert log.committed("audit") == 5
        assert consumer.handled == 5

    def test_commit_every_writes_the_position_every_n_and_at_each_batch_end(
        self, backend: Backend
    ) -> None:
        """With commit_every=3 the position is stored after events 3 and 6 and at the
        end of each batch; a crash would replay at most 2 events."""
        log = backend.event_log()
        log.append(_events(8))
        commits: list[int] = []
        commit = log.commit

        def counted(name: str, offset: int) -> None:
            commits.append(offset)
            commit(name, offset)

        log.commit = counted  # type: ignore[method-assign, assignment]
        consumer = EventConsumer(log, "audit", lambda e: None, batch=7, commit_every=3)
        assert (consumer.poll(), consumer.poll()) == (7, 1)
        assert commits == [3, 6, 7, 8]
        assert log.committed("audit") == 8

    def test_commit_every_commits_what_was_handled_before_a_failure(self, backend: Backend) -> None:
        """A handler failing mid-batch: the events handled before it are committed."""
        log = backend.event_log()
        log.append(_events(5))

        def handler(logged: LoggedEvent) -> None:
            if logged.offset == 4:
                raise RuntimeError("downstream refused")

        with pytest.raises(RuntimeError):
            EventConsumer(log, "c", handler, commit_every=10).poll()
        assert log.committed("c") == 3

    @pytest.mark.parametrize("bad", [0, -1, True, 2.5])
    def test_a_bad_commit_every_is_refused(self, bad: object) -> None:
        """commit_every must be an integer >= 1: a ConfigError saying so."""
        with pytest.raises(ConfigError, match="commit_every must be an integer >= 1"):
            EventConsumer(MemoryEventLog(), "c", lambda e: None, commit_every=bad)  # type: ignore[arg-type]

    def test_a_new_consumer_resumes_from_the_committed_position(self, backend: Backend) -> None:
        """A consumer of the same name starts after what was committed; another name replays."""
        log = backend.event_log()
        log.append(_events(4))
        EventConsumer(log, "audit", lambda e: None, batch=2).poll()
        log.append(_events(1))
        resumed: list[int] = []
        EventConsumer(log, "audit", lambda e: resumed.append(e.offset)).poll()
        replayed: list[int] = []
        EventConsumer(log, "billing", lambda e: replayed.append(e.offset)).poll()
        assert resumed == [3, 4, 5]
        assert replayed == [1, 2, 3, 4, 5]

    def test_a_failing_handler_stops_at_its_event(self) -> None:
        """Events before the failing one are committed; the failing one comes again."""
        log = MemoryEventLog()
        log.append(_events(4))
        calls: list[int] = []

        def handler(logged: LoggedEvent) -> None:
            calls.append(logged.offset)
            if logged.offset == 3 and calls.count(3) == 1:
                raise RuntimeError("downstream refused")

        consumer = EventConsumer(log, "c", handler)
        with pytest.raises(RuntimeError, match="downstream refused"):
            consumer.poll()
        assert log.committed("c") == 2
        assert consumer.poll() == 2
        assert calls == [1, 2, 3, 3, 4]

    def test_run_backs_off_on_errors_and_goes_on(self, caplog: pytest.LogCaptureFixture) -> None:
        """run logs and counts a failure, retries after a backoff, and delivers the rest."""
        log = MemoryEventLog()
        log.append(_events(3))
        stop = threading.Event()
        failed: list[int] = []

        def handler(logged: LoggedEvent) -> None:
            if logged.offset == 2 and not failed:
                failed.append(2)
                raise RuntimeError("once")
            if logged.offset == 3:
                stop.set()

        consumer = EventConsumer(log, "c", handler, retry=FAST)
        with caplog.at_level(logging.ERROR, "agentic.events"):
            thread = threading.Thread(target=consumer.run, args=(stop, 0.01))
            thread.start()
            thread.join(10)
        assert not thread.is_alive()
        assert (consumer.errors, consumer.handled, log.committed("c")) == (1, 3, 3)
        assert "stopped after offset 1" in caplog.text

    def test_run_survives_a_store_outage(self) -> None:
        """A store error while reading is counted and retried, not the end of the loop."""

        class Outage(MemoryEventLog):
            def __init__(self) -> None:
                super().__init__()
                self.down = 2

            def read(self, after: int = 0, limit: int = 100) -> list[LoggedEvent]:
                if self.down:
                    self.down -= 1
                    raise StoreUnavailableError("Redis unavailable")
                return super().read(after, limit)

        log = Outage()
        log.append(_events(1))
        stop = threading.Event()
        consumer = EventConsumer(log, "c", lambda e: stop.set(), retry=FAST)
        consumer.run(stop, 0.01)
        assert (consumer.errors, consumer.handled) == (2, 1)

    def test_trimmed_events_are_reported_as_missed(self, caplog: pytest.LogCaptureFixture) -> None:
        """Events trimmed before the consumer reached them are logged and counted."""
        log = MemoryEventLog()
        log.append(_events(2))
        seen: list[int] = []
        consumer = EventConsumer(log, "slow", lambda e: seen.append(e.offset))
        consumer.poll()
        log.append(_events(6))
        log.trim(2)
        with caplog.at_level(logging.ERROR, "agentic.events"):
            consumer.poll()
        assert seen == [1, 2, 7, 8]
        assert consumer.missed == 4
        assert "events 3 to 6 were trimmed" in caplog.text

    def test_a_new_consumer_of_a_trimmed_log_misses_nothing(self) -> None:
        """A consumer with no position starts at the oldest event kept, without a report."""
        log = MemoryEventLog()
        log.append(_events(5))
        log.trim(2)
        seen: list[int] = []
        consumer = EventConsumer(log, "new", lambda e: seen.append(e.offset))
        consumer.poll()
        assert (seen, consumer.missed) == ([4, 5], 0)

    def test_a_log_that_went_back_is_replayed(self, caplog: pytest.LogCaptureFixture) -> None:
        """A log whose newest offset is below the consumer's position is read from the start."""
        log = MemoryEventLog()
        log.commit("c", 5)  # as if the log had held 5 events before it was emptied
        log.append(_events(2))
        seen: list[int] = []
        consumer = EventConsumer(log, "c", lambda e: seen.append(e.offset))
        with caplog.at_level(logging.ERROR, "agentic.events"):
            assert consumer.poll() == 0
        assert "the log went back" in caplog.text
        assert consumer.poll() == 2
        assert seen == [1, 2]
        assert log.committed("c") == 2

    def test_an_async_handler_is_refused(self) -> None:
        """An async def handler, or one returning an awaitable, commits nothing."""

        async def handler(logged: LoggedEvent) -> None:
            return None

        log = MemoryEventLog()
        log.append(_events(1))
        with pytest.raises(ConfigError, match="the handler is async"):
            EventConsumer(log, "c", handler)
        sneaky = EventConsumer(log, "c", lambda e: handler(e))  # noqa: PLW0108 - hides the async
        with pytest.raises(ConfigError, match="returned an awaitable for offset 1"):
            sneaky.poll()
        assert log.committed("c") == 0

    def test_run_refuses_an_interval_that_would_spin(self) -> None:
        """run with interval <= 0 is a ConfigError rather than a busy loop."""
        consumer = EventConsumer(MemoryEventLog(), "c", lambda e: None)
        with pytest.raises(ConfigError, match="interval must be > 0"):
            consumer.run(threading.Event(), 0)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [({"name": ""}, "consumer name"), ({"batch": 0}, "batch must be from 1 to 1000")],
    )
    def test_bad_settings_are_refused(self, kwargs: dict[str, Any], message: str) -> None:
        """An empty name or a batch out of range is a ConfigError."""
        settings: dict[str, Any] = {"name": "c", **kwargs}
        log: EventLog = MemoryEventLog()
        with pytest.raises(ConfigError, match=message):
            EventConsumer(log, settings.pop("name"), lambda e: None, **settings)
