"""Backoff formulas, RetryPolicy and error classification, without sleeping."""

from __future__ import annotations

import asyncio
import concurrent.futures
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentic.errors import (
    APIError,
    ConfigError,
    ConflictError,
    NoEligibleAgentError,
    NotFoundError,
    QuotaExceededError,
    StoreUnavailableError,
    TransportError,
)
from agentic.retry import (
    Jitter,
    RetryPolicy,
    decorrelated_jitter,
    equal_jitter,
    full_jitter,
    is_retryable,
    is_waiting,
    parse_retry_after,
    retry_after_of,
)

NOW = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


# --- formulas ---


@pytest.mark.parametrize(("attempt", "window"), [(1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0)])
def test_full_jitter_window_doubles_and_caps(attempt: int, window: float) -> None:
    """Full jitter spans [0, min(cap, base*2^(attempt-1))): 5, 10, 20 ... capped at 300."""
    assert full_jitter(attempt, 5.0, 300.0, lambda: 0.0) == 0.0
    assert full_jitter(attempt, 5.0, 300.0, lambda: 0.5) == window / 2
    assert full_jitter(attempt, 5.0, 300.0, lambda: 0.999999) == pytest.approx(window, rel=1e-5)


def test_equal_jitter_keeps_half_the_window() -> None:
    """Equal jitter waits at least half the window and less than all of it."""
    assert equal_jitter(3, 5.0, 300.0, lambda: 0.0) == 10.0
    assert equal_jitter(3, 5.0, 300.0, lambda: 0.5) == 15.0


def test_decorrelated_jitter_grows_from_previous_delay() -> None:
    """Decorrelated jitter draws from [base, 3*prev], starting from prev = base."""
    assert decorrelated_jitter(None, 5.0, 300.0, lambda: 0.0) == 5.0
    assert decorrelated_jitter(None, 5.0, 300.0, lambda: 0.5) == 10.0
    assert decorrelated_jitter(40.0, 5.0, 300.0, lambda: 0.5) == 62.5
    assert decorrelated_jitter(1000.0, 5.0, 300.0, lambda: 0.9) == 300.0


def test_decorrelated_jitter_never_below_base() -> None:
    """A previous delay under base/3 still draws from [base, base]."""
    assert decorrelated_jitter(0.1, 5.0, 300.0, lambda: 0.7) == 5.0


def test_huge_attempt_is_capped_without_overflow() -> None:
    """Attempt 5000 does not overflow; the window is simply cap."""
    assert full_jitter(5000, 5.0, 300.0, lambda: 0.5) == 150.0
    assert equal_jitter(5000, 5.0, 300.0, lambda: 0.0) == 150.0


def test_attempt_counts_from_one() -> None:
    """Attempt 0 is a caller error: the first retry is attempt 1."""
    with pytest.raises(ConfigError):
        full_jitter(0, 5.0, 300.0)
    with pytest.raises(ConfigError):
        RetryPolicy().delay(0)


@settings(deadline=None)  # a busy machine may stall an example: its speed is not checked
@given(
    st.integers(1, 200),
    st.floats(0.01, 100),
    st.floats(0.01, 10_000),
    st.floats(0, 1, exclude_max=True),
)
def test_property_delays_stay_within_bounds(
    attempt: int, base: float, extra: float, r: float
) -> None:
    """Every strategy's delay lies in [0, cap]; equal jitter at least half the window."""
    cap = base + extra
    window = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    assert 0 <= full_jitter(attempt, base, cap, lambda: r) <= window
    assert window / 2 <= equal_jitter(attempt, base, cap, lambda: r) <= window
    assert base <= decorrelated_jitter(cap * r, base, cap, lambda: r) <= cap


# --- RetryPolicy ---


def test_policy_defaults() -> None:
    """Defaults: 3 retries, base 5 s, cap 300 s, full jitter."""
    policy = RetryPolicy()
    assert (policy.max_retries, policy.base, policy.cap, policy.jitter) == (3, 5.0, 300.0, "full")


@pytest.mark.parametrize(
    ("jitter", "expected"), [("full", 10.0), ("equal", 15.0), ("decorrelated", 10.0)]
)
def test_policy_delay_uses_its_jitter(jitter: Jitter, expected: float) -> None:
    """delay() dispatches to the chosen jitter with the policy's base and cap."""
    policy = RetryPolicy(jitter=jitter)
    assert policy.delay(3, rand=lambda: 0.5) == expected


def test_policy_decorrelated_uses_prev() -> None:
    """Decorrelated jitter takes the previous delay the caller stored."""
    assert RetryPolicy(jitter="decorrelated").delay(2, prev=40.0, rand=lambda: 0.5) == 62.5


def test_retry_after_wins_over_computed_delay() -> None:
    """A server's Retry-After replaces the jittered delay, shorter or longer."""
    policy = RetryPolicy()
    assert policy.delay(1, retry_after=120.0, rand=lambda: 0.9) == 120.0
    assert policy.delay(6, retry_after=1.5, rand=lambda: 0.9) == 1.5


def test_retry_after_is_clamped() -> None:
    """Retry-After is clamped to [0, max_retry_after]; NaN falls back to backoff."""
    policy = RetryPolicy(max_retry_after=600.0)
    assert policy.delay(1, retry_after=86_400.0) == 600.0
    assert policy.delay(1, retry_after=float("inf")) == 600.0
    assert policy.delay(1, retry_after=-3.0) == 0.0
    assert policy.delay(1, retry_after=float("nan"), rand=lambda: 0.5) == 2.5


@pytest.mark.parametrize(("retry_count", "expected"), [(1, True), (3, True), (4, False)])
def test_should_retry_allows_max_retries_retries(retry_count: int, expected: bool) -> None:
    """max_retries=3 allows retries after failures 1-3 (4 attempts), not after the 4th."""
    assert RetryPolicy().should_retry(retry_count) is expected


def test_should_retry_takes_the_task_limit() -> None:
    """A task's own max_retries overrides the policy's."""
    assert not RetryPolicy().should_retry(1, max_retries=0)
    assert RetryPolicy(max_retries=0).should_retry(5, max_retries=5)


def test_next_attempt_at_adds_the_delay() -> None:
    """next_attempt_at is now plus the delay, Retry-After included."""
    policy = RetryPolicy()
    assert policy.next_attempt_at(NOW, 2, rand=lambda: 0.5) == NOW + timedelta(seconds=5)
    assert policy.next_attempt_at(NOW, 2, retry_after=30) == NOW + timedelta(seconds=30)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"base": 0},
        {"base": 10.0, "cap": 5.0},
        {"jitter": "none"},
        {"max_retry_after": -1},
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    """Impossible settings raise ConfigError when the policy is made."""
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# --- classification ---


@pytest.mark.parametrize(
    "exc",
    [
        asyncio.CancelledError(),
        concurrent.futures.CancelledError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
    ],
)
def test_cancellation_and_exit_are_never_retried(exc: BaseException) -> None:
    """Cancellation and interpreter exits are neither retryable nor waiting."""
    assert not is_retryable(exc)
    assert not is_waiting(exc)


@pytest.mark.parametrize(
    "exc",
    [
        APIError("rate limited", code=429),
        APIError("boom", code=500),
        APIError("bad gateway", code=502),
        APIError("slow", code=408),
        TransportError("connection refused"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        StoreUnavailableError("redis down"),
        TimeoutError(),
        RuntimeError("something unknown"),
    ],
)
def test_transient_errors_are_retryable(exc: Exception) -> None:
    """429, 408, 5xx, no answer, timeouts, connection errors and unknowns are retried."""
    assert is_retryable(exc)
    assert not is_waiting(exc)


@pytest.mark.parametrize(
    "exc",
    [
        APIError("bad request", code=400),
        APIError("unauthorized", code=401),
        APIError("forbidden", code=403),
        NotFoundError("no such task"),
        ConflictError("already claimed"),
        ConfigError("bad url"),
        httpx.UnsupportedProtocol("ftp://"),
    ],
)
def test_permanent_errors_are_not_retryable(exc: Exception) -> None:
    """Other 4xx answers and configuration errors fail the same way every time."""
    assert not is_retryable(exc)


def test_http_status_error_is_classified_by_status() -> None:
    """An httpx.HTTPStatusError is judged by its response status."""
    request = httpx.Request("GET", "http://test/api/tasks")
    for status, expected in [(503, True), (429, True), (404, False)]:
        response = httpx.Response(status, request=request)
        exc = httpx.HTTPStatusError("x", request=request, response=response)
        assert is_retryable(exc) is expected


@pytest.mark.parametrize(
    "exc", [QuotaExceededError("daily token limit", retry_after=60), NoEligibleAgentError("t1")]
)
def test_quota_and_capacity_shortage_is_waiting(exc: Exception) -> None:
    """Quota and capacity shortages are waiting, not failures."""
    assert is_waiting(exc)


# --- Retry-After extraction ---


def test_retry_after_from_quota_error() -> None:
    """QuotaExceededError's retry_after attribute is read as is."""
    assert retry_after_of(QuotaExceededError("hourly rate", retry_after=42.0)) == 42.0
    assert retry_after_of(QuotaExceededError("concurrency")) is None


@pytest.mark.parametrize(
    "details",
    [{"retry_after": 30}, {"Retry-After": "30"}, {"headers": {"retry-after": "30"}}],
)
def test_retry_after_from_api_error_details(details: dict[str, object]) -> None:
    """An APIError's details carry Retry-After as a field or a header, any case."""
    assert retry_after_of(APIError("slow down", code=429, details=details)) == 30.0


def test_retry_after_from_http_status_error() -> None:
    """An httpx.HTTPStatusError's Retry-After header is read."""
    request = httpx.Request("GET", "http://test/")
    response = httpx.Response(429, headers={"Retry-After": "7"}, request=request)
    assert retry_after_of(httpx.HTTPStatusError("x", request=request, response=response)) == 7.0


def test_retry_after_absent() -> None:
    """Errors that name no wait give None."""
    assert retry_after_of(APIError("boom", details="raw body")) is None
    assert retry_after_of(RuntimeError("x")) is None


def test_parse_retry_after_forms() -> None:
    """Seconds, numeric strings and HTTP dates parse; junk and past dates do not hurt."""
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after(" 1.5 ", NOW) == 1.5
    assert parse_retry_after("Thu, 15 Jan 2026 10:01:30 GMT", NOW) == 90.0
    assert parse_retry_after("Thu, 15 Jan 2026 09:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("-5", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(True, NOW) is None
    assert parse_retry_after(None, NOW) is None
