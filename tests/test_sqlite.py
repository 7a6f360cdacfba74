"""SQLite-specific behaviour: URLs and paths, WAL, numeric times, migrations, indexes,
busy handling, threads and fork. The store contracts themselves are in the shared
contract tests (``backend`` fixture)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from agentic.errors import ConfigError, StoreError, StoreUnavailableError
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    FailureCharge,
    ModelQuota,
    Priority,
    QuotaEvent,
    Task,
    TaskResult,
    TaskStatus,
)
from agentic.quota import HOUR, SETTLED_RETENTION
from agentic.stores import open_allowance_store, open_registry
from agentic.stores.sqlite import SQLiteAllowanceStore, SQLiteRegistry
from agentic.stores.sqlite._db import Database
from agentic.stores.sqlite.allowance import MIGRATIONS as ALLOWANCE_MIGRATIONS
from agentic.stores.sqlite.allowance import OLDEST as ALLOWANCE_OLDEST
from agentic.stores.sqlite.registry import MIGRATIONS as REGISTRY_MIGRATIONS
from agentic.stores.sqlite.tasks import MIGRATIONS as TASK_MIGRATIONS
from agentic.stores.sqlite.tasks import OLDEST as TASK_OLDEST
from agentic.stores.sqlite.tasks import SQLiteTaskStore
from agentic.testing import FakeClock


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows read through a separate, plain sqlite3 connection."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


@contextmanager
def traced(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """Every SQL statement (parameters expanded) run on ``conn`` inside the block."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn.set_trace_callback(None)


def plans(conn: sqlite3.Connection, statements: list[str]) -> str:
    """The query plans of the SELECT / UPDATE / DELETE statements, one per line."""
    lines = []
    for sql in statements:
        if sql.split()[0].upper() in {"SELECT", "UPDATE", "DELETE"}:
            lines += [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return "\n".join(lines)


# --- URLs and paths ---------------------------------------------------------------------


def test_url_absolute_path_with_three_or_four_slashes(tmp_path: Path) -> None:
    """sqlite:///abs and sqlite:////abs both open the absolute path."""
    open_registry(f"sqlite://{tmp_path}/three.db").close()
    open_registry(f"sqlite:///{tmp_path}/four.db").close()
    assert (tmp_path / "three.db").is_file()
    assert (tmp_path / "four.db").is_file()


def test_url_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite://rel.db and sqlite://dir/rel.db are relative to the current directory."""
    monkeypatch.chdir(tmp_path)
    open_registry("sqlite://rel.db").close()
    open_allowance_store("sqlite://data/my%20quota.db?tz=Europe/Paris").close()
    assert (tmp_path / "rel.db").is_file()
    assert (tmp_path / "data" / "my quota.db").is_file()


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
def test_memory_database_is_refused(url: str) -> None:
    """An in-memory SQLite URL is refused with a pointer to memory://."""
    with pytest.raises(ConfigError, match="memory://"):
        open_registry(url)


def test_memory_path_is_refused_by_the_constructors() -> None:
    """The store constructors refuse :memory: too."""
    with pytest.raises(ConfigError, match="memory://"):
        SQLiteAllowanceStore(":memory:")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///x.db?timeout=soon",
        "sqlite:///x.db?timeout=-1",
        "sqlite:///x.db?timeout=inf",
        "sqlite:///x.db?reservation_ttl=inf",
        "sqlite:///x.db?reservation_ttl=1e15",
        "sqlite:///tmp/a%00b.db",  # a NUL: os's ValueError escaped
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    """A URL without a file, or with a bad timeout or reservation_ttl (infinite, or
    past 1e9 s: every reserve failed), is a ConfigError."""
    with pytest.raises(ConfigError):
        open_allowance_store(url)


def test_unknown_option_is_named(tmp_path: Path) -> None:
    """An unknown query option is a ConfigError naming it and the accepted ones."""
    with pytest.raises(ConfigError, match=r"busy_timeout.*timeout"):
        open_registry(f"sqlite:///{tmp_path}/a.db?busy_timeout=3")


def test_missing_directories_are_created_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database's parent directories are created when missing, with a warning
    naming them (a mistyped path makes a new, empty store); none when they exist."""
    path = tmp_path / "a" / "b" / "agentic.db"
    with caplog.at_level(logging.WARNING, logger="agentic.stores"):
        SQLiteRegistry(path).close()
        SQLiteRegistry(path).close()
    assert path.is_file()
    said = [r.getMessage() for r in caplog.records if "created the directory" in r.getMessage()]
    assert len(said) == 1 and str(path.parent) in said[0] and "check the store URL" in said[0]


def test_a_new_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """A store file made under a lax umask (022) is 0600, its -wal and -shm too, and a
    directory made for it 0700: task text, results and logs are no one else's to read;
    an existing file keeps its mode."""
    path = tmp_path / "made" / "agentic.db"
    umask = os.umask(0o022)
    try:
        with closing(SQLiteTaskStore(path)) as store:
            store.create(Task(title="secret work"))
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
        kept = tmp_path / "shared.db"
        kept.touch(mode=0o640)
        SQLiteTaskStore(kept).close()
    finally:
        os.umask(umask)
    assert modes == {"agentic.db": 0o600, "agentic.db-wal": 0o600, "agentic.db-shm": 0o600}
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert kept.stat().st_mode & 0o777 == 0o640


def test_directory_under_a_regular_file_is_a_config_error(tmp_path: Path) -> None:
    """A directory that cannot be created is a ConfigError naming it and what to do."""
    (tmp_path / "plain").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"plain.*writable") as info:
        open_registry(f"sqlite:///{tmp_path}/plain/sub/agentic.db")
    assert isinstance(info.value.__cause__, OSError)


def test_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    """A path naming a directory is a ConfigError saying so and naming a file in it,
    before SQLite is asked to open it."""
    with pytest.raises(ConfigError) as info:
        SQLiteRegistry(tmp_path)
    assert str(info.value) == (
        f"SQLite store: '{tmp_path}' is a directory, not a database file; name a file in"
        f" it, e.g. sqlite://{tmp_path}/agentic.db"
    )
    assert info.value.__cause__ is None


def test_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not SQLite is a ConfigError, not a raw sqlite3 error."""
    path = tmp_path / "notes.txt"
    path.write_text("hello " * 1000)
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        SQLiteAllowanceStore(path)


# --- file format --------------------------------------------------------------------------


def test_wal_mode_and_synchronous_normal(tmp_path: Path) -> None:
    """The file is in WAL mode and connections use synchronous=NORMAL."""
    db = Database(tmp_path / "a.db")
    assert db.connection().execute("PRAGMA synchronous").fetchone()[0] == 1
    db.close()
    assert rows(tmp_path / "a.db", "PRAGMA journal_mode") == [("wal",)]


def test_times_are_stored_as_real_numbers(tmp_path: Path) -> None:
    """Every stored time is a REAL epoch number, never text (defect 15)."""
    path, clock = tmp_path / "a.db", FakeClock()
    registry = SQLiteRegistry(path, clock=clock)
    registry.register(AgentInfo(id="a1"))
    store = SQLiteAllowanceStore(path, clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a1"))
    store.reserve("a1", "m1", 10, "j1")
    store.reserve("a1", "m1", 10, "j2")
    store.settle("j1", 1, 1, QuotaEvent.JOB_COMPLETED)
    checks = {
        "agents": "last_heartbeat, registered_at",
        "agent_usage": "period_start",
        "model_usage": "period_start",
        "model_requests": "at",
        "reservations": "created_at, expires_at",
        "settled": "at",
    }
    for table, columns in checks.items():
        types = {c.strip(): f"typeof({c.strip()})" for c in columns.split(",")}
        found = rows(path, f"SELECT DISTINCT {', '.join(types.values())} FROM {table}")
        assert found == [("real",) * len(types)], table
    registry.close()
    store.close()


def test_reap_compares_times_as_numbers(tmp_path: Path) -> None:
    """Reap works across a power of ten, where text comparison would get it wrong."""
    clock = FakeClock(999_999_990.0)
    registry = SQLiteRegistry(tmp_path / "a.db", clock=clock)
    registry.register(AgentInfo(id="a1"))
    clock.advance(20)  # now 1,000,000,010: "999999990.0" > "1000000005.0" as text
    assert registry.reap(5) == ["a1"]
    registry.close()


def test_migrations_are_recorded_once_per_component(tmp_path: Path) -> None:
    """Both stores share a file; reopening applies nothing twice."""
    path = tmp_path / "a.db"
    for _ in range(2):
        SQLiteRegistry(path).close()
        SQLiteAllowanceStore(path).close()
    assert rows(path, "SELECT component, version FROM schema_version ORDER BY 1") == [
        ("allowance", len(ALLOWANCE_MIGRATIONS)),
        ("registry", len(REGISTRY_MIGRATIONS)),
    ]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer agentic that this one cannot use is refused with a
    ConfigError saying to upgrade."""
    path = tmp_path / "a.db"
    SQLiteRegistry(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'registry'")
        conn.execute("UPDATE schema_compat SET oldest = 99 WHERE component = 'registry'")
    with pytest.raises(ConfigError, match="upgrade agentic"):
        SQLiteRegistry(path)


def newer_tasks_schema(path: Path, oldest: int | None) -> None:
    """Make the file's task tables what a newer agentic would: one more step (a column
    with a default) and, unless None, the oldest step count it says can use them."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE tasks ADD COLUMN later TEXT NOT NULL DEFAULT ''")
        conn.execute(
            "UPDATE schema_version SET version = ? WHERE component = 'tasks'",
            (len(TASK_MIGRATIONS) + 1,),
        )
        if oldest is None:
            conn.execute("DELETE FROM schema_compat WHERE component = 'tasks'")
        else:
            conn.execute("UPDATE schema_compat SET oldest = ? WHERE component = 'tasks'", (oldest,))


def test_oldest_step_count_is_recorded(tmp_path: Path) -> None:
    """Each component records the fewest schema steps a process must know to use it."""
    path = tmp_path / "a.db"
    SQLiteTaskStore(path).close()
    SQLiteAllowanceStore(path).close()
    SQLiteRegistry(path).close()
    assert rows(path, "SELECT component, oldest FROM schema_compat ORDER BY 1") == [
        ("allowance", ALLOWANCE_OLDEST),
        ("registry", len(REGISTRY_MIGRATIONS)),
        ("tasks", TASK_OLDEST),
    ]


def test_newer_schema_said_usable_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Tables a newer agentic upgraded, saying this one can still use them, are used
    as they are (a process restarted mid-upgrade), with a warning; nothing is undone."""
    path = tmp_path / "t.db"
    SQLiteTaskStore(path).close()
    newer_tasks_schema(path, oldest=len(TASK_MIGRATIONS))
    with caplog.at_level(logging.WARNING, logger="agentic.stores"):
        store = SQLiteTaskStore(path)
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30)
    done = store.complete(task.id, TaskResult(success=True), "a1")
    assert done.status == TaskStatus.COMPLETED
    store.close()
    said = [r.getMessage() for r in caplog.records if "newer than this agentic" in r.getMessage()]
    assert len(said) == 1 and "upgrade this one soon" in said[0]
    assert rows(path, "SELECT version FROM schema_version WHERE component = 'tasks'") == [
        (len(TASK_MIGRATIONS) + 1,)
    ]
    assert rows(path, "SELECT later FROM tasks") == [("",)]


@pytest.mark.parametrize("oldest", [None, len(TASK_MIGRATIONS) + 1])
def test_newer_schema_not_said_usable_is_refused(tmp_path: Path, oldest: int | None) -> None:
    """Tables a newer agentic upgraded are refused when it recorded no oldest step count
    (an agentic before the record) or one past what this one knows, naming it."""
    path = tmp_path / "t.db"
    SQLiteTaskStore(path).close()
    newer_tasks_schema(path, oldest)
    needs = "" if oldest is None else f"need an agentic that knows {oldest}"
    with pytest.raises(ConfigError, match=f"newer than this agentic knows.*{needs}"):
        SQLiteTaskStore(path)


def test_upgrade_in_place_warns_of_older_processes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Upgrading existing tables says so (an older agentic started on the file from
    then on may refuse it); creating new ones or reopening says nothing."""
    path = tmp_path / "t.db"
    with caplog.at_level(logging.WARNING, logger="agentic.stores"):
        SQLiteTaskStore(path).close()
        SQLiteTaskStore(path).close()
        assert not [r for r in caplog.records if "upgraded" in r.getMessage()]
        downgrade_tasks(path, 2)
        SQLiteTaskStore(path).close()
    said = [r.getMessage() for r in caplog.records if "upgraded" in r.getMessage()]
    assert len(said) == 1
    assert f"tasks tables from schema version 2 to {len(TASK_MIGRATIONS)}" in said[0]
    assert "older agentic started on this file from now on may refuse it" in said[0]


# --- O(stale) / O(expired) ----------------------------------------------------------------


def test_reap_searches_an_index_of_online_agents(tmp_path: Path) -> None:
    """Reap reads stale agents through the partial index, never scanning the table."""
    clock = FakeClock()
    registry = SQLiteRegistry(tmp_path / "a.db", clock=clock)
    registry.register(AgentInfo(id="a1"))
    clock.advance(100)
    conn = registry._db.connection()
    with traced(conn) as statements:
        assert registry.reap(30) == ["a1"]
    plan = plans(conn, statements)
    assert "agents_online_by_heartbeat" in plan
    assert "SCAN agents" not in plan
    registry.close()


def test_quota_steps_never_scan_time_ordered_tables(tmp_path: Path) -> None:
    """Expiry, the rolling hour and settled pruning are index searches: O(expired)."""
    clock = FakeClock()
    store = SQLiteAllowanceStore(tmp_path / "a.db", clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a1"))
    store.set_model_quota(ModelQuota(model="m1", hourly_rate_limit=100))
    conn = store._db.connection()
    with traced(conn) as statements:
        store.reserve("a1", "m1", 10, "j1")
        store.settle("j1", 5, 5, QuotaEvent.JOB_COMPLETED)
        store.get_model_usage("m1")
    plan = plans(conn, statements)
    for table in ("reservations", "model_requests", "settled"):
        assert f"SCAN {table}" not in plan
    assert "reservations_by_expiry" in plan
    assert "model_requests_by_time" in plan
    assert "settled_by_time" in plan
    store.close()


def test_requests_older_than_an_hour_are_deleted(tmp_path: Path) -> None:
    """The request log keeps only the rolling hour: older rows are deleted."""
    clock, path = FakeClock(), tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a1"))
    for job in ("j1", "j2", "j3"):
        store.reserve("a1", "m1", 0, job)
    clock.advance(HOUR + 1)
    assert store.get_model_usage("m1").requests_last_hour == 0
    assert rows(path, "SELECT COUNT(*) FROM model_requests") == [(0,)]
    store.close()


def test_settled_jobs_are_forgotten_after_retention(tmp_path: Path) -> None:
    """Settled job ids older than the retention are pruned from the table."""
    clock, path = FakeClock(), tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, clock=clock)
    store.settle("j1", 1, 0, QuotaEvent.JOB_COMPLETED, agent_id="a1")
    clock.advance(SETTLED_RETENTION + 1)
    store.settle("j2", 1, 0, QuotaEvent.JOB_COMPLETED, agent_id="a1")
    assert rows(path, "SELECT job_id FROM settled") == [("j2",)]
    store.close()


# --- transactions, busy, errors -----------------------------------------------------------


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    """An exception inside a transaction undoes its writes; sqlite3 errors become StoreError."""
    db = Database(tmp_path / "a.db")
    db.migrate("demo", [("CREATE TABLE t (x INTEGER PRIMARY KEY)",)])
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")
    with pytest.raises(StoreError) as info, db.transaction("inserting") as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("INSERT INTO t VALUES (2)")
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert "inserting" in str(info.value)
    assert db.query("SELECT x FROM t") == []
    db.close()


def test_locked_database_raises_store_unavailable(tmp_path: Path) -> None:
    """A write blocked past ?timeout= raises StoreUnavailableError, then works once free."""
    path = tmp_path / "a.db"
    store = open_allowance_store(f"sqlite:///{path}?timeout=0.2")
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="timeout") as info:
            store.increment_usage("a1", 1, 0)
        assert time.monotonic() - started < 4  # the 0.2 s timeout, not the 5 s default
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
    store.increment_usage("a1", 1, 0)
    assert store.get_usage("a1").tokens_used == 1
    store.close()


def test_write_waits_for_a_short_lock(tmp_path: Path) -> None:
    """A write waits for another process's short transaction instead of failing."""
    path = tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, timeout=5)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    store.increment_usage("a1", 1, 0)
    release.join()
    other.close()
    assert store.get_usage("a1").tokens_used == 1
    store.close()


def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    """After close() (idempotent) every call raises StoreError."""
    registry = SQLiteRegistry(tmp_path / "a.db")
    registry.close()
    registry.close()
    with pytest.raises(StoreError, match="closed"):
        registry.list()
    with pytest.raises(StoreError, match="closed"):
        registry.register(AgentInfo(id="a1"))


# --- threads and fork ----------------------------------------------------------------------


def test_threads_share_one_store(tmp_path: Path) -> None:
    """8 threads x 100 increments on one store instance count exactly 800."""
    store = SQLiteAllowanceStore(tmp_path / "a.db")
    # Kept, not their ids: a finished thread's connection may be freed and its id
    # given to the next one's.
    connections: list[sqlite3.Connection] = []

    def work() -> None:
        for _ in range(100):
            store.increment_usage("a1", 1, 0)
        connections.append(store._db.connection())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_usage("a1").tokens_used == 800
    assert len({id(conn) for conn in connections}) == 8  # one connection per thread
    store.close()


def _increment_in_child(store: SQLiteAllowanceStore, parent_connection: int) -> None:
    if id(store._db.connection()) == parent_connection:
        raise SystemExit("the child reused its parent's connection")
    for _ in range(50):
        store.increment_usage("a1", 1, 0)
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """A store used in a forked child works there and keeps the file intact."""
    path = tmp_path / "a.db"
    store = SQLiteAllowanceStore(path)
    store.increment_usage("a1", 1, 0)
    parent_connection = id(store._db.connection())
    child = mp.get_context("fork").Process(
        target=_increment_in_child, args=(store, parent_connection)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    store.increment_usage("a1", 1, 0)
    assert store.get_usage("a1").tokens_used == 52
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]
    store.close()


# --- the rolling hour: a counter row and an index search, not a COUNT over the hour ----


def vm_steps(conn: sqlite3.Connection, action: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions ``action()`` runs on ``conn``."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    conn.set_progress_handler(step, 1)
    try:
        action()
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def test_rolling_hour_costs_the_same_whatever_its_traffic(tmp_path: Path) -> None:
    """A reserve does the same work with 10 or 1,000 requests in the model's hour: the
    count is a counter row and the oldest request the first entry of an index."""
    store = SQLiteAllowanceStore(tmp_path / "a.db", clock=FakeClock())
    store.set_allowance(AgentAllowance(agent_id="a1"))
    store.set_model_quota(ModelQuota(model="m1", hourly_rate_limit=10**6))
    conn = store._db.connection()
    sent = 0

    def reserve() -> None:
        nonlocal sent
        sent += 1
        store.reserve("a1", "m1", 1, f"j{sent}")

    costs = {}
    for nth in (10, 1_000):
        while sent < nth - 1:
            reserve()
        costs[nth] = vm_steps(conn, reserve)
    assert costs[10] == costs[1_000]
    assert store.get_model_usage("m1").requests_last_hour == 1_000

    with traced(conn) as statements:
        store.get_model_usage("m1")
    plan = plans(conn, statements)
    assert "SEARCH model_request_counts USING PRIMARY KEY (model=?)" in plan
    assert "SEARCH model_requests USING COVERING INDEX model_requests_by_time (model=?)" in plan
    assert "SCAN model_requests" not in plan
    store.close()


def test_rolling_hour_counts_stay_exact_across_pruning(tmp_path: Path) -> None:
    """Requests leave the counter exactly when they leave the hour, model by model."""
    clock, path = FakeClock(), tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a1"))
    sent: dict[str, list[float]] = {"m1": [], "m2": []}
    for i in range(40):
        # m1 gets a request every step, m2 one step in three; a step is 7 minutes, so
        # requests leave the hour a few at a time, at different steps for each model.
        for model in ("m1", "m2") if i % 3 == 0 else ("m1",):
            store.reserve("a1", model, 0, f"{model}-{i}")
            sent[model].append(clock())
        clock.advance(7 * 60)
        for model, times in sent.items():
            in_hour = sum(1 for at in times if at > clock() - HOUR)
            assert store.get_model_usage(model).requests_last_hour == in_hour, (i, model)
    counted = rows(path, "SELECT model, requests FROM model_request_counts ORDER BY model")
    logged = rows(path, "SELECT model, COUNT(*) FROM model_requests GROUP BY model ORDER BY model")
    assert counted == logged
    store.close()


def test_existing_files_get_request_counters_from_their_log(tmp_path: Path) -> None:
    """A file at allowance schema 1 is upgraded: each model's counter starts at the
    number of requests its log holds, and goes on from there."""
    clock, path = FakeClock(), tmp_path / "a.db"
    db = Database.open(path, 5.0, "allowance", ALLOWANCE_MIGRATIONS[:1])
    with db.transaction() as conn:
        conn.executemany(
            "INSERT INTO model_requests (model, at, job_id) VALUES (?, ?, ?)",
            [("m1", clock() - 10, "j1"), ("m1", clock() - 5, "j2"), ("m2", clock() - 1, "j3")],
        )
    db.close()
    store = SQLiteAllowanceStore(path, clock=clock)
    assert rows(path, "SELECT version FROM schema_version WHERE component = 'allowance'") == [
        (len(ALLOWANCE_MIGRATIONS),)
    ]
    assert rows(path, "SELECT model, requests FROM model_request_counts ORDER BY model") == [
        ("m1", 2),
        ("m2", 1),
    ]
    store.set_allowance(AgentAllowance(agent_id="a1"))
    store.reserve("a1", "m1", 0, "j4")
    assert store.get_model_usage("m1").requests_last_hour == 3
    assert store.get_model_usage("m2").requests_last_hour == 1
    store.close()


def test_existing_usage_rows_get_a_reset_time_of_never(tmp_path: Path) -> None:
    """A file at allowance schema 2 is upgraded: usage rows keep their counts, with no reset."""
    clock, path = FakeClock(), tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a1", daily_job_limit=2))
    store.reserve("a1", "", 0, "j1")
    store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE agent_usage DROP COLUMN reset_at")
        conn.execute("ALTER TABLE reservations DROP COLUMN ttl")  # schema 4's
        conn.execute("UPDATE schema_version SET version = 2 WHERE component = 'allowance'")
    store = SQLiteAllowanceStore(path, clock=clock)
    assert rows(path, "SELECT agent_id, jobs_started, reset_at FROM agent_usage") == [
        ("a1", 1, 0.0)
    ]
    store.unreserve("j1")  # made after "never": today's job, given back
    assert store.get_usage("a1").jobs_started == 0
    store.close()


def test_existing_reservations_extend_by_the_store_ttl(tmp_path: Path) -> None:
    """A file at allowance schema 3 is upgraded: its reservations extend by the store's ttl."""
    clock, path = FakeClock(), tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a1", max_job_duration=30))
    store.reserve("a1", "", 0, "j1")
    store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE reservations DROP COLUMN ttl")
        conn.execute("UPDATE schema_version SET version = 3 WHERE component = 'allowance'")
    store = SQLiteAllowanceStore(path, clock=clock, reservation_ttl=100)
    assert rows(path, "SELECT job_id, ttl FROM reservations") == [("j1", 0.0)]
    clock.advance(20)
    expires = store.extend("j1").expires_at
    assert expires is not None and expires.timestamp() == clock() + 100
    store.close()


#: An allowance as stored before failure_charge existed (the model's JSON, whole).
OLD_ALLOWANCE = (
    '{"agent_id":"a1","daily_token_limit":0,"daily_job_limit":0,"concurrent_jobs":0,'
    '"max_job_duration":0.0,"model_allowlist":[]}'
)


def test_allowances_stored_before_failure_charge_charge_half(tmp_path: Path) -> None:
    """An allowance row written without failure_charge reads as half and a failed job
    is charged half; setting it again stores the new field with the rest."""
    clock, path = FakeClock(), tmp_path / "a.db"
    store = SQLiteAllowanceStore(path, clock=clock)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO allowances (agent_id, data) VALUES ('a1', ?)", (OLD_ALLOWANCE,))
    assert store.get_allowance("a1").failure_charge is FailureCharge.HALF
    store.reserve("a1", "", 0, "j1")
    assert store.settle("j1", 7, 0, QuotaEvent.JOB_FAILED).tokens_charged == 4
    store.set_allowance(
        store.get_allowance("a1").model_copy(update={"failure_charge": FailureCharge.FULL})
    )
    assert '"failure_charge":"full"' in str(rows(path, "SELECT data FROM allowances")[0][0])
    store.close()


# What undoes each task schema step after the second (a file as an older agentic
# left it), newest first.
_UNDO_TASK_STEPS = {
    6: ["ALTER TABLE tasks DROP COLUMN reruns"],
    5: [
        "DROP TRIGGER tasks_dependency_completed",
        "DROP TRIGGER tasks_dependency_added",
        "DROP INDEX tasks_ready",
        "ALTER TABLE tasks DROP COLUMN waiting",
    ],
    4: ["DROP INDEX tasks_by_claim"],
    3: ["ALTER TABLE tasks DROP COLUMN lease_seconds"],
}


def downgrade_tasks(path: Path, version: int) -> None:
    """Turn the file's task tables back into what task schema ``version`` made."""
    assert len(TASK_MIGRATIONS) == max(_UNDO_TASK_STEPS)  # a new step needs its undo here
    with closing(sqlite3.connect(path)) as conn, conn:
        for step in sorted(_UNDO_TASK_STEPS, reverse=True):
            if step > version:
                for statement in _UNDO_TASK_STEPS[step]:
                    conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ? WHERE component = 'tasks'", (version,))


def test_existing_tasks_get_no_lease_length(tmp_path: Path) -> None:
    """A file at task schema 2 is upgraded: a task claimed before keeps its claim and
    reads with no lease length, which its next renewal records."""
    clock, path = FakeClock(), tmp_path / "t.db"
    store = SQLiteTaskStore(path, clock=clock)
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30)
    store.close()
    downgrade_tasks(path, 2)
    store = SQLiteTaskStore(path, clock=clock)
    assert rows(path, "SELECT version FROM schema_version WHERE component = 'tasks'") == [
        (len(TASK_MIGRATIONS),)
    ]
    old = store.get(task.id)
    assert (old.claimed_by, old.lease_seconds) == ("a1", None)
    assert store.renew(task.id, "a1", 45).lease_seconds == 45.0
    store.close()


def test_existing_tasks_read_as_never_retried(tmp_path: Path) -> None:
    """A file at task schema 5 gets the reruns column (0), and its dead letter can be retried."""
    clock, path = FakeClock(), tmp_path / "t.db"
    store = SQLiteTaskStore(path, clock=clock)
    root = store.create(Task(title="root", max_retries=0))
    child = store.create(Task(title="child", dependencies=[root.id]))
    store.claim(root.id, "a1", 30)
    store.complete(root.id, TaskResult(success=False, error_message="boom"), "a1")
    store.close()
    downgrade_tasks(path, 5)
    store = SQLiteTaskStore(path, clock=clock)
    assert store.get(root.id).reruns == 0
    retried = store.retry(root.id)
    assert (retried.task.reruns, retried.unblocked) == (1, [child.id])
    # the child waits on its (pending) dependency, as any pending task does
    assert rows(path, f"SELECT waiting FROM tasks WHERE id = '{child.id}'") == [(1,)]
    assert [t.id for t in store.list(ready=True)] == [root.id]
    store.close()


def test_a_runners_poll_reads_its_claims_by_index(tmp_path: Path) -> None:
    """A file at task schema 3 gets the claims index; an agent's tasks in progress are
    listed through it (not by scanning every task in progress), in list order."""
    clock, path = FakeClock(), tmp_path / "t.db"
    store = SQLiteTaskStore(path, clock=clock)
    mine = []
    for i in range(6):
        clock.advance(1)
        task = store.create(Task(title=f"t{i}", priority=Priority.HIGH if i == 4 else "medium"))
        store.claim(task.id, "a1" if i % 2 == 0 else "a2", 30)
        if i % 2 == 0:
            mine.append(task.id)
    store.close()
    downgrade_tasks(path, 3)
    store = SQLiteTaskStore(path, clock=clock)
    listed = store.list(status=TaskStatus.IN_PROGRESS, claimed_by="a1")
    assert [t.id for t in listed] == [mine[2], mine[0], mine[1]]  # the high one first
    plan = rows(
        path,
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE status = 'in_progress'"
        " AND claimed_by = 'a1' ORDER BY priority_rank, created_at, id",
    )
    assert any("tasks_by_claim" in str(step) for step in plan)
    store.close()


def test_a_ready_listing_reads_past_a_dependency_chain_by_index(tmp_path: Path) -> None:
    """A file at task schema 4 gets the waiting flag (set on the tasks whose dependencies
    are not all completed); completing a dependency clears its dependents' flag, also
    when a writer that does not know the flag completes it (the file's triggers)."""
    clock, path = FakeClock(), tmp_path / "t.db"
    store = SQLiteTaskStore(path, clock=clock)
    head = store.create(Task(title="head"))
    clock.advance(1)
    second = store.create(Task(title="second", dependencies=[head.id]))
    clock.advance(1)
    third = store.create(Task(title="third", dependencies=[second.id]))
    store.close()
    downgrade_tasks(path, 4)
    store = SQLiteTaskStore(path, clock=clock)
    assert rows(path, "SELECT id FROM tasks WHERE waiting = 1 ORDER BY created_at") == [
        (second.id,),
        (third.id,),
    ]
    assert [t.id for t in store.list(status=TaskStatus.PENDING, ready=True)] == [head.id]
    store.claim(head.id, "a1", 30)
    store.complete(head.id, TaskResult(success=True), "a1")
    assert [t.id for t in store.list(ready=True)] == [second.id]
    with closing(sqlite3.connect(path)) as conn, conn:  # as an older writer completing it
        conn.execute("UPDATE tasks SET status = 'completed' WHERE id = ?", (second.id,))
    assert [t.id for t in store.list(status=TaskStatus.PENDING, ready=True)] == [third.id]
    store.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [("labels", "{not json"), ("priority", "urgent"), ("created_at", "yesterday")],
)
def test_a_corrupt_task_row_is_a_store_error_saying_so(
    tmp_path: Path, column: str, value: str
) -> None:
    """A task row that does not parse is a StoreError naming the task, as on Redis, not
    the parser's own error; the other tasks still read."""
    store = SQLiteTaskStore(tmp_path / "t.db")
    store.create(Task(id="bad", title="bad"))
    store.create(Task(id="good", title="good"))
    with closing(sqlite3.connect(tmp_path / "t.db")) as conn, conn:
        conn.execute(f"UPDATE tasks SET {column} = ? WHERE id = 'bad'", (value,))
    with pytest.raises(StoreError, match="corrupt task record 'bad' in SQLite"):
        store.get("bad")
    assert store.get("good").title == "good"
    store.close()
