"""The Redis backend: stores shared by every machine that reaches one Redis server.

``redis://host:6379/0?prefix=agentic&timeout=2`` (also ``rediss://``). Each atomic
store operation is one Lua script call (one round trip), timed by the server's
``TIME``. Keys are listed in :mod:`agentic.stores.keys`.
"""

from __future__ import annotations

from .._url import StoreURL
from ._conn import Connection, accept_store, connect, persistence_warning
from .allowance import RedisAllowanceStore
from .eventlog import RedisEventLog
from .events import RedisStreamEmitter, read_events
from .functions import PrunedFunctions, prune_functions
from .registry import RedisRegistry

__all__ = [
    "Connection",
    "PrunedFunctions",
    "RedisAllowanceStore",
    "RedisEventLog",
    "RedisRegistry",
    "RedisStreamEmitter",
    "accept_store",
    "accept_store_from_url",
    "allowance_store_from_url",
    "connect",
    "event_log_from_url",
    "persistence_warning",
    "prune_functions",
    "prune_functions_from_url",
    "read_events",
    "registry_from_url",
]


def registry_from_url(url: StoreURL, create: bool = True) -> RedisRegistry:
    """``redis://``: a registry on the server of ``url`` (pinged at open). Without
    ``create`` (a command that only reads), a store with no store id is a StoreError
    instead of a new store: the id is not written (every ``*_from_url`` here)."""
    conn = connect(url)
    return RedisRegistry(conn.client, prefix=conn.prefix, close_client=True, create=create)


def allowance_store_from_url(
    url: StoreURL, record_events: bool = False, create: bool = True
) -> RedisAllowanceStore:
    """``redis://``: an allowance store on the server of ``url`` (pinged at open)."""
    tz, ttl = url.tz(), url.reservation_ttl()  # bad options fail before connecting
    conn = connect(url)
    return RedisAllowanceStore(
        conn.client,
        prefix=conn.prefix,
        tz=tz,
        reservation_ttl=ttl,
        close_client=True,
        record_events=record_events,
        create=create,
    )


def event_log_from_url(url: StoreURL, create: bool = True) -> RedisEventLog:
    """``redis://``: an event log on the server of ``url`` (pinged at open)."""
    conn = connect(url)
    return RedisEventLog(conn.client, prefix=conn.prefix, close_client=True, create=create)


def prune_functions_from_url(url: StoreURL, dry_run: bool = False) -> PrunedFunctions:
    """``redis://``: :func:`prune_functions` on the server of ``url`` (pinged first)."""
    client = connect(url).client
    try:
        return prune_functions(client, dry_run=dry_run)
    finally:
        client.close()


def accept_store_from_url(url: StoreURL) -> str | None:
    """``redis://``: :func:`accept_store` for the stores under the prefix of ``url``."""
    conn = connect(url)
    try:
        return accept_store(conn.client, conn.prefix)
    finally:
        conn.client.close()
