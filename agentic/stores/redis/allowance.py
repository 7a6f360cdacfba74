"""AllowanceStore on Redis: every quota operation is one Lua script call.

The scripts (``lua/quota_*.lua``) run the algorithm of :mod:`agentic.stores._engine`
inside Redis: sweep expired reservations, roll the period, apply the rules of
:mod:`agentic.quota`, write. ``reserve`` and ``settle`` are each ONE command (``FCALL``,
or ``EVALSHA`` before Redis 7), so they are atomic across every machine and cost one
round trip (``extend`` too). Time is the server's
``TIME`` unless a clock is injected (tests).

Lua decides and writes; Python describes. When the script refuses (or answers a
``check``), it returns the exact counters it decided on and this module runs
:func:`agentic.quota.decide` on them for the reason, remaining amounts and retry
time: the messages are the memory store's, byte for byte, and a disagreement
between the two rule sets is reported as a bug instead of passing silently.

The quota day is picked in the script by the server's time, among the starts of the
local days around this machine's clock (:func:`agentic.quota.day_starts`), so the
two clocks may differ by up to a day around a DST change and still agree on it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TypeVar

import redis
from pydantic import BaseModel

from ...errors import ConfigError, ConflictError, NotFoundError, QuotaExceededError, StoreError
from ...models import (
    AgentAllowance,
    ModelQuota,
    ModelUsage,
    QuotaCheckResult,
    QuotaEvent,
    Reservation,
    Settlement,
    UsageRecord,
)
from ...quota import (
    DEFAULT_RESERVATION_TTL,
    MAX_RESERVATION_TTL,
    SETTLED_RETENTION,
    AgentCounters,
    Decision,
    ModelCounters,
    QuotaDays,
    decide,
)
from ..base import (
    AllowanceStore,
    Ending,
    no_allowance,
    no_reservation,
    parse_stored,
    require_amount,
    require_id,
    require_valid,
    settle_arguments,
)
from ..keys import EventLogKeys, QuotaKeys
from ._conn import (
    DEFAULT_PREFIX,
    Script,
    checked_read,
    guarded_write,
    now_arg,
    open_identity,
    text,
)

__all__ = ["RedisAllowanceStore"]

# Token amounts are at most models.MAX_COUNT on every store (base.require_amount):
# Lua numbers are doubles, exact below 2**53, and a settle multiplies two amounts
# (see muldiv in quota_settle.lua).

_PRELUDE = ("common.lua", "quota_lib.lua")
# The scripts that record events with their step (an outbox) append to the log.
_RECORDING = (*_PRELUDE, "log_lib.lua", "quota_log.lua")
_RESERVE = Script(*_RECORDING, "quota_reserve.lua")
_SETTLE = Script(*_RECORDING, "quota_settle.lua")
_DATA = Script(*_PRELUDE, "quota_data.lua")
_EXTEND = Script(*_PRELUDE, "quota_extend.lua")

_M = TypeVar("_M", bound=BaseModel)


def _dt(seconds: str) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)


def _int(value: str) -> int:
    # Scripts print numbers with %.17g, which is exponent notation from 1e17 up.
    return int(float(value))


def _parse(model: type[_M], raw: object) -> _M:
    return parse_stored(model, text(raw), "Redis")


class RedisAllowanceStore(AllowanceStore):
    """AllowanceStore shared by every machine that reaches one Redis server.

    ``client`` is a redis-py client; it is closed by :meth:`close` only when
    ``close_client`` is true (stores opened from a URL own their client).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
        tz: tzinfo = UTC,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        close_client: bool = False,
        record_events: bool = False,
        create: bool = True,
    ) -> None:
        if not 0 < reservation_ttl <= MAX_RESERVATION_TTL:  # past it no store holds the expiry
            raise ConfigError(
                f"reservation_ttl must be > 0 and <= {MAX_RESERVATION_TTL:.0f} seconds,"
                f" got {reservation_ttl}"
            )
        self._client = client
        self._keys = QuotaKeys.under(require_id("prefix", prefix))
        # Every script call passes the key heads: built once, not per call. The event
        # log's keys follow ('' for none): a settle records its usage in the log, a
        # reserve or settle the thresholds it crossed.
        log = EventLogKeys.under(prefix)
        logged = (log.seq, log.stream, log.ids) if record_events else ("", "", "")
        self._heads = (*self._keys.heads(), *logged)
        self._clock = clock
        self._days = QuotaDays(tz)
        # The day starts as the scripts receive them, formatted once a day.
        self._starts: tuple[float, ...] = ()
        self._starts_text = ""
        self._default_ttl = repr(float(reservation_ttl))
        self._close_client = close_client
        self._identity = open_identity(client, prefix, close_client, create)

    def close(self) -> None:
        if self._close_client:
            self._client.close()

    def store_id(self) -> str:
        return self._identity.check(self._client)

    def _run(self, script: Script, *args: str, reads: bool = False) -> list[str]:
        """The script's reply; a call that ``reads`` only is not counted as a write
        (its sweep of expired reservations may write, which any later call redoes)."""
        now, at = now_arg(self._clock)
        starts = self._days.around(at)
        if starts is not self._starts:
            self._starts, self._starts_text = starts, ",".join(map(repr, starts))
        days = self._starts_text
        reply = script(
            self._client, [now, days, *self._heads, *args], identity=self._identity, reads=reads
        )
        return [text(item) for item in reply]

    # --- configuration ---
    def _get(self, key: str, action: str) -> object:
        """A key's value, or None, read with the store id (not "none" from an emptied
        store)."""
        return checked_read(self._client, self._identity, action, lambda p: p.get(key))[0]

    def get_allowance(self, agent_id: str) -> AgentAllowance:
        raw = self._get(self._keys.allowance(agent_id), "get_allowance")
        if raw is None:
            raise NotFoundError(f"no allowance for agent {agent_id!r}")
        return _parse(AgentAllowance, raw)

    def set_allowance(self, allowance: AgentAllowance) -> None:
        require_id("agent id", allowance.agent_id)
        allowance = require_valid("allowance", allowance)
        key, value = self._keys.allowance(allowance.agent_id), allowance.model_dump_json()

        guarded_write(
            self._client,
            self._identity,
            ("SET", key, value),
            ("SADD", self._keys.allowances, allowance.agent_id),
        )

    def get_model_quota(self, model: str) -> ModelQuota:
        raw = self._get(self._keys.limits(model), "get_model_quota")
        if raw is None:
            raise NotFoundError(f"no quota for model {model!r}")
        return _parse(ModelQuota, raw)

    def set_model_quota(self, quota: ModelQuota) -> None:
        require_id("model", quota.model)
        quota = require_valid("model quota", quota)
        key, value = self._keys.limits(quota.model), quota.model_dump_json()
        guarded_write(self._client, self._identity, ("SET", key, value))

    def allowances(self) -> list[AgentAllowance]:
        # Each round trip with the store id: an emptied store is not "no allowances".
        [members] = checked_read(
            self._client,
            self._identity,
            "allowances",
            lambda p: p.smembers(self._keys.allowances),
        )
        keys = [self._keys.allowance(text(i)) for i in members]
        raws: list[object] = (
            checked_read(self._client, self._identity, "allowances", lambda p: p.mget(keys))[0]
            if keys
            else []
        )
        found = [_parse(AgentAllowance, raw) for raw in raws if raw is not None]
        return sorted(found, key=lambda a: a.agent_id)

    # --- usage data operations ---
    @staticmethod
    def _record(agent_id: str, fields: list[str]) -> UsageRecord:
        period_start, tokens_used, jobs_started, active_jobs, tokens_reserved = fields
        return UsageRecord(
            agent_id=agent_id,
            tokens_used=_int(tokens_used),
            jobs_started=_int(jobs_started),
            active_jobs=_int(active_jobs),
            period_start=_dt(period_start),
            tokens_reserved=_int(tokens_reserved),
        )

    def get_usage(self, agent_id: str) -> UsageRecord:
        return self._record(agent_id, self._run(_DATA, "usage", agent_id, reads=True))

    def usages(self) -> list[UsageRecord]:
        flat = self._run(_DATA, "usages", reads=True)
        records = [self._record(flat[i], flat[i + 1 : i + 6]) for i in range(0, len(flat), 6)]
        return sorted(records, key=lambda r: r.agent_id)

    def increment_usage(self, agent_id: str, tokens: int, jobs: int) -> None:
        require_amount("tokens", tokens)
        require_amount("jobs", jobs)
        require_id("agent id", agent_id)
        self._run(_DATA, "add_usage", agent_id, str(tokens), str(jobs))

    def decrement_active_jobs(self, agent_id: str) -> None:
        require_id("agent id", agent_id)
        self._run(_DATA, "decrement_active", agent_id)

    def return_tokens(self, agent_id: str, tokens: int) -> None:
        require_amount("tokens", tokens)
        require_id("agent id", agent_id)
        self._run(_DATA, "return_tokens", agent_id, str(tokens))

    def reset_usage(self, agent_id: str) -> None:
        require_id("agent id", agent_id)
        self._run(_DATA, "reset", agent_id)

    def get_model_usage(self, model: str) -> ModelUsage:
        fields = self._run(_DATA, "model_usage", model, reads=True)
        period_start, tokens_used, tokens_reserved, cost_used, cost_reserved, count = fields
        return ModelUsage(
            model=model,
            tokens_used=_int(tokens_used),
            tokens_reserved=_int(tokens_reserved),
            cost_used=_int(cost_used),
            cost_reserved=_int(cost_reserved),
            requests_last_hour=_int(count),
            period_start=_dt(period_start),
        )

    def increment_model_usage(self, model: str, tokens: int) -> None:
        require_id("model", model)
        require_amount("tokens", tokens)
        self._run(_DATA, "add_model_tokens", model, str(tokens))

    # --- atomic quota operations ---
    @staticmethod
    def _describe(reply: list[str], model: str, tokens: int) -> tuple[Decision, str]:
        """quota.decide on the counters a check / refusal was decided on, and the
        period end; raises StoreError when it disagrees with the script."""
        _tag, rule, allowance_json, quota_json, *numbers = reply
        allowance = _parse(AgentAllowance, allowance_json)
        quota = _parse(ModelQuota, quota_json) if quota_json else None
        agent = AgentCounters(*(_int(n) for n in numbers[0:4]))
        tokens_used, tokens_reserved, cost_used, cost_reserved, count = map(_int, numbers[4:9])
        oldest, now, end = numbers[9:12]
        counters = ModelCounters(
            tokens_used,
            tokens_reserved,
            cost_used,
            cost_reserved,
            count,
            float(oldest) if oldest else None,
        )
        decision = decide(allowance, agent, quota, counters, model, tokens, float(now), float(end))
        if decision.allowed != (rule == "") or rule not in decision.reason:
            raise StoreError(
                "the Redis quota script and agentic.quota disagree"
                f" (script: {rule or 'allowed'!r}, Python: {decision.reason or 'allowed'!r});"
                " this is a bug in agentic, please report it"
            )
        return decision, end

    def check(self, agent_id: str, model: str = "", tokens: int = 0) -> QuotaCheckResult:
        require_id("agent id", agent_id)
        require_amount("tokens", tokens)
        reply = self._run(
            _RESERVE, "", agent_id, model, str(tokens), "1", self._default_ttl, "", reads=True
        )
        if reply[0] == "no allowance":
            raise no_allowance(agent_id)
        decision, end = self._describe(reply, model, tokens)
        return QuotaCheckResult(
            allowed=decision.allowed,
            status=decision.status,
            remaining_tokens=decision.remaining_tokens,
            remaining_jobs=decision.remaining_jobs,
            reason=decision.reason,
            reset_at=_dt(end),
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
        reply = self._run(
            _RESERVE, job_id, agent_id, model, str(tokens), "0", self._default_ttl, task_id
        )
        tag = reply[0]
        if tag == "conflict":
            raise ConflictError(
                f"job {job_id!r} was already settled or withdrawn; use a new job id"
            )
        if tag == "no allowance":
            raise no_allowance(agent_id)
        if tag == "denied":
            decision, _end = self._describe(reply, model, tokens)
            raise QuotaExceededError(decision.reason, decision.retry_after)
        *held, previous, status = reply[1:]
        # Plain strings: pydantic makes the enums faster than a Python call does.
        return _reservation(job_id, *held, previous_status=previous, status=status)

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
        owner, used = agent_id or "", model or ""
        return self._end(job_id, tokens_in, tokens_out, outcome, owner, used, task_id=task_id)

    def unreserve(self, job_id: str) -> Settlement:
        require_id("job id", job_id)
        return self._end(job_id, 0, 0, QuotaEvent.JOB_CANCELLED, "", "", "unreserve")

    def expire(self, job_id: str) -> Settlement:
        require_id("job id", job_id)
        return self._end(job_id, 0, 0, QuotaEvent.JOB_CANCELLED, "", "", "expire")

    def withdraw(self, job_id: str) -> Settlement:
        require_id("job id", job_id)
        return self._end(job_id, 0, 0, QuotaEvent.JOB_WITHDRAWN, "", "", "withdraw")

    def extend(self, job_id: str) -> Reservation:
        require_id("job id", job_id)
        reply = self._run(_EXTEND, job_id, self._default_ttl)
        if reply[0] == "not found":
            raise no_reservation(job_id, "extend")
        return _reservation(job_id, *reply[1:])

    def _end(
        self,
        job_id: str,
        tokens_in: int,
        tokens_out: int,
        outcome: QuotaEvent,
        agent_id: str,
        model: str,
        ending: Ending = "settle",
        task_id: str = "",
    ) -> Settlement:
        reply = self._run(
            _SETTLE,
            job_id,
            str(tokens_in),
            str(tokens_out),
            outcome.value,
            agent_id,
            model,
            repr(float(SETTLED_RETENTION)),
            ending,
            task_id,
        )
        if reply[0] == "not found":
            raise no_reservation(job_id, ending)
        tag, owner, used_model, done, charged, cost, previous, status = reply
        return Settlement(
            job_id=job_id,
            agent_id=owner,
            model=used_model,
            outcome=done,  # strings, as in reserve
            tokens_charged=_int(charged),
            cost_charged=_int(cost),
            duplicate=tag == "duplicate",
            previous_status=previous,
            status=status,
        )


def _reservation(
    job_id: str,
    owner: str,
    model: str,
    tokens: str,
    cost: str,
    created: str,
    expires: str,
    **status: str,
) -> Reservation:
    """A Reservation from a script's reply fields (reserve's and extend's)."""
    return Reservation(
        job_id=job_id,
        agent_id=owner,
        model=model,
        tokens=_int(tokens),
        cost=_int(cost),
        created_at=_dt(created),
        expires_at=_dt(expires),
        **status,
    )
