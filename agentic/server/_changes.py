"""Change notices for long-polls: runners and dispatchers wait for work, not a timer.

Two kinds of topic, each a counter this server process bumps after a write:

* ``claims:<agent id>``: a claim was made for that agent (claim, batch claim);
* ``dispatch``: something that may let a dispatcher do more (a task created,
  released, completed or failed, updated, or requeued after its lease expired).

Every bump also bumps :data:`EVENTS_TOPIC`: a write may have recorded events in the
log, which a waiting ``GET /api/events`` then reads at once.

A waiter passes the token it last saw; it gets an answer at once when the topic has
changed since, else when it changes or the wait times out. Tokens carry this
process's id: a token from another server process (behind a load balancer, or
before a restart) cannot be compared, so its holder waits for a change here or the
timeout, never less, and a client alternating between servers cannot spin.

Several server processes on one store (behind a load balancer) tell each other
their bumps when the store carries notices (Redis: pub/sub, :class:`Relay`), so a
runner waiting on one server wakes when another claims a task for it. A server
publishes only while another one listens (counted every second), so a lone server
pays nothing. Where the store has no notices (SQLite), or a notice is lost (a
server that just started, Redis down), changes made by other server processes are
seen at the waiter's timeout: never later than plain polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence

from .._client_wire import CHANGES_HEADER
from ..errors import StoreError
from ..stores.base import Notices, Subscription
from ._metrics import Metrics

__all__ = ["CHANGES_HEADER", "EVENTS_TOPIC", "Changes", "Relay"]

log = logging.getLogger(__name__)

#: bumped with every other topic (see the module docstring)
EVENTS_TOPIC = "events"


class Changes:
    """Per-topic change counters and the waiters on them (one event loop)."""

    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex[:12]
        self.relay: Relay | None = None  # carries our bumps out (set by the server)
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._events: dict[str, asyncio.Event] = {}  # topics someone waits on
        self._waiting: Counter[str] = Counter()

    def token(self, topic: str) -> str:
        """Where ``topic`` stands now, as a waiter passes it back."""
        return f"{self.instance}.{self._counts.get(topic, 0)}"  # get: no key per query

    def bump(self, *topics: str) -> None:
        """Record a change made here: wake this process's waiters, and tell the other
        server processes of the store (when a relay carries notices)."""
        self.bump_here(*topics)
        relay = self.relay
        if relay is not None:
            relay.send(topics)

    def bump_here(self, *topics: str) -> None:
        """Record a change of each topic (and of the events topic) and wake its waiters."""
        for topic in (*topics, EVENTS_TOPIC):
            self._counts[topic] += 1
            event = self._events.pop(topic, None)
            if event is not None:
                event.set()

    async def wait(self, topic: str, since: str, timeout: float) -> str:
        """The topic's token once it differs from ``since`` (at once if it already
        does), or after ``timeout`` seconds; an empty ``since`` answers at once."""
        current = self.token(topic)
        if not since or (since != current and since.startswith(f"{self.instance}.")):
            return current
        event = self._events.setdefault(topic, asyncio.Event())
        self._waiting[topic] += 1
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiting[topic] -= 1
            if not self._waiting[topic]:  # nobody waits: topics do not pile up
                del self._waiting[topic]
                if self._events.get(topic) is event:
                    del self._events[topic]
        return self.token(topic)


def notice(sender: str, topics: Sequence[str]) -> str:
    """The text of a notice: a JSON array, the sender's instance id first."""
    return json.dumps([sender, *topics])


def read_notice(message: str) -> tuple[str, list[str]]:
    """The sender and topics of a notice; ValueError if it is not one."""
    try:
        parts = json.loads(message)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError("not a JSON array of strings")
    return parts[0], parts[1:]


class Relay:
    """Carries change notices between the server processes sharing one store.

    :meth:`send` hands this process's bumps to a sender thread while another server
    listens (never blocking the event loop: bumps waiting to go are merged into one
    notice); a listener thread receives the others' and bumps them here, on the
    event loop. Failures (Redis down, a stray message on the channel) are logged and
    counted in ``notice_errors``, never raised into a request: the write a notice
    follows has been made, and a waiter that misses the notice answers at its
    timeout. Each thread backs off from 0.5 s to :attr:`MAX_BACKOFF` between failed
    attempts. The server attaches the relay to its :class:`Changes` after
    :meth:`start` and detaches it before :meth:`stop`.
    """

    #: seconds between counts of the servers that listen
    COUNT_EVERY = 1.0
    #: seconds one receive waits, which bounds how long :meth:`stop` takes
    RECEIVE_WAIT = 0.25
    MAX_BACKOFF = 10.0
    #: seconds :meth:`stop` waits for each thread (one in a Redis call waits it out)
    STOP_WAIT = 5.0

    def __init__(self, changes: Changes, notices: Notices, metrics: Metrics) -> None:
        self._changes = changes
        self._notices = notices
        self._metrics = metrics
        self._peers = False  # another server listens: worth publishing
        self._pending: set[str] = set()  # topics bumped here, not yet sent
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the listener (delivering to ``loop``) and the sender threads."""
        self._loop = loop
        self._threads = [
            threading.Thread(target=self._listen, name="agentic-notices", daemon=True),
            threading.Thread(target=self._send_pending, name="agentic-notices-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads; returns once they ended, or after :attr:`STOP_WAIT`
        seconds each (a thread inside a Redis call that hangs ends after it)."""
        self._stop.set()
        with self._wake:
            self._wake.notify()
        for thread in self._threads:
            thread.join(self.STOP_WAIT)
            if thread.is_alive():
                log.warning(
                    "change notices: %s did not stop within %gs (Redis not answering);"
                    " it ends when its call does",
                    thread.name,
                    self.STOP_WAIT,
                )

    def send(self, topics: Sequence[str]) -> None:
        """Queue a change made here for the other servers, when one listens."""
        if not self._peers:
            return
        with self._wake:
            self._pending.update(topics)
            self._wake.notify()

    def _send_pending(self) -> None:
        backoff = 0.5
        failing = False  # warned once per outage
        while True:
            with self._wake:
                while not self._pending and not self._stop.is_set():
                    self._wake.wait()
                if self._stop.is_set():
                    return
                topics, self._pending = sorted(self._pending), set()
            try:
                self._notices.publish(notice(self._changes.instance, topics))
            except StoreError as exc:
                self._metrics.inc("notice_errors")
                if not failing:
                    log.warning(
                        "could not tell the other servers of a change (%s): their"
                        " waiters see it at their timeout",
                        exc,
                    )
                failing = True
                self._stop.wait(backoff)  # what is bumped meanwhile goes in one notice
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                continue
            failing, backoff = False, 0.5
            self._metrics.inc("notices_sent")

    def _listen(self) -> None:
        backoff = 0.5
        subscription: Subscription | None = None
        counted = 0.0
        while not self._stop.is_set():
            try:
                if subscription is None:
                    subscription = self._notices.subscribe()
                    counted = 0.0  # count at once: a server just back may have peers
                if time.monotonic() - counted >= self.COUNT_EVERY:
                    self._peers = self._notices.listeners() > 1
                    counted = time.monotonic()
                message = subscription.receive(self.RECEIVE_WAIT)
            except StoreError as exc:
                self._metrics.inc("notice_errors")
                log.warning("change notices: %s; trying again in %.1fs", exc, backoff)
                if subscription is not None:
                    subscription.close()
                    subscription = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                continue
            backoff = 0.5
            if message is not None:
                self._deliver(message)
        if subscription is not None:
            subscription.close()

    def _deliver(self, message: str) -> None:
        try:
            sender, topics = read_notice(message)
        except ValueError as exc:
            self._metrics.inc("notice_errors")
            log.warning("change notices: ignored %.200r (%s)", message, exc)
            return
        if sender == self._changes.instance or self._loop is None:
            return  # our own, echoed back
        self._metrics.inc("notices_received")
        try:
            self._loop.call_soon_threadsafe(self._changes.bump_here, *topics)
        except RuntimeError:  # the loop closed under us: the server is stopping
            self._stop.set()
