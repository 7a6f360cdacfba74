"""The allowance-store algorithm once, for the stores that run Python in a transaction.

Memory (one lock) and SQLite (one ``BEGIN IMMEDIATE`` transaction) differ only in
where rows live. They implement :class:`QuotaTx`, a handful of row primitives, and
inherit every :class:`~agentic.stores.base.AllowanceStore` method from
:class:`EngineAllowanceStore`, which opens one transaction per call and applies the
pure rules of :mod:`agentic.quota`. Redis runs the same algorithm in Lua
(``stores/redis/lua``).

Inside every transaction, before anything else, expired reservations are released
(O(expired): backends keep them ordered by expiry) and the agent's / model's
counters are rolled into the current period.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from ..errors import ConfigError, ConflictError, NotFoundError, QuotaExceededError
from ..events import Event
from ..models import (
    AgentAllowance,
    AllowanceStatus,
    FailureCharge,
    ModelQuota,
    ModelUsage,
    QuotaCheckResult,
    QuotaEvent,
    Reservation,
    Settlement,
    UsageRecord,
)
from ..quota import (
    DEFAULT_RESERVATION_TTL,
    HOUR,
    MAX_RESERVATION_TTL,
    SETTLED_RETENTION,
    STORE_SOURCE,
    AgentCounters,
    Decision,
    ModelCounters,
    QuotaDays,
    Step,
    agent_status,
    charged_tokens,
    cost_microcents,
    crossing_events,
    decide,
    extended_expiry,
    period_bounds,
    reservation_ttl,
    share_of_cost,
    usage_recorded,
)
from .base import (
    AllowanceStore,
    Ending,
    no_allowance,
    no_reservation,
    require_amount,
    require_id,
    require_valid,
    settle_arguments,
)

__all__ = ["AgentRow", "EngineAllowanceStore", "Held", "ModelRow", "QuotaTx"]


@dataclass(slots=True)
class AgentRow:
    """An agent's stored counters (tokens/jobs belong to ``period_start``'s day)."""

    period_start: float = 0.0
    tokens_used: int = 0
    jobs_started: int = 0
    tokens_reserved: int = 0
    active_jobs: int = 0
    #: when reset_usage last cleared the counts (0: never); a reservation made at or
    #: before it was in the jobs it cleared, so an unreserve must not take it back
    reset_at: float = 0.0

    def counters(self) -> AgentCounters:
        return AgentCounters(
            self.tokens_used, self.jobs_started, self.tokens_reserved, self.active_jobs
        )


@dataclass(slots=True)
class ModelRow:
    """A model's stored counters (tokens/cost belong to ``period_start``'s day)."""

    period_start: float = 0.0
    tokens_used: int = 0
    cost_used: int = 0
    tokens_reserved: int = 0
    cost_reserved: int = 0


@dataclass(frozen=True, slots=True)
class Held:
    """A live reservation as stored."""

    job_id: str
    agent_id: str
    model: str
    tokens: int
    cost: int
    created_at: float
    expires_at: float
    #: the lifetime it was reserved with, which ``extend`` renews (0: stored by a
    #: version that did not record it; the store's reservation_ttl is used)
    ttl: float = 0.0


class QuotaTx(abc.ABC):
    """Row access inside one open transaction. ``None`` means "no such row"."""

    @abc.abstractmethod
    def get_allowance(self, agent_id: str) -> AgentAllowance | None: ...
    @abc.abstractmethod
    def put_allowance(self, allowance: AgentAllowance) -> None: ...
    @abc.abstractmethod
    def all_allowances(self) -> list[AgentAllowance]: ...
    @abc.abstractmethod
    def get_quota(self, model: str) -> ModelQuota | None: ...
    @abc.abstractmethod
    def put_quota(self, quota: ModelQuota) -> None: ...
    @abc.abstractmethod
    def get_agent(self, agent_id: str) -> AgentRow | None: ...
    @abc.abstractmethod
    def put_agent(self, agent_id: str, row: AgentRow) -> None: ...
    @abc.abstractmethod
    def agent_ids(self) -> list[str]:
        """Ids with an allowance or counters."""

    @abc.abstractmethod
    def get_model(self, model: str) -> ModelRow | None: ...
    @abc.abstractmethod
    def put_model(self, model: str, row: ModelRow) -> None: ...
    @abc.abstractmethod
    def requests(self, model: str, since: float) -> tuple[int, float | None]:
        """Count and oldest time of the model's requests after ``since`` (drops older)."""

    @abc.abstractmethod
    def add_request(self, model: str, at: float, job_id: str) -> None: ...
    @abc.abstractmethod
    def remove_request(self, model: str, at: float, job_id: str) -> None:
        """Take back the request ``add_request(model, at, job_id)`` counted, if still kept."""

    @abc.abstractmethod
    def get_held(self, job_id: str) -> Held | None: ...
    @abc.abstractmethod
    def put_held(self, held: Held) -> None: ...
    @abc.abstractmethod
    def delete_held(self, job_id: str) -> None: ...
    @abc.abstractmethod
    def expired_held(self, now: float) -> list[Held]:
        """Reservations with ``expires_at <= now``, found without scanning live ones."""

    @abc.abstractmethod
    def get_settled(self, job_id: str) -> Settlement | None: ...
    @abc.abstractmethod
    def put_settled(self, settlement: Settlement, at: float) -> None: ...
    @abc.abstractmethod
    def prune_settled(self, before: float) -> None:
        """Forget settlements older than ``before``."""

    @abc.abstractmethod
    def record(self, event: Event) -> None:
        """Append ``event`` to the store's event log in this transaction, when the
        store records events (its outbox); else nothing."""


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class _Ctx:
    tx: QuotaTx
    now: float
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class _Evaluation:
    allowance: AgentAllowance
    agent: AgentRow
    model: ModelRow
    decision: Decision


class EngineAllowanceStore(AllowanceStore):
    """Every AllowanceStore method, over :class:`QuotaTx` transactions."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        tz: tzinfo = UTC,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
    ) -> None:
        if not 0 < reservation_ttl <= MAX_RESERVATION_TTL:  # past it no store holds the expiry
            raise ConfigError(
                f"reservation_ttl must be > 0 and <= {MAX_RESERVATION_TTL:.0f} seconds,"
                f" got {reservation_ttl}"
            )
        self._clock = clock
        self._days = QuotaDays(tz)
        self._default_ttl = reservation_ttl

    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[QuotaTx]:
        """One atomic, isolated unit of work (lock or BEGIN IMMEDIATE)."""

    # --- helpers run inside a transaction ---
    def _period(self, now: float) -> tuple[float, float]:
        return period_bounds(now, self._days.around(now))

    @staticmethod
    def _sweep(tx: QuotaTx, now: float, start: float) -> None:
        for held in tx.expired_held(now):
            EngineAllowanceStore._release(tx, held, start)
            tx.delete_held(held.job_id)

    @staticmethod
    def _release(tx: QuotaTx, held: Held, start: float) -> None:
        agent = EngineAllowanceStore._agent(tx, held.agent_id, start)
        agent.tokens_reserved = max(0, agent.tokens_reserved - held.tokens)
        agent.active_jobs = max(0, agent.active_jobs - 1)
        tx.put_agent(held.agent_id, agent)
        if held.model:
            model = EngineAllowanceStore._model(tx, held.model, start)
            model.tokens_reserved = max(0, model.tokens_reserved - held.tokens)
            model.cost_reserved = max(0, model.cost_reserved - held.cost)
            tx.put_model(held.model, model)

    @staticmethod
    def _agent(tx: QuotaTx, agent_id: str, start: float) -> AgentRow:
        row = tx.get_agent(agent_id) or AgentRow(period_start=start)
        if row.period_start < start:
            row.period_start, row.tokens_used, row.jobs_started = start, 0, 0
        return row

    @staticmethod
    def _model(tx: QuotaTx, model: str, start: float) -> ModelRow:
        row = tx.get_model(model) or ModelRow(period_start=start)
        if row.period_start < start:
            row.period_start, row.tokens_used, row.cost_used = start, 0, 0
        return row

    @contextmanager
    def _open(self) -> Iterator[_Ctx]:
        """One transaction with expired reservations released and the period known."""
        with self._transaction() as tx:
            now = self._clock()
            start, end = self._period(now)
            self._sweep(tx, now, start)
            yield _Ctx(tx, now, start, end)

    def _evaluate(self, ctx: _Ctx, agent_id: str, model: str, tokens: int) -> _Evaluation:
        tx = ctx.tx
        allowance = tx.get_allowance(agent_id)
        if allowance is None:
            raise no_allowance(agent_id)
        agent = self._agent(tx, agent_id, ctx.start)
        quota = tx.get_quota(model) if model else None
        model_row = self._model(tx, model, ctx.start) if model else ModelRow()
        count, oldest = tx.requests(model, ctx.now - HOUR) if model else (0, None)
        counters = ModelCounters(
            model_row.tokens_used,
            model_row.tokens_reserved,
            model_row.cost_used,
            model_row.cost_reserved,
            count,
            oldest,
        )
        decision = decide(
            allowance, agent.counters(), quota, counters, model, tokens, ctx.now, ctx.end
        )
        return _Evaluation(allowance, agent, model_row, decision)

    # --- configuration ---
    def get_allowance(self, agent_id: str) -> AgentAllowance:
        with self._transaction() as tx:
            allowance = tx.get_allowance(agent_id)
        if allowance is None:
            raise NotFoundError(f"no allowance for agent {agent_id!r}")
        return allowance

    def set_allowance(self, allowance: AgentAllowance) -> None:
        require_id("agent id", allowance.agent_id)
        allowance = require_valid("allowance", allowance)
        with self._transaction() as tx:
            tx.put_allowance(allowance)

    def get_model_quota(self, model: str) -> ModelQuota:
        with self._transaction() as tx:
            quota = tx.get_quota(model)
        if quota is None:
            raise NotFoundError(f"no quota for model {model!r}")
        return quota

    def set_model_quota(self, quota: ModelQuota) -> None:
        require_id("model", quota.model)
        quota = require_valid("model quota", quota)
        with self._transaction() as tx:
            tx.put_quota(quota)

    def allowances(self) -> list[AgentAllowance]:
        with self._transaction() as tx:
            found = tx.all_allowances()
        return sorted(found, key=lambda a: a.agent_id)

    # --- usage data operations ---
    @staticmethod
    def _record(agent_id: str, row: AgentRow) -> UsageRecord:
        return UsageRecord(
            agent_id=agent_id,
            tokens_used=row.tokens_used,
            jobs_started=row.jobs_started,
            active_jobs=row.active_jobs,
            period_start=_dt(row.period_start),
            tokens_reserved=row.tokens_reserved,
        )

    def get_usage(self, agent_id: str) -> UsageRecord:
        with self._open() as ctx:
            return self._record(agent_id, self._agent(ctx.tx, agent_id, ctx.start))

    def usages(self) -> list[UsageRecord]:
        with self._open() as ctx:
            return [
                self._record(a, self._agent(ctx.tx, a, ctx.start))
                for a in sorted(ctx.tx.agent_ids())
            ]

    def _update_agent(self, agent_id: str, change: Callable[[AgentRow], None]) -> None:
        require_id("agent id", agent_id)
        with self._open() as ctx:
            row = self._agent(ctx.tx, agent_id, ctx.start)
            change(row)
            ctx.tx.put_agent(agent_id, row)

    def increment_usage(self, agent_id: str, tokens: int, jobs: int) -> None:
        require_amount("tokens", tokens)
        require_amount("jobs", jobs)

        def change(row: AgentRow) -> None:
            row.tokens_used += tokens
            row.jobs_started += jobs
            row.active_jobs += jobs

        self._update_agent(agent_id, change)

    def decrement_active_jobs(self, agent_id: str) -> None:
        def change(row: AgentRow) -> None:
            row.active_jobs = max(0, row.active_jobs - 1)

        self._update_agent(agent_id, change)

    def return_tokens(self, agent_id: str, tokens: int) -> None:
        require_amount("tokens", tokens)

        def change(row: AgentRow) -> None:
            row.tokens_used = max(0, row.tokens_used - tokens)

        self._update_agent(agent_id, change)

    def reset_usage(self, agent_id: str) -> None:
        require_id("agent id", agent_id)
        with self._open() as ctx:
            row = self._agent(ctx.tx, agent_id, ctx.start)
            row.tokens_used, row.jobs_started, row.reset_at = 0, 0, ctx.now
            ctx.tx.put_agent(agent_id, row)

    def get_model_usage(self, model: str) -> ModelUsage:
        with self._open() as ctx:
            row = self._model(ctx.tx, model, ctx.start)
            count, _oldest = ctx.tx.requests(model, ctx.now - HOUR)
            return ModelUsage(
                model=model,
                tokens_used=row.tokens_used,
                tokens_reserved=row.tokens_reserved,
                cost_used=row.cost_used,
                cost_reserved=row.cost_reserved,
                requests_last_hour=count,
                period_start=_dt(row.period_start),
            )

    def increment_model_usage(self, model: str, tokens: int) -> None:
        require_id("model", model)
        require_amount("tokens", tokens)
        with self._open() as ctx:
            row = self._model(ctx.tx, model, ctx.start)
            row.tokens_used += tokens
            ctx.tx.put_model(model, row)

    # --- atomic quota operations ---
    def check(self, agent_id: str, model: str = "", tokens: int = 0) -> QuotaCheckResult:
        require_id("agent id", agent_id)
        require_amount("tokens", tokens)
        with self._open() as ctx:
            decision = self._evaluate(ctx, agent_id, model, tokens).decision
        return QuotaCheckResult(
            allowed=decision.allowed,
            status=decision.status,
            remaining_tokens=decision.remaining_tokens,
            remaining_jobs=decision.remaining_jobs,
            reason=decision.reason,
            reset_at=_dt(ctx.end),
            retry_after=decision.retry_after,
        )

    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        require_id("agent id", agent_id)
        require_id("job id", job_id)
        require_amount("tokens", tokens)
        if task_id != "":  # None included: a ConfigError before anything is held
            require_id("task id", task_id)
        with self._open() as ctx:
            tx = ctx.tx
            held = tx.get_held(job_id)
            if held is not None:
                # A repeat changes nothing, so it crosses no threshold: ok -> ok.
                return self._reservation(held)
            if tx.get_settled(job_id) is not None:
                raise ConflictError(
                    f"job {job_id!r} was already settled or withdrawn; use a new job id"
                )
            ev = self._evaluate(ctx, agent_id, model, tokens)
            if not ev.decision.allowed:
                raise QuotaExceededError(ev.decision.reason, ev.decision.retry_after)
            before = agent_status(ev.allowance, ev.agent.counters())
            ev.agent.jobs_started += 1
            ev.agent.active_jobs += 1
            ev.agent.tokens_reserved += tokens
            tx.put_agent(agent_id, ev.agent)
            if model:
                ev.model.tokens_reserved += tokens
                ev.model.cost_reserved += ev.decision.cost
                tx.put_model(model, ev.model)
                tx.add_request(model, ctx.now, job_id)
            ttl = reservation_ttl(ev.allowance, self._default_ttl)
            cost = ev.decision.cost
            held = Held(job_id, agent_id, model, tokens, cost, ctx.now, ctx.now + ttl, ttl)
            tx.put_held(held)
            after = agent_status(ev.allowance, ev.agent.counters())
            self._record_crossing(
                tx, "reserve", job_id, agent_id, model, before, after, ctx.now, task_id
            )
            return self._reservation(held, before, after)

    @staticmethod
    def _record_crossing(
        tx: QuotaTx,
        step: Step,
        job_id: str,
        agent_id: str,
        model: str,
        before: AllowanceStatus,
        after: AllowanceStatus,
        now: float,
        task_id: str = "",
    ) -> None:
        """Record the thresholds this step crossed, with the step itself."""
        at = datetime.fromtimestamp(now, UTC)
        for event in crossing_events(
            step, job_id, agent_id, model, before, after, at, STORE_SOURCE, task_id
        ):
            tx.record(event)

    @staticmethod
    def _reservation(
        held: Held,
        before: AllowanceStatus = AllowanceStatus.OK,
        after: AllowanceStatus = AllowanceStatus.OK,
    ) -> Reservation:
        return Reservation(
            job_id=held.job_id,
            agent_id=held.agent_id,
            model=held.model,
            tokens=held.tokens,
            cost=held.cost,
            created_at=_dt(held.created_at),
            expires_at=_dt(held.expires_at),
            previous_status=before,
            status=after,
        )

    def settle(
        self,
        job_id: str,
        tokens_in: int,
        tokens_out: int,
        outcome: QuotaEvent,
        agent_id: str | None = None,
        model: str | None = None,
        task_id: str = "",
    ) -> Settlement:
        outcome = settle_arguments(job_id, tokens_in, tokens_out, outcome, task_id)
        return self._end(job_id, tokens_in, tokens_out, outcome, agent_id, model, task_id=task_id)

    def unreserve(self, job_id: str) -> Settlement:
        require_id("job id", job_id)
        return self._end(job_id, 0, 0, QuotaEvent.JOB_CANCELLED, None, None, "unreserve")

    def expire(self, job_id: str) -> Settlement:
        require_id("job id", job_id)
        return self._end(job_id, 0, 0, QuotaEvent.JOB_CANCELLED, None, None, "expire")

    def withdraw(self, job_id: str) -> Settlement:
        require_id("job id", job_id)
        return self._end(job_id, 0, 0, QuotaEvent.JOB_WITHDRAWN, None, None, "withdraw")

    def extend(self, job_id: str) -> Reservation:
        require_id("job id", job_id)
        with self._open() as ctx:  # a reservation past its expiry is swept first: gone
            held = ctx.tx.get_held(job_id)
            if held is None:
                raise no_reservation(job_id, "extend")
            expires = extended_expiry(ctx.now, held.expires_at, held.ttl, self._default_ttl)
            if expires != held.expires_at:
                held = dataclasses.replace(held, expires_at=expires)
                ctx.tx.put_held(held)  # the backends' expiry indexes follow
            return self._reservation(held)

    def _end(
        self,
        job_id: str,
        tokens_in: int,
        tokens_out: int,
        outcome: QuotaEvent,
        agent_id: str | None,
        model: str | None,
        ending: Ending = "settle",
        task_id: str = "",
    ) -> Settlement:
        """settle, unreserve, expire or withdraw (see :data:`~agentic.stores.base.Ending`)."""
        with self._open() as ctx:
            tx = ctx.tx
            done = tx.get_settled(job_id)
            if done is not None:
                return done.model_copy(update={"duplicate": True})
            held = tx.get_held(job_id)
            if held is None and ending == "withdraw":
                # Nothing held (yet): only the mark, which a reserve arriving later
                # finds (a settled job id: ConflictError, nothing held).
                settlement = Settlement(job_id=job_id, agent_id="", outcome=outcome)
                self._keep(tx, settlement, ctx.now)
                return settlement
            if held is None and (not agent_id or ending != "settle"):
                raise no_reservation(job_id, ending)
            owner = held.agent_id if held else str(agent_id)
            # The reservation's model; when it named none (a task with no model), the
            # one the settle names: the agent's usage report knows what it ran on.
            used_model = (held.model if held else "") or model or ""
            allowance = tx.get_allowance(owner)
            before_row = self._agent(tx, owner, ctx.start)
            before = (
                agent_status(allowance, before_row.counters()) if allowance else AllowanceStatus.OK
            )
            if held is not None:
                self._release(tx, held, ctx.start)
                tx.delete_held(job_id)
            # A settle may name an agent with no allowance (its reservation gone): half.
            failure = allowance.failure_charge if allowance else FailureCharge.HALF
            charged = charged_tokens(outcome, tokens_in, tokens_out, failure)
            full = cost_microcents(
                tx.get_quota(used_model) if used_model else None, tokens_in, tokens_out
            )
            cost = share_of_cost(full, charged, tokens_in + tokens_out)
            row = self._agent(tx, owner, ctx.start)
            row.tokens_used += charged
            if held is not None and ending in ("unreserve", "withdraw"):
                # The job never ran: it was never one of today's jobs. Unless its
                # count is gone already: rolled away with an earlier day's, or
                # cleared by a reset (at the same instant too: which came first is
                # unknown, and one job too many counted is the safe side).
                if held.created_at >= ctx.start and held.created_at > row.reset_at:
                    row.jobs_started = max(0, row.jobs_started - 1)
                if held.model:
                    tx.remove_request(held.model, held.created_at, job_id)
            tx.put_agent(owner, row)
            if used_model:
                mrow = self._model(tx, used_model, ctx.start)
                mrow.tokens_used += charged
                mrow.cost_used += cost
                tx.put_model(used_model, mrow)
            after = agent_status(allowance, row.counters()) if allowance else AllowanceStatus.OK
            settlement = Settlement(
                job_id=job_id,
                agent_id=owner,
                model=used_model,
                outcome=outcome,
                tokens_charged=charged,
                cost_charged=cost,
                previous_status=before,
                status=after,
            )
            if ending in ("settle", "withdraw"):
                self._keep(tx, settlement, ctx.now)
            if ending == "settle":  # a withdraw records no event, as unreserve
                # With the settle itself: no crash between the two can lose it.
                at = datetime.fromtimestamp(ctx.now, UTC)
                usage = usage_recorded(settlement, tokens_in, tokens_out, at, STORE_SOURCE, task_id)
                tx.record(usage)
                self._record_crossing(
                    tx, "settle", job_id, owner, used_model, before, after, ctx.now, task_id
                )
            # Unreserve and expire leave no settlement: should the job run after all (a
            # claim thought lost that was made, an attempt thought dead), its own settle
            # still charges what it used. A withdrawn job never had a claim sent.
            return settlement

    @staticmethod
    def _keep(tx: QuotaTx, settlement: Settlement, now: float) -> None:
        """Remember a settled (or withdrawn) job id for the retention, forgetting older ones."""
        tx.put_settled(settlement, now)
        tx.prune_settled(now - SETTLED_RETENTION)
