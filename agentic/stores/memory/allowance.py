"""In-process AllowanceStore: dict rows under one lock; the algorithm is the engine's."""

from __future__ import annotations

import bisect
import contextlib
import heapq
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, tzinfo

from ...events import Event
from ...models import AgentAllowance, ModelQuota, Settlement
from ...quota import DEFAULT_RESERVATION_TTL
from .._engine import AgentRow, EngineAllowanceStore, Held, ModelRow, QuotaTx
from .eventlog import MemoryEventLog, memory_store_id, require_memory_log

__all__ = ["MemoryAllowanceStore"]


class _MemoryTx(QuotaTx):
    """Rows in plain dicts; every call happens with the store's lock held."""

    def __init__(self, events: MemoryEventLog | None) -> None:
        self.events = events
        self.allowances: dict[str, AgentAllowance] = {}
        self.quotas: dict[str, ModelQuota] = {}
        self.agents: dict[str, AgentRow] = {}
        self.models: dict[str, ModelRow] = {}
        self.request_log: dict[str, deque[float]] = {}
        self.held: dict[str, Held] = {}
        # (expires_at, job_id); entries whose job is gone or re-held are skipped lazily
        self.expiry: list[tuple[float, str]] = []
        self.settled: OrderedDict[str, tuple[Settlement, float]] = OrderedDict()

    def get_allowance(self, agent_id: str) -> AgentAllowance | None:
        return self.allowances.get(agent_id)

    def put_allowance(self, allowance: AgentAllowance) -> None:
        self.allowances[allowance.agent_id] = allowance.model_copy(deep=True)

    def all_allowances(self) -> list[AgentAllowance]:
        return [a.model_copy(deep=True) for a in self.allowances.values()]

    def get_quota(self, model: str) -> ModelQuota | None:
        return self.quotas.get(model)

    def put_quota(self, quota: ModelQuota) -> None:
        self.quotas[quota.model] = quota.model_copy(deep=True)

    def get_agent(self, agent_id: str) -> AgentRow | None:
        row = self.agents.get(agent_id)
        return None if row is None else replace(row)

    def put_agent(self, agent_id: str, row: AgentRow) -> None:
        self.agents[agent_id] = replace(row)

    def agent_ids(self) -> list[str]:
        return list(self.agents.keys() | self.allowances.keys())

    def get_model(self, model: str) -> ModelRow | None:
        row = self.models.get(model)
        return None if row is None else replace(row)

    def put_model(self, model: str, row: ModelRow) -> None:
        self.models[model] = replace(row)

    def requests(self, model: str, since: float) -> tuple[int, float | None]:
        log = self.request_log.get(model)
        if not log:
            return 0, None
        while log and log[0] <= since:
            log.popleft()
        return len(log), (log[0] if log else None)

    def add_request(self, model: str, at: float, job_id: str) -> None:
        log = self.request_log.setdefault(model, deque())
        if log and at < log[-1]:
            # The clock stepped back: kept in time order all the same, since the trim
            # above and the oldest request read the front.
            bisect.insort(log, at)
        else:
            log.append(at)

    def remove_request(self, model: str, at: float, job_id: str) -> None:
        # Requests are kept as bare times: any one at ``at`` counts the same.
        with contextlib.suppress(KeyError, ValueError):
            self.request_log[model].remove(at)

    def get_held(self, job_id: str) -> Held | None:
        return self.held.get(job_id)

    def put_held(self, held: Held) -> None:
        self.held[held.job_id] = held
        heapq.heappush(self.expiry, (held.expires_at, held.job_id))

    def delete_held(self, job_id: str) -> None:
        self.held.pop(job_id, None)

    def expired_held(self, now: float) -> list[Held]:
        found: dict[str, Held] = {}
        while self.expiry and self.expiry[0][0] <= now:
            expires_at, job_id = heapq.heappop(self.expiry)
            held = self.held.get(job_id)
            # The heap may hold a job twice (ended early, then reserved again with the
            # same expiry): each reservation is released once.
            if held is not None and held.expires_at == expires_at:
                found[job_id] = held
        return list(found.values())

    def get_settled(self, job_id: str) -> Settlement | None:
        entry = self.settled.get(job_id)
        return None if entry is None else entry[0]

    def put_settled(self, settlement: Settlement, at: float) -> None:
        self.settled[settlement.job_id] = (settlement, at)

    def prune_settled(self, before: float) -> None:
        while self.settled:
            _job, (_s, at) = next(iter(self.settled.items()))
            if at >= before:
                break
            self.settled.popitem(last=False)

    def record(self, event: Event) -> None:
        if self.events is not None:
            self.events.append([event])


class MemoryAllowanceStore(EngineAllowanceStore):
    """AllowanceStore for tests and single-process use; one lock makes each call atomic."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        tz: tzinfo = UTC,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        events: MemoryEventLog | None = None,
    ) -> None:
        super().__init__(clock=clock, tz=tz, reservation_ttl=reservation_ttl)
        self._lock = threading.Lock()
        # The log each settle's usage is recorded in, under this store's lock.
        self._tx = _MemoryTx(require_memory_log(events))
        self._store_id = memory_store_id(self._tx.events)

    def store_id(self) -> str:
        return self._store_id

    @contextmanager
    def _transaction(self) -> Iterator[QuotaTx]:
        with self._lock:
            yield self._tx
