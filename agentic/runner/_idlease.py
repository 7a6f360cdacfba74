"""The agent-id lock: one runner per agent id, held through the registry's lease.

A runner holds the registry lease ``agent:<id>`` (:meth:`AgentRegistry.hold_lease`,
the primitive the exclusive dispatchers share) for as long as it runs the agent: a
second runner started with the same id waits until it is free (at once when the
holder was a process of this machine that is gone: a runner restarted after
``kill -9`` need not wait the lease out), and a runner whose
renewal finds another holder was displaced (it lost the registry for longer than
the lease, and a second runner took the id meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import AgenticError
from ..stores._holders import hold_lease_or_take_over, new_lease_holder
from ..stores.base import DEFAULT_HEARTBEAT_TTL, AgentRegistry

__all__ = ["IdLease", "id_lease_name", "id_lease_ttl"]

log = logging.getLogger("agentic.runner")

#: heartbeats the id lease outlasts at least: renewed once a heartbeat, so one or two
#: late beats (a slow registry) must not hand the id to a second runner (the same
#: rule as the dispatcher lease's 3 intervals and a task lease's 2 heartbeats)
_MIN_BEATS = 3
#: seconds between tries at most while the registry keeps failing
_MAX_BACKOFF = 60.0


def id_lease_name(agent_id: str) -> str:
    """The registry lease that says which runner runs ``agent_id``."""
    return f"agent:{agent_id}"


def id_lease_ttl(heartbeat_interval: float, ttl: float | None = None) -> float:
    """How long the id lease lasts from each renewal: ``ttl`` (by default the
    fleet's heartbeat TTL, after which an agent counts as gone, so its id frees when
    it is reaped), and ``_MIN_BEATS`` heartbeats at least."""
    return max(DEFAULT_HEARTBEAT_TTL if ttl is None else ttl, _MIN_BEATS * heartbeat_interval)


class IdLease:
    """The id lease of one runner: take it (waiting for another holder), renew it,
    give it up. ``displaced_by`` names who took it from this runner."""

    def __init__(self, registry: AgentRegistry, agent_id: str, ttl: float) -> None:
        self.registry = registry
        self.agent_id = agent_id
        self.name = id_lease_name(agent_id)
        #: this runner's name as the holder: host:pid:token
        self.holder = new_lease_holder()
        self.ttl = ttl
        #: whether this runner holds the lease (as far as it knows)
        self.held = False
        #: the holder found by a renewal that was not this runner (None: never displaced)
        self.displaced_by: str | None = None
        #: the monotonic time the last take or renewal that landed was sent (the
        #: registry set the lease's end after it): the lease holds ``ttl`` from then
        self.renewed_at: float | None = None

    def acquire(
        self,
        stop: threading.Event,
        retry_every: float,
        on_error: Callable[[str, Exception], None],
    ) -> bool:
        """Take the lease; while another runner holds it, wait (a warning naming it,
        once per holder) and ask again every ``retry_every`` seconds. A registry that
        fails is asked again with backoff (each failure to ``on_error``). False if
        ``stop`` was set first."""
        told = ""
        failures = 0
        while not stop.is_set():
            try:
                holder = self.try_acquire()
            except AgenticError as exc:
                failures += 1
                on_error(f"taking agent {self.agent_id}'s id lease failed", exc)
                stop.wait(min(retry_every * 2**failures, _MAX_BACKOFF))
                continue
            failures = 0
            if holder == self.holder:
                if told:
                    log.info("agent %s: %s no longer runs it; starting", self.agent_id, told)
                return True
            if holder != told:
                told = holder
                log.warning(
                    "agent %s is already run by %s; waiting for it to stop (another runner"
                    " with the same --id)",
                    self.agent_id,
                    holder,
                )
            stop.wait(retry_every)
        return False

    def try_acquire(self) -> str:
        """Take the lease when it is free (or its holder is a gone process of this
        machine), without waiting; the holder now (this one's when taken). Raises
        what the registry raises."""
        sent = time.monotonic()
        holder = hold_lease_or_take_over(self.registry, self.name, self.holder, self.ttl, log, "id")
        if holder == self.holder:
            self.held = True
            self.renewed_at = max(sent, self.renewed_at or sent)
        return holder

    def renew(self) -> bool:
        """Extend the lease; False when another runner holds it now (this one is
        displaced: ``displaced_by`` names it). Raises what the registry raises."""
        sent = time.monotonic()
        holder = self.registry.hold_lease(self.name, self.holder, self.ttl)
        if holder == self.holder:
            self.renewed_at = max(sent, self.renewed_at or sent)
            return True
        self.held = False
        self.displaced_by = holder
        return False

    def release(self) -> None:
        """Give the lease up (if held), so a replacement can start at once."""
        if not self.held:
            return
        self.held = False
        try:
            self.registry.drop_lease(self.name, self.holder)
        except Exception as exc:  # it runs out by itself
            log.warning(
                "could not give up agent %s's id lease (%s); it runs out within %g s",
                self.agent_id,
                exc,
                self.ttl,
            )
