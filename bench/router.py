"""Routing decision time: DefaultRouter over an AgentIndex at 100 and 10,000 agents,
against the linear scan (a plain list) at 10,000, in one run.

    python bench/router.py [--decisions N] [--seed S]

Fleet: every agent holds 2-6 capabilities drawn from a pool of 24, max_load from
{0 (unlimited), 1, 2, 4, 8} with a random load up to it (so some are full), and 5%
are offline. Tasks carry 0-2 labels from the pool and a random priority; the same
task sequence is used for every case. One decision is one ``route()`` call, timed
alone (the index is built once, as once per dispatch pass); answers that raise
NoEligibleAgentError are timed too, since waiting tasks are decided as often as
others. Only ratios are meant to be compared across machines.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import percentile

from agentic.errors import NoEligibleAgentError
from agentic.models import AgentInfo, AgentStatus, Priority, Task
from agentic.router import AgentIndex, DefaultRouter

POOL = [f"cap-{i:02d}" for i in range(24)]
MAX_LOADS = [0, 1, 2, 4, 8]
TARGET_RATIO = 3.0


def make_fleet(size: int, rng: random.Random) -> list[AgentInfo]:
    fleet = []
    for i in range(size):
        max_load = rng.choice(MAX_LOADS)
        fleet.append(
            AgentInfo(
                id=f"agent-{i:05d}",
                capabilities=rng.sample(POOL, rng.randint(2, 6)),
                status=AgentStatus.OFFLINE if rng.random() < 0.05 else AgentStatus.AVAILABLE,
                max_load=max_load,
                current_load=rng.randint(0, max_load or 8),
            )
        )
    return fleet


def make_tasks(count: int, rng: random.Random) -> list[Task]:
    return [
        Task(
            id=f"task-{i}",
            labels=rng.sample(POOL, rng.randint(0, 2)),
            priority=rng.choice(list(Priority)),
        )
        for i in range(count)
    ]


def time_each(decide: Callable[[Task], object], tasks: Sequence[Task]) -> list[float]:
    """Microseconds per decision, one sample per task."""
    samples = []
    for task in tasks:
        start = time.perf_counter_ns()
        with contextlib.suppress(NoEligibleAgentError):
            decide(task)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    router = DefaultRouter()
    tasks = make_tasks(args.decisions, rng)
    small, large = make_fleet(100, rng), make_fleet(10_000, rng)

    build_start = time.perf_counter()
    small_index = AgentIndex(small)
    small_build = time.perf_counter() - build_start
    build_start = time.perf_counter()
    large_index = AgentIndex(large)
    large_build = time.perf_counter() - build_start

    # Warm-up so the first case does not pay for cold caches alone.
    time_each(lambda t: router.route(t, small_index), tasks[:200])

    rows = [
        ("index", 100, small_build, time_each(lambda t: router.route(t, small_index), tasks)),
        ("index", 10_000, large_build, time_each(lambda t: router.route(t, large_index), tasks)),
        # The scan is ~1000x slower; a tenth of the tasks gives a stable median.
        ("linear scan", 10_000, 0.0, time_each(lambda t: router.route(t, large), tasks[::10])),
    ]

    print(
        f"{'router':<12} {'agents':>7} {'decisions':>9} {'median us':>10} {'p99 us':>9}"
        f" {'index build ms':>15}"
    )
    for name, size, build, samples in rows:
        built = f"{build * 1000:.1f}" if build else "-"
        print(
            f"{name:<12} {size:>7,} {len(samples):>9} {statistics.median(samples):>10.1f}"
            f" {percentile(samples, 0.99):>9.1f} {built:>15}"
        )
    small_med, large_med, scan_med = (statistics.median(r[3]) for r in rows)
    growth = large_med / small_med
    verdict = "ok" if growth <= TARGET_RATIO else "over target"
    print(f"\nindex 10k / index 100:  {growth:.2f}x  (target <= {TARGET_RATIO:g}: {verdict})")
    print(f"linear 10k / index 10k: {scan_med / large_med:.0f}x")

    # What the dispatcher pays after each dispatch to keep the index current.
    ids = [rng.choice(large).id for _ in range(args.decisions)]
    updates = []
    for agent_id in ids:
        start = time.perf_counter_ns()
        large_index.add_load(agent_id, 1)
        updates.append((time.perf_counter_ns() - start) / 1000)
        large_index.add_load(agent_id, -1)
    print(f"add_load at 10k: median {statistics.median(updates):.1f} us")


if __name__ == "__main__":
    main()
