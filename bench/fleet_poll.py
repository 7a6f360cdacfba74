"""A runner's poll (its tasks in progress) with a small and a large fleet, on SQLite
and Redis, side by side in one run.

    python bench/fleet_poll.py [--redis redis://host:port/db] [--repeats N] [--large N]

Each agent holds 10 claimed tasks; fleets of 10 and of ``--large`` (1,000) agents,
so 100 and 10,000 tasks in progress. Timed: one agent's ``list(status=in_progress,
claimed_by=agent)`` (what every runner's long-poll answer costs), against the same
listing by a filter no index serves (``project``: each agent's tasks carry a project
of their own, so the same 10 tasks match): the walk every poll did before the
claims index. An indexed poll stays flat as the fleet grows: the ratio large /
small should be near 1 (target <= 3). Without ``--redis`` a private redis-server
is started on a free loopback port; SQLite uses a temporary file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from _common import private_redis

from agentic.models import Task, TaskStatus
from agentic.stores.base import TaskStore
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.stores.sqlite.tasks import SQLiteTaskStore

PER_AGENT = 10
TARGET_RATIO = 3.0


def populate(store: TaskStore, agents: int) -> None:
    """``agents`` agents, each holding PER_AGENT claims of tasks of its own project."""
    for a in range(agents):
        for j in range(PER_AGENT):
            task = store.create(Task(title=f"a{a}-{j}", project=f"p{a}"))
            store.claim(task.id, f"agent-{a}", 3600, f"job-{a}-{j}")


def median_ms(call: Callable[[], list[Task]], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        listed = call()
        samples.append((time.perf_counter() - started) * 1000)
        assert len(listed) == PER_AGENT, len(listed)
    return statistics.median(samples)


def measure(store: TaskStore, repeats: int) -> tuple[float, float]:
    """(indexed poll ms, walking listing ms), medians."""
    indexed = median_ms(
        lambda: store.list(status=TaskStatus.IN_PROGRESS, claimed_by="agent-5"), repeats
    )
    walk = median_ms(lambda: store.list(status=TaskStatus.IN_PROGRESS, project="p5"), repeats)
    return indexed, walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", help="a Redis URL to use (default: a private server)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--large", type=int, default=1000, help="agents in the large fleet")
    args = parser.parse_args()
    sizes = (10, args.large)
    rows: list[tuple[str, int, float, float]] = []
    context = nullcontext(args.redis) if args.redis else private_redis()
    with context as url, tempfile.TemporaryDirectory() as folder:
        client = redis.Redis.from_url(url)
        for agents in sizes:
            for backend in ("sqlite", "redis"):
                if backend == "redis":
                    prefix = f"bench-poll-{agents}-{time.time_ns()}"
                    store: TaskStore = RedisTaskStore(client, prefix=prefix)
                else:
                    store = SQLiteTaskStore(Path(folder) / f"poll-{agents}.db")
                populate(store, agents)
                indexed, walk = measure(store, args.repeats)
                rows.append((backend, agents, indexed, walk))
                store.close()
        client.close()
    print(f"{'backend':8} {'agents':>7} {'in progress':>12} {'poll ms':>9} {'walk ms':>9}")
    for backend, agents, indexed, walk in rows:
        print(f"{backend:8} {agents:>7,} {agents * PER_AGENT:>12,} {indexed:>9.3f} {walk:>9.3f}")
    print()
    for backend in ("sqlite", "redis"):
        small, large = (r for r in rows if r[0] == backend)
        ratio = large[2] / small[2]
        verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(
            f"{backend:7} poll {large[1]:,} / {small[1]:,} agents: {ratio:.2f}x"
            f"  (target <= {TARGET_RATIO:g}: {verdict});"
            f" walk at {large[1]:,} agents / poll: {large[3] / large[2]:.0f}x"
        )


if __name__ == "__main__":
    main()
