"""Routing: which agent should take a task.

The rules (go-agentic's, with its defect 13 fixed):

* **Eligible** means not offline, ``set(task.labels) <= set(capabilities)`` and below
  capacity (``max_load == 0 or current_load < max_load``), whatever the status says and
  whatever the task's priority: an "available" agent at ``max_load`` is full.
* **Critical** tasks go to the lowest absolute ``current_load``; every other priority
  goes to the highest free ratio ``1 - current_load / max_load`` (1.0 when unlimited).
  Ties go to the lowest id, so a decision never depends on input order.
* **No eligible agent** raises :class:`~agentic.errors.NoEligibleAgentError` naming the
  task and the reason: no agents, none capable, or every capable one offline or full.
  ``rank`` raises too rather than return an empty list, so both answer "why not".

Routers accept either a plain iterable of :class:`~agentic.models.AgentInfo` or an
:class:`AgentIndex`:

* A plain iterable costs one linear pass, O(n). For a single decision that is the
  cheapest possible (building an index reads every agent anyway), and it is the
  straightforward reading of the rules that the index is tested against.
* An :class:`AgentIndex` is built once per dispatch pass, O(n log n), and then answers
  each decision without looking at every agent (see its docstring). The dispatcher
  calls :meth:`AgentIndex.add_load` after each dispatch so one pass spreads its work
  instead of sending everything to the agent that was best at the start (defect 4).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from bisect import bisect_left, insort
from collections.abc import Collection, Iterable, Iterator
from typing import TypeVar

from .errors import ConfigError, NoEligibleAgentError, NotFoundError
from .models import AgentInfo, AgentStatus, Priority, Task

__all__ = ["AgentIndex", "DefaultRouter", "TaskRouter", "free_ratio", "has_room"]

# Sort keys: ascending order is best first. The id is the last element, so equal
# scores fall back to the lowest id.
_LoadKey = tuple[int, str]
_FreeKey = tuple[float, str]
_Key = TypeVar("_Key", _LoadKey, _FreeKey)


def has_room(current_load: int, max_load: int) -> bool:
    """True when an agent can take one more task (``max_load == 0`` is unlimited)."""
    return max_load == 0 or current_load < max_load


def free_ratio(current_load: int, max_load: int) -> float:
    """The non-critical score ``1 - load / max_load``; 1.0 for an unlimited agent."""
    return 1.0 if max_load == 0 else 1.0 - current_load / max_load


def _eligible_now(agent: AgentInfo) -> bool:
    """Online and below capacity; capabilities are checked separately."""
    return agent.status is not AgentStatus.OFFLINE and has_room(agent.current_load, agent.max_load)


def _load_key(agent: AgentInfo) -> _LoadKey:
    return (agent.current_load, agent.id)


def _free_key(agent: AgentInfo) -> _FreeKey:
    return (-free_ratio(agent.current_load, agent.max_load), agent.id)


def _keys(agent: AgentInfo) -> tuple[_LoadKey, _FreeKey]:
    """Both sort keys, computed once and shared by every list the agent is in."""
    return _load_key(agent), _free_key(agent)


def _no_eligible(task: Task, total: int, capable: int, offline: int) -> NoEligibleAgentError:
    """The error for a task nobody can take, saying which of the three reasons holds."""
    name = f"task {task.id or task.title!r}"
    if total == 0:
        return NoEligibleAgentError(f"no agent can take {name}: no agents are registered")
    if capable == 0:
        wanted = ", ".join(sorted(set(task.labels)))
        return NoEligibleAgentError(
            f"no agent can take {name}: none of {total} agents has capabilities [{wanted}]"
        )
    return NoEligibleAgentError(
        f"no agent can take {name}: all {capable} capable agents are offline ({offline})"
        f" or at capacity ({capable - offline})"
    )


class _Ranked:
    """The eligible agents of one capability, kept sorted in both orders.

    Plain sorted lists maintained with :mod:`bisect`: the search is O(log n) and an
    insert or delete is one ``memmove`` of pointers, which for 10,000 entries costs
    microseconds, far below a balanced tree's constant factors in pure Python.
    """

    __slots__ = ("by_free", "by_load")

    def __init__(self) -> None:
        self.by_load: list[_LoadKey] = []
        self.by_free: list[_FreeKey] = []

    def __len__(self) -> int:
        return len(self.by_load)

    def append(self, keys: tuple[_LoadKey, _FreeKey]) -> None:
        """Add without keeping order; :meth:`sort` must follow (bulk build)."""
        self.by_load.append(keys[0])
        self.by_free.append(keys[1])

    def sort(self) -> None:
        self.by_load.sort()
        self.by_free.sort()

    def insert(self, keys: tuple[_LoadKey, _FreeKey]) -> None:
        insort(self.by_load, keys[0])
        insort(self.by_free, keys[1])

    def remove(self, keys: tuple[_LoadKey, _FreeKey]) -> None:
        _delete(self.by_load, keys[0])
        _delete(self.by_free, keys[1])


def _delete(keys: list[_Key], key: _Key) -> None:
    i = bisect_left(keys, key)
    # The key is always present: the index removes exactly what it inserted.
    del keys[i]


class AgentIndex:
    """A routing snapshot of many agents: capability posting lists sorted by score.

    Build one per dispatch pass from the registry's list; it does not watch the
    registry. For every capability, and once more for "any agent" (tasks without
    labels), it keeps the *eligible* agents (online, below capacity) in two sorted
    lists: by ``(current_load, id)`` for critical tasks and by ``(-free_ratio, id)``
    for the rest. A decision then picks the task's rarest label, walks that label's
    list in score order and stops at the first agents that also hold the other
    labels. Full and offline agents are not in those lists at all, so they cost
    nothing to skip; with k labels the walk reads about 1 / P(an agent holding the
    rarest label holds the others) entries, independent of the fleet size. The worst
    case is a label combination nobody eligible holds: the rarest list is read to the
    end, O(len of that list), which is still not a scan of the whole fleet.

    ``add_load`` moves one agent in its lists (O(capabilities x log n)) and drops it
    from them when it becomes full. A later entry for the same id replaces an
    earlier one. Not thread-safe: one index belongs to one dispatch pass.
    """

    def __init__(self, agents: Iterable[AgentInfo]) -> None:
        self._agents: dict[str, AgentInfo] = {agent.id: agent for agent in agents}
        self._caps: dict[str, frozenset[str]] = {}
        # Every agent holding a capability, whatever its state: only read to explain
        # a failed decision, so it stays O(rarest label) instead of O(fleet).
        self._holders: dict[str, list[str]] = {}
        self._ranked: dict[str, _Ranked] = {}
        self._everyone = _Ranked()
        # Offline agents stay offline in a snapshot, so this count stays true.
        self._offline = sum(a.status is AgentStatus.OFFLINE for a in self._agents.values())
        for agent in self._agents.values():
            caps = frozenset(agent.capabilities)
            self._caps[agent.id] = caps
            for cap in caps:
                self._holders.setdefault(cap, []).append(agent.id)
            if _eligible_now(agent):
                keys = _keys(agent)
                self._everyone.append(keys)
                for cap in caps:
                    self._ranked.setdefault(cap, _Ranked()).append(keys)
        self._everyone.sort()
        for ranked in self._ranked.values():
            ranked.sort()

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def __iter__(self) -> Iterator[AgentInfo]:
        """The agents as they stand now, loads added by :meth:`add_load` included."""
        return iter(list(self._agents.values()))

    def get(self, agent_id: str) -> AgentInfo:
        """One agent as it stands now; ``NotFoundError`` when it is not indexed."""
        try:
            return self._agents[agent_id]
        except KeyError:
            raise NotFoundError(f"agent {agent_id!r} is not in the index") from None

    def has_room(self, excluding: Collection[str] = ()) -> bool:
        """Whether an agent not in ``excluding`` could take one more task now (online,
        below capacity), whatever its capabilities."""
        return any(agent_id not in excluding for _, agent_id in self._everyone.by_load)

    def room_capabilities(self, excluding: Collection[str] = ()) -> frozenset[str]:
        """Every capability of the agents not in ``excluding`` that could take one
        more task now: no task with a label outside it can be routed now."""
        caps: set[str] = set()
        for _, agent_id in self._everyone.by_load:
            if agent_id not in excluding:
                caps |= self._caps[agent_id]
        return frozenset(caps)

    def add_load(self, agent_id: str, delta: int = 1) -> AgentInfo:
        """Count ``delta`` more tasks on an agent (negative frees; floors at 0).

        The agent's status follows its load as in the registry: busy when full,
        available otherwise (offline stays offline). Returns the updated agent.
        """
        old = self.get(agent_id)
        load = max(0, old.current_load + delta)
        status = old.status
        if status is not AgentStatus.OFFLINE:
            status = AgentStatus.AVAILABLE if has_room(load, old.max_load) else AgentStatus.BUSY
        new = old.model_copy(update={"current_load": load, "status": status})
        self._agents[agent_id] = new
        caps = self._caps[agent_id]
        if _eligible_now(old):
            old_keys = _keys(old)
            self._everyone.remove(old_keys)
            for cap in caps:
                self._ranked[cap].remove(old_keys)
        if _eligible_now(new):
            new_keys = _keys(new)
            self._everyone.insert(new_keys)
            for cap in caps:
                self._ranked.setdefault(cap, _Ranked()).insert(new_keys)
        return new

    def _rank(self, task: Task, limit: int | None) -> list[str]:
        """Eligible ids best first, at most ``limit``: DefaultRouter's fast path."""
        labels = frozenset(task.labels)
        pivot = self._everyone
        if labels:
            # The rarest label's list; a label no eligible agent holds gives an empty
            # one, so the walk below finds nobody and the error explains why.
            pivot = min((self._ranked.get(label) or _Ranked() for label in labels), key=len)
        keys: list[_LoadKey] | list[_FreeKey]
        keys = pivot.by_load if task.priority is Priority.CRITICAL else pivot.by_free
        found: list[str] = []
        for _, agent_id in keys:
            if labels <= self._caps[agent_id]:
                found.append(agent_id)
                if limit is not None and len(found) >= limit:
                    break
        if not found:
            raise self._explain(task, labels)
        return found

    def _explain(self, task: Task, labels: frozenset[str]) -> NoEligibleAgentError:
        total = len(self._agents)
        if not labels:
            return _no_eligible(task, total, total, self._offline)
        rarest = min((self._holders.get(label, []) for label in labels), key=len)
        capable = [i for i in rarest if labels <= self._caps[i]]
        offline = sum(self._agents[i].status is AgentStatus.OFFLINE for i in capable)
        return _no_eligible(task, total, len(capable), offline)


def _rank_scan(task: Task, agents: Iterable[AgentInfo], limit: int | None) -> list[str]:
    """The linear reading of the rules: one pass over every agent."""
    latest = {agent.id: agent for agent in agents}
    labels = set(task.labels)
    capable = [a for a in latest.values() if labels.issubset(a.capabilities)]
    eligible = [a for a in capable if _eligible_now(a)]
    if not eligible:
        offline = sum(a.status is AgentStatus.OFFLINE for a in capable)
        raise _no_eligible(task, len(latest), len(capable), offline)
    if task.priority is Priority.CRITICAL:
        load_keys = [_load_key(a) for a in eligible]
        best_load = sorted(load_keys) if limit is None else heapq.nsmallest(limit, load_keys)
        return [agent_id for _, agent_id in best_load]
    free_keys = [_free_key(a) for a in eligible]
    best_free = sorted(free_keys) if limit is None else heapq.nsmallest(limit, free_keys)
    return [agent_id for _, agent_id in best_free]


class TaskRouter(ABC):
    """Chooses agents for tasks. ``agents`` is an :class:`AgentIndex` or any iterable
    of :class:`AgentInfo` (an index is iterable too, with its current loads)."""

    @abstractmethod
    def rank(
        self, task: Task, agents: AgentIndex | Iterable[AgentInfo], limit: int | None = None
    ) -> list[str]:
        """Eligible agent ids, best first, at most ``limit`` (all when ``None``).

        Never empty: raises :class:`NoEligibleAgentError` instead.
        """

    def route(self, task: Task, agents: AgentIndex | Iterable[AgentInfo]) -> str:
        """The best agent id for ``task``, or :class:`NoEligibleAgentError`."""
        return self.rank(task, agents, limit=1)[0]

    def routable_labels(
        self, agents: AgentIndex, excluding: Collection[str] = ()
    ) -> frozenset[str] | None:
        """The labels a task may carry and still be routed now to an agent not in
        ``excluding``; ``None`` (the default): any task may be. The dispatcher lists
        only such tasks after the first page of a pass, so a router with rules of its
        own keeps this default or says what they allow."""
        return None


class DefaultRouter(TaskRouter):
    """Capability- and load-aware routing by the rules in this module's docstring.

    Stateless, so one instance may serve any number of callers; the index passed in
    carries the state.
    """

    def routable_labels(
        self, agents: AgentIndex, excluding: Collection[str] = ()
    ) -> frozenset[str] | None:
        """Every capability of the agents with room: a task's labels must all be
        capabilities of the one agent it goes to."""
        return agents.room_capabilities(excluding)

    def rank(
        self, task: Task, agents: AgentIndex | Iterable[AgentInfo], limit: int | None = None
    ) -> list[str]:
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        if isinstance(agents, AgentIndex):
            return agents._rank(task, limit)
        return _rank_scan(task, agents, limit)
