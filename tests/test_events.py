"""Events and emitters: go-agentic's emitter cases, close rules, CloudEvents shape."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agentic.errors import ConfigError
from agentic.events import (
    CLOUDEVENT_TYPE_PREFIX,
    CallbackEmitter,
    Event,
    EventEmitter,
    EventType,
    FanoutEmitter,
    LoggingEmitter,
    QueueEmitter,
)

BuiltIn = QueueEmitter | FanoutEmitter | LoggingEmitter | CallbackEmitter
WHEN = datetime(2026, 1, 15, 10, 0, 0, 123456, tzinfo=UTC)


class FailingEmitter(EventEmitter):
    """Raises on every call, like a sink whose backend is down."""

    def emit(self, event: Event) -> None:
        raise RuntimeError("sink down")

    def close(self) -> None:
        raise RuntimeError("cannot close")


def event(kind: EventType = EventType.TASK_DISPATCHED, task_id: str = "task-1") -> Event:
    return Event(type=kind, task_id=task_id, agent_id="agent-1", payload={"n": 1})


# --- go-agentic's cases ---


def test_channel_emit() -> None:
    """An emitted event comes out of the queue unchanged."""
    q = QueueEmitter(10)
    sent = event()
    q.emit(sent)
    got = q.get(timeout=1)
    assert got == sent
    assert got is not None
    assert (got.type, got.task_id, got.agent_id, got.payload) == (
        EventType.TASK_DISPATCHED,
        "task-1",
        "agent-1",
        {"n": 1},
    )


def test_overflow_drops() -> None:
    """A full queue drops the new event without blocking and counts it."""
    q = QueueEmitter(2)
    for task_id in ("1", "2", "3"):
        q.emit(event(task_id=task_id))
    assert len(q) == 2
    assert q.dropped == 1
    assert [e.task_id for e in q.drain()] == ["1", "2"]


def test_overflow_is_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    """Drops log one warning per overflow, again only after the queue had room."""
    q = QueueEmitter(1)
    with caplog.at_level(logging.WARNING, logger="agentic.events"):
        for _ in range(5):
            q.emit(event())
        q.drain()
        q.emit(event())
        q.emit(event())
    assert q.dropped == 5
    assert [r.message for r in caplog.records].count(
        "event queue full (1): dropping events until it drains"
    ) == 2


def test_default_buffer() -> None:
    """The default buffer holds 64 events, like go-agentic's channel."""
    assert QueueEmitter().maxsize == 64


def test_buffer_must_be_bounded() -> None:
    """maxsize 0 is refused rather than read as unbounded."""
    with pytest.raises(ConfigError):
        QueueEmitter(0)


def test_fan_out() -> None:
    """Fan-out delivers each event to every emitter."""
    first, second = QueueEmitter(10), QueueEmitter(10)
    FanoutEmitter(first, second).emit(event(EventType.QUOTA_WARNING))
    assert [e.type for e in first.drain()] == [EventType.QUOTA_WARNING]
    assert [e.type for e in second.drain()] == [EventType.QUOTA_WARNING]


def test_continues_on_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A failing emitter is logged and counted; the ones after it still get the event."""
    good = QueueEmitter(10)
    fanout = FanoutEmitter(FailingEmitter(), good)
    with caplog.at_level(logging.ERROR, logger="agentic.events"):
        fanout.emit(event(EventType.TASK_CLAIMED))
    assert len(good) == 1
    assert fanout.errors == 1
    assert "sink down" in caplog.text


def test_concurrent_emit() -> None:
    """50 threads emitting at once lose nothing below the bound."""
    q = QueueEmitter(100)
    threads = [threading.Thread(target=q.emit, args=(event(),)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(q) == 50
    assert q.dropped == 0


# --- ordering, close, other emitters ---


def test_delivery_order_is_emit_order() -> None:
    """Each emitter, and each child of a fan-out, sees events in emit order."""
    q, seen = QueueEmitter(), []
    fanout = FanoutEmitter(q, CallbackEmitter(lambda e: seen.append(e.task_id)))
    for i in range(20):
        fanout.emit(event(task_id=str(i)))
    assert [e.task_id for e in q.drain()] == [str(i) for i in range(20)]
    assert seen == [str(i) for i in range(20)]


@pytest.mark.parametrize(
    "make",
    [
        QueueEmitter,
        lambda: FanoutEmitter(QueueEmitter()),
        LoggingEmitter,
        lambda: CallbackEmitter(lambda e: None),
    ],
)
def test_emit_after_close_does_not_raise(make: Callable[[], BuiltIn]) -> None:
    """Defect 18: after close, emit returns quietly and counts the event as dropped."""
    emitter = make()
    emitter.close()
    emitter.close()
    emitter.emit(event())
    assert emitter.dropped == 1


def test_closed_queue_keeps_its_buffer_and_wakes_readers() -> None:
    """Closing wakes a blocked reader; buffered events stay readable, then None."""
    q = QueueEmitter()
    results: list[Event | None] = []
    reader = threading.Thread(target=lambda: results.append(q.get()))
    reader.start()
    q.close()
    reader.join(timeout=5)
    assert results == [None]

    q2 = QueueEmitter()
    q2.emit(event(task_id="kept"))
    q2.close()
    got = q2.get()
    assert got is not None
    assert got.task_id == "kept"
    assert q2.get() is None
    assert q2.closed


def test_get_times_out_empty() -> None:
    """get with a timeout returns None when nothing arrives."""
    assert QueueEmitter().get(timeout=0.01) is None


def test_fanout_close_closes_children_and_isolates_failures() -> None:
    """Closing a fan-out closes every child even when one fails to close."""
    q = QueueEmitter()
    fanout = FanoutEmitter(FailingEmitter(), q)
    fanout.close()
    assert q.closed
    assert fanout.errors == 1


def test_context_manager_closes() -> None:
    """Leaving a with-block closes the emitter."""
    with QueueEmitter() as q:
        pass
    assert isinstance(q, QueueEmitter)
    assert q.closed


def test_callback_emitter_isolates_its_callback(caplog: pytest.LogCaptureFixture) -> None:
    """A raising callback is logged and counted, never raised to the emitter."""

    def explode(_: Event) -> None:
        raise ValueError("bad handler")

    emitter = CallbackEmitter(explode)
    with caplog.at_level(logging.ERROR, logger="agentic.events"):
        emitter.emit(event())
    assert emitter.errors == 1
    assert "bad handler" in caplog.text


def test_logging_emitter_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """The logging emitter writes a line with type, task and agent, JSON on the record."""
    logger = logging.getLogger("test.events")
    with caplog.at_level(logging.DEBUG, logger="test.events"):
        LoggingEmitter(logger, logging.DEBUG).emit(event(EventType.TASK_COMPLETED))
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "task_completed task=task-1 agent=agent-1 payload={'n': 1}"
    assert record.__dict__["event"]["type"] == "task_completed"


# --- the Event model and CloudEvents ---


def test_event_types() -> None:
    """Every type go-agentic defines plus ours exists with its wire name."""
    assert [t.value for t in EventType] == [
        "task_dispatched",
        "task_claimed",
        "dispatch_failed_no_agent",
        "dispatch_failed_quota",
        "task_dead_lettered",
        "quota_warning",
        "quota_exceeded",
        "usage_recorded",
        "task_completed",
        "task_failed",
        "task_requeued",
        "task_blocked",
        "agent_registered",
        "agent_offline",
    ]


def test_event_defaults() -> None:
    """A new event gets a unique hex id, the current UTC time and source agentic."""
    first, second = event(), event()
    assert len(first.id) == 32
    assert first.id != second.id
    assert first.time.tzinfo is UTC
    assert abs(datetime.now(UTC) - first.time) < timedelta(seconds=5)
    assert first.source == "agentic"


def test_event_accepts_go_timestamp_and_normalises_to_utc() -> None:
    """go-agentic's 'timestamp' field is read, and any offset becomes UTC."""
    plus_two = datetime(2026, 1, 15, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    parsed = Event.model_validate({"type": "task_claimed", "timestamp": plus_two.isoformat()})
    assert parsed.time == datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    assert parsed.time.tzinfo is UTC


def test_cloudevent_shape() -> None:
    """to_cloudevent gives a CloudEvents 1.0 dict with our type prefix and extensions."""
    ev = Event(
        id="abc",
        type=EventType.TASK_DEAD_LETTERED,
        time=WHEN,
        task_id="t9",
        agent_id="a1",
        payload={"reason": "max retries exceeded", "at": WHEN},
        correlation_id="corr-1",
        causation_id="ev-0",
    )
    assert ev.to_cloudevent() == {
        "specversion": "1.0",
        "id": "abc",
        "source": "agentic",
        "type": "io.agentic.task_dead_lettered",
        "time": "2026-01-15T10:00:00.123456Z",
        "subject": "t9",
        "datacontenttype": "application/json",
        "data": {
            "task_id": "t9",
            "agent_id": "a1",
            "payload": {"reason": "max retries exceeded", "at": "2026-01-15T10:00:00.123456Z"},
        },
        "correlationid": "corr-1",
        "causationid": "ev-0",
    }


def test_cloudevent_subject_and_optional_attributes() -> None:
    """Subject falls back to the agent id; empty ids and extensions are left out."""
    agent_event = Event(type=EventType.AGENT_OFFLINE, agent_id="a7").to_cloudevent()
    assert agent_event["subject"] == "a7"
    assert "correlationid" not in agent_event
    assert "causationid" not in agent_event
    assert "subject" not in Event(type=EventType.QUOTA_WARNING).to_cloudevent()


def test_cloudevent_round_trip() -> None:
    """from_cloudevent reverses to_cloudevent; a foreign type is refused."""
    ev = Event(
        type=EventType.USAGE_RECORDED, agent_id="a1", payload={"tokens": 5}, correlation_id="c"
    )
    assert Event.from_cloudevent(ev.to_cloudevent()) == ev
    assert CLOUDEVENT_TYPE_PREFIX == "io.agentic."
    with pytest.raises(ConfigError):
        Event.from_cloudevent({**ev.to_cloudevent(), "type": "com.example.thing"})
