"""``agentic tasks``: listing, filters, paging, output, errors; and tables at 80 columns.
``agentic retry``: a failed task and what it blocked re-queued."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from rich.console import Console
from typer.testing import CliRunner, Result

from agentic._cli import tasks as tasks_module
from agentic._cli._tables import Col, FittedTable, compact
from agentic._cli.status import AgentRow, Snapshot, render
from agentic._cli.tasks import list_tasks, tasks_table
from agentic.cli import app
from agentic.client import TaskClient
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    AgentStatus,
    AllowanceStatus,
    Priority,
    QuotaCheckResult,
    Task,
    TaskResult,
    TaskStatus,
    TaskUpdate,
    UsageRecord,
)
from agentic.stores import open_task_store
from agentic.stores.base import TaskStore
from agentic.testing import running_server

from .conftest import free_port
from .test_cli import clean_environment
from .test_cli_functions import BASE, mock

__all__ = ["clean_environment", "mock"]  # fixtures, used by name


@dataclass
class Server:
    """A task API on loopback over a SQLite file, and a config file naming it."""

    config: Path
    store: TaskStore

    def cli(self, *args: str) -> Result:
        """``agentic ARGS --config <the config file>``."""
        return CliRunner().invoke(app, [*args, "--config", str(self.config)])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """The task API serving a SQLite task store, and a config file pointing at it."""
    url = "sqlite:///" + (tmp_path / "tasks.db").as_posix().lstrip("/")
    with open_task_store(url) as store, running_server(store, requeue_interval=None) as base:
        config = tmp_path / "agentic.yaml"
        config.write_text(f"base_url: {base}\nstore_url: {url}\n", encoding="utf-8")
        yield Server(config, store)


def tasks_in_statuses(store: TaskStore) -> dict[str, str]:
    """One pending low, one pending critical, one in progress, one failed: id by name."""
    low = store.create(Task(title="low", priority=Priority.LOW, labels=["python"]))
    critical = store.create(Task(title="critical", priority=Priority.CRITICAL))
    running = store.create(Task(title="running"))
    store.claim(running.id, "coder-1", 60.0)
    failed = store.create(Task(title="failed"))
    store.update(failed.id, TaskUpdate(status=TaskStatus.FAILED))
    return {"low": low.id, "critical": critical.id, "running": running.id, "failed": failed.id}


# --- against a real server ---
def test_tasks_json_lists_every_task_most_urgent_first(server: Server) -> None:
    """--json prints a JSON list of every task, most urgent first, with its fields."""
    ids = tasks_in_statuses(server.store)
    result = server.cli("tasks", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[0]["id"] == ids["critical"]
    assert {task["id"] for task in data} == set(ids.values())
    assert next(t for t in data if t["id"] == ids["running"])["claimed_by"] == "coder-1"


def test_tasks_status_filter_is_repeatable_and_comma_separated(server: Server) -> None:
    """--status narrows the list; given twice or as a,b it lists both, merged in order."""
    ids = tasks_in_statuses(server.store)
    pending = json.loads(server.cli("tasks", "--status", "pending", "--json").stdout)
    assert [task["id"] for task in pending] == [ids["critical"], ids["low"]]
    for args in (["-s", "failed", "-s", "pending"], ["--status", "failed,pending"]):
        listed = json.loads(server.cli("tasks", *args, "--json").stdout)
        assert [task["id"] for task in listed] == [ids["critical"], ids["failed"], ids["low"]]


def test_tasks_table_shows_ids_states_and_more(server: Server) -> None:
    """The table shows each task's id, status, title, agent and retries; over --limit the
    title says there are more."""
    ids = tasks_in_statuses(server.store)
    result = server.cli("tasks")
    assert result.exit_code == 0, result.output
    assert "Tasks: 4" in result.stdout
    for task_id in ids.values():
        assert task_id in result.stdout
    assert "in_progress" in result.stdout and "coder-1" in result.stdout
    assert "0/3" in result.stdout and "python" in result.stdout
    limited = server.cli("tasks", "--limit", "2")
    assert "Tasks: 2 (more: raise --limit)" in limited.stdout
    assert ids["low"] not in limited.stdout


def test_tasks_table_escapes_control_characters(server: Server) -> None:
    """A title or label holding terminal escape sequences is shown with them escaped."""
    server.store.create(Task(title="fix \x1b]0;owned\x07 \x1b[2Jbug", labels=["py\x9b2J"]))
    result = server.cli("tasks")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x9b" not in result.stdout
    assert "fix \\x1b]0;owned\\x07 \\x1b[2Jbug" in result.stdout
    assert "py\\x9b2J" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["--status", "running"], ["--status", "pending,done"], ["--limit", "0"], ["--limit", "-5"]],
    ids=" ".join,
)
def test_tasks_usage_errors_exit_2(server: Server, args: list[str]) -> None:
    """An unknown status (listing the valid ones) or a limit below 1 (a negative one
    read as a value, not an option) exits 2."""
    result = server.cli("tasks", *args)
    assert result.exit_code == 2, result.output
    assert "No such option" not in result.output
    if "--status" in args:
        message = " ".join(result.stderr.split())
        assert "is not a task status; valid: pending, in_progress, completed, blocked" in message


def _dead_lettered_chain(store: TaskStore) -> tuple[Task, Task]:
    """A task failed past its retries, and a task depending on it (blocked)."""
    root = store.create(Task(title="root", max_retries=0))
    child = store.create(Task(title="child", dependencies=[root.id]))
    store.claim(root.id, "coder-1", 60.0, job_id="j1")
    store.complete(root.id, TaskResult(success=False, error_message="boom"), job_id="j1")
    return root, child


def test_retry_requeues_a_failed_task_and_prints_what_it_unblocked(server: Server) -> None:
    """retry exits 0 printing the task and each dependent unblocked; --json gives both."""
    root, child = _dead_lettered_chain(server.store)
    result = server.cli("retry", root.id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{root.id} pending\n{child.id} pending (unblocked)\n"
    assert server.store.get(child.id).status is TaskStatus.PENDING
    server.store.update(root.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    data = json.loads(server.cli("retry", root.id, "--json").stdout)
    assert (data["task"]["id"], data["task"]["status"], data["task"]["reruns"]) == (
        root.id,
        "pending",
        2,
    )
    assert data["unblocked"] == [child.id]


def test_retry_of_a_task_someone_retried_meanwhile_changes_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry that read the task before another operator retried it exits 0, saying so."""
    root, _child = _dead_lettered_chain(server.store)
    seen = server.store.get(root.id)  # as the command read it, just before ...
    server.store.retry(root.id)  # ... another operator's retry landed
    monkeypatch.setattr(TaskClient, "get_task", lambda _self, _task_id: seen)
    result = server.cli("retry", root.id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{root.id} pending\n"
    said = " ".join(result.stderr.split())
    assert f"task {root.id} was retried already (by this retry's first try" in said
    assert server.store.get(root.id).reruns == 1
    data = json.loads(server.cli("retry", root.id, "--json").stdout)  # the same stale read
    assert data["repeated"] is True


def test_retry_refusals_exit_1_saying_why(server: Server) -> None:
    """retry of a task not failed or unknown exits 1 saying why; a blocked re-run warns."""
    task = server.store.create(Task(title="t"))
    refused = server.cli("retry", task.id)
    assert refused.exit_code == 1
    said = " ".join(refused.stderr.split())
    assert f"error: task {task.id} is pending, not failed: it is waiting to run already" in said
    unknown = server.cli("retry", "ghost")
    assert unknown.exit_code == 1
    assert "no task 'ghost' on the task server at http://" in " ".join(unknown.stderr.split())
    root, child = _dead_lettered_chain(server.store)
    server.store.update(child.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    blocked = server.cli("retry", child.id)
    assert blocked.exit_code == 0, blocked.output
    assert blocked.stdout == f"{child.id} blocked\n"
    warned = " ".join(blocked.stderr.split())
    assert f"task {child.id} is blocked by failed task(s) {root.id}: retry those" in warned


def test_tasks_unreachable_server_exits_1_with_the_hint(tmp_path: Path) -> None:
    """No task API at base_url: exit 1, the error, and what to check."""
    config = tmp_path / "c.yaml"
    config.write_text(f"base_url: http://127.0.0.1:{free_port()}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["tasks", "--config", str(config)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")
    assert "agentic serve" in result.stderr and "AGENTIC_BASE_URL" in result.stderr


# --- paging, against a mock ---
def task_json(number: int, **fields: Any) -> dict[str, Any]:
    """A task answer: id t<number>, created <number> seconds after a fixed instant."""
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=number)
    task = Task(id=f"t{number:03}", title=f"task {number}", created_at=created, **fields)
    return task.model_dump(mode="json")


class PagedList:
    """GET /api/tasks over ``tasks`` as the task API pages it (``limit``, ``after``);
    records each request's parameters. ``cursor``/``limit`` False: ignored, as by a
    server that does not page."""

    def __init__(self, tasks: list[dict[str, Any]], *, cursor: bool = True, limit: bool = True):
        self.tasks, self.cursor, self.limit = tasks, cursor, limit
        self.asked: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.asked.append(params)
        found = [t for t in self.tasks if params.get("status") in (None, t["status"])]
        if self.cursor and "after" in params:
            found = found[[t["id"] for t in found].index(params["after"]) + 1 :]
        if self.limit and "limit" in params:
            found = found[: int(params["limit"])]
        return httpx.Response(200, json=found)


@pytest.fixture
def api() -> Iterator[TaskClient]:
    """A client of BASE that never retries."""
    with TaskClient(BASE, "t", retries=0, sleep=lambda _: None) as made:
        yield made


def test_list_tasks_reads_pages_only_as_far_as_needed(
    api: TaskClient, mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of limit <= the page size follow each other by ``after`` and stop once
    ``count`` tasks are read, never listing the rest."""
    monkeypatch.setattr(tasks_module, "_PAGE", 3)
    listing = PagedList([task_json(n, status="pending") for n in range(20)])
    mock.get("/api/tasks").mock(side_effect=listing)
    found = list_tasks(api, [], 7)
    assert [task.id for task in found] == [f"t{n:03}" for n in range(7)]
    assert [(asked.get("limit"), asked.get("after")) for asked in listing.asked] == [
        ("3", None),
        ("3", "t002"),
        ("3", "t005"),
    ]


def test_list_tasks_merges_one_listing_per_status(api: TaskClient, mock: respx.MockRouter) -> None:
    """Several statuses: one listing each, merged most urgent then oldest first."""
    tasks = [
        task_json(0, status="failed"),
        task_json(1, status="pending", priority="critical"),
        task_json(2, status="pending"),
        task_json(3, status="failed", priority="high"),
    ]
    tasks.sort(key=lambda t: (["critical", "high", "medium", "low"].index(t["priority"]), t["id"]))
    listing = PagedList(tasks)
    mock.get("/api/tasks").mock(side_effect=listing)
    found = list_tasks(api, [TaskStatus.PENDING, TaskStatus.FAILED], 10)
    assert [task.id for task in found] == ["t001", "t003", "t000", "t002"]
    assert sorted(asked["status"] for asked in listing.asked) == ["failed", "pending"]


@pytest.mark.parametrize(("cursor", "limit"), [(False, True), (False, False)])
def test_list_tasks_stops_at_a_server_that_does_not_page(
    api: TaskClient,
    mock: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
    cursor: bool,
    limit: bool,
) -> None:
    """A server that repeats a page (no cursor) or answers everything (no limit) is
    listed once: no task twice, no endless loop."""
    monkeypatch.setattr(tasks_module, "_PAGE", 2)
    listing = PagedList(
        [task_json(n, status="pending") for n in range(5)], cursor=cursor, limit=limit
    )
    mock.get("/api/tasks").mock(side_effect=listing)
    found = list_tasks(api, [], 50)
    assert len({task.id for task in found}) == len(found)
    assert len(listing.asked) <= 2


# --- tables at 80 columns ---
def printed(renderable: Any, width: int) -> list[str]:
    """The lines ``renderable`` prints on a console ``width`` columns wide."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue().splitlines()


def test_tasks_table_fits_80_columns_with_whole_ids() -> None:
    """At 80 columns every line fits, ids and states are whole (nothing cut with …), and
    the least needed columns are the ones left out; a wide console shows them all."""
    now = datetime.now(UTC)
    shown = [
        Task.model_validate(
            {
                **task_json(n, status="in_progress", claimed_by="reviewer-typescript-07"),
                "id": f"{n:032x}",
                "title": "write the parser for the new format, with tests and docs",
                "labels": ["python", "git", "docs"],
            }
        )
        for n in range(3)
    ]
    narrow = printed(tasks_table(shown, True, now), 80)
    assert all(len(line) <= 80 for line in narrow)
    text = "\n".join(narrow)
    assert "…" not in text
    assert all(task.id in text for task in shown) and "in_progress" in text
    assert "Title" in narrow[2] and "Labels" not in narrow[2]
    short = [task.model_copy(update={"claimed_by": "sh-1"}) for task in shown]
    header = printed(tasks_table(short, True, now), 80)[2]
    assert "Agent" in header and "Retries" not in header  # who holds it, before the rest
    wide = "\n".join(printed(tasks_table(shown, True, now), 200))
    for header in ("Priority", "Labels", "Agent", "Retries", "Created", "Updated"):
        assert header in wide
    assert "reviewer-typescript-07" in wide


def agent_row(agent_id: str, used: int, left: int, resets: datetime) -> AgentRow:
    """An agent with an allowance, ``used`` tokens today and ``left`` to go."""
    return AgentRow(
        AgentInfo(id=agent_id, status=AgentStatus.BUSY, max_load=4, current_load=2),
        AgentAllowance(agent_id=agent_id, daily_token_limit=used + left, daily_job_limit=100),
        UsageRecord(agent_id=agent_id, tokens_used=used, jobs_started=12),
        QuotaCheckResult(
            allowed=True,
            status=AllowanceStatus.OK,
            remaining_tokens=left,
            remaining_jobs=88,
            reset_at=resets,
        ),
    )


def test_status_fits_80_columns_with_the_reset_said_once() -> None:
    """status at 80 columns: every line fits, no cell is cut, token counts are short
    (123k/1M, used/limit), and the quota day's end, the same for all agents, is said
    once below."""
    resets = datetime.now(UTC) + timedelta(hours=5, minutes=30)
    rows = [
        agent_row("coder-python-1", 123_456, 876_544, resets),
        agent_row("reviewer-typescript-07", 49_999, 1, resets),
        AgentRow(AgentInfo(id="free", max_load=1, last_heartbeat=datetime.now(UTC))),
    ]
    lines = printed(
        render(Snapshot(agents=rows, pending=3, in_progress=1), with_warnings=False), 80
    )
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in text
    assert "reviewer-typescript-07" in text and "123k/1M" in text and "50k/50k" in text
    assert "12/100" in text  # jobs: used/limit too
    assert "Heartbeat" in text and "Resets" not in text
    assert "quotas reset in 5h 29m" in text or "quotas reset in 5h 30m" in text


def test_status_keeps_a_resets_column_only_when_the_resets_differ() -> None:
    """Different quota-day ends get a Resets column when the width allows, and it is the
    first column left out at 80 columns; nothing is cut either way."""
    now = datetime.now(UTC)
    rows = [
        agent_row("coder-python-1", 10, 20, now + timedelta(hours=2)),
        agent_row("reviewer-typescript-07", 10, 20, now + timedelta(hours=23, minutes=59)),
    ]
    snap = Snapshot(agents=rows, pending=0, in_progress=0)
    wide = "\n".join(printed(render(snap, with_warnings=False), 120))
    assert "Resets" in wide and "in 23h 5" in wide and "quotas reset" not in wide
    narrow = printed(render(snap, with_warnings=False), 80)
    assert all(len(line) <= 80 for line in narrow)
    assert "…" not in "\n".join(narrow) and "Heartbeat" in "\n".join(narrow)


def test_status_shows_an_agent_without_heartbeats_as_silent() -> None:
    """An agent not offline whose last heartbeat is older than the heartbeat TTL (its
    process died, no dispatcher reaped it yet) is shown silent, in the table and JSON;
    a silent or offline agent's load is shown unknown, not its last one."""
    now = datetime.now(UTC)
    rows = [
        AgentRow(
            AgentInfo(
                id="dead-1",
                last_heartbeat=now - timedelta(seconds=90),
                current_load=1,
                max_load=1,
            )
        ),
        AgentRow(
            AgentInfo(
                id="live-1", last_heartbeat=now - timedelta(seconds=5), current_load=1, max_load=1
            )
        ),
        AgentRow(
            AgentInfo(
                id="gone-1",
                status=AgentStatus.OFFLINE,
                last_heartbeat=now - timedelta(hours=1),
                current_load=1,
                max_load=1,
            )
        ),
    ]
    snap = Snapshot(agents=rows, pending=0, in_progress=0, heartbeat_ttl=30, now=now)
    text = "\n".join(printed(render(snap, with_warnings=False), 120))
    cells = [line.replace("│", " ").split() for line in text.splitlines() if "-1 " in line]
    states = {cell[0]: cell[1] for cell in cells}
    assert states == {"dead-1": "silent", "live-1": "available", "gone-1": "offline"}
    loads = {cell[0]: cell[2] for cell in cells}  # a gone agent's last load is stale
    assert loads == {"dead-1": "-/1", "live-1": "1/1", "gone-1": "-/1"}
    assert "silent: no heartbeat for over 30s" in text
    agents = snap.to_data()["agents"]
    assert [a["silent"] for a in agents] == [True, False, False]


def test_fitted_table_drops_by_rank_and_keeps_the_undroppable() -> None:
    """Columns go highest drop rank first until the rest fit whole; columns ranked 0
    stay even when too wide (cut by rich then)."""
    columns = [Col("key"), Col("a" * 10, drop=1), Col("b" * 10, drop=2)]
    table = FittedTable(columns, [["k" * 20, "x", "y"]])
    console = Console(width=200)
    assert [c.header for c in table.shown(console, 200)] == ["key", "a" * 10, "b" * 10]
    assert [c.header for c in table.shown(console, 40)] == ["key", "a" * 10]
    assert [c.header for c in table.shown(console, 10)] == ["key"]
    with pytest.raises(ValueError, match="one cell per column"):
        FittedTable(columns, [["only one"]])


@pytest.mark.parametrize(
    ("number", "text"),
    [(0, "0"), (9_999, "9999"), (12_345, "12.3k"), (123_456, "123k"), (999_999, "1M"),
     (1_500_000, "1.5M"), (2_000_000_000, "2G")],
)  # fmt: skip
def test_compact_numbers(number: int, text: str) -> None:
    """Counts from 10,000 up are shortened to three digits and a unit."""
    assert compact(number) == text
