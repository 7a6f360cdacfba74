"""The quota rules, once, as pure functions.

The memory and SQLite stores call these inside their lock / ``BEGIN IMMEDIATE``
transaction; ``stores/redis/lua/*.lua`` mirror them line for line (keep the two in
step: a property test runs random sequences through every backend and
:func:`decide` and demands identical answers).

Every quantity is an integer so that Python and Lua (doubles) agree exactly:
tokens, jobs, and cost in micro-cents (1 cent = 1,000,000 micro-cents). Prices are
cents per million tokens, so ``tokens * price`` *is* micro-cents.

Rules of :func:`decide`, first failure wins (go-agentic's order, then ours):

1. model allowlist (when non-empty and a model is given);
2. agent daily tokens: ``used + reserved + request <= limit``; remaining <= 0 is
   exceeded even for a zero-token request (usage exactly at the limit);
3. agent daily jobs: ``jobs_started < limit``;
4. agent concurrency: ``active < concurrent_jobs``;
5. model daily token budget across agents (used + reserved + request);
6. model requests in the rolling hour: ``count < hourly_rate_limit``;
7. model cost ceiling per day (used + reserved + estimated cost of the request).

A settle charges a completed job all its tokens, a failed one half (rounded up) or
all by the agent's ``failure_charge``, a cancelled one nothing (:func:`charged_tokens`).
An extend sets a live reservation's expiry to now plus the lifetime it was reserved
with, never earlier (:func:`extended_expiry`).

Status is ``exceeded`` when the agent's tokens or jobs are used up, else
``warning`` from 80% of the token limit (``5 * used >= 4 * limit``, exact), else ok:
tokens used, not reserved (:func:`agent_status`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Literal

from .events import Event, EventType, crossing_id, usage_id
from .models import (
    MAX_RESERVATION_TTL,
    AgentAllowance,
    AllowanceStatus,
    FailureCharge,
    ModelQuota,
    QuotaEvent,
    Settlement,
)

__all__ = [
    "DAY",
    "DEFAULT_RESERVATION_TTL",
    "HOUR",
    "MAX_RESERVATION_TTL",
    "SETTLED_RETENTION",
    "QuotaDays",
    "STORE_SOURCE",
    "Step",
    "AgentCounters",
    "Decision",
    "ModelCounters",
    "agent_status",
    "charged_tokens",
    "crossing_events",
    "cost_microcents",
    "day_starts",
    "decide",
    "estimated_cost",
    "extended_expiry",
    "never_fits",
    "period_bounds",
    "reservation_ttl",
    "share_of_cost",
    "usage_recorded",
]

DAY = 86_400
HOUR = 3_600
#: How long a reservation lives when the agent's allowance sets no max_job_duration.
DEFAULT_RESERVATION_TTL = 3_600.0
#: How long a settled job id is remembered, so a repeated settle changes nothing.
SETTLED_RETENTION = 7 * DAY


@dataclass(frozen=True, slots=True)
class AgentCounters:
    """An agent's live counters for the current period."""

    tokens_used: int = 0
    jobs_started: int = 0
    tokens_reserved: int = 0
    active_jobs: int = 0


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """A model's live counters for the current period and rolling hour."""

    tokens_used: int = 0
    tokens_reserved: int = 0
    cost_used: int = 0
    cost_reserved: int = 0
    requests_last_hour: int = 0
    #: time of the oldest request still inside the rolling hour, if any
    oldest_request: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`decide`."""

    allowed: bool
    status: AllowanceStatus
    reason: str = ""
    remaining_tokens: int = -1
    remaining_jobs: int = -1
    retry_after: float | None = None
    #: estimated cost of the request in micro-cents (what a reservation holds)
    cost: int = 0


def day_starts(tz: tzinfo, around: float) -> tuple[float, ...]:
    """When the local days of ``tz`` start (epoch seconds), from the day before the
    one containing ``around`` to the start of the day after the next: three days and
    the end of the last, what :func:`period_bounds` picks from (the Lua scripts
    receive them, and pick by the server's time).

    A day starts at its first instant, midnight at the offset in force before any
    change then: a day with a DST change is 23 or 25 hours (or 23.5 / 24.5 on Lord
    Howe Island), and a day whose midnight a change skips starts when the clocks
    jump past it.
    """
    today = datetime.fromtimestamp(around, tz).date()
    return tuple(
        datetime.combine(today + timedelta(days=n), datetime.min.time(), tz).timestamp()
        for n in (-1, 0, 1, 2)
    )


class QuotaDays:
    """:func:`day_starts` of one timezone around a clock, worked out again only when
    the clock leaves the middle day of the last ones (about once a day)."""

    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz
        self._starts: tuple[float, ...] = ()

    def around(self, at: float) -> tuple[float, ...]:
        """The day starts :func:`day_starts` gives for ``at``."""
        starts = self._starts
        if not starts or not starts[1] <= at < starts[2]:
            starts = self._starts = day_starts(self._tz, at)
        return starts


def period_bounds(now: float, starts: Sequence[float]) -> tuple[float, float]:
    """Start and end (epoch seconds) of the quota day containing ``now``: between two
    of ``starts`` (:func:`day_starts`, ascending), else, a clock more than a day from
    the one they were computed at, whole days counted from the first or last of them.
    ``quota_lib.lua`` mirrors it."""
    for start, end in itertools.pairwise(starts):
        if start <= now < end:
            return start, end
    edge = starts[0] if now < starts[0] else starts[-1]
    start = edge + math.floor((now - edge) / DAY) * DAY
    return start, start + DAY


def reservation_ttl(allowance: AgentAllowance, default: float) -> float:
    """A reservation lives for the agent's max_job_duration, else ``default``."""
    return allowance.max_job_duration if allowance.max_job_duration > 0 else default


def extended_expiry(now: float, expires_at: float, ttl: float, default: float) -> float:
    """When a live reservation expires after an ``extend`` at ``now``.

    ``now`` plus its own lifetime ``ttl`` (the one it was reserved with; ``0`` for a
    reservation stored by a version that did not record it: the store's ``default``),
    and never earlier than it expired already: an extend never shortens a reservation.
    """
    lifetime = ttl if ttl > 0 else default
    return max(expires_at, now + lifetime)


def cost_microcents(quota: ModelQuota | None, tokens_in: int, tokens_out: int) -> int:
    """Exact cost of a job in micro-cents, rounded half up."""
    if quota is None:
        return 0
    return math.floor(tokens_in * quota.input_price + tokens_out * quota.output_price + 0.5)


def estimated_cost(quota: ModelQuota | None, tokens: int) -> int:
    """Cost held by a reservation: every token priced at the dearer of the two prices."""
    if quota is None:
        return 0
    return math.floor(tokens * max(quota.input_price, quota.output_price) + 0.5)


def charged_tokens(
    outcome: QuotaEvent, tokens_in: int, tokens_out: int, failure_charge: FailureCharge
) -> int:
    """Tokens charged for a finished job.

    completed: all; failed: by the agent's ``failure_charge``, ``half`` charging
    ``total - total // 2`` (go-agentic returns half, rounded down, so 7 charges 4)
    and ``full`` all; cancelled: nothing. Any other event charges nothing.
    """
    total = tokens_in + tokens_out
    if outcome is QuotaEvent.JOB_COMPLETED:
        return total
    if outcome is QuotaEvent.JOB_FAILED:
        return total if failure_charge is FailureCharge.FULL else total - total // 2
    return 0


def share_of_cost(full_cost: int, charged: int, total: int) -> int:
    """The part of ``full_cost`` matching ``charged`` of ``total`` tokens, rounded down."""
    if total <= 0:
        return 0
    return full_cost * charged // total


def never_fits(
    allowance: AgentAllowance, quota: ModelQuota | None, model: str, tokens: int
) -> str | None:
    """Why a job of ``tokens`` on ``model`` would be refused even on a day with
    nothing used yet (its size or model, not today's use), or None when it could
    pass: such a job waits for a change of allowance or model quota, not for a reset.
    The rule is ``decide``'s, asked with empty counters; this only words its refusal."""
    empty = decide(allowance, AgentCounters(), quota, ModelCounters(), model, tokens, 0.0, DAY)
    if empty.allowed:
        return None
    if empty.reason == "daily token limit":
        return f"{tokens} tokens exceed its daily token limit of {allowance.daily_token_limit}"
    if quota is not None and empty.reason.startswith("daily token budget"):
        return (
            f"{tokens} tokens exceed model {model!r}'s daily token budget of"
            f" {quota.daily_token_budget}"
        )
    if empty.reason.startswith("cost ceiling"):
        return f"its estimated cost exceeds model {model!r}'s cost ceiling"
    if "allowlist" in empty.reason:
        return f"model {model!r} is not in its allowlist"
    return empty.reason


def agent_status(allowance: AgentAllowance, counters: AgentCounters) -> AllowanceStatus:
    """The allowance status of an agent with these counters: of the tokens it used
    and the jobs it started, not of what its running jobs hold (an estimate, often
    far above what they use: it decides admission, not how much of the day is used).
    So within a period a reserve or settle can only raise it, except an unreserve
    taking a job back, and each threshold's event comes once."""
    used = counters.tokens_used
    tokens_limit = allowance.daily_token_limit
    jobs_limit = allowance.daily_job_limit
    if (tokens_limit > 0 and used >= tokens_limit) or (
        jobs_limit > 0 and counters.jobs_started >= jobs_limit
    ):
        return AllowanceStatus.EXCEEDED
    if tokens_limit > 0 and 5 * used >= 4 * tokens_limit:
        return AllowanceStatus.WARNING
    return AllowanceStatus.OK


def _remaining(limit: int, spent: int) -> int:
    return -1 if limit <= 0 else max(0, limit - spent)


def decide(
    allowance: AgentAllowance,
    agent: AgentCounters,
    quota: ModelQuota | None,
    model_counters: ModelCounters,
    model: str,
    tokens: int,
    now: float,
    period_end: float,
) -> Decision:
    """Whether a job of ``tokens`` on ``model`` may start now (see the module rules)."""
    remaining_tokens = _remaining(
        allowance.daily_token_limit, agent.tokens_used + agent.tokens_reserved
    )
    remaining_jobs = _remaining(allowance.daily_job_limit, agent.jobs_started)
    until_reset = period_end - now

    def deny(reason: str, retry_after: float | None) -> Decision:
        return Decision(
            False,
            AllowanceStatus.EXCEEDED,
            reason,
            remaining_tokens,
            remaining_jobs,
            retry_after,
        )

    if model and allowance.model_allowlist and model not in allowance.model_allowlist:
        return deny(
            f"model {model!r} is not in the allowlist of agent {allowance.agent_id!r}", None
        )
    if allowance.daily_token_limit > 0 and (remaining_tokens <= 0 or tokens > remaining_tokens):
        return deny("daily token limit", until_reset)
    if allowance.daily_job_limit > 0 and remaining_jobs <= 0:
        return deny("daily job limit", until_reset)
    if allowance.concurrent_jobs > 0 and agent.active_jobs >= allowance.concurrent_jobs:
        return deny("concurrent job limit", None)
    cost = 0
    if model and quota is not None:
        budget = quota.daily_token_budget
        if budget > 0:
            left = budget - model_counters.tokens_used - model_counters.tokens_reserved
            if left <= 0 or tokens > left:
                return deny(f"daily token budget of model {model!r}", until_reset)
        if quota.hourly_rate_limit > 0 and (
            model_counters.requests_last_hour >= quota.hourly_rate_limit
        ):
            oldest = now if model_counters.oldest_request is None else model_counters.oldest_request
            return deny(f"hourly rate limit of model {model!r}", max(0.0, oldest + HOUR - now))
        cost = estimated_cost(quota, tokens)
        if quota.cost_ceiling > 0:
            left = (
                quota.cost_ceiling * 1_000_000
                - model_counters.cost_used
                - model_counters.cost_reserved
            )
            if left <= 0 or cost > left:
                return deny(f"cost ceiling of model {model!r}", until_reset)
    return Decision(
        True, agent_status(allowance, agent), "", remaining_tokens, remaining_jobs, None, cost
    )


#: ``source`` of the usage events a quota store records
STORE_SOURCE = "agentic.quota"


def usage_recorded(
    settlement: Settlement,
    tokens_in: int,
    tokens_out: int,
    time: datetime | None = None,
    source: str = "agentic",
    task_id: str = "",
) -> Event:
    """The ``usage_recorded`` event of a settle: what was used and what was charged.

    The quota store records it with the settle (``source`` :data:`STORE_SOURCE`),
    the service emits it after; both under :func:`~agentic.events.usage_id`, so the
    event log keeps one. ``redis/lua/quota_settle.lua`` writes the same JSON.
    """
    payload: dict[str, object] = {
        "job_id": settlement.job_id,
        "model": settlement.model,
        "outcome": settlement.outcome.value,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens_charged": settlement.tokens_charged,
        "cost_charged": settlement.cost_charged,
    }
    extra = {"time": time} if time is not None else {}
    return Event(
        id=usage_id(settlement.job_id),
        type=EventType.USAGE_RECORDED,
        source=source,
        task_id=task_id,
        agent_id=settlement.agent_id,
        payload=payload,
        **extra,
    )


#: The quota steps that can push an agent across a threshold.
Step = Literal["reserve", "settle"]

_SEVERITY = {AllowanceStatus.OK: 0, AllowanceStatus.WARNING: 1, AllowanceStatus.EXCEEDED: 2}


def crossing_events(
    step: Step,
    job_id: str,
    agent_id: str,
    model: str,
    before: AllowanceStatus,
    after: AllowanceStatus,
    time: datetime | None = None,
    source: str = "agentic",
    task_id: str = "",
) -> list[Event]:
    """The events of an agent's status going from ``before`` to ``after`` in one step.

    ``quota_warning`` when it reaches warning (or jumps past it to exceeded) from ok,
    ``quota_exceeded`` when it reaches exceeded; nothing when it stays or drops. The
    status is read before and after each atomic step, so exactly one step sees a
    crossing, and a new period starts from ok: once per crossing per period. The
    quota store records them with the step, the service emits them after; both
    under :func:`~agentic.events.crossing_id`, so the event log keeps one.
    ``redis/lua/quota_log.lua`` writes the same JSON.
    """
    if _SEVERITY[after] <= _SEVERITY[before]:
        return []
    kinds = []
    if _SEVERITY[before] < 1:
        kinds.append(EventType.QUOTA_WARNING)
    if after is AllowanceStatus.EXCEEDED:
        kinds.append(EventType.QUOTA_EXCEEDED)
    extra = {"time": time} if time is not None else {}
    return [
        Event(
            id=crossing_id(job_id, step, kind),
            type=kind,
            source=source,
            task_id=task_id,
            agent_id=agent_id,
            payload={"job_id": job_id, "model": model},
            **extra,
        )
        for kind in kinds
    ]
