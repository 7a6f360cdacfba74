"""One SQLite file shared by the SQLite stores: connections, migrations, transactions.

Every store opens a :class:`Database` on its file and uses it the same way:

* ``Database(path, timeout)`` checks the path (creating its directory) and opens a
  connection in WAL mode, so readers never block the writer and several processes
  can share the file; ``synchronous=NORMAL`` (durable at checkpoints, never corrupt).
* ``migrate(component, migrations, oldest)`` brings a component's tables up to date,
  once, whatever the number of processes opening the file at the same time, and
  records ``oldest``: the fewest steps a process must know to use the tables, so
  that a process of an older agentic still opens a file a newer one upgraded when
  the steps it does not know left the tables usable to it (a rolling upgrade).
* ``transaction()`` is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken
  up front, so two writers never both read then both write (the lost update), and a
  busy database is waited for (busy timeout, then retries) instead of failing at
  once. Any exception rolls it back. ``query()`` runs one read-only statement.
* The file is the one opened, or nothing is done: the first connection records the
  file's identity (device, inode) and every later connection, transaction and query
  checks that the path still names it (one ``stat``), raising
  :class:`~agentic.errors.StoreLostError` when the file was deleted, moved or
  replaced under the process (whose connections would go on using the old one,
  unseen by every process started since).
* sqlite3 exceptions never leave: they become :class:`~agentic.errors.StoreError`
  (:class:`~agentic.errors.StoreUnavailableError` when the file stayed locked), or
  :class:`~agentic.errors.ConfigError` naming the path when it cannot be opened.

Connections are per thread (a sqlite3 connection must not run two statements at
once) and per process: a child forked from a process holding connections opens its
own, as SQLite requires (``os.register_at_fork``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ...errors import ConfigError, StoreError, StoreLostError, StoreUnavailableError
from ._fs import network_filesystem

__all__ = ["DEFAULT_TIMEOUT", "Database", "Migration", "resolve"]

log = logging.getLogger("agentic.stores")

#: Seconds a write waits for another connection's transaction before giving up.
DEFAULT_TIMEOUT = 5.0

#: One schema step: SQL statements run in order, in one transaction.
Migration = Sequence[str]

_T = TypeVar("_T")

# Facts about the file itself (its id), whatever stores use it.
_META: list[Migration] = [
    ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",),
]

_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
# Errors that mean "this path is not a usable database file": the user must act.
_BAD_PATH = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_NOTADB,
}


def _code(exc: sqlite3.Error) -> int:
    # extended codes (SQLITE_BUSY_SNAPSHOT...) keep the primary code in the low byte
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def resolve(path: str | os.PathLike[str]) -> Path:
    """The absolute path of a database file; ConfigError when ``path`` cannot be one
    (``:memory:``, no file name, a directory)."""
    text = os.fspath(path)
    if Path(text).name == ":memory:":
        raise ConfigError(
            f"SQLite path {text!r}: an in-memory SQLite database is private to one"
            " connection, so stores could not share it; use memory:// instead"
        )
    if not Path(text).name:
        raise ConfigError(
            f"SQLite path {text!r} names no file; give one, e.g. sqlite:///var/lib/agentic.db"
        )
    if "\0" in text:  # sqlite:///a%00b.db: no file name holds one (os refuses it)
        raise ConfigError(f"SQLite path {text!r} holds a NUL character; no file name can")
    resolved = Path(text).expanduser().absolute()
    if resolved.is_dir():
        # Said here, before SQLite tries it: its own answer ("unable to open database
        # file") does not say what is wrong.
        raise ConfigError(
            f"SQLite store: {str(resolved)!r} is a directory, not a database file; name"
            f" a file in it, e.g. sqlite://{resolved / 'agentic.db'}"
        )
    return resolved


class _Holder:
    """Owns one thread's connection; weakly tracked so close() reaches every thread's."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class Database:
    """An SQLite file opened for one store: a connection per thread, BEGIN IMMEDIATE writes."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout >= 0:
            raise ConfigError(f"SQLite busy timeout must be >= 0 seconds, got {timeout!r}")
        self.path = resolve(path)
        self.timeout = float(timeout)
        self._closed = False
        self._where = str(self.path)
        # (st_dev, st_ino) of the file the first connection opened: every later use
        # checks that the path still names it (:meth:`connection`).
        self._file: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        # A thread's connection is closed when the thread ends (its holder is freed)
        # or by close(), whichever comes first.
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        # Connections inherited through fork(): SQLite forbids using them in the child
        # and closing them could release locks, so they are kept, unused, for good.
        self._inherited: list[_Holder] = []
        _OPEN.add(self)
        if not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise ConfigError(
                    f"SQLite store: cannot create the directory {str(self.path.parent)!r}"
                    f" ({exc.strerror or exc}); point the store URL at a writable location"
                ) from exc
            # Said, since a mistyped path makes a new, empty store where an existing
            # one was meant (a first run in the default data directory says it once).
            log.warning(
                "SQLite store: created the directory %s for a new store %s; if an existing"
                " store was meant, check the store URL",
                self.path.parent,
                self.path.name,
            )
        _warn_if_shared(self._where)
        _create_private(self.path)
        with self._opening():
            self.connection()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        timeout: float,
        component: str,
        migrations: Sequence[Migration],
        oldest: int | None = None,
    ) -> Database:
        """A database with ``component``'s tables up to date (closed again on failure)."""
        db = cls(path, timeout)
        try:
            db.migrate(component, migrations, oldest)
        except BaseException:
            db.close()
            raise
        return db

    # --- connections ---
    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use, after checking that the path
        still names the file this database opened (else StoreLostError: see
        :meth:`_lost`). Every transaction and query starts here, so the check is in
        one place for every SQLite store; it is one ``stat`` of the path."""
        if self._closed:
            raise StoreError(f"SQLite store {str(self.path)!r} is closed")
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is None:
            holder = _Holder(self._connect())
            self._local.holder = holder
            with self._lock:
                self._holders.add(holder)
        elif (now := _file_id(self._where)) != self._file:
            raise self._lost(now, holder.conn)
        return holder.conn

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the file this database opened: the path is stat'ed
        before and after connecting, and the connection kept only when both name the
        same file, so it is the one the connection opened (a sqlite3 connection has no
        ``fstat``). The first connection records it (a path that names no file yet is
        a new store: its first connection creates the file, and a second one, taken
        once it exists, is kept); a later one (another thread's, a forked child's)
        must find it again, and opens nothing when the path names another file."""
        for _ in range(_OPEN_TRIES):
            before = _file_id(self._where)
            if self._file is not None and before != self._file:
                raise self._lost(before, None)
            conn = self._connect_once()
            if before is not None and before == _file_id(self._where):
                self._file = before
                return conn
            conn.close()  # created the file, or it was replaced meanwhile: again
        raise StoreUnavailableError(
            f"SQLite store {str(self.path)!r}: the file was replaced again and again while"
            " it was being opened; retry once nothing moves files at that path"
        )

    def _lost(self, now: tuple[int, int] | None, conn: sqlite3.Connection | None) -> StoreLostError:
        """The error for a file deleted or replaced under this process: the path names
        ``now`` (None: nothing), not the file it opened. ``conn``, a connection to the
        file it opened, reads that file's store id for the message."""
        seen_id = "" if conn is None else _read_id(conn)
        seen = f"store id {seen_id}, " if seen_id else ""
        there = "no file is there now"
        if now is not None:
            there = f"another file is there now, inode {now[1]}"
        return StoreLostError(
            f"the SQLite store {self._where!r} was deleted, moved or replaced under this"
            f" process (it opened {seen}inode {self._file[1] if self._file else '?'}; {there}):"
            " its tasks, usage and reservations are no longer at that path, and nothing"
            " more is written. Put that file back at the path (move it back) and the"
            " processes go on; or restart every agentic process on this path to start over"
            " on the file there now (a new store is empty: set the allowances again; the"
            " day's usage starts at zero). To reset or restore a store, stop every"
            " process first, then remove or replace the file together with its -wal and"
            " -shm files"
        )

    def _connect_once(self) -> sqlite3.Connection:
        # isolation_level=None: the module never opens transactions behind our back;
        # BEGIN IMMEDIATE / COMMIT are issued explicitly. check_same_thread=False only
        # so that close() may close other threads' connections.
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        row = self._retry(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
        mode = str(row[0]).lower()
        if mode != "wal":
            raise ConfigError(
                f"SQLite store {str(self.path)!r}: the file system refused WAL mode"
                f" (journal_mode={mode}); put the database on a local disk"
            )
        conn.execute("PRAGMA synchronous=NORMAL")

    def _forget_connections(self) -> None:
        """In a forked child (one thread, before anything else runs): start afresh."""
        self._lock = threading.Lock()  # may have been held by a thread that is gone
        self._inherited.extend(self._holders)
        self._holders = weakref.WeakSet()
        self._local = threading.local()

    def close(self) -> None:
        """Close every thread's connection. Idempotent."""
        with self._lock:
            self._closed = True
            holders = list(self._holders)
            self._holders = weakref.WeakSet()
        for holder in holders:
            holder.conn.close()

    # --- errors ---
    def error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        """The StoreError to raise (``from exc``) for a sqlite3 failure while ``doing``."""
        where = f"SQLite store {str(self.path)!r}"
        if _code(exc) == sqlite3.SQLITE_FULL:
            return StoreUnavailableError(
                f"{where}: {doing}: the disk is full; free space and retry ({exc})"
            )
        if _code(exc) in _BUSY:
            return StoreUnavailableError(
                f"{where}: {doing}: the database stayed locked by another connection for"
                f" {self.timeout:g} s; retry, or raise ?timeout= in the store URL"
            )
        return StoreError(f"{where}: {doing} failed: {exc}")

    @contextmanager
    def _opening(self) -> Iterator[None]:
        """Errors while opening: a bad path is the user's to fix (ConfigError)."""
        try:
            yield
        except sqlite3.Error as exc:
            if _code(exc) in _BAD_PATH:
                raise ConfigError(
                    f"SQLite store: cannot use {str(self.path)!r} as a database ({exc});"
                    " point the store URL at a writable SQLite file"
                ) from exc
            raise self.error(exc, "opening the database") from exc

    def _retry(self, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt()`` again while SQLite answers busy, up to the busy timeout.

        The busy handler already waits inside most calls; this covers the cases where
        SQLite reports busy at once (WAL recovery, switching journal mode).
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if _code(exc) not in _BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)

    # --- transactions ---
    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception (sqlite3 errors as is)."""
        conn = self.connection()
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self, doing: str = "write") -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction; committed on success, rolled back on any error."""
        try:
            with self._immediate() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise self.error(exc, doing) from exc
        except OverflowError as exc:  # rolled back: nothing of it was written
            raise ConfigError(
                f"SQLite store {str(self.path)!r}, {doing}: a number past SQLite's"
                f" integers (2**63 - 1) ({exc}); lower the amounts (tokens, prices), or"
                " use a redis:// store"
            ) from exc

    def query(
        self, sql: str, params: Sequence[object] = (), doing: str = "read"
    ) -> list[sqlite3.Row]:
        """Every row of one read statement (a consistent snapshot; no lock held after)."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self.error(exc, doing) from exc

    def store_id(self) -> str:
        """The file's id: random, written by the first to ask, never changed."""
        # Read first: once written (the usual case) no write lock is taken for it,
        # which a status refreshed every few seconds would otherwise do each time.
        try:
            rows = self.query("SELECT value FROM meta WHERE key = 'store_id'")
        except StoreError:
            rows = []  # no meta table yet: made below
        if rows:
            return str(rows[0][0])
        self.migrate("meta", _META)
        with self.transaction("reading the store id") as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)",
                (uuid.uuid4().hex,),
            )
            row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        return str(row[0])

    def migrate(
        self, component: str, migrations: Sequence[Migration], oldest: int | None = None
    ) -> None:
        """Apply the component's migrations not applied yet (version = count applied).

        ``oldest`` (default: all of them): the fewest of these steps a process must
        know to use the tables, recorded beside the version for older processes to
        read. Tables a newer agentic upgraded are used as they are when the oldest it
        recorded is at most the steps known here, else refused."""
        known = len(migrations)
        with self._opening(), self._immediate() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            # A table of its own, not a column of schema_version: agentic before it
            # rewrites schema_version's rows (INSERT OR REPLACE) when it migrates.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_compat"
                " (component TEXT PRIMARY KEY, oldest INTEGER NOT NULL)"
            )
            row = conn.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
            version = 0 if row is None else int(row[0])
            if version > known:
                self._newer(conn, component, version, known)
                return
            for statements in migrations[version:]:
                for sql in statements:
                    conn.execute(sql)
            conn.execute(
                "INSERT OR REPLACE INTO schema_version (component, version) VALUES (?, ?)",
                (component, known),
            )
            conn.execute(
                "INSERT OR REPLACE INTO schema_compat (component, oldest) VALUES (?, ?)",
                (component, known if oldest is None else oldest),
            )
        if 0 < version < known:
            # Said, since from now on an older agentic started on this file (a process
            # restarted mid-upgrade, a rollback) may refuse it; running ones go on.
            log.warning(
                "SQLite store %r: upgraded the %s tables from schema version %d to %d;"
                " an older agentic started on this file from now on may refuse it"
                ' ("newer than this agentic knows"): upgrade every process that uses it',
                str(self.path),
                component,
                version,
                known,
            )

    def _newer(self, conn: sqlite3.Connection, component: str, version: int, known: int) -> None:
        """Tables at ``version``, past the ``known`` steps: used as they are when the
        agentic that upgraded them said this one can (with a warning), else refused."""
        row = conn.execute(
            "SELECT oldest FROM schema_compat WHERE component = ?", (component,)
        ).fetchone()
        where = f"SQLite store {str(self.path)!r}: the {component} tables are at schema version"
        if row is None or int(row[0]) > known:
            needs = "" if row is None else f", and need an agentic that knows {int(row[0])}"
            raise ConfigError(
                f"{where} {version}, newer than this agentic knows ({known}){needs};"
                " upgrade agentic"
            )
        log.warning(
            "%s %d, newer than this agentic knows (%d); the agentic that upgraded them"
            " says one that knows %d can use them: going on, upgrade this one soon",
            where,
            version,
            known,
            int(row[0]),
        )


#: Connections a database opening its file takes at most while the file keeps being
#: replaced (a new store takes two: the first creates the file).
_OPEN_TRIES = 5


def _warn_if_shared(path: str) -> None:
    """Warn, once per file and process, when ``path`` is on a network filesystem."""
    if path in _WARNED:
        return
    _WARNED.add(path)
    kind = network_filesystem(path)
    if kind:
        log.warning(
            "SQLite store %s is on a network filesystem (%s): SQLite's WAL is safe only"
            " when every process using the file runs on this one machine; processes on"
            " other machines would miss each other's writes (tasks run twice, quotas"
            " over-spent). For several machines use a Redis store (redis://...);"
            " otherwise keep the file on a local disk",
            path,
            kind,
        )


# Files already checked by _warn_if_shared (each store of a process opens the file).
_WARNED: set[str] = set()


def _create_private(path: Path) -> None:
    """Create the store's file, empty, readable by its owner only, unless it exists.

    It holds every task's text, results and logs; SQLite gives its ``-wal`` and
    ``-shm`` files the same permissions. Left to SQLite it would be created as the
    umask allows (0644: readable by every user of the machine). A failure is left to
    the connection to report."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _file_id(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the file ``path`` names (through symlinks); None when none."""
    try:
        st = os.stat(path)
    except OSError:  # no file (or no directory, or none this process may see)
        return None
    return st.st_dev, st.st_ino


def _read_id(conn: sqlite3.Connection) -> str:
    """The store id in the file of ``conn``; "" when it has none or cannot be read."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    except sqlite3.Error:
        return ""
    return "" if row is None else str(row[0])


# Every open Database, so that a forked child drops its parent's connections.
_OPEN: weakref.WeakSet[Database] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for db in list(_OPEN):
        db._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)
