"""Where the task API runs store calls: inline on the event loop or in worker threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agentic.errors import StoreUnavailableError
from agentic.server._calls import StoreCalls
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.stores.sqlite.tasks import SQLiteTaskStore


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def thread_of(calls: StoreCalls, effect: object = None, clock: Clock | None = None) -> int:
    """The thread a call ran in; ``effect``: raise it, or advance ``clock`` by it."""

    def call() -> int:
        if isinstance(effect, Exception):
            raise effect
        if isinstance(effect, float) and clock is not None:
            clock.now += effect
        return threading.get_ident()

    return asyncio.run(calls(call))


def test_a_quick_store_is_called_on_the_event_loop() -> None:
    """Memory and Redis stores (blocking = False) are called inline."""
    calls = StoreCalls(MemoryTaskStore())
    assert thread_of(calls) == threading.get_ident()


def test_a_store_that_may_wait_on_locks_is_called_in_worker_threads(tmp_path: object) -> None:
    """SQLite (blocking = True) is always called in a worker thread."""
    store = SQLiteTaskStore(f"{tmp_path}/tasks.db")
    try:
        assert thread_of(StoreCalls(store)) != threading.get_ident()
    finally:
        store.close()


@pytest.mark.parametrize("trip", ["unreachable", "slow"])
def test_an_unreachable_or_slow_store_moves_calls_to_threads_for_a_while(trip: str) -> None:
    """After a call that found the store unreachable, or took longer than ``slow``,
    calls run in worker threads for ``cool_down`` seconds, then inline again."""
    clock = Clock()
    calls = StoreCalls(MemoryTaskStore(), slow=0.1, cool_down=30, clock=clock)
    here = threading.get_ident()
    if trip == "unreachable":
        with pytest.raises(StoreUnavailableError):
            thread_of(calls, StoreUnavailableError("Redis unavailable"))
    else:
        assert thread_of(calls, 0.5, clock) == here  # the slow call itself was inline
    assert thread_of(calls) != here
    clock.now += 29
    assert thread_of(calls) != here
    clock.now += 2
    assert thread_of(calls) == here


def test_a_failure_that_is_not_an_outage_keeps_calls_inline() -> None:
    """A refusal (a store's not-found, a conflict) says nothing of the store's health."""
    calls = StoreCalls(MemoryTaskStore(), clock=Clock())
    with pytest.raises(KeyError):
        thread_of(calls, KeyError("no such task"))
    assert thread_of(calls) == threading.get_ident()
