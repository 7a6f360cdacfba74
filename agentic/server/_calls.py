"""How the task API calls its store: on the event loop, or in a worker thread."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from anyio import to_thread

from ..errors import StoreUnavailableError
from ..stores.base import TaskStore

__all__ = ["StoreCalls"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StoreCalls:
    """``await calls(store.get, task_id)`` runs a store method where it belongs.

    A store that may wait on another process's lock (``TaskStore.blocking``, SQLite)
    is called in a worker thread so one slow call cannot stall every other request.
    Any other store is called inline: the hand-off to a thread and back costs more
    CPU than its whole call. Inline holds only while the store answers quickly: a
    call that finds it unreachable, or takes longer than ``slow`` seconds, sends every
    call to worker threads for ``cool_down`` seconds, so a partitioned Redis stalls the
    event loop (health checks included) once per cool-down, not on every request.
    """

    def __init__(
        self,
        store: TaskStore,
        *,
        slow: float = 0.1,
        cool_down: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inline = not store.blocking
        self.slow, self.cool_down = slow, cool_down
        self._clock = clock
        self._threaded_until = 0.0

    async def __call__(
        self, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if not self.inline or self._clock() < self._threaded_until:
            return await to_thread.run_sync(functools.partial(function, *args, **kwargs))
        started = self._clock()
        try:
            return function(*args, **kwargs)
        except StoreUnavailableError:
            self._threaded(f"{self._clock() - started:.3f} s, unreachable")
            raise
        finally:
            took = self._clock() - started
            if took > self.slow and self._clock() >= self._threaded_until:
                self._threaded(f"{took:.3f} s")

    def _threaded(self, why: str) -> None:
        self._threaded_until = self._clock() + self.cool_down
        log.warning(
            "a store call blocked the event loop (%s): store calls run in worker threads"
            " for the next %g s",
            why,
            self.cool_down,
        )
