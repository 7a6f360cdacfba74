"""A runner process frozen (SIGSTOP) past its id lease's lapse, then resumed (SIGCONT),
on one SQLite file: its commands, in process groups of their own, ran on and ended
meanwhile; nobody took its id, so their ends are reported, not run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from agentic.client import TaskClient
from agentic.models import Task, TaskStatus
from agentic.stores import open_registry, open_task_store
from agentic.testing import running_server

from .test_runner import wait_for

AGENT = "frozen-1"

# The runner: a lease of 2 s with a cancel grace of 0.2 s lapses 0.8 s unrenewed.
RUNNER = textwrap.dedent(
    """
    import sys
    from agentic.client import TaskClient
    from agentic.runner import AgentRunner, SubprocessHandler
    from agentic.stores import open_registry

    url, base, mark = sys.argv[1:]
    command = ["sh", "-c", 'echo start >> "$0"; sleep 0.5; echo ran >> "$0"', mark]
    AgentRunner(
        "frozen-1", TaskClient(base, "", retries=0), open_registry(url),
        SubprocessHandler(command), capabilities=["sh"], max_load=1,
        heartbeat_interval=0.1, poll_interval=0.05, log_flush_interval=0.05,
        cancel_grace=0.2, id_lease=2.0, state_dir=sys.argv[3] + ".state",
    ).run()
    """
)


def test_a_runner_frozen_past_its_id_lease_reports_what_ended_meanwhile(tmp_path: Path) -> None:
    """SIGSTOP for 2 s (the id lease lapses after 0.8 s) while its command runs, then
    SIGCONT: the command, which ended while the runner was frozen, ran once; the task
    is completed by that run (the runner asks the registry before lapsing on waking,
    instead of cancelling and running again what had ended)."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    mark = tmp_path / "mark"
    with (
        open_task_store(url) as tasks,
        open_registry(url) as registry,
        running_server(tasks, requeue_interval=None) as base,
        TaskClient(base, "", retries=0) as client,
    ):
        runner = subprocess.Popen([sys.executable, "-c", RUNNER, url, base, str(mark)])
        try:
            wait_for(lambda: AGENT in {a.id for a in registry.list()}, timeout=10)
            task = tasks.create(Task(title="t", labels=["sh"]))
            client.claim_task(task.id, AGENT, job_id="job-1", lease_seconds=60)
            wait_for(lambda: mark.exists() and "start" in mark.read_text(), timeout=10)
            os.kill(runner.pid, signal.SIGSTOP)
            time.sleep(2.0)  # the command ends; the runner's id lease is past its lapse
            os.kill(runner.pid, signal.SIGCONT)
            wait_for(lambda: tasks.get(task.id).status is not TaskStatus.IN_PROGRESS, timeout=10)
            time.sleep(1.0)  # a rerun, were there one, would have started by now
            assert tasks.get(task.id).status is TaskStatus.COMPLETED
            assert tasks.get(task.id).job_id == "job-1"
            assert mark.read_text().split() == ["start", "ran"]
        finally:
            runner.send_signal(signal.SIGCONT)
            runner.terminate()
            runner.wait(15)
