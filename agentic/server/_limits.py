"""Request rate limits per caller, so one runaway client cannot starve the task API.

Each caller (a bearer token; without tokens, a client address) has a token bucket:
``rate`` requests a second on average, ``burst`` at once after a quiet spell. A
request finding its bucket empty is refused with 429 and ``Retry-After`` before any
work is done, so every client may repeat it (ours does, after the wait asked).

Where the task store shares buckets (Redis: :meth:`TaskStore.rate_buckets`), every
server process on it takes from the same bucket, so a caller's rate holds across a
load balancer; a take that fails there (Redis down) is logged once per outage,
counted in ``rate_limit_errors``, and answered from this process's own bucket (as
are the next :attr:`RateLimiter.PAUSE` seconds' requests), so the limit still holds
per process and the request is not refused for it. Elsewhere
(SQLite, memory) buckets live in this server process, and several processes behind
a load balancer each allow the rate. That table keeps the ``max_callers`` callers
seen last: the one unseen longest is forgotten first (it starts again with a full
bucket), so callers that come and go cannot grow it without bound.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import APIError, ConfigError, StoreError
from ..stores.base import Buckets
from ._metrics import Metrics

__all__ = ["RateLimited", "RateLimiter", "TokenBucket"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a request takes one."""

    rate: float
    burst: float
    tokens: float
    at: float  # when ``tokens`` was counted

    def take(self, now: float) -> float:
        """Take a token: 0 when there was one, else the seconds until there is.

        ``lua/rate_take.lua`` of the Redis store is the same rule: change both."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimited(APIError):
    """429: this caller sent more than its rate; ``retry_after`` seconds to wait."""

    def __init__(self, rate: float, retry_after: float) -> None:
        super().__init__(
            f"more than {rate:g} requests a second from this caller (server.rate_limit);"
            f" retry after {retry_after:.2f} s",
            429,
        )
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds, rounded up (HTTP has no fractions)."""
        return {"Retry-After": str(max(1, math.ceil(self.retry_after or 0)))}


class RateLimiter:
    """One :class:`TokenBucket` per caller key, in ``shared`` buckets when given
    (failures counted in ``metrics``; see the module docstring).

    A failed take of the shared buckets sends every check to this process's own
    buckets for ``pause`` seconds before the shared ones are tried again, so an
    outage costs one failed call per pause, not one per request. :meth:`check` may
    wait on the shared buckets' store: the server calls it where it calls the store.
    """

    #: seconds the shared buckets are left alone after a failure
    PAUSE = 5.0

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        *,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        shared: Buckets | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ConfigError(f"rate must be a number of requests a second > 0, got {rate}")
        if burst < 0:
            raise ConfigError(f"burst must be an integer >= 0, got {burst}")
        self.rate = rate
        # 0: a second's worth, and at least one request.
        self.burst = float(burst or max(1, math.ceil(rate)))
        self._max_callers = max_callers
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # seen last at the end
        self._lock = threading.Lock()
        self._shared = shared
        self._metrics = metrics
        self._failing = False  # the shared buckets failed last time (warned once)
        self._paused_until = float("-inf")  # own buckets only until then (clock time)

    @property
    def shared(self) -> bool:
        """Whether checks may call the shared buckets' store (a network round trip)."""
        return self._shared is not None

    def check(self, key: str) -> None:
        """Count a request of ``key``; :class:`RateLimited` when over its rate."""
        shared = self._shared is not None and self._clock() >= self._paused_until
        wait = self._take_shared(key) if shared else None
        if wait is None:
            wait = self._take_here(key)
        if wait:
            raise RateLimited(self.rate, wait)

    def _take_shared(self, key: str) -> float | None:
        """The shared bucket's answer; None when it could not be reached."""
        assert self._shared is not None
        try:
            wait = self._shared.take(key, self.rate, self.burst)
        except StoreError as exc:
            if self._metrics is not None:
                self._metrics.inc("rate_limit_errors")
            if not self._failing:
                log.warning(
                    "rate limits: the shared buckets failed (%s); each server limits on"
                    " its own until they are back",
                    exc,
                )
            self._failing = True
            self._paused_until = self._clock() + self.PAUSE
            return None
        self._failing = False
        return wait

    def _take_here(self, key: str) -> float:
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
                if len(self._buckets) > self._max_callers:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
