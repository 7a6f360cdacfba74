"""CPU of one dispatch pass over a backlog the fleet cannot take yet, as it grows.

    python bench/backlog.py [--sizes 500,5000,20000] [--passes N] [--page-size N]

For each size: a fresh SQLite file with that many ready tasks needing one capability,
one agent holding it that is full (``max_load`` 1, load 1), the task API in this
process. ``Dispatcher.run_once`` runs ``--passes`` times; the table shows the median
CPU and wall time of a pass, server and dispatcher together (one process), and what
one pass costs that lists the whole backlog (the server's ``list_pages`` feature
hidden from the dispatcher: as passes were before pages). A pass that pages stays
flat as the backlog grows; one that lists everything grows with it. A second table
adds an idle agent of another capability: a pass then has room and pages on, and
pages after the first are filtered to what agents with room could take (against
the server's ``labels_within`` hidden: every page walked).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher
from agentic.models import AgentAllowance, AgentInfo, Task
from agentic.router import DefaultRouter
from agentic.stores import open_allowance_store, open_registry, open_task_store
from agentic.testing import running_server


class WholeLists(TaskClient):
    """A client that hides the server's list_pages feature: the dispatcher lists all."""

    def server_features(self) -> frozenset[str]:
        return super().server_features() - {"list_pages"}


class UnfilteredPages(TaskClient):
    """A client that hides the server's labels_within feature: every page is whole."""

    def server_features(self) -> frozenset[str]:
        return super().server_features() - {"labels_within"}


def measure(
    size: int, passes: int, page_size: int, client_kind: type[TaskClient], idle_py: bool = False
) -> tuple[float, float]:
    """Median (cpu, wall) seconds of a pass over ``size`` waiting tasks; ``idle_py``
    adds an idle agent of another capability (so a pass has room and pages on)."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/backlog.db"
        tasks, registry = open_task_store(url), open_registry(url)
        quota = open_allowance_store(url)
        for i in range(size):
            tasks.create(Task(title=f"t{i}", labels=["gpu"]))
        registry.register(AgentInfo(id="a", capabilities=["gpu"], max_load=1, current_load=1))
        quota.set_allowance(AgentAllowance(agent_id="a"))
        if idle_py:
            registry.register(AgentInfo(id="py", capabilities=["py"], max_load=4))
            quota.set_allowance(AgentAllowance(agent_id="py"))
        cpu: list[float] = []
        wall: list[float] = []
        with running_server(tasks, requeue_interval=None) as base_url:
            client = client_kind(base_url, token="")
            dispatcher = Dispatcher(
                registry, DefaultRouter(), AllowanceService(quota), client, page_size=page_size
            )
            dispatcher.run_once()  # warm-up: imports, connections, the features check
            for _ in range(passes):
                started_cpu, started = time.process_time(), time.perf_counter()
                report = dispatcher.run_once()
                cpu.append(time.process_time() - started_cpu)
                wall.append(time.perf_counter() - started)
                assert not report.dispatched
            client.close()
        for store in (tasks, registry, quota):
            store.close()
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="500,5000,20000", help="backlog sizes, comma-separated")
    parser.add_argument("--passes", type=int, default=5, help="measured passes per size")
    parser.add_argument("--page-size", type=int, default=500, help="the dispatcher's page size")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the open server's warning, once per size
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"median of {args.passes} passes; one agent, full; SQLite; page size {args.page_size}")
    print(f"{'waiting':>8} {'paged cpu ms':>13} {'wall ms':>8} {'whole cpu ms':>13} {'ratio':>6}")
    for size in sizes:
        paged_cpu, paged_wall = measure(size, args.passes, args.page_size, TaskClient)
        whole_cpu, _ = measure(size, args.passes, args.page_size, WholeLists)
        print(
            f"{size:>8,} {paged_cpu * 1000:>13.1f} {paged_wall * 1000:>8.1f}"
            f" {whole_cpu * 1000:>13.1f} {whole_cpu / paged_cpu:>5.1f}x"
        )
    print(
        "\nthe same backlog, and an idle agent of another capability (py) with nothing to"
        " do: pages after the first filtered by the capabilities with room, or whole"
    )
    print(
        f"{'waiting':>8} {'filtered cpu ms':>16} {'wall ms':>8} {'whole cpu ms':>13} {'ratio':>6}"
    )
    for size in sizes:
        kept_cpu, kept_wall = measure(size, args.passes, args.page_size, TaskClient, True)
        walked_cpu, _ = measure(size, args.passes, args.page_size, UnfilteredPages, True)
        print(
            f"{size:>8,} {kept_cpu * 1000:>16.1f} {kept_wall * 1000:>8.1f}"
            f" {walked_cpu * 1000:>13.1f} {walked_cpu / kept_cpu:>5.1f}x"
        )


if __name__ == "__main__":
    main()
