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
import time
from collections.abc import Callable
from pathlib import Path

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_scaling, task_store_scaling

from agentic.models import Task, TaskStatus
from agentic.stores.base import TaskStore

READY = 6  # the chain's head and 5 independent tasks


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
    rows = task_store_scaling(
        args.redis, (100, args.long), populate, lambda store: measure(store, args.repeats)
    )
    print_scaling(rows, "waiting", lambda chain: chain - 1)


if __name__ == "__main__":
    main()
