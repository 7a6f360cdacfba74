"""``agentic admin``: prune-functions (other versions' Redis Functions pruned, on a real
Redis) and settle-usage (the usage files of agents no runner runs settled)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from agentic.models import AgentAllowance, AgentInfo, QuotaEvent, Task, TaskResult, TaskStatus
from agentic.runner._journal import Decided, UsageJournal
from agentic.stores import open_allowance_store
from agentic.stores._holders import new_lease_holder

from .conftest import RedisServer, free_port
from .test_cli import System, clean_environment, no_traceback, run, system, write_config
from .test_redis_functions import libraries, stale_library
from .test_runner_identity import dead_holder

__all__ = ["clean_environment", "system"]  # fixtures, used by name

PRUNE = ["admin", "prune-functions"]


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's redis-server."""
    with closing(redis.Redis(port=redis_server.port)) as client:
        yield client


def test_prune_deletes_other_versions_and_says_what_it_kept(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """prune-functions deletes another version's library, prints each library kept and
    deleted, warns that a running version reloads its own; a store works after."""
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    with closing(open_allowance_store(url)) as quota:
        quota.set_allowance(AgentAllowance(agent_id="a"))
        quota.reserve("a", "", 1, "j1")  # loads this version's quota library
        stale = stale_library(admin)
        result = run(*PRUNE, "--store", url)
        assert result.exit_code == 0, result.output
        assert f"deleted {stale}" in result.stdout.splitlines()
        assert any(line.startswith("kept agentic_") for line in result.stdout.splitlines())
        assert "loads its libraries again at its next call" in " ".join(result.stderr.split())
        assert stale not in libraries(admin)
        assert quota.reserve("a", "", 1, "j2").job_id == "j2"

    again = run(*PRUNE, "--store", url)
    assert again.exit_code == 0
    assert again.stdout.splitlines()[-1].endswith(" kept, 0 deleted")
    assert again.stderr == ""  # nothing deleted: nothing to warn of


def test_dry_run_json_lists_what_it_would_delete(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """--dry-run --json lists the library it would delete and leaves it loaded."""
    stale = stale_library(admin)
    try:
        result = run(*PRUNE, "--store", redis_server.url, "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["deleted"] == [stale] and data["dry_run"] is True
        assert stale in libraries(admin)
    finally:
        admin.function_delete(stale)


@pytest.mark.parametrize("url", ["sqlite:///agentic.db", "memory://"])
def test_a_store_other_than_redis_is_a_usage_error(url: str) -> None:
    """A store URL that is not Redis exits 2 saying a redis:// URL is needed."""
    result = run(*PRUNE, "--store", url)
    assert result.exit_code == 2
    assert "give a redis:// or rediss:// URL" in " ".join(result.stderr.split())
    no_traceback(result)


def test_a_user_refused_function_exits_1(redis_server: RedisServer, admin: redis.Redis) -> None:
    """A Redis user whose ACL refuses FUNCTION gets exit 1 and what it needs."""
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], commands=["+@all", "-function"])
    try:
        result = run(*PRUNE, "--store", f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0")
    finally:
        admin.acl_deluser(user)
    assert result.exit_code == 1
    assert "may not manage functions" in " ".join(result.stderr.split())
    no_traceback(result)


# --- settle-usage: the job usage files of agents no runner runs ---
SETTLE = ["admin", "settle-usage"]


def left_by_a_killed_runner(system: System, state: Path) -> tuple[Task, Task]:
    """Files a runner of agent a1 left when it was killed: a job that died running
    (100 tokens; its task still claimed by a1 under that job) and a job whose run
    ended completed (70 + 30 tokens, its task completed) whose settle never landed."""
    system.quota.set_allowance(AgentAllowance(agent_id="a1"))
    journal = UsageJournal(state, "a1")
    claimed = []
    for title in ("running", "ended"):
        task = system.tasks.create(Task(title=title))
        job_id = f"job-{title}"
        system.quota.reserve("a1", "", 100, job_id, task.id)
        claimed.append(system.tasks.claim(task.id, "a1", 300, job_id))
    running, ended = claimed
    job = journal.job(running, lambda what, exc: None)
    job.usage("m", 80, 20)
    job.close()
    job = journal.job(ended, lambda what, exc: None)
    job.usage("m", 70, 30)
    job.end((70, 30, QuotaEvent.JOB_COMPLETED, "m", ended.id))
    job.close()
    done = TaskResult(success=True, output="done before the kill")
    system.tasks.complete(ended.id, done, agent_id="a1", job_id=ended.job_id)
    return running, ended


def test_settle_usage_help_names_its_options() -> None:
    """--help describes the command and its options."""
    result = run(*SETTLE, "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for option in ("--agent", "--state-dir", "--dry-run", "--json", "--store"):
        assert option in text
    assert "no runner runs" in text


def test_dry_run_lists_what_it_would_settle_and_changes_nothing(
    system: System, tmp_path: Path
) -> None:
    """--dry-run --json lists each job (agent, job, task, tokens, decision) and
    leaves the files, the task's claim and the quota as they were."""
    state = tmp_path / "state"
    running, _ = left_by_a_killed_runner(system, state)
    result = system.cli(*SETTLE, "--state-dir", str(state), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True
    [agent] = data["agents"]
    assert agent["agent"] == "a1" and agent["run_by"] is None
    jobs = {job["job"]: job for job in agent["jobs"]}
    assert jobs["job-running"] == {
        "job": "job-running",
        "task": running.id,
        "tokens_in": 80,
        "tokens_out": 20,
        "action": "release",
        "decision": "release the task, settle as job_failed (it died running)",
        "done": False,
    }
    assert jobs["job-ended"]["action"] == "settle"
    assert jobs["job-ended"]["decision"] == "settle as job_completed (as decided)"
    assert len(list(UsageJournal(state, "a1").directory.glob("*.jsonl"))) == 2
    assert system.tasks.get(running.id).status is TaskStatus.IN_PROGRESS
    assert system.quota.get_usage("a1").tokens_used == 0
    assert system.registry.hold_lease("agent:a1", "next", 5) == "next"  # let go


def test_settle_usage_gives_back_settles_and_removes_the_files(
    system: System, tmp_path: Path
) -> None:
    """A job still claimed is released (pending, no retry counted) and settled as
    failed (half of 100 charged), the decided one as completed (100): the files go,
    and the dead agent's registration with them."""
    state = tmp_path / "state"
    running, ended = left_by_a_killed_runner(system, state)
    system.registry.register(AgentInfo(id="a1", capabilities=["x"]))  # its killed runner's
    result = system.cli(*SETTLE, "--state-dir", str(state))
    assert result.exit_code == 0, result.output
    assert system.registry.list() == []  # no dispatcher claims the task for it again
    lines = result.stdout.splitlines()
    assert (
        f"agent a1 job job-running (task {running.id}): 100 tokens, done: release the task,"
        " settle as job_failed (it died running)"
    ) in lines
    assert (
        f"agent a1 job job-ended (task {ended.id}): 100 tokens, done: settle as"
        " job_completed (as decided)"
    ) in lines
    assert lines[-1] == "2 settled, 0 left"
    task = system.tasks.get(running.id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    usage = system.quota.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (150, 0)
    assert list(UsageJournal(state, "a1").directory.iterdir()) == []
    again = system.cli(*SETTLE, "--state-dir", str(state), "--agent", "a1")
    assert again.exit_code == 0 and "a1: nothing to settle" in again.stdout


def test_settle_usage_reports_a_decided_end_still_claimed_not_gives_it_back(
    system: System, tmp_path: Path
) -> None:
    """A job still claimed whose end was decided with a result is reported as decided
    (completed with that result), as a starting runner does, not given back to run
    again."""
    state = tmp_path / "state"
    system.quota.set_allowance(AgentAllowance(agent_id="a1"))
    task = system.tasks.create(Task(title="ended"))
    system.quota.reserve("a1", "", 100, "job-ended", task.id)
    task = system.tasks.claim(task.id, "a1", 300, "job-ended")
    done = TaskResult(success=True, output="done before the kill")
    job = UsageJournal(state, "a1").job(task, lambda what, exc: None)
    job.usage("m", 70, 30)
    job.end((70, 30, QuotaEvent.JOB_COMPLETED, "m", task.id), Decided("completed", done))
    job.close()
    result = system.cli(*SETTLE, "--state-dir", str(state), "--json")
    assert result.exit_code == 0, result.output
    [agent] = json.loads(result.stdout)["agents"]
    [found] = agent["jobs"]
    assert (found["action"], found["done"]) == ("report", True)
    assert found["decision"] == "report it completed as decided, settle as job_completed"
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.result) == (TaskStatus.COMPLETED, done)
    assert system.quota.get_usage("a1").tokens_used == 100
    assert list(UsageJournal(state, "a1").directory.iterdir()) == []


def test_the_lease_of_a_killed_runner_is_taken_over(system: System, tmp_path: Path) -> None:
    """An id lease whose holder was a process of this machine that is gone (the
    runner was killed) is taken at once, as a restarted runner takes it."""
    state = tmp_path / "state"
    left_by_a_killed_runner(system, state)
    system.registry.hold_lease("agent:a1", dead_holder(), 60)
    result = system.cli(*SETTLE, "--state-dir", str(state), "--agent", "a1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "2 settled, 0 left"


def test_a_live_runners_files_are_left_alone(system: System, tmp_path: Path) -> None:
    """An agent whose id lease a live process holds is skipped naming the holder:
    exit 1 when it was asked for with --agent, 0 when found among all."""
    state = tmp_path / "state"
    left_by_a_killed_runner(system, state)
    live = new_lease_holder()  # this process: alive
    system.registry.hold_lease("agent:a1", live, 60)
    named = system.cli(*SETTLE, "--state-dir", str(state), "--agent", "a1")
    assert named.exit_code == 1
    assert f"agent a1: skipped, run by {live}" in " ".join(named.stdout.split())
    assert "run by a live runner" in " ".join(named.stderr.split())
    found = system.cli(*SETTLE, "--state-dir", str(state), "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["agents"] == [{"agent": "a1", "run_by": live, "jobs": []}]
    assert len(list(UsageJournal(state, "a1").directory.glob("*.jsonl"))) == 2
    assert system.quota.get_usage("a1").tokens_used == 0


def test_a_task_api_out_of_reach_leaves_the_files_and_exits_1(
    system: System, tmp_path: Path
) -> None:
    """When the task API cannot say whether a task is still claimed, nothing is
    settled: the jobs are said not done, the files kept, exit 1."""
    state = tmp_path / "state"
    left_by_a_killed_runner(system, state)
    config = write_config(tmp_path / "down.yaml", f"http://127.0.0.1:{free_port()}", system.url)
    result = run(*SETTLE, "--config", str(config), "--state-dir", str(state))
    assert result.exit_code == 1
    assert "not settled: their files are kept" in " ".join(result.stderr.split())
    assert result.stdout.splitlines()[-1] == "0 settled, 2 left"
    assert len(list(UsageJournal(state, "a1").directory.glob("*.jsonl"))) == 2


def test_a_task_api_of_another_store_is_named_once(system: System, tmp_path: Path) -> None:
    """Files settled against a task server that serves another store than --store:
    the mismatch is said once, up front, and the jobs it does not know are kept."""
    state = tmp_path / "state"
    other = "sqlite:///" + (tmp_path / "other.db").as_posix().lstrip("/")
    with open_allowance_store(other) as quota:
        quota.set_allowance(AgentAllowance(agent_id="a1"))
    journal = UsageJournal(state, "a1")
    job = journal.job(Task(id="elsewhere", title="t", job_id="job-x"), lambda what, exc: None)
    job.usage("m", 5, 5)
    job.close()
    result = system.cli(*SETTLE, "--state-dir", str(state), "--store", other)
    said = " ".join(result.stderr.split())
    assert said.count("serves another store") == 1, said
    assert "jobs whose task it does not know are kept, not settled" in said
    assert result.exit_code == 1
    assert len(list(journal.directory.glob("*.jsonl"))) == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--agent", "no spaces"], "agent id (--agent) 'no spaces' is not a valid id"),
        (["--state-dir", "missing"], "no such directory"),
        (["--no-such-option"], "No such option"),
    ],
    ids=["bad agent id", "missing state dir", "unknown option"],
)
def test_bad_arguments_are_usage_errors(system: System, args: list[str], said: str) -> None:
    """A bad agent id, a state directory that does not exist or an unknown option
    exits 2 saying what is wrong, without a traceback."""
    result = system.cli(*SETTLE, *args)
    assert result.exit_code == 2
    assert said in " ".join(result.stderr.split())
    no_traceback(result)


def test_no_files_is_said_not_an_error(system: System, tmp_path: Path) -> None:
    """A state directory without usage files: nothing to settle, exit 0."""
    result = system.cli(*SETTLE, "--state-dir", str(tmp_path))
    assert result.exit_code == 0
    assert result.stdout.strip() == f"no job usage files in {tmp_path}"


def test_an_unreadable_file_is_moved_aside_only_by_a_real_run(
    system: System, tmp_path: Path
) -> None:
    """A file that cannot be parsed is said by a dry run and left in place; a run
    moves it aside (.bad), says so, and exits 0 (there was nothing to settle)."""
    directory = UsageJournal(tmp_path, "a1").directory
    directory.mkdir(parents=True)
    (directory / "job-1.jsonl").write_text("[" * 100_000 + "\n")
    dry = system.cli(*SETTLE, "--state-dir", str(tmp_path), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would be moved aside, .bad" in " ".join(dry.stderr.split())
    assert (directory / "job-1.jsonl").exists()
    real = system.cli(*SETTLE, "--state-dir", str(tmp_path))
    assert real.exit_code == 0, real.output
    assert "(moved aside, .bad)" in " ".join(real.stderr.split())
    assert [path.name for path in directory.iterdir()] == ["job-1.jsonl.bad"]
