"""``agentic status``: the fleet at a glance, once or refreshed with ``--watch``.

Each part (agents, quotas, task counts) is read on its own: a part that cannot be
reached is shown as unknown with a warning, so a task server that is down does not
hide the agents, and the other way round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from ..client import TaskClient
from ..config import Config
from ..errors import AgenticError, ConfigError, NotFoundError
from ..models import (
    AgentAllowance,
    AgentInfo,
    AgentStatus,
    AllowanceStatus,
    QuotaCheckResult,
    UsageRecord,
)
from ..status import get_status
from ..stores import open_allowance_store, open_registry
from ..stores.base import DEFAULT_HEARTBEAT_TTL, AllowanceStore
from ._common import (
    SAYS_ITS_FIX,
    ConfigOption,
    JsonOption,
    Opener,
    StoreOption,
    ago,
    client,
    existing,
    handled,
    interrupt_exits,
    other_store,
    print_json,
    redacted,
    stdout,
    store_config,
    until,
    warn,
)
from ._tables import Col, FittedTable, compact

T = TypeVar("T")
_DEFAULT_WATCH = 2.0


@dataclass
class AgentRow:
    """One agent with its quota (``None`` where there is none or it is unknown)."""

    info: AgentInfo
    allowance: AgentAllowance | None = None
    usage: UsageRecord | None = None
    check: QuotaCheckResult | None = None


@dataclass
class Snapshot:
    """What status shows; ``None`` means "could not be read" (see ``warnings``)."""

    agents: list[AgentRow] | None = None
    pending: int | None = None
    in_progress: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: seconds without a heartbeat after which an agent is shown silent
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL
    #: when it was read
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def silent(self, info: AgentInfo) -> bool:
        """Whether ``info`` stopped heartbeating (its process died, most likely) but
        no dispatcher has marked it offline yet."""
        if info.status == AgentStatus.OFFLINE or info.last_heartbeat is None:
            return False
        return (self.now - info.last_heartbeat).total_seconds() > self.heartbeat_ttl

    def to_data(self) -> dict[str, Any]:
        agents = None
        if self.agents is not None:
            agents = [
                {
                    **row.info.model_dump(mode="json"),
                    "silent": self.silent(row.info),
                    "allowance": row.allowance and row.allowance.model_dump(mode="json"),
                    "usage": row.usage and row.usage.model_dump(mode="json"),
                    "quota": row.check and row.check.model_dump(mode="json"),
                }
                for row in self.agents
            ]
        return {
            "agents": agents,
            "tasks": {"pending": self.pending, "in_progress": self.in_progress},
            "warnings": self.warnings,
        }


def _store(url: str, opener: Opener[T], what: str, snap: Snapshot) -> T | None:
    """Open a store for reading, or note why not (a missing SQLite file is not created).

    A bad store URL (a directory, an unknown option) is no part that could not be read
    but the user's to fix: it ends the command as a usage error, as in every command.
    """
    try:
        return existing(opener, url)
    except ConfigError:
        raise
    except AgenticError as exc:
        snap.warnings.append(f"{what} {redacted(url)}: {exc}")
        return None


def _quotas(store: AllowanceStore, rows: list[AgentRow]) -> None:
    for row in rows:
        row.usage = store.get_usage(row.info.id)
        try:
            row.allowance = store.get_allowance(row.info.id)
            row.check = store.check(row.info.id)
        except NotFoundError:
            continue  # no allowance: the agent gets no work (quotas fail closed)


def collect(cfg: Config, api: TaskClient) -> Snapshot:
    """Read every part that can be read now."""
    snap = Snapshot(heartbeat_ttl=cfg.dispatcher.heartbeat_ttl)
    registry_url = cfg.store_url_for("registry")
    registry = _store(registry_url, open_registry, "agent registry", snap)
    local_id = ""
    if registry is not None:
        try:
            with registry:
                snap.agents = [AgentRow(info) for info in registry.list()]
                local_id = registry.store_id()
        except AgenticError as exc:
            snap.warnings.append(f"agent registry: {exc}")
    quota = _store(cfg.store_url_for("allowance"), open_allowance_store, "quota store", snap)
    if quota is not None and snap.agents is not None:
        try:
            with quota:
                _quotas(quota, snap.agents)
        except AgenticError as exc:
            snap.warnings.append(f"quota store: {exc}")
    try:
        counts = get_status(client=api)
    except AgenticError as exc:
        snap.warnings.append(f"task server {cfg.base_url}: {exc}")
    else:
        snap.pending, snap.in_progress = counts.pending_tasks, counts.in_progress_tasks
        mismatch = other_store(api, registry_url, local_id)
        if mismatch.startswith(SAYS_ITS_FIX):
            snap.warnings.append(mismatch)
        elif mismatch:  # its task counts and these agents would not belong together
            snap.warnings.append(
                f"{mismatch}: its task counts and these agents and quotas do not belong"
                " together; give the store it uses (--store, store_url), or point"
                " base_url at its server"
            )
    return snap


def _used_of(used: int | None, limit: int) -> RenderableType:
    """``used/limit``, as ``agentic allowance show`` writes it (∞: no limit)."""
    if used is None:
        return "?"
    cell = f"{compact(used)}/{compact(limit) if limit > 0 else '∞'}"
    if 0 < limit < used:
        # Jobs are admitted on their estimates and charged what they spent, so use
        # can pass the limit: say by how much.
        return Text(f"{cell} ({compact(used - limit)} over)", style="red")
    return cell


def _over(row: AgentRow) -> bool:
    return (
        row.allowance is not None
        and row.usage is not None
        and 0 < row.allowance.daily_token_limit < row.usage.tokens_used
    )


#: refusals that last until the quota day ends (a full concurrency limit frees as
#: soon as a job ends: the agent is busy, not used up)
_FOR_THE_DAY = frozenset({"daily token limit", "daily job limit"})


def _used_up(row: AgentRow) -> bool:
    check = row.check
    return (
        check is not None
        and check.status is AllowanceStatus.EXCEEDED
        and check.reason in _FOR_THE_DAY
    )


def _row(row: AgentRow, now: datetime, silent: bool) -> list[RenderableType]:
    info = row.info
    # An agent offline or silent runs nothing we know of: its last published load is
    # stale (a killed agent's tasks come back and run elsewhere).
    gone = silent or info.status is AgentStatus.OFFLINE
    load = f"{'-' if gone else info.current_load}/{info.max_load or '∞'}"
    if row.check is None:
        tokens: RenderableType = Text("no allowance", style="red")
        jobs: RenderableType = "-"
    else:
        # Read together with the check: one is known whenever the other is.
        allowance = row.allowance or AgentAllowance(agent_id=info.id)
        tokens = _used_of(row.usage.tokens_used if row.usage else None, allowance.daily_token_limit)
        jobs = _used_of(row.usage.jobs_started if row.usage else None, allowance.daily_job_limit)
    style = {"available": "green", "busy": "yellow", "offline": "red"}[info.status.value]
    # A silent agent still reads available until a dispatcher reaps it: say so. One
    # whose daily tokens or jobs are used up gets no work until the reset: likewise.
    state = Text("silent", style="red") if silent else Text(info.status.value, style=style)
    if not silent and _used_up(row) and info.status is AgentStatus.AVAILABLE:
        state = Text("used up", style="red")
    return [
        info.id,
        state,
        load,
        tokens,
        jobs,
        until(row.check.reset_at if row.check else None, now),
        ago(info.last_heartbeat, now),
    ]


# Dropped at narrow widths from the highest rank down; Agent, State and Tokens stay.
_COLUMNS = (
    Col("Agent"),
    Col("State"),
    Col("Load", drop=3),
    Col("Tokens"),
    Col("Jobs", drop=2),
    Col("Resets", drop=4),
    Col("Heartbeat", drop=1),
)
_RESETS = 5


def agents_table(snap: Snapshot, rows: list[AgentRow]) -> FittedTable:
    """The agents, one a row; the quota day's end once under the table when it is the
    same for every agent (one store: it is), else a Resets column."""
    ordered = sorted(rows, key=lambda r: r.info.id)
    silent = [snap.silent(row.info) for row in ordered]
    cells = [_row(row, snap.now, quiet) for row, quiet in zip(ordered, silent, strict=True)]
    resets = {row.check.reset_at for row in rows if row.check and row.check.reset_at}
    caption = "Tokens and jobs: used/limit"
    if any(silent):
        caption += f"; silent: no heartbeat for over {snap.heartbeat_ttl:g}s"
    if any(_used_up(row) for row in rows):
        caption += "; used up: no work until the quotas reset"
    if any(_over(row) for row in rows):
        caption += (
            "; over: jobs spent more than their estimates (set tasks' estimated_tokens"
            " for the limit to hold)"
        )
    columns = list(_COLUMNS)
    if len(resets) <= 1:
        del columns[_RESETS]
        for line in cells:
            del line[_RESETS]
        if resets:
            caption += f"; quotas reset {until(resets.pop(), snap.now)}"
    return FittedTable(
        columns,
        cells,
        title=f"Agents: {len(rows)}",
        title_justify="left",
        caption=caption if rows else None,
        caption_justify="left",
    )


def render(snap: Snapshot, *, with_warnings: bool) -> RenderableType:
    """The agents table and the task counts (and the warnings, for ``--watch``)."""
    parts: list[RenderableType] = []
    if snap.agents is None:
        parts.append(Text("Agents: unknown", style="yellow"))
    else:
        parts.append(agents_table(snap, snap.agents))
    pending = "unknown" if snap.pending is None else str(snap.pending)
    running = "unknown" if snap.in_progress is None else str(snap.in_progress)
    parts.append(Text(f"Tasks: {pending} pending, {running} in progress"))
    if with_warnings:
        parts.extend(Text(f"warning: {text}", style="yellow") for text in snap.warnings)
    return Group(*parts)


@handled
def status(
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help=f"Refresh every SECONDS (the optional argument, default {_DEFAULT_WATCH:g}).",
        ),
    ] = False,
    seconds: Annotated[
        float | None,
        typer.Argument(
            metavar="SECONDS", help="Refresh interval for --watch.", show_default=False, min=0.1
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Agents (state, load, quota use, heartbeat) and pending / in-progress task counts.

    Exits 1 when a part could not be read (shown as unknown, with a warning), 2 when
    a store URL cannot be used.
    """
    if seconds is not None and not watch:
        raise typer.BadParameter("SECONDS is only valid with --watch", param_hint="SECONDS")
    cfg = store_config(config_path, store_url)
    interval = seconds or _DEFAULT_WATCH
    with client(cfg) as api:
        if not watch:
            snap = collect(cfg, api)
            _show(snap, json_output)
            if snap.warnings:  # a script or health check must see it
                raise typer.Exit(1)
            return
        with interrupt_exits(0):  # stopping is how a watch ends
            _watch(cfg, api, interval, json_output)


def _watch(cfg: Config, api: TaskClient, interval: float, json_output: bool) -> None:
    """Refresh until interrupted: JSON lines, printed blocks (a file or a pipe), or a
    live screen (a terminal)."""
    if json_output:
        while True:  # one JSON document per line and refresh
            print_json(collect(cfg, api).to_data(), indent=None)
            time.sleep(interval)
    elif not stdout().is_terminal:
        while True:  # into a file or a pipe: every refresh, one after the other
            stdout().print(render(collect(cfg, api), with_warnings=True), "")
            time.sleep(interval)
    else:
        with Live(render(collect(cfg, api), with_warnings=True), console=stdout()) as live:
            while True:
                time.sleep(interval)
                live.update(render(collect(cfg, api), with_warnings=True))


def _show(snap: Snapshot, json_output: bool) -> None:
    if json_output:
        print_json(snap.to_data())
        return
    for text in snap.warnings:
        warn(text)
    stdout().print(render(snap, with_warnings=False))
