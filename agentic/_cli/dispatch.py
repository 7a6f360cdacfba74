"""``agentic dispatch``: the dispatcher loop, or one pass with ``--once``."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated

import typer

from .._printable import printable
from .._signals import late_signals_logged
from ..dispatcher import Dispatcher, DispatchReport
from ..events import LoggingEmitter
from ..router import DefaultRouter
from ..stores import open_registry
from ._common import (
    ConfigOption,
    JsonOption,
    StoreOption,
    client,
    config,
    event_emitter,
    handled,
    print_json,
    quota_service,
    retry_policy,
    stdout,
    store_options,
    warn,
)
from ._logging import setup_logging


def _print_report(report: DispatchReport) -> None:
    # Reasons quote labels ("[gpu]") and messages: plain text, not rich markup.
    out = stdout()
    lines = [report.summary()]
    lines += [
        f"  dispatched {task_id} -> {agent_id}" for task_id, agent_id in report.dispatched.items()
    ]
    lines += [f"  waiting    {task_id}: {why}" for task_id, why in report.waiting.items()]
    lines += [f"  failed     {task_id}: {error}" for task_id, error in report.failed.items()]
    lines += [f"  dead letter {task_id}" for task_id in report.dead_lettered]
    for line in lines:  # a label may hold control characters: shown as escapes
        out.print(printable(line), highlight=False, markup=False)


@handled
def dispatch(
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    interval: Annotated[
        float | None,
        typer.Option(
            metavar="S",
            help="Seconds between passes when no new work wakes the dispatcher"
            " (default: config's, 5).",
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run one pass, print it, exit (with dispatcher.exclusive: only when no"
            " other dispatcher is active; else it says which one is and exits 0).",
        ),
    ] = False,
    json_output: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Route pending tasks to agents within quota, pass after pass (SIGTERM stops)."""
    options, stores = store_options(store_url)
    cfg = config(
        config_path,
        {**options, "dispatcher.interval": "--interval"},
        **stores,
        dispatcher={"interval": interval},
    )
    # One pass prints its own report; its event lines would only repeat it.
    setup_logging(verbose, logging.WARNING if once else logging.INFO)
    with contextlib.ExitStack() as stack:
        # Entered first, left last: a signal while the rest closes is only logged.
        after_stop = stack.enter_context(late_signals_logged())
        registry = stack.enter_context(open_registry(cfg.store_url_for("registry")))
        tasks = stack.enter_context(client(cfg))
        emitter = stack.enter_context(event_emitter(cfg, LoggingEmitter()))
        dispatcher = Dispatcher(
            registry,
            DefaultRouter(),
            # The thresholds a reserve crosses go to the event log with the reserve.
            quota_service(stack, cfg, emitter),
            tasks,
            emitter,
            retry_policy(cfg),
            heartbeat_ttl=cfg.dispatcher.heartbeat_ttl,
            lease_seconds=cfg.dispatcher.lease_seconds,
            claim_concurrency=cfg.dispatcher.claim_concurrency,
            claim_batch=cfg.dispatcher.claim_batch,
            exclusive=cfg.dispatcher.exclusive,
            active_lease=cfg.dispatcher.active_lease,
        )
        if once:
            report = dispatcher.run_turn(cfg.dispatcher.interval)
            elsewhere = None if report is not None else dispatcher.lease_holder
            if report is None:
                # Another dispatcher is active: it dispatches these tasks; a second
                # pass beside it would only race it for the same claims.
                warn(
                    f"no pass made: dispatcher {dispatcher.lease_holder} is active and"
                    " dispatches these tasks (dispatcher.exclusive); stop it, or set"
                    " exclusive: false to run passes side by side"
                )
                report = DispatchReport()
                if not json_output:
                    return  # no pass summary: none was made
            if json_output:
                print_json(
                    {
                        "dispatched": report.dispatched,
                        "waiting": report.waiting,
                        "failed": report.failed,
                        "dead_lettered": report.dead_lettered,
                        "active_elsewhere": elsewhere,
                    }
                )
            else:
                _print_report(report)
            return
        dispatcher.run(interval=cfg.dispatcher.interval)
        after_stop()
