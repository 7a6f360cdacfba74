"""The in-process backend: fast, exact, gone when the process exits."""

from __future__ import annotations

from .._url import StoreURL
from .allowance import MemoryAllowanceStore
from .eventlog import MemoryEventLog, private_log_refused
from .registry import MemoryRegistry

__all__ = [
    "MemoryAllowanceStore",
    "MemoryEventLog",
    "MemoryRegistry",
    "allowance_store_from_url",
    "event_log_from_url",
    "registry_from_url",
]


def registry_from_url(url: StoreURL) -> MemoryRegistry:
    """``memory://``: a new, empty registry."""
    url.take({})
    return MemoryRegistry()


def allowance_store_from_url(url: StoreURL, record_events: bool = False) -> MemoryAllowanceStore:
    """``memory://``: a new, empty allowance store. It cannot record events (see
    :func:`~agentic.stores.memory.tasks.task_store_from_url`)."""
    url.take({})
    if record_events:
        raise private_log_refused("usage events", "MemoryAllowanceStore")
    return MemoryAllowanceStore(tz=url.tz(), reservation_ttl=url.reservation_ttl())


def event_log_from_url(url: StoreURL) -> MemoryEventLog:
    """``memory://``: a new, empty event log."""
    url.take({})
    return MemoryEventLog()
