"""AgentRegistry on an SQLite file, shared by every process of one machine.

Each write is one ``BEGIN IMMEDIATE`` transaction, so a heartbeat and a reap (or a
deregister) are serialized: a reap decides on the heartbeat time it reads under the
write lock, and a heartbeat only ever UPDATEs an existing row, so it can never bring
back an agent deregistered a moment before (go-agentic defect 14).

Times are REAL epoch seconds, compared as numbers (defect 15). A partial index holds
only online agents by last heartbeat, so ``reap`` reads the stale ones and nothing
else: O(stale).
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ...errors import NotFoundError
from ...models import AgentInfo, AgentStatus
from ..base import AgentRegistry, require_count, require_id, status_for_load, ttl_seconds
from ._db import DEFAULT_TIMEOUT, Database, Migration

__all__ = ["SQLiteRegistry"]

_OFFLINE = AgentStatus.OFFLINE.value

MIGRATIONS: list[Migration] = [
    (
        """CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            capabilities TEXT NOT NULL,  -- JSON array of strings
            status TEXT NOT NULL,
            current_load INTEGER NOT NULL,
            max_load INTEGER NOT NULL,
            last_heartbeat REAL NOT NULL,
            registered_at REAL NOT NULL
        )""",
        # Only online agents are candidates for reap; the index holds only them.
        f"""CREATE INDEX agents_online_by_heartbeat ON agents (last_heartbeat)
            WHERE status != '{_OFFLINE}'""",
    ),
    (
        # Named leases (hold_lease): the active dispatcher's, for one.
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            held_until REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
]

_COLUMNS = "id, name, capabilities, status, current_load, max_load, last_heartbeat, registered_at"


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _info(row: sqlite3.Row) -> AgentInfo:
    return AgentInfo(
        id=row["id"],
        name=row["name"],
        capabilities=json.loads(row["capabilities"]),
        status=AgentStatus(row["status"]),
        current_load=row["current_load"],
        max_load=row["max_load"],
        last_heartbeat=_ts(row["last_heartbeat"]),
        registered_at=_ts(row["registered_at"]),
    )


def _missing(agent_id: str) -> NotFoundError:
    return NotFoundError(f"agent {agent_id!r} is not registered")


class SQLiteRegistry(AgentRegistry):
    """AgentRegistry over one SQLite file; safe across threads and processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._db = Database.open(path, timeout, "registry", MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def store_id(self) -> str:
        return self._db.store_id()

    def register(self, info: AgentInfo) -> AgentInfo:
        require_id("agent id", info.id)
        with self._db.transaction(f"registering agent {info.id!r}") as conn:
            now = self._clock()
            previous = conn.execute(
                "SELECT registered_at FROM agents WHERE id = ?", (info.id,)
            ).fetchone()
            stored = info.model_copy(
                update={
                    "registered_at": _ts(previous[0] if previous else now),
                    "last_heartbeat": _ts(now),
                    "status": status_for_load(info.current_load, info.max_load),
                },
                deep=True,
            )
            conn.execute(
                f"INSERT OR REPLACE INTO agents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.name,
                    json.dumps(stored.capabilities),
                    stored.status.value,
                    stored.current_load,
                    stored.max_load,
                    now,
                    previous[0] if previous else now,
                ),
            )
        return stored

    def deregister(self, agent_id: str) -> None:
        with self._db.transaction(f"deregistering agent {agent_id!r}") as conn:
            deleted = conn.execute("DELETE FROM agents WHERE id = ?", (agent_id,)).rowcount
        if not deleted:
            raise _missing(agent_id)

    def get(self, agent_id: str) -> AgentInfo:
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM agents WHERE id = ?", (agent_id,), "reading an agent"
        )
        if not rows:
            raise _missing(agent_id)
        return _info(rows[0])

    def list(
        self, status: AgentStatus | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        if status is None:
            rows = self._db.query(
                f"SELECT {_COLUMNS} FROM agents ORDER BY id", (), "listing agents"
            )
        else:
            rows = self._db.query(
                f"SELECT {_COLUMNS} FROM agents WHERE status = ? ORDER BY id",
                (AgentStatus(status).value,),
                "listing agents",
            )
        agents = [_info(row) for row in rows]
        if capability is None:
            return agents
        return [a for a in agents if capability in a.capabilities]

    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        if load is not None:
            require_count("load", load)
        with self._db.transaction(f"heartbeat of agent {agent_id!r}") as conn:
            now = self._clock()
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                raise _missing(agent_id)
            info = _info(row)
            current = info.current_load if load is None else load
            status = status_for_load(current, info.max_load)
            # An UPDATE, never an upsert: a deleted agent stays deleted.
            conn.execute(
                "UPDATE agents SET last_heartbeat = ?, current_load = ?, status = ? WHERE id = ?",
                (now, current, status.value, agent_id),
            )
        return info.model_copy(
            update={"last_heartbeat": _ts(now), "current_load": current, "status": status}
        )

    def reap(self, ttl: float | timedelta) -> builtins.list[str]:
        seconds = ttl_seconds(ttl)
        # Select then update inside one BEGIN IMMEDIATE transaction: as atomic as
        # UPDATE ... RETURNING, and it works on SQLite older than 3.35 too.
        with self._db.transaction("reaping stale agents") as conn:
            cutoff = self._clock() - seconds
            stale = f"status != '{_OFFLINE}' AND last_heartbeat < ?"
            ids = [r[0] for r in conn.execute(f"SELECT id FROM agents WHERE {stale}", (cutoff,))]
            if ids:
                conn.execute(f"UPDATE agents SET status = '{_OFFLINE}' WHERE {stale}", (cutoff,))
        return sorted(ids)

    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        require_id("lease name", name)
        require_id("lease holder", holder)
        seconds = ttl_seconds(ttl)
        with self._db.transaction(f"holding lease {name!r}") as conn:
            now = self._clock()
            row = conn.execute(
                "SELECT holder, held_until FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return str(row[0])
            conn.execute(
                "INSERT OR REPLACE INTO leases (name, holder, held_until) VALUES (?, ?, ?)",
                (name, holder, now + seconds),
            )
            return holder

    def drop_lease(self, name: str, holder: str) -> None:
        with self._db.transaction(f"dropping lease {name!r}") as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
