"""In-process AgentRegistry: one lock around a dict, plus a heap-free stale scan.

Reap keeps a dict ordered by last heartbeat (moved to the end on every beat), so it
walks only the stale prefix: O(stale), like the Redis sorted set.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ...errors import NotFoundError
from ...models import AgentInfo, AgentStatus
from ..base import AgentRegistry, require_count, require_id, status_for_load, ttl_seconds
from .eventlog import memory_store_id

__all__ = ["MemoryRegistry"]


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class MemoryRegistry(AgentRegistry):
    """AgentRegistry for tests and single-process use."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._store_id = memory_store_id()
        self._lock = threading.Lock()
        self._agents: dict[str, AgentInfo] = {}
        # agent id -> last heartbeat, in heartbeat order (oldest first)
        self._beats: dict[str, float] = {}
        # lease name -> (holder, held until)
        self._leases: dict[str, tuple[str, float]] = {}

    def store_id(self) -> str:
        return self._store_id

    def _beat(self, agent_id: str, now: float) -> None:
        self._beats.pop(agent_id, None)
        self._beats[agent_id] = now

    def register(self, info: AgentInfo) -> AgentInfo:
        require_id("agent id", info.id)
        now = self._clock()
        with self._lock:
            previous = self._agents.get(info.id)
            stored = info.model_copy(
                update={
                    "registered_at": previous.registered_at if previous else _ts(now),
                    "last_heartbeat": _ts(now),
                    "status": status_for_load(info.current_load, info.max_load),
                },
                deep=True,
            )
            self._agents[info.id] = stored
            self._beat(info.id, now)
            return stored.model_copy(deep=True)

    def deregister(self, agent_id: str) -> None:
        with self._lock:
            if self._agents.pop(agent_id, None) is None:
                raise NotFoundError(f"agent {agent_id!r} is not registered")
            self._beats.pop(agent_id, None)

    def get(self, agent_id: str) -> AgentInfo:
        with self._lock:
            info = self._agents.get(agent_id)
            if info is None:
                raise NotFoundError(f"agent {agent_id!r} is not registered")
            return info.model_copy(deep=True)

    def list(
        self, status: AgentStatus | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        with self._lock:
            agents = [
                a.model_copy(deep=True)
                for a in self._agents.values()
                if (status is None or a.status == status)
                and (capability is None or capability in a.capabilities)
            ]
        return sorted(agents, key=lambda a: a.id)

    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        if load is not None:
            require_count("load", load)
        now = self._clock()
        with self._lock:
            info = self._agents.get(agent_id)
            if info is None:
                raise NotFoundError(f"agent {agent_id!r} is not registered")
            current = info.current_load if load is None else load
            info = info.model_copy(
                update={
                    "last_heartbeat": _ts(now),
                    "current_load": current,
                    "status": status_for_load(current, info.max_load),
                }
            )
            self._agents[agent_id] = info
            self._beat(agent_id, now)
            return info.model_copy(deep=True)

    def reap(self, ttl: float | timedelta) -> builtins.list[str]:
        cutoff = self._clock() - ttl_seconds(ttl)
        reaped: builtins.list[str] = []
        with self._lock:
            for agent_id, beat in list(self._beats.items()):
                if beat >= cutoff:
                    break
                # An offline agent leaves the order until its next heartbeat.
                del self._beats[agent_id]
                info = self._agents[agent_id]
                if info.status != AgentStatus.OFFLINE:
                    self._agents[agent_id] = info.model_copy(update={"status": AgentStatus.OFFLINE})
                    reaped.append(agent_id)
        return sorted(reaped)

    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        require_id("lease name", name)
        require_id("lease holder", holder)
        seconds = ttl_seconds(ttl)
        with self._lock:
            now = self._clock()
            current, until = self._leases.get(name, ("", 0.0))
            if current and current != holder and until > now:
                return current
            self._leases[name] = (holder, now + seconds)
            return holder

    def drop_lease(self, name: str, holder: str) -> None:
        with self._lock:
            if self._leases.get(name, ("", 0.0))[0] == holder:
                del self._leases[name]
