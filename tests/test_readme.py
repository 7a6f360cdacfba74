"""The README's library example runs as written against a real task server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentic.events import EventType
from agentic.models import TaskStatus
from agentic.stores import open_event_log, open_task_store
from agentic.testing import running_server

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.slow


def example() -> str:
    """The first Python block of the README."""
    found = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert found, "the README has no Python example"
    return found.group(1)


def test_readme_example_runs_a_task_to_completion(tmp_path: Path) -> None:
    """The example registers an agent, dispatches one task and follows it to completed;
    its usage is in the event log, recorded with the charge."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    script = tmp_path / "example.py"
    script.write_text(example(), encoding="utf-8")
    tasks = open_task_store(url)
    with running_server(tasks) as base_url:
        env = {
            **os.environ,
            "HOME": str(tmp_path),  # no user config file is read
            "AGENTIC_BASE_URL": base_url,
            "AGENTIC_STORE_URL": url,
        }
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert "working on add type hints" in done.stdout
    [task] = tasks.list()
    assert (task.status, task.claimed_by) == (TaskStatus.COMPLETED, "coder-1")
    tasks.close()
    with open_event_log(url) as log:
        usage = [e.event for e in log.read() if e.event.type == EventType.USAGE_RECORDED]
    assert [(e.source, e.payload["tokens_in"]) for e in usage] == [("agentic.quota", 1_200)]
