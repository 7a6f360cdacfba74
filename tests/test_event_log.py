"""The EventLog contract on every backend, and appends racing from real OS processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest

from agentic.errors import ConfigError, StoreError
from agentic.eventlog import EventConsumer
from agentic.events import Event, EventType
from agentic.stores import EventLog, open_event_log
from agentic.stores.redis import RedisEventLog
from agentic.stores.sqlite import SQLiteEventLog

from .conftest import Backend

SPAWN = mp.get_context("spawn")


def _event(n: int = 0, **fields: Any) -> Event:
    return Event(type=EventType.TASK_COMPLETED, task_id=f"t{n}", **fields)


class TestEventLogContract:
    """Every backend keeps the same log: offsets, dedupe, paging, trims, consumers."""

    def test_an_empty_log(self, backend: Backend) -> None:
        """A new log reads nothing, has offset 0 and knows no consumer."""
        log = backend.event_log()
        assert log.read() == []
        assert log.last_offset() == 0
        assert log.committed("c") == 0
        assert log.append([]) == []

    def test_append_gives_increasing_offsets_from_one(self, backend: Backend) -> None:
        """Offsets start at 1 and follow append order, across appends."""
        log = backend.event_log()
        assert log.append([_event(1), _event(2)]) == [1, 2]
        assert log.append([_event(3)]) == [3]
        assert [e.offset for e in log.read()] == [1, 2, 3]
        assert [e.event.task_id for e in log.read()] == ["t1", "t2", "t3"]
        assert log.last_offset() == 3

    def test_an_event_reads_back_equal(self, backend: Backend) -> None:
        """Every field survives the store: payload, times, ids, correlation."""
        log = backend.event_log()
        event = Event(
            type=EventType.QUOTA_WARNING,
            time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            source="dispatcher-1",
            task_id="t",
            agent_id="a",
            payload={"used": 81, "nested": {"list": [1, "x", None]}, "ratio": 0.8},
            correlation_id="c",
            causation_id="p",
        )
        log.append([event])
        assert log.read()[0].event == event

    def test_an_event_id_is_appended_once(self, backend: Backend) -> None:
        """Appending an event already in the log answers its offset and adds nothing."""
        log = backend.event_log()
        first, second = _event(1), _event(2)
        log.append([first])
        assert log.append([second, first, second]) == [2, 1, 2]
        assert [e.event.id for e in log.read()] == [first.id, second.id]
        assert log.last_offset() == 2

    def test_read_pages_after_an_offset(self, backend: Backend) -> None:
        """read(after, limit) gives the next page; past the end it gives nothing."""
        log = backend.event_log()
        log.append([_event(i) for i in range(1, 8)])
        assert [e.offset for e in log.read(after=2, limit=3)] == [3, 4, 5]
        assert [e.offset for e in log.read(after=5, limit=10)] == [6, 7]
        assert log.read(after=7) == []
        assert log.read(after=100) == []

    def test_trim_keeps_the_newest(self, backend: Backend) -> None:
        """trim(keep) drops the oldest events and says how many went."""
        log = backend.event_log()
        log.append([_event(i) for i in range(1, 6)])
        assert log.trim(2) == 3
        assert [e.offset for e in log.read()] == [4, 5]
        assert log.trim(2) == 0
        assert log.trim(10) == 0

    def test_trim_up_to_spares_what_follows(self, backend: Backend) -> None:
        """trim(keep, up_to) drops nothing past offset up_to, nor the newest keep."""
        log = backend.event_log()
        log.append([_event(i) for i in range(1, 9)])
        assert log.trim(2, up_to=3) == 3
        assert [e.offset for e in log.read()] == [4, 5, 6, 7, 8]
        assert log.trim(2, up_to=3) == 0
        assert log.trim(2, up_to=100) == 3
        assert [e.offset for e in log.read()] == [7, 8]
        assert log.trim(0, up_to=0) == 0

    def test_trim_up_to_goes_in_steps(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bounded trim of more than one step drops exactly up to its bound."""
        for module in ("sqlite", "redis"):
            monkeypatch.setattr(f"agentic.stores.{module}.eventlog.TRIM_STEP", 3)
        log = backend.event_log()
        log.append([_event(i) for i in range(1, 12)])
        assert log.trim(0, up_to=7) == 7
        assert [e.offset for e in log.read()] == [8, 9, 10, 11]

    def test_forget_drops_a_consumer(self, backend: Backend) -> None:
        """forget(name) removes its position and says whether there was one."""
        log = backend.event_log()
        log.commit("a", 5)
        log.commit("b", 2)
        assert log.forget("a") is True
        assert log.forget("a") is False
        assert log.consumers() == {"b": 2}
        assert log.committed("a") == 0

    def test_offsets_are_never_reused_after_a_trim(self, backend: Backend) -> None:
        """After trimming everything the next event still gets the next offset."""
        log = backend.event_log()
        log.append([_event(1), _event(2)])
        assert log.trim(0) == 2
        assert log.read() == []
        assert log.last_offset() == 2
        assert log.append([_event(3)]) == [3]

    def test_a_trimmed_event_id_is_new_again(self, backend: Backend) -> None:
        """The ids of trimmed events are forgotten with them."""
        log = backend.event_log()
        event = _event(1)
        log.append([event])
        log.trim(0)
        assert log.append([event]) == [2]

    def test_a_consumer_position_only_moves_forward(self, backend: Backend) -> None:
        """commit keeps the highest offset; consumers are independent."""
        log = backend.event_log()
        log.commit("a", 5)
        log.commit("a", 3)
        log.commit("b", 1)
        assert log.committed("a") == 5
        assert log.committed("b") == 1
        log.commit("a", 9)
        assert log.committed("a") == 9

    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (lambda log: log.read(after=-1), "after must be an integer >= 0"),
            (lambda log: log.read(limit=0), "limit must be from 1 to 1000"),
            (lambda log: log.read(limit=1001), "limit must be from 1 to 1000"),
            (lambda log: log.commit("c", -1), "offset must be an integer >= 0"),
            (lambda log: log.commit("", 1), "consumer name must be 1-200 characters"),
            (lambda log: log.committed("x" * 201), "consumer name must be 1-200 characters"),
            (lambda log: log.trim(-1), "keep must be an integer >= 0"),
            (lambda log: log.trim(1, up_to=-1), "up_to must be an integer >= 0"),
            (lambda log: log.forget(""), "consumer name must be 1-200 characters"),
        ],
    )
    def test_bad_arguments_are_refused(self, backend: Backend, call: Any, message: str) -> None:
        """Bad offsets, limits, names and counts raise ConfigError and change nothing."""
        log = backend.event_log()
        log.append([_event(1)])
        with pytest.raises(ConfigError, match=message):
            call(log)
        assert [e.offset for e in log.read()] == [1]

    def test_reset_moves_a_consumer_back_or_forward(self, backend: Backend) -> None:
        """reset sets a position whatever the stored one (to replay, or skip)."""
        log = backend.event_log()
        log.commit("a", 7)
        log.reset("a", 2)
        assert log.committed("a") == 2
        log.reset("a", 9)
        assert log.committed("a") == 9
        log.reset("b")
        assert log.committed("b") == 0

    def test_an_event_with_an_empty_id_is_kept(self, backend: Backend) -> None:
        """An event whose id is "" is appended (and deduped on "") like any other."""
        log = backend.event_log()
        event = Event(id="", type=EventType.TASK_COMPLETED, task_id="t1")
        assert log.append([event]) == [1]
        assert log.append([event]) == [1]
        assert [e.event.task_id for e in log.read()] == ["t1"]

    def test_consumers_lists_every_stored_position_by_name(self, backend: Backend) -> None:
        """consumers() gives each consumer's position, sorted by name; none at first."""
        log = backend.event_log()
        assert log.consumers() == {}
        log.commit("billing", 4)
        log.commit("audit", 9)
        log.reset("émoji-ü", 1)
        assert list(log.consumers().items()) == [("audit", 9), ("billing", 4), ("émoji-ü", 1)]

    def test_an_event_that_is_not_json_is_refused_whole(self, backend: Backend) -> None:
        """A payload JSON cannot hold is a ConfigError naming the event; nothing is added."""
        log = backend.event_log()
        bad = Event(type=EventType.TASK_FAILED, payload={"error": object()})
        with pytest.raises(ConfigError, match=rf"event {bad.id} \(task_failed\).*not JSON"):
            log.append([_event(1), bad])
        assert log.read() == []
        assert log.last_offset() == 0

    def test_trim_goes_in_steps(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        """A trim larger than one step drops everything asked, a step at a time."""
        for module in ("sqlite", "redis"):
            monkeypatch.setattr(f"agentic.stores.{module}.eventlog.TRIM_STEP", 3)
        log = backend.event_log()
        log.append([_event(i) for i in range(1, 12)])
        assert log.trim(1) == 10
        assert [e.offset for e in log.read()] == [11]

    def test_counts_beyond_64_bits_are_refused(self, backend: Backend) -> None:
        """Offsets and counts from 2**63 up are a ConfigError, not a backend overflow."""
        log = backend.event_log()
        for call in (lambda: log.read(after=2**63), lambda: log.commit("c", 2**64)):
            with pytest.raises(ConfigError, match=r"below 2\*\*63"):
                call()

    def test_an_unreadable_entry_stops_the_page_and_is_named(self, backend: Backend) -> None:
        """Events before an unreadable entry are returned; reading from it names its offset;
        reset past it goes on."""
        if backend.name == "memory":
            pytest.skip("the memory log keeps Event objects: nothing to damage")
        log = backend.event_log()
        log.append([_event(1)])
        _append_raw(log, '{"type": "task_completed", "time": "not a time"}')
        log.append([_event(3)])
        assert [e.offset for e in log.read()] == [1]
        with pytest.raises(StoreError, match=r"offset 2 .* reset\(name, 2\)"):
            log.read(after=1)
        assert [e.offset for e in log.read(after=2)] == [3]

    def test_a_type_added_by_a_newer_version_is_read_as_written(self, backend: Backend) -> None:
        """An event of a type this version does not know (a newer one's, mid-upgrade) is
        read with its type as written, not a stop: readers and consumers go past it;
        a type no version could write still stops them."""
        if backend.name == "memory":
            pytest.skip("the memory log keeps Event objects: no other version writes it")
        log = backend.event_log()
        log.append([_event(1)])
        _append_raw(log, '{"id": "e2", "type": "task_paused", "task_id": "t2"}')
        log.append([_event(3)])
        read = log.read()
        assert [(e.offset, e.event.type, e.event.task_id) for e in read] == [
            (1, EventType.TASK_COMPLETED, "t1"),
            (2, "task_paused", "t2"),
            (3, EventType.TASK_COMPLETED, "t3"),
        ]
        assert read[1].event.type not in set(EventType)
        handled: list[str] = []
        consumer = EventConsumer(log, "c", lambda e: handled.append(e.event.type))
        assert consumer.poll() == 3
        assert handled == ["task_completed", "task_paused", "task_completed"]
        _append_raw(log, '{"type": "Task Paused!"}')
        with pytest.raises(StoreError, match=r"offset 4 .* reset\(name, 4\)"):
            log.read(after=3)

    def test_two_handles_share_one_log(self, backend: Backend) -> None:
        """A second log opened on the same store sees the first one's events."""
        if backend.url is None:
            pytest.skip("an in-process backend has no second handle")
        first = backend.event_log()
        first.append([_event(1)])
        first.commit("c", 1)
        with open_event_log(backend.url) as other:
            assert [e.event.task_id for e in other.read()] == ["t1"]
            assert other.committed("c") == 1
            assert other.append([_event(2)]) == [2]
        assert first.last_offset() == 2


def _append_raw(log: EventLog, body: str) -> None:
    """Append an entry with ``body`` as is, behind the store's back (a damaged entry)."""
    offset = log.last_offset() + 1
    if isinstance(log, SQLiteEventLog):
        with sqlite3.connect(log._db.path) as conn:
            conn.execute("INSERT INTO events (id, body) VALUES (?, ?)", (f"raw{offset}", body))
        return
    assert isinstance(log, RedisEventLog)
    keys = log._keys
    log._client.xadd(keys.stream, {"id": "raw", "body": body}, id=f"{offset}-0")
    log._client.set(keys.seq, offset)


def _append_many(url: str, worker: int, batches: int, out: Any) -> None:
    log = open_event_log(url)
    offsets: list[int] = []
    for i in range(batches):
        events = [_event(worker * 1000 + i * 10 + j) for j in range(3)]
        offsets += log.append(events)
        offsets += log.append(events[:1])  # a retried append: no new offset
    log.close()
    out.put((worker, offsets))


@pytest.mark.slow
def test_processes_appending_at_once_get_distinct_ordered_offsets(shared_url: str) -> None:
    """4 processes x 50 appends: every event once, offsets 1..600, each process's in order."""
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=_append_many, args=(shared_url, w, 50, out)) for w in range(4)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    with open_event_log(shared_url) as log:
        logged = [e for page in range(0, 600, 100) for e in log.read(page, 100)]
        assert log.last_offset() == 600
    assert [e.offset for e in logged] == list(range(1, 601))
    assert len({e.event.id for e in logged}) == 600
    by_task = {e.event.task_id: e.offset for e in logged}
    for worker, offsets in results.items():
        new = [o for i, o in enumerate(offsets) if i % 4 != 3]  # every 4th was the retry
        assert new == sorted(new), f"process {worker} saw its events out of order"
        assert [by_task[f"t{worker * 1000 + i}"] for i in (0, 1, 2)] == new[:3]
        retried = [o for i, o in enumerate(offsets) if i % 4 == 3]
        assert retried == new[::3]


class TestRedisEventLog:
    """What only the Redis log has to take care of: its counter key and stream ids."""

    @pytest.fixture
    def log(self, backend: Backend) -> RedisEventLog:
        if backend.name not in ("redis", "fakeredis"):
            pytest.skip("Redis only")
        log = backend.event_log()
        assert isinstance(log, RedisEventLog)
        return log

    def test_a_lost_counter_goes_on_after_the_stream(self, log: RedisEventLog) -> None:
        """With the counter key gone (evicted, deleted) appends continue after the newest entry."""
        log.append([_event(1), _event(2)])
        log._client.delete(log._keys.seq)
        assert log.append([_event(3)]) == [3]
        assert [e.offset for e in log.read()] == [1, 2, 3]

    def test_fifteen_digit_offsets_are_stream_ids(self, log: RedisEventLog) -> None:
        """Offsets from 10**14 up still make valid entry ids (no 1e+14 notation)."""
        log._client.set(log._keys.seq, 10**14 - 1)
        assert log.append([_event(1), _event(2)]) == [10**14, 10**14 + 1]
        assert [e.offset for e in log.read(after=10**14 - 1)] == [10**14, 10**14 + 1]
