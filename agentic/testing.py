"""Public fakes for users' own tests (and ours)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

__all__ = ["FakeClock"]


class FakeClock:
    """A clock tests move by hand: call it for epoch seconds, ``advance`` to move it.

    Pass it as ``clock=`` to a memory or SQLite store (or a Redis store in tests) so
    period rollover, reservation expiry and reaping happen without sleeping.
    """

    def __init__(self, start: float | datetime = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)) -> None:
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float | datetime) -> None:
        """Jump to an absolute time."""
        with self._lock:
            self._now = when.timestamp() if isinstance(when, datetime) else float(when)
