"""A dispatcher's listing of ready tasks behind a short and a long dependency chain,
on SQLite and Redis, side by side in one run.

    python bench/ready_list.py [--redis redis://host:port/db] [--repeats N] [--long N]

A chain of 100 and of ``--long`` (10,000) pending tasks, each depending on the one
before (only the first is ready), created before 5 independent tasks: the ready
ones are the chain's head and those 5. Timed: ``list(status=pending, ready=True,
limit=500)`` (a dispatcher's first page, and with ``limit=1`` its wait), against
the same 6 tasks listed by a filter no index serves (``project``), which walks
every pending task: the walk each ready listing did before the ready / waiting
split. A listing that reads only ready tasks stays flat as the chain grows: the
ratio long / short should be near 1 (target <= 3). Without ``--redis`` a private
redis-server is started on a free loopback port; SQLite uses a temporary file.
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

READY = 6  # the chain's head and 5 independent tasks
TARGET_RATIO = 3.0


def populate(store: TaskStore, chain: int) -> None:
    """A chain of ``chain`` tasks, then 5 independent ones; the ready ones in project
    ``ready``."""
    previous: str | None = None
    for i in range(chain):
        task = store.create(
            Task(
                title=f"c{i}",
                project="ready" if previous is None else "chain",
                dependencies=[previous] if previous else [],
            )
        )
        previous = task.id
    for i in range(READY - 1):
        store.create(Task(title=f"free{i}", project="ready"))


def median_ms(call: Callable[[], list[Task]], repeats: int) -> float:
    call()  # a first listing may set the store's indexes up: not what is measured
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        listed = call()
        samples.append((time.perf_counter() - started) * 1000)
        assert len(listed) == READY, len(listed)
    return statistics.median(samples)


def measure(store: TaskStore, repeats: int) -> tuple[float, float]:
    """(ready listing ms, walking listing ms), medians."""
    ready = median_ms(lambda: store.list(status=TaskStatus.PENDING, ready=True, limit=500), repeats)
    walk = median_ms(lambda: store.list(status=TaskStatus.PENDING, project="ready"), repeats)
    return ready, walk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", help="a Redis URL to use (default: a private server)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--long", type=int, default=10_000, help="tasks in the long chain")
    args = parser.parse_args()
    rows: list[tuple[str, int, float, float]] = []
    context = nullcontext(args.redis) if args.redis else private_redis()
    with context as url, tempfile.TemporaryDirectory() as folder:
        client = redis.Redis.from_url(url)
        for chain in (100, args.long):
            for backend in ("sqlite", "redis"):
                if backend == "redis":
                    prefix = f"bench-ready-{chain}-{time.time_ns()}"
                    store: TaskStore = RedisTaskStore(client, prefix=prefix)
                else:
                    store = SQLiteTaskStore(Path(folder) / f"ready-{chain}.db")
                populate(store, chain)
                ready, walk = measure(store, args.repeats)
                rows.append((backend, chain, ready, walk))
                store.close()
        client.close()
    print(f"{'backend':8} {'waiting':>8} {'ready list ms':>14} {'walk ms':>9}")
    for backend, chain, ready, walk in rows:
        print(f"{backend:8} {chain - 1:>8,} {ready:>14.3f} {walk:>9.3f}")
    print()
    for backend in ("sqlite", "redis"):
        short, long = (r for r in rows if r[0] == backend)
        ratio = long[2] / short[2]
        verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(
            f"{backend:7} ready list, {long[1] - 1:,} / {short[1] - 1:,} waiting: {ratio:.2f}x"
            f"  (target <= {TARGET_RATIO:g}: {verdict});"
            f" walk at {long[1] - 1:,} waiting / ready list: {long[3] / long[2]:.0f}x"
        )


if __name__ == "__main__":
    main()
