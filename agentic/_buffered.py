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
from collections.abc import Callable

from .errors import ConfigError
from .events import Event, _BoundedBuffer
from .retry import RetryPolicy

__all__ = ["BufferedEmitter"]

log = logging.getLogger("agentic.events")


class BufferedEmitter(_BoundedBuffer):
    """Buffer, sender thread, flush and close for emitters that call out (see above).

    ``delivered``, ``dropped`` and ``errors`` count what happened; ``flush`` waits
    until everything emitted so far has been delivered or dropped. Subclasses set
    ``retry``, the backoff of :meth:`_with_retries`.
    """

    retry: RetryPolicy

    def __init__(
        self,
        *,
        maxsize: int,
        batch: int,
        close_timeout: float,
        request_timeout: float,
        sleep: Callable[[float], None] | None,
    ) -> None:
        if batch < 1 or close_timeout < 0:
            raise ConfigError("batch must be >= 1 and close_timeout >= 0")
        super().__init__(maxsize)
        self.batch, self.close_timeout = batch, close_timeout
        self.delivered = self.errors = 0
        self._request_timeout = request_timeout
        self._busy = False  # the sender holds events taken from the buffer
        self._deadline: float | None = None  # set by close(): when to give up
        self._sleep = sleep
        self._thread: threading.Thread | None = None

    def _start(self, name: str) -> None:
        """Start the sender thread (the subclass calls it once it is ready to send)."""
        self._thread = threading.Thread(target=self._send_all, name=name, daemon=True)
        self._thread.start()

    def _kind(self) -> str:
        return f"{self!r} buffer"

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is delivered or dropped; False if
        ``timeout`` seconds passed first."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._buffer and not self._busy, timeout)

    def close(self) -> None:
        """Stop taking events; deliver what is buffered within ``close_timeout``
        seconds, then drop the rest. Returns within ``close_timeout`` plus one
        request's timeout; a request still in flight then (it outlasted its timeout)
        is counted when it ends. Idempotent."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + self.close_timeout
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(self.close_timeout + self._request_timeout + 1.0)
        with self._ready:
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

    def _with_retries(
        self,
        count: int,
        attempt: Callable[[], object],
        passing: tuple[type[Exception], ...],
        refused: tuple[type[Exception], ...],
    ) -> int:
        """Deliver ``count`` events with ``attempt()``: ``count`` when it returned, 0
        when it failed for good. ``passing`` errors are retried with ``self.retry``'s
        backoff until the retries are used up (or closing leaves no time for one);
        ``refused`` ones would fail again and drop the events at once. Drops are logged
        with the last reason."""
        tries = 0
        while True:
            try:
                attempt()
            except passing as exc:
                why = repr(exc)
            except refused as exc:
                log.warning("%r: %d event(s) dropped: %s", self, count, exc)
                return 0
            else:
                return count
            tries += 1
            if not self.retry.should_retry(tries) or not self._wait(self.retry.delay(tries)):
                log.warning(
                    "%r: %d event(s) dropped after %d attempt(s): %s", self, count, tries, why
                )
                return 0

    @abstractmethod
    def _send(self, events: list[Event]) -> int:
        """Deliver ``events`` (in order, retrying what may pass later); how many of
        them were delivered, from the first. Log the reason for the rest."""

    def _release(self) -> None:
        """Free what the sender used (a connection pool), after the thread ended."""

    # --- the sender thread ---
    def _send_all(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._buffer or self._closed)
                if not self._buffer or self._past_deadline():
                    self._ready.notify_all()
                    return
                events = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
                self._busy = True
            try:
                sent = self._send(events)
            except Exception:  # a bug must not end the thread and lose the rest
                sent = 0
                log.exception("%r: sending %d event(s) failed", self, len(events))
            with self._ready:
                self.delivered += sent
                if sent < len(events):
                    self.dropped += len(events) - sent
                    self.errors += 1
                self._busy = False
                self._ready.notify_all()

    def _wait(self, seconds: float) -> bool:
        """Sleep before a retry; False when closing leaves no time for it."""
        if self._sleep is not None:
            self._sleep(seconds)
            return not self._past_deadline()
        end = time.monotonic() + seconds
        with self._ready:
            # close() sets the deadline and notifies: the wait is cut to it.
            while True:
                limit = end if self._deadline is None else min(end, self._deadline)
                left = limit - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
        return not self._past_deadline()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline
