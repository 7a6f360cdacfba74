"""Per-caller request rate limits on the task API: token buckets, 429 with Retry-After,
and clients that wait and repeat."""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentic.client import TaskClient
from agentic.config import load_config
from agentic.errors import APIError, ConfigError, StoreUnavailableError
from agentic.models import Task, TaskResult, TaskStatus
from agentic.server import create_app
from agentic.server._limits import RateLimited, RateLimiter, TokenBucket
from agentic.server._metrics import Metrics
from agentic.stores.keys import rate_bucket_key
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.stores.redis.buckets import RedisBuckets
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.testing import FakeClock, running_server

from .test_server import ADMIN, TOKENS
from .test_server import AGENT1 as AGENT

with warnings.catch_warnings():
    # Starlette asks for httpx2 here; httpx is what this project uses.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    """A full bucket lets ``burst`` through at once, then one per 1/rate seconds, and
    says how long until the next."""
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, at=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == 2.0  # refilled to burst, not past


def test_the_limiter_counts_each_caller_apart() -> None:
    """One caller over its rate is refused with the wait; another is not affected."""
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited) as refused:
        limiter.check("a")
    assert refused.value.code == 429 and refused.value.retry_after == pytest.approx(1.0)
    assert refused.value.headers == {"Retry-After": "1"}
    limiter.check("b")
    clock.advance(1.0)
    limiter.check("a")


def test_the_default_burst_is_a_seconds_worth() -> None:
    """burst 0 means ceil(rate), at least 1."""
    assert RateLimiter(0.2).burst == 1
    assert RateLimiter(7.5).burst == 8
    assert RateLimiter(7.5, 20).burst == 20


def test_the_caller_unseen_longest_is_forgotten_past_max_callers() -> None:
    """Past max_callers the caller seen least recently is dropped (it comes back with a
    full bucket); the table never holds more."""
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, max_callers=2, clock=clock)
    limiter.check("a")
    limiter.check("b")
    clock.advance(1.0)
    limiter.check("a")  # a is now the one seen last
    limiter.check("c")  # b goes
    assert len(limiter) == 2
    with pytest.raises(RateLimited):
        limiter.check("a")  # still counted: its bucket was kept
    limiter.check("b")  # forgotten, so full again
    assert len(limiter) == 2


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [(0, 0, "rate must be"), (float("inf"), 0, "rate must be"), (1, -1, "burst must be")],
)
def test_bad_limits_are_refused(rate: float, burst: int, message: str) -> None:
    """A rate <= 0 or not finite, or a negative burst, is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        RateLimiter(rate, burst)


def test_the_api_answers_429_with_retry_after_per_token() -> None:
    """Past its burst a token gets 429 with Retry-After and nothing is done; another
    token still passes; health and metrics are never limited."""
    store = MemoryTaskStore()
    app = create_app(store, **TOKENS, requeue_interval=None, rate_limit=0.5, rate_burst=2)
    with TestClient(app) as api:
        for n in range(2):
            created = api.post("/api/tasks", json={"title": f"t{n}"}, headers=ADMIN)
            assert created.status_code == 201
        refused = api.post("/api/tasks", json={"title": "t2"}, headers=ADMIN)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"
        assert "server.rate_limit" in refused.json()["message"]
        assert [t.title for t in store.list()] == ["t0", "t1"]
        assert api.get("/api/tasks", headers=AGENT).status_code == 200
        for _ in range(5):
            assert api.get("/api/health").status_code == 200
            assert api.get("/metrics").status_code == 200
        assert 'status="429"' in api.get("/metrics").text


def test_an_open_server_limits_each_client_address() -> None:
    """Without tokens, callers are told apart by address: a new bearer token on each
    request (an open server accepts any) is no way around the limit."""
    app = create_app(MemoryTaskStore(), requeue_interval=None, rate_limit=1.0, rate_burst=1)
    with TestClient(app) as api:
        assert api.get("/api/tasks").status_code == 200
        assert api.get("/api/tasks").status_code == 429
        fresh = {"Authorization": "Bearer made-up-1"}
        assert api.get("/api/tasks", headers=fresh).status_code == 429


def test_clients_repeat_a_refused_read_and_return_a_refused_write() -> None:
    """A refused read is repeated after its Retry-After; a refused complete is the
    caller's 429 (the runner retries it on its own schedule), and nothing was done."""
    store = MemoryTaskStore()
    task = store.claim(store.create(Task(title="t")).id, "a1", 60)
    with running_server(
        store, **TOKENS, requeue_interval=None, rate_limit=1.0, rate_burst=1
    ) as url:
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            time.sleep(seconds)

        with TaskClient(url, token="agent-1-token", retries=3, sleep=sleep) as api:
            api.get_task(task.id)
            assert api.get_task(task.id).id == task.id
            assert slept and slept[0] >= 1.0
            with pytest.raises(APIError) as refused:
                api.complete_task(task.id, TaskResult(success=True), "a1")
    assert refused.value.code == 429
    assert store.get(task.id).status is TaskStatus.IN_PROGRESS


def test_a_wait_longer_than_the_client_accepts_is_an_error() -> None:
    """A Retry-After past max_retry_wait gives up at once with the 429."""
    with (
        running_server(
            MemoryTaskStore(), requeue_interval=None, rate_limit=0.01, rate_burst=1
        ) as url,
        TaskClient(url, token="", max_retry_wait=5) as api,
    ):
        api.list_tasks()
        with pytest.raises(APIError) as refused:
            api.list_tasks()
    assert refused.value.code == 429


def test_rate_limit_settings_default_off_and_are_checked() -> None:
    """server.rate_limit is 0 (off) unless set; a negative one is refused."""
    cfg = load_config(env={})
    assert (cfg.server.rate_limit, cfg.server.rate_burst) == (0, 0)
    cfg = load_config(env={"AGENTIC_SERVER__RATE_LIMIT": "20", "AGENTIC_SERVER__RATE_BURST": "50"})
    assert (cfg.server.rate_limit, cfg.server.rate_burst) == (20, 50)
    with pytest.raises(ConfigError, match=r"server\.rate_limit"):
        load_config(env={"AGENTIC_SERVER__RATE_LIMIT": "-1"})
    with pytest.raises(ConfigError, match=r"a burst without server\.rate_limit limits nothing"):
        load_config(env={"AGENTIC_SERVER__RATE_BURST": "5"})


def test_a_rate_below_what_an_agent_needs_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """A limit under 5 requests a second starts, with a warning saying why it hurts."""
    with caplog.at_level(logging.WARNING, "agentic.server.app"):
        create_app(MemoryTaskStore(), requeue_interval=None, rate_limit=2)
        assert "server.rate_limit 2 is below the 5 requests a second" in caplog.text
        caplog.clear()
        create_app(MemoryTaskStore(), requeue_interval=None, rate_limit=20)
        assert "rate_limit" not in caplog.text


# --- buckets shared by the servers of one Redis ---


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    burst=st.integers(1, 5),
    steps=st.lists(st.floats(0.0, 3.0, allow_nan=False), max_size=25),
)
def test_the_redis_bucket_keeps_the_python_rule(
    redis_client: Any, rate: float, burst: int, steps: list[float]
) -> None:
    """The Lua bucket answers every take as TokenBucket.take does, on any spacing of
    requests (one rule, written once in Python and once in Lua)."""
    clock = FakeClock()
    shared = RedisBuckets(redis_client, f"t{uuid.uuid4().hex[:12]}", clock)
    bucket = TokenBucket(rate, float(burst), float(burst), clock())
    for gap in steps:
        clock.advance(gap)
        assert shared.take("caller", rate, float(burst)) == pytest.approx(
            bucket.take(clock()), rel=1e-12, abs=1e-12
        )


def test_a_bucket_in_redis_expires_once_it_would_be_full(redis_client: Any) -> None:
    """A bucket's key lives burst / rate seconds (and one more): a caller that stops
    leaves nothing behind."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    RedisBuckets(redis_client, prefix).take("caller", 2.0, 4.0)
    assert 2000 < redis_client.pttl(rate_bucket_key(prefix, "caller")) <= 3000


def test_servers_on_one_redis_share_each_callers_rate(redis_client: Any) -> None:
    """Two servers on one Redis take from one bucket per token: past the burst, the
    next request is refused whichever server it reaches; another token passes."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        urls = [
            stack.enter_context(
                running_server(
                    RedisTaskStore(redis_client, prefix=prefix),
                    **TOKENS,
                    requeue_interval=None,
                    rate_limit=0.2,
                    rate_burst=3,
                )
            )
            for _ in range(2)
        ]
        answers = [httpx.get(f"{urls[n % 2]}/api/tasks", headers=ADMIN) for n in range(4)]
        other = httpx.get(f"{urls[1]}/api/tasks", headers=AGENT)
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    # 5 s less the time the requests took (rounded up): 5, or 4 on a slow machine
    assert answers[3].headers["Retry-After"] in {"4", "5"} and other.status_code == 200


class DownBuckets:
    """Shared buckets whose store is unreachable; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def take(self, key: str, rate: float, burst: float) -> float:
        self.calls += 1
        raise StoreUnavailableError("Redis unavailable during a test: connection refused")


def test_shared_buckets_down_leave_each_server_limiting_on_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the shared buckets fail, the server's own bucket answers (the limit still
    holds per server; no request is refused for the outage), they are left alone for
    a pause before being tried again, each failure is counted and the outage warned
    of once."""
    clock, metrics, down = FakeClock(), Metrics(), DownBuckets()
    limiter = RateLimiter(1.0, 2, clock=clock, shared=down, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="agentic"):
        limiter.check("a")
        limiter.check("a")
        with pytest.raises(RateLimited):
            limiter.check("a")
        assert down.calls == 1  # one failure, then the pause
        clock.advance(RateLimiter.PAUSE)
        limiter.check("a")
    assert down.calls == 2 and metrics.value("rate_limit_errors") == 2
    assert caplog.text.count("the shared buckets failed") == 1
    assert "connection refused" in caplog.text


class SlowBuckets:
    """Shared buckets whose store takes ``seconds`` to answer each take."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def take(self, key: str, rate: float, burst: float) -> float:
        time.sleep(self.seconds)
        return 0.0


class SlowBucketStore(MemoryTaskStore):
    """A memory task store whose servers share slow buckets."""

    def rate_buckets(self) -> SlowBuckets:
        return SlowBuckets(1.5)


def test_a_slow_shared_bucket_stalls_the_event_loop_once_not_per_request() -> None:
    """Shared takes are made as store calls are: after one slow take, the next run in
    worker threads, so the health check answers while a take hangs."""
    store = SlowBucketStore()
    with running_server(store, requeue_interval=None, rate_limit=100.0) as url:
        assert httpx.get(f"{url}/api/tasks").status_code == 200  # slow: threads from now
        with ThreadPoolExecutor(2) as pool:
            listed = pool.submit(httpx.get, f"{url}/api/tasks")
            time.sleep(0.1)  # the take is under way
            started = time.monotonic()
            health = httpx.get(f"{url}/api/health")
            took = time.monotonic() - started
            assert listed.result().status_code == 200
    # Behind the take on the loop it would wait ~1.4 s; in a thread it answers at once
    # (0.8 s leaves room for a slow machine).
    assert health.status_code == 200 and took < 0.8
