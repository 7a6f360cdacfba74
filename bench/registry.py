"""Reap time with the same 100 stale agents among 1,000 and among 100,000 registered,
on SQLite and Redis, side by side in one run.

    python bench/registry.py [--redis redis://host:port/db] [--repeats N] [--large N]

Without ``--redis`` a private redis-server is started on a free loopback port
(``--save "" --appendonly no``); SQLite uses a temporary file. Agents are
registered through the public API with an injected clock: the stale ones first,
the rest 100 s later; ``reap(60)`` then marks exactly the stale ones offline. Only
``reap`` is timed; between repeats the stale agents heartbeat again at their old
time so every repeat reaps the same 100. A reap that costs O(stale) stays flat as
the fleet grows: the ratio 100k / 1k should be near 1 (target <= 3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from _common import private_redis

from agentic.models import AgentInfo
from agentic.stores.base import AgentRegistry
from agentic.stores.redis import RedisRegistry
from agentic.stores.sqlite import SQLiteRegistry
from agentic.testing import FakeClock

STALE = 100
TTL = 60.0
TARGET_RATIO = 3.0


def populate(registry: AgentRegistry, clock: FakeClock, size: int, start: float) -> list[str]:
    """``size`` agents, the first STALE of them silent since ``start``; returns those ids."""
    stale = [f"stale-{i:03d}" for i in range(STALE)]
    clock.set(start)
    for agent_id in stale:
        registry.register(AgentInfo(id=agent_id, capabilities=["bench"], max_load=4))
    clock.set(start + 100)
    for i in range(size - STALE):
        registry.register(AgentInfo(id=f"agent-{i:06d}", capabilities=["bench"], max_load=4))
    return stale


def time_reaps(
    registry: AgentRegistry, clock: FakeClock, stale: list[str], start: float, repeats: int
) -> list[float]:
    """Milliseconds per reap; each one marks exactly the stale agents offline."""
    samples = []
    for _ in range(repeats):
        clock.set(start)
        for agent_id in stale:
            registry.heartbeat(agent_id)
        clock.set(start + 100 + TTL / 2)
        began = time.perf_counter()
        reaped = registry.reap(TTL)
        samples.append((time.perf_counter() - began) * 1000)
        assert reaped == stale, f"reaped {len(reaped)} agents, expected {STALE}"
    return samples


def measure(
    name: str, make: Callable[[FakeClock], AgentRegistry], sizes: list[int], repeats: int
) -> list[tuple[str, int, float, float, float]]:
    rows = []
    for size in sizes:
        clock = FakeClock()
        registry = make(clock)
        start = clock()
        began = time.perf_counter()
        stale = populate(registry, clock, size, start)
        setup = time.perf_counter() - began
        samples = time_reaps(registry, clock, stale, start, repeats)
        registry.close()
        rows.append((name, size, statistics.median(samples), min(samples), setup))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="an existing Redis to use (a private one otherwise)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args()
    sizes = [1_000, args.large]

    server = nullcontext(args.redis) if args.redis else private_redis()
    with tempfile.TemporaryDirectory() as tmp, server as url:
        client = redis.Redis.from_url(url)

        def sqlite(clock: FakeClock) -> AgentRegistry:
            return SQLiteRegistry(Path(tmp) / f"{uuid.uuid4().hex}.db", clock=clock)

        def on_redis(clock: FakeClock) -> AgentRegistry:
            return RedisRegistry(client, prefix=f"bench-{uuid.uuid4().hex[:8]}", clock=clock)

        rows = measure("sqlite", sqlite, sizes, args.repeats)
        rows += measure("redis", on_redis, sizes, args.repeats)
        client.close()

    print(
        f"{'backend':<8} {'agents':>8} {'stale':>6} {'reap median ms':>15} {'reap min ms':>12}"
        f" {'setup s':>8}"
    )
    for name, size, median, best, setup in rows:
        print(f"{name:<8} {size:>8,} {STALE:>6} {median:>15.3f} {best:>12.3f} {setup:>8.1f}")
    print()
    for name in ("sqlite", "redis"):
        small, large = (r[2] for r in rows if r[0] == name)
        ratio = large / small
        verdict = "ok" if ratio <= TARGET_RATIO else "over target"
        print(
            f"{name:<7} reap {args.large:,} / 1,000 agents: {ratio:.2f}x"
            f"  (target <= {TARGET_RATIO:g}: {verdict})"
        )


if __name__ == "__main__":
    main()
