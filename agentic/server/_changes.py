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
timeout, never less, and a client alternating between servers cannot spin. Changes
made by other server processes are seen at the next timeout: never later than
plain polling.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict

from .._client_wire import CHANGES_HEADER

__all__ = ["CHANGES_HEADER", "EVENTS_TOPIC", "Changes"]

#: bumped with every other topic (see the module docstring)
EVENTS_TOPIC = "events"


class Changes:
    """Per-topic change counters and the waiters on them (one event loop)."""

    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex[:12]
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._events: dict[str, asyncio.Event] = {}  # topics someone waits on
        self._waiting: Counter[str] = Counter()

    def token(self, topic: str) -> str:
        """Where ``topic`` stands now, as a waiter passes it back."""
        return f"{self.instance}.{self._counts.get(topic, 0)}"  # get: no key per query

    def bump(self, *topics: str) -> None:
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
