"""A program that runs an AgentRunner with ``start()`` and handles no signals itself:
SIGTERM stops the runner first (its task finished, the agent deregistered), then
ends the process as SIGTERM does. A real OS process against a real task server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentic.client import TaskClient
from agentic.errors import ConfigError
from agentic.models import Task, TaskStatus
from agentic.runner import AgentRunner
from agentic.stores import open_registry, open_task_store
from agentic.stores.memory import MemoryRegistry
from agentic.testing import running_server

pytestmark = pytest.mark.slow

PROGRAM = """
import sys, time
from pathlib import Path
from agentic import AgentRunner, TaskClient, open_registry

url, store, started, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])

def handler(task, ctx):
    (started / task.id).write_text(task.id)
    time.sleep(1.0)  # still running when SIGTERM comes
    return "finished"

for n in range(1, count + 1):
    runner = AgentRunner(
        f"sig-{n}", TaskClient(url, ""), open_registry(store), handler, capabilities=["x"],
        max_load=1, poll_interval=0.1, heartbeat_interval=0.5,
    )
    runner.start()
print("started", flush=True)
time.sleep(120)  # the program's own work; it never calls runner.stop()
"""


@pytest.mark.parametrize("count", [1, 2])
def test_sigterm_to_a_started_runner_finishes_its_task_then_ends_the_process(
    tmp_path: Path, count: int
) -> None:
    """SIGTERM while started runners' tasks run (one runner, or two in one program):
    each task completes, each agent is deregistered, and the process then ends by
    SIGTERM (not at once, not never)."""
    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    tasks, registry = open_task_store(store_url), open_registry(store_url)
    started = tmp_path / "started"
    started.mkdir()
    agents = [f"sig-{n}" for n in range(1, count + 1)]
    with running_server(tasks) as url:
        made = [tasks.create(Task(title="long", labels=["x"])) for _ in agents]
        proc = subprocess.Popen(
            [sys.executable, "-c", PROGRAM, url, store_url, str(started), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "started\n"
            deadline = time.monotonic() + 20
            while not set(agents) <= {a.id for a in registry.list()}:
                assert time.monotonic() < deadline, "the runners did not register"
                time.sleep(0.05)
            for task, agent in zip(made, agents, strict=True):
                tasks.claim(task.id, agent, 30)
            while len(list(started.iterdir())) < count:
                assert time.monotonic() < deadline, "the tasks did not start"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == -signal.SIGTERM
        finally:
            proc.kill()
            proc.wait()
        assert all(tasks.get(task.id).status is TaskStatus.COMPLETED for task in made)
        assert not set(agents) & {a.id for a in registry.list()}


def test_a_runner_stopped_before_it_started_refuses_to_start() -> None:
    """start() after stop() is an error saying so, not a runner that silently never
    registers."""
    with TaskClient("http://127.0.0.1:9", "") as client:
        runner = AgentRunner("early", client, MemoryRegistry(), lambda task, ctx: None)
        runner.stop()
        with pytest.raises(ConfigError, match="started or stopped already"):
            runner.start()
