"""AllowanceStore contract on every backend: data operations, check, reserve, settle."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing

import pytest
from pydantic import ValidationError

from agentic.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
)
from agentic.models import AgentAllowance, AllowanceStatus, FailureCharge, ModelQuota, QuotaEvent
from agentic.quota import DAY, HOUR, MAX_RESERVATION_TTL
from agentic.stores.base import AllowanceStore
from tests.conftest import Backend

COMPLETED, FAILED, CANCELLED = (
    QuotaEvent.JOB_COMPLETED,
    QuotaEvent.JOB_FAILED,
    QuotaEvent.JOB_CANCELLED,
)


def allowance(**limits: object) -> AgentAllowance:
    return AgentAllowance.model_validate({"agent_id": "a1", **limits})


# --- configuration CRUD --------------------------------------------------------------


def test_allowance_crud(backend: Backend) -> None:
    """set/get allowance round-trips; allowances() lists them sorted."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=100, model_allowlist=["m1"]))
    store.set_allowance(AgentAllowance(agent_id="a0", daily_job_limit=5))
    assert store.get_allowance("a1").model_allowlist == ["m1"]
    assert [a.agent_id for a in store.allowances()] == ["a0", "a1"]
    store.set_allowance(allowance(daily_token_limit=7))
    assert store.get_allowance("a1").daily_token_limit == 7


def test_missing_allowance_and_quota_raise_not_found(backend: Backend) -> None:
    """Reading an allowance or model quota that was never set raises NotFoundError."""
    store = backend.allowance()
    with pytest.raises(NotFoundError):
        store.get_allowance("nobody")
    with pytest.raises(NotFoundError):
        store.get_model_quota("nomodel")


def test_model_quota_crud(backend: Backend) -> None:
    """set/get model quota round-trips, fractional prices included."""
    store = backend.allowance()
    store.set_model_quota(ModelQuota(model="m1", daily_token_budget=9, input_price=7.5))
    got = store.get_model_quota("m1")
    assert (got.daily_token_budget, got.input_price) == (9, 7.5)


# --- usage data operations -----------------------------------------------------------


def test_usage_starts_at_zero(backend: Backend) -> None:
    """An agent with no usage reads as zeros in the current period."""
    usage = backend.allowance().get_usage("a1")
    assert (usage.tokens_used, usage.jobs_started, usage.active_jobs) == (0, 0, 0)
    assert usage.period_start is not None


def test_increment_decrement_return_reset(backend: Backend) -> None:
    """The go-agentic data operations add, floor at zero and reset."""
    store = backend.allowance()
    store.increment_usage("a1", 100, 2)
    store.increment_usage("a1", 50, 0)
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.jobs_started, usage.active_jobs) == (150, 2, 2)
    for _ in range(3):
        store.decrement_active_jobs("a1")
    assert store.get_usage("a1").active_jobs == 0
    store.return_tokens("a1", 1000)
    assert store.get_usage("a1").tokens_used == 0
    store.increment_usage("a1", 10, 1)
    store.reset_usage("a1")
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.jobs_started) == (0, 0)


def test_usages_lists_agents_with_usage_or_allowance(backend: Backend) -> None:
    """usages() covers agents that have an allowance or counters, sorted by id."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="b"))
    store.increment_usage("a", 5, 1)
    assert [(u.agent_id, u.tokens_used) for u in store.usages()] == [("a", 5), ("b", 0)]


def test_model_usage(backend: Backend) -> None:
    """increment_model_usage adds tokens to the model's current period."""
    store = backend.allowance()
    store.increment_model_usage("m1", 30)
    store.increment_model_usage("m1", 12)
    assert store.get_model_usage("m1").tokens_used == 42


def test_negative_amounts_are_rejected(backend: Backend) -> None:
    """Negative tokens or jobs are a ConfigError and change nothing."""
    store = backend.allowance()
    with pytest.raises(ConfigError):
        store.increment_usage("a1", -5, 0)
    with pytest.raises(ConfigError):
        store.return_tokens("a1", -1)
    assert store.get_usage("a1").tokens_used == 0


def test_usage_rolls_over_at_day_boundary(backend: Backend) -> None:
    """Usage from yesterday reads as zero today with no reset call."""
    store = backend.allowance()
    store.increment_usage("a1", 100, 1)
    store.increment_model_usage("m1", 100)
    backend.clock.advance(DAY)
    assert store.get_usage("a1").tokens_used == 0
    assert store.get_model_usage("m1").tokens_used == 0


# --- check (go-agentic's branches, ported) ---------------------------------------------


def test_check_without_allowance_fails_closed(backend: Backend) -> None:
    """check() for an agent without an allowance raises NotFoundError."""
    with pytest.raises(NotFoundError):
        backend.allowance().check("nobody")


def test_check_unlimited_is_ok(backend: Backend) -> None:
    """An allowance of zeros is unlimited: allowed, ok, -1 remaining."""
    store = backend.allowance()
    store.set_allowance(allowance())
    result = store.check("a1", "m1", 10**9)
    assert result.allowed
    assert result.status == AllowanceStatus.OK
    assert (result.remaining_tokens, result.remaining_jobs) == (-1, -1)


def test_check_allowlist_checked_first(backend: Backend) -> None:
    """A model outside the allowlist is refused before any exhausted limit is named."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=10, model_allowlist=["good"]))
    store.increment_usage("a1", 10, 0)
    result = store.check("a1", "bad")
    assert not result.allowed
    assert "allowlist" in result.reason


def test_check_allowlist_admits_listed_and_empty_model(backend: Backend) -> None:
    """A listed model, or no model at all, passes the allowlist."""
    store = backend.allowance()
    store.set_allowance(allowance(model_allowlist=["good"]))
    assert store.check("a1", "good").allowed
    assert store.check("a1", "").allowed


def test_check_exact_80_percent_is_warning(backend: Backend) -> None:
    """At exactly 80% of the token limit the status is warning and the check passes."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=1000))
    store.increment_usage("a1", 799, 0)
    assert store.check("a1").status == AllowanceStatus.OK
    store.increment_usage("a1", 1, 0)
    result = store.check("a1")
    assert result.allowed
    assert result.status == AllowanceStatus.WARNING
    assert result.remaining_tokens == 200


def test_check_exact_100_percent_is_exceeded(backend: Backend) -> None:
    """Usage exactly at the token limit is exceeded, even for a zero-token request."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=1000))
    store.increment_usage("a1", 1000, 0)
    result = store.check("a1")
    assert not result.allowed
    assert result.status == AllowanceStatus.EXCEEDED
    assert result.remaining_tokens == 0
    assert result.reason == "daily token limit"
    assert result.retry_after is not None and result.retry_after > 0


def test_check_request_larger_than_remaining(backend: Backend) -> None:
    """A request bigger than what is left is refused; one that fits exactly passes."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=100))
    store.increment_usage("a1", 60, 0)
    assert store.check("a1", tokens=40).allowed
    assert not store.check("a1", tokens=41).allowed


def test_check_daily_jobs(backend: Backend) -> None:
    """No job may start once jobs_started reaches the daily job limit."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_job_limit=2))
    store.increment_usage("a1", 0, 2)
    result = store.check("a1")
    assert (result.allowed, result.reason, result.remaining_jobs) == (
        False,
        "daily job limit",
        0,
    )


def test_check_concurrency(backend: Backend) -> None:
    """Active jobs at the concurrency limit refuse a new job, with no retry time."""
    store = backend.allowance()
    store.set_allowance(allowance(concurrent_jobs=1))
    store.increment_usage("a1", 0, 1)
    result = store.check("a1")
    assert (result.allowed, result.reason, result.retry_after) == (
        False,
        "concurrent job limit",
        None,
    )


def test_check_model_budget(backend: Backend) -> None:
    """A model's daily budget, shared by all agents, refuses once used up."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.set_model_quota(ModelQuota(model="m1", daily_token_budget=500))
    store.increment_model_usage("m1", 500)
    result = store.check("a1", "m1")
    assert not result.allowed
    assert "budget" in result.reason
    assert store.check("a1", "other").allowed


def test_check_is_read_only(backend: Backend) -> None:
    """check() changes no counter, however often it runs."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_job_limit=1))
    for _ in range(5):
        assert store.check("a1", "m1", 10).allowed
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (0, 0, 0)
    assert store.get_model_usage("m1").requests_last_hour == 0


# --- reserve / settle ----------------------------------------------------------------


def test_reserve_counts_job_and_tokens(backend: Backend) -> None:
    """A reservation adds a job, an active slot, reserved tokens and a model request."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=1000))
    r = store.reserve("a1", "m1", 300, "job-1")
    assert (r.job_id, r.agent_id, r.model, r.tokens) == ("job-1", "a1", "m1", 300)
    assert r.expires_at is not None and r.created_at is not None
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (1, 1, 300)
    assert store.get_model_usage("m1").requests_last_hour == 1
    assert store.check("a1").remaining_tokens == 700


def test_reserve_is_idempotent_per_job(backend: Backend) -> None:
    """Reserving the same job id twice holds quota once."""
    store = backend.allowance()
    store.set_allowance(allowance())
    first = store.reserve("a1", "m1", 10, "job-1")
    again = store.reserve("a1", "m1", 10, "job-1")
    assert again.expires_at == first.expires_at
    assert store.get_usage("a1").jobs_started == 1


def test_denied_reserve_changes_nothing(backend: Backend) -> None:
    """A refused reservation raises QuotaExceededError and leaves every counter as it was."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=100))
    store.set_model_quota(ModelQuota(model="m1", hourly_rate_limit=5))
    with pytest.raises(QuotaExceededError) as info:
        store.reserve("a1", "m1", 101, "job-1")
    assert info.value.reason == "daily token limit"
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (0, 0, 0)
    assert store.get_model_usage("m1").requests_last_hour == 0
    # the job id is still free
    assert store.reserve("a1", "m1", 100, "job-1").tokens == 100


def test_reserve_without_allowance_fails_closed(backend: Backend) -> None:
    """Reserving for an agent with no allowance raises NotFoundError."""
    with pytest.raises(NotFoundError):
        backend.allowance().reserve("nobody", "", 0, "job-1")


def test_reservations_count_against_token_limit(backend: Backend) -> None:
    """Outstanding reservations count: two 60-token jobs cannot share a 100 limit."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=100))
    store.reserve("a1", "", 60, "j1")
    with pytest.raises(QuotaExceededError):
        store.reserve("a1", "", 60, "j2")


def test_settle_completed_charges_actual(backend: Backend) -> None:
    """A completed job frees its reservation and charges the actual tokens."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=1000))
    store.reserve("a1", "m1", 300, "j1")
    s = store.settle("j1", 100, 50, COMPLETED)
    assert (s.tokens_charged, s.duplicate, s.agent_id, s.model) == (150, False, "a1", "m1")
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.tokens_reserved, usage.active_jobs) == (150, 0, 0)
    assert usage.jobs_started == 1
    assert store.get_model_usage("m1").tokens_used == 150


def test_settle_charges_the_reserved_model_else_the_one_it_names(backend: Backend) -> None:
    """A settle charges the model reserved, whatever it names; a job reserved with no
    model is charged to the model the settle names (its usage report's), at that
    model's prices, leaving the model's live reservations alone."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.set_model_quota(ModelQuota(model="m1", input_price=100, output_price=300))
    store.reserve("a1", "m1", 10, "j1")
    store.reserve("a1", "", 10, "j2")
    store.reserve("a1", "m1", 7, "j3")  # still held at the end
    first = store.settle("j1", 10, 10, COMPLETED, model="m2")
    second = store.settle("j2", 10, 10, COMPLETED, agent_id="a1", model="m1")
    assert (first.model, second.model) == ("m1", "m1")
    assert (first.cost_charged, second.cost_charged) == (4000, 4000)  # 10 x 100 + 10 x 300
    m1 = store.get_model_usage("m1")
    assert (m1.tokens_used, m1.cost_used, m1.tokens_reserved) == (40, 8000, 7)
    assert store.get_model_usage("m2").tokens_used == 0


@pytest.mark.parametrize(
    ("tokens_in", "tokens_out", "charged"),
    [(4, 3, 4), (5, 5, 5), (1, 0, 1), (0, 0, 0), (1000, 0, 500)],
)
def test_settle_failed_returns_half_rounded_down(
    backend: Backend, tokens_in: int, tokens_out: int, charged: int
) -> None:
    """A failed job is charged total - total // 2 (7 tokens charge 4), model too: the
    default failure_charge, half."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "j1")
    assert store.settle("j1", tokens_in, tokens_out, FAILED).tokens_charged == charged
    assert store.get_usage("a1").tokens_used == charged
    assert store.get_model_usage("m1").tokens_used == charged


def test_failure_charge_round_trips_and_defaults_to_half(backend: Backend) -> None:
    """An allowance keeps its failure_charge; one set without it charges half."""
    store = backend.allowance()
    store.set_allowance(allowance(failure_charge="full"))
    store.set_allowance(AgentAllowance(agent_id="a0"))
    assert store.get_allowance("a1").failure_charge is FailureCharge.FULL
    assert [a.failure_charge for a in store.allowances()] == [
        FailureCharge.HALF,
        FailureCharge.FULL,
    ]


@pytest.mark.parametrize(("tokens_in", "tokens_out"), [(4, 3), (1, 0), (0, 0), (1000, 999)])
def test_settle_failed_with_full_failure_charge_charges_every_token(
    backend: Backend, tokens_in: int, tokens_out: int
) -> None:
    """With failure_charge full a failed job is charged all its tokens and its whole
    cost, agent and model alike."""
    store = backend.allowance()
    store.set_allowance(allowance(failure_charge="full"))
    store.set_model_quota(ModelQuota(model="m1", input_price=100, output_price=300))
    store.reserve("a1", "m1", 10, "j1")
    s = store.settle("j1", tokens_in, tokens_out, FAILED)
    total = tokens_in + tokens_out
    assert (s.tokens_charged, s.cost_charged) == (total, tokens_in * 100 + tokens_out * 300)
    assert store.get_usage("a1").tokens_used == total
    m1 = store.get_model_usage("m1")
    assert (m1.tokens_used, m1.cost_used) == (total, s.cost_charged)


def test_failure_charge_leaves_completed_and_cancelled_jobs_alone(backend: Backend) -> None:
    """failure_charge full changes only failed jobs: completed all, cancelled nothing."""
    store = backend.allowance()
    store.set_allowance(allowance(failure_charge="full"))
    store.reserve("a1", "", 10, "j1")
    store.reserve("a1", "", 10, "j2")
    assert store.settle("j1", 5, 2, COMPLETED).tokens_charged == 7
    assert store.settle("j2", 5, 2, CANCELLED).tokens_charged == 0
    assert store.get_usage("a1").tokens_used == 7


def test_failure_charge_is_the_one_set_at_the_settle(backend: Backend) -> None:
    """A job reserved under half and settled after the allowance changed to full (or
    back) is charged by the setting the settle reads."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "", 10, "j1")
    store.reserve("a1", "", 10, "j2")
    store.set_allowance(allowance(failure_charge="full"))
    assert store.settle("j1", 7, 0, FAILED).tokens_charged == 7
    store.set_allowance(allowance(failure_charge="half"))
    assert store.settle("j2", 7, 0, FAILED).tokens_charged == 4


def test_failed_settle_of_an_agent_without_allowance_charges_half(backend: Backend) -> None:
    """A failed job settled for an agent with no allowance (its reservation gone) is
    charged go-agentic's half."""
    store = backend.allowance()
    s = store.settle("gone", 7, 0, FAILED, agent_id="nobody")
    assert s.tokens_charged == 4
    assert store.get_usage("nobody").tokens_used == 4


def test_settle_cancelled_charges_nothing_and_keeps_others(backend: Backend) -> None:
    """A cancelled job charges nothing and never subtracts other jobs' usage."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "", 10, "j1")
    store.settle("j1", 80, 20, COMPLETED)
    store.reserve("a1", "", 10, "j2")
    assert store.settle("j2", 500, 500, CANCELLED).tokens_charged == 0
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (100, 0)


def test_settle_twice_changes_nothing(backend: Backend) -> None:
    """A repeated settle returns the first result marked duplicate and charges nothing."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "", 10, "j1")
    store.settle("j1", 10, 0, COMPLETED)
    again = store.settle("j1", 999, 999, COMPLETED)
    assert (again.duplicate, again.tokens_charged) == (True, 10)
    assert store.get_usage("a1").tokens_used == 10


def test_reserve_after_settle_is_conflict(backend: Backend) -> None:
    """A settled job id cannot be reserved again."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "", 1, "j1")
    store.settle("j1", 1, 0, COMPLETED)
    with pytest.raises(ConflictError):
        store.reserve("a1", "", 1, "j1")


def test_settle_unknown_job(backend: Backend) -> None:
    """Settling an unknown job needs agent_id; with it the tokens are still charged."""
    store = backend.allowance()
    with pytest.raises(NotFoundError):
        store.settle("nope", 1, 1, COMPLETED)
    s = store.settle("nope", 3, 4, COMPLETED, agent_id="a1", model="m1")
    assert s.tokens_charged == 7
    assert store.get_usage("a1").tokens_used == 7
    assert store.get_usage("a1").active_jobs == 0


def test_settle_rejects_job_started(backend: Backend) -> None:
    """job_started is not a final outcome: settle refuses it."""
    store = backend.allowance()
    with pytest.raises(ConfigError):
        store.settle("j1", 1, 1, QuotaEvent.JOB_STARTED, agent_id="a1")


def test_reservation_expires_and_frees_slot(backend: Backend) -> None:
    """A reservation older than max_job_duration frees its slot and tokens, charging nothing."""
    store = backend.allowance()
    store.set_allowance(allowance(concurrent_jobs=1, daily_token_limit=100, max_job_duration=60))
    store.reserve("a1", "m1", 100, "j1")
    with pytest.raises(QuotaExceededError):
        store.reserve("a1", "m1", 1, "j2")
    backend.clock.advance(61)
    usage = store.get_usage("a1")
    assert (usage.active_jobs, usage.tokens_reserved, usage.tokens_used) == (0, 0, 0)
    assert store.reserve("a1", "m1", 100, "j2").tokens == 100


def test_reservation_default_ttl(backend: Backend) -> None:
    """Without max_job_duration a reservation lives for the store's default ttl."""
    store = backend.allowance(reservation_ttl=120)
    store.set_allowance(allowance(concurrent_jobs=1))
    store.reserve("a1", "", 1, "j1")
    backend.clock.advance(119)
    assert not store.check("a1").allowed
    backend.clock.advance(2)
    assert store.check("a1").allowed


@pytest.mark.parametrize("ttl", [float("inf"), float("nan"), 1e15, 0])
def test_a_reservation_ttl_no_expiry_can_hold_is_refused(backend: Backend, ttl: float) -> None:
    """A reservation_ttl past MAX_RESERVATION_TTL (1e9 s) is refused when the store is
    built; an infinite one was taken, then every reserve failed (time_t overflow, or
    a year past 9999) with a message blaming the amounts."""
    with pytest.raises(ConfigError, match=r"reservation_ttl must be > 0 and <= 1000000000"):
        backend.allowance(reservation_ttl=ttl)
    store = backend.allowance(reservation_ttl=MAX_RESERVATION_TTL)
    store.set_allowance(allowance())
    reservation = store.reserve("a1", "", 1, "j1")
    assert reservation.expires_at is not None and reservation.created_at is not None
    assert (reservation.expires_at - reservation.created_at).total_seconds() == 1e9


def test_an_allowance_or_quota_it_could_not_read_back_is_refused(backend: Backend) -> None:
    """An infinite max_job_duration or price (through model_copy, which skips the
    checks) is a ConfigError naming the field, and what was stored stays: JSON has no
    inf, so it was written as null and every later read of it failed."""
    store = backend.allowance()
    kept, quota = allowance(max_job_duration=60), ModelQuota(model="m1", input_price=3)
    store.set_allowance(kept)
    store.set_model_quota(quota)
    with pytest.raises(ConfigError, match=r"invalid allowance: max_job_duration: .*finite"):
        store.set_allowance(kept.model_copy(update={"max_job_duration": float("inf")}))
    with pytest.raises(ConfigError, match=r"invalid allowance: daily_job_limit: .*equal to 0"):
        store.set_allowance(kept.model_copy(update={"daily_job_limit": -1}))
    with pytest.raises(ConfigError, match=r"invalid model quota: input_price: .*finite"):
        store.set_model_quota(quota.model_copy(update={"input_price": float("inf")}))
    assert (store.allowances(), store.get_model_quota("m1")) == ([kept], quota)
    with pytest.raises(ValueError, match="finite"):
        AgentAllowance(agent_id="a1", max_job_duration=float("inf"))


def _write_raw(backend: Backend, store: AllowanceStore, kind: str, key: str, raw: str) -> None:
    """Store ``raw`` as the JSON of an allowance (or a model quota): a record written
    by hand, damaged, or kept from before a bound existed."""
    if backend.name == "sqlite":
        assert backend.url is not None
        table, column = (
            ("allowances", "agent_id") if kind == "allowance" else ("model_quotas", "model")
        )
        with closing(sqlite3.connect(backend.url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute(f"UPDATE {table} SET data = ? WHERE {column} = ?", (raw, key))
    else:
        keys = store._keys  # type: ignore[attr-defined]
        name = keys.allowance(key) if kind == "allowance" else keys.limits(key)
        store._client.set(name, raw)  # type: ignore[attr-defined]


def test_limits_at_their_bounds_are_counted_exactly(backend: Backend) -> None:
    """Count limits of 2**50, a cost ceiling of 10**9 cents and a price of 10**6 cents
    per million tokens are kept, and a reserve to the last token or micro-cent of each
    is admitted and one past it refused, alike on every store (Lua doubles included)."""
    store = backend.allowance()
    big = 2**50
    store.set_allowance(allowance(daily_token_limit=big, daily_job_limit=big, concurrent_jobs=big))
    store.set_model_quota(ModelQuota(model="m1", daily_token_budget=big, hourly_rate_limit=big))
    store.reserve("a1", "m1", big - 1, "j1")
    with pytest.raises(QuotaExceededError, match="daily token limit"):
        store.reserve("a1", "m1", 2, "j2")
    assert store.reserve("a1", "m1", 1, "j2").tokens == 1
    assert store.check("a1").remaining_tokens == 0
    ceiling = ModelQuota(model="m2", cost_ceiling=10**9, input_price=1e6, output_price=1e6)
    store.set_allowance(allowance(agent_id="a2"))
    store.set_model_quota(ceiling)
    assert store.get_model_quota("m2") == ceiling
    # 10**9 tokens at a cent each: 10**15 micro-cents, the ceiling to the last one
    assert store.reserve("a2", "m2", 10**9 - 1, "k1").cost == 10**15 - 10**6
    with pytest.raises(QuotaExceededError, match="cost ceiling"):
        store.reserve("a2", "m2", 2, "k2")
    assert store.reserve("a2", "m2", 1, "k2").cost == 10**6
    assert store.get_model_usage("m2").cost_reserved == 10**15


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("daily_token_limit", 10**23, r"daily_token_limit: .*at most 2\*\*50 \(1125899906842624\)"),
        ("daily_job_limit", 2**50 + 1, r"daily_job_limit: .*at most 2\*\*50"),
        ("concurrent_jobs", 10**23, r"concurrent_jobs: .*at most 2\*\*50"),
        ("daily_token_budget", 10**23, r"daily_token_budget: .*at most 2\*\*50"),
        ("hourly_rate_limit", 10**23, r"hourly_rate_limit: .*at most 2\*\*50"),
        ("cost_ceiling", 10**9 + 1, r"cost_ceiling: .*at most 10\*\*9 cents a day"),
        ("input_price", 1e300, r"input_price: .*at most 10\*\*6 cents per million tokens"),
        ("output_price", 1e6 + 1, r"output_price: .*at most 10\*\*6 cents per million"),
    ],
)
def test_limits_past_what_every_store_counts_are_refused(
    backend: Backend, field: str, value: float, said: str
) -> None:
    """A limit past 2**50, a cost ceiling past 10**9 cents or a price past 10**6 cents
    per million tokens is a ConfigError naming the field and its bound, from the model
    and from every store's set (through model_copy, which skips the checks), and what
    was stored stays; they were stored, then a reserve failed (SQLite: "a number past
    SQLite's integers"; fakeredis: an OverflowError) or counted inexactly (Redis)."""
    store = backend.allowance()
    kept, quota = allowance(daily_token_limit=5), ModelQuota(model="m1", input_price=3)
    store.set_allowance(kept)
    store.set_model_quota(quota)
    with pytest.raises(ValueError, match=said.replace(": ", "\n  Value error, ", 1)):
        (AgentAllowance if field in AgentAllowance.model_fields else ModelQuota).model_validate(
            {"agent_id": "a1", "model": "m1", field: value}
        )
    with pytest.raises(ConfigError, match="invalid (allowance|model quota): " + said):
        if field in AgentAllowance.model_fields:
            store.set_allowance(kept.model_copy(update={field: value}))
        else:
            store.set_model_quota(quota.model_copy(update={field: value}))
    assert (store.allowances(), store.get_model_quota("m1")) == ([kept], quota)
    store.reserve("a1", "m1", 5, "j1")


def test_a_limit_stored_before_its_bound_still_loads(backend: Backend) -> None:
    """An allowance or a quota stored past a bound added since (a limit of 10**23, a
    price of 1e300) is read back as stored, so it can be shown and lowered: the bounds
    refuse what is written, as a task's counts are checked on create and update."""
    if backend.name == "memory":
        pytest.skip("a memory store keeps nothing from before")
    store = backend.allowance()
    store.set_allowance(allowance())
    store.set_model_quota(ModelQuota(model="m1"))
    _write_raw(
        backend,
        store,
        "allowance",
        "a1",
        '{"agent_id": "a1", "daily_token_limit": 100000000000000000000000}',
    )
    _write_raw(backend, store, "quota", "m1", '{"model": "m1", "input_price": 1e300}')
    assert store.get_allowance("a1").daily_token_limit == 10**23
    assert [a.agent_id for a in store.allowances()] == ["a1"]
    assert store.get_model_quota("m1").input_price == 1e300
    store.set_allowance(allowance(daily_token_limit=7))
    assert store.get_allowance("a1").daily_token_limit == 7


def test_a_job_duration_stored_before_its_bound_loads_as_the_bound(backend: Backend) -> None:
    """An allowance stored with a max_job_duration past 1e9 s (before that bound) loads
    with 1e9 s, and a reservation made under it lives 1e9 s on every store: it was read
    as corrupt, and a longer lifetime would be a time no clock holds."""
    if backend.name == "memory":
        pytest.skip("a memory store keeps nothing from before")
    store = backend.allowance()
    store.set_allowance(allowance())
    raw = allowance().model_dump_json().replace('"max_job_duration":0.0', '"max_job_duration":1e12')
    _write_raw(backend, store, "allowance", "a1", raw)
    assert store.get_allowance("a1").max_job_duration == MAX_RESERVATION_TTL
    reservation = store.reserve("a1", "", 5, "j1")
    assert reservation.expires_at is not None and reservation.created_at is not None
    assert (reservation.expires_at - reservation.created_at).total_seconds() == MAX_RESERVATION_TTL
    with pytest.raises(ValidationError, match=r"(?s)max_job_duration.*at most 1e9 seconds"):
        allowance(max_job_duration=1e12)


def test_amounts_past_what_every_store_counts_are_refused_alike(backend: Backend) -> None:
    """Token amounts above 2**50 are a ConfigError on every backend (Redis's Lua counts
    in doubles), nothing held or charged; 2**50 itself is taken."""
    store = backend.allowance()
    store.set_allowance(allowance())
    too_many = 2**50 + 1
    for call in (
        lambda: store.reserve("a1", "", too_many, "j1"),
        lambda: store.increment_usage("a1", too_many, 0),
        lambda: store.settle("j0", too_many, 0, COMPLETED, agent_id="a1"),
        lambda: store.settle("j0", 0, too_many, COMPLETED, agent_id="a1"),
    ):
        with pytest.raises(ConfigError, match=r"must be at most 2\*\*50 .* got 1125899906842625"):
            call()
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.tokens_reserved, usage.jobs_started) == (0, 0, 0)
    assert store.reserve("a1", "", 2**50, "j2").tokens == 2**50


def test_a_corrupt_allowance_or_quota_is_a_store_error_saying_so(backend: Backend) -> None:
    """An allowance or model quota whose stored JSON does not parse is a StoreError
    saying it is corrupt and where, on SQLite as on Redis (one function); SQLite
    raised pydantic's ValidationError, which no caller of a store expects."""
    if backend.name == "memory":
        pytest.skip("a memory store keeps the models themselves, no JSON")
    store = backend.allowance()
    store.set_allowance(allowance())
    store.set_model_quota(ModelQuota(model="m1"))
    _write_raw(backend, store, "allowance", "a1", '{"agent_id": "a1", "daily_job_limit": -1}')
    _write_raw(backend, store, "quota", "m1", "{not json")
    where = "SQLite store '" if backend.name == "sqlite" else "Redis"
    for read in (lambda: store.get_allowance("a1"), store.allowances):
        with pytest.raises(
            StoreError, match=f"(?s)corrupt AgentAllowance JSON in {where}.*daily_job_limit"
        ):
            read()
    with pytest.raises(StoreError, match=f"corrupt ModelQuota JSON in {where}"):
        store.get_model_quota("m1")
    store.set_allowance(allowance(daily_job_limit=2))  # what fixes it
    assert store.check("a1").remaining_jobs == 2


def test_settle_after_expiry_charges_with_agent(backend: Backend) -> None:
    """A job settled after its reservation expired is still charged, once."""
    store = backend.allowance()
    store.set_allowance(allowance(max_job_duration=10))
    store.reserve("a1", "", 5, "j1")
    backend.clock.advance(11)
    s = store.settle("j1", 5, 5, COMPLETED, agent_id="a1")
    assert s.tokens_charged == 10
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (10, 0)


def test_hourly_rate_is_a_rolling_hour(backend: Backend) -> None:
    """No more than the hourly limit of requests in any 60-minute span."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.set_model_quota(ModelQuota(model="m1", hourly_rate_limit=2))
    store.reserve("a1", "m1", 0, "j1")
    backend.clock.advance(1800)
    store.reserve("a1", "m1", 0, "j2")
    with pytest.raises(QuotaExceededError) as info:
        store.reserve("a1", "m1", 0, "j3")
    assert info.value.retry_after == pytest.approx(1800)
    backend.clock.advance(1799)
    with pytest.raises(QuotaExceededError):
        store.reserve("a1", "m1", 0, "j3")
    backend.clock.advance(2)
    store.reserve("a1", "m1", 0, "j3")
    with pytest.raises(QuotaExceededError):
        store.reserve("a1", "m1", 0, "j4")
    backend.clock.advance(HOUR)
    store.reserve("a1", "m1", 0, "j4")


def test_cost_ceiling_counts_reserved_then_actual(backend: Backend) -> None:
    """The cost ceiling holds the reserved estimate, then settles to the actual cost."""
    store = backend.allowance()
    store.set_allowance(allowance())
    # 100 cents per million tokens in, 300 out; ceiling 1 cent = 1,000,000 micro-cents
    store.set_model_quota(ModelQuota(model="m1", cost_ceiling=1, input_price=100, output_price=300))
    r = store.reserve("a1", "m1", 3000, "j1")  # estimate 3000 * 300 = 900,000
    assert r.cost == 900_000
    with pytest.raises(QuotaExceededError) as info:
        store.reserve("a1", "m1", 400, "j2")  # 120,000 more would pass the ceiling
    assert "cost ceiling" in info.value.reason
    s = store.settle("j1", 1000, 1000, COMPLETED)  # actual 100,000 + 300,000
    assert s.cost_charged == 400_000
    assert store.get_model_usage("m1").cost_used == 400_000
    store.reserve("a1", "m1", 2000, "j2")  # 600,000: exactly at the ceiling
    with pytest.raises(QuotaExceededError):
        store.reserve("a1", "m1", 0, "j3")


def test_model_budget_counts_reservations_of_all_agents(backend: Backend) -> None:
    """The model budget is shared: reservations of other agents count against it."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.set_allowance(AgentAllowance(agent_id="b"))
    store.set_model_quota(ModelQuota(model="m1", daily_token_budget=100))
    store.reserve("a", "m1", 70, "j1")
    with pytest.raises(QuotaExceededError):
        store.reserve("b", "m1", 31, "j2")
    store.reserve("b", "m1", 30, "j2")


def test_quota_rolls_over_at_midnight(backend: Backend) -> None:
    """Crossing midnight frees the daily token and job quota with no reset call."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=100, daily_job_limit=1))
    store.reserve("a1", "", 50, "j1")
    store.settle("j1", 100, 0, COMPLETED)
    assert not store.check("a1").allowed
    backend.clock.advance(DAY)
    result = store.check("a1", tokens=100)
    assert result.allowed
    assert result.remaining_jobs == 1


def test_reserve_on_a_new_day_rolls_the_rows_over(backend: Backend) -> None:
    """A day's first reserve stores its agent's and model's rows rolled into the new day."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.set_model_quota(ModelQuota(model="m1", input_price=1))
    store.reserve("a1", "m1", 50, "j1")
    store.settle("j1", 100, 0, COMPLETED)
    backend.clock.advance(DAY)
    store.reserve("a1", "m1", 30, "j2")
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.jobs_started, usage.active_jobs) == (0, 1, 1)
    assert usage.tokens_reserved == 30
    model = store.get_model_usage("m1")
    assert (model.tokens_used, model.cost_used, model.tokens_reserved) == (0, 0, 30)
    assert model.period_start == usage.period_start


def test_reserve_and_settle_report_status_crossing(backend: Backend) -> None:
    """A reservation and a settle report the status before and after them: of the
    tokens used (80%, 100%) and jobs started, never of the tokens reserved."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=100, daily_job_limit=3))
    first = store.reserve("a1", "", 100, "j1")  # all of it held: nothing used yet
    assert (first.previous_status, first.status) == (AllowanceStatus.OK, AllowanceStatus.OK)
    done = store.settle("j1", 80, 0, COMPLETED)
    assert (done.previous_status, done.status) == (AllowanceStatus.OK, AllowanceStatus.WARNING)
    store.reserve("a1", "", 5, "j2")
    last = store.reserve("a1", "", 5, "j3")  # the day's last job
    assert (last.previous_status, last.status) == (
        AllowanceStatus.WARNING,
        AllowanceStatus.EXCEEDED,
    )


# --- unreserve: a job that never started ----------------------------------------------


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [("unreserve", QuotaEvent.JOB_CANCELLED), ("withdraw", QuotaEvent.JOB_WITHDRAWN)],
)
def test_unreserve_undoes_the_reservation_whole(
    backend: Backend, ending: str, outcome: QuotaEvent
) -> None:
    """unreserve (and withdraw, of a held reservation) gives back the job, the slot, the
    tokens, the cost and the hour's request."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=1000, daily_job_limit=1, concurrent_jobs=1))
    store.set_model_quota(
        ModelQuota(model="m1", hourly_rate_limit=1, cost_ceiling=1, input_price=100)
    )
    store.reserve("a1", "m1", 300, "j1")
    done = getattr(store, ending)("j1")
    assert (done.job_id, done.agent_id, done.model) == ("j1", "a1", "m1")
    assert (done.outcome, done.tokens_charged, done.cost_charged) == (outcome, 0, 0)
    assert not done.duplicate
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (0, 0, 0)
    assert usage.tokens_used == 0
    model = store.get_model_usage("m1")
    assert (model.requests_last_hour, model.tokens_reserved, model.cost_reserved) == (0, 0, 0)
    # every limit it touched (one job, one slot, one request an hour) admits again
    store.reserve("a1", "m1", 300, "j2")


def test_unreserve_keeps_other_jobs(backend: Backend) -> None:
    """unreserve takes back only its own job and request; other reservations stay whole."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "j1")
    store.reserve("a1", "m1", 20, "j2")
    store.settle("j1", 5, 5, COMPLETED)
    store.unreserve("j2")
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (1, 0, 0)
    assert usage.tokens_used == 10
    assert store.get_model_usage("m1").requests_last_hour == 1


def test_unreserve_leaves_nothing_a_late_settle_could_hide_behind(backend: Backend) -> None:
    """After unreserve a repeat is NotFoundError and a late settle still charges its tokens."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "j1")
    store.unreserve("j1")
    with pytest.raises(NotFoundError):
        store.unreserve("j1")
    # the job ran after all (its claim was made): what it used is charged
    late = store.settle("j1", 50, 50, COMPLETED, agent_id="a1", model="m1")
    assert (late.duplicate, late.outcome, late.tokens_charged) == (False, COMPLETED, 100)
    assert store.get_usage("a1").tokens_used == 100
    assert store.get_model_usage("m1").tokens_used == 100


@pytest.mark.parametrize("ending", ["unreserve", "withdraw"])
def test_unreserve_after_settle_is_a_duplicate(backend: Backend, ending: str) -> None:
    """unreserve (or withdraw) of a settled job changes nothing and returns the settlement."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "j2")
    store.settle("j2", 3, 3, COMPLETED)
    again = getattr(store, ending)("j2")
    assert (again.duplicate, again.outcome, again.tokens_charged) == (True, COMPLETED, 6)
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.tokens_used) == (1, 6)


def test_unreserve_of_an_unknown_or_expired_job_is_not_found(backend: Backend) -> None:
    """With no live reservation there is nothing to undo: NotFoundError, nothing changes."""
    store = backend.allowance()
    store.set_allowance(allowance(max_job_duration=10))
    with pytest.raises(NotFoundError, match="nothing to unreserve"):
        store.unreserve("never")
    store.reserve("a1", "", 0, "j1")
    backend.clock.advance(10)
    with pytest.raises(NotFoundError):
        store.unreserve("j1")
    assert store.get_usage("a1").jobs_started == 1  # an expired job stays counted


def test_unreserve_across_midnight_leaves_the_new_day_alone(backend: Backend) -> None:
    """A reservation of yesterday unreserved today does not lower today's job count."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_job_limit=2, max_job_duration=2 * DAY))
    store.reserve("a1", "", 0, "old")
    backend.clock.advance(DAY)
    store.reserve("a1", "", 0, "new")
    store.unreserve("old")
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs) == (1, 1)


def test_unreserve_after_a_reset_leaves_later_jobs_counted(backend: Backend) -> None:
    """A reservation made before reset_usage, unreserved after it, takes back no later job."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_job_limit=1))
    store.reserve("a1", "", 0, "before")
    backend.clock.advance(1)
    store.reset_usage("a1")
    backend.clock.advance(1)
    store.reserve("a1", "", 0, "after")
    store.unreserve("before")
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs) == (1, 1)
    with pytest.raises(QuotaExceededError, match="daily job limit"):
        store.reserve("a1", "", 0, "one too many")
    # a reservation made after the reset is today's job: its unreserve gives it back
    store.unreserve("after")
    assert store.get_usage("a1").jobs_started == 0


def test_unreserve_of_a_reservation_made_at_the_reset_instant_keeps_the_count(
    backend: Backend,
) -> None:
    """At the reset's own instant the order is unknown: the job stays counted (the safe side)."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_job_limit=1))
    store.reserve("a1", "", 0, "same instant")
    store.reset_usage("a1")
    store.reserve("a1", "", 0, "later")
    store.unreserve("same instant")
    assert store.get_usage("a1").jobs_started == 1


# --- expire: a dead attempt's reservation, ended now ----------------------------------


def test_expire_frees_the_hold_and_keeps_the_job(backend: Backend) -> None:
    """expire gives back the slot, tokens and cost; the job and its request stay counted."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_token_limit=1000, concurrent_jobs=1))
    store.set_model_quota(ModelQuota(model="m1", cost_ceiling=1, input_price=100))
    store.reserve("a1", "m1", 300, "j1")
    done = store.expire("j1")
    assert (done.agent_id, done.model, done.tokens_charged, done.duplicate) == (
        "a1",
        "m1",
        0,
        False,
    )
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (1, 0, 0)
    model = store.get_model_usage("m1")
    assert (model.requests_last_hour, model.tokens_reserved, model.cost_reserved) == (1, 0, 0)
    store.reserve("a1", "m1", 300, "j2")  # the slot is free again


def test_expired_attempt_that_was_alive_still_gets_charged(backend: Backend) -> None:
    """After expire, the attempt's own settle (it was alive) charges what it used."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "j1")
    store.expire("j1")
    with pytest.raises(NotFoundError, match="nothing to expire"):
        store.expire("j1")
    late = store.settle("j1", 40, 20, COMPLETED, agent_id="a1", model="m1")
    assert (late.duplicate, late.tokens_charged) == (False, 60)
    assert store.get_usage("a1").tokens_used == 60
    assert store.expire("j1").duplicate  # settled now: unchanged


def test_a_job_ended_early_and_reserved_again_is_released_once(backend: Backend) -> None:
    """expire then reserve the same job id at one instant: at its expiry the job is
    released once, and another job's hold is left alone."""
    store = backend.allowance()
    store.set_allowance(allowance(max_job_duration=100))
    store.reserve("a1", "", 5, "j")
    store.expire("j")
    store.reserve("a1", "", 5, "j")
    backend.clock.advance(50)
    store.reserve("a1", "", 5, "other")
    backend.clock.advance(60)  # j's reservation expires; other's lives on
    usage = store.get_usage("a1")
    assert (usage.active_jobs, usage.tokens_reserved) == (1, 5)


# --- extend: a running job keeps its reservation ------------------------------------


def test_extend_keeps_a_running_job_past_its_first_expiry(backend: Backend) -> None:
    """extend pushes the expiry to now plus the lifetime: still held past the first one."""
    store = backend.allowance(reservation_ttl=100)
    store.set_allowance(allowance(concurrent_jobs=1, daily_token_limit=1000))
    first = store.reserve("a1", "m1", 300, "j1")
    backend.clock.advance(60)
    extended = store.extend("j1")
    assert first.expires_at is not None and extended.expires_at is not None
    assert (extended.expires_at - first.expires_at).total_seconds() == 60
    assert (extended.job_id, extended.agent_id, extended.model, extended.tokens) == (
        "j1",
        "a1",
        "m1",
        300,
    )
    assert extended.created_at == first.created_at
    backend.clock.advance(90)  # past the first expiry, before the new one
    with pytest.raises(QuotaExceededError, match="concurrent job limit"):
        store.reserve("a1", "m1", 1, "j2")
    usage = store.get_usage("a1")
    assert (usage.active_jobs, usage.tokens_reserved) == (1, 300)
    backend.clock.advance(11)  # the new expiry passed: swept as any other
    assert store.get_usage("a1").active_jobs == 0
    store.reserve("a1", "m1", 1, "j2")


def test_extend_renews_the_lifetime_the_job_was_reserved_with(backend: Backend) -> None:
    """The lifetime is the reservation's own: max_job_duration, else the store's ttl."""
    store = backend.allowance(reservation_ttl=100)
    store.set_allowance(allowance(max_job_duration=30))
    store.reserve("a1", "", 0, "short")
    store.set_allowance(allowance())  # changed since: the reservation keeps its 30 s
    store.reserve("a1", "", 0, "default")
    backend.clock.advance(20)
    short, default = store.extend("short"), store.extend("default")
    now = backend.clock()
    assert short.expires_at is not None and default.expires_at is not None
    assert (short.expires_at.timestamp() - now, default.expires_at.timestamp() - now) == (30, 100)


def test_extend_never_shortens(backend: Backend) -> None:
    """An extend right after the reserve (or twice at once) leaves the expiry as it is."""
    store = backend.allowance(reservation_ttl=100)
    store.set_allowance(allowance())
    made = store.reserve("a1", "", 0, "j1")
    assert store.extend("j1").expires_at == made.expires_at
    backend.clock.advance(10)
    later = store.extend("j1")
    assert store.extend("j1").expires_at == later.expires_at


def test_extend_of_a_gone_reservation_is_not_found(backend: Backend) -> None:
    """Unknown, settled, unreserved, expired (swept or not yet): NotFoundError, nothing changes."""
    store = backend.allowance(reservation_ttl=100)
    store.set_allowance(allowance())
    with pytest.raises(NotFoundError, match="nothing to extend"):
        store.extend("never")
    for job in ("settled", "unreserved", "expired"):
        store.reserve("a1", "", 0, job)
    store.settle("settled", 1, 1, COMPLETED)
    store.unreserve("unreserved")
    store.expire("expired")
    store.reserve("a1", "", 0, "late")
    backend.clock.advance(100)  # late's expiry: nobody swept it yet
    before = store.get_usage("a1")
    for job in ("settled", "unreserved", "expired", "late"):
        with pytest.raises(NotFoundError, match="nothing to extend"):
            store.extend(job)
    after = store.get_usage("a1")
    assert after == before
    assert (after.active_jobs, after.jobs_started, after.tokens_used) == (0, 3, 2)
    # the late job's settle still charges it, as after any expiry
    assert store.settle("late", 4, 0, COMPLETED, agent_id="a1").tokens_charged == 4


def _forget_lifetime(backend: Backend, store: AllowanceStore, job_id: str) -> None:
    """Make the reservation look written by a version that did not record its lifetime."""
    if backend.name == "memory":
        tx = store._tx  # type: ignore[attr-defined]
        tx.held[job_id] = dataclasses.replace(tx.held[job_id], ttl=0.0)
    elif backend.name == "sqlite":
        assert backend.url is not None
        with closing(sqlite3.connect(backend.url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute("UPDATE reservations SET ttl = 0 WHERE job_id = ?", (job_id,))
    else:
        client = store._client  # type: ignore[attr-defined]
        assert client.hdel(store._keys.held_head + job_id, "ttl") == 1  # type: ignore[attr-defined]


def test_extend_of_a_reservation_without_its_lifetime_uses_the_store_ttl(
    backend: Backend,
) -> None:
    """A reservation an older version stored (no lifetime) extends by the store's ttl."""
    store = backend.allowance(reservation_ttl=100)
    store.set_allowance(allowance(max_job_duration=30))
    store.reserve("a1", "", 0, "old")
    _forget_lifetime(backend, store, "old")
    backend.clock.advance(20)
    extended = store.extend("old")
    assert extended.expires_at is not None
    assert extended.expires_at.timestamp() - backend.clock() == 100
