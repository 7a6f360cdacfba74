"""The agent's entry in the registry: register, heartbeat with the load, deregister."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import AgenticError, NotFoundError, StoreError
from ..models import AgentInfo
from ..stores.base import AgentRegistry

__all__ = ["Presence"]

log = logging.getLogger("agentic.runner")


class Presence:
    """Keeps ``info`` registered while the runner works, with ``load()`` as its load.

    An agent registered unlimited (``max_load`` 0) is published with ``capacity`` as
    its limit: the most it runs at once. While ``paused()`` it is published full
    (load = that limit), so dispatchers route elsewhere;
    the entry is registered again whenever that changes. Heartbeat (which may register
    again) and deregistration hold one lock, so an agent that is shutting down is
    never brought back by a late heartbeat.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        info: AgentInfo,
        load: Callable[[], int],
        on_error: Callable[[str, Exception], None],
        paused: Callable[[], bool] = lambda: False,
        capacity: int = 1,
    ) -> None:
        self.registry = registry
        self.info = info
        self._load = load
        self._error = on_error
        self._paused = paused
        self._capacity = capacity
        self._lock = threading.Lock()
        self._registered = False
        self._published_paused = False
        self._failed_beats = 0  # in a row, said when one lands again

    def register(self, stop: threading.Event, backoff: float) -> bool:
        """Register, retrying a failing registry (waits from ``backoff`` doubling up to
        a minute); False if ``stop`` was set first."""
        failures = 0
        while not stop.is_set():
            with self._lock:
                try:
                    self._publish()
                except StoreError as exc:
                    failures += 1
                    self._error("registering the agent failed", exc)
                else:
                    self._registered = True
                    return True
            stop.wait(min(backoff * 2**failures, 60.0))
        return False

    def heartbeat(self) -> None:
        """Report the load; register again if the registry forgot the agent."""
        with self._lock:
            if not self._registered:
                return
            try:
                paused = self._paused()
                if paused != self._published_paused:
                    self._publish()  # paused or resumed: max_load may change
                else:
                    self.registry.heartbeat(self.info.id, load=self._current(paused).current_load)
                if self._failed_beats:  # said, or the log would end on the last failure
                    log.info(
                        "agent %s: heartbeats land again after %d failure(s)",
                        self.info.id,
                        self._failed_beats,
                    )
                    self._failed_beats = 0
            except NotFoundError:
                # Removed behind our back (an admin, a lost registry): announce again.
                log.warning("agent %s was not registered; registering again", self.info.id)
                try:
                    self._publish()
                except AgenticError as exc:
                    self._error("registering the agent again failed", exc)
            except AgenticError as exc:
                self._failed_beats += 1
                self._error("heartbeat failed", exc)

    def deregister(self) -> bool:
        """Leave the registry; True when this call removed the agent."""
        # Taking the lock waits out a heartbeat in flight, and none follows (they look
        # at _registered first), so none can register the agent again; the call itself
        # is made without it: a registry that hangs must not hold up the heartbeats a
        # shutdown's threads are joined on.
        with self._lock:
            self._registered = False
        try:
            self.registry.deregister(self.info.id)
        except NotFoundError:
            log.info("agent %s was already deregistered", self.info.id)
            return False
        except AgenticError as exc:
            self._error("deregistering the agent failed; it will be reaped", exc)
            return False
        return True

    def leave(self) -> None:
        """Stop heartbeating without deregistering: another runner has this agent
        id now, and its entry is that runner's."""
        with self._lock:
            self._registered = False

    def _publish(self) -> None:
        """Register the agent as it stands now (called with the lock held)."""
        paused = self._paused()
        self.registry.register(self._current(paused))
        self._published_paused = paused

    def _current(self, paused: bool) -> AgentInfo:
        # An "unlimited" agent still runs at most capacity (max_workers) at once, so that
        # is its published limit: routed more, it would give tasks back as fast as
        # dispatchers claim them for it.
        limit = self.info.max_load or self._capacity
        if paused:
            # Fixed while paused: finished tasks must not make room below it.
            return self.info.model_copy(update={"max_load": limit, "current_load": limit})
        return self.info.model_copy(update={"max_load": limit, "current_load": self._load()})
