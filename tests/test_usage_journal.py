"""Job usage files: tokens reported before a runner process died are still charged."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.errors import APIError, ConfigError, StoreError, TransportError
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    Priority,
    QuotaEvent,
    Task,
    TaskResult,
    TaskStatus,
)
from agentic.runner import SubprocessHandler, TaskContext
from agentic.runner._journal import (
    Decided,
    JobJournal,
    Leftover,
    UsageJournal,
    default_state_dir,
    journaled_agents,
)
from agentic.runner._recovery import Recovery
from agentic.runner._reporting import Reporter
from agentic.runner._subprocess import _UsageFile
from agentic.stores import open_allowance_store, open_registry

from .test_cli import clean_environment, run  # noqa: F401
from .test_e2e_processes import FAST, Fleet, create, fleet_on, registered, wait_until
from .test_runner import AGENT, FAST_RETRY, System, build_system, wait_for

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def system() -> Any:
    with build_system() as made:
        yield made


def claimed(job_id: str = "job-1", task_id: str = "t-1", model: str = "m") -> Task:
    """A task as claimed under ``job_id``."""
    return Task(id=task_id, title="t", job_id=job_id, model=model)


def errors() -> tuple[list[str], Any]:
    seen: list[str] = []
    return seen, lambda what, exc: seen.append(f"{what}: {exc}")


# --- the files ---
def test_a_job_that_reports_nothing_writes_no_file(tmp_path: Path) -> None:
    """No usage, no file: a no-op job costs no disk write, even when it ends."""
    journal = UsageJournal(tmp_path, AGENT)
    seen, on_error = errors()
    job = journal.job(claimed(), on_error)
    job.end((0, 0, QuotaEvent.JOB_COMPLETED, "m", "t-1"))
    job.close()
    assert not job.path.exists() and list(journal.leftovers()) == [] and seen == []


def test_usage_and_the_decided_end_are_read_back(tmp_path: Path) -> None:
    """The usage lines sum up; a decided end is settled as decided; discard removes."""
    journal = UsageJournal(tmp_path, AGENT)
    seen, on_error = errors()
    job = journal.job(claimed(), on_error)
    job.usage("m", 100, 20)
    job.usage("m2", 5, 1)
    job.end((105, 21, QuotaEvent.JOB_COMPLETED, "m", "t-1"))
    job.close()
    [left] = journal.leftovers()
    assert (left.job_id, left.task_id, left.tokens_in, left.tokens_out) == ("job-1", "t-1", 105, 21)
    assert left.settlement() == (105, 21, QuotaEvent.JOB_COMPLETED, "m", "t-1")
    journal.discard("job-1")
    assert list(journal.leftovers()) == [] and seen == []


def test_a_job_that_died_running_is_settled_as_failed_with_its_tokens(tmp_path: Path) -> None:
    """Without an end line, the settle is a failure's for the tokens recorded; a task
    with no model charges the first model its usage named."""
    journal = UsageJournal(tmp_path, AGENT)
    job = journal.job(claimed(model=""), errors()[1])
    job.usage("gpt", 30, 10)
    job.close()
    [left] = journal.leftovers()
    assert left.settlement() == (30, 10, QuotaEvent.JOB_FAILED, "gpt", "t-1")


def written_then(tmp_path: Path, tokens_in: int, tail: str) -> UsageJournal:
    """A journal whose one job reported ``tokens_in`` and then had ``tail`` appended."""
    journal = UsageJournal(tmp_path, AGENT)
    job = journal.job(claimed(), errors()[1])
    job.usage("m", tokens_in, 3)
    job.close()
    with job.path.open("a", encoding="utf-8") as file:
        file.write(tail)
    return journal


def test_a_line_cut_short_by_the_kill_is_skipped(tmp_path: Path) -> None:
    """A last line half written when the process died does not spoil the file."""
    journal = written_then(tmp_path, 7, '{"model": "m", "tokens_in": 99')
    [left] = journal.leftovers()
    assert (left.tokens_in, left.tokens_out, left.end) == (7, 3, None)


def test_an_unknown_end_is_settled_as_a_failure(tmp_path: Path) -> None:
    """An end line this version does not know is ignored, not a crash at start."""
    journal = written_then(tmp_path, 4, json.dumps({"end": "job_exploded"}) + "\n")
    [left] = journal.leftovers()
    assert left.settlement()[2] is QuotaEvent.JOB_FAILED


def test_a_file_held_by_a_live_attempt_is_no_leftover(tmp_path: Path) -> None:
    """While its attempt lives the file is locked: no other runner settles it, and a
    second writer is refused with a message instead of mixing lines."""
    journal = UsageJournal(tmp_path, AGENT)
    live = journal.job(claimed(), errors()[1])
    live.usage("m", 1, 1)
    assert list(journal.leftovers()) == []
    seen, on_error = errors()
    intruder = UsageJournal(tmp_path, AGENT).job(claimed(), on_error)
    intruder.usage("m", 500, 500)
    assert seen and "held by another live process" in seen[0]
    live.close()
    [left] = journal.leftovers()
    assert (left.tokens_in, left.tokens_out) == (1, 1)


def test_agent_and_job_ids_are_safe_file_names(tmp_path: Path) -> None:
    """Ids with slashes or dots stay inside the agent's own directory."""
    journal = UsageJournal(tmp_path, "../evil/agent")
    job = journal.job(claimed(job_id="../../x"), errors()[1])
    job.usage("m", 1, 0)
    job.close()
    assert job.path.parent == journal.directory
    assert journal.directory.parent == tmp_path / "usage"
    [left] = journal.leftovers()
    assert left.job_id == "../../x"


# --- the runner ---
def live_job(task: Task) -> JobJournal:
    """``task``'s job files, not opened: ``UsageJournal.job`` opens (and locks) a
    file that exists, which would race the live runner about to write it."""
    return JobJournal(
        UsageJournal(default_state_dir(), AGENT)._path(task.job_id), task, errors()[1]
    )


def leave_behind(system: System, task: Task, tokens: tuple[int, int], end: bool = False) -> None:
    """Write what a runner of AGENT killed while running ``task`` would have left."""
    job = UsageJournal(default_state_dir(), AGENT).job(task, errors()[1])
    job.usage("m", *tokens)
    if end:
        job.end((*tokens, QuotaEvent.JOB_COMPLETED, "m", task.id))
    job.close()


def dispatched(system: System) -> Task:
    """A task claimed for AGENT under a reservation, as a dead runner's was."""
    system.quota.set_allowance(AgentAllowance(agent_id=AGENT))
    system.registry.register(AgentInfo(id=AGENT, capabilities=["py"], max_load=1))
    return system.tasks.get(system.submit().id)


def test_a_killed_runners_tokens_are_charged_when_the_agent_starts_again(
    system: System,
) -> None:
    """A job whose runner died and whose claim has gone (lease expired) is settled as
    failed for the tokens its file recorded, when the agent's runner starts again."""
    task = dispatched(system)
    leave_behind(system, task, (80, 20))
    system.tasks.release(task.id)  # the lease ran out
    system.quota.expire(task.job_id)  # and the reservation with it
    runner = system.started(lambda task, ctx: "unused")
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 50)  # failed: half back
    wait_for(lambda: list(UsageJournal(default_state_dir(), AGENT).leftovers()) == [])
    assert runner.errors == 0


def test_a_decided_end_is_settled_as_decided(system: System) -> None:
    """A job that ended (reported) but whose settle never landed is charged as decided."""
    task = dispatched(system)
    leave_behind(system, task, (70, 30), end=True)
    done = TaskResult(success=True, output="done before the kill")
    system.tasks.complete(task.id, done, agent_id=AGENT, job_id=task.job_id)
    system.started(lambda task, ctx: "unused")
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 100)
    assert system.quota.get_usage(AGENT).active_jobs == 0


def test_a_job_still_claimed_runs_again_and_charges_both_runs(system: System) -> None:
    """A restart within the lease runs the job again under its claim: the tokens the
    killed run recorded are added to the new run's, settled once; its log says again."""
    task = dispatched(system)
    leave_behind(system, task, (100, 0))

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 40, 0)
        ctx.log("working")
        return "done"

    runner = system.started(handler)
    assert system.finished(task.id).status is TaskStatus.COMPLETED
    wait_for(lambda: runner.completed == 1)
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (140, 0)
    assert list(UsageJournal(default_state_dir(), AGENT).leftovers()) == []
    [header, _working] = system.tasks.logs(task.id).lines
    assert header.endswith(
        " again (its run before stopped unreported: an earlier run of this job here ended"
        " with its runner)]"
    )


def test_usage_reported_while_running_is_on_disk_before_the_end(system: System) -> None:
    """Each ctx.usage reaches the job's file at once, not at the attempt's end."""
    gate = threading.Event()

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 12, 3)
        gate.wait(5)
        return "done"

    runner = system.started(handler)
    task = system.tasks.get(system.submit().id)
    path = live_job(task).path
    wait_for(lambda: path.exists() and '"tokens_in": 12' in path.read_text())
    gate.set()
    wait_for(lambda: runner.completed == 1)
    wait_for(lambda: not path.exists())


def test_a_state_dir_that_cannot_be_written_is_a_config_error(
    system: System, tmp_path: Path
) -> None:
    """An explicit state_dir that is a file is refused before the agent registers."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    runner = system.runner(lambda task, ctx: "done", state_dir=blocker)
    with pytest.raises(ConfigError, match="state_dir"):
        runner.run()
    assert system.registry.list() == []


@pytest.mark.parametrize("shared", ["state", "state/usage", f"state/usage/{AGENT}"])
def test_a_state_dir_others_may_write_in_is_refused(tmp_path: Path, shared: str) -> None:
    """A state_dir, or the usage directories in it, that other users may write in (no
    sticky bit) is refused: a link put there would take the job files elsewhere; with
    the sticky bit (a shared /tmp) the state_dir itself is fine."""
    journal = UsageJournal(tmp_path / "state", AGENT)
    journal.check()
    (tmp_path / shared).chmod(0o777)
    with pytest.raises(PermissionError, match="other users may write in"):
        journal.check()
    (tmp_path / shared).chmod(0o1777)
    if shared == "state":
        journal.check()


def test_a_new_state_dir_made_under_a_group_writable_umask_is_accepted(tmp_path: Path) -> None:
    """The directories the runner makes itself under umask 002 (Ubuntu's) pass its own check."""
    old = os.umask(0o002)
    try:
        journal = UsageJournal(tmp_path / "state", AGENT)
        journal.check()
    finally:
        os.umask(old)
    for made in ("state", "state/usage", f"state/usage/{AGENT}"):
        assert (tmp_path / made).stat().st_mode & 0o077 == 0, made


@pytest.mark.parametrize("agent_id", ["..", ".", "a/../../b"])
def test_an_agent_id_cannot_take_its_files_out_of_its_directory(
    tmp_path: Path, agent_id: str
) -> None:
    """An agent id such as ".." keeps its job files in a directory of its own under
    usage/, found again by its id."""
    journal = UsageJournal(tmp_path / "state", agent_id)
    journal.check()
    assert journal.directory.resolve().parent == (tmp_path / "state" / "usage").resolve()
    assert journaled_agents(tmp_path / "state") == [agent_id]


# --- a command's usage file, beside the job's ---
def commanded(tmp_path: Path, lines: str) -> tuple[UsageJournal, JobJournal]:
    """A journal whose job's command wrote ``lines`` to its usage file, then died
    with its runner (the job's file closed, nothing copied)."""
    journal = UsageJournal(tmp_path, AGENT)
    job = journal.job(claimed(), errors()[1])
    command = job.command_file()
    assert command is not None
    with command.open("a", encoding="utf-8") as file:
        file.write(lines)
    job.close()
    return journal, job


def test_a_commands_lines_the_runner_never_read_are_charged_at_restart(tmp_path: Path) -> None:
    """The command's file beside the job's is read by recovery: its whole lines count
    (a whole last one without a newline too), a line cut by the kill and bad lines
    are skipped, without a crash."""
    lines = '{"tokens_in": 300, "tokens_out": 100}\nnot json\n{"tokens_in": -1}\n'
    journal, job = commanded(tmp_path, lines + '{"model": "m2", "tokens_in": 5}\n{"tokens_in": 7')
    assert job.command_path.name == "job-1.jsonl.command"
    [left] = journal.leftovers()
    assert (left.tokens_in, left.tokens_out, left.end) == (305, 100, None)
    assert left.settlement() == (305, 100, QuotaEvent.JOB_FAILED, "m", "t-1")


def test_a_rerun_counts_the_earlier_commands_lines_once(tmp_path: Path) -> None:
    """A resumed job counts the killed command's lines (recovered), its own command
    starts on a new line after the cut one and is read from there: a second kill
    leaves every line counted once, a decided end settles as decided."""
    journal, _ = commanded(tmp_path, '{"tokens_in": 300}\n{"tokens_in": 7')
    rerun = journal.job(claimed(), errors()[1])
    assert rerun.recovered == [("m", 300, 0)]
    ctx = TaskContext(claimed(), None)  # type: ignore[arg-type]
    ctx.attach_journal(rerun)
    command = rerun.command_file()
    assert command is not None
    usage = _UsageFile(command, claimed(), ctx, kept=True)
    with command.open("a", encoding="utf-8") as file:
        file.write('{"tokens_in": 20}\n')
    usage.charge(final=True)
    assert ctx.tokens == (320, 0)
    assert "20" not in rerun.path.read_text()  # counted from the command's file only
    rerun.close()
    [left] = journal.leftovers()
    assert (left.tokens_in, left.end) == (320, None)
    again = journal.job(claimed(), errors()[1])
    again.end((320, 0, QuotaEvent.JOB_COMPLETED, "m", "t-1"))
    again.close()
    [left] = journal.leftovers()
    assert left.settlement() == (320, 0, QuotaEvent.JOB_COMPLETED, "m", "t-1")


def test_discard_and_aside_take_the_commands_file_along(tmp_path: Path) -> None:
    """A settled job's command file is removed with it; one moved aside as too old
    goes aside with it: none is left where no restart looks."""
    journal, job = commanded(tmp_path, '{"tokens_in": 1}\n')
    journal.discard("job-1")
    assert list(journal.directory.iterdir()) == []
    journal, job = commanded(tmp_path, '{"tokens_in": 1}\n')
    decided = journal.job(claimed(), errors()[1])
    decided.end((1, 0, QuotaEvent.JOB_COMPLETED, "m", "t-1"))
    decided.close()
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(job.path, (week_ago, week_ago))
    assert journal.leftovers() == []
    names = sorted(path.name for path in journal.directory.iterdir())
    assert names == ["job-1.jsonl.command.stale", "job-1.jsonl.stale"]


def test_without_a_held_job_file_the_command_writes_in_its_task_directory(
    tmp_path: Path,
) -> None:
    """A job file another process holds gives the command no file in the state
    directory (two commands never share one): it writes where it did before."""
    journal = UsageJournal(tmp_path, AGENT)
    live = journal.job(claimed(), errors()[1])
    assert live.command_file() is not None
    seen, on_error = errors()
    assert journal.job(claimed(), on_error).command_file() is None
    assert seen and "held by another live process" in seen[0]
    live.close()


def test_a_commands_usage_is_kept_beside_the_job_file_and_not_copied(
    system: System, tmp_path: Path
) -> None:
    """With quotas on, $AGENTIC_USAGE_FILE is the job's command file in the state
    directory; its lines are charged once at the end and not copied into the job's
    file; both files go once the settle lands."""
    gate = tmp_path / "gate"
    script = (
        'echo "$AGENTIC_USAGE_FILE"; echo \'{"tokens_in": 60, "tokens_out": 40}\''
        ' >> "$AGENTIC_USAGE_FILE"; while [ ! -e "$1" ]; do sleep 0.02; done'
    )
    runner = system.started(SubprocessHandler(["sh", "-c", script, "gate", str(gate)]))
    task = system.tasks.get(system.submit().id)
    job = live_job(task)
    wait_for(lambda: job.command_path.exists() and "tokens_in" in job.command_path.read_text())
    time.sleep(0.2)  # the runner's reads every 0.05 s copy nothing
    assert "tokens_in" not in job.path.read_text()  # (the job id may hold "60")
    gate.touch()
    done = system.finished(task.id)
    assert done.result is not None and done.result.output.strip() == str(job.command_path)
    wait_for(lambda: runner.completed == 1)
    assert system.quota.get_usage(AGENT).tokens_used == 100
    wait_for(lambda: not job.path.exists() and not job.command_path.exists())


# --- real processes ---
def usage_then(seconds_file: Path) -> list[str]:
    """A command that reports 300 + 100 tokens, then waits until ``seconds_file``
    exists the first time it runs (a later run finds it and ends at once)."""
    script = (
        'echo \'{"model": "m", "tokens_in": 300, "tokens_out": 100}\' >> "$AGENTIC_USAGE_FILE";'
        ' if [ -e "$1" ]; then exit 0; fi; touch "$1"; exec sleep 600'
    )
    return ["sh", "-c", script, "usage", str(seconds_file)]


@pytest.mark.slow
def test_kill_9_mid_task_then_restart_charges_both_runs(tmp_path: Path) -> None:
    """kill -9 of `agentic agent run` while its command runs, then a restart with the
    same id inside the lease: the task runs again and completes, and the agent is
    charged the 400 tokens of each run (the first run's from its usage file)."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    with (
        fleet_on(tmp_path, url, **FAST, lease_seconds=60) as fleet,
        open_registry(url) as registry,
        TaskClient(fleet.base_url, "") as client,
    ):
        fleet.serve()
        fleet.cli("allowance", "set", "a1", "--daily-jobs", "10")
        started = tmp_path / "started"
        args = ["agent", "run", "--config", str(fleet.config), "--id", "a1"]
        args += ["--capability", "x", "--max-load", "1", "--", *usage_then(started)]
        first = fleet.spawn("first", *args)
        wait_until(lambda: registered(registry, "a1"), "a1 registered", fleet)
        task = create(client, "spend", labels=["x"], priority=Priority.HIGH)
        fleet.dispatch()
        files = default_state_dir() / "usage" / "a1"
        wait_until(
            lambda: any("300" in p.read_text() for p in files.glob("*.jsonl*")),
            "the first run's usage is on disk",
            fleet,
        )
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        fleet.spawn("second", *args)
        completed_and_charged(fleet, client, url, task.id, files, 800, "both runs charged")


@pytest.mark.slow
def test_kill_9_after_the_command_ended_reports_it_without_running_it_again(
    tmp_path: Path,
) -> None:
    """The command ends while the task API is stopped, so its report cannot land, and
    `agentic agent run` is killed (-9): the restarted agent reports the task completed
    with the recorded output, charged once, and the command ran once."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    runs, go = tmp_path / "runs", tmp_path / "go"
    script = (
        'echo run >> "$1"; echo \'{"model": "m", "tokens_in": 30}\' >> "$AGENTIC_USAGE_FILE";'
        ' while [ ! -e "$2" ]; do sleep 0.05; done; echo "the output"'
    )
    with (
        fleet_on(tmp_path, url, **FAST, lease_seconds=60) as fleet,
        open_registry(url) as registry,
        TaskClient(fleet.base_url, "") as client,
    ):
        server = fleet.serve()
        fleet.cli("allowance", "set", "a1", "--daily-jobs", "10")
        args = ["agent", "run", "--config", str(fleet.config), "--id", "a1"]
        args += ["--capability", "x", "--max-load", "1", "--", "sh", "-c", script, "cmd"]
        first = fleet.spawn("first", *args, str(runs), str(go))
        wait_until(lambda: registered(registry, "a1"), "a1 registered", fleet)
        task = create(client, "once", labels=["x"], priority=Priority.HIGH)
        fleet.dispatch()
        wait_until(runs.exists, "the command started", fleet)
        server.popen.send_signal(signal.SIGSTOP)
        try:
            go.touch()
            files = default_state_dir() / "usage" / "a1"
            wait_until(
                lambda: any(
                    '"report": "completed"' in p.read_text() for p in files.glob("*.jsonl")
                ),
                "the decided end written",
                fleet,
            )
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            server.popen.send_signal(signal.SIGCONT)
        fleet.spawn("second", *args, str(runs), str(go))
        completed_and_charged(fleet, client, url, task.id, files, 30, "charged once")
        done = client.get_task(task.id)
        assert done.result is not None and "the output" in done.result.output
        assert runs.read_text() == "run\n"


def completed_and_charged(
    fleet: Fleet, client: TaskClient, url: str, task_id: str, files: Path, tokens: int, what: str
) -> None:
    """The task completed by the restarted agent, ``tokens`` charged to a1 in all,
    no reservation left, and the usage files removed."""
    wait_until(
        lambda: client.get_task(task_id).status is TaskStatus.COMPLETED,
        "the task completed by the restarted agent",
        fleet,
        timeout=40,
    )
    with open_allowance_store(url) as quota:
        wait_until(lambda: quota.get_usage("a1").tokens_used == tokens, what, fleet)
        assert quota.get_usage("a1").active_jobs == 0
    wait_until(lambda: list(files.iterdir()) == [], "the usage files removed", fleet)


def kills_its_runner(marker: Path) -> list[str]:
    """A command that, the first time, reports 300 + 100 tokens, starts a line it
    never ends and kill -9s its runner (its guard's parent) straight away, before
    the runner's next read of its usage file; run again, it reports 20 and ends."""
    script = textwrap.dedent(
        r"""
        import os, signal, sys, time
        usage = open(os.environ["AGENTIC_USAGE_FILE"], "a")
        if os.path.exists(sys.argv[1]):
            usage.write('{"model": "m", "tokens_in": 20}\n')
            sys.exit(0)
        open(sys.argv[1], "w").close()
        usage.write('{"model": "m", "tokens_in": 300, "tokens_out": 100}\n')
        usage.write('{"model": "m", "tokens_in": 7')
        usage.flush()
        guard = open(f"/proc/{os.getppid()}/stat").read()
        os.kill(int(guard.rsplit(")", 1)[1].split()[1]), signal.SIGKILL)
        time.sleep(600)
        """
    )
    return [sys.executable, "-c", script, str(marker)]


@pytest.mark.slow
def test_usage_a_command_wrote_just_before_the_kill_is_charged_once(tmp_path: Path) -> None:
    """A command writes its usage (and half a line) and kill -9s its `agentic agent
    run` at once: the restarted runner reads the command's file in the state
    directory, runs the task again and charges 400 + 20 tokens, each line once."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    with (
        fleet_on(tmp_path, url, **FAST, lease_seconds=60) as fleet,
        open_registry(url) as registry,
        TaskClient(fleet.base_url, "") as client,
    ):
        fleet.serve()
        fleet.cli("allowance", "set", "a1", "--daily-jobs", "10")
        args = ["agent", "run", "--config", str(fleet.config), "--id", "a1"]
        args += ["--capability", "x", "--max-load", "1", "--"]
        first = fleet.spawn("first", *args, *kills_its_runner(tmp_path / "ran"))
        wait_until(lambda: registered(registry, "a1"), "a1 registered", fleet)
        task = create(client, "spend", labels=["x"], priority=Priority.HIGH)
        fleet.dispatch()
        assert first.popen.wait(30) == -signal.SIGKILL
        first.ended = True
        files = default_state_dir() / "usage" / "a1"
        [command] = files.glob("*.jsonl.command")
        assert command.read_text().endswith('"tokens_in": 7')  # no newline: cut
        fleet.spawn("second", *args, *kills_its_runner(tmp_path / "ran"))
        completed_and_charged(fleet, client, url, task.id, files, 420, "charged once")


def test_agent_run_refuses_a_state_dir_it_cannot_write(tmp_path: Path) -> None:
    """`agentic agent run --state-dir FILE` is a usage error naming state_dir."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = "sqlite:///" + (tmp_path / "a.db").as_posix().lstrip("/")
    args = ["agent", "run", "--id", "a", "--capability", "x", "--max-load", "1"]
    result = run(*args, "--store", store, "--state-dir", str(blocker), "--", "true")
    assert result.exit_code == 2, result.output
    assert "state_dir" in result.output and "writable directory" in result.output


# --- what the disk, the store or a second process may do (each found in review) ---
def test_a_resumed_job_whose_file_another_process_holds_still_runs(system: System) -> None:
    """A held file is reported and the job runs without one: opening it never blocks
    the runner (it once deadlocked, reporting the error under the runner's lock)."""
    task = dispatched(system)
    leave_behind(system, task, (100, 0))
    path = UsageJournal(default_state_dir(), AGENT).job(task, errors()[1]).path
    with path.open("r") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        runner = system.started(lambda task, ctx: "done")
        assert system.finished(task.id).status is TaskStatus.COMPLETED
        wait_for(lambda: runner.completed == 1)
    assert runner.errors >= 1


def test_a_full_disk_never_reaches_the_handler_nor_the_report(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes to a full disk (/dev/full) are reported once; the handler, the settle
    (from memory) and the report go on as without a file."""

    def on_a_full_disk(self: UsageJournal, task: Task, on_error: Any) -> JobJournal:
        return JobJournal(Path("/dev/full"), task, on_error)

    monkeypatch.setattr(UsageJournal, "job", on_a_full_disk)

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 60, 40)
        ctx.usage("m", 1, 0)
        return "done"

    runner = system.started(handler)
    task = system.finished(system.submit().id)
    assert task.status is TaskStatus.COMPLETED
    wait_for(lambda: runner.completed == 1)
    assert system.quota.get_usage(AGENT).tokens_used == 101
    assert runner.errors >= 1


def test_a_file_that_cannot_be_removed_is_reported_not_raised(tmp_path: Path) -> None:
    """discard after a settle landed reports a failed unlink instead of raising."""
    seen, on_error = errors()
    journal = UsageJournal(tmp_path, AGENT, on_error)
    (journal.directory / "job-1.jsonl").mkdir(parents=True)  # unlink refuses a directory
    journal.discard("job-1")
    assert seen and "could not be removed" in seen[0]


@pytest.mark.parametrize(
    "garbage",
    ['{"end": {}}\n', '{"end": ["job_completed"]}\n', "[" * 100_000 + "\n"],
    ids=["end a mapping", "end a list", "nested too deep"],
)
def test_garbage_in_a_file_never_stops_a_start(tmp_path: Path, garbage: str) -> None:
    """An end that is no event name counts as none; a file that cannot be parsed at
    all is moved aside and said; the other files are still read."""
    seen, on_error = errors()
    journal = written_then(tmp_path, 4, garbage)
    journal._error = on_error
    other = journal.job(claimed(job_id="job-2"), errors()[1])
    other.usage("m", 1, 0)
    other.close()
    found = {left.job_id: left for left in journal.leftovers()}
    assert "job-2" in found
    if "job-1" in found:
        assert found["job-1"].end is None and seen == []
    else:
        assert any("moved aside" in line for line in seen)
        assert (journal.directory / "job-1.jsonl.bad").exists()


def test_a_resumed_run_starts_a_new_line_after_a_cut_one(tmp_path: Path) -> None:
    """A rerun's first line is not glued to the killed run's half-written last one."""
    journal = written_then(tmp_path, 7, '{"model": "m", "tokens_in": 99')
    rerun = journal.job(claimed(), errors()[1])
    assert rerun.recovered == [("m", 7, 3)]
    rerun.usage("m", 40, 0)
    rerun.end((47, 3, QuotaEvent.JOB_COMPLETED, "m", "t-1"))
    rerun.close()
    [left] = journal.leftovers()
    assert (left.tokens_in, left.end) == (47, (47, 3, QuotaEvent.JOB_COMPLETED, "m", "t-1"))


def test_a_decided_job_older_than_the_stores_memory_is_not_settled_again(
    tmp_path: Path,
) -> None:
    """A decided end older than 6 days may have landed and been forgotten by the
    store: it is moved aside, not settled a second time."""
    seen, on_error = errors()
    journal = UsageJournal(tmp_path, AGENT, on_error)
    job = journal.job(claimed(), errors()[1])
    job.usage("m", 5, 0)
    job.end((5, 0, QuotaEvent.JOB_COMPLETED, "m", "t-1"))
    job.close()
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(job.path, (week_ago, week_ago))
    assert journal.leftovers() == []
    assert any("older than 6 days" in line for line in seen)


def test_a_settle_refused_for_good_removes_the_file(system: System) -> None:
    """A settle no retry can fix is said and its file removed, not retried at every
    start."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError("tokens beyond the exact range")

    system.quota.settle = refuse  # type: ignore[method-assign]

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 3, 0)
        return "done"

    runner = system.started(handler)
    system.finished(system.submit().id)
    wait_for(lambda: runner.completed == 1)
    assert list(UsageJournal(default_state_dir(), AGENT).leftovers()) == []


def test_a_quota_store_down_at_start_delays_no_task(system: System) -> None:
    """Leftovers whose settle fails (store down) are tried once each, then with the
    heartbeats: the agent takes new work at once and settles them once it is back."""
    down = threading.Event()
    down.set()
    real_settle = system.quota.settle

    def settle(*args: Any, **kwargs: Any) -> Any:
        if down.is_set() and kwargs.get("task_id", "").startswith("gone-"):
            raise StoreError("quota store unreachable")
        return real_settle(*args, **kwargs)

    system.quota.settle = settle  # type: ignore[method-assign]
    for i in range(3):
        gone = claimed(job_id=f"old-{i}", task_id=f"gone-{i}")
        system.tasks.create(Task(id=gone.id, title="t"))  # known, no longer claimed
        job = UsageJournal(default_state_dir(), AGENT).job(gone, errors()[1])
        job.usage("m", 10, 0)
        job.close()
    started = time.monotonic()
    runner = system.started(lambda task, ctx: "done")
    assert system.finished(system.submit().id).status is TaskStatus.COMPLETED
    assert time.monotonic() - started < 5
    down.clear()
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 15)  # 3 x 10, half back
    wait_for(lambda: list(UsageJournal(default_state_dir(), AGENT).leftovers()) == [])
    assert runner.errors >= 1


def test_a_job_whose_task_the_task_api_does_not_know_is_kept_not_settled(
    system: System,
) -> None:
    """Tasks are never deleted: a job file whose task is unknown was left by a run of
    this agent id against another store; it is kept (said once), not charged here."""
    foreign = claimed(job_id="other-store-job", task_id="other-store-task")
    job = UsageJournal(default_state_dir(), AGENT).job(foreign, errors()[1])
    job.usage("m", 100, 0)
    job.close()
    runner = system.started(lambda task, ctx: "done")
    assert system.finished(system.submit().id).status is TaskStatus.COMPLETED
    wait_for(lambda: runner.errors >= 1)
    time.sleep(0.3)  # more recovery rounds: still kept, said once
    assert system.quota.get_usage(AGENT).tokens_used == 0
    [left] = UsageJournal(default_state_dir(), AGENT).leftovers()
    assert left.job_id == "other-store-job" and runner.errors == 1


@pytest.mark.parametrize("report", ["completed", "failed"])
def test_a_decided_job_still_claimed_is_reported_as_decided_not_rerun(
    system: System, report: str
) -> None:
    """A job whose run here ended but whose report never landed (the runner died) is
    settled and reported as its end decided, with the result recorded: its handler
    does not run again, its tokens are charged once and its file goes."""
    task = dispatched(system)
    success = report == "completed"
    result = TaskResult(success=success, output="done before", error_message="" if success else "x")
    job = UsageJournal(default_state_dir(), AGENT).job(task, errors()[1])
    job.usage("m", 70, 30)
    event = QuotaEvent.JOB_COMPLETED if success else QuotaEvent.JOB_FAILED
    job.end((70, 30, event, "m", task.id), Decided(report, result))
    job.close()
    ran: list[str] = []
    runner = system.started(lambda task, ctx: ran.append(task.id))
    done = system.finished(task.id) if success else None
    wait_for(lambda: runner.completed + runner.failed == 1)
    stored = system.tasks.get(task.id)
    if success:
        assert done is not None and done.result == result
    else:
        assert (stored.status, stored.retry_count) == (TaskStatus.PENDING, 1)
        assert stored.result == result
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == (100 if success else 50))
    assert ran == [] and runner.released == 0
    wait_for(lambda: not UsageJournal(default_state_dir(), AGENT).has(task.job_id))


def test_a_decided_end_the_task_api_refuses_is_given_back_once(system: System) -> None:
    """A recorded end whose report the task API refuses for good (422) is not tried at
    every poll: the task is given back to run under a new job, its tokens charged once."""
    task = dispatched(system)
    job = UsageJournal(default_state_dir(), AGENT).job(task, errors()[1])
    job.usage("m", 70, 30)
    result = TaskResult(success=True, output="done before")
    job.end((70, 30, QuotaEvent.JOB_COMPLETED, "m", task.id), Decided("completed", result))
    job.close()
    refusals: list[str] = []

    def refused(task_id: str, *args: Any, **kwargs: Any) -> Task:
        refusals.append(task_id)
        raise APIError("HTTP 422: the result is not one this server takes", 422)

    ran: list[str] = []
    runner = system.runner(lambda task, ctx: ran.append(task.id))
    runner.client.complete_task = refused  # type: ignore[method-assign]
    runner.start()
    wait_for(lambda: runner.released == 1)
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.retry_count) == (TaskStatus.PENDING, 0)
    assert refusals == [task.id] and ran == []
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 100)
    wait_for(lambda: not UsageJournal(default_state_dir(), AGENT).has(task.job_id))


def test_a_job_without_usage_writes_its_decided_end_before_its_report(system: System) -> None:
    """A job that recorded no usage still writes its decided end, with the result,
    before its report (here failing once): a restart would report it, not rerun it."""
    task = dispatched(system)
    send = system.client.complete_task
    tries: list[int] = []

    seen: list[Any] = []
    looked = threading.Event()

    def lost(*args: Any, **kwargs: Any) -> Task:
        tries.append(1)
        if len(tries) == 1:
            # The end is on disk before the report is sent: the watcher finds it while
            # the report waits here (a loaded machine may not run it in the retry's
            # few milliseconds, after which the landed report removes the file).
            looked.wait(10)
            raise TransportError("the task API is down")
        return send(*args, **kwargs)

    system.client.complete_task = lost  # type: ignore[method-assign]

    def watch(journal: UsageJournal, job_id: str) -> None:
        seen.append(_wait_end(journal, job_id))
        looked.set()

    def handler(task: Task, ctx: TaskContext) -> str:
        journal = UsageJournal(default_state_dir(), AGENT)
        threading.Thread(target=watch, args=(journal, task.job_id)).start()
        return "the answer"

    system.started(handler)
    assert system.finished(task.id).status is TaskStatus.COMPLETED
    wait_for(lambda: seen)
    end = seen[0]
    assert end is not None
    assert (end["end"], end["report"], end["reason"]) == ("job_completed", "completed", "")
    assert TaskResult.model_validate(end["result"]).output == "the answer"


def _wait_end(journal: UsageJournal, job_id: str) -> dict[str, Any] | None:
    """The end line the job's file holds once it holds one (None after 10 s)."""
    path = journal.directory / f"{quote(job_id, safe='')}.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():
            ends = [e for e in map(json.loads, path.read_text().splitlines()) if "end" in e]
            if ends:
                return dict(ends[0])
        time.sleep(0.005)
    return None


def test_a_decided_job_still_claimed_is_given_back_not_rerun(system: System) -> None:
    """A job whose run here ended but whose report never landed, recorded by a version
    that kept no result, is settled as decided and its task given back (pending, for
    a new job id), not run again under a job id whose settle would be a duplicate."""
    task = dispatched(system)
    leave_behind(system, task, (70, 30), end=True)
    ran: list[str] = []
    system.started(lambda task, ctx: ran.append(task.id))
    wait_for(lambda: system.tasks.get(task.id).status is TaskStatus.PENDING)
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 100)
    assert ran == [] and system.tasks.get(task.id).retry_count == 0


# --- re-reading the files beside the settle rounds ---
def recovery_of(system: System, leftovers: int) -> tuple[Recovery, list[str]]:
    """A Recovery of AGENT over ``leftovers`` job files whose tasks are no longer
    claimed (each settled at its round), and the job ids of each settle call made."""
    settled: list[str] = []
    real_settle = system.quota.settle

    def settle(job_id: str, *args: Any, **kwargs: Any) -> Any:
        settled.append(job_id)
        return real_settle(job_id, *args, **kwargs)

    system.quota.settle = settle  # type: ignore[method-assign]
    for i in range(leftovers):
        gone = claimed(job_id=f"old-{i}", task_id=f"gone-{i}")
        system.tasks.create(Task(id=gone.id, title="t"))  # known, no longer claimed
        job = UsageJournal(default_state_dir(), AGENT).job(gone, errors()[1])
        job.usage("m", 10, 0)
        job.close()
    journal = UsageJournal(default_state_dir(), AGENT)
    allowance = AllowanceService(system.quota)
    reporter = Reporter(
        AGENT, system.client, allowance, FAST_RETRY, time.sleep, errors()[1], journal
    )
    return Recovery(journal, AGENT, system.client, reporter, errors()[1]), settled


def test_a_job_settled_while_the_files_are_listed_is_not_put_back(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that settles a job (and removes its file) between a re-read's listing
    and its update leaves it settled: the re-read does not put it back to settle again."""
    recovery, settled = recovery_of(system, 1)
    recovery.find()
    listing = recovery.journal.leftovers

    def round_after_listing(tidy: bool = True, held: list[str] | None = None) -> list[Leftover]:
        found = listing(tidy, held)
        recovery.settle_round(set)  # settles old-0 and removes its file
        return found

    monkeypatch.setattr(recovery.journal, "leftovers", round_after_listing)
    recovery.find()
    assert not recovery.pending
    recovery.settle_round(set)
    assert settled == ["old-0"]


def test_a_job_being_settled_is_not_listed(system: System) -> None:
    """A re-read of the files while a round settles a job does not see that job (its
    file is held until the settle lands and removes it), so it is settled once."""
    recovery, settled = recovery_of(system, 1)
    recovery.find()
    real_settle = system.quota.settle

    def settle_then_read_again(*args: Any, **kwargs: Any) -> Any:
        recovery.find()  # as a lapse's end or an attempt's end does, mid-round
        return real_settle(*args, **kwargs)

    system.quota.settle = settle_then_read_again  # type: ignore[method-assign]
    recovery.settle_round(set)
    assert not recovery.pending
    recovery.settle_round(set)
    assert settled == ["old-0"]


def test_a_job_put_back_while_the_files_are_listed_stays(system: System) -> None:
    """A job taken and put back (a give-back that did not land) while a re-read lists
    the files stays to settle, even when its file was held from that listing."""
    recovery, settled = recovery_of(system, 1)
    recovery.find()
    listing = recovery.journal.leftovers

    def give_back_failing_meanwhile(
        tidy: bool = True, held: list[str] | None = None
    ) -> list[Leftover]:
        left = recovery.take("old-0")
        assert left is not None
        with recovery.journal.held("old-0"):
            found = listing(tidy, held)
        recovery.keep(left)
        return found

    recovery.journal.leftovers = give_back_failing_meanwhile  # type: ignore[method-assign]
    recovery.find()
    assert recovery.pending
    recovery.settle_round(set)
    assert settled == ["old-0"] and not recovery.pending


def test_re_reads_beside_settle_rounds_settle_each_job_once(system: System) -> None:
    """Threads re-reading the files (at random moments) while rounds settle them:
    each job is settled exactly once, and none is left."""
    recovery, settled = recovery_of(system, 20)
    recovery.find()
    real_settle = system.quota.settle

    def slow_settle(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.01)  # a store's round trip: re-reads run meanwhile
        return real_settle(*args, **kwargs)

    system.quota.settle = slow_settle  # type: ignore[method-assign]
    stop = threading.Event()

    def read_again(seed: int) -> None:
        pause = random.Random(seed)
        while not stop.wait(pause.uniform(0, 0.02)):
            recovery.find()

    readers = [threading.Thread(target=read_again, args=(seed,)) for seed in range(3)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # a stale job put back would be settled again
            recovery.settle_round(set)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    recovery.settle_round(set)  # no re-read first: each listing kept every job
    assert sorted(settled) == sorted(f"old-{i}" for i in range(20))
    assert not recovery.pending


def test_a_job_whose_file_a_listing_holds_at_its_round_is_settled_next_round(
    system: System,
) -> None:
    """A round that finds a job's file held by a listing (a re-read in another thread
    or process) puts the job back and settles it at the next round, not never."""
    recovery, settled = recovery_of(system, 1)
    recovery.find()
    path = recovery.journal.directory / "old-0.jsonl"
    with path.open("r", encoding="utf-8") as listing:  # as a listing reads it
        fcntl.flock(listing, fcntl.LOCK_EX | fcntl.LOCK_NB)
        recovery.settle_round(set)
    assert settled == [] and recovery.pending
    recovery.settle_round(set)
    assert settled == ["old-0"] and not recovery.pending


def test_a_rerun_takes_its_file_from_a_listing_reading_it(tmp_path: Path) -> None:
    """A new run of a job whose earlier run left its file takes that file even while a
    listing (a re-read of the files, as a lapse's end starts) holds it for a moment:
    no "held by another live process" error, and its usage goes into the file."""
    journal = UsageJournal(tmp_path, AGENT)
    earlier = journal.job(claimed(), errors()[1])
    earlier.usage("m", 5, 5)
    earlier.close()
    listing = earlier.path.open("r", encoding="utf-8")
    fcntl.flock(listing, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.1, listing.close).start()  # the listing has read it
    seen, on_error = errors()
    rerun = journal.job(claimed(), on_error)
    rerun.usage("m", 1, 1)
    rerun.close()
    assert seen == []
    [left] = journal.leftovers()
    assert (left.tokens_in, left.tokens_out) == (6, 6)


def test_a_job_whose_file_another_listing_holds_stays_found(system: System) -> None:
    """A re-read of the files that meets a leftover's file held by another listing
    (two re-reads at once, as a lapse's end and a cancelled run's end start) keeps
    the job to settle, not drops it until the next re-read."""
    recovery, settled = recovery_of(system, 1)
    recovery.find()
    path = recovery.journal.directory / "old-0.jsonl"
    with path.open("r", encoding="utf-8") as listing:  # the other listing reads it
        fcntl.flock(listing, fcntl.LOCK_EX | fcntl.LOCK_NB)
        recovery.find()
    assert recovery.pending
    recovery.settle_round(set)
    assert settled == ["old-0"] and not recovery.pending
