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
        self.relay: Relay | None = None  # set by the relay that carries our bumps out
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
        if self.relay is not None:
            self.relay.send(self.instance, topics)

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

    :meth:`send` publishes this process's bumps while another server listens; a
    thread receives the others' and bumps them here, on the event loop. Failures
    (Redis down, a stray message on the channel) are logged and counted in
    ``notice_errors``, never raised into a request: the write a notice follows has
    been made, and a waiter that misses the notice answers at its timeout. The
    thread backs off from 0.5 s to :attr:`MAX_BACKOFF` between failed attempts.
    """

    #: seconds between counts of the servers that listen
    COUNT_EVERY = 1.0
    #: seconds one receive waits, which bounds how long :meth:`stop` takes
    RECEIVE_WAIT = 0.25
    MAX_BACKOFF = 10.0

    def __init__(self, changes: Changes, notices: Notices, metrics: Metrics) -> None:
        self._changes = changes
        self._notices = notices
        self._metrics = metrics
        self._peers = False  # another server listens: worth publishing
        self._failing = False  # publishing failed last time (logged once per streak)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen in a thread, delivering to ``loop``; this process's bumps go out."""
        self._loop = loop
        self._thread = threading.Thread(target=self._listen, name="agentic-notices", daemon=True)
        self._thread.start()
        self._changes.relay = self

    def stop(self) -> None:
        """Stop sending and listening; returns once the thread has ended."""
        self._changes.relay = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.RECEIVE_WAIT + 5)

    def send(self, sender: str, topics: Sequence[str]) -> None:
        """Publish a change made here, when another server listens."""
        if not self._peers:
            return
        try:
            self._notices.publish(notice(sender, topics))
        except StoreError as exc:
            self._metrics.inc("notice_errors")
            if not self._failing:
                log.warning(
                    "could not tell the other servers of a change (%s): their waiters"
                    " see it at their timeout",
                    exc,
                )
            self._failing = True
        else:
            self._failing = False
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
