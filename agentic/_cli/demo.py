"""``agentic demo``: renders :func:`agentic.demo.run_demo`, live or as plain lines."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..demo import AGENTS, LIMITED, DemoSummary, Progress, run_demo
from ..models import TaskStatus
from ._common import EXIT_RUNTIME, handled, stdout

_ORDER = ("pending", "in_progress", "completed", "failed", "blocked")


def _counts(progress: Progress) -> str:
    total = sum(progress.by_status.values())
    parts = [f"{progress.by_status[s]} {s}" for s in _ORDER if progress.by_status.get(s)]
    return f"{total} tasks: " + ", ".join(parts)


def _limit(used: int, limit: int) -> str:
    return f"{used}/{limit}" if limit else str(used)


def _live_view(progress: Progress) -> RenderableType:
    table = Table(title=f"agentic demo  {progress.elapsed:4.1f} s", title_justify="left")
    for title in ("Agent", "Capabilities", "State", "Load", "Jobs", "Tokens", "Cost ¢"):
        table.add_column(title, no_wrap=True)
    for agent in progress.agents:
        style = {"available": "green", "busy": "yellow"}.get(agent.status, "red")
        table.add_row(
            agent.id,
            ", ".join(agent.spec.capabilities),
            Text(agent.status, style=style),
            f"{agent.load}/{agent.spec.max_load}",
            _limit(agent.jobs_started, agent.spec.daily_job_limit),
            str(agent.tokens_used),
            f"{agent.cost_cents:.2f}",
        )
    recent = Text("\n".join(progress.recent), style="dim")
    return Group(table, Text(_counts(progress)), recent)


class _Lines:
    """``--no-live``: one line when the task counts change, at most once a second."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last = ""
        self.at = -1.0

    def __call__(self, progress: Progress) -> None:
        line = _counts(progress)
        if line != self.last and progress.elapsed - self.at >= 1.0:
            self.console.print(f"{progress.elapsed:5.1f}s  {line}", highlight=False)
            self.last, self.at = line, progress.elapsed


def _summary(summary: DemoSummary) -> RenderableType:
    head = Text(
        f"Finished in {summary.elapsed:.1f} s: {summary.count(TaskStatus.COMPLETED)} completed"
        f" ({summary.retried} after a retry), {summary.count(TaskStatus.FAILED)} dead-lettered,"
        f" {summary.waiting} waiting"
    )
    agents = Table(title="Usage per agent", title_justify="left")
    for title in ("Agent", "Jobs", "Tokens", "Cost ¢"):
        agents.add_column(title, justify="left" if title == "Agent" else "right")
    for agent in summary.agents:
        jobs = _limit(agent.jobs_started, agent.spec.daily_job_limit)
        agents.add_row(agent.id, jobs, str(agent.tokens_used), f"{agent.cost_cents:.2f}")
    models = Table(title="Usage per model", title_justify="left")
    for title in ("Model", "Tokens", "Cost ¢"):
        models.add_column(title, justify="left" if title == "Model" else "right")
    for model, (tokens, cents) in summary.models.items():
        models.add_row(model, str(tokens), f"{cents:.2f}")
    verdict = (
        Text("Every task ended as designed.", style="green")
        if summary.ok
        else Text("Not as designed:\n  " + "\n  ".join(summary.problems), style="red")
    )
    return Group(head, agents, models, Text("\n".join(_notes(summary))), verdict)


def _notes(summary: DemoSummary) -> list[str]:
    """What the scenario set out to show, as it happened."""
    by_key = {task.spec.key: task for task in summary.tasks}
    chain = [by_key[f"chain-{n}"] for n in range(1, 5)]
    spans = [
        f"{t.spec.key} at {min(a.started for a in t.attempts):.1f}s" if t.attempts else t.spec.key
        for t in chain
    ]
    flaky, poison = by_key["flaky"], by_key["poison"]
    notes = [
        "Dependency chain (start times): " + " -> ".join(spans),
        f"Flaky task: {flaky.status} after {flaky.retries} retry;"
        f" poison task: {poison.status} after {len(poison.attempts)} attempts",
    ]
    reached = summary.limit_reached_at
    if reached is None:
        return [*notes, f"{LIMITED}: never reached its daily job limit"]
    limited = next(spec for spec in AGENTS if spec.id == LIMITED)
    elsewhere = sum(
        1
        for task in summary.tasks
        if set(task.spec.labels) <= set(limited.capabilities)
        and any(a.started > reached and a.agent_id != LIMITED for a in task.attempts)
    )
    return [
        *notes,
        f"{LIMITED}: reached its daily job limit at {reached:.1f} s; {elsewhere} tasks it"
        " could take ran on other agents after that",
    ]


@handled
def demo(
    seconds: Annotated[
        float, typer.Option(min=5, metavar="N", help="Give up after N seconds.")
    ] = 30.0,
    no_live: Annotated[
        bool, typer.Option("--no-live", help="Plain progress lines instead of a live table.")
    ] = False,
) -> None:
    """The whole system in one process: task API, dispatcher, three agents, 30 tasks."""
    console = stdout()
    # The scenario fails tasks on purpose; the runner's warnings about them would
    # tear through the live table. The summary reports every failure.
    logging.getLogger("agentic").setLevel(logging.ERROR)
    console.print(
        "agentic demo: task API on loopback, SQLite in a temp dir, 3 agents, 30 tasks",
        highlight=False,
    )
    if no_live or not console.is_terminal:
        summary = run_demo(seconds, on_progress=_Lines(console))
    else:
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            summary = run_demo(seconds, on_progress=lambda p: live.update(_live_view(p)))
    console.print(_summary(summary))
    if not summary.ok:
        raise typer.Exit(EXIT_RUNTIME)
