"""``agentic events``: the event log printed, filtered and followed; and who writes it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agentic.events import Event, EventType
from agentic.models import AgentAllowance, AgentInfo, Task
from agentic.stores import open_event_log, open_task_store
from agentic.testing import running_server

from .conftest import free_port
from .test_cli import (
    AGENTIC,
    System,
    clean_environment,
    run,
    subprocess_env,
    system,
    write_config,
)

__all__ = ["clean_environment", "system"]  # fixtures, used by name


def _fill(url: str) -> list[Event]:
    events = [
        Event(type=EventType.TASK_CLAIMED, task_id="t1", agent_id="a", payload={"job_id": "j1"}),
        Event(type=EventType.TASK_COMPLETED, task_id="t1", agent_id="a"),
        Event(type=EventType.TASK_CLAIMED, task_id="t2", agent_id="b"),
    ]
    with open_event_log(url) as log:
        log.append(events)
    return events


def test_an_empty_log_prints_nothing(system: System) -> None:
    """A store with no event yet prints nothing on stdout, says why on stderr, exits 0."""
    result = system.cli("events")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "the event log is empty" in result.stderr


def test_events_print_offset_type_and_ids(system: System) -> None:
    """Each event is one line: offset, time, type, task, agent, payload."""
    _fill(system.url)
    result = system.cli("events")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[0] == "1"
    assert "task_claimed  task=t1  agent=a  job_id=j1" in lines[0]
    assert "task_completed  task=t1  agent=a" in lines[1]


def test_events_escape_control_characters(system: System) -> None:
    """A payload holding a terminal escape (C0 or C1) or a bidi override is printed
    with it escaped, on its one line."""
    reason = "lease \x1b]0;owned\x07 lost\x9b2J\u202e"
    event = Event(type=EventType.TASK_FAILED, task_id="t1", agent_id="a", payload={"why": reason})
    with open_event_log(system.url) as log:
        log.append([event])
    result = system.cli("events")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    assert not {"\x1b", "\x9b", "\u202e"} & set(result.stdout)
    assert "\\x9b2J\\u202e" in result.stdout


def test_events_json_lines_carry_the_offset(system: System) -> None:
    """--json prints one object per line: the event's fields and its offset."""
    events = _fill(system.url)
    result = system.cli("events", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["offset"] for row in rows] == [1, 2, 3]
    assert [row["id"] for row in rows] == [e.id for e in events]
    assert rows[0]["payload"] == {"job_id": "j1"}


@pytest.mark.parametrize(
    ("args", "offsets"),
    [
        (["--type", "task_claimed"], [1, 3]),
        (["--task", "t1"], [1, 2]),
        (["--after", "1"], [2, 3]),
        (["--last", "2"], [2, 3]),
        (["--last", "1", "--type", "task_claimed", "--type", "task_completed"], [3]),
        (["--after", "0", "--task", "t2"], [3]),
        (["--type", "task_completed,task_claimed", "--task", "t1"], [1, 2]),
    ],
    ids=lambda value: " ".join(map(str, value)),
)
def test_events_filters(system: System, args: list[str], offsets: list[int]) -> None:
    """--type, --task, --after and --last choose which events print."""
    _fill(system.url)
    result = system.cli("events", "--json", *args)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["offset"] for line in result.stdout.splitlines()] == offsets


def test_an_unknown_type_is_a_usage_error(system: System) -> None:
    """--type with a name that is no event type exits 2 listing the types."""
    result = system.cli("events", "--type", "task_done")
    assert result.exit_code == 2
    assert "task_done: not an event type" in result.output
    assert "task_completed" in result.output


def test_a_missing_store_file_is_an_error_not_a_new_store(tmp_path: Path) -> None:
    """Reading the events of a SQLite file that does not exist fails and creates nothing."""
    missing = tmp_path / "nope.db"
    result = run("events", "--store", f"sqlite:///{missing}")
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not missing.exists()


def test_dispatch_appends_its_events_to_the_log(system: System) -> None:
    """A dispatch pass writes task_claimed and task_dispatched to the store's event log."""
    system.registry.register(AgentInfo(id="worker", capabilities=["x"]))
    system.quota.set_allowance(AgentAllowance(agent_id="worker", daily_job_limit=5))
    task = system.tasks.create(Task(title="t", labels=["x"]))
    assert system.cli("dispatch", "--once").exit_code == 0
    with open_event_log(system.url) as log:
        kinds = {(e.event.type, e.event.task_id) for e in log.read()}
    assert {(EventType.TASK_CLAIMED, task.id), (EventType.TASK_DISPATCHED, task.id)} <= kinds


def test_events_log_false_writes_nothing(system: System) -> None:
    """With events.log: false, a dispatch pass leaves the event log empty."""
    system.config.write_text(
        system.config.read_text() + "events:\n  log: false\n", encoding="utf-8"
    )
    system.registry.register(AgentInfo(id="worker", capabilities=["x"]))
    system.quota.set_allowance(AgentAllowance(agent_id="worker", daily_job_limit=5))
    system.tasks.create(Task(title="t", labels=["x"]))
    assert system.cli("dispatch", "--once").exit_code == 0
    with open_event_log(system.url) as log:
        assert log.read() == []


@pytest.mark.slow
@pytest.mark.parametrize("via", [[], ["--api"]], ids=["store", "api"])
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_follow_prints_new_events_until_interrupted(
    system: System, stop: signal.Signals, via: list[str]
) -> None:
    """events -f prints events appended later, read from the store or through the task
    API's long-poll; Ctrl-C or SIGTERM ends it with exit 0."""
    _fill(system.url)
    follower = subprocess.Popen(
        [AGENTIC, "events", "-f", "--json", "--after", "3", *via, "--config", str(system.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        text=True,
    )
    try:
        time.sleep(1.0)  # following: nothing after offset 3 yet
        late = Event(type=EventType.AGENT_OFFLINE, agent_id="b")
        with open_event_log(system.url) as log:
            log.append([late])
        assert follower.stdout is not None
        row = json.loads(follower.stdout.readline())
        assert (row["offset"], row["id"]) == (4, late.id)
        follower.send_signal(stop)
        assert follower.wait(10) == 0
    finally:
        follower.kill()
        follower.communicate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--after", "1", "--last", "2"], "give one of them"),
        (["--store", "memory://"], "memory:// is private to one process"),
        (["--consumers", "-f"], "--consumers lists consumers"),
        (["--consumers", "--type", "task_claimed"], "--consumers lists consumers"),
        (["--api", "--consumers"], "--api reads the events through the task API"),
    ],
    ids=["after and last", "memory", "consumers follow", "consumers type", "api consumers"],
)
def test_contradictions_are_usage_errors(system: System, args: list[str], message: str) -> None:
    """--after with --last, and a memory:// log nobody else writes, exit 2 saying why."""
    result = system.cli("events", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_consumers_are_listed_with_what_they_are_behind_and_missed(system: System) -> None:
    """--consumers: each consumer's position, events behind the newest, and events
    trimmed before it read them; --json one object per consumer; none said plainly."""
    assert system.cli("events", "--consumers").stdout == "no consumer has committed a position\n"
    _fill(system.url)
    _fill(system.url)
    with open_event_log(system.url) as log:
        log.commit("billing", 1)
        log.commit("audit", 6)
        log.commit("new\nline", 3)
        log.trim(3)  # keeps 4-6: billing never saw 2 and 3
    text = system.cli("events", "--consumers")
    assert text.exit_code == 0, text.output
    rows = [line.split() for line in text.stdout.splitlines()]
    assert rows[0] == ["consumer", "position", "behind", "missed"]
    assert rows[1:] == [
        ["audit", "6", "0", "0"],
        ["billing", "1", "5", "2"],
        ['"new\\nline"', "3", "3", "0"],
    ]
    data = system.cli("events", "--consumers", "--json")
    first = json.loads(data.stdout.splitlines()[1])
    assert first == {"consumer": "billing", "position": 1, "behind": 5, "missed": 2}


def test_forget_drops_a_consumer_and_says_where_it_was(system: System) -> None:
    """--forget NAME drops its position (exit 0, saying it; --json as an object); an
    unknown name exits 1 naming --consumers; with other options it is a usage error."""
    with open_event_log(system.url) as log:
        log.commit("gone", 4)
        log.commit("billing", 2)
        log.commit("old", 7)
    result = system.cli("events", "--forget", "gone")
    assert result.exit_code == 0, result.output
    assert result.stdout == "forgot consumer gone (it was at offset 4)\n"
    data = system.cli("events", "--forget", "old", "--json")
    assert json.loads(data.stdout) == {"consumer": "old", "position": 7}
    with open_event_log(system.url) as log:
        assert log.consumers() == {"billing": 2}
    again = system.cli("events", "--forget", "gone")
    assert again.exit_code == 1
    assert "no consumer 'gone'" in again.output and "--consumers" in again.output
    mixed = system.cli("events", "--forget", "billing", "--consumers")
    assert mixed.exit_code == 2
    assert "--forget drops one consumer" in mixed.output


def test_api_reads_the_same_log_through_the_task_api(system: System) -> None:
    """--api prints what reading the store prints, through GET /api/events, and a
    server without the log exits 1 saying so."""
    _fill(system.url)
    direct = system.cli("events", "--json")
    through = system.cli("events", "--api", "--json")
    assert through.exit_code == 0, through.output
    assert through.stdout == direct.stdout and len(through.stdout.splitlines()) == 3
    last = system.cli("events", "--api", "--last", "1")
    assert last.stdout.split()[0] == "3"
    with open_task_store("memory://") as tasks, running_server(tasks) as bare:
        config = system.config.with_name("bare.yaml")
        config.write_text(f"base_url: {bare}\n")
        missing = run("events", "--api", "--config", str(config))
    assert missing.exit_code == 1
    assert "serves no event log" in missing.output


def test_reading_another_store_than_the_servers_is_warned_of(
    system: System, tmp_path: Path
) -> None:
    """events on a store the configured server does not serve (a forgotten --store)
    says so on stderr and still prints that store's log; the server's own store, or
    no server answering, gets no warning."""
    _fill(system.url)
    assert "serves another store" not in system.cli("events").stderr
    other = f"sqlite:///{tmp_path / 'other.db'}"
    _fill(other)
    result = system.cli("events", "--store", other)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert f"the task server {system.base_url} serves another store" in result.stderr
    assert "--api" in result.stderr
    config = write_config(tmp_path / "gone.yaml", f"http://127.0.0.1:{free_port()}", other)
    quiet = run("events", "--config", str(config))
    assert quiet.exit_code == 0 and "serves another store" not in quiet.stderr


def test_following_an_older_server_through_the_api_does_not_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty answer that came at once (a server older than the long-poll ignores
    wait) is followed by the poll interval's sleep; one that waited is not."""
    from agentic._cli import events as events_cli
    from agentic.client import EventPage

    slept: list[float] = []
    monkeypatch.setattr("agentic._cli.events.time.sleep", slept.append)
    asked: list[float] = []

    class Api:
        def read_events(self, after: int = 0, limit: int = 100, wait: float = 0.0) -> EventPage:
            asked.append(wait)
            return EventPage([], after)

    events_cli._ApiLog(Api()).pause(3)  # type: ignore[arg-type]
    assert asked == [events_cli._API_WAIT]
    assert len(slept) == 1 and 0.4 < slept[0] <= events_cli._POLL


def test_a_follower_outlasts_a_busy_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """While following, a 429 (or an outage) is said once and read past; the events
    after it are printed; an error that cannot pass (403) still ends it."""
    from agentic._cli import events as events_cli
    from agentic.errors import APIError
    from agentic.stores.base import LoggedEvent

    monkeypatch.setattr("agentic._cli.events.time.sleep", lambda seconds: None)
    late = Event(type=EventType.AGENT_OFFLINE, agent_id="b")
    answers: list[object] = [
        APIError("over the rate limit", 429, from_response=True),
        [LoggedEvent(1, late)],
        [],
    ]

    class Busy:
        def read(self, after: int = 0, limit: int = 100) -> list[LoggedEvent]:
            answer = answers.pop(0) if answers else []
            if isinstance(answer, Exception):
                raise answer
            assert isinstance(answer, list)
            return answer

        def last_offset(self) -> int:
            return 1

    pauses: list[int] = []

    def pause(after: int) -> None:
        pauses.append(after)
        if len(pauses) == 2:
            raise APIError("forbidden", 403, from_response=True)

    reader = events_cli._Reader(Busy(), None, None, True, pause)
    with pytest.raises(APIError, match="forbidden"):
        events_cli._print(reader, 0, None, follow=True)
    out, err = capsys.readouterr()
    assert [json.loads(line)["id"] for line in out.splitlines()] == [late.id]
    assert err.count("reading the event log failed") == 1 and "works again" in err


@pytest.mark.parametrize("follow", [[], ["-f"]], ids=["once", "follow"])
def test_after_past_the_newest_event_is_a_usage_error(system: System, follow: list[str]) -> None:
    """--after beyond the log's newest offset says so (exit 2) instead of printing
    nothing, or everything after "the log went back"."""
    _fill(system.url)
    result = system.cli("events", "--after", "99", *follow)
    assert result.exit_code == 2
    assert "--after 99 is past the newest event of the log (3)" in result.output


def test_a_payload_cannot_forge_a_line(system: System) -> None:
    """Values with spaces or line breaks print as JSON: one event is one line."""
    forged = "boom\n    999  2026-01-01T00:00:00Z  task_completed  task=t1"
    with open_event_log(system.url) as log:
        log.append([Event(type=EventType.TASK_FAILED, task_id="t1", payload={"error": forged})])
    result = system.cli("events")
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert 'error="boom\\n    999  2026-01-01T00:00:00Z  task_completed  task=t1"' in lines[0]


def test_trimmed_events_after_the_start_are_said(system: System) -> None:
    """--after an offset whose next events were trimmed warns on stderr, then prints."""
    _fill(system.url)
    with open_event_log(system.url) as log:
        log.trim(1)
    result = system.cli("events", "--after", "1", "--json")
    assert result.exit_code == 0
    assert "events 2 to 2 were trimmed" in result.output
    assert [json.loads(line)["offset"] for line in result.stdout.splitlines()] == [3]
