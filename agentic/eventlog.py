"""The event log's two ends: an emitter that appends, a consumer that replays.

:class:`EventLogEmitter` is an :class:`~agentic.events.EventEmitter` (its rules:
``emit`` never blocks nor raises) that appends to an
:class:`~agentic.stores.EventLog` from one background thread, up to 100 events per
append, in emit order. A store that cannot take the batch now
(:class:`~agentic.errors.StoreUnavailableError`: Redis down, SQLite locked) is
retried with backoff; since an append of an event already in the log adds nothing,
a retry after an append whose answer was lost cannot write an event twice. Other
store errors drop the batch, logged and counted; an event whose payload is not JSON
is dropped alone. Every so often, and when it closes, the emitter trims the log to
its newest ``keep`` events (retention), sparing with ``keep_unread`` those a named
consumer has not handled yet. Events still buffered when the
process dies are lost: what is in the log is what is durable.

:class:`EventConsumer` hands the log's events to a handler in offset order and
commits its position under a name after each one, so a consumer that stops (or
crashes) resumes where it was: **at least once** delivery. The event that was being
handled when a process died is handled again after the restart, so handlers must be
idempotent: the event's ``id`` is the key to remember. A handler that raises stops
the consumer at that event; :meth:`EventConsumer.run` logs it, counts it in
``errors`` and retries it after a backoff, so one bad event is never skipped in
silence. Events the log trimmed before the consumer reached them are reported
(logged as errors, counted in ``missed``): size ``keep`` for the slowest consumer,
or have the emitters spare unread events (``keep_unread``).
Run one process per consumer name.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable

from ._buffered import BufferedEmitter
from .errors import ConfigError, StoreError, StoreUnavailableError
from .events import Event
from .retry import RetryPolicy
from .stores.base import MAX_READ, EventLog, LoggedEvent, require_consumer, require_count

__all__ = ["DEFAULT_KEEP", "EventConsumer", "EventLogEmitter"]

log = logging.getLogger("agentic.events")

#: seconds a caught-up consumer waits on the log at a time (how soon it sees a stop)
_STOP_CHECK = 0.5

#: events an EventLogEmitter keeps in the log (older ones are trimmed)
DEFAULT_KEEP = 100_000
_BATCH = 100
_DEFAULT_RETRY = RetryPolicy(max_retries=8, base=0.5, cap=30.0)
# A consumer retries a failing handler or store for ever, waiting at most this long.
_CONSUMER_RETRY = RetryPolicy(max_retries=0, base=0.5, cap=30.0)


class EventLogEmitter(BufferedEmitter):
    """Appends emitted events to ``log`` (see the module docstring).

    ``keep`` events are kept (0: never trim); the log is trimmed after each
    ``keep // 10`` appended events (at most every 1,000). ``keep_unread`` (0: off)
    spares the events a named consumer has not handled yet, up to that many more:
    a consumer stopped for a while misses nothing, one gone for good (drop it with
    ``log.forget(name)``) holds back at most ``keep_unread`` events. ``close_log``
    closes the log when the emitter closes (for logs the emitter's owner opened for
    it).
    """

    def __init__(
        self,
        log: EventLog,
        *,
        keep: int = DEFAULT_KEEP,
        keep_unread: int = 0,
        maxsize: int = 10_000,
        retry: RetryPolicy | None = None,
        close_timeout: float = 5.0,
        sleep: Callable[[float], None] | None = None,
        close_log: bool = False,
    ) -> None:
        require_count("keep", keep)
        require_count("keep_unread", keep_unread)
        super().__init__(
            maxsize=maxsize,
            batch=_BATCH,
            close_timeout=close_timeout,
            request_timeout=5.0,
            sleep=sleep,
        )
        self.log, self.keep, self.keep_unread = log, keep, keep_unread
        self.retry = retry or _DEFAULT_RETRY
        self._trim_every = min(max(keep // 10, 1), 1_000)
        self._since_trim = 0
        self._close_log = close_log
        self._start("agentic-event-log")

    def __repr__(self) -> str:
        return f"EventLogEmitter({type(self.log).__name__})"

    def _release(self) -> None:
        # A process that emits little (dispatch --once, a short-lived agent) may never
        # reach a trim step: it trims on its way out instead.
        if self._since_trim:
            self._trim()
        if self._close_log:
            self.log.close()

    def _send(self, events: list[Event]) -> int:
        try:
            appended = self._append(events)
        except ConfigError:
            # One event the log cannot hold (a payload that is not JSON) must not
            # take the batch with it: the others go one by one.
            appended = sum(self._append_alone(event) for event in events)
        self._since_trim += appended
        if self.keep and self._since_trim >= self._trim_every:
            self._trim()
        return appended

    def _append_alone(self, event: Event) -> int:
        try:
            return self._append([event])
        except ConfigError as exc:
            log.warning("%r: event %s dropped: %s", self, event.id, exc)
            return 0

    def _append(self, events: list[Event]) -> int:
        """Append ``events``, retrying what may pass later; how many went in (all or
        none). ConfigError (an event the log cannot hold) propagates."""
        return self._with_retries(
            len(events),
            lambda: self.log.append(events),
            passing=(StoreUnavailableError,),
            refused=(StoreError,),  # the same append would be refused again
        )

    def _trim(self) -> None:
        if not self.keep:
            return
        try:
            self.log.trim(self.keep, self._unread_bound())
            self._since_trim = 0
        except Exception as exc:  # the events are in; trimming is tried again later
            self.errors += 1
            log.warning("%r: trimming the log to %d events failed: %r", self, self.keep, exc)

    def _unread_bound(self) -> int | None:
        """The offset a trim may go up to so that the slowest consumer loses nothing,
        holding back at most ``keep_unread`` events more than ``keep``; None: no bound. Read before
        the trim: consumers moving on and events appended meanwhile only keep more."""
        if not self.keep_unread:
            return None
        positions = self.log.consumers()
        if not positions:
            return None
        held_back = self.keep + self.keep_unread
        return max(min(positions.values()), self.log.last_offset() - held_back)


class EventConsumer:
    """Delivers ``log``'s events to ``handler`` at least once, resuming from the
    position committed under ``name`` (see the module docstring).

    ``handler`` is a plain function (an ``async def`` one is refused: its events would
    be committed before they ran). ``handled`` counts the events handled, ``errors``
    the failures seen (handler or store), ``missed`` the events trimmed from the log
    before this consumer reached them (logged as errors: raise ``events.log_keep``,
    or keep up); ``position`` is the offset of the last event handled. Only the
    backoff of ``retry`` is used: a failing event is retried for ever.

    ``commit_every``: the position is stored after that many events (and at the end
    of each batch, and before a handler's exception propagates), not after each: one
    store write per N events, at the price of up to N - 1 events handled again after
    a crash (at least once either way).
    """

    def __init__(
        self,
        log: EventLog,
        name: str,
        handler: Callable[[LoggedEvent], object],
        *,
        batch: int = 100,
        retry: RetryPolicy | None = None,
        commit_every: int = 1,
    ) -> None:
        require_consumer(name)
        if not 1 <= batch <= MAX_READ:
            raise ConfigError(f"batch must be from 1 to {MAX_READ} events, got {batch}")
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ConfigError(
                f"commit_every must be an integer >= 1 (events), got {commit_every!r}"
            )
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an async __call__
        ):
            raise ConfigError(
                "the handler is async: EventConsumer calls it and commits at once;"
                " give a plain function (run your coroutine in it with asyncio.run)"
            )
        self.log, self.name, self.handler, self.batch = log, name, handler, batch
        self.commit_every = commit_every
        self.retry = retry or _CONSUMER_RETRY
        self.handled = self.errors = self.missed = 0
        self.position: int | None = None  # read from the log on first use

    def poll(self) -> int:
        """Handle the events after the committed position, one batch at most; how
        many were handled. A handler's exception propagates after the events
        before it were committed; store errors propagate as StoreError."""
        if self.position is None:
            self.position = self.log.committed(self.name)
        page = self.log.read(self.position, self.batch)
        if not page:
            self._check_not_behind()
        done = uncommitted = 0
        try:
            for logged in page:
                # From 0 a consumer starts at the oldest event kept: no report then.
                if self.position and logged.offset > self.position + 1:
                    self._missed(self.position + 1, logged.offset - 1)
                result = self.handler(logged)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()
                    raise ConfigError(
                        f"event consumer {self.name!r}: the handler returned an awaitable"
                        f" for offset {logged.offset}; it must do its work before it returns"
                    )
                self.position = logged.offset
                self.handled += 1
                done += 1
                uncommitted += 1
                if uncommitted >= self.commit_every:
                    self.log.commit(self.name, self.position)
                    uncommitted = 0
        finally:
            # What was handled is committed, also when a handler fails after it.
            if uncommitted:
                self.log.commit(self.name, self.position)
        return done

    def _missed(self, first: int, last: int) -> None:
        self.missed += last - first + 1
        log.error(
            "event consumer %r: events %d to %d were trimmed from the log before it"
            " handled them (%d lost to it); raise events.log_keep or"
            " events.log_keep_unread (which spares unread events), or keep up",
            self.name,
            first,
            last,
            last - first + 1,
        )

    def _check_not_behind(self) -> None:
        """A log whose newest offset is below our position went back (a Redis flushed
        or restored without its data): replay it from the start rather than wait,
        deaf, until it passes our old position."""
        last = self.log.last_offset()
        if self.position and last < self.position:
            log.error(
                "event consumer %r: the log went back (newest offset %d, below this"
                " consumer's %d: emptied or restored?); replaying it from the start",
                self.name,
                last,
                self.position,
            )
            self.log.reset(self.name, 0)
            self.position = 0

    def _wait(self, stop: threading.Event, interval: float) -> None:
        """Until an event after our position is in the log, ``stop`` is set or
        ``interval`` has passed; the log is asked in steps of at most
        :data:`_STOP_CHECK` seconds, so a stop is seen that soon."""
        deadline = time.monotonic() + interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.log.wait(self.position or 0, min(left, _STOP_CHECK)):
                return

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll until ``stop`` is set: at once while there is more; once caught up,
        when the log has a new event (:meth:`EventLog.wait`: at once on memory and
        Redis, within 0.2 s on SQLite), at least every ``interval`` seconds. A
        failure (the handler's or the store's) is logged, counted and retried after
        a growing backoff."""
        if not interval > 0:
            raise ConfigError(f"interval must be > 0 seconds, got {interval}")
        failures = 0
        while not stop.is_set():
            try:
                if self.poll() < self.batch:  # caught up: until the next event
                    self._wait(stop, interval)
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
