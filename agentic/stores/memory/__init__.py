"""The in-process backend: fast, exact, gone when the process exits."""

from __future__ import annotations

from .._url import StoreURL
from .allowance import MemoryAllowanceStore
from .eventlog import MemoryEventLog
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


def allowance_store_from_url(url: StoreURL) -> MemoryAllowanceStore:
    """``memory://``: a new, empty allowance store."""
    url.take({})
    return MemoryAllowanceStore(tz=url.tz(), reservation_ttl=url.reservation_ttl())


def event_log_from_url(url: StoreURL) -> MemoryEventLog:
    """``memory://``: a new, empty event log."""
    url.take({})
    return MemoryEventLog()
