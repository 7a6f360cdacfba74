"""Stores chosen from a URL by a scheme table.

=================================  ===================================================
``memory://``                      in-process; for tests and single-process tools
``sqlite:///abs/path.db``          one machine, many processes (the default);
``sqlite://relative.db``           ``?timeout=`` busy timeout in seconds
``redis://host:6379/0``            many machines; ``?prefix=`` namespaces keys,
``rediss://...``                   ``?timeout=`` connect timeout in seconds
=================================  ===================================================

Every URL also accepts ``?tz=`` (IANA zone of the quota day, default UTC) and
``?reservation_ttl=`` (seconds). Backends import lazily, so a missing optional
dependency is reported only when its scheme is used, with the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ._url import StoreURL, parse_store_url
from .base import AgentRegistry, AllowanceStore, EventLog, LoggedEvent, TaskStore

if TYPE_CHECKING:
    from .redis import PrunedFunctions

__all__ = [
    "SCHEMES",
    "accept_redis_store",
    "AgentRegistry",
    "AllowanceStore",
    "EventLog",
    "LoggedEvent",
    "StoreURL",
    "TaskStore",
    "open_allowance_store",
    "open_event_log",
    "open_registry",
    "open_task_store",
    "parse_store_url",
    "persistence_warning",
    "prune_redis_functions",
]

# scheme -> (module, extra that provides its dependency)
_SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("agentic.stores.memory", None),
    "sqlite": ("agentic.stores.sqlite", None),
    "redis": ("agentic.stores.redis", "redis"),
    "rediss": ("agentic.stores.redis", "redis"),
}


#: every URL scheme a store can be opened from
SCHEMES = tuple(_SCHEMES)


def _backend(url: str) -> tuple[ModuleType, StoreURL]:
    parsed = parse_store_url(url)
    entry = _SCHEMES.get(parsed.scheme)
    if entry is None:
        raise ConfigError(
            f"store URL {parsed.redacted()!r}: unknown scheme {parsed.scheme!r};"
            f" accepted: {', '.join(s + '://' for s in _SCHEMES)}"
        )
    module_name, extra = entry
    try:
        return importlib.import_module(module_name), parsed
    except ImportError as exc:
        hint = f"pip install 'agentic[{extra}]'" if extra else "reinstall agentic"
        raise ConfigError(
            f"store URL {parsed.redacted()!r} needs a missing dependency ({exc.name}): {hint}"
        ) from exc


def _only_existing(parsed: StoreURL, create: bool) -> dict[str, bool]:
    """The backend's arguments of an open with ``create`` false (a command that only
    reads): a Redis store with no store id is refused instead of given one. The
    other backends have nothing to add: a SQLite file is checked before it is opened
    (the CLI's read-only commands refuse a missing one), a memory store is new."""
    return {} if create or _SCHEMES[parsed.scheme] != _SCHEMES["redis"] else {"create": False}


def open_registry(url: str, create: bool = True) -> AgentRegistry:
    """An AgentRegistry for ``url`` (see the module table). Without ``create``, a
    Redis store that has no store id (never used, or emptied) is a StoreError, and
    no id is written (also :func:`open_allowance_store`, :func:`open_event_log`)."""
    module, parsed = _backend(url)
    registry: AgentRegistry = module.registry_from_url(parsed, **_only_existing(parsed, create))
    return registry


def open_allowance_store(
    url: str, record_events: bool = False, create: bool = True
) -> AllowanceStore:
    """An AllowanceStore for ``url`` (see the module table). With ``record_events``
    each settle records its ``usage_recorded`` event, and each reserve or settle the
    ``quota_warning`` / ``quota_exceeded`` it crossed, in the event log of the same
    store, in the same atomic step as the change, so no crash can lose them."""
    module, parsed = _backend(url)
    store: AllowanceStore = module.allowance_store_from_url(
        parsed, record_events=record_events, **_only_existing(parsed, create)
    )
    return store


def open_event_log(url: str, create: bool = True) -> EventLog:
    """An EventLog for ``url`` (see the module table)."""
    module, parsed = _backend(url)
    log: EventLog = module.event_log_from_url(parsed, **_only_existing(parsed, create))
    return log


def open_task_store(url: str, record_events: bool = False) -> TaskStore:
    """A TaskStore for ``url`` (see the module table). With ``record_events`` it
    records each task's lifecycle (claimed, completed, failed, requeued,
    dead-lettered) in the event log of the same store, in the same atomic step as
    the change, so no crash can lose it."""
    module, parsed = _backend(url)
    # The backend package imported above already proved its dependency is installed.
    tasks = importlib.import_module(module.__name__ + ".tasks")
    store: TaskStore = tasks.task_store_from_url(parsed, record_events=record_events)
    return store


def prune_redis_functions(url: str, dry_run: bool = False) -> PrunedFunctions:
    """Delete, from the Redis server of ``url``, the Redis Functions libraries of
    agentic versions other than this one (see
    :func:`agentic.stores.redis.prune_functions`). Functions belong to the server,
    not to a database or prefix: the URL only says where the server is."""
    parsed = parse_store_url(url)
    if _SCHEMES.get(parsed.scheme) != _SCHEMES["redis"]:
        raise ConfigError(
            f"store URL {parsed.redacted()!r}: Redis Functions live on a Redis server;"
            " give a redis:// or rediss:// URL"
        )
    module, parsed = _backend(url)
    pruned: PrunedFunctions = module.prune_functions_from_url(parsed, dry_run=dry_run)
    return pruned


def accept_redis_store(url: str) -> str | None:
    """Accept the Redis store of ``url``, which a process found gone back in time (a
    failover to a replica that lagged, a restored backup), as it now is, so that
    every process goes on from it (see :func:`agentic.stores.redis.accept_store`):
    what the store's mark said ("count mark"), or None when it had none (nothing
    changed). StoreError when there is no store there."""
    parsed = parse_store_url(url)
    if _SCHEMES.get(parsed.scheme) != _SCHEMES["redis"]:
        raise ConfigError(
            f"store URL {parsed.redacted()!r}: only a Redis store can go back in time"
            " under running processes (an SQLite file replaced is refused otherwise);"
            " give a redis:// or rediss:// URL"
        )
    module, parsed = _backend(url)
    back: str | None = module.accept_store_from_url(parsed)
    return back


def persistence_warning(url: str) -> str | None:
    """What may make the store of ``url`` lose writes without any process noticing
    (a Redis without an append-only file), or None."""
    module, parsed = _backend(url)
    if module.__name__ != _SCHEMES["redis"][0]:
        return None
    warning: str | None = module.persistence_warning(parsed)
    return warning
