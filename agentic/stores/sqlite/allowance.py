"""AllowanceStore on an SQLite file: the engine's algorithm over tables.

Quota rules are not here: :class:`~agentic.stores._engine.EngineAllowanceStore`
runs reserve / settle / sweep / rollover and this module only says where rows live
(:class:`_SQLiteTx`) and that a transaction is one ``BEGIN IMMEDIATE`` (so every call
is atomic across threads and processes, and a denied reserve rolls back to nothing).

Times are REAL epoch seconds. Expired reservations, old requests and old settlements
are found through indexes on their times, so each sweep is O(expired). So is a model's
rolling hour: its request count is a counter row kept in step with the request log,
and its oldest request is one index search.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, tzinfo

from ...events import Event
from ...models import AgentAllowance, ModelQuota, Settlement
from ...quota import DEFAULT_RESERVATION_TTL
from .._engine import AgentRow, EngineAllowanceStore, Held, ModelRow, QuotaTx
from ..base import event_json, parse_stored
from ._db import DEFAULT_TIMEOUT, Database, Migration
from .eventlog import MIGRATIONS as EVENT_MIGRATIONS
from .eventlog import append_rows

__all__ = ["SQLiteAllowanceStore"]

MIGRATIONS: list[Migration] = [
    (
        # Configuration as the models' JSON: read and written whole, never queried into.
        "CREATE TABLE allowances (agent_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
        "CREATE TABLE model_quotas (model TEXT PRIMARY KEY, data TEXT NOT NULL)",
        """CREATE TABLE agent_usage (
            agent_id TEXT PRIMARY KEY,
            period_start REAL NOT NULL,
            tokens_used INTEGER NOT NULL,
            jobs_started INTEGER NOT NULL,
            tokens_reserved INTEGER NOT NULL,
            active_jobs INTEGER NOT NULL
        )""",
        """CREATE TABLE model_usage (
            model TEXT PRIMARY KEY,
            period_start REAL NOT NULL,
            tokens_used INTEGER NOT NULL,
            cost_used INTEGER NOT NULL,
            tokens_reserved INTEGER NOT NULL,
            cost_reserved INTEGER NOT NULL
        )""",
        "CREATE TABLE model_requests (model TEXT NOT NULL, at REAL NOT NULL, job_id TEXT NOT NULL)",
        "CREATE INDEX model_requests_by_time ON model_requests (model, at)",
        """CREATE TABLE reservations (
            job_id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            model TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            cost INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX reservations_by_expiry ON reservations (expires_at)",
        "CREATE TABLE settled (job_id TEXT PRIMARY KEY, data TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX settled_by_time ON settled (at)",
    ),
    (
        # The number of model_requests rows per model, changed by the statements that
        # insert and delete them: COUNT(*) over the hour grew with the traffic.
        """CREATE TABLE model_request_counts (
            model TEXT PRIMARY KEY,
            requests INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO model_request_counts (model, requests)"
        " SELECT model, COUNT(*) FROM model_requests GROUP BY model",
    ),
    (
        # When reset_usage last cleared an agent's counts (AgentRow.reset_at).
        "ALTER TABLE agent_usage ADD COLUMN reset_at REAL NOT NULL DEFAULT 0",
    ),
    (
        # The lifetime a reservation was made with, which extend renews (Held.ttl);
        # 0 for rows written before: extend then uses the store's reservation_ttl.
        "ALTER TABLE reservations ADD COLUMN ttl REAL NOT NULL DEFAULT 0",
    ),
]

#: The fewest of the steps above a process must know to use the quota tables (see the
#: task store's OLDEST): the fourth step's ttl column defaults to 0, which extend
#: reads as the store's reservation_ttl, so a process before it still reserves.
OLDEST = 3

_HELD = "job_id, agent_id, model, tokens, cost, created_at, expires_at, ttl"


def _held(row: sqlite3.Row) -> Held:
    return Held(
        row["job_id"],
        row["agent_id"],
        row["model"],
        row["tokens"],
        row["cost"],
        row["created_at"],
        row["expires_at"],
        row["ttl"],
    )


class _SQLiteTx(QuotaTx):
    """Row primitives on a connection inside an open BEGIN IMMEDIATE transaction."""

    def __init__(self, conn: sqlite3.Connection, record_events: bool, where: str) -> None:
        self._record_events = record_events
        self._conn = conn
        #: the store, as a corrupt record's error names it
        self._where = where

    def _one(self, sql: str, *params: object) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def get_allowance(self, agent_id: str) -> AgentAllowance | None:
        row = self._one("SELECT data FROM allowances WHERE agent_id = ?", agent_id)
        return None if row is None else parse_stored(AgentAllowance, row[0], self._where)

    def put_allowance(self, allowance: AgentAllowance) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO allowances (agent_id, data) VALUES (?, ?)",
            (allowance.agent_id, allowance.model_dump_json()),
        )

    def all_allowances(self) -> list[AgentAllowance]:
        rows = self._conn.execute("SELECT data FROM allowances").fetchall()
        return [parse_stored(AgentAllowance, r[0], self._where) for r in rows]

    def get_quota(self, model: str) -> ModelQuota | None:
        row = self._one("SELECT data FROM model_quotas WHERE model = ?", model)
        return None if row is None else parse_stored(ModelQuota, row[0], self._where)

    def put_quota(self, quota: ModelQuota) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO model_quotas (model, data) VALUES (?, ?)",
            (quota.model, quota.model_dump_json()),
        )

    def get_agent(self, agent_id: str) -> AgentRow | None:
        row = self._one(
            "SELECT period_start, tokens_used, jobs_started, tokens_reserved, active_jobs,"
            " reset_at FROM agent_usage WHERE agent_id = ?",
            agent_id,
        )
        return None if row is None else AgentRow(*row)

    def put_agent(self, agent_id: str, row: AgentRow) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO agent_usage (agent_id, period_start, tokens_used,"
            " jobs_started, tokens_reserved, active_jobs, reset_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                agent_id,
                row.period_start,
                row.tokens_used,
                row.jobs_started,
                row.tokens_reserved,
                row.active_jobs,
                row.reset_at,
            ),
        )

    def agent_ids(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT agent_id FROM agent_usage UNION SELECT agent_id FROM allowances"
        ).fetchall()
        return [r[0] for r in rows]

    def get_model(self, model: str) -> ModelRow | None:
        row = self._one(
            "SELECT period_start, tokens_used, cost_used, tokens_reserved, cost_reserved"
            " FROM model_usage WHERE model = ?",
            model,
        )
        return None if row is None else ModelRow(*row)

    def put_model(self, model: str, row: ModelRow) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO model_usage (model, period_start, tokens_used, cost_used,"
            " tokens_reserved, cost_reserved) VALUES (?, ?, ?, ?, ?, ?)",
            (
                model,
                row.period_start,
                row.tokens_used,
                row.cost_used,
                row.tokens_reserved,
                row.cost_reserved,
            ),
        )

    def requests(self, model: str, since: float) -> tuple[int, float | None]:
        # Requests out of the rolling window never count again: drop them here, so
        # the table stays the size of one hour of traffic, and off the counter. Both
        # reads are index searches (MIN(at) is the first entry of (model, at)): the
        # cost follows the expired rows, not the hour's traffic.
        expired = self._conn.execute(
            "DELETE FROM model_requests WHERE model = ? AND at <= ?", (model, since)
        ).rowcount
        if expired:
            self._conn.execute(
                "UPDATE model_request_counts SET requests = requests - ? WHERE model = ?",
                (expired, model),
            )
        count, oldest = self._conn.execute(
            "SELECT (SELECT requests FROM model_request_counts WHERE model = ?),"
            " (SELECT MIN(at) FROM model_requests WHERE model = ?)",
            (model, model),
        ).fetchone()
        return int(count or 0), oldest

    def add_request(self, model: str, at: float, job_id: str) -> None:
        self._conn.execute(
            "INSERT INTO model_requests (model, at, job_id) VALUES (?, ?, ?)", (model, at, job_id)
        )
        self._conn.execute(
            "INSERT INTO model_request_counts (model, requests) VALUES (?, 1)"
            " ON CONFLICT (model) DO UPDATE SET requests = requests + 1",
            (model,),
        )

    def remove_request(self, model: str, at: float, job_id: str) -> None:
        # One row: the same job may have been admitted twice at one instant (expired
        # by a dispatcher, then reserved again), each admission one request.
        removed = self._conn.execute(
            "DELETE FROM model_requests WHERE rowid = (SELECT rowid FROM model_requests"
            " WHERE model = ? AND at = ? AND job_id = ? LIMIT 1)",
            (model, at, job_id),
        ).rowcount
        if removed:
            self._conn.execute(
                "UPDATE model_request_counts SET requests = requests - ? WHERE model = ?",
                (removed, model),
            )

    def get_held(self, job_id: str) -> Held | None:
        row = self._one(f"SELECT {_HELD} FROM reservations WHERE job_id = ?", job_id)
        return None if row is None else _held(row)

    def put_held(self, held: Held) -> None:
        self._conn.execute(
            f"INSERT OR REPLACE INTO reservations ({_HELD}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                held.job_id,
                held.agent_id,
                held.model,
                held.tokens,
                held.cost,
                held.created_at,
                held.expires_at,
                held.ttl,
            ),
        )

    def delete_held(self, job_id: str) -> None:
        self._conn.execute("DELETE FROM reservations WHERE job_id = ?", (job_id,))

    def expired_held(self, now: float) -> list[Held]:
        rows = self._conn.execute(
            f"SELECT {_HELD} FROM reservations WHERE expires_at <= ? ORDER BY expires_at",
            (now,),
        ).fetchall()
        return [_held(r) for r in rows]

    def get_settled(self, job_id: str) -> Settlement | None:
        row = self._one("SELECT data FROM settled WHERE job_id = ?", job_id)
        return None if row is None else parse_stored(Settlement, row[0], self._where)

    def put_settled(self, settlement: Settlement, at: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO settled (job_id, data, at) VALUES (?, ?, ?)",
            (settlement.job_id, settlement.model_dump_json(), at),
        )

    def prune_settled(self, before: float) -> None:
        self._conn.execute("DELETE FROM settled WHERE at < ?", (before,))

    def record(self, event: Event) -> None:
        if self._record_events:
            append_rows(self._conn, [(event.id, event_json(event))])


class SQLiteAllowanceStore(EngineAllowanceStore):
    """AllowanceStore over one SQLite file; each call is one BEGIN IMMEDIATE transaction."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        clock: Callable[[], float] = time.time,
        tz: tzinfo = UTC,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        record_events: bool = False,
    ) -> None:
        super().__init__(clock=clock, tz=tz, reservation_ttl=reservation_ttl)
        self._db = Database.open(path, timeout, "allowance", MIGRATIONS, OLDEST)
        # Each settle's usage goes to this file's event log, in the settle's
        # transaction (the log's tables made here when the log was never opened).
        self._record_events = record_events
        if record_events:
            self._db.migrate("events", EVENT_MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def store_id(self) -> str:
        return self._db.store_id()

    @contextmanager
    def _transaction(self) -> Iterator[QuotaTx]:
        with self._db.transaction("allowance store") as conn:
            yield _SQLiteTx(conn, self._record_events, f"SQLite store {str(self._db.path)!r}")
