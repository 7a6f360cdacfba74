"""The one-machine backend: stores in one SQLite file, shared by threads and processes.

URLs: ``sqlite:///abs/path.db`` (absolute) or ``sqlite://relative.db`` (from the
current directory); ``?timeout=`` is the busy timeout in seconds (default 5). The
directory is created when missing; a URL naming a directory (rather than a file in
it) is refused. ``sqlite://:memory:`` is refused: an in-memory database belongs to
one connection, so use ``memory://``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from .._url import StoreURL
from ._db import DEFAULT_TIMEOUT, resolve
from .allowance import SQLiteAllowanceStore
from .eventlog import SQLiteEventLog
from .registry import SQLiteRegistry

__all__ = [
    "SQLiteAllowanceStore",
    "SQLiteEventLog",
    "SQLiteRegistry",
    "allowance_store_from_url",
    "database_file",
    "event_log_from_url",
    "registry_from_url",
]

_OPTIONS = {"timeout": f"seconds a write waits for a locked database (default {DEFAULT_TIMEOUT:g})"}


def _path(url: StoreURL) -> str:
    if url.netloc:
        # sqlite://relative.db, sqlite://data/agentic.db: the "host" is the first part
        path = url.netloc + url.path
    elif url.path:
        # sqlite:///abs.db and sqlite:////abs.db both mean /abs.db
        path = "/" + url.path.lstrip("/")
    else:
        path = ""
    return unquote(path)


def _path_and_timeout(url: StoreURL) -> tuple[str, float]:
    url.take(_OPTIONS)
    return _path(url), url.number("timeout", DEFAULT_TIMEOUT)


def database_file(url: StoreURL) -> Path:
    """The absolute path of the file a ``sqlite://`` URL names, whether it exists or
    not; ConfigError when it cannot be a database file (a directory, say)."""
    return resolve(_path(url))


def registry_from_url(url: StoreURL) -> SQLiteRegistry:
    """``sqlite://...``: a registry on that file."""
    path, timeout = _path_and_timeout(url)
    return SQLiteRegistry(path, timeout=timeout)


def allowance_store_from_url(url: StoreURL, record_events: bool = False) -> SQLiteAllowanceStore:
    """``sqlite://...``: an allowance store on that file."""
    path, timeout = _path_and_timeout(url)
    return SQLiteAllowanceStore(
        path,
        tz=url.tz(),
        reservation_ttl=url.reservation_ttl(),
        timeout=timeout,
        record_events=record_events,
    )


def event_log_from_url(url: StoreURL) -> SQLiteEventLog:
    """``sqlite://...``: an event log on that file."""
    path, timeout = _path_and_timeout(url)
    return SQLiteEventLog(path, timeout=timeout)
