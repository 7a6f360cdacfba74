"""Lifecycle events and the emitters that deliver them.

The rules every emitter in this module keeps:

* **Ordering.** Per emitter, delivery order is emit order: events emitted from one
  thread arrive in that order. Concurrent emits from several threads are delivered
  in the order they take the emitter's lock; there is no order across emitters.
  :class:`FanoutEmitter` hands one event to all its emitters, in the order given,
  before it returns, so every child sees the same sequence.
* **Thread safety.** ``emit`` may be called from any thread and from an asyncio
  event loop: it never blocks and never awaits. Only :meth:`QueueEmitter.get` waits,
  on the consumer's thread (from asyncio use ``asyncio.to_thread`` or ``drain``).
* **Errors.** ``emit`` never raises an ``Exception``: events are observations, and a
  broken sink must not fail the dispatch or the quota step that produced them. A
  failing sink (a callback, a child emitter) is logged with its traceback and counted
  in ``.errors``; an event that could not be kept (buffer full, emitter closed) is
  counted in ``.dropped``. ``BaseException`` (KeyboardInterrupt...) still propagates.
* **Close.** ``close`` is idempotent. Afterwards ``emit`` delivers nothing, counts
  the event in ``.dropped`` and returns; it never raises (go-agentic's defect 18:
  emit after close panicked by sending on a closed channel). A closed
  :class:`QueueEmitter` keeps what it had buffered readable.
* Events are frozen; treat ``payload`` as read-only too, since one object reaches
  every emitter.

CloudEvents 1.0 mapping (:meth:`Event.to_cloudevent`): ``type`` becomes
``"io.agentic." + type`` (for example ``io.agentic.task_dispatched``), a reverse-DNS
prefix as the spec recommends, keeping our wire names after it; ``subject`` is the
task id, else the agent id, else absent; ``data`` holds ``task_id``, ``agent_id``
and ``payload``; ``correlation_id`` / ``causation_id`` become the extension
attributes ``correlationid`` / ``causationid`` (extension names must be lowercase
alphanumerics) when set. ``id`` alone is the dedupe key consumers should use: a
task's transition has one id whoever reports it (the task store, the dispatcher, the
runner: :func:`transition_id`), with a ``source`` of its own each.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from types import TracebackType
from typing import Any, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from .errors import ConfigError
from .models import STORED, utcnow

__all__ = [
    "CLOUDEVENT_TYPE_PREFIX",
    "CallbackEmitter",
    "Event",
    "EventEmitter",
    "EventType",
    "FanoutEmitter",
    "LoggingEmitter",
    "QueueEmitter",
    "transition_id",
    "crossing_id",
    "usage_id",
]

CLOUDEVENT_TYPE_PREFIX = "io.agentic."
DEFAULT_QUEUE_SIZE = 64  # go-agentic's channel buffer

_log = logging.getLogger(__name__)


class EventType(StrEnum):
    """What happened. The first eight are go-agentic's; the rest are agentic's."""

    TASK_DISPATCHED = "task_dispatched"
    TASK_CLAIMED = "task_claimed"
    DISPATCH_FAILED_NO_AGENT = "dispatch_failed_no_agent"
    DISPATCH_FAILED_QUOTA = "dispatch_failed_quota"
    TASK_DEAD_LETTERED = "task_dead_lettered"
    QUOTA_WARNING = "quota_warning"
    QUOTA_EXCEEDED = "quota_exceeded"
    USAGE_RECORDED = "usage_recorded"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    TASK_REQUEUED = "task_requeued"
    TASK_BLOCKED = "task_blocked"
    AGENT_REGISTERED = "agent_registered"
    AGENT_OFFLINE = "agent_offline"

    @classmethod
    def later(cls, value: str) -> EventType:
        """A type this version does not know, as a newer one wrote it: equal to
        ``value`` (a string), never to a member of this version."""
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member


# What a type written by a newer agentic looks like (anything else is damage).
_LATER_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class Event(BaseModel):
    """One lifecycle event. ``time`` is UTC; go-agentic's ``timestamp`` is accepted.

    ``correlation_id`` ties together everything done for one task or request;
    ``causation_id`` is the id of the event that caused this one.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    type: EventType
    time: datetime = Field(
        default_factory=utcnow, validation_alias=AliasChoices("time", "timestamp")
    )
    source: str = "agentic"
    task_id: str = ""
    agent_id: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str = ""
    causation_id: str = ""

    @field_validator("type", mode="before")
    @classmethod
    def _later_type(cls, value: object, info: ValidationInfo) -> object:
        """Read back from a log (``models.STORED``), a type this version does not
        know is one a newer agentic added (a rolling upgrade): the event is read with
        it, for readers to pass over, not taken for damage that stops every reader.
        Events made here keep to this version's types."""
        stored = isinstance(info.context, dict) and info.context.get("stored")
        if not (stored and isinstance(value, str) and _LATER_TYPE.fullmatch(value)):
            return value
        return EventType._value2member_map_.get(value) or EventType.later(value)

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def to_cloudevent(self) -> dict[str, Any]:
        """This event as a CloudEvents 1.0 JSON-ready dict (mapping in module docs)."""
        data = self.model_dump(mode="json", include={"task_id", "agent_id", "payload"})
        cloudevent: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": CLOUDEVENT_TYPE_PREFIX + self.type.value,
            # RFC 3339 with the "Z" designator, which every consumer parses.
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": data,
        }
        subject = self.task_id or self.agent_id
        if subject:
            cloudevent["subject"] = subject
        if self.correlation_id:
            cloudevent["correlationid"] = self.correlation_id
        if self.causation_id:
            cloudevent["causationid"] = self.causation_id
        return cloudevent

    @classmethod
    def from_cloudevent(cls, cloudevent: dict[str, Any], *, stored: bool = False) -> Event:
        """The inverse of :meth:`to_cloudevent`; a foreign ``type`` is a ConfigError.
        ``stored``: read back from where a writer put it (a Redis stream), so a type a
        newer agentic added is read as written (``EventType.later``)."""
        kind = str(cloudevent.get("type", ""))
        if not kind.startswith(CLOUDEVENT_TYPE_PREFIX):
            raise ConfigError(f"not an agentic event type: {kind!r}")
        data = cloudevent.get("data") or {}
        fields = {
            "id": cloudevent["id"],
            "type": kind.removeprefix(CLOUDEVENT_TYPE_PREFIX),
            "time": cloudevent["time"],
            "source": cloudevent["source"],
            "task_id": data.get("task_id", ""),
            "agent_id": data.get("agent_id", ""),
            "payload": data.get("payload", {}),
            "correlation_id": cloudevent.get("correlationid", ""),
            "causation_id": cloudevent.get("causationid", ""),
        }
        return cls.model_validate(fields, context=STORED if stored else None)


#: Task events that happen once per run of a task (see transition_id), whatever the attempt.
_ONCE_PER_TASK = frozenset({EventType.TASK_COMPLETED, EventType.TASK_DEAD_LETTERED})


def transition_id(task_id: str, kind: EventType, job_id: str = "", rerun: int = 0) -> str:
    """The id of the event telling that ``task_id`` went through ``kind``.

    Every writer of one transition (the task store recording it, the dispatcher and
    the runner emitting it) derives the same id, so the event log keeps it once:
    ``{task}:{kind}`` for what happens once per run of a task (completed,
    dead-lettered), ``{task}:{job_id}:{kind}`` for what happens once per attempt.
    A task retried after it failed runs again: its ``rerun``-th run (``Task.reruns``)
    names those ``{task}:{kind}:{rerun}``, so a second dead letter is a new event.
    Without a job id (go-agentic's clients) an attempt cannot be named: a random id
    (a Redis task store names its own record ``{task}:{kind}#{offset}``, by its
    place in the log).
    """
    if kind in _ONCE_PER_TASK:
        return f"{task_id}:{kind.value}:{rerun}" if rerun else f"{task_id}:{kind.value}"
    if job_id:
        return f"{task_id}:{job_id}:{kind.value}"
    return uuid.uuid4().hex


def usage_id(job_id: str) -> str:
    """The id of the ``usage_recorded`` event of job ``job_id``: one settle per job, so
    one event, whoever reports it (the quota store recording it, the service
    emitting it) and however often the settle is repeated."""
    return f"{job_id}:{EventType.USAGE_RECORDED.value}"


def crossing_id(job_id: str, step: str, kind: EventType) -> str:
    """The id of the ``quota_warning`` / ``quota_exceeded`` event that job ``job_id``'s
    ``step`` (``reserve`` or ``settle``) caused: each happens once per job, so one
    event, whoever reports it (the quota store recording it, the service emitting
    it)."""
    return f"{job_id}:{step}:{kind.value}"


class EventEmitter(ABC):
    """Where events go. Implementations follow the rules in the module docstring."""

    @abstractmethod
    def emit(self, event: Event) -> None:
        """Deliver ``event``; never blocks, never raises an Exception."""

    @abstractmethod
    def close(self) -> None:
        """Stop delivering; idempotent. Later emits are counted as dropped."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _BoundedBuffer(EventEmitter):
    """A bounded FIFO of events behind one condition (``_ready``): ``emit`` keeps the
    event, or counts it in ``dropped`` when the buffer is full or closed and logs the
    first drop of each overflow. Its readers are the subclasses."""

    def __init__(self, maxsize: int) -> None:
        # queue.Queue reads 0 as "unbounded", the opposite of what a bound is for.
        if maxsize < 1:
            raise ConfigError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self._buffer: deque[Event] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._overflowing = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._ready:
            return len(self._buffer)

    def emit(self, event: Event) -> None:
        with self._ready:
            if self._closed:
                self.dropped += 1
                return
            if len(self._buffer) < self.maxsize:
                self._buffer.append(event)
                self._overflowing = False
                self._ready.notify_all()
                return
            self.dropped += 1
            first_drop, self._overflowing = not self._overflowing, True
        # Once per overflow, not per event: a stuck consumer must not flood the log.
        if first_drop:
            _log.warning(
                "%s full (%d): dropping events until it drains", self._kind(), self.maxsize
            )

    def _kind(self) -> str:
        """What the overflow warning calls this buffer."""
        return "event queue"


class QueueEmitter(_BoundedBuffer):
    """A bounded in-memory buffer for a consumer to read (go-agentic's channel).

    A full buffer drops the new event rather than block the emitter; ``dropped``
    counts every event not kept, and the first drop of each overflow is logged.
    """

    def __init__(self, maxsize: int = DEFAULT_QUEUE_SIZE) -> None:
        super().__init__(maxsize)

    def get(self, timeout: float | None = None) -> Event | None:
        """The oldest buffered event, waiting up to ``timeout`` seconds (``None``:
        until one arrives or the emitter closes). ``None`` when the wait ends empty,
        so ``while (event := q.get()) is not None`` stops once closed and drained."""
        with self._ready:
            self._ready.wait_for(lambda: self._buffer or self._closed, timeout)
            return self._buffer.popleft() if self._buffer else None

    def drain(self) -> list[Event]:
        """Every buffered event, oldest first, without waiting."""
        with self._ready:
            events = list(self._buffer)
            self._buffer.clear()
            return events

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class _GuardedEmitter(EventEmitter):
    """Shared bookkeeping for emitters that call out: closed flag, counters, and
    turning a sink's exception into a log line and ``errors += 1``."""

    def __init__(self) -> None:
        self.errors = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def emit(self, event: Event) -> None:
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
        self._guard(self, partial(self._deliver, event), event)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    @abstractmethod
    def _deliver(self, event: Event) -> None: ...

    def _shutdown(self) -> None:
        """What close() does beyond refusing further events."""

    def _guard(self, sink: object, call: Callable[[], object], event: Event | None) -> None:
        """Run ``call``; on failure log it (``event`` None: while closing) and count it."""
        try:
            call()
        except Exception:
            if event is None:
                _log.exception("closing event sink %r failed", sink)
            else:
                _log.exception("event sink %r failed on %s %s", sink, event.type.value, event.id)
            with self._lock:
                self.errors += 1


class FanoutEmitter(_GuardedEmitter):
    """Delivers every event to each emitter in turn; one failing emitter is logged
    and counted and the others still get the event. ``close`` closes them all."""

    def __init__(self, *emitters: EventEmitter) -> None:
        super().__init__()
        self.emitters = emitters

    def _deliver(self, event: Event) -> None:
        for emitter in self.emitters:
            self._guard(emitter, partial(emitter.emit, event), event)

    def _shutdown(self) -> None:
        for emitter in self.emitters:
            self._guard(emitter, emitter.close, None)


class LoggingEmitter(_GuardedEmitter):
    """Writes one log line per event; the event's JSON is on the record as ``event``
    for structured handlers."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        super().__init__()
        self.logger = logger or logging.getLogger("agentic.events")
        self.level = level

    def _deliver(self, event: Event) -> None:
        self.logger.log(
            self.level,
            "%s task=%s agent=%s payload=%s",
            event.type.value,
            event.task_id or "-",
            event.agent_id or "-",
            event.payload,
            extra={"event": event.model_dump(mode="json")},
        )


class CallbackEmitter(_GuardedEmitter):
    """Calls ``fn(event)`` on the emitting thread; keep it quick, since the emitter
    waits for it. An exception from ``fn`` is logged and counted, not raised."""

    def __init__(self, fn: Callable[[Event], object]) -> None:
        super().__init__()
        self.fn = fn

    def __repr__(self) -> str:
        return f"CallbackEmitter({self.fn!r})"

    def _deliver(self, event: Event) -> None:
        self.fn(event)
