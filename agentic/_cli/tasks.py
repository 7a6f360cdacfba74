"""``agentic submit`` and ``agentic logs``: one task through the task API."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from ..client import TaskClient
from ..logs import FINISHED, stream_logs
from ..models import Priority, TaskStatus
from ..submit import submit_task
from ._common import ConfigOption, JsonOption, client, config, handled, interrupt_exits, print_json

# How often ``logs --json -f`` asks for news: interactive, yet cheap for the server.
_JSON_POLL = 0.5


@handled
def submit(
    title: Annotated[str, typer.Argument(metavar="TITLE", help="What to do.")],
    config_path: ConfigOption = None,
    description: Annotated[str, typer.Option("--description", "-d", help="Details.")] = "",
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", help="Capability an agent needs (repeatable)."),
    ] = None,
    priority: Annotated[Priority, typer.Option("--priority", "-p")] = Priority.MEDIUM,
    project: Annotated[str | None, typer.Option(help="Project (default: config's).")] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option("--depends-on", metavar="ID", help="Task that must complete first."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model the task will use (for quotas).")] = "",
    estimated_tokens: Annotated[
        int, typer.Option(min=0, help="Tokens to reserve when dispatching.")
    ] = 0,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries before the dead letter.")] = 3,
    json_output: JsonOption = False,
) -> None:
    """Create a pending task; prints its id."""
    cfg = config(config_path)
    with client(cfg) as api:
        task = submit_task(
            api,
            title,
            description=description,
            labels=label or (),
            priority=priority,
            project=cfg.project if project is None else project,
            dependencies=depends_on or (),
            model=model,
            estimated_tokens=estimated_tokens,
            max_retries=max_retries,
        )
    if json_output:
        print_json(task)
    else:
        sys.stdout.write(task.id + "\n")


@handled
def logs(
    task_id: Annotated[str, typer.Argument(metavar="TASK", help="Task id.")],
    config_path: ConfigOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the task ends.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (status, log).")
    ] = False,
) -> None:
    """Print a task's status changes and log lines (Ctrl-C stops following)."""
    cfg = config(config_path)
    with client(cfg) as api, interrupt_exits(0):
        if json_output:
            _json_lines(api, task_id, follow)
        else:
            stream_logs(api, task_id, sys.stdout, follow=follow)


def _json_lines(api: TaskClient, task_id: str, follow: bool) -> None:
    """NDJSON: ``{"kind": "status", ...}`` on each change, ``{"kind": "log", ...}`` per line.

    Polls the plain endpoints rather than following the SSE stream: twice a second
    is interactive enough and cheap for the server, and the code stays trivial.
    """
    status: TaskStatus | None = None
    offset = 0
    while True:
        task = api.get_task(task_id)
        if task.status != status:
            status = task.status
            print_json({"kind": "status", "task_id": task_id, "status": status}, indent=None)
        # Status first, then the log: once a final status is printed, every line
        # written before the task ended follows it.
        while (page := api.get_logs(task_id, offset)).lines:
            for index, line in enumerate(page.lines, start=page.offset):
                print_json({"kind": "log", "offset": index, "line": line}, indent=None)
            offset = page.next_offset
        if not follow or status in FINISHED:
            return
        time.sleep(_JSON_POLL)
