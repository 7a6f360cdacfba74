"""EventLog on an SQLite file, shared by every process of one machine.

One table in offset order: ``position INTEGER PRIMARY KEY AUTOINCREMENT`` never
hands out a number twice, trims included, and writers are serialized by
``BEGIN IMMEDIATE``, so positions are given in commit order: a reader never sees a
later position before an earlier one. A unique index on the event id makes an
append of the same event a no-op that answers its first position.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
from collections.abc import Sequence

from ...events import Event
from ..base import (
    TRIM_STEP,
    EventLog,
    LoggedEvent,
    event_json,
    parse_events,
    require_consumer,
    require_count,
    require_page,
)
from ._db import DEFAULT_TIMEOUT, Database, Migration

__all__ = ["MIGRATIONS", "SQLiteEventLog", "append_rows"]

# The largest integer SQLite holds: a trim bound past it is no bound.
_NO_BOUND = 2**63 - 1

MIGRATIONS: list[Migration] = [
    (
        """CREATE TABLE events (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            body TEXT NOT NULL  -- the Event as JSON
        )""",
        """CREATE TABLE event_consumers (
            name TEXT PRIMARY KEY,
            position INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
]


def append_rows(conn: sqlite3.Connection, bodies: Sequence[tuple[str, str]]) -> list[int]:
    """Append (event id, JSON) rows inside the caller's write transaction; their offsets.

    Also how the task store records a task's lifecycle in the transaction of the
    change (its outbox)."""
    out = []
    for event_id, body in bodies:
        # Looked up first: an INSERT OR IGNORE that is ignored would still advance
        # the AUTOINCREMENT counter, leaving a gap.
        row = conn.execute("SELECT position FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            cursor = conn.execute("INSERT INTO events (id, body) VALUES (?, ?)", (event_id, body))
            out.append(int(cursor.lastrowid or 0))
        else:
            out.append(int(row[0]))
    return out


class SQLiteEventLog(EventLog):
    """EventLog over one SQLite file; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self._db = Database.open(path, timeout, "events", MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def store_id(self) -> str:
        return self._db.store_id()

    def append(self, events: builtins.list[Event]) -> builtins.list[int]:
        bodies = [(event.id, event_json(event)) for event in events]
        with self._db.transaction(f"appending {len(events)} event(s)") as conn:
            return append_rows(conn, bodies)

    def read(self, after: int = 0, limit: int = 100) -> builtins.list[LoggedEvent]:
        require_page(after, limit)
        rows = self._db.query(
            "SELECT position, body FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, limit),
            "reading events",
        )
        return parse_events(((row[0], row[1]) for row in rows), f"SQLite {self._db.path}")

    def _kept_after(self, after: int) -> bool:
        rows = self._db.query(
            "SELECT 1 FROM events WHERE position > ? LIMIT 1", (after,), "waiting for events"
        )
        return bool(rows)

    def last_offset(self) -> int:
        rows = self._db.query(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'", (), "reading the last offset"
        )
        return int(rows[0][0]) if rows else 0

    def commit(self, consumer: str, offset: int) -> None:
        require_consumer(consumer)
        require_count("offset", offset)
        with self._db.transaction(f"committing consumer {consumer!r}") as conn:
            conn.execute(
                "INSERT INTO event_consumers (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
                " WHERE excluded.position > event_consumers.position",
                (consumer, offset),
            )

    def committed(self, consumer: str) -> int:
        require_consumer(consumer)
        rows = self._db.query(
            "SELECT position FROM event_consumers WHERE name = ?", (consumer,), "reading a consumer"
        )
        return int(rows[0][0]) if rows else 0

    def consumers(self) -> dict[str, int]:
        rows = self._db.query(
            "SELECT name, position FROM event_consumers ORDER BY name", (), "listing consumers"
        )
        return {str(name): int(position) for name, position in rows}

    def reset(self, consumer: str, offset: int = 0) -> None:
        require_consumer(consumer)
        require_count("offset", offset)
        with self._db.transaction(f"resetting consumer {consumer!r}") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO event_consumers (name, position) VALUES (?, ?)",
                (consumer, offset),
            )

    def forget(self, consumer: str) -> bool:
        require_consumer(consumer)
        with self._db.transaction(f"forgetting consumer {consumer!r}") as conn:
            return (
                conn.execute("DELETE FROM event_consumers WHERE name = ?", (consumer,)).rowcount > 0
            )

    def trim(self, keep: int, up_to: int | None = None) -> int:
        require_count("keep", keep)
        if up_to is not None:
            require_count("up_to", up_to)
        bound = _NO_BOUND if up_to is None else up_to
        dropped = 0
        while True:  # in steps: each transaction holds the file's write lock
            with self._db.transaction(f"trimming events to {keep}") as conn:
                step = conn.execute(
                    "DELETE FROM events WHERE position <= MIN("
                    "(SELECT position FROM events ORDER BY position DESC LIMIT 1 OFFSET ?),"
                    " (SELECT MIN(position) FROM events) + ? - 1, ?)",
                    (keep, TRIM_STEP, bound),
                ).rowcount
            dropped += step
            if step < TRIM_STEP:
                return dropped
