"""Property: ``quota.never_fits`` says a job can never pass exactly when ``decide``,
and every store's reserve, refuse it on a day with nothing used or reserved."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentic.errors import QuotaExceededError
from agentic.models import AgentAllowance, ModelQuota
from agentic.quota import DAY, AgentCounters, ModelCounters, decide, never_fits
from agentic.stores.base import AllowanceStore
from agentic.testing import FakeClock
from tests.conftest import RedisServer, _memory, _redis, _sqlite, fake_redis_6

MODELS = ["", "m1", "m2"]
# Small limits around the estimates drawn, and 0 (unlimited) often.
limits = st.one_of(st.just(0), st.integers(0, 2_000))
allowances = st.builds(
    lambda limit, jobs, concurrent, allow: AgentAllowance(
        agent_id="a",
        daily_token_limit=limit,
        daily_job_limit=jobs,
        concurrent_jobs=concurrent,
        model_allowlist=allow,
    ),
    limits,
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(st.sampled_from(["m1", "m2", "m3"]), max_size=2, unique=True),
)
prices = st.one_of(
    st.just(0.0), st.floats(0, 10_000, allow_nan=False), st.sampled_from([0.1, 0.3, 1e-6, 150.0])
)
quotas = st.one_of(
    st.none(),
    st.builds(
        lambda budget, rate, ceiling, price_in, price_out: (
            budget,
            rate,
            ceiling,
            price_in,
            price_out,
        ),
        limits,
        st.integers(0, 3),
        st.integers(0, 5),
        prices,
        prices,
    ),
)
estimates = st.one_of(st.integers(0, 3_000), st.integers(0, 10**9))


def quota_of(model: str, drawn: tuple[Any, ...] | None) -> ModelQuota | None:
    if drawn is None or not model:
        return None
    budget, rate, ceiling, price_in, price_out = drawn
    return ModelQuota(
        model=model,
        daily_token_budget=budget,
        hourly_rate_limit=rate,
        cost_ceiling=ceiling,
        input_price=price_in,
        output_price=price_out,
    )


@settings(max_examples=2_000, deadline=None)
@given(allowance=allowances, model=st.sampled_from(MODELS), drawn=quotas, tokens=estimates)
def test_never_fits_is_decide_on_an_empty_day(
    allowance: AgentAllowance, model: str, drawn: tuple[Any, ...] | None, tokens: int
) -> None:
    """A job never_fits refuses is refused by decide with nothing used; one it lets
    pass is allowed."""
    quota = quota_of(model, drawn)
    never = never_fits(allowance, quota, model, tokens)
    allowed = decide(allowance, AgentCounters(), quota, ModelCounters(), model, tokens, 0.0, DAY)
    assert (never is None) == allowed.allowed, (never, allowed.reason)


@pytest.fixture(scope="module")
def redis_port(request: pytest.FixtureRequest) -> int:
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.port


@pytest.fixture(scope="module")
def made(redis_port: int) -> Any:
    import redis

    clock = FakeClock()
    prefix = f"n{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, AllowanceStore] = {
            "memory": _memory(clock)("allowance", {}),
            "sqlite": _sqlite(clock, Path(tmp) / "q.db")("allowance", {}),
            "redis": _redis(clock, redis.Redis(port=redis_port), prefix)("allowance", {}),
            "fakeredis": _redis(clock, fake_redis_6(), prefix)("allowance", {}),
        }
        yield stores
        for store in stores.values():
            store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(allowance=allowances, model=st.sampled_from(MODELS), drawn=quotas, tokens=estimates)
def test_never_fits_is_every_stores_reserve_on_an_empty_day(
    made: dict[str, AllowanceStore],
    allowance: AgentAllowance,
    model: str,
    drawn: tuple[Any, ...] | None,
    tokens: int,
) -> None:
    """A fresh agent and model on each store (memory, SQLite, Redis's Lua): reserve
    refuses the job exactly when never_fits says it never fits."""
    agent = f"a{uuid.uuid4().hex[:10]}"
    named = model and f"{model}-{uuid.uuid4().hex[:8]}"
    allowance = allowance.model_copy(
        update={
            "agent_id": agent,
            "model_allowlist": [
                m.replace(model, named) if model else m for m in allowance.model_allowlist
            ],
        }
    )
    quota = quota_of(named, drawn)
    never = never_fits(allowance, quota, named, tokens)
    for name, store in made.items():
        store.set_allowance(allowance)
        if quota is not None:
            store.set_model_quota(quota)
        try:
            store.reserve(agent, named, tokens, f"j-{agent}")
            refused = None
        except QuotaExceededError as exc:
            refused = exc.reason
        assert (never is None) == (refused is None), (name, never, refused)
