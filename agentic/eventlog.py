"""The event log's two ends: an emitter that appends, a consumer that replays.

:class:`EventLogEmitter` is an :class:`~agentic.events.EventEmitter` (its rules:
``emit`` never blocks nor raises) that appends to an
:class:`~agentic.stores.EventLog` from one background thread, up to 100 events per
append, in emit order. A store that cannot take the batch now
(:class:`~agentic.errors.StoreUnavailableError`: Redis down, SQLite locked) is
retried with backoff; since an append of an event already in the log adds nothing,
a retry after an append whose answer was lost cannot write an event twice. Other
store errors drop the batch, logged and counted. Every so often the emitter trims
the log to its newest ``keep`` events (retention). Events still buffered when the
process dies are lost: what is in the log is what is durable.

:class:`EventConsumer` hands the log's events to a handler in offset order and
commits its position under a name after each one, so a consumer that stops (or
crashes) resumes where it was: **at least once** delivery. The event that was being
handled when a process died is handled again after the restart, so handlers must be
idempotent: the event's ``id`` is the key to remember. A handler that raises stops
the consumer at that event; :meth:`EventConsumer.run` logs it, counts it in
``errors`` and retries it after a backoff, so one bad event is never skipped in
silence. Run one process per consumer name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ._buffered import BufferedEmitter
from .errors import ConfigError, StoreError, StoreUnavailableError
from .events import Event
from .retry import RetryPolicy
from .stores.base import EventLog, LoggedEvent, require_consumer

__all__ = ["DEFAULT_KEEP", "EventConsumer", "EventLogEmitter"]

log = logging.getLogger("agentic.events")

#: events an EventLogEmitter keeps in the log (older ones are trimmed)
DEFAULT_KEEP = 100_000
_BATCH = 100
_DEFAULT_RETRY = RetryPolicy(max_retries=8, base=0.5, cap=30.0)
# A consumer retries a failing handler or store for ever, waiting at most this long.
_CONSUMER_RETRY = RetryPolicy(max_retries=0, base=0.5, cap=30.0)


class EventLogEmitter(BufferedEmitter):
    """Appends emitted events to ``log`` (see the module docstring).

    ``keep`` events are kept (0: never trim); the log is trimmed after each
    ``keep // 10`` appended events (at most every 1,000). ``close_log`` closes the
    log when the emitter closes (for logs the emitter's owner opened for it).
    """

    def __init__(
        self,
        log: EventLog,
        *,
        keep: int = DEFAULT_KEEP,
        maxsize: int = 10_000,
        retry: RetryPolicy | None = None,
        close_timeout: float = 5.0,
        sleep: Callable[[float], None] | None = None,
        close_log: bool = False,
    ) -> None:
        if keep < 0:
            raise ConfigError(f"keep must be >= 0 events (0: never trim), got {keep}")
        super().__init__(
            maxsize=maxsize,
            batch=_BATCH,
            close_timeout=close_timeout,
            request_timeout=5.0,
            sleep=sleep,
        )
        self.log, self.keep = log, keep
        self.retry = retry or _DEFAULT_RETRY
        self._trim_every = min(max(keep // 10, 1), 1_000)
        self._since_trim = 0
        self._close_log = close_log
        self._start("agentic-event-log")

    def __repr__(self) -> str:
        return f"EventLogEmitter({type(self.log).__name__})"

    def _release(self) -> None:
        if self._close_log:
            self.log.close()

    def _send(self, events: list[Event]) -> int:
        attempt = 0
        while True:
            try:
                self.log.append(events)
                break
            except StoreUnavailableError as exc:
                why = str(exc)
            except StoreError as exc:  # refused: the same append would be refused again
                log.warning("%r: %d event(s) dropped: %s", self, len(events), exc)
                return 0
            attempt += 1
            if not self.retry.should_retry(attempt) or not self._wait(self.retry.delay(attempt)):
                log.warning(
                    "%r: %d event(s) dropped after %d attempt(s): %s",
                    self,
                    len(events),
                    attempt,
                    why,
                )
                return 0
        self._trim(len(events))
        return len(events)

    def _trim(self, appended: int) -> None:
        if not self.keep:
            return
        self._since_trim += appended
        if self._since_trim < self._trim_every:
            return
        try:
            self.log.trim(self.keep)
            self._since_trim = 0
        except StoreError as exc:  # the events are in; trimming is tried again next time
            self.errors += 1
            log.warning("%r: trimming the log to %d events failed: %s", self, self.keep, exc)


class EventConsumer:
    """Delivers ``log``'s events to ``handler`` at least once, resuming from the
    position committed under ``name`` (see the module docstring).

    ``handled`` counts the events handled, ``errors`` the failures seen (handler or
    store); ``position`` is the offset of the last event handled.
    """

    def __init__(
        self,
        log: EventLog,
        name: str,
        handler: Callable[[LoggedEvent], object],
        *,
        batch: int = 100,
        retry: RetryPolicy | None = None,
    ) -> None:
        require_consumer(name)
        if not 1 <= batch <= 1000:
            raise ConfigError(f"batch must be from 1 to 1000 events, got {batch}")
        self.log, self.name, self.handler, self.batch = log, name, handler, batch
        self.retry = retry or _CONSUMER_RETRY
        self.handled = self.errors = 0
        self.position: int | None = None  # read from the log on first use

    def poll(self) -> int:
        """Handle the events after the committed position, one batch at most; how
        many were handled. A handler's exception propagates after the events
        before it were committed; store errors propagate as StoreError."""
        if self.position is None:
            self.position = self.log.committed(self.name)
        done = 0
        for logged in self.log.read(self.position, self.batch):
            self.handler(logged)
            self.log.commit(self.name, logged.offset)
            self.position = logged.offset
            self.handled += 1
            done += 1
        return done

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll until ``stop`` is set: at once while there is more, every
        ``interval`` seconds once caught up. A failure (the handler's or the
        store's) is logged, counted and retried after a growing backoff."""
        failures = 0
        while not stop.is_set():
            try:
                more = self.poll() == self.batch
                failures = 0
            except Exception as exc:  # a handler's own error, or the store's
                failures += 1
                self.errors += 1
                log.error(
                    "event consumer %r: stopped after offset %s (failure %d): %r",
                    self.name,
                    self.position,
                    failures,
                    exc,
                    exc_info=not isinstance(exc, StoreError),
                )
                stop.wait(self.retry.delay(min(failures, 30)))
                continue
            if not more:
                stop.wait(interval)
