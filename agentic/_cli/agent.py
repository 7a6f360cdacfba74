"""``agentic agent run``: one agent that runs a command for each task claimed for it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Literal

import typer

from .._signals import late_signals_logged
from ..models import AgentInfo
from ..runner import AgentRunner, GitWorkspace, Handler, SubprocessHandler
from ..stores import open_registry
from ..stores._tasks import require_label, require_name
from ._common import (
    ConfigOption,
    StoreOption,
    client,
    config,
    event_emitter,
    fail,
    handled,
    one_of,
    quota_service,
    stdout,
    store_options,
)
from ._help import App
from ._logging import setup_logging

agent_app = App(help="Run an agent on this machine.")


@agent_app.command(
    "run",
    context_settings={"allow_interspersed_args": False},
    epilog="Example: agentic agent run --id coder-1 --capability python --max-load 2"
    " -- claude -p --output-format text",
)
@handled
def run(
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="CMD",
            help="Command run per task; {file} is the task file with --input file.",
        ),
    ],
    agent_id: Annotated[str, typer.Option("--id", help="Agent id (unique in the fleet).")],
    capability: Annotated[
        list[str], typer.Option("--capability", help="What it can do (repeatable).")
    ],
    max_load: Annotated[int, typer.Option(min=1, help="Tasks at a time.")],
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    max_job_duration: Annotated[
        float | None, typer.Option(min=0.001, metavar="S", help="Seconds before a task is killed.")
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="S",
            help="Seconds each lease renewal asks for, > 10 (default: config's"
            " agent.lease_seconds; unset, the length each claim was made with).",
        ),
    ] = None,
    input_mode: Annotated[
        Literal["stdin", "file"],
        typer.Option(
            "--input",
            help="How CMD gets the task: on stdin or as {file}.",
            **one_of(("stdin", "file"), "an input mode"),
        ),
    ] = "stdin",
    task_format: Annotated[
        Literal["text", "json"],
        typer.Option(
            "--format",
            help="Title and description as text, or the task as JSON.",
            **one_of(("text", "json"), "a task format"),
        ),
    ] = "text",
    git_repo: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH", help="Run in this git repository, one branch and commit per task."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Where job usage files outlive this process (default: config's"
            " agent.state_dir; unset, the user state directory).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Register, then run `-- CMD ...` for each task claimed for this agent; SIGTERM drains.

    CMD may report the tokens it used as JSON lines appended to $AGENTIC_USAGE_FILE
    ({"model": "m", "tokens_in": 1200, "tokens_out": 300}): they are charged, also when
    this process is killed mid-task (kept in --state-dir, settled when it starts again).
    """
    require_name("agent id (--id)", agent_id)
    for one in capability:
        require_label("capability (--capability)", one)
    options, stores = store_options(store_url)
    cfg = config(
        config_path,
        {**options, "agent.lease_seconds": "--lease-seconds", "agent.state_dir": "--state-dir"},
        **stores,
        # Given on the command line, relative to where it is typed.
        agent={
            "lease_seconds": lease_seconds,
            "state_dir": state_dir and str(state_dir.expanduser().absolute()),
        },
    )
    command_handler = SubprocessHandler(command, input=input_mode, format=task_format)
    command_handler.check(git_repo)  # before registering: a missing binary would bounce tasks
    handler: Handler = command_handler
    if git_repo is not None:
        handler = GitWorkspace(git_repo, handler)
    setup_logging(verbose)
    info = AgentInfo(id=agent_id, name=name, capabilities=capability, max_load=max_load)
    with contextlib.ExitStack() as stack:
        # Entered first, left last: a signal while the rest closes is only logged.
        after_stop = stack.enter_context(late_signals_logged())
        registry = stack.enter_context(open_registry(cfg.store_url_for("registry")))
        api = stack.enter_context(client(cfg, agent_id))
        # The runner logs each task itself: events go to the event log and configured sinks.
        emitter = event_emitter(cfg)
        if emitter is not None:
            stack.enter_context(emitter)
        runner = AgentRunner(
            info,
            api,
            registry,
            handler,
            quota_service(stack, cfg, emitter),
            lease_seconds=cfg.agent.lease_seconds,
            max_job_duration=max_job_duration,
            emitter=emitter,
            # The agent id frees when the fleet counts the agent as gone (reaped).
            id_lease=cfg.dispatcher.heartbeat_ttl,
            state_dir=cfg.agent.state_dir or None,
        )
        stdout().print(
            # Before the id lock and registration, which may wait: said as starting.
            f"agent {agent_id} ({', '.join(capability)}; {max_load} at a time) starting"
            f" against {cfg.base_url}; Ctrl-C or SIGTERM to stop",
            highlight=False,
        )
        runner.run()
        after_stop()
    stdout().print(
        f"agent {agent_id} stopped: {runner.completed} completed, {runner.failed} failed,"
        f" {runner.released} released, {runner.errors} error{'' if runner.errors == 1 else 's'}",
        highlight=False,
    )
    if runner.displaced_by is not None:
        raise fail(
            f"agent {agent_id} is now run by {runner.displaced_by} (another runner with the"
            " same --id took it over): this one stopped; its running tasks were cancelled"
            " and left to that runner"
        )
