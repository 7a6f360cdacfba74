"""Threads reused from one call to the next, each call still on a thread of its own.

A runner gives every attempt two threads (its supervisor and its handler). Starting a
thread costs its creation and a hand-shake: ``Thread.start`` waits until the new thread
runs, so on a busy machine the caller waits for the scheduler too (about a tenth of a
busy runner's CPU went to it). A thread whose call has ended waits here a while for the
next call instead (in a fresh ``contextvars`` context; thread-local data a handler
leaves behind stays with the thread, as in any thread pool). A pool with a bound would
not do: a handler that ignores cancellation keeps its thread forever, and it must not
keep a later task from running.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["Threads"]

log = logging.getLogger("agentic.runner")

_Call = tuple[str, Callable[[], object]]


class _Worker:
    """One thread, given one call at a time."""

    def __init__(self, threads: Threads) -> None:
        self._threads = threads
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()

    def give(self, call: _Call) -> None:
        self._calls.put(call)

    def run(self) -> None:
        call: _Call | None = self._calls.get()
        while call is not None:
            name, step = call
            thread = threading.current_thread()
            thread.name = name
            try:
                # A fresh context each call, as a new thread has: a handler's context
                # variables (a logger's bound task id) must not leak into the next task.
                contextvars.Context().run(step)
            except BaseException:
                # The runner's calls handle their own errors: one reaching here is a
                # bug, logged like an uncaught exception in a thread of its own.
                log.exception("%s: uncaught error", name)
            thread.name = f"{self._threads.name}-idle"
            # Hold nothing of the ended call while waiting (its attempt, its result).
            del call, step
            call = self._next()

    def _next(self) -> _Call | None:
        """The next call, or None when this thread should end."""
        if not self._threads.idle(self):
            return None
        try:
            return self._calls.get(timeout=self._threads.linger)
        except queue.Empty:
            if self._threads.retire(self):
                return None
            # Taken for a call just as the wait ran out: that call is on its way.
            return self._calls.get()


class Threads:
    """Run calls, each on a thread of its own, reusing the threads of ended calls.

    Unbounded like a thread per call; at most ``keep`` threads wait for work, each
    for ``linger`` seconds. Threads are daemons, as the runner's own always were.
    """

    def __init__(self, name: str, *, keep: int = 32, linger: float = 30.0) -> None:
        self.name = name
        self.keep = keep
        self.linger = linger
        self._lock = threading.Lock()
        self._waiting: list[_Worker] = []

    def run(self, name: str, call: Callable[[], object]) -> None:
        """Run ``call`` on a thread named ``name`` (a waiting one, else a new one)."""
        with self._lock:
            worker = self._waiting.pop() if self._waiting else None
        if worker is None:
            worker = _Worker(self)
            threading.Thread(target=worker.run, name=name, daemon=True).start()
        worker.give((name, call))

    def idle(self, worker: _Worker) -> bool:
        """``worker`` has ended its call: keep it for the next one, if room is left."""
        with self._lock:
            if len(self._waiting) >= self.keep:
                return False
            self._waiting.append(worker)
            return True

    def retire(self, worker: _Worker) -> bool:
        """``worker`` waited ``linger`` for nothing: end it, unless it was just taken."""
        with self._lock:
            if worker in self._waiting:
                self._waiting.remove(worker)
                return True
            return False

    @property
    def waiting(self) -> int:
        """Threads waiting for a call now."""
        with self._lock:
            return len(self._waiting)
