"""``agentic admin ...``: upkeep of what agentic leaves on the servers it uses and on
this machine."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import HEARTBEAT_INTERVAL
from ..errors import ConfigError
from ..runner._idlease import id_lease_ttl
from ..runner._journal import default_state_dir, journaled_agents
from ..runner._recovery import Settled
from ..runner._settle import AgentSettled, settle_usage
from ..stores import accept_redis_store, open_registry, prune_redis_functions
from ..stores._tasks import require_name
from ._common import (
    ConfigOption,
    JsonOption,
    StoreOption,
    client,
    config,
    event_emitter,
    fail,
    handled,
    other_store,
    print_json,
    quota_service,
    stdout,
    store_config,
    store_options,
    warn,
)
from ._help import App
from ._logging import setup_logging

admin_app = App(help="Upkeep of the servers agentic uses, and of this machine's agent files.")


@admin_app.command("prune-functions")
@handled
def prune_functions(
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be deleted.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Delete other agentic versions' Redis Functions libraries from a Redis server.

    Libraries are named agentic_<sha1>; this version's are kept."""
    cfg = store_config(config_path, store_url)
    pruned = prune_redis_functions(cfg.store_url, dry_run=dry_run)
    if pruned.deleted:
        warn(
            "an agentic version other than this one still running against this Redis"
            " loads its libraries again at its next call: pruning is safe, and costs"
            " that version one load"
        )
    if json_output:
        print_json({"kept": pruned.kept, "deleted": pruned.deleted, "dry_run": dry_run})
        return
    out = stdout()
    for name in pruned.kept:
        out.print(f"kept {name}", highlight=False)
    for name in pruned.deleted:
        out.print(f"{'would delete' if dry_run else 'deleted'} {name}", highlight=False)
    summary = f"{len(pruned.kept)} kept, {len(pruned.deleted)}"
    if dry_run:
        out.print(f"{summary} to delete (dry run: nothing deleted)", highlight=False)
    else:
        out.print(f"{summary} deleted", highlight=False)


@admin_app.command("accept-store")
@handled
def accept_store(config_path: ConfigOption = None, store_url: StoreOption = None) -> None:
    """Accept a Redis store that went back in time, as it now is.

    After a failover to a replica that had not caught up, or a restored backup, every
    agentic process refuses the store (the writes since are lost: tasks done since may
    run again, usage charged since is forgotten). Check the tasks and usage first;
    then this lets every process, running or new, go on from the store as it is."""
    cfg = store_config(config_path, store_url)
    back = accept_redis_store(cfg.store_url)
    out = stdout()
    if back is None:
        out.print("the store was not marked as gone back: nothing changed", highlight=False)
        return
    found, _, seen = back.partition(" ")
    count = f"its write count was {found}" if found else "its write count was gone"
    out.print(
        f"accepted the store as it is ({count} where a process had seen {seen}):"
        " every agentic process on it goes on from it",
        highlight=False,
    )


@admin_app.command(
    "settle-usage",
    epilog="Example: agentic admin settle-usage --agent coder-1 --dry-run",
)
@handled
def settle_usage_command(
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    agents: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            metavar="ID",
            help="An agent id whose files to settle (repeatable; default: every agent"
            " id with files in the state directory).",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="The agents' state directory (default: config's agent.state_dir;"
            " unset, the user state directory).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be settled.")
    ] = False,
    json_output: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Settle the usage files of agents no runner runs (tokens spent before a kill).

    The files are in this machine's state directory; they are settled as a runner of
    the same id would when it starts again.

    Each agent id is taken as a runner takes it (its id lease): one a live runner
    holds is skipped, its files are that runner's. A job whose task is still claimed
    by the agent under that job id is settled and reported as decided when its run
    ended with a result (not run again), else given back (pending again, no retry
    counted) and settled for what it recorded: as decided when its run ended, else
    as a failed job. Any other job is settled as its file says. Exit 1 when a job could
    not be settled (its file is kept for another run), or an --agent is run by a
    live runner.
    """
    for agent_id in agents or []:
        require_name("agent id (--agent)", agent_id)
    options, stores = store_options(store_url)
    given = state_dir and str(state_dir.expanduser().absolute())
    cfg = config(
        config_path,
        {**options, "agent.state_dir": "--state-dir"},
        **stores,
        agent={"state_dir": given},
    )
    directory = Path(cfg.agent.state_dir) if cfg.agent.state_dir else default_state_dir()
    if given and not directory.is_dir():
        raise ConfigError(f"--state-dir {directory}: no such directory")
    setup_logging(verbose, logging.WARNING)  # what it did is its output
    agent_ids = list(dict.fromkeys(agents or journaled_agents(directory)))
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(open_registry(cfg.store_url_for("registry")))
        api = stack.enter_context(client(cfg))
        mismatch = other_store(api, cfg.store_url_for("registry"), registry.store_id())
        if mismatch:
            # Its tasks would be unknown there, job after job: said once, up front.
            warn(f"{mismatch}: jobs whose task it does not know are kept, not settled")
        emitter = event_emitter(cfg)
        if emitter is not None:
            stack.enter_context(emitter)
        found = settle_usage(
            directory,
            agent_ids,
            registry,
            api,
            quota_service(stack, cfg, emitter),
            # As a runner's, so that one starting meanwhile waits for this command.
            id_lease=id_lease_ttl(HEARTBEAT_INTERVAL, cfg.dispatcher.heartbeat_ttl),
            dry_run=dry_run,
            on_error=lambda what, exc: problems.append(f"{what}: {exc}"),
        )
    for problem in problems:
        warn(problem)
    if json_output:
        print_json({"state_dir": str(directory), "dry_run": dry_run, "agents": _data(found)})
    else:
        _print(found, directory, dry_run)
    named = set(agents or [])
    if any(_left(job, dry_run) for agent in found for job in agent.jobs):
        raise fail("some jobs were not settled: their files are kept for another run")
    if any(agent.run_by and agent.agent_id in named for agent in found):
        raise fail("an agent given with --agent is run by a live runner: its files are its own")


def _left(job: Settled, dry_run: bool) -> bool:
    """Whether ``job`` is (or, in a dry run, would be) left unsettled."""
    return job.action == "unknown" or not (dry_run or job.done)


def _decision(job: Settled) -> str:
    """What is (or would be) done with ``job``, in words."""
    if job.action == "unknown":
        return "kept: the task API could not tell whether its task is still claimed"
    event = job.left.settlement()[2]
    how = f"settle as {event.value}" if event is not None else "give its reservation back"
    if job.action == "report" and job.left.decided is not None:
        return f"report it {job.left.decided.report} as decided, {how}"
    how += " (as decided)" if job.left.end is not None else " (it died running)"
    return f"release the task, {how}" if job.action == "release" else how


def _data(found: list[AgentSettled]) -> list[dict[str, Any]]:
    return [
        {
            "agent": agent.agent_id,
            "run_by": agent.run_by,
            "jobs": [
                {
                    "job": job.left.job_id,
                    "task": job.left.task_id,
                    "tokens_in": job.left.tokens_in,
                    "tokens_out": job.left.tokens_out,
                    "action": job.action,
                    "decision": _decision(job),
                    "done": job.done,
                }
                for job in agent.jobs
            ],
        }
        for agent in found
    ]


def _print(found: list[AgentSettled], directory: Path, dry_run: bool) -> None:
    out = stdout()
    if not found:
        out.print(f"no job usage files in {directory}", highlight=False)
        return
    settled = left = 0
    for agent in found:
        if agent.run_by is not None:
            out.print(
                f"agent {agent.agent_id}: skipped, run by {agent.run_by} (its files are"
                " its runner's)",
                highlight=False,
            )
            continue
        if not agent.jobs:
            out.print(f"agent {agent.agent_id}: nothing to settle", highlight=False)
        for job in agent.jobs:
            tokens = job.left.tokens_in + job.left.tokens_out
            state = "not done" if _left(job, dry_run) else "dry run" if dry_run else "done"
            out.print(
                f"agent {agent.agent_id} job {job.left.job_id} (task {job.left.task_id}):"
                f" {tokens} tokens, {state}: {_decision(job)}",
                highlight=False,
            )
            settled, left = settled + job.done, left + _left(job, dry_run)
    if dry_run:
        out.print(f"dry run: nothing settled ({left} would be left)", highlight=False)
    else:
        out.print(f"{settled} settled, {left} left", highlight=False)
