"""The CLI backing functions: submit_task, stream_logs, get_status and format_status."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from agentic.client import TaskClient
from agentic.errors import APIError, ConfigError, NotFoundError
from agentic.logs import stream_logs
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    AgentStatus,
    Priority,
    StatusSummary,
    Task,
    TaskStatus,
)
from agentic.retry import doubled
from agentic.status import format_status, get_status
from agentic.stores.memory import MemoryAllowanceStore, MemoryRegistry
from agentic.submit import submit_task
from agentic.testing import FakeClock

BASE = "http://tasks.test"
STATUS_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] (Status|Reason|Blocked by): (.+)$")


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    """respx router for BASE."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def client() -> Iterator[TaskClient]:
    """A client that never sleeps between retries."""
    with TaskClient(BASE, "t", agent_id="a1", retries=0, sleep=lambda _: None) as made:
        yield made


def task_json(status: str, **fields: Any) -> dict[str, Any]:
    """A task answer with ``status``."""
    task = Task.model_validate({"id": "t1", "title": "x", "status": status, **fields})
    return task.model_dump(mode="json")


def summarize(output: str) -> list[str]:
    """Output lines with status lines reduced to "Status: X" ("Reason: ...", "Blocked by: ...")."""
    lines = []
    for line in output.splitlines():
        match = STATUS_LINE.match(line)
        lines.append(f"{match.group(1)}: {match.group(2)}" if match else line)
    return lines


class FakeLog:
    """A server-side log for respx: pages from the ?offset= asked."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __call__(self, request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", "0"))
        chunk = self.lines[offset : offset + 2]
        body = {"lines": chunk, "offset": offset, "next_offset": offset + len(chunk)}
        return httpx.Response(200, json=body)


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    """An SSE body from (event, data) pairs."""
    return "".join(f"event: {k}\ndata: {json.dumps(d)}\n\n" for k, d in events).encode()


# --- submit_task ---


def test_submit_task_sends_every_field(client: TaskClient, mock: respx.MockRouter) -> None:
    """submit_task posts a pending task with every given field and returns the created task."""
    route = mock.post("/api/tasks").respond(201, json=task_json("pending"))
    created = submit_task(
        client,
        "  port the router ",
        description="d",
        labels=["go"],
        priority="high",
        project="p",
        dependencies=["t0"],
        model="m",
        estimated_tokens=500,
        max_retries=5,
        idempotency_key="k",
    )
    assert created.id == "t1"
    sent = json.loads(route.calls.last.request.content)
    assert sent["title"] == "port the router"
    assert (sent["labels"], sent["priority"], sent["project"]) == (["go"], "high", "p")
    assert (sent["dependencies"], sent["model"], sent["estimated_tokens"]) == (["t0"], "m", 500)
    assert sent["max_retries"] == 5 and sent["id"] == "" and sent["status"] is None
    assert route.calls.last.request.headers["Idempotency-Key"] == "k"


@pytest.mark.parametrize(
    ("title", "options"),
    [
        ("", {}),
        ("   ", {}),
        ("x", {"priority": "urgent"}),
        ("x", {"estimated_tokens": -1}),
        ("x", {"labels": "py"}),
        ("x", {"dependencies": "t0"}),
    ],
)
def test_submit_task_rejects_bad_input_before_any_request(
    client: TaskClient, mock: respx.MockRouter, title: str, options: dict[str, Any]
) -> None:
    """A blank title, unknown priority, negative count, or one string given for the
    labels or dependencies (not a list: its letters) is ConfigError; nothing is sent."""
    with pytest.raises(ConfigError):
        submit_task(client, title, **options)
    assert not mock.calls


def test_submit_task_default_priority(client: TaskClient, mock: respx.MockRouter) -> None:
    """Without a priority the task is medium."""
    route = mock.post("/api/tasks").respond(201, json=task_json("pending"))
    submit_task(client, "x")
    assert json.loads(route.calls.last.request.content)["priority"] == Priority.MEDIUM


# --- stream_logs ---


@pytest.mark.parametrize("final", ["failed", "blocked", "completed"])
def test_stream_logs_follows_sse_until_final(
    client: TaskClient, mock: respx.MockRouter, final: str
) -> None:
    """Status changes and lines are printed; the stream stops on failed, blocked, completed;
    a failed task's reason and a blocked task's blockers follow its status."""
    mock.get("/api/tasks/t1").mock(
        side_effect=[
            httpx.Response(200, json=task_json("in_progress")),
            httpx.Response(200, json=task_json(final, fail_reason="boom", blockers=["t0"])),
        ]
    )
    log = FakeLog(["a"])
    pages = mock.get("/api/tasks/t1/logs", params={"follow": "true"}).respond(
        200,
        content=sse(
            ("log", {"offset": 0, "line": "a"}),  # a repeat of what was printed: skipped
            ("log", {"offset": 1, "line": "b"}),
            ("status", {"status": final}),
            ("end", {"status": final, "next_offset": 2}),
        ),
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=log)
    out = io.StringIO()
    assert stream_logs(client, "t1", out) == TaskStatus(final)
    why = {"failed": ["Reason: boom"], "blocked": ["Blocked by: t0"], "completed": []}[final]
    assert summarize(out.getvalue()) == ["Status: in_progress", "a", "b", f"Status: {final}", *why]
    assert pages.calls.last.request.url.params["offset"] == "1"


HOSTILE = "done\x1b]0;owned\x07 \x1b]52;c;cm0gLXJm\x07\x1b[2J\r\u202eevil \x1b[31mred\x1b[0m"


def test_stream_logs_escapes_what_tasks_wrote_on_a_terminal(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """To a terminal, log lines and the failure reason show control characters and
    escape sequences as escapes (colours kept); a file gets them as written."""
    mock.get("/api/tasks/t1").respond(200, json=task_json("failed", fail_reason=HOSTILE))
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([HOSTILE]))
    main, side = pty.openpty()
    with os.fdopen(side, "w", encoding="utf-8") as terminal:
        assert stream_logs(client, "t1", terminal, follow=False) == TaskStatus.FAILED
    try:
        shown = os.read(main, 65536).decode("utf-8")
    finally:
        os.close(main)
    assert "\x1b]" not in shown and "\x1b[2J" not in shown and "\u202e" not in shown
    assert shown.count("done\\x1b]0;owned\\x07 \\x1b]52;c;cm0gLXJm\\x07\\x1b[2J\\x0d") == 2
    assert "\\u202eevil \x1b[31mred\x1b[0m" in shown  # the line's colours stay
    to_file = io.StringIO()
    stream_logs(client, "t1", to_file, follow=False)
    assert to_file.getvalue().count(HOSTILE) == 2


def test_stream_logs_stamps_a_status_with_when_it_changed(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A status line carries the time of the change (the claim, else the last update),
    not the time logs looked."""
    mock.get("/api/tasks/t1").respond(
        200,
        json=task_json(
            "failed",
            updated_at="2026-01-02T03:04:05Z",
            claimed_at="2026-01-02T02:00:00Z",
            fail_reason="boom",
        ),
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    out = io.StringIO()
    stream_logs(client, "t1", out, follow=False)
    assert out.getvalue().splitlines() == [
        "[2026-01-02 03:04:05] Status: failed",
        "[2026-01-02 03:04:05] Reason: boom",
    ]
    mock.get("/api/tasks/t1").respond(
        200, json=task_json("in_progress", claimed_at="2026-01-02T02:00:00Z")
    )
    out = io.StringIO()
    stream_logs(client, "t1", out, follow=False)
    assert out.getvalue() == "[2026-01-02 02:00:00] Status: in_progress\n"


def test_a_status_whose_read_back_fails_is_printed_by_the_polling(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A status change from the stream whose task read-back fails (a 503) is not lost:
    the polling that takes over prints it."""
    mock.get("/api/tasks/t1").mock(
        side_effect=[
            httpx.Response(200, json=task_json("pending")),
            httpx.Response(503, json={"code": 503, "message": "busy"}),
            httpx.Response(200, json=task_json("in_progress")),
            httpx.Response(200, json=task_json("completed")),
        ]
    )
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).respond(
        200, content=sse(("status", {"status": "in_progress"}))
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    out = io.StringIO()
    assert stream_logs(client, "t1", out, poll_interval=0) is TaskStatus.COMPLETED
    assert summarize(out.getvalue()) == [
        "Status: pending",
        "Status: in_progress",
        "Status: completed",
    ]


def test_stream_logs_falls_back_to_polling(client: TaskClient, mock: respx.MockRouter) -> None:
    """When SSE fails the log is polled from the last offset until a final status."""
    log = FakeLog(["one"])
    statuses = iter(["pending", "in_progress", "in_progress", "failed"])

    def task_then_more_log(_: httpx.Request) -> httpx.Response:
        # Each poll sees one more line, written while the task runs.
        log.lines.append(f"line {len(log.lines)}")
        return httpx.Response(200, json=task_json(next(statuses)))

    mock.get("/api/tasks/t1").mock(side_effect=task_then_more_log)
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).mock(
        side_effect=httpx.ReadError("proxy closed the stream")
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=log)
    out = io.StringIO()
    assert stream_logs(client, "t1", out, poll_interval=0) is TaskStatus.FAILED
    lines = summarize(out.getvalue())
    statuses_printed = [line for line in lines if line.startswith("Status")]
    assert statuses_printed == ["Status: pending", "Status: in_progress", "Status: failed"]
    printed = [line for line in lines if not line.startswith(("Status", "Reason"))]
    assert printed == ["one", "line 1", "line 2", "line 3", "line 4"]
    assert "Reason: not given" in lines


def test_stream_logs_stops_on_blocked_while_polling(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A blocked task ends the polling loop too (go-agentic stopped on it)."""
    statuses = iter(["pending", "blocked"])
    mock.get("/api/tasks/t1").mock(
        side_effect=lambda _: httpx.Response(200, json=task_json(next(statuses)))
    )
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).respond(503)
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    out = io.StringIO()
    assert stream_logs(client, "t1", out, poll_interval=0) is TaskStatus.BLOCKED
    assert summarize(out.getvalue()) == [
        "Status: pending",
        "Status: blocked",
        "Blocked by: a hold (no failed dependency)",
    ]


def test_stream_logs_prints_transient_errors_and_keeps_polling(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A 503 while polling becomes an Error line; polling goes on."""
    answers = iter(
        [
            httpx.Response(200, json=task_json("pending")),
            httpx.Response(503, json={"message": "store down"}),
            httpx.Response(200, json=task_json("completed")),
        ]
    )
    mock.get("/api/tasks/t1").mock(side_effect=lambda _: next(answers))
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).mock(
        side_effect=httpx.ConnectError("refused")
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    out = io.StringIO()
    assert stream_logs(client, "t1", out, poll_interval=0) is TaskStatus.COMPLETED
    assert "Error: HTTP 503: store down" in out.getvalue()


def test_an_outage_is_printed_once_and_its_end_said(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """Five 503s in a row while polling print one Error line (not one per poll), a
    different cause its own, and the answer after them says the server is back."""
    failing = [httpx.Response(503, json={"message": "store down"})] * 4
    answers = iter(
        [
            httpx.Response(200, json=task_json("pending")),
            *failing,
            httpx.Response(503, json={"message": "store locked"}),
            httpx.Response(200, json=task_json("completed")),
        ]
    )
    mock.get("/api/tasks/t1").mock(side_effect=lambda _: next(answers))
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).mock(
        side_effect=httpx.ConnectError("refused")
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    out = io.StringIO()
    assert stream_logs(client, "t1", out, poll_interval=0) is TaskStatus.COMPLETED
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "Status: pending",
        "Error: HTTP 503: store down (asking again, less often)",
        "Error: HTTP 503: store locked (asking again, less often)",
        "Reachable again after 5 failed tries",
        "Status: completed",
    ]


def test_a_log_read_failing_while_the_status_answers_is_printed_once(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """While the status read answers and the log read keeps failing, the outage's end
    and the log's error are each printed once, not a pair of lines at every poll."""
    statuses = iter([*["pending"] * 6, "completed"])
    mock.get("/api/tasks/t1").mock(
        side_effect=lambda _: httpx.Response(200, json=task_json(next(statuses)))
    )
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).mock(
        side_effect=httpx.ConnectError("refused")
    )
    failing = [httpx.Response(503, json={"message": "logs down"})] * 4
    empty = httpx.Response(200, json={"lines": [], "offset": 0, "next_offset": 0})
    log_answers = iter([empty, *failing])
    mock.get("/api/tasks/t1/logs").mock(
        side_effect=lambda request: next(log_answers, None) or FakeLog([])(request)
    )
    out = io.StringIO()
    assert stream_logs(client, "t1", out, poll_interval=0) is TaskStatus.COMPLETED
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "Status: pending",
        "Error: HTTP 503: logs down (asking again, less often)",
        "Reachable again after 1 failed try",
        "Status: completed",
    ]


def test_polls_back_off_while_the_task_api_fails() -> None:
    """The pause doubles with each failure in a row, up to 10 intervals; none: 1."""
    assert [doubled(1.5, n, 10) for n in range(6)] == [1.5, 3.0, 6.0, 12.0, 15.0, 15.0]


def test_stream_logs_raises_not_found_and_permanent_errors(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """Unknown tasks and 4xx answers are raised, not printed forever."""
    mock.get("/api/tasks/t1").respond(404, json={"message": "no task t1"})
    with pytest.raises(NotFoundError):
        stream_logs(client, "t1", io.StringIO())
    mock.get("/api/tasks/t1").mock(
        side_effect=[
            httpx.Response(200, json=task_json("pending")),
            httpx.Response(403, json={"message": "forbidden"}),
        ]
    )
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).respond(502)
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    with pytest.raises(APIError) as info:
        stream_logs(client, "t1", io.StringIO(), poll_interval=0)
    assert info.value.code == 403


def test_stream_logs_without_follow_prints_what_exists(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """follow=False prints the status and every existing line, then returns."""
    mock.get("/api/tasks/t1").respond(200, json=task_json("in_progress"))
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog(["a", "b", "c"]))
    out = io.StringIO()
    assert stream_logs(client, "t1", out, follow=False) is TaskStatus.IN_PROGRESS
    assert summarize(out.getvalue()) == ["Status: in_progress", "a", "b", "c"]


def test_stream_logs_finished_task_needs_no_stream(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A task already final is printed without opening the SSE stream."""
    mock.get("/api/tasks/t1").respond(200, json=task_json("failed"))
    follow = mock.get("/api/tasks/t1/logs", params={"follow": "true"}).respond(500)
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog(["x"]))
    out = io.StringIO()
    assert stream_logs(client, "t1", out) is TaskStatus.FAILED
    assert not follow.called


def test_stream_logs_honours_stop(client: TaskClient, mock: respx.MockRouter) -> None:
    """A set stop event ends the stream at the next event or poll."""
    stop = threading.Event()
    mock.get("/api/tasks/t1").respond(200, json=task_json("in_progress"))
    mock.get("/api/tasks/t1/logs", params={"follow": "true"}).respond(
        200, content=b": keep-alive\n\n" * 3
    )
    mock.get("/api/tasks/t1/logs").mock(side_effect=FakeLog([]))
    stop.set()
    assert stream_logs(client, "t1", io.StringIO(), stop=stop) is TaskStatus.IN_PROGRESS


def test_stream_logs_rejects_empty_id(client: TaskClient, mock: respx.MockRouter) -> None:
    """An empty task id is refused before any request."""
    with pytest.raises(ConfigError):
        stream_logs(client, "", io.StringIO())
    assert not mock.calls


# --- get_status / format_status ---


def test_get_status_aggregates_every_part(client: TaskClient, mock: respx.MockRouter) -> None:
    """Agents from the registry, counts from the API, remaining tokens from the allowance."""
    clock = FakeClock()
    registry = MemoryRegistry(clock=clock)
    registry.register(AgentInfo(id="gone", max_load=1))
    clock.advance(100)
    registry.reap(10)
    registry.register(AgentInfo(id="b", max_load=2, current_load=2))
    registry.register(AgentInfo(id="a", max_load=0, current_load=1))
    allowance = MemoryAllowanceStore(clock=clock)
    allowance.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=1500))
    allowance.set_allowance(AgentAllowance(agent_id="b"))
    mock.get("/api/tasks/counts").respond(
        200, json={"pending": 3, "in_progress": 1, "completed": 7, "failed": 0, "blocked": 0}
    )
    summary = get_status(registry, client, allowance)
    assert [a.id for a in summary.agents] == ["a", "b", "gone"]
    assert (summary.pending_tasks, summary.in_progress_tasks) == (3, 1)
    assert summary.allowance_remaining == {"a": 1500, "b": -1}
    assert format_status(summary) == (
        "Agents: 3 (1 available, 1 busy, 1 offline)\n"
        "Tasks:  3 pending, 1 in progress\n"
        "Agent           Status      Load    Remaining\n"
        "a               available   1/-     1500 tokens\n"
        "b               busy        2/2     unlimited\n"
        "gone            offline     0/1     unknown\n"
    )


def test_counts_from_a_server_without_them_are_listed(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A server without /api/tasks/counts (404: older, go-agentic's): each status is
    listed and counted instead."""
    mock.get("/api/tasks/counts").respond(
        404, json={"code": 404, "message": "task 'counts' not found", "details": {}}
    )
    route = mock.get("/api/tasks")
    route.side_effect = lambda request: httpx.Response(
        200,
        json=[task_json(request.url.params["status"])]
        * (3 if request.url.params["status"] == "pending" else 1),
    )
    counts = client.count_tasks()
    assert counts == {status: 3 if status == "pending" else 1 for status in TaskStatus}
    assert route.call_count == len(TaskStatus)


def test_counts_missing_from_the_answer_are_zero(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """Statuses a server leaves out of its counts are 0."""
    mock.get("/api/tasks/counts").respond(200, json={"pending": 2})
    assert client.count_tasks() == {s: 2 if s == "pending" else 0 for s in TaskStatus}


def test_get_status_with_nothing() -> None:
    """Every part may be absent."""
    summary = get_status()
    assert summary == StatusSummary()
    assert format_status(summary) == "Agents: 0\nTasks:  0 pending, 0 in progress\n"


def test_format_status_sorts_and_omits_zero_counts() -> None:
    """Rows are sorted by id and zero counts are left out of the first line."""
    summary = StatusSummary(
        agents=[
            AgentInfo(id="z", status=AgentStatus.AVAILABLE, max_load=4, current_load=1),
            AgentInfo(id="m", status=AgentStatus.AVAILABLE),
        ],
        pending_tasks=2,
        allowance_remaining={"z": 0},
    )
    text = format_status(summary).splitlines()
    assert text[0] == "Agents: 2 (2 available)"
    assert [row.split()[0] for row in text[3:]] == ["m", "z"]
    assert text[4].endswith("1/4     0 tokens")
