"""In-process EventLog: a list in offset order behind one lock."""

from __future__ import annotations

import bisect
import builtins
import threading
import uuid

from ...errors import ConfigError
from ...events import Event
from ..base import (
    EventLog,
    LoggedEvent,
    event_json,
    require_consumer,
    require_count,
    require_page,
    require_wait,
)

__all__ = ["MemoryEventLog", "memory_store_id"]


def memory_store_id(events: MemoryEventLog | None = None) -> str:
    """``memory:<random>``, the id of a new memory store: each instance is storage of
    its own, which no other process (nor another instance) sees, so its id matches
    no other store's. A store recording into ``events`` shares that log's id."""
    return events.store_id() if events is not None else f"memory:{uuid.uuid4().hex}"


class MemoryEventLog(EventLog):
    """EventLog for tests and single-process use."""

    hears_appends = True  # every append is in this process

    def __init__(self) -> None:
        # A condition, used as the lock: appends wake the readers that wait.
        self._lock = threading.Condition()
        self._entries: list[LoggedEvent] = []  # offset order
        self._offsets: list[int] = []  # the entries' offsets, for bisect
        self._ids: dict[str, int] = {}  # event id -> offset, for the entries kept
        self._last = 0
        self._positions: dict[str, int] = {}
        self._store_id = memory_store_id()

    def store_id(self) -> str:
        return self._store_id

    def append(self, events: builtins.list[Event]) -> builtins.list[int]:
        for event in events:
            event_json(event)  # what the other stores refuse, refused here too
        with self._lock:
            out = []
            for event in events:
                offset = self._ids.get(event.id)
                if offset is None:
                    self._last = offset = self._last + 1
                    self._entries.append(LoggedEvent(offset, event))
                    self._offsets.append(offset)
                    self._ids[event.id] = offset
                out.append(offset)
            self._lock.notify_all()
            return out

    def read(self, after: int = 0, limit: int = 100) -> builtins.list[LoggedEvent]:
        require_page(after, limit)
        with self._lock:
            start = bisect.bisect_right(self._offsets, after)
            return self._entries[start : start + limit]

    def last_offset(self) -> int:
        with self._lock:
            return self._last

    def wait(self, after: int, timeout: float) -> bool:
        require_wait(after, timeout)
        with self._lock:
            # A kept entry above after: a log trimmed empty keeps its last offset.
            return self._lock.wait_for(
                lambda: bool(self._offsets) and self._offsets[-1] > after, timeout
            )

    def commit(self, consumer: str, offset: int) -> None:
        require_consumer(consumer)
        require_count("offset", offset)
        with self._lock:
            if offset > self._positions.get(consumer, 0):
                self._positions[consumer] = offset

    def committed(self, consumer: str) -> int:
        require_consumer(consumer)
        with self._lock:
            return self._positions.get(consumer, 0)

    def consumers(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._positions.items()))

    def reset(self, consumer: str, offset: int = 0) -> None:
        require_consumer(consumer)
        require_count("offset", offset)
        with self._lock:
            self._positions[consumer] = offset

    def forget(self, consumer: str) -> bool:
        require_consumer(consumer)
        with self._lock:
            return self._positions.pop(consumer, None) is not None

    def trim(self, keep: int, up_to: int | None = None) -> int:
        require_count("keep", keep)
        if up_to is not None:
            require_count("up_to", up_to)
        with self._lock:
            drop = max(0, len(self._entries) - keep)
            if up_to is not None:
                drop = min(drop, bisect.bisect_right(self._offsets, up_to))
            for entry in self._entries[:drop]:
                del self._ids[entry.event.id]
            del self._entries[:drop], self._offsets[:drop]
            return drop


def private_log_refused(what: str, store: str) -> ConfigError:
    """The error for a ``memory://`` store asked to record events: its log would be
    private to this process, unreadable through any URL and never trimmed."""
    return ConfigError(
        f"memory:// cannot record {what}: no other process could read its log;"
        f" use a sqlite:// or redis:// store, or {store}(events=...)"
    )


def require_memory_log(events: EventLog | None) -> MemoryEventLog | None:
    """A memory store records into a :class:`MemoryEventLog` only: it has no
    transaction to roll back, so an append that could fail (a closed file, Redis
    down) would leave the change made without its event."""
    if events is not None and not isinstance(events, MemoryEventLog):
        raise ConfigError(
            f"a memory store records events into a MemoryEventLog, got"
            f" {type(events).__name__}: its append could fail after the change was made;"
            " use a SQLite or Redis store to record into their logs"
        )
    return events
