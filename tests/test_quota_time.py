"""Quotas across time on every backend: the local day of a configured timezone (DST,
half-hour zones), work that spans midnight, the rolling hour's edges, and a wall
clock that steps backwards."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agentic.errors import QuotaExceededError
from agentic.models import AgentAllowance, ModelQuota, QuotaEvent
from agentic.quota import DAY, HOUR, cost_microcents, day_starts, period_bounds
from agentic.stores.redis import RedisAllowanceStore
from agentic.stores.redis import allowance as redis_allowance
from agentic.testing import FakeClock
from tests.conftest import Backend

COMPLETED = QuotaEvent.JOB_COMPLETED


def local_midnight(zone: ZoneInfo, day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), zone)


# Days whose length is not 24 hours, and a zone whose offset is not whole hours.
DAYS = [
    ("America/New_York", date(2026, 11, 1), 25),  # falls back 02:00 -> 01:00
    ("America/New_York", date(2026, 3, 8), 23),  # springs forward 02:00 -> 03:00
    ("Australia/Lord_Howe", date(2026, 4, 5), 24.5),  # falls back half an hour
    ("Australia/Lord_Howe", date(2026, 10, 4), 23.5),  # springs forward half an hour
    ("Asia/Kolkata", date(2026, 6, 1), 24),  # +05:30 all year
]


@pytest.mark.parametrize(("zone_name", "day", "hours"), DAYS)
def test_day_starts_are_local_midnights(zone_name: str, day: date, hours: float) -> None:
    """The quota day is the local calendar day, however long the clocks make it."""
    zone = ZoneInfo(zone_name)
    noon = local_midnight(zone, day) + timedelta(hours=12)
    starts = day_starts(zone, noon.timestamp())
    assert starts[1] == local_midnight(zone, day).timestamp()
    assert starts[2] == local_midnight(zone, day + timedelta(days=1)).timestamp()
    assert (starts[2] - starts[1]) / HOUR == hours


@pytest.mark.parametrize(("zone_name", "day", "hours"), DAYS)
def test_a_clock_up_to_a_day_off_picks_the_same_day(
    zone_name: str, day: date, hours: float
) -> None:
    """Day starts worked out at one clock place any instant within a day of it in the
    right local day (Redis picks by its own time among starts sent by the client)."""
    zone = ZoneInfo(zone_name)
    begin = local_midnight(zone, day).timestamp()
    for now in (begin - 1, begin, begin + 90 * 60, begin + 150 * 60, begin + hours * HOUR - 1):
        right = period_bounds(now, day_starts(zone, now))
        for skew in (-DAY + 1, -3 * HOUR, 3 * HOUR, DAY - 1):
            assert period_bounds(now, day_starts(zone, now + skew)) == right
    # Farther off, whole days from the nearest start known (exact in a fixed zone).
    utc = day_starts(UTC, begin)
    assert period_bounds(begin + 10 * DAY + 5, utc) == (utc[0] + 11 * DAY, utc[0] + 12 * DAY)
    assert period_bounds(utc[0] - 2 * DAY - 5, utc) == (utc[0] - 3 * DAY, utc[0] - 2 * DAY)


@pytest.mark.parametrize(("zone_name", "day", "hours"), DAYS)
def test_a_dst_day_is_one_quota_period(
    backend: Backend, zone_name: str, day: date, hours: float
) -> None:
    """A day's quota lasts the whole local day, 23 or 25 hours (23.5 / 24.5 on Lord
    Howe), never resetting at a DST change, and the reset time reported is the next
    local midnight."""
    zone = ZoneInfo(zone_name)
    begin = local_midnight(zone, day)
    end = local_midnight(zone, day + timedelta(days=1))
    backend.clock.set(begin + timedelta(minutes=10))
    store = backend.allowance(tz=zone)
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=100))
    store.reserve("a", "", 100, "j1")
    store.settle("j1", 100, 0, COMPLETED)
    assert store.get_usage("a").period_start == begin
    moments = [begin.timestamp() + n * 1800 for n in range(1, int(hours * 2))]
    for moment in [*moments, end.timestamp() - 1]:
        backend.clock.set(moment)
        check = store.check("a")
        assert not check.allowed, datetime.fromtimestamp(moment, zone)
        assert check.reset_at == end
    backend.clock.set(end)
    assert store.check("a", tokens=100).allowed
    assert store.get_usage("a").period_start == end


@pytest.mark.parametrize(("zone_name", "day", "hours"), DAYS[:4])
def test_redis_picks_the_day_by_its_own_time_across_a_dst_change(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, zone_name: str, day: date, hours: float
) -> None:
    """With this machine's clock hours off the Redis server's, the quota day is still
    the server's local day, on either side of a DST change."""
    zone = ZoneInfo(zone_name)
    begin = local_midnight(zone, day).timestamp()
    clock = FakeClock(begin + 150 * 60)  # the server's time: past the change
    skew = [0.0]

    def skewed(_clock: object) -> tuple[str, float]:
        return repr(clock()), clock() + skew[0]  # "now" sent, and this machine's idea

    monkeypatch.setattr(redis_allowance, "now_arg", skewed)
    prefix = f"skew{uuid.uuid4().hex[:10]}"
    store = RedisAllowanceStore(redis_client, prefix=prefix, clock=clock, tz=zone)
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=100))
    store.reserve("a", "", 100, "j1")
    store.settle("j1", 100, 0, COMPLETED)
    for offset in (-20 * HOUR, -3 * HOUR, 3 * HOUR, 20 * HOUR):
        skew[0] = offset
        check = store.check("a")
        assert not check.allowed
        assert check.reset_at == datetime.fromtimestamp(begin + hours * HOUR, UTC)
        assert store.get_usage("a").period_start == datetime.fromtimestamp(begin, UTC)


def test_a_job_reserved_before_midnight_is_charged_the_day_it_settles(backend: Backend) -> None:
    """A job reserved before midnight and settled after it is charged to the new day
    (its tokens and cost), counted as a job of the old day only, and frees its slot
    and reserved tokens and cost."""
    store = backend.allowance()
    store.set_allowance(
        AgentAllowance(agent_id="a", daily_token_limit=1000, daily_job_limit=1, concurrent_jobs=1)
    )
    store.set_model_quota(ModelQuota(model="m", cost_ceiling=1, input_price=100, output_price=100))
    midnight = (backend.clock() // DAY + 1) * DAY
    backend.clock.set(midnight - 600)
    store.reserve("a", "m", 800, "j1")
    backend.clock.set(midnight + 600)
    usage = store.get_usage("a")
    assert (usage.tokens_used, usage.jobs_started, usage.active_jobs) == (0, 0, 1)
    assert usage.tokens_reserved == 800  # held into the new day until it settles
    settled = store.settle("j1", 200, 100, COMPLETED)
    assert (settled.tokens_charged, settled.cost_charged) == (300, 30_000)
    usage = store.get_usage("a")
    assert (usage.tokens_used, usage.jobs_started, usage.active_jobs) == (300, 0, 0)
    assert usage.tokens_reserved == 0
    model = store.get_model_usage("m")
    assert (model.tokens_used, model.cost_used, model.tokens_reserved, model.cost_reserved) == (
        300,
        30_000,
        0,
        0,
    )
    assert store.check("a", "m", 700).allowed
    assert not store.check("a", "m", 701).allowed


def test_a_reservation_expiring_after_midnight_frees_the_new_day(backend: Backend) -> None:
    """A reservation of yesterday that expires today gives its slot and reserved tokens
    back without touching today's counts."""
    store = backend.allowance()
    store.set_allowance(
        AgentAllowance(
            agent_id="a", daily_token_limit=100, concurrent_jobs=1, max_job_duration=1200
        )
    )
    midnight = (backend.clock() // DAY + 1) * DAY
    backend.clock.set(midnight - 600)
    store.reserve("a", "", 90, "old")
    backend.clock.set(midnight + 300)
    store.increment_usage("a", 5, 0)
    assert not store.check("a", tokens=10).allowed  # 5 used + 90 still held
    backend.clock.set(midnight + 600)
    usage = store.get_usage("a")
    assert (usage.tokens_used, usage.tokens_reserved, usage.active_jobs) == (5, 0, 0)
    assert store.check("a", tokens=95).allowed


def test_the_rolling_hour_ends_exactly_sixty_minutes_after_a_request(backend: Backend) -> None:
    """Requests of one instant each count; each leaves the hour exactly 3600 s later,
    and a refusal's retry time is when the oldest one leaves."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.set_model_quota(ModelQuota(model="m", hourly_rate_limit=3))
    start = backend.clock()
    for n in range(3):
        store.reserve("a", "m", 0, f"j{n}")  # the same instant
    with pytest.raises(QuotaExceededError) as refused:
        store.reserve("a", "m", 0, "j3")
    assert refused.value.retry_after == HOUR
    store.settle("j0", 1, 1, QuotaEvent.JOB_FAILED)  # a failed job was a request
    store.withdraw("j1")  # a withdrawn one was not
    store.reserve("a", "m", 0, "j3")
    backend.clock.set(start + HOUR - 0.001)
    assert store.get_model_usage("m").requests_last_hour == 3
    assert not store.check("a", "m").allowed
    backend.clock.set(start + HOUR)
    assert store.get_model_usage("m").requests_last_hour == 0
    for n in range(4, 7):
        store.reserve("a", "m", 0, f"j{n}")


def test_a_clock_stepped_back_counts_the_rolling_hour_by_request_times(backend: Backend) -> None:
    """After the clock steps back, the hour holds exactly the requests made in the 3600
    seconds before now, whichever order they were made in."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.set_model_quota(ModelQuota(model="m", hourly_rate_limit=2))
    start = backend.clock()
    store.reserve("a", "m", 0, "j1")
    backend.clock.set(start - 600)  # NTP steps the clock back ten minutes
    store.reserve("a", "m", 0, "j2")
    with pytest.raises(QuotaExceededError) as refused:
        store.reserve("a", "m", 0, "j3")
    assert refused.value.retry_after == HOUR  # when j2, the oldest, leaves
    backend.clock.set(start + HOUR - 300)  # j2 has left the hour, j1 has not
    assert store.get_model_usage("m").requests_last_hour == 1
    store.reserve("a", "m", 0, "j3")
    with pytest.raises(QuotaExceededError) as refused:
        store.reserve("a", "m", 0, "j4")
    assert refused.value.retry_after == 300  # when j1 leaves


def test_a_clock_stepped_back_over_midnight_keeps_the_day_used(backend: Backend) -> None:
    """A clock stepped back across midnight neither gives the day's quota again nor
    loses what was used, and stepping forward again does not start the day twice."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=100))
    store.set_model_quota(ModelQuota(model="m", daily_token_budget=100))
    midnight = (backend.clock() // DAY + 1) * DAY
    backend.clock.set(midnight + 60)
    store.reserve("a", "m", 60, "j1")
    store.settle("j1", 60, 0, COMPLETED)
    backend.clock.set(midnight - 120)  # back into yesterday
    assert not store.check("a", "m", 41).allowed
    store.reserve("a", "m", 40, "j2")
    store.settle("j2", 40, 0, COMPLETED)
    backend.clock.set(midnight + 120)  # today again
    assert not store.check("a").allowed
    assert store.get_usage("a").tokens_used == 100
    assert store.get_model_usage("m").tokens_used == 100
    backend.clock.set(midnight + DAY)
    assert store.check("a", "m", 100).allowed


def test_a_price_changed_mid_job_settles_at_the_price_of_the_settle(backend: Backend) -> None:
    """A job reserved at one price and settled after a price change is charged at the
    new price, and gives back exactly the estimate it held."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.set_model_quota(ModelQuota(model="m", input_price=100, output_price=300))
    held = store.reserve("a", "m", 1000, "j1")
    assert held.cost == 300_000
    store.set_model_quota(ModelQuota(model="m", input_price=200, output_price=200))
    settled = store.settle("j1", 500, 500, COMPLETED)
    assert settled.cost_charged == 200_000
    usage = store.get_model_usage("m")
    assert (usage.cost_used, usage.cost_reserved) == (200_000, 0)


def test_a_ceiling_or_limit_lowered_under_use_admits_nothing_more(backend: Backend) -> None:
    """Limits lowered below what is used or held refuse every new job, a zero-sized or
    free one too; raised again, they admit at once."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=5000, concurrent_jobs=3))
    store.set_model_quota(ModelQuota(model="m", cost_ceiling=10, input_price=1000))
    store.set_model_quota(ModelQuota(model="free", cost_ceiling=1))
    store.reserve("a", "m", 4000, "j1")  # 4 cents held of 10
    store.settle("j1", 4000, 0, COMPLETED)
    store.reserve("a", "m", 500, "j2")  # 0.5 cent held, running
    store.set_model_quota(ModelQuota(model="m", cost_ceiling=4, input_price=1000))
    assert not store.check("a", "m", 0).allowed
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=4400, concurrent_jobs=1))
    for model, tokens in (("", 0), ("free", 0), ("", 1)):
        with pytest.raises(QuotaExceededError):
            store.reserve("a", model, tokens, "j3")
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=6000, concurrent_jobs=2))
    store.set_model_quota(ModelQuota(model="m", cost_ceiling=5, input_price=1000))
    store.reserve("a", "m", 500, "j3")  # 4 + 0.5 + 0.5 cents: exactly the ceiling
    assert not store.check("a", "free", 0).allowed  # two jobs running: the slots are full


def test_costs_are_rounded_alike_everywhere(backend: Backend) -> None:
    """A failed job's odd token count, and prices with fractions of a micro-cent a
    token, give the same whole micro-cents on every backend as the pure rules."""
    store = backend.allowance()
    store.set_allowance(AgentAllowance(agent_id="a"))
    quota = ModelQuota(model="m", input_price=0.7, output_price=2.5)
    store.set_model_quota(quota)
    store.reserve("a", "m", 7, "j1")
    settled = store.settle("j1", 5, 2, QuotaEvent.JOB_FAILED)
    # 5 * 0.7 + 2 * 2.5 = 8.5 micro-cents, rounded half up: 9; 4 of the 7 tokens
    # charged (7 - 7 // 2): 9 * 4 // 7 = 5
    assert (settled.tokens_charged, settled.cost_charged) == (4, 5)
    store.reserve("a", "m", 45, "j2")
    # 45 * 0.7 is 31.499999999999996 in doubles, so 31, not the 32 that 31.5 would
    # round to: a price is a double, and every backend rounds that same double
    assert store.settle("j2", 45, 0, COMPLETED).cost_charged == cost_microcents(quota, 45, 0)
    assert cost_microcents(quota, 45, 0) == 31
    store.set_model_quota(ModelQuota(model="free", cost_ceiling=1))
    store.reserve("a", "free", 10**6, "j3")
    assert store.settle("j3", 10**6, 0, COMPLETED).cost_charged == 0
    assert store.get_model_usage("m").cost_used == 36
