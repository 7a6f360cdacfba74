"""Handlers and TaskContext: SubprocessHandler, result conversion, logs and usage."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from agentic.client import TaskClient
from agentic.errors import ConfigError, TransportError
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.runner import (
    AgentRunner,
    InfrastructureError,
    SubprocessHandler,
    TaskCancelled,
    TaskContext,
)
from agentic.runner._context import call_handler
from agentic.runner._subprocess import _UsageFile
from agentic.stores.base import RunSeen
from agentic.stores.memory import MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server

TASK = Task(id="t1", title="Write hello", description="Create hello.txt")


class RecordingClient(TaskClient):
    """Keeps appended log lines and updates instead of sending them."""

    def __init__(self, fail_appends: int = 0) -> None:
        super().__init__("http://127.0.0.1:9", token="")
        self.lines: list[str] = []
        self.updates: list[TaskUpdate] = []
        self.fail_appends = fail_appends

    def append_logs(self, task_id: str, lines: Iterable[str]) -> int:
        if self.fail_appends:
            self.fail_appends -= 1
            raise TransportError("down")
        self.lines.extend(lines)
        return len(self.lines)

    def update_task(
        self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None
    ) -> Task:
        self.updates.append(update)
        return TASK


def context(client: RecordingClient | None = None) -> TaskContext:
    """A context on TASK whose client records instead of sending."""
    return TaskContext(TASK, client or RecordingClient())


def logged(ctx: TaskContext) -> list[str]:
    """Flush ``ctx`` into a fresh recording client; the lines it sent after the
    attempt's first line (checked to be there)."""
    client = RecordingClient()
    ctx._client = client
    assert ctx.flush_logs()
    assert client.lines[0].startswith("[agentic: ") and " runs" in client.lines[0], client.lines
    return client.lines[1:]


def gone(pid: int) -> bool:
    """True when the process no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def sh(script: str) -> list[str]:
    """argv running ``script`` with sh."""
    return ["sh", "-c", script]


# --- SubprocessHandler ---


def test_stdin_mode_passes_the_task_and_captures_stdout() -> None:
    """The task's title and description arrive on stdin; stdout is the output and log."""
    ctx = context()
    result = SubprocessHandler(["cat"])(TASK, ctx)
    assert result.success
    assert result.output == "Write hello\n\nCreate hello.txt\n"
    assert logged(ctx) == ["Write hello", "", "Create hello.txt"]


def test_the_command_reports_usage_through_its_usage_file() -> None:
    """Lines appended to $AGENTIC_USAGE_FILE are charged to the context (model
    defaulting to the task's), even when the command fails."""
    ctx = context()
    task = TASK.model_copy(update={"model": "m-default"})
    script = (
        """echo '{"model": "m1", "tokens_in": 1200, "tokens_out": 300}' >> "$AGENTIC_USAGE_FILE";"""
        """ echo '{"tokens_in": 5}' >> "$AGENTIC_USAGE_FILE"; exit 4"""
    )
    result = SubprocessHandler(sh(script))(task, ctx)
    assert not result.success
    assert ctx.tokens == (1205, 300)
    assert sorted(ctx.models) == ["m-default", "m1"]


def test_bad_usage_lines_are_said_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A usage line that is not a JSON object with counts >= 0 is said in the task's
    log and in the runner's (its tokens go uncounted) and skipped; the good ones
    still count."""
    ctx = context()
    script = (
        """printf '%s\\n' 'not json' '[1]' '{"tokens_in": -3}' '{"model": 7}'"""
        """ '{"tokens_out": 9}' >> "$AGENTIC_USAGE_FILE" """
    )
    with caplog.at_level(logging.WARNING, logger="agentic.runner"):
        result = SubprocessHandler(sh(script))(TASK, ctx)
    assert caplog.text.count("AGENTIC_USAGE_FILE line") == 4
    assert "line 1 ignored (its tokens are not counted): not JSON" in caplog.text
    assert result.success
    assert ctx.tokens == (0, 9)
    said = logged(ctx)
    assert [line.split(" ignored: ")[0] for line in said] == [
        f"[agentic: AGENTIC_USAGE_FILE line {n}" for n in (1, 2, 3, 4)
    ]
    assert "not JSON" in said[0] and "not a JSON object" in said[1]
    assert "tokens_in must be an integer >= 0" in said[2] and "model must be" in said[3]


def test_file_mode_with_json_format() -> None:
    """In file mode {file} becomes the path of a temporary file holding the task."""
    handler = SubprocessHandler(["cat", "{file}"], input="file", format="json")
    result = handler(TASK, context())
    assert result.success
    assert json.loads(result.output)["title"] == "Write hello"


def test_nonzero_exit_fails_with_code_and_stderr_tail() -> None:
    """A non-zero exit is a failure naming the code and ending with stderr."""
    ctx = context()
    result = SubprocessHandler(sh("echo out; echo bad thing >&2; exit 3"))(TASK, ctx)
    assert not result.success
    assert result.error_message == "sh exited with code 3: bad thing"
    assert result.output == "out\n"
    # Two pipes read by two threads: the order across them is not defined.
    assert sorted(logged(ctx)) == ["[stderr] bad thing", "out"]


def test_environment_and_workdir() -> None:
    """env is added to the inherited environment; the task id is in AGENTIC_TASK_ID."""
    handler = SubprocessHandler(
        sh('echo "$GREETING $AGENTIC_TASK_ID $PWD"'), env={"GREETING": "hi"}
    )
    ctx = context()
    ctx.workdir = Path("/")
    assert handler(TASK, ctx).output == "hi t1 /\n"


def test_the_command_gets_none_of_the_runners_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AGENTIC_* variables holding a token, the webhook secret or a URL's password
    are not passed to the command (one it prints would reach the task log); the others
    are, and env may give a secret back."""
    for name, value in {
        "AGENTIC_TOKEN": "admin-xyzzy",
        "AGENTIC_SERVER__AGENT_TOKENS": "agent-xyzzy=a1",
        "AGENTIC_EVENTS__WEBHOOK_SECRET": "whsec_xyzzy",
        "AGENTIC_STORE_URL": "redis://:redis-xyzzy@db:6379/0",
        "AGENTIC_REGISTRY_URL": "redis://db:6379/1",
        "AGENTIC_BASE_URL": "http://127.0.0.1:9",
    }.items():
        monkeypatch.setenv(name, value)
    handler = SubprocessHandler(["env"], env={"AGENTIC_EVENTS__WEBHOOK_SECRET": "given"})
    shown = handler(TASK, context()).output
    assert "xyzzy" not in shown
    assert "AGENTIC_EVENTS__WEBHOOK_SECRET=given" in shown
    assert "AGENTIC_REGISTRY_URL=redis://db:6379/1" in shown and "AGENTIC_BASE_URL=" in shown


def test_a_full_log_drops_the_lines_to_come() -> None:
    """Once the task API says the task's log is full (409 log_full), the context drops
    the lines it could not send and those logged after, and sends nothing more."""
    store = MemoryTaskStore()
    task = store.claim(store.create(Task(title="chatty")).id, "a1", 60)
    with (
        running_server(store, requeue_interval=None, max_log_lines=3) as url,
        TaskClient(url, "", retries=0) as client,
    ):
        ctx = TaskContext(task, client)
        ctx.log("one\ntwo")
        assert ctx.flush_logs()  # the attempt's header and 2 lines: 3
        sent = store.logs(task.id).lines
        assert sent[1:] == ["one", "two"]
        ctx.log("three\nfour")
        assert ctx.flush_logs()  # refused: dropped, not kept to send again
        ctx.log("later")
        assert ctx.flush_logs()
        assert store.logs(task.id).lines == sent


def test_output_keeps_the_last_characters() -> None:
    """Only the last output_limit characters of stdout are kept as output."""
    handler = SubprocessHandler(sh("seq 1 1000"), output_limit=20)
    output = handler(TASK, context()).output
    assert output.endswith("999\n1000\n") and len(output) <= 20


def test_timeout_kills_the_process_group() -> None:
    """On timeout the whole group dies, including a background grandchild."""
    handler = SubprocessHandler(sh("sleep 30 & echo $!; wait"), timeout=0.3, kill_grace=1)
    started = time.monotonic()
    result = handler(TASK, context())
    assert time.monotonic() - started < 10  # not the 30 s sleep
    assert not result.success and result.error_message.startswith("timed out after 0.3 s")
    pid = int(result.output)
    wait_until(lambda: gone(pid))


def test_cancellation_kills_the_process_and_raises() -> None:
    """Cancelling the context ends the process group and raises TaskCancelled."""
    ctx = context()
    threading.Timer(0.2, ctx.cancel, ("shutting down",)).start()
    with pytest.raises(TaskCancelled, match="shutting down"):
        SubprocessHandler(["sleep", "30"], kill_grace=1)(TASK, ctx)


def test_process_ignoring_sigterm_gets_sigkill() -> None:
    """A process that traps SIGTERM is killed after kill_grace."""
    script = "trap '' TERM; sleep 30"
    handler = SubprocessHandler(sh(script), timeout=0.2, kill_grace=0.2)
    started = time.monotonic()
    result = handler(TASK, context())
    assert not result.success
    assert time.monotonic() - started < 10  # not the 30 s sleep


def test_leftover_background_process_ends_with_the_task() -> None:
    """A child left running after a normal exit is ended; the handler does not hang."""
    started = time.monotonic()
    result = SubprocessHandler(sh("sleep 30 & echo $!"), kill_grace=1)(TASK, context())
    assert result.success and time.monotonic() - started < 10  # not the 30 s sleep
    wait_until(lambda: gone(int(result.output)))


# What runs in the agent process that the next test kills: the handler on a command
# that writes its own pid and a grandchild's to the file named by argv[1], then runs
# the shell code of argv[2].
_DOOMED_AGENT = """
import sys
from agentic.models import Task
from agentic.runner import SubprocessHandler, TaskContext
from tests.test_handlers import RecordingClient
script = 'sleep 60 & echo $$ $! > "$0.tmp"; mv "$0.tmp" "$0"; ' + sys.argv[2]
task = Task(id="t1", title="t")
SubprocessHandler(["sh", "-c", script, sys.argv[1]], kill_grace=1)(
    task, TaskContext(task, RecordingClient())
)
"""


@pytest.mark.parametrize(
    "then",
    ["wait", "while true; do echo tick; sleep 0.05; done"],
    ids=["quiet", "writing (dies of SIGPIPE with the agent)"],
)
def test_command_ends_when_its_agent_is_killed(tmp_path: Path, then: str) -> None:
    """kill -9 of the agent process ends the task's command and its descendants."""
    pids = tmp_path / "pids"
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-c", _DOOMED_AGENT, str(pids), then]
    agent = subprocess.Popen(argv, cwd=root)
    try:
        wait_until(pids.exists, timeout=20)
        command, grandchild = (int(pid) for pid in pids.read_text().split())
        assert not gone(command) and not gone(grandchild)
        agent.kill()
        agent.wait(10)
        wait_until(lambda: gone(command) and gone(grandchild))
    finally:
        agent.kill()
        agent.wait()


def test_command_signal_reaches_the_agent_through_the_guard() -> None:
    """A command killed by a signal is reported as killed by that signal."""
    result = SubprocessHandler(sh("kill -9 $$"))(TASK, context())
    assert result.error_message == "sh was killed by signal 9"


def test_missing_binary_is_an_infrastructure_error() -> None:
    """A command that cannot start is the agent's problem, not the task's."""
    with pytest.raises(InfrastructureError, match="cannot start") as raised:
        SubprocessHandler(["/nonexistent/agent"])(TASK, context())
    assert raised.value.before_work is True  # nothing ran: the job is not counted
    with pytest.raises(InfrastructureError, match="not found or not executable"):
        SubprocessHandler(["no-such-agent-binary", "-p"])(TASK, context())


def test_check_refuses_a_command_that_cannot_start(tmp_path: Path) -> None:
    """check() (what agent run calls before registering) raises ConfigError for a
    missing or non-executable command, found on PATH or relative to the workdir."""
    for argv in (["/nonexistent/agent"], ["no-such-agent-binary"], ["./tool"]):
        with pytest.raises(ConfigError, match=r"not found or not executable.*give a program"):
            SubprocessHandler(argv).check(tmp_path)
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match=r"'\./tool': not found or not executable"):
        SubprocessHandler(["./tool"]).check(tmp_path)  # there, but not executable
    tool.chmod(0o755)
    SubprocessHandler(["./tool"]).check(tmp_path)
    SubprocessHandler(["sh", "-c", "true"]).check()


def test_bad_arguments_are_refused() -> None:
    """A shell string, file mode without {file}, or an unknown format are ConfigErrors."""
    with pytest.raises(ConfigError):
        SubprocessHandler("claude -p")
    with pytest.raises(ConfigError, match="file"):
        SubprocessHandler(["cat"], input="file")
    with pytest.raises(ConfigError):
        SubprocessHandler(["cat"], format="yaml")  # type: ignore[arg-type]


def test_subprocess_handler_under_a_runner_streams_logs() -> None:
    """Under a runner, the command's lines reach the server's log and the task completes."""
    store, registry = MemoryTaskStore(), MemoryRegistry()
    script = f"{sys.executable} -c \"import sys; print(sys.stdin.read().upper(), end='')\""
    with running_server(store, requeue_interval=None) as url, TaskClient(url, "") as client:
        runner = AgentRunner(
            "a1", client, registry, SubprocessHandler(sh(script)),
            heartbeat_interval=0.1, poll_interval=0.05, log_flush_interval=0.05,
        )  # fmt: skip
        runner.start()
        try:
            task = store.create(Task(title="shout", description="please"))
            wait_until(registry.list)
            client.claim_task(task.id, agent_id="a1")
            wait_until(lambda: store.get(task.id).status == TaskStatus.COMPLETED)
        finally:
            runner.stop()
    assert store.logs(task.id).lines[1:] == ["SHOUT", "", "PLEASE"]
    stored = store.get(task.id)
    assert stored.result is not None and stored.result.output == "SHOUT\n\nPLEASE\n"


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it is truthy, or fail the test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.01)


# --- calling handlers ---


def test_return_values_become_results() -> None:
    """None and str mean success; anything else is a TypeError."""
    assert call_handler(lambda t, c: None, TASK, context()).success
    assert call_handler(lambda t, c: "x", TASK, context()).output == "x"
    with pytest.raises(TypeError, match="int"):
        call_handler(lambda t, c: 3, TASK, context())  # type: ignore[arg-type, return-value]


def test_async_handler_cancelled_before_it_starts() -> None:
    """An already cancelled context cancels a coroutine handler at its first await."""

    async def handler(task: Task, ctx: TaskContext) -> str:
        import asyncio

        await asyncio.sleep(5)
        return "late"

    ctx = context()
    ctx.cancel("stop")
    with pytest.raises(TaskCancelled, match="stop"):
        call_handler(handler, TASK, ctx)


# --- TaskContext ---


def test_log_splits_lines_and_cuts_long_ones() -> None:
    """Multi-line strings become several lines; a huge line is cut."""
    ctx = context()
    ctx.log("a\nb")
    ctx.log("x" * 20_000)
    lines = logged(ctx)
    assert lines[:2] == ["a", "b"]
    assert lines[2].endswith("[cut]") and len(lines[2]) < 17_000


def test_log_buffer_is_bounded_and_says_so() -> None:
    """Past the bound the oldest lines are dropped and the log says how many."""
    ctx = TaskContext(TASK, RecordingClient(), max_buffered_lines=3)
    for i in range(5):
        ctx.log(str(i))
    assert logged(ctx) == ["[agentic: 2 log lines dropped]", "2", "3", "4"]


def test_each_attempt_that_logs_starts_with_a_line_naming_it() -> None:
    """The first flush of an attempt that logged starts with its agent, job and the
    failures before it; later flushes add no header; a silent attempt sends nothing."""
    retried = TASK.model_copy(update={"retry_count": 2, "claimed_by": "coder-1", "job_id": "j9"})
    client = RecordingClient()
    ctx = TaskContext(retried, client)
    assert ctx.flush_logs() and client.lines == []
    ctx.log("one")
    ctx.flush_logs()
    ctx.log("two")
    ctx.flush_logs()
    assert client.lines == ["[agentic: coder-1 runs job j9, after 2 failed]", "one", "two"]


def test_the_header_names_a_rerun_and_a_job_run_again() -> None:
    """An operator's re-run and a job run again after a run that stopped unreported say so."""
    again = TASK.model_copy(
        update={"retry_count": 1, "reruns": 2, "claimed_by": "coder-1", "job_id": "j9"}
    )
    client = RecordingClient()
    ctx = TaskContext(again, client, again="the agent id lease lapsed")
    ctx.log("one")
    ctx.flush_logs()
    assert client.lines == [
        "[agentic: coder-1 runs job j9 again (its run before stopped unreported: the agent"
        " id lease lapsed), after 1 failed, re-run 2 by an operator]",
        "one",
    ]


def test_failed_flush_keeps_lines_in_order() -> None:
    """A flush that fails keeps its lines for the next one, before newer lines."""
    client = RecordingClient(fail_appends=1)
    errors: list[str] = []
    ctx = TaskContext(TASK, client, on_error=lambda what, exc: errors.append(what))
    ctx.log("one")
    assert not ctx.flush_logs()
    ctx.log("two")
    assert ctx.flush_logs()
    assert client.lines == ["[agentic: ? runs]", "one", "two"]
    assert errors == ["task t1: log flush failed"]


def test_progress_is_clamped_and_usage_adds_up() -> None:
    """progress is clamped to 0-100; usage sums tokens over calls and models."""
    client = RecordingClient()
    ctx = context(client)
    assert ctx.progress(150, "almost")
    assert (client.updates[0].progress, client.updates[0].notes) == (100, "almost")
    ctx.usage("m1", 10, 5)
    ctx.usage("m2", 1, 1)
    assert ctx.tokens == (11, 6)
    assert ctx.models == ["m1", "m2"]
    with pytest.raises(ConfigError):
        ctx.usage("m1", -1, 0)


def test_a_task_that_is_not_unicode_fails_before_the_command_starts(tmp_path: Path) -> None:
    """A lone surrogate in the task is the handler's error, raised before the command runs."""
    marker = tmp_path / "ran"
    task = Task(id="t1", title="fix", description="see \ud800 log")
    for handler in (
        SubprocessHandler(["sh", "-c", f"touch {marker}"]),
        SubprocessHandler(["sh", "-c", f"touch {marker}"], format="json"),
    ):
        with pytest.raises(ValueError, match="not valid Unicode"):
            handler(task, TaskContext(task, RecordingClient()))
    assert not marker.exists()


def test_usage_after_the_settle_is_reported_as_an_error() -> None:
    """Tokens reported once the runner read the totals are not charged, and said so."""
    errors: list[str] = []
    ctx = TaskContext(TASK, RecordingClient(), on_error=lambda what, exc: errors.append(str(exc)))
    ctx.usage("m", 10, 5)
    assert ctx.settle_tokens() == (10, 5)
    ctx.usage("m", 7, 0)
    assert ctx.tokens == (10, 5)
    assert errors == ["7 + 0 tokens on 'm' reported after the job was settled: not charged"]


def test_the_usage_file_is_charged_as_it_grows_each_line_once(tmp_path: Path) -> None:
    """Complete lines are charged once each; an unfinished one waits for the last read."""
    ctx = TaskContext(TASK, RecordingClient())
    path = tmp_path / "usage.jsonl"
    usage = _UsageFile(path, TASK, ctx)
    usage.charge(final=False)  # no file yet: nothing to charge
    path.write_text('{"model": "m", "tokens_in": 10}\n{"model": "m", "tok')
    usage.charge(final=False)
    assert ctx.tokens == (10, 0)
    with path.open("a") as file:
        file.write('ens_in": 5}')
    usage.charge(final=True)
    usage.charge(final=True)
    assert ctx.tokens == (15, 0)


def test_a_line_without_end_is_read_in_chunks_not_held_whole() -> None:
    """200 MB with no newline costs bounded memory: logged cut, its tail kept."""
    script = (
        "import sys; w = sys.stdout.buffer\n"
        "for _ in range(200): w.write(b'x' * 2**20)\n"
        "w.write(b'END\\nlast line\\n')"
    )
    ctx = context()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = SubprocessHandler([sys.executable, "-c", script], output_limit=1000)(TASK, ctx)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.success and result.output.endswith("xEND\nlast line\n")
    assert len(result.output) <= 1000
    assert grown_mib < 100, f"{grown_mib:.0f} MiB more at peak"
    lines = logged(ctx)
    assert lines[0].endswith(" [cut]") and len(lines[0]) < 17_000
    assert lines[1:] == ["last line"]


@pytest.mark.parametrize(
    "content", ["#!/no/such/interpreter\necho hi\n", "\x7fELF not really a program"]
)
def test_a_command_the_machine_cannot_run_is_an_agent_error(tmp_path: Path, content: str) -> None:
    """An executable the system cannot start (a bad #! line, the wrong format) is an
    InfrastructureError raised before the work, not the task's failure."""
    program = tmp_path / "agent-cli"
    program.write_text(content)
    program.chmod(0o755)
    with pytest.raises(InfrastructureError, match="cannot start") as raised:
        SubprocessHandler([str(program)])(TASK, context())
    assert raised.value.before_work


def test_characters_split_between_chunks_stay_whole() -> None:
    """A long line of 3-byte characters read in chunks keeps every character."""
    script = "import sys; sys.stdout.write('\\u4e2d' * 100_000); sys.stdout.flush()"
    ctx = context()
    result = SubprocessHandler([sys.executable, "-c", script], output_limit=200_000)(TASK, ctx)
    assert result.success and result.output == "\u4e2d" * 100_000


def test_a_look_alike_task_directory_does_not_stop_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task directory whose lock is a FIFO (what another user of a shared /tmp could
    leave) is left alone, and the first task still runs: the sweep does not wait on
    it; a look-alike that is a link to a directory is left alone too."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    trap = tmp_path / "agentic-task-trap"
    trap.mkdir()
    os.mkfifo(trap / ".agentic-lock")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".agentic-lock").touch()
    (tmp_path / "agentic-task-link").symlink_to(elsewhere)
    ran: list[TaskResult] = []
    worker = threading.Thread(
        target=lambda: ran.append(SubprocessHandler(["true"])(TASK, context())), daemon=True
    )
    worker.start()
    worker.join(10)
    if worker.is_alive():  # let the open waiting on the FIFO go before failing
        os.close(os.open(trap / ".agentic-lock", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
    assert ran and ran[0].success
    assert (trap / ".agentic-lock").exists() and (elsewhere / ".agentic-lock").exists()


def test_task_directories_of_a_killed_agent_are_removed_by_the_next_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task directory whose lock nobody holds (its agent was killed) is removed when
    a handler starts its first task; a live task's (locked) and one without a lock
    file are left alone; the task's own directory is gone when it ends."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, live, bare = (tmp_path / f"agentic-task-{name}" for name in ("dead", "live", "bare"))
    for path in (dead, live, bare):
        path.mkdir()
    (dead / ".agentic-lock").touch()
    (dead / "usage.jsonl").write_text("{}\n")
    with (live / ".agentic-lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = SubprocessHandler(sh('echo "$AGENTIC_USAGE_FILE"'))(TASK, context())
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, bare.name])
    own = Path(result.output.strip()).parent
    assert own.parent == tmp_path and own.name.startswith("agentic-task-")
