"""``agentic agents ...`` and ``agentic allowance ...``: the registry and the quotas."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.table import Table

from ..errors import ConfigError, NotFoundError
from ..models import AgentAllowance, FailureCharge, ModelQuota
from ..stores import open_allowance_store, open_registry
from ..stores.base import require_id
from ._common import (
    ConfigOption,
    JsonOption,
    StoreOption,
    ago,
    clock_time,
    existing,
    handled,
    one_of,
    print_json,
    stdout,
    store_config,
)
from ._help import App
from ._tables import Col, FittedTable

agents_app = App(help="The agent registry: list agents, deregister one.", no_args_is_help=False)
allowance_app = App(help="Quotas: per-agent allowances and per-model limits.")


# --- agents ---
def _list_agents(config_path: Path | None, store_url: str | None, json_output: bool) -> None:
    cfg = store_config(config_path, store_url)
    with existing(open_registry, cfg.store_url_for("registry")) as registry:
        agents = sorted(registry.list(), key=lambda a: a.id)
    if json_output:
        print_json(agents)
        return
    now = datetime.now(UTC)
    table = Table(title=f"Agents: {len(agents)}", title_justify="left")
    for title in ("Agent", "Name", "State", "Load", "Capabilities", "Heartbeat", "Registered"):
        table.add_column(title)
    for agent in agents:
        table.add_row(
            agent.id,
            agent.name,
            agent.status.value,
            f"{agent.current_load}/{agent.max_load or '∞'}",
            ", ".join(agent.capabilities),
            ago(agent.last_heartbeat, now),
            clock_time(agent.registered_at),
        )
    stdout().print(table)


@agents_app.callback(invoke_without_command=True)
@handled
def agents(
    ctx: typer.Context,
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """The agent registry (lists the agents when no command is given)."""
    if ctx.invoked_subcommand is None:
        _list_agents(config_path, store_url, json_output)


@agents_app.command("list")
@handled
def list_agents(
    config_path: ConfigOption = None, store_url: StoreOption = None, json_output: JsonOption = False
) -> None:
    """Every registered agent: state, load, capabilities, last heartbeat."""
    _list_agents(config_path, store_url, json_output)


@agents_app.command("deregister")
@handled
def deregister(
    agent_id: Annotated[str, typer.Argument(metavar="ID", help="Agent id.")],
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
) -> None:
    """Remove an agent from the registry (a running runner registers again)."""
    cfg = store_config(config_path, store_url)
    with existing(open_registry, cfg.store_url_for("registry")) as registry:
        registry.get(agent_id)  # an unknown id is an error, not a silent no-op
        registry.deregister(agent_id)
    stdout().print(f"deregistered {agent_id}", highlight=False)


# --- allowances ---
def _limit(value: float) -> str:
    return "unlimited" if not value else f"{value:g}"


# A narrow terminal drops these from the highest rank down rather than cut numbers.
_ALLOWANCE_COLUMNS = (
    Col("Agent"),
    Col("Tokens"),
    Col("Jobs"),
    Col("Active", drop=1),
    Col("Max job s", drop=3),
    Col("Models", wrap=10),
    Col("Failed", drop=2),
)
_ALLOWANCE_CAPTION = (
    "Tokens, jobs and active jobs: used/limit; failed: what a failed job is charged"
    " (half its tokens or all)"
)


@allowance_app.command("show")
@handled
def show(
    agent_id: Annotated[
        str | None, typer.Argument(metavar="AGENT", help="One agent (default: all).")
    ] = None,
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Allowances and today's usage, of one agent or of all."""
    cfg = store_config(config_path, store_url)
    with existing(open_allowance_store, cfg.store_url_for("allowance")) as store:
        chosen = [store.get_allowance(agent_id)] if agent_id else store.allowances()
        rows = [(a, store.get_usage(a.agent_id)) for a in chosen]
    if json_output:
        data = [{"allowance": a, "usage": u} for a, u in rows]
        print_json(data[0] if agent_id else data)
        return
    cells: list[list[RenderableType]] = [
        [
            a.agent_id,
            f"{u.tokens_used}/{_limit(a.daily_token_limit)}",
            f"{u.jobs_started}/{_limit(a.daily_job_limit)}",
            f"{u.active_jobs}/{_limit(a.concurrent_jobs)}",
            _limit(a.max_job_duration),
            ", ".join(a.model_allowlist) or "any",
            a.failure_charge.value,
        ]
        for a, u in rows
    ]
    table = FittedTable(
        _ALLOWANCE_COLUMNS,
        cells,
        title=f"Allowances: {len(rows)}",
        title_justify="left",
        caption=_ALLOWANCE_CAPTION if rows else None,
        caption_justify="left",
    )
    stdout().print(table)


@allowance_app.command("set")
@handled
def set_allowance(
    agent_id: Annotated[str, typer.Argument(metavar="AGENT", help="Agent id.")],
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    daily_tokens: Annotated[int | None, typer.Option(min=0, help="0: unlimited.")] = None,
    daily_jobs: Annotated[int | None, typer.Option(min=0, help="0: unlimited.")] = None,
    concurrent: Annotated[int | None, typer.Option(min=0, help="0: unlimited.")] = None,
    max_job_duration: Annotated[
        float | None, typer.Option(min=0, metavar="S", help="Seconds; 0: unlimited.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", metavar="M", help="Allowed model (repeatable; replaces the list; '' = any)."
        ),
    ] = None,
    failure_charge: Annotated[
        FailureCharge | None,
        typer.Option(
            help="Tokens a failed job is charged: half (go-agentic's rule, the default)"
            " or full (the daily token limit then caps what the agent spends).",
            **one_of(FailureCharge, "a failure charge", FailureCharge),
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create or change an agent's allowance; options not given keep their value."""
    changes: dict[str, Any] = {
        "daily_token_limit": daily_tokens,
        "daily_job_limit": daily_jobs,
        "concurrent_jobs": concurrent,
        "max_job_duration": max_job_duration,
        "model_allowlist": None if model is None else [m for m in model if m],
        "failure_charge": failure_charge,
    }
    changes = {key: value for key, value in changes.items() if value is not None}
    if not changes:
        raise ConfigError("nothing to set: give at least one of the options (see --help)")
    require_id("AGENT", agent_id)
    cfg = store_config(config_path, store_url)
    with open_allowance_store(cfg.store_url_for("allowance")) as store:
        try:
            current = store.get_allowance(agent_id)
        except NotFoundError:
            current = AgentAllowance(agent_id=agent_id)
        allowance = current.model_copy(update=changes)
        store.set_allowance(allowance)
    if json_output:
        print_json(allowance)
    else:
        stdout().print(f"allowance of {agent_id} set", highlight=False)


@allowance_app.command("model")
@handled
def model_quota(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name.")],
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    daily_tokens: Annotated[
        int | None, typer.Option(min=0, help="Tokens per day, all agents; 0: unlimited.")
    ] = None,
    hourly_rate: Annotated[
        int | None, typer.Option(min=0, help="Requests per rolling hour; 0: unlimited.")
    ] = None,
    cost_ceiling: Annotated[
        int | None, typer.Option(min=0, metavar="CENTS", help="Cents per day; 0: unlimited.")
    ] = None,
    input_price: Annotated[
        float | None, typer.Option(min=0, metavar="C", help="Cents per million input tokens.")
    ] = None,
    output_price: Annotated[
        float | None, typer.Option(min=0, metavar="C", help="Cents per million output tokens.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show a model's quota and usage; with options, set them (others keep their value)."""
    changes: dict[str, Any] = {
        "daily_token_budget": daily_tokens,
        "hourly_rate_limit": hourly_rate,
        "cost_ceiling": cost_ceiling,
        "input_price": input_price,
        "output_price": output_price,
    }
    changes = {key: value for key, value in changes.items() if value is not None}
    require_id("MODEL", model)
    cfg = store_config(config_path, store_url)
    with open_allowance_store(cfg.store_url_for("allowance")) as store:
        try:
            quota: ModelQuota | None = store.get_model_quota(model)
        except NotFoundError:
            quota = None
        if changes:
            quota = (quota or ModelQuota(model=model)).model_copy(update=changes)
            store.set_model_quota(quota)
        usage = store.get_model_usage(model)
    if json_output:
        print_json({"quota": quota, "usage": usage})
        return
    out = stdout()
    if quota is None:
        out.print(f"{model}: no quota set (unlimited, costs not computed)", highlight=False)
    else:
        out.print(
            f"{model}: tokens/day {_limit(quota.daily_token_budget)},"
            f" requests/hour {_limit(quota.hourly_rate_limit)},"
            f" cents/day {_limit(quota.cost_ceiling)}\n"
            f"prices: {quota.input_price:g} input, {quota.output_price:g} output"
            " (cents per million tokens)",
            highlight=False,
        )
    # Requests are what requests/hour limits: counted at each reservation naming the
    # model (a dispatch, or go-agentic's job_started report), so usage a job reports
    # on it for a task that named none adds tokens, not a request.
    requests = usage.requests_last_hour
    out.print(
        f"today: {usage.tokens_used} tokens ({usage.tokens_reserved} reserved),"
        f" {usage.cost_used / 1e6:.4f} cents\n"
        f"last hour: {requests} request{'' if requests == 1 else 's'} (tasks naming this"
        " model, counted when dispatched)",
        highlight=False,
    )
