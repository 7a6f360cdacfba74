"""EventLog on Redis: a stream whose entry ids are the offsets, shared by every machine.

Appends, commits and trims are one Lua script each (atomic, one round trip). An
append takes its offsets from a counter that only goes up (``INCR``), so offsets are
never reused, trims included, and each event becomes the stream entry
``{offset}-0``: a read is one ``XRANGE`` from ``{after + 1}-0``. A hash of the ids
kept makes a repeated append answer the first offset.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

import redis

from ...events import Event
from ..base import (
    TRIM_STEP,
    EventLog,
    LoggedEvent,
    event_json,
    parse_events,
    require_consumer,
    require_count,
    require_id,
    require_page,
    require_wait,
)
from ..keys import EventLogKeys
from ._conn import (
    DEFAULT_PREFIX,
    Script,
    checked_read,
    guarded_write,
    open_identity,
    text,
    translate_errors,
)

__all__ = ["RedisEventLog"]

_APPEND = Script("log_lib.lua", "log_append.lua")
_COMMIT = Script("log_commit.lua")
_TRIM = Script("log_trim.lua")


class RedisEventLog(EventLog):
    """EventLog shared by every machine that reaches one Redis server.

    ``client`` is a redis-py client; it is closed by :meth:`close` only when
    ``close_client`` is true (logs opened from a URL own their client).
    """

    hears_appends = True  # XREAD BLOCK

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        close_client: bool = False,
        create: bool = True,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._keys = EventLogKeys.under(require_id("prefix", prefix))
        self._close_client = close_client
        self._identity = open_identity(client, prefix, close_client, create)
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        #: seconds one XREAD BLOCK of :meth:`wait` lasts at most: the answer must come
        #: within the socket timeout, and Redis ends a block only on its next tick
        #: (every 0.1 s by default), so 0.15 s are kept for that; None when that
        #: leaves too little to block (a tiny ?timeout=): wait then polls.
        room = 1.0 if not socket_timeout else min(1.0, socket_timeout - 0.15)
        self._block_limit: float | None = room if room >= 0.1 else None

    def close(self) -> None:
        if self._close_client:
            self._client.close()

    def store_id(self) -> str:
        return self._identity.check(self._client)

    def append(self, events: builtins.list[Event]) -> builtins.list[int]:
        if not events:
            return []
        args = [part for event in events for part in (event.id, event_json(event))]
        keys = self._keys
        reply = _APPEND(self._client, args, (keys.seq, keys.stream, keys.ids), self._identity)
        return [int(offset) for offset in reply]

    def read(self, after: int = 0, limit: int = 100) -> builtins.list[LoggedEvent]:
        require_page(after, limit)
        # The reads that could answer "nothing" (every one but wait's blocks, whose
        # end reads again) check the store id in their round trip (checked_read).
        [entries] = self._read(
            "reading events",
            lambda p: p.xrange(self._keys.stream, min=f"{after + 1}-0", count=limit),
        )
        return parse_events(((_offset(entry), _body(entry[1])) for entry in entries), "Redis")

    def _read(self, action: str, read: Callable[[Any], object]) -> builtins.list[Any]:
        return checked_read(self._client, self._identity, action, read)

    def last_offset(self) -> int:
        [raw] = self._read("reading the last offset", lambda p: p.get(self._keys.seq))
        return 0 if raw is None else int(text(raw))

    def wait(self, after: int, timeout: float) -> bool:
        require_wait(after, timeout)
        if self._block_limit is None:  # blocks would outlast the socket timeout
            return super().wait(after, timeout)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0.001:
            # XREAD BLOCK answers as soon as an entry above {after}-0 is there (kept:
            # a stream trimmed empty has none).
            block = int(min(left, self._block_limit) * 1000)
            with translate_errors("waiting for events"):
                if self._client.xread({self._keys.stream: f"{after}-0"}, 1, block):
                    return True
        return self._kept_after(after)

    def _kept_after(self, after: int) -> bool:
        [found] = self._read(
            "waiting for events", lambda p: p.xread({self._keys.stream: f"{after}-0"}, 1)
        )
        return bool(found)

    def commit(self, consumer: str, offset: int) -> None:
        require_consumer(consumer)
        require_count("offset", offset)
        _COMMIT(self._client, [consumer, str(offset)], (self._keys.consumers,), self._identity)

    def committed(self, consumer: str) -> int:
        require_consumer(consumer)
        [raw] = self._read("reading a consumer", lambda p: p.hget(self._keys.consumers, consumer))
        return 0 if raw is None else int(text(raw))

    def consumers(self) -> dict[str, int]:
        [raw] = self._read("listing consumers", lambda p: p.hgetall(self._keys.consumers))
        return {text(name): int(text(position)) for name, position in sorted(raw.items())}

    def reset(self, consumer: str, offset: int = 0) -> None:
        require_consumer(consumer)
        require_count("offset", offset)
        guarded_write(
            self._client, self._identity, ("HSET", self._keys.consumers, consumer, str(offset))
        )

    def forget(self, consumer: str) -> bool:
        require_consumer(consumer)
        [removed] = guarded_write(
            self._client, self._identity, ("HDEL", self._keys.consumers, consumer)
        )
        return int(removed) > 0

    def trim(self, keep: int, up_to: int | None = None) -> int:
        require_count("keep", keep)
        if up_to is not None:
            require_count("up_to", up_to)
        # The last stream entry that may go: entry ids are "{offset}-0".
        last = "+" if up_to is None else f"{up_to}-0"
        keys, dropped = (self._keys.stream, self._keys.ids), 0
        while True:  # in steps: a script holds up every other client while it runs
            step = int(_TRIM(self._client, [str(keep), str(TRIM_STEP), last], keys, self._identity))
            dropped += step
            if step < TRIM_STEP:
                return dropped


def _offset(entry: tuple[object, object]) -> int:
    """The offset of a stream entry: its id is ``{offset}-0``."""
    return int(text(entry[0]).partition("-")[0])


def _body(fields: dict[object, object]) -> str:
    """The ``body`` field of a stream entry ("" when missing: it then fails to parse)."""
    return next((text(v) for k, v in fields.items() if text(k) == "body"), "")
