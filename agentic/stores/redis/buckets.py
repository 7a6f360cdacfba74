"""The task API's rate-limit buckets in Redis: one per caller, shared by every
server process on that Redis, so a caller's rate holds across a load balancer.

Each take is ONE script call (``lua/rate_take.lua``) on the server's clock; a
bucket expires once it would be full again, so callers that come and go leave
nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from ..keys import rate_bucket_key
from ._conn import Script, now_arg, text

__all__ = ["RedisBuckets"]

# Not guarded: a bucket lost with the store only refills early.
_TAKE = Script("common.lua", "rate_take.lua", guarded=False)


class RedisBuckets:
    """:class:`agentic.stores.base.Buckets` on the Redis of a task store."""

    def __init__(
        self, client: redis.Redis, prefix: str, clock: Callable[[], float] | None = None
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    def take(self, key: str, rate: float, burst: float) -> float:
        now = now_arg(self._clock)[0]
        reply = _TAKE(
            self._client, [now, repr(rate), repr(burst)], [rate_bucket_key(self._prefix, key)]
        )
        return float(text(reply))
