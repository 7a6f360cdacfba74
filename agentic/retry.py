"""Retry backoff and error classification, as pure functions.

Nothing here sleeps or keeps state between calls: a delay is computed from the
attempt number (and, for decorrelated jitter, the previous delay the caller stored),
so the dispatcher can persist ``retry_count`` / ``next_attempt_at`` on the task server
and resume after a restart (go-agentic's defect 5). Randomness is injected as
``rand`` (a function returning a float in [0, 1)) so tests need no sleeping.

Numbering: ``attempt`` is 1 for the first retry, i.e. the task's ``retry_count`` after
the failure just seen. Its window is ``min(cap, base * 2 ** (attempt - 1))``, so the
un-jittered upper bound is go-agentic's 5 s x 2^(retry_count - 1). The formulas are
AWS's ("Exponential Backoff and Jitter"):

* full jitter (default):  ``U(0, window)``
* equal jitter:           ``window / 2 + U(0, window / 2)``
* decorrelated jitter:    ``min(cap, U(base, 3 * prev))``, ``prev = base`` at first

Classification, for the dispatcher and runner:

* :func:`is_waiting` — quota or capacity shortage (``QuotaExceededError``,
  ``NoEligibleAgentError``). Not a failure: the task stays pending and its
  ``retry_count`` does not move. Check it before :func:`is_retryable`.
* :func:`is_retryable` — false for cancellation and interpreter exits (never retried,
  whatever else), for 4xx answers other than 408 / 429, and for configuration or
  URL errors; true for 408, 429, 5xx, no answer (code 0), timeouts, connection
  errors and anything unknown (``max_retries`` still bounds unknowns).
"""

from __future__ import annotations

import concurrent.futures
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx

from .errors import APIError, ConfigError, NoEligibleAgentError, QuotaExceededError

__all__ = [
    "Jitter",
    "RetryPolicy",
    "decorrelated_jitter",
    "doubled",
    "equal_jitter",
    "full_jitter",
    "is_retryable",
    "is_waiting",
    "parse_retry_after",
    "retry_after_of",
]

Jitter = Literal["full", "equal", "decorrelated"]
Rand = Callable[[], float]

# 2.0 ** 1024 overflows a float with an exception; any exponent this large already
# puts the window at ``cap``.
_MAX_EXPONENT = 1023


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ConfigError(f"attempt counts retries from 1, got {attempt}")


def _window(attempt: int, base: float, cap: float) -> float:
    _check_attempt(attempt)
    # A float product past the float range is inf, not an error, and min() then
    # picks cap.
    return min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


def doubled(interval: float, failures: int, most: int) -> float:
    """``interval`` doubled for each failure in a row, at most ``most`` intervals: how
    long a loop that keeps failing waits before trying again (it never spins on an
    outage, and sees its end within ``most`` intervals)."""
    return interval * float(min(2**failures, most))


def full_jitter(attempt: int, base: float, cap: float, rand: Rand = random.random) -> float:
    """``U(0, min(cap, base * 2^(attempt-1)))``: spreads retries the most."""
    return rand() * _window(attempt, base, cap)


def equal_jitter(attempt: int, base: float, cap: float, rand: Rand = random.random) -> float:
    """Half the window for sure plus a random half: never retries almost at once."""
    window = _window(attempt, base, cap)
    return window / 2 + rand() * window / 2


def decorrelated_jitter(
    prev: float | None, base: float, cap: float, rand: Rand = random.random
) -> float:
    """``min(cap, U(base, 3 * prev))``; pass the previous delay (``None`` at first)."""
    upper = max(base, 3 * (base if prev is None else prev))
    return min(cap, base + rand() * (upper - base))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to back off after real failures.

    ``max_retries`` retries after the first attempt, so 3 means at most 4 attempts
    in all. ``base`` and ``cap`` are seconds. ``max_retry_after`` bounds a server's
    ``Retry-After`` (see :meth:`delay`).
    """

    max_retries: int = 3
    base: float = 5.0
    cap: float = 300.0
    jitter: Jitter = "full"
    max_retry_after: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 < self.base <= self.cap:
            raise ConfigError(f"need 0 < base <= cap, got base={self.base} cap={self.cap}")
        if self.jitter not in ("full", "equal", "decorrelated"):
            raise ConfigError(
                f"jitter must be 'full', 'equal' or 'decorrelated', got {self.jitter!r}"
            )
        if self.max_retry_after < 0:
            raise ConfigError(f"max_retry_after must be >= 0, got {self.max_retry_after}")

    def should_retry(self, retry_count: int, max_retries: int | None = None) -> bool:
        """True while failures so far (``retry_count``, the one just seen included)
        leave a retry; false means dead-letter. ``max_retries`` overrides the policy's,
        e.g. with the task's own."""
        limit = self.max_retries if max_retries is None else max_retries
        return retry_count <= limit

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        prev: float | None = None,
        rand: Rand = random.random,
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first).

        A server's ``Retry-After`` wins over the computed delay: it knows when room
        frees up, retrying earlier just earns another 429 and burns a retry, and a
        computed delay longer than the hint wastes time. It is clamped to
        ``[0, max_retry_after]`` (an hour by default, deliberately above ``cap``) so
        a bogus or hostile header cannot park a task for days; NaN is ignored.
        ``prev`` is the previous delay, used by decorrelated jitter only.
        """
        _check_attempt(attempt)
        if retry_after is not None and not math.isnan(retry_after):
            return min(max(retry_after, 0.0), self.max_retry_after)
        if self.jitter == "full":
            return full_jitter(attempt, self.base, self.cap, rand)
        if self.jitter == "equal":
            return equal_jitter(attempt, self.base, self.cap, rand)
        return decorrelated_jitter(prev, self.base, self.cap, rand)

    def next_attempt_at(
        self,
        now: datetime,
        attempt: int,
        retry_after: float | None = None,
        prev: float | None = None,
        rand: Rand = random.random,
    ) -> datetime:
        """``now`` plus :meth:`delay`: the value to store as the task's next_attempt_at."""
        return now + timedelta(seconds=self.delay(attempt, retry_after, prev, rand))


def is_waiting(exc: BaseException) -> bool:
    """True for a shortage of quota or capacity: wait, do not count a failure."""
    return isinstance(exc, QuotaExceededError | NoEligibleAgentError)


# Statuses that say "not now" rather than "never": request timeout, rate limited.
_RETRYABLE_4XX = frozenset({408, 429})


def _retryable_status(code: int) -> bool:
    return code == 0 or code >= 500 or code in _RETRYABLE_4XX


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same thing again later may succeed (see module docstring)."""
    # asyncio's CancelledError, KeyboardInterrupt, SystemExit and GeneratorExit derive
    # from BaseException only; retrying them would defeat cancellation and shutdown.
    # concurrent.futures' CancelledError is an Exception, so it is named.
    if not isinstance(exc, Exception) or isinstance(exc, concurrent.futures.CancelledError):
        return False
    if isinstance(exc, APIError):
        return _retryable_status(exc.code)
    if isinstance(exc, httpx.HTTPStatusError):
        return _retryable_status(exc.response.status_code)
    # A wrong URL or scheme fails the same way every time.
    return not isinstance(exc, ConfigError | httpx.InvalidURL | httpx.UnsupportedProtocol)


def parse_retry_after(value: object, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value: a number, a numeric string or an HTTP
    date (relative to ``now``, default the current UTC time). ``None`` if unreadable;
    dates in the past give 0."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
    else:
        return None
    return None if math.isnan(seconds) else max(seconds, 0.0)


def retry_after_of(exc: BaseException, now: datetime | None = None) -> float | None:
    """The wait an error asks for, in seconds, or ``None`` when it names none.

    Looks at, in order: a ``retry_after`` attribute (``QuotaExceededError``), an
    ``APIError``'s ``details`` mapping (``retry_after`` or a ``Retry-After`` header,
    any case, also under ``headers``), an ``httpx.HTTPStatusError``'s response header.
    """
    direct = getattr(exc, "retry_after", None)
    if direct is not None:
        return parse_retry_after(direct, now)
    if isinstance(exc, APIError) and isinstance(exc.details, Mapping):
        return _from_mapping(exc.details, now)
    if isinstance(exc, httpx.HTTPStatusError):
        return parse_retry_after(exc.response.headers.get("retry-after"), now)
    return None


def _from_mapping(details: Mapping[object, object], now: datetime | None) -> float | None:
    for key, value in details.items():
        if isinstance(key, str) and key.lower().replace("-", "_") == "retry_after":
            return parse_retry_after(value, now)
    headers = details.get("headers")
    return _from_mapping(headers, now) if isinstance(headers, Mapping) else None
