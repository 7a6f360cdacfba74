"""The machinery of emitters that deliver from a background thread (webhook, stream).

``emit`` puts the event in a bounded buffer and returns (the rules of
:mod:`agentic.events`: it never blocks, never raises); one sender thread takes up to
``batch`` events at a time, in emit order, and hands them to the subclass's ``_send``,
which may retry (waiting with :meth:`BufferedEmitter._wait`) and says how many it
delivered. What is not delivered is counted in ``dropped`` and ``errors`` and logged by
the subclass with its reason. ``close`` stops taking events, gives the buffer up to
``close_timeout`` seconds (retries included), then drops and counts the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable

from .errors import ConfigError
from .events import Event, EventEmitter

__all__ = ["BufferedEmitter"]

log = logging.getLogger("agentic.events")


class BufferedEmitter(EventEmitter):
    """Buffer, sender thread, flush and close for emitters that call out (see above).

    ``delivered``, ``dropped`` and ``errors`` count what happened; ``flush`` waits
    until everything emitted so far has been delivered or dropped.
    """

    def __init__(
        self,
        *,
        maxsize: int,
        batch: int,
        close_timeout: float,
        request_timeout: float,
        sleep: Callable[[float], None] | None,
    ) -> None:
        if maxsize < 1 or batch < 1 or close_timeout < 0:
            raise ConfigError("maxsize and batch must be >= 1 and close_timeout >= 0")
        self.maxsize, self.batch, self.close_timeout = maxsize, batch, close_timeout
        self.delivered = self.dropped = self.errors = 0
        self._request_timeout = request_timeout
        self._buffer: deque[Event] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._busy = False  # the sender holds events taken from the buffer
        self._overflowing = False
        self._deadline: float | None = None  # set by close(): when to give up
        self._sleep = sleep
        self._thread: threading.Thread | None = None

    def _start(self, name: str) -> None:
        """Start the sender thread (the subclass calls it once it is ready to send)."""
        self._thread = threading.Thread(target=self._send_all, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def emit(self, event: Event) -> None:
        with self._changed:
            if self._closed:
                self.dropped += 1
                return
            if len(self._buffer) < self.maxsize:
                self._buffer.append(event)
                self._overflowing = False
                self._changed.notify_all()
                return
            self.dropped += 1
            first_drop, self._overflowing = not self._overflowing, True
        if first_drop:  # once per overflow: a dead sink must not flood the log
            log.warning("%r: buffer full (%d), dropping events", self, self.maxsize)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is delivered or dropped; False if
        ``timeout`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._buffer and not self._busy, timeout)

    def close(self) -> None:
        """Stop taking events; deliver what is buffered within ``close_timeout``
        seconds, then drop the rest. Returns within ``close_timeout`` plus one
        request's timeout; a request still in flight then (it outlasted its timeout)
        is counted when it ends. Idempotent."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + self.close_timeout
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(self.close_timeout + self._request_timeout + 1.0)
        with self._changed:
            left = len(self._buffer)
            self._buffer.clear()
            self.dropped += left
        if left:
            log.warning("%r: %d event(s) not delivered before close", self, left)
        if self._thread is not None and self._thread.is_alive():
            # A request outlasting its timeouts (a DNS lookup has none): the sender keeps
            # its client, counts that event when the request ends, then stops.
            log.warning("%r: a delivery is still in flight after close", self)
            return
        self._release()

    @abstractmethod
    def _send(self, events: list[Event]) -> int:
        """Deliver ``events`` (in order, retrying what may pass later); how many of
        them were delivered, from the first. Log the reason for the rest."""

    def _release(self) -> None:
        """Free what the sender used (a connection pool), after the thread ended."""

    # --- the sender thread ---
    def _send_all(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._buffer or self._closed)
                if not self._buffer or self._past_deadline():
                    self._changed.notify_all()
                    return
                events = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
                self._busy = True
            try:
                sent = self._send(events)
            except Exception:  # a bug must not end the thread and lose the rest
                sent = 0
                log.exception("%r: sending %d event(s) failed", self, len(events))
            with self._changed:
                self.delivered += sent
                if sent < len(events):
                    self.dropped += len(events) - sent
                    self.errors += 1
                self._busy = False
                self._changed.notify_all()

    def _wait(self, seconds: float) -> bool:
        """Sleep before a retry; False when closing leaves no time for it."""
        if self._sleep is not None:
            self._sleep(seconds)
            return not self._past_deadline()
        end = time.monotonic() + seconds
        with self._changed:
            # close() sets the deadline and notifies: the wait is cut to it.
            while True:
                limit = end if self._deadline is None else min(end, self._deadline)
                left = limit - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return not self._past_deadline()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline
