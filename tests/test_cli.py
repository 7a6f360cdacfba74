"""The ``agentic`` command: help, exit codes, and each command against a real server."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
from typer.testing import CliRunner, Result

from agentic._cli import tasks as cli_tasks
from agentic._cli._common import event_emitter, one_of, records_events, store_config
from agentic._cli._logging import KeyValueFormatter
from agentic.allowance import AllowanceService
from agentic.cli import app
from agentic.client import TaskClient
from agentic.config import Config
from agentic.dispatcher import LEASE, Dispatcher, DispatchReport
from agentic.errors import ConfigError, NotFoundError
from agentic.eventlog import EventLogEmitter
from agentic.events import EventType
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    FailureCharge,
    Priority,
    QuotaEvent,
    Task,
    TaskResult,
    TaskStatus,
)
from agentic.router import DefaultRouter
from agentic.runner import AgentRunner
from agentic.runner._journal import default_state_dir
from agentic.stores import open_allowance_store, open_event_log, open_registry, open_task_store
from agentic.stores.base import AgentRegistry, AllowanceStore, TaskStore
from agentic.testing import running_server, webhook_receiver
from agentic.webhook import verify

from .conftest import free_port

AGENTIC = str(Path(sys.executable).with_name("agentic"))


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGENTIC_* variable, .env or user config of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("AGENTIC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no truncated cells
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> Result:
    """``agentic ARGS`` in-process."""
    return CliRunner().invoke(app, list(args))


def write_config(path: Path, base_url: str, store_url: str, extra: str = "") -> Path:
    """A YAML config file for the commands under test."""
    path.write_text(f"base_url: {base_url}\nstore_url: {store_url}\n{extra}", encoding="utf-8")
    return path


@dataclass
class System:
    """A task server on loopback over a SQLite file, and a config file naming both."""

    url: str
    base_url: str
    config: Path
    tasks: TaskStore
    registry: AgentRegistry
    quota: AllowanceStore

    def cli(self, *args: str) -> Result:
        """``agentic ARGS --config <this system's file>``."""
        return run(*args, "--config", str(self.config))


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    """Stores on one SQLite file, the task API serving them (its event log too), and a
    config file."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    with (
        open_task_store(url) as tasks,
        open_registry(url) as registry,
        open_allowance_store(url) as quota,
        open_event_log(url) as events,
        running_server(tasks, requeue_interval=None, events=events) as base_url,
    ):
        config = write_config(tmp_path / "agentic.yaml", base_url, url)
        yield System(url, base_url, config, tasks, registry, quota)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- help and usage errors ---
COMMANDS = [
    [],
    ["serve"],
    ["dispatch"],
    ["agent"],
    ["agent", "run"],
    ["submit"],
    ["cancel"],
    ["retry"],
    ["status"],
    ["logs"],
    ["events"],
    ["tasks"],
    ["agents"],
    ["agents", "list"],
    ["agents", "deregister"],
    ["allowance"],
    ["allowance", "show"],
    ["allowance", "set"],
    ["allowance", "model"],
    ["demo"],
    ["admin"],
    ["admin", "prune-functions"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "agentic")
def test_every_command_has_help(command: list[str]) -> None:
    """--help prints the usage and exits 0."""
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output

    assert "<bool>" not in result.output  # a flag takes no value: no type is shown
    options = [line for line in result.output.splitlines() if line.lstrip("│ *").startswith("--")]
    assert not [row for row in options if "<list[" in row]  # one value a use, repeated
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage


@pytest.mark.parametrize(
    ("command", "usage", "flags"),
    [
        (["logs"], "Usage: agentic logs [OPTIONS] TASK", ["--follow", "--json", "--help"]),
        (["submit"], "Usage: agentic submit [OPTIONS] TITLE", ["--json"]),
        (["status"], "Usage: agentic status [OPTIONS] [SECONDS]", ["--watch", "--json"]),
        (["agent", "run"], "Usage: agentic agent run [OPTIONS] CMD...", ["--verbose"]),
        (["dispatch"], "Usage: agentic dispatch [OPTIONS]", ["--once", "--verbose"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_help_shows_flags_bare_and_arguments_without_braces(
    command: list[str], usage: str, flags: list[str]
) -> None:
    """Help and usage lines: a required argument bare (TASK), an optional one in
    brackets, and a flag's row with no type after it (no <bool>)."""
    result = run(*command, "--help")
    assert usage in result.output
    for flag in flags:
        row = next(line for line in result.output.splitlines() if f" {flag} " in line)
        after = [word for word in row.split(flag, 1)[1].split() if not word.startswith("-")]
        assert after[0][0].isupper(), row  # its help text follows, no value placeholder
    if command == ["logs"]:  # a usage error prints the same usage line
        missing = run("logs")
        assert missing.exit_code == 2 and usage in missing.output


@pytest.mark.parametrize(
    ("args", "offered"),
    [
        (["dispatch", "--stor", "x"], "(Possible options: --store)"),
        (["status", "--jsn"], "(Possible options: --json)"),
        (["submit", "t", "--store", "x"], None),  # submit talks to the server: nothing alike
    ],
)
def test_an_unknown_option_offers_only_options_alike(args: list[str], offered: str | None) -> None:
    """An unknown option exits 2 and offers the options its name is close to, judged
    without the dashes (which made --store look like --json)."""
    result = run(*args)
    assert result.exit_code == 2
    assert f"No such option: {args[-2] if args[-1] == 'x' else args[-1]}" in result.output
    if offered is None:
        assert "Possible options" not in result.output
    else:
        assert offered in result.output


AGENT_RUN = ["agent", "run", "--id", "a", "--capability", "x", "--max-load", "1"]


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["submit"],
        ["submit", "title", "--priority", "urgent"],
        ["submit", "title", "--estimated-tokens", "-1"],
        ["status", "5"],
        ["logs"],
        ["events", "--after", "-1"],
        ["events", "--last", "x"],
        ["events", "--last", str(10**23)],  # an OverflowError traceback, exit 1
        ["dispatch", "--interval", "-1"],
        ["serve", "--port", "70000"],
        ["serve", "--agent-token", "no-equals-sign"],
        ["status", "--config", "missing.yaml"],
        ["allowance", "set", "agent-1"],
        ["agent", "run", "--id", "a", "--capability", "x", "--max-load", "0", "--", "true"],
        AGENT_RUN,  # no command
        ["agent", "run", "--id", "a", "--max-load", "1", "--input", "file", "--", "cat"],
        [*AGENT_RUN, "--git-repo", "nowhere", "--", "cat"],
        [*AGENT_RUN, "--", "/no/such/binary"],  # refused before registering
        [*AGENT_RUN, "--", "no-such-agent-binary", "-p"],
        ["agent", "run", "--id", "", "--capability", "x", "--max-load", "1", "--", "true"],
        ["agent", "run", "--id", "a b", "--capability", "x", "--max-load", "1", "--", "true"],
        ["agent", "run", "--id", "a", "--capability", " ", "--max-load", "1", "--", "true"],
        ["agent", "run", "--id", "a", "--capability", "x,y", "--max-load", "1", "--", "true"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    """Bad arguments, bad option values and a missing config file exit 2."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    no_traceback(result)


def test_every_command_summary_is_one_line_of_help() -> None:
    """Each command's first help paragraph is one line in its docstring: the command
    list shows it as a sentence, not broken where the source wraps."""
    groups: list[tuple[str, Any]] = [("agentic", typer.main.get_command(app))]
    broken = []
    while groups:
        path, command = groups.pop()
        subcommands = getattr(command, "commands", {})
        groups.extend((f"{path} {name}", sub) for name, sub in subcommands.items())
        if "\n" in (command.help or "").strip().split("\n\n")[0]:
            broken.append(path)
    assert broken == []


@pytest.mark.parametrize(
    ("args", "told"),
    [
        (["submit", "t", "--priority", "urgent"], "'urgent' is not a priority; valid: critical,"),
        ([*AGENT_RUN, "--input", "pipe", "--", "true"], "'pipe' is not an input mode; valid:"),
        ([*AGENT_RUN, "--format", "xml", "--", "true"], "'xml' is not a task format; valid:"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value[:3]),
)
def test_a_bad_choice_names_the_valid_ones(args: list[str], told: str) -> None:
    """A value outside an option's choices is a usage error listing the valid ones,
    without pydantic's "Value error, " prefix."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.replace("│", " ").split())
    assert told in message and "Value error" not in message


def test_choices_take_any_case() -> None:
    """A choice option accepts its values in any case, as the enum they stand for."""
    parse = one_of(Priority, "a priority", Priority)["parser"]
    assert parse("HIGH") is Priority.HIGH


def test_bad_config_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A wrong value in the config file is a usage error naming the key and the file."""
    config = write_config(
        tmp_path / "bad.yaml", "http://127.0.0.1:1", "memory://", "dispatcher:\n  interval: -1\n"
    )
    result = run("dispatch", "--once", "--config", str(config))
    assert result.exit_code == 2
    assert "dispatcher.interval" in result.stderr and "bad.yaml" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "--store", "foo://x"], "option --store (store_url): unknown scheme 'foo'"),
        (["serve", "--port", "99999"], "option --port (server.port): must be an integer"),
        (["dispatch", "--once", "--interval", "-1"], "option --interval (dispatcher.interval)"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_bad_option_value_is_named_as_typed(args: list[str], named: str) -> None:
    """A bad option value is reported under the option's name, with what is accepted."""
    result = run(*args)
    assert result.exit_code == 2
    assert named in " ".join(result.stderr.split())
    no_traceback(result)


def test_unknown_store_scheme_lists_the_accepted_urls_once() -> None:
    """--store foo://x: one error naming the scheme, the accepted URLs listed once."""
    result = run("agents", "--store", "foo://x")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "option --store (store_url): unknown scheme 'foo'; must be a store URL" in message
    for form in ("memory://", "sqlite:///", "redis://", "rediss://"):
        assert message.count(form) == 1, message
    assert message.endswith("got 'foo://x'")
    with pytest.raises(ConfigError) as opened:
        open_registry("foo://x")
    assert str(opened.value).count("memory://") == 1


def test_dispatcher_gets_the_configured_active_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dispatcher.active_lease from the config reaches the Dispatcher dispatch builds;
    unset, the Dispatcher keeps its own default."""
    seen: list[float | None] = []

    class Recording(Dispatcher):
        def run_once(self) -> DispatchReport:
            seen.append(self.active_lease)
            return DispatchReport()

    monkeypatch.setattr("agentic._cli.dispatch.Dispatcher", Recording)
    lease = "dispatcher:\n  active_lease: 42.5\n"
    for extra in (lease, ""):
        config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", "memory://", extra)
        result = run("dispatch", "--once", "--json", "--config", str(config))
        assert result.exit_code == 0, result.output
    assert seen == [42.5, None]


def test_agent_run_renews_with_the_configured_or_given_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """agent run gives its runner agent.lease_seconds and agent.state_dir from the
    config, --lease-seconds / --state-dir over them, and None (the claim's own
    length) / the user state directory when neither says; not the dispatcher's
    lease_seconds."""
    seen: list[tuple[float | None, Path | None]] = []

    class Recording(AgentRunner):
        def run(self, stop: threading.Event | None = None) -> None:
            journal = self.journal.directory.parent.parent if self.journal else None
            seen.append((self.lease_seconds, journal))

    monkeypatch.setattr("agentic._cli.agent.AgentRunner", Recording)
    lease = "dispatcher:\n  lease_seconds: 99\nagent:\n  lease_seconds: 42\n"
    lease += f"  state_dir: {tmp_path}/s\n"
    agent = ["agent", "run", "--id", "a", "--capability", "x", "--max-load", "1"]
    given = ["--lease-seconds", "20", "--state-dir", str(tmp_path / "t")]
    for extra, options in ((lease, []), (lease, given), ("", [])):
        config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", "memory://", extra)
        result = run(*agent, "--config", str(config), *options, "--", "true")
        assert result.exit_code == 0, result.output
    assert seen == [
        (42.0, tmp_path / "s"),
        (20.0, tmp_path / "t"),
        (None, default_state_dir()),
    ]


def test_agent_run_expands_a_tilde_in_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--state-dir=~/st (no shell expands a tilde after '=') is the home's st, not a
    directory named '~' where the agent was started."""
    seen: list[Path | None] = []

    class Recording(AgentRunner):
        def run(self, stop: threading.Event | None = None) -> None:
            seen.append(self.journal.directory.parent.parent if self.journal else None)

    monkeypatch.setattr("agentic._cli.agent.AgentRunner", Recording)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", "memory://")
    agent = ["agent", "run", "--id", "a", "--capability", "x", "--max-load", "1"]
    result = run(*agent, "--config", str(config), "--state-dir=~/st", "--", "true")
    assert result.exit_code == 0, result.output
    assert seen == [tmp_path / "home" / "st"]


def test_store_option_overrides_the_config(system: System, tmp_path: Path) -> None:
    """--store points every store-reading command at another store than the config's."""
    other = "sqlite:///" + (tmp_path / "other.db").as_posix().lstrip("/")
    with open_registry(other) as registry:
        registry.register(AgentInfo(id="elsewhere"))
    listed = system.cli("agents", "--store", other, "--json")
    assert [a["id"] for a in json.loads(listed.stdout)] == ["elsewhere"]
    set_it = system.cli("allowance", "set", "elsewhere", "--daily-jobs", "3", "--store", other)
    assert set_it.exit_code == 0, set_it.output
    shown = system.cli("allowance", "show", "elsewhere", "--store", other, "--json")
    assert json.loads(shown.stdout)["allowance"]["daily_job_limit"] == 3
    with pytest.raises(NotFoundError):
        system.quota.get_allowance("elsewhere")  # the config's store is untouched
    bad = system.cli("agents", "--store", "foo://x")
    assert bad.exit_code == 2
    assert "option --store (store_url): unknown scheme 'foo'" in " ".join(bad.stderr.split())


def test_file_input_needs_the_placeholder(tmp_path: Path) -> None:
    """--input file without {file} in the command is refused before anything starts."""
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:1", "memory://")
    result = run(
        "agent", "run", "--id", "a", "--capability", "x", "--max-load", "1",
        "--input", "file", "--config", str(config), "--", "cat",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "{file}" in result.stderr


# --- runtime errors ---
def test_server_down_is_a_runtime_error(tmp_path: Path) -> None:
    """An unreachable task server: exit 1 with the SDK's message, no traceback."""
    url = "sqlite:///" + (tmp_path / "x.db").as_posix().lstrip("/")
    config = write_config(tmp_path / "c.yaml", f"http://127.0.0.1:{free_port()}", url)
    result = run("submit", "a task", "--config", str(config))
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")
    no_traceback(result)


def test_serve_on_a_port_in_use_is_a_runtime_error() -> None:
    """serve on a taken port: exit 1 saying it cannot listen and how to choose another
    port, before anything starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), "--store", "memory://")
    assert result.exit_code == 1
    assert "cannot listen" in result.stderr and "--port" in result.stderr
    no_traceback(result)


@pytest.mark.timeout(20)
def test_serve_refuses_to_serve_open_beyond_loopback() -> None:
    """serve with no token on a non-loopback address exits 2 naming the safe ways,
    before it serves anything."""
    result = run("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--store", "memory://")
    assert result.exit_code == 2, result.output
    assert "refusing to serve without a token on 0.0.0.0" in result.stderr
    assert "--allow-open" in result.stderr and "AGENTIC_SERVER__ADMIN_TOKENS" in result.stderr
    no_traceback(result)


def test_a_malformed_agent_token_is_not_echoed() -> None:
    """A --agent-token without '=' is a usage error whose message holds no token."""
    result = run("serve", "--agent-token", "s3cret-agent-token", "--store", "memory://")
    assert result.exit_code == 2
    assert "TOKEN=AGENT_ID" in result.stderr and "s3cret" not in result.output + result.stderr


def test_log_lines_are_key_value_pairs() -> None:
    """The long-running commands log logfmt lines; values are quoted only when needed."""
    record = logging.LogRecord("agentic.x", logging.INFO, "f", 1, 'pass: a="b" c', None, None)
    line = KeyValueFormatter().format(record)
    assert line.startswith("ts=") and line.endswith('logger=agentic.x msg="pass: a=\\"b\\" c"')
    assert " level=info " in line


def test_unknown_ids_are_runtime_errors(system: System) -> None:
    """Unknown task, agent or allowance: exit 1 and a message naming it; "HTTP 404"
    only where a server answered."""
    for args, said in (
        (["logs", "nope"], "error: no task 'nope' on the task server at http://"),
        (["agents", "deregister", "ghost"], "error: agent 'ghost' is not registered"),
        (["allowance", "show", "ghost"], "error: no allowance for agent 'ghost'"),
    ):
        result = system.cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert said in result.stderr
        no_traceback(result)


def test_reading_a_missing_store_fails_without_creating_it(tmp_path: Path) -> None:
    """agents list on a SQLite file that does not exist, in a directory that does not
    either: exit 1 saying so and what to do, and neither appears."""
    db = tmp_path / "nowhere" / "fleet.db"
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:1", f"sqlite:///{db}")
    result = run("agents", "--config", str(config))
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"{db} does not exist (nor does its directory {db.parent}):" in message
    assert "give the URL of an existing store (--store, store_url)" in message
    assert "create this one with a command that writes to it (agentic serve" in message
    assert not db.parent.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["agents"],
        ["agents", "deregister", "a1"],
        ["allowance", "show"],
        ["allowance", "set", "a1", "--daily-jobs", "1"],
        ["status"],
        ["events"],
        ["dispatch", "--once"],
        ["serve"],
    ],
    ids=" ".join,
)
def test_a_store_url_naming_a_directory_is_one_usage_error(tmp_path: Path, args: list[str]) -> None:
    """--store sqlite:///DIR, DIR a directory: every command that opens a store exits
    2 with one message saying it is a directory and naming a file to give instead."""
    port = ["--port", str(free_port())] if args == ["serve"] else []  # 8080 may be taken
    result = run(*args, *port, "--store", f"sqlite:///{tmp_path}")
    assert result.exit_code == 2, result.output
    assert " ".join(result.stderr.split()) == (
        f"error: SQLite store: '{tmp_path}' is a directory, not a database file; name a"
        f" file in it, e.g. sqlite://{tmp_path}/agentic.db"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was created in it
    no_traceback(result)


# --- submit ---
def test_submit_prints_the_new_id(system: System) -> None:
    """submit creates the task with every option and prints only its id."""
    first = system.cli("submit", "first")
    assert first.exit_code == 0, first.output
    first_id = first.stdout.strip()
    result = system.cli(
        "submit", "second", "-d", "details", "-l", "python", "-l", "git", "-p", "high",
        "--project", "p1", "--depends-on", first_id, "--model", "m", "--estimated-tokens", "50",
        "--max-retries", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    task = system.tasks.get(result.stdout.strip())
    assert (task.title, task.description, task.labels, task.priority) == (
        "second",
        "details",
        ["python", "git"],
        "high",
    )
    assert (task.project, task.dependencies, task.model) == ("p1", [first_id], "m")
    assert (task.estimated_tokens, task.max_retries, task.status) == (50, 1, TaskStatus.PENDING)


def test_submit_json(system: System) -> None:
    """--json prints the stored task."""
    result = system.cli("submit", "t", "--json")
    data = json.loads(result.stdout)
    assert data["title"] == "t" and data["status"] == "pending"
    assert system.tasks.get(data["id"]).title == "t"


def test_submit_again_with_the_same_idempotency_key_creates_one_task(system: System) -> None:
    """submit --idempotency-key K run twice creates one task and prints its id both times."""
    first = system.cli("submit", "t", "--idempotency-key", "k-1")
    again = system.cli("submit", "t", "--idempotency-key", "k-1")
    assert first.exit_code == again.exit_code == 0
    assert first.stdout == again.stdout
    assert [t.id for t in system.tasks.list()] == [first.stdout.strip()]


def test_submit_without_an_answer_names_the_key_to_run_it_again_with(tmp_path: Path) -> None:
    """A submit that got no answer says the task may exist and names its idempotency key."""
    url = "sqlite:///" + (tmp_path / "x.db").as_posix().lstrip("/")
    config = write_config(tmp_path / "c.yaml", f"http://127.0.0.1:{free_port()}", url)
    result = run("submit", "a task", "--idempotency-key", "k-2", "--config", str(config))
    assert result.exit_code == 1
    assert "may have been created" in result.stderr
    assert "--idempotency-key k-2" in result.stderr


def test_submit_blank_title_is_a_usage_error(system: System) -> None:
    """A blank title is refused (exit 2, "title must not be blank") before any request."""
    for title in ("", "  ", "\t"):
        result = system.cli("submit", title)
        assert result.exit_code == 2, result.output
        assert result.stderr == "error: title must not be blank\n"
    assert system.tasks.list() == []


def test_a_422_from_the_server_is_a_usage_error(system: System) -> None:
    """Input the task API refuses (422) exits 2 with the server's message, as a usage
    error, not 1 as a failure."""
    result = system.cli("submit", "t", "--depends-on", "ghost")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("error: HTTP 422:") and "ghost" in message
    no_traceback(result)
    assert system.tasks.list() == []


def test_a_503_says_what_the_store_said(tmp_path: Path) -> None:
    """A task API whose store fails (here a SQLite file another process holds locked)
    answers 503; the command's error says the store's own reason, not only "the task
    store is unavailable" (an operator's trial: a full disk read the same as a lock)."""
    path = tmp_path / "locked.db"
    url = "sqlite:///" + path.as_posix().lstrip("/") + "?timeout=0.05"
    with open_task_store(url) as tasks, running_server(tasks, requeue_interval=None) as base:
        config = write_config(tmp_path / "agentic.yaml", base, url)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            result = run("cancel", "nope", "--config", str(config))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert result.exit_code == 1, result.output
    # (The in-process server's own log may precede it on the captured stderr.)
    said = " ".join(result.stderr.split())
    message = said[said.index("error: HTTP 503: ") :]
    assert message.startswith("error: HTTP 503: the task store is unavailable (")
    assert "locked by another connection" in message
    assert isinstance(result.exception, SystemExit)


def test_negative_numbers_are_values_not_options(system: System) -> None:
    """A negative number is read as the value it is (an argument or an option's value),
    never as an unknown option: a title "-5" is a title; a negative count or interval
    is refused as a value out of range (exit 2)."""
    created = system.cli("submit", "-5")
    assert created.exit_code == 0, created.output
    assert system.tasks.get(created.stdout.strip()).title == "-5"
    for args in (
        ("submit", "t", "--estimated-tokens", "-5"),
        ("submit", "t", "--max-retries", "-1"),
        ("status", "--watch", "-5"),
        ("status", "--watch", "-0.5"),
    ):
        result = system.cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "No such option" not in result.output
        assert "Invalid value for" in result.output
    assert [task.title for task in system.tasks.list()] == ["-5"]
    unknown = system.cli("submit", "t", "-x")  # a word that is no number stays an option
    assert unknown.exit_code == 2 and "No such option: -x" in unknown.output


def test_an_unreachable_task_api_says_what_to_check(tmp_path: Path) -> None:
    """No server at base_url: exit 1, the error, and where to look (serve, base_url)."""
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", "memory://")
    result = run("submit", "t", "--config", str(config))
    assert result.exit_code == 1
    assert "no answer" in result.stderr
    assert "agentic serve" in result.stderr and "AGENTIC_BASE_URL" in result.stderr


def test_a_missing_token_says_how_to_give_one(system: System, tmp_path: Path) -> None:
    """A server that wants a token: the 401 comes with the setting that gives one."""
    with running_server(system.tasks, admin_tokens=["secret"]) as base_url:
        config = write_config(tmp_path / "t.yaml", base_url, system.url)
        result = run("submit", "t", "--config", str(config))
    assert result.exit_code == 1
    assert "401" in result.stderr and "AGENTIC_TOKEN" in result.stderr
    assert "the server wants a token" in result.stderr


def test_a_wrong_token_says_it_is_unknown(system: System, tmp_path: Path) -> None:
    """A token the server does not know: the hint says to check it, not to set one."""
    with running_server(system.tasks, admin_tokens=["secret"]) as base_url:
        config = write_config(tmp_path / "t.yaml", base_url, system.url)
        env = {"AGENTIC_TOKEN": "not-the-secret"}
        result = CliRunner().invoke(app, ["submit", "t", "--config", str(config)], env=env)
    assert result.exit_code == 1
    assert "the server does not know this token: check token" in result.stderr


def test_logs_of_an_unknown_task_names_it(system: System) -> None:
    """logs of a task the server does not have says which, where, and how to list
    them (a path-like id too)."""
    for task_id in ("no-such-task", "../x"):
        result = system.cli("logs", task_id)
        assert result.exit_code == 1
        assert f"no task {task_id!r} on the task server at {system.base_url}" in result.stderr
        assert "agentic tasks" in result.stderr


def test_following_a_pending_task_says_where_to_see_why_it_waits(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logs -f of a task pending for a while points at the events that say why it
    waits (its log is empty until it runs), then follows it to its end as usual."""
    monkeypatch.setattr(cli_tasks, "PENDING_HINT_AFTER", 0.3)
    task = system.tasks.create(Task(title="waits"))

    def finish() -> None:
        time.sleep(1.5)
        system.tasks.complete(system.tasks.claim(task.id, "a1", 60).id, TaskResult(success=True))

    worker = threading.Thread(target=finish)
    worker.start()
    result = system.cli("logs", task.id, "-f")
    worker.join()
    assert result.exit_code == 0, result.output
    assert f"agentic events --task {task.id} says why it waits" in result.stderr
    assert "Status: completed" in result.stdout


def test_following_a_task_claimed_at_once_gives_no_pending_warning(system: System) -> None:
    """logs -f of a task just submitted that is claimed and finished within moments
    (the usual case) prints no warning about it pending."""
    task = system.tasks.create(Task(title="runs"))

    def finish() -> None:
        time.sleep(0.5)
        system.tasks.complete(system.tasks.claim(task.id, "a1", 60).id, TaskResult(success=True))

    worker = threading.Thread(target=finish)
    worker.start()
    result = system.cli("logs", task.id, "-f")
    worker.join()
    assert result.exit_code == 0, result.output
    assert "pending" not in result.stderr
    assert "Status: completed" in result.stdout


def test_cancel_fails_a_task_blocks_its_dependents_and_refuses_a_final_one(
    system: System,
) -> None:
    """cancel dead-letters a pending task with the reason given (its dependents become
    blocked); cancelling a task that already ended, or one the server does not know,
    exits 1 saying so and changes nothing."""
    first = system.tasks.create(Task(title="first"))
    then = system.tasks.create(Task(title="then", dependencies=[first.id]))
    result = system.cli("cancel", first.id, "--reason", "wrong repo")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{first.id} failed: cancelled: wrong repo"
    cancelled = system.tasks.get(first.id)
    assert (cancelled.status, cancelled.fail_reason) == (TaskStatus.FAILED, "cancelled: wrong repo")
    assert system.tasks.get(then.id).status is TaskStatus.BLOCKED
    again = system.cli("cancel", first.id)
    assert again.exit_code == 1
    assert f"task {first.id} has ended already (failed): nothing to cancel" in again.stderr
    assert "fail_reason" not in again.stderr  # no field names of the API
    assert system.tasks.get(first.id).fail_reason == "cancelled: wrong repo"
    unknown = system.cli("cancel", "no-such-task")
    assert unknown.exit_code == 1
    assert "no task 'no-such-task' on the task server at" in " ".join(unknown.stderr.split())


def test_submitting_a_task_that_depends_on_a_failed_one_says_it_is_blocked(
    system: System,
) -> None:
    """submit --depends-on a failed task still prints the new id (exit 0) and says on
    stderr that it is blocked at once, naming the failed dependency."""
    failed = system.tasks.create(Task(title="first"))
    system.cli("cancel", failed.id)
    result = system.cli("submit", "then", "--depends-on", failed.id)
    assert result.exit_code == 0, result.output
    new_id = result.stdout.strip()
    assert system.tasks.get(new_id).status is TaskStatus.BLOCKED
    said = " ".join(result.stderr.split())
    assert f"task {new_id} is blocked at once: {failed.id} failed" in said


def test_following_a_task_waiting_on_a_dependency_names_it(system: System) -> None:
    """logs -f of a pending task whose dependency is not completed says it waits for
    that task (not for an agent), then follows it to its end."""
    first = system.tasks.create(Task(title="first"))
    then = system.tasks.create(Task(title="then", dependencies=[first.id]))

    def finish() -> None:
        time.sleep(0.5)
        for task in (first, then):
            claimed = system.tasks.claim(task.id, "a1", 60)
            system.tasks.complete(claimed.id, TaskResult(success=True))

    worker = threading.Thread(target=finish)
    worker.start()
    result = system.cli("logs", then.id, "-f")
    worker.join()
    assert result.exit_code == 0, result.output
    assert f"task {then.id} is pending: it waits for {first.id} to complete" in result.stderr
    assert "agentic events" not in result.stderr


# --- status ---
def test_status_table_and_json(system: System) -> None:
    """status shows agents with load and quota use (used/limit, as allowance show
    writes it), and the task counts."""
    system.registry.register(
        AgentInfo(id="coder", capabilities=["python"], max_load=2, current_load=1)
    )
    system.quota.set_allowance(
        AgentAllowance(agent_id="coder", daily_token_limit=1000, daily_job_limit=5)
    )
    system.quota.increment_usage("coder", 200, 2)
    system.registry.register(AgentInfo(id="free", max_load=1))
    system.tasks.create(Task(title="a"))
    system.tasks.create(Task(title="b"))

    result = system.cli("status")
    assert result.exit_code == 0, result.output
    coder_row = next(cells for cells in _table_rows(result.stdout) if cells[1].strip() == "coder")
    assert [cell.strip() for cell in coder_row[3:6]] == ["1/2", "200/1000", "2/5"]
    assert "Tokens and jobs: used/limit" in result.stdout
    shown = system.cli("allowance", "show", "coder").stdout
    assert "200/1000" in shown and "2/5" in shown and "used/limit" in shown
    assert "no allowance" in result.stdout  # "free" has none: it gets no work
    assert "2 pending, 0 in progress" in result.stdout

    data = json.loads(system.cli("status", "--json").stdout)
    assert data["tasks"] == {"pending": 2, "in_progress": 0}
    coder = next(a for a in data["agents"] if a["id"] == "coder")
    assert coder["usage"]["tokens_used"] == 200 and coder["quota"]["remaining_jobs"] == 3
    assert data["warnings"] == []


def _table_rows(text: str) -> list[list[str]]:
    """The cells of a rich table's body rows (split on its vertical bars)."""
    return [line.split("│") for line in text.splitlines() if line.startswith("│")]


def test_status_says_when_an_agent_used_up_its_quota(system: System) -> None:
    """An available agent whose daily jobs are used up reads "used up" (it gets no
    work until the reset), explained under the table; one at its concurrency limit
    does not (that frees when a job ends)."""
    system.registry.register(AgentInfo(id="spent", max_load=1))
    system.quota.set_allowance(AgentAllowance(agent_id="spent", daily_job_limit=2))
    system.quota.increment_usage("spent", 0, 2)
    system.registry.register(AgentInfo(id="fresh", max_load=1))
    system.quota.set_allowance(AgentAllowance(agent_id="fresh", daily_job_limit=2))
    system.registry.register(AgentInfo(id="full", max_load=2))
    system.quota.set_allowance(AgentAllowance(agent_id="full", concurrent_jobs=1))
    system.quota.reserve("full", "", 0, "running")  # at its concurrency limit: busy
    result = system.cli("status")
    assert result.exit_code == 0, result.output
    rows = {cells[1].strip(): cells[2].strip() for cells in _table_rows(result.stdout)}
    assert (rows["spent"], rows["fresh"], rows["full"]) == ("used up", "available", "available")
    assert "used up: no work until the quotas reset" in " ".join(result.stdout.split())


def test_status_shows_by_how_much_use_passed_a_token_limit(system: System) -> None:
    """Tokens spent past the daily limit (jobs charged more than their estimates) read
    used/limit and by how much, explained under the table; within the limit, no note."""
    system.registry.register(AgentInfo(id="over", max_load=1))
    system.quota.set_allowance(AgentAllowance(agent_id="over", daily_token_limit=4000))
    system.quota.increment_usage("over", 6000, 4)
    system.registry.register(AgentInfo(id="within", max_load=1))
    system.quota.set_allowance(AgentAllowance(agent_id="within", daily_token_limit=4000))
    system.quota.increment_usage("within", 3000, 2)
    result = system.cli("status")
    assert result.exit_code == 0, result.output
    rows = {cells[1].strip(): cells[4].strip() for cells in _table_rows(result.stdout)}
    assert rows == {"over": "6000/4000 (2000 over)", "within": "3000/4000"}
    assert "over: jobs spent more than their estimates" in " ".join(result.stdout.split())


def test_status_warns_when_the_server_serves_another_store(system: System, tmp_path: Path) -> None:
    """status reading agents from one store and task counts from a server on another
    (a wrong --store or prefix) says so and exits 1; on the same store it does not."""
    other = "sqlite:///" + (tmp_path / "other.db").as_posix().lstrip("/")
    with open_registry(other) as registry:
        registry.register(AgentInfo(id="elsewhere"))
    mixed = system.cli("status", "--store", other)
    assert mixed.exit_code == 1, mixed.output
    assert "serves another store (id " in mixed.stderr and "--store" in mixed.stderr
    same = system.cli("status")
    assert same.exit_code == 0, same.output
    assert "serves another store" not in same.output


def test_status_shows_unreachable_parts_as_unknown(tmp_path: Path) -> None:
    """Server down and store missing: unknown with warnings, exit 1 (what is known is
    still shown), no store created."""
    db = tmp_path / "missing.db"
    config = write_config(tmp_path / "c.yaml", f"http://127.0.0.1:{free_port()}", f"sqlite:///{db}")
    result = run("status", "--config", str(config))
    assert result.exit_code == 1, result.output
    assert "Agents: unknown" in result.stdout
    assert "unknown pending, unknown in progress" in result.stdout
    assert result.stderr.count("warning:") >= 2
    assert not db.exists()
    data = json.loads(run("status", "--json", "--config", str(config)).stdout)
    assert data["agents"] is None and data["tasks"]["pending"] is None


# --- logs ---
def test_logs_text_and_json(system: System) -> None:
    """logs prints the status and the lines; --json prints one object per line."""
    task = system.tasks.create(Task(title="t"))
    system.tasks.claim(task.id, "coder", 60)
    system.tasks.append_logs(task.id, ["line one", "line two"])
    system.tasks.complete(task.id, TaskResult(success=True), "coder")

    text = system.cli("logs", task.id)
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[1:] == ["line one", "line two"]
    assert "Status: completed" in text.stdout

    records = [
        json.loads(line) for line in system.cli("logs", task.id, "--json").stdout.splitlines()
    ]
    assert records[0] == {"kind": "status", "task_id": task.id, "status": "completed"}
    assert [r["line"] for r in records[1:]] == ["line one", "line two"]
    assert system.cli("logs", task.id, "-f").exit_code == 0


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_logs_follow_exits_1_for_a_task_that_will_not_complete(
    system: System, json_output: bool
) -> None:
    """logs -f of a task that ended failed exits 1 (a waiting script must stop);
    without -f it printed what was asked: exit 0."""
    task = system.tasks.create(Task(title="t", max_retries=0))
    system.tasks.claim(task.id, "coder", 60)
    system.tasks.complete(task.id, TaskResult(success=False, error_message="boom"), "coder")
    extra = ["--json"] if json_output else []
    assert system.cli("logs", task.id, "-f", *extra).exit_code == 1
    assert system.cli("logs", task.id, *extra).exit_code == 0


@pytest.mark.parametrize("json_output", [False, True])
def test_logs_follow_ends_with_the_task(system: System, json_output: bool) -> None:
    """-f prints lines as they come and returns once the task is final."""
    task = system.tasks.create(Task(title="t"))
    system.tasks.claim(task.id, "coder", 60)

    def work() -> None:
        time.sleep(0.3)
        system.tasks.append_logs(task.id, ["working"])
        time.sleep(0.3)
        system.tasks.complete(task.id, TaskResult(success=True), "coder")

    worker = threading.Thread(target=work)
    worker.start()
    args = ["logs", task.id, "-f", *(["--json"] if json_output else [])]
    result = system.cli(*args)
    worker.join()
    assert result.exit_code == 0, result.output
    assert "working" in result.stdout and "completed" in result.stdout


# --- agents and allowances ---
def test_agents_list_json_and_deregister(system: System) -> None:
    """agents lists the registry (also as `agents list`); deregister removes one."""
    system.registry.register(AgentInfo(id="a1", capabilities=["docs"], max_load=1))
    system.registry.register(AgentInfo(id="a2", max_load=3))
    table = system.cli("agents")
    assert table.exit_code == 0, table.output
    assert "a1" in table.stdout and "docs" in table.stdout and "0/3" in table.stdout
    data = json.loads(system.cli("agents", "list", "--json").stdout)
    assert [a["id"] for a in data] == ["a1", "a2"]
    result = system.cli("agents", "deregister", "a1")
    assert result.exit_code == 0, result.output
    assert [a.id for a in system.registry.list()] == ["a2"]


def test_allowance_set_merges_and_show(system: System) -> None:
    """set changes only the options given; show prints allowance and usage."""
    assert system.cli("allowance", "set", "a1", "--daily-tokens", "1000").exit_code == 0
    result = system.cli("allowance", "set", "a1", "--daily-jobs", "4", "--model", "m1", "--json")
    assert result.exit_code == 0, result.output
    expected = AgentAllowance(
        agent_id="a1", daily_token_limit=1000, daily_job_limit=4, model_allowlist=["m1"]
    )
    assert system.quota.get_allowance("a1") == expected
    assert AgentAllowance.model_validate(json.loads(result.stdout)) == expected

    system.quota.increment_usage("a1", 300, 1)
    shown = system.cli("allowance", "show")
    assert "300/1000" in shown.stdout and "1/4" in shown.stdout and "m1" in shown.stdout
    one = json.loads(system.cli("allowance", "show", "a1", "--json").stdout)
    assert one["allowance"]["daily_job_limit"] == 4 and one["usage"]["tokens_used"] == 300


def test_allowance_failure_charge_sets_and_shows(system: System) -> None:
    """--failure-charge full is stored and shown, other options keep their values; a
    bad value is a usage error naming the option and the accepted values."""
    system.cli("allowance", "set", "a1", "--daily-tokens", "1000")
    result = system.cli("allowance", "set", "a1", "--failure-charge", "full")
    assert result.exit_code == 0, result.output
    stored = system.quota.get_allowance("a1")
    assert (stored.failure_charge, stored.daily_token_limit) == (FailureCharge.FULL, 1000)
    system.quota.set_allowance(AgentAllowance(agent_id="a2"))
    shown = system.cli("allowance", "show")
    assert "Failed" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines() if line.startswith("│ a")]
    assert [(row[1], row[-2]) for row in rows] == [("a1", "full"), ("a2", "half")]
    one = json.loads(system.cli("allowance", "show", "a1", "--json").stdout)
    assert one["allowance"]["failure_charge"] == "full"
    bad = system.cli("allowance", "set", "a1", "--failure-charge", "all")
    assert bad.exit_code == 2
    assert "--failure-charge" in bad.output and "valid: half, full" in bad.output
    assert system.quota.get_allowance("a1").failure_charge is FailureCharge.FULL


def test_allowance_model_sets_and_shows(system: System) -> None:
    """model MODEL shows the quota; with options it sets them, keeping the others."""
    empty = system.cli("allowance", "model", "m1")
    assert empty.exit_code == 0 and "no quota set" in empty.stdout
    system.cli("allowance", "model", "m1", "--daily-tokens", "5000", "--input-price", "300")
    system.cli("allowance", "model", "m1", "--output-price", "1500", "--hourly-rate", "60")
    quota = system.quota.get_model_quota("m1")
    assert (quota.daily_token_budget, quota.hourly_rate_limit) == (5000, 60)
    assert (quota.input_price, quota.output_price) == (300, 1500)
    data = json.loads(system.cli("allowance", "model", "m1", "--json").stdout)
    assert data["quota"]["output_price"] == 1500 and data["usage"]["tokens_used"] == 0


def test_allowance_model_says_what_its_requests_count(system: System) -> None:
    """model MODEL counts a request when a task naming the model is dispatched, and says
    so: usage jobs report on it for tasks naming no model adds tokens, no request."""
    system.quota.set_allowance(AgentAllowance(agent_id="a1"))
    system.quota.reserve("a1", "", 100, "j1")
    system.quota.settle("j1", 600, 400, QuotaEvent.JOB_COMPLETED, model="m1")
    before = system.cli("allowance", "model", "m1")
    assert before.exit_code == 0, before.output
    said = " ".join(before.stdout.split())
    assert "today: 1000 tokens (0 reserved)" in said
    assert before.stdout.splitlines()[-1] == (
        "last hour: 0 requests (tasks naming this model, counted when dispatched)"
    )
    system.quota.reserve("a1", "m1", 100, "j2")
    after = " ".join(system.cli("allowance", "model", "m1").stdout.split())
    assert after.endswith("last hour: 1 request (tasks naming this model, counted when dispatched)")


def test_allowance_values_no_store_reads_back_are_usage_errors(system: System) -> None:
    """--max-job-duration inf (or past 1e9 s), --input-price inf (or past 10**6), a
    limit past 2**50 or a cost ceiling past 10**9 cents, and an empty AGENT or MODEL
    exit 2 with one line naming the field, and the stored allowance and quota are
    kept; inf was stored as JSON null, and every read of the allowances (show, each
    runner's start) then failed with a traceback; 10**23 was stored and failed or
    miscounted at each reserve."""
    system.cli("allowance", "set", "a1", "--daily-jobs", "4", "--max-job-duration", "60")
    system.cli("allowance", "model", "m1", "--input-price", "300")
    for args, said in [
        (["set", "a1", "--max-job-duration", "inf"], "max_job_duration: Input should be a finite"),
        (["set", "a1", "--max-job-duration", "1e12"], "max_job_duration: must be at most 1e9"),
        (["model", "m1", "--input-price", "inf"], "input_price: Input should be a finite"),
        (["set", "a1", "--daily-tokens", str(10**23)], "daily_token_limit: must be at most 2**50"),
        (["model", "m1", "--cost-ceiling", str(10**23)], "cost_ceiling: must be at most 10**9"),
        (["model", "m1", "--input-price", "1e300"], "input_price: must be at most 10**6 cents"),
        (["set", "", "--daily-jobs", "1"], "AGENT must be a non-empty string"),
        (["model", "", "--daily-tokens", "1"], "MODEL must be a non-empty string"),
    ]:
        result = system.cli("allowance", *args)
        assert result.exit_code == 2, result.output
        assert said in " ".join(result.output.split())
        no_traceback(result)
    assert system.quota.get_allowance("a1").max_job_duration == 60
    assert system.quota.get_model_quota("m1").input_price == 300
    assert system.cli("allowance", "show").exit_code == 0


# --- real processes ---
def subprocess_env() -> dict[str, str]:
    """The test's environment for a child process (already cleaned by the fixture)."""
    return dict(os.environ)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until it is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def healthy(url: str) -> bool:
    """Whether the server at ``url`` answers its health check."""
    try:
        return httpx.get(f"{url}/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_store_option_is_the_url_of_every_store(tmp_path: Path) -> None:
    """--store replaces store_url and a config's per-store URLs alike."""
    path = tmp_path / "agentic.yaml"
    path.write_text(
        "store_url: sqlite:///a.db\ntask_store_url: sqlite:///t.db\n"
        "registry_url: sqlite:///r.db\nevent_log_url: sqlite:///e.db\n"
    )
    cfg = store_config(path, "sqlite:///s.db")
    urls = {cfg.store_url_for(purpose) for purpose in ("registry", "allowance", "task", "events")}
    assert urls == {"sqlite:///s.db"}
    assert store_config(path, None).store_url_for("task") == "sqlite:///t.db"


@pytest.mark.slow
def test_serve_runs_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """serve prints store and URL (never a token), answers, and exits 0 soon after SIGTERM."""
    port = free_port()
    store = "sqlite:///" + (tmp_path / "served.db").as_posix().lstrip("/")
    secret = "s3cret-admin-token"
    process = subprocess.Popen(
        [AGENTIC, "serve", "--port", str(port), "--store", store, "--token", secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"))
        answer = httpx.get(f"http://127.0.0.1:{port}/api/tasks")
        assert answer.status_code == 401  # the token is enforced
        admin = {"Authorization": f"Bearer {secret}"}
        made = httpx.post(f"http://127.0.0.1:{port}/api/tasks", json={"title": "t"}, headers=admin)
        task_id = made.json()["id"]
        claim = {"agent_id": "a1"}
        url = f"http://127.0.0.1:{port}/api/tasks/{task_id}/claim"
        assert httpx.post(url, json=claim, headers=admin).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        process.kill()
        out, err = process.communicate()
    assert f"http://127.0.0.1:{port}" in out.decode()
    assert store in out.decode()
    assert secret not in out.decode() + err.decode()
    # --store is every store's URL: lifecycles go to that file's event log, not the
    # default store's.
    assert "task lifecycles recorded in its event log" in out.decode()
    with open_event_log(store) as log:
        assert [e.event.type for e in log.read()] == [EventType.TASK_CLAIMED]


def test_serve_stops_on_a_sigterm_sent_as_soon_as_it_says_it_serves(tmp_path: Path) -> None:
    """A SIGTERM sent the moment serve prints its URL (before uvicorn has taken over
    the signals) stops it, exit 0, instead of being ignored."""
    for attempt in range(3):
        store = "sqlite:///" + (tmp_path / f"s{attempt}.db").as_posix().lstrip("/")
        command = [AGENTIC, "serve", "--port", str(free_port()), "--store", store]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=subprocess_env()
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(b"serving the task API"):
                    process.send_signal(signal.SIGTERM)
                    break
            assert process.wait(15) == 0
        finally:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(
    ("settings", "records"),
    [
        ({"store_url": "sqlite:///a.db"}, True),
        ({"store_url": "sqlite:///a.db", "event_log_url": "sqlite:///a.db"}, True),
        ({"store_url": "sqlite:///a.db", "events": {"log": False}}, False),
        ({"store_url": "sqlite:///a.db", "event_log_url": "sqlite:///b.db"}, False),
        # the log readers use is store_url's, not the task store's
        ({"store_url": "sqlite:///a.db", "task_store_url": "sqlite:///t.db"}, False),
        (
            {
                "store_url": "sqlite:///a.db",
                "task_store_url": "sqlite:///t.db",
                "event_log_url": "sqlite:///t.db",
            },
            True,
        ),
        ({"store_url": "memory://"}, False),  # no other process could read it
    ],
)
def test_stores_record_events_only_into_the_log_readers_use(
    settings: dict[str, Any], records: bool
) -> None:
    """serve (task lifecycles) and agent run (usage) record only when their store
    holds the shared log."""
    assert records_events(Config.model_validate(settings), "task") is records
    as_allowance = {
        ("allowance_url" if key == "task_store_url" else key): value
        for key, value in settings.items()
    }
    assert records_events(Config.model_validate(as_allowance), "allowance") is records


def test_the_log_emitter_keeps_what_the_config_says(tmp_path: Path) -> None:
    """event_emitter's log emitter trims to events.log_keep, sparing
    events.log_keep_unread unread events."""
    url = "sqlite:///" + (tmp_path / "log.db").as_posix().lstrip("/")
    settings = {"store_url": url, "events": {"log_keep": 7, "log_keep_unread": 30}}
    emitter = event_emitter(Config.model_validate(settings))
    assert isinstance(emitter, EventLogEmitter)
    with emitter:
        assert (emitter.keep, emitter.keep_unread) == (7, 30)


def test_a_memory_store_refuses_to_record_events() -> None:
    """memory:// with record_events is refused: its log would be private and untrimmed."""
    with pytest.raises(ConfigError, match="memory:// cannot record task events"):
        open_task_store("memory://", record_events=True)
    with pytest.raises(ConfigError, match="memory:// cannot record usage events"):
        open_allowance_store("memory://", record_events=True)


@pytest.mark.slow
def test_status_watch_into_a_file_writes_every_refresh_and_ends_on_sigterm(
    tmp_path: Path,
) -> None:
    """status --watch into a file prints each refresh and exits 0 on SIGTERM."""
    store = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    with open_registry(store) as registry:
        registry.register(AgentInfo(id="coder-1", capabilities=["py"]))
    out = tmp_path / "status.txt"
    with out.open("w") as sink:
        process = subprocess.Popen(
            [AGENTIC, "status", "--watch", "0.1", "--store", store],
            stdout=sink,
            stderr=subprocess.PIPE,
            env={**subprocess_env(), "AGENTIC_BASE_URL": f"http://127.0.0.1:{free_port()}"},
        )
        try:
            wait_for(lambda: out.read_text().count("coder-1") >= 2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(5) == 0
        finally:
            process.kill()
            process.communicate()
    assert "Traceback" not in out.read_text()


@pytest.mark.slow
def test_serve_without_token_warns(tmp_path: Path) -> None:
    """With no token configured, serve warns that the API is open and refuses what a
    web page could send it: another site's Origin, a Host name not its own."""
    port = free_port()
    process = subprocess.Popen(
        [AGENTIC, "serve", "--port", str(port), "--store", "memory://"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(base))
        task = {"title": "rm -rf ~"}
        page = httpx.post(f"{base}/api/tasks", json=task, headers={"Origin": "http://a.example"})
        rebound = httpx.post(f"{base}/api/tasks", json=task, headers={"Host": f"a.example:{port}"})
        assert (page.status_code, rebound.status_code) == (403, 403)
        assert httpx.get(f"{base}/api/tasks").json() == []
        assert httpx.get(f"http://localhost:{port}/api/tasks").status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 0
    finally:
        process.kill()
        _, err = process.communicate()
    assert "without tokens" in err.decode()


@pytest.mark.slow
def test_serve_applies_the_configured_rate_limit() -> None:
    """server.rate_limit / rate_burst reach the served API: past the burst, 429."""
    port = free_port()
    limits = {"AGENTIC_SERVER__RATE_LIMIT": "0.1", "AGENTIC_SERVER__RATE_BURST": "2"}
    env = {**subprocess_env(), **limits}
    process = subprocess.Popen(
        [AGENTIC, "serve", "--port", str(port), "--store", "memory://"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(base))
        codes = [httpx.get(f"{base}/api/tasks").status_code for _ in range(3)]
    finally:
        process.kill()
        process.communicate()
    assert codes == [200, 200, 429]


@pytest.mark.slow
def test_serve_applies_the_configured_log_bound_and_claim_rights() -> None:
    """server.max_log_lines and server.agent_claims reach the served API: a log past
    the bound is refused (409), an agent token's claim too (403)."""
    port = free_port()
    settings = {
        "AGENTIC_SERVER__ADMIN_TOKENS": "adm",
        "AGENTIC_SERVER__AGENT_TOKENS": "ag=a1",
        "AGENTIC_SERVER__MAX_LOG_LINES": "2",
        "AGENTIC_SERVER__AGENT_CLAIMS": "false",
    }
    process = subprocess.Popen(
        [AGENTIC, "serve", "--port", str(port), "--store", "memory://"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**subprocess_env(), **settings},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(base))
        admin, agent = {"Authorization": "Bearer adm"}, {"Authorization": "Bearer ag"}
        task = httpx.post(f"{base}/api/tasks", json={"title": "t"}, headers=admin).json()
        claim = httpx.post(f"{base}/api/tasks/{task['id']}/claim", json={}, headers=agent)
        logs = f"{base}/api/tasks/{task['id']}/logs"
        appended = httpx.post(logs, json={"lines": ["a", "b", "c"]}, headers=admin)
    finally:
        process.kill()
        process.communicate()
    assert (claim.status_code, appended.status_code) == (403, 409)


@pytest.mark.slow
def test_dispatch_once_prints_reasons_as_written(system: System) -> None:
    """A waiting reason quoting labels in brackets is printed whole, not read as markup."""
    system.registry.register(AgentInfo(id="cpu-only", capabilities=["cpu"]))
    task = system.tasks.create(Task(title="t", labels=["gpu"]))
    result = system.cli("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert f"waiting    {task.id}: " in result.stdout
    assert "[gpu]" in result.stdout


def test_dispatch_once_escapes_control_characters_of_labels(system: System) -> None:
    """A waiting reason quoting a label with a terminal escape shows it escaped."""
    system.registry.register(AgentInfo(id="cpu-only", capabilities=["cpu"]))
    system.tasks.create(Task(title="t", labels=["gpu\x1b]0;owned\x07"]))
    result = system.cli("dispatch", "--once")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "gpu\\x1b]0;owned\\x07" in result.stdout


def test_dispatch_once_makes_no_pass_beside_an_active_dispatcher(system: System) -> None:
    """With another dispatcher active (the lease held), --once claims nothing, names
    it and exits 0; with none active it passes and gives the lease back."""
    system.quota.set_allowance(AgentAllowance(agent_id="coder-1"))
    system.registry.register(AgentInfo(id="coder-1", capabilities=["py"]))
    task = system.tasks.create(Task(title="t", labels=["py"]))
    assert system.registry.hold_lease(LEASE, "other-host:42", 30) == "other-host:42"
    result = system.cli("dispatch", "--once", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["dispatched"], answer["active_elsewhere"]) == ({}, "other-host:42")
    assert "dispatcher other-host:42 is active" in result.stderr
    assert system.tasks.get(task.id).status is TaskStatus.PENDING
    plain = system.cli("dispatch", "--once")
    assert plain.exit_code == 0 and plain.stdout == ""  # no summary of a pass not made
    system.registry.drop_lease(LEASE, "other-host:42")
    result = system.cli("dispatch", "--once", "--json")
    answer = json.loads(result.stdout)
    assert (answer["dispatched"], answer["active_elsewhere"]) == ({task.id: "coder-1"}, None)
    assert system.registry.hold_lease(LEASE, "next", 30) == "next"  # given back


@pytest.mark.slow
def test_dispatch_records_the_crossings_of_its_reserves(system: System) -> None:
    """dispatch's quota store records the thresholds a reserve crosses with the
    reserve (source agentic.quota), naming the task: the dispatcher's own copies add
    nothing."""
    system.quota.set_allowance(AgentAllowance(agent_id="coder-1", daily_job_limit=1))
    system.registry.register(AgentInfo(id="coder-1", capabilities=["py"]))
    task = system.tasks.create(Task(title="t", labels=["py"]))
    result = system.cli("dispatch", "--once")
    assert result.exit_code == 0, result.output
    with open_event_log(system.url) as log:
        crossings = [
            e.event
            for e in log.read()
            if e.event.type in (EventType.QUOTA_WARNING, EventType.QUOTA_EXCEEDED)
        ]
    assert [(e.type, e.source, e.agent_id, e.task_id) for e in crossings] == [
        (EventType.QUOTA_WARNING, "agentic.quota", "coder-1", task.id),
        (EventType.QUOTA_EXCEEDED, "agentic.quota", "coder-1", task.id),
    ]


def test_dispatch_once_then_agent_run_end_to_end(system: System, tmp_path: Path) -> None:
    """dispatch --once claims a task for the agent; agent run executes CMD (which
    reports its tokens in its usage file: charged) and drains; both send their
    events, signed, to the configured webhook."""
    day = datetime.now(UTC).date()  # usage is per UTC day: checked within one
    system.quota.set_allowance(AgentAllowance(agent_id="upper", daily_job_limit=10))
    task = system.tasks.create(Task(title="shout this", labels=["text"]))
    script = (
        "import os, sys; print(sys.stdin.read().upper());"
        " open(os.environ['AGENTIC_USAGE_FILE'], 'a').write("
        """'{"tokens_in": 40, "tokens_out": 2}\\n')"""
    )
    secret = "hook-secret"
    with webhook_receiver() as (hook_url, received):
        env = {
            **subprocess_env(),
            "AGENTIC_EVENTS__WEBHOOK_URL": hook_url,
            "AGENTIC_EVENTS__WEBHOOK_SECRET": secret,
        }
        agent = subprocess.Popen(
            [
                AGENTIC, "agent", "run", "--config", str(system.config), "--id", "upper",
                "--capability", "text", "--max-load", "1", "--", sys.executable, "-c", script,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        try:
            wait_for(lambda: [a.id for a in system.registry.list()] == ["upper"], timeout=30)
            once = subprocess.run(
                [AGENTIC, "dispatch", "--once", "--json", "--config", str(system.config)],
                capture_output=True,
                env=env,
                timeout=30,
                check=False,
            )
            assert once.returncode == 0, once.stderr.decode()
            assert json.loads(once.stdout)["dispatched"] == {task.id: "upper"}
            wait_for(lambda: system.tasks.get(task.id).status == TaskStatus.COMPLETED)
            result = system.tasks.get(task.id).result
            assert result is not None and result.output.strip() == "SHOUT THIS"
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
        finally:
            agent.kill()
            out, err = agent.communicate()
            print(out.decode(), err.decode())  # shown when the test fails
    assert "1 completed" in out.decode()
    if datetime.now(UTC).date() == day:
        assert system.quota.get_usage("upper").tokens_used == 42
    assert system.registry.list() == []  # deregistered on the way out
    assert all(verify(secret, delivery.headers, delivery.body) for delivery in received)
    kinds = {json.loads(delivery.body)["type"] for delivery in received}
    expected = {"task_dispatched", "task_completed", "usage_recorded", "agent_registered"}
    assert {f"io.agentic.{kind}" for kind in expected} <= kinds
    # Both processes appended the same events to the store's event log.
    with open_event_log(system.url) as log:
        logged = {e.event.id: e.event.type.value for e in log.read(0, 1000)}
    hooked = {json.loads(d.body)["id"]: json.loads(d.body)["type"] for d in received}
    assert {f"io.agentic.{kind}" for kind in logged.values()} == set(hooked.values())
    assert set(logged) == set(hooked)


@pytest.mark.slow
def test_agent_run_displaced_by_another_runner_exits_1(system: System) -> None:
    """agent run whose agent id lease another runner took cancels its running task
    without reporting or charging it, names the new holder, and exits 1."""
    system.quota.set_allowance(AgentAllowance(agent_id="twin", daily_job_limit=10))
    task = system.tasks.create(Task(title="long", labels=["x"]))
    agent = subprocess.Popen(
        [
            AGENTIC, "agent", "run", "--config", str(system.config), "--id", "twin",
            "--capability", "x", "--max-load", "1", "--", "sleep", "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )  # fmt: skip
    intruder = "other-host:4242:0123abcd"
    try:
        wait_for(lambda: [a.id for a in system.registry.list()] == ["twin"], timeout=30)
        with TaskClient(system.base_url, "") as api:
            quota = AllowanceService(system.quota)
            dispatcher = Dispatcher(system.registry, DefaultRouter(), quota, api)
            assert dispatcher.dispatch(system.tasks.get(task.id)) == "twin"
        wait_for(lambda: system.registry.get("twin").current_load == 1, timeout=15)
        # As after a registry split longer than the lease: another runner holds it.
        holder = system.registry.hold_lease("agent:twin", "probe", 0.001)
        system.registry.drop_lease("agent:twin", holder)
        assert system.registry.hold_lease("agent:twin", intruder, 600) == intruder
        assert agent.wait(20) == 1  # noticed at its next heartbeat (5 s)
    finally:
        agent.kill()
        out, err = agent.communicate()
        print(out.decode(), err.decode())  # shown when the test fails
    stderr = " ".join(err.decode().split())
    assert f"error: agent twin is now run by {intruder}" in stderr
    assert "Traceback" not in stderr
    # Not reported, not charged, not deregistered: all that is the new holder's.
    current = system.tasks.get(task.id)
    assert (current.status, current.claimed_by) == (TaskStatus.IN_PROGRESS, "twin")
    usage = system.quota.get_usage("twin")
    assert (usage.tokens_used, usage.active_jobs) == (0, 1)
    assert [a.id for a in system.registry.list()] == ["twin"]


@pytest.mark.slow
def test_status_watch_stops_on_ctrl_c(system: System) -> None:
    """status --watch SECONDS --json refreshes until SIGINT, then exits 0."""
    process = subprocess.Popen(
        [AGENTIC, "status", "--watch", "0.2", "--json", "--config", str(system.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.communicate()
    assert [json.loads(line)["tasks"]["pending"] for line in lines] == [0, 0]


@pytest.mark.slow
def test_dispatch_loop_stops_cleanly_on_sigterm(system: System) -> None:
    """dispatch logs one key=value summary line per pass and exits 0 on SIGTERM."""
    process = subprocess.Popen(
        [AGENTIC, "dispatch", "--interval", "0.2", "--config", str(system.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert process.stderr is not None
        while "dispatch pass" not in (line := process.stderr.readline().decode()):
            assert line, "dispatch exited before its first pass"
        assert 'msg="dispatch pass: dispatched=0 waiting=0 failed=0 dead_lettered=0"' in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.communicate()


@pytest.mark.slow
def test_logs_follow_stops_on_ctrl_c(system: System) -> None:
    """logs -f on a task that never ends: Ctrl-C exits 130 (stopped, not succeeded)."""
    task = system.tasks.create(Task(title="endless"))
    process = subprocess.Popen(
        [AGENTIC, "logs", task.id, "-f", "--config", str(system.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert process.stdout is not None
        assert "Status: pending" in process.stdout.readline().decode()
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 130
    finally:
        process.kill()
        process.communicate()
