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
import time
from collections.abc import Callable
from pathlib import Path

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_scaling, task_store_scaling

from agentic.models import Task, TaskStatus
from agentic.stores.base import TaskStore

PER_AGENT = 10


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
    rows = task_store_scaling(
        args.redis, (10, args.large), populate, lambda store: measure(store, args.repeats)
    )
    print_scaling(rows, "in progress", lambda agents: agents * PER_AGENT)


if __name__ == "__main__":
    main()
