"""GitWorkspace in temporary repositories: a branch and a commit per task."""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentic.client import TaskClient
from agentic.errors import ConfigError
from agentic.models import Task, TaskResult, TaskStatus
from agentic.runner import AgentRunner, GitWorkspace, SubprocessHandler, TaskContext, WorkspaceError
from agentic.stores.memory import MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server

TASK = Task(id="t1", title="Write hello", description="Create hello.txt")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; its stdout, stripped."""
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on ``main`` with one commit and a local identity."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "commit.gpgsign", "false")
    (path / "README").write_text("hello\n")
    git(path, "add", "README")
    git(path, "commit", "-q", "-m", "initial")
    return path


def writes(name: str, text: str = "content\n") -> Callable[[Task, TaskContext], str]:
    """A handler writing ``name`` in the context's workdir."""

    def handler(task: Task, ctx: TaskContext) -> str:
        assert ctx.workdir is not None
        (ctx.workdir / name).write_text(text)
        return f"wrote {name}"

    return handler


def context() -> TaskContext:
    """A context whose client is never called (nothing is flushed)."""
    return TaskContext(TASK, TaskClient("http://127.0.0.1:9", token=""))


def branches(repo: Path) -> list[str]:
    """The local branch names."""
    return git(repo, "branch", "--format=%(refname:short)").splitlines()


def test_success_makes_one_branch_with_one_commit(repo: Path) -> None:
    """A successful task leaves its work committed on its branch; the repo is back on main."""
    workspace = GitWorkspace(repo, writes("hello.txt"))
    result = workspace(TASK, context())
    branch = GitWorkspace.branch_name(TASK)
    assert result.success and result.output == "wrote hello.txt"
    commit = git(repo, "rev-parse", branch)
    assert result.artifacts == [f"{branch}@{commit}"]
    assert git(repo, "log", "--format=%s", f"main..{branch}") == "agentic: Write hello (t1)"
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / "hello.txt").exists()
    assert sorted(branches(repo)) == [branch, "main"]


def test_two_tasks_two_branches_from_the_base(repo: Path) -> None:
    """Each task branches from the base, not from the previous task's branch."""
    other = Task(id="t2", title="Write bye")
    GitWorkspace(repo, writes("hello.txt"))(TASK, context())
    GitWorkspace(repo, writes("bye.txt"))(other, context())
    for task in (TASK, other):
        assert git(repo, "rev-list", "--count", f"main..{GitWorkspace.branch_name(task)}") == "1"
    assert len(branches(repo)) == 3


def test_failure_removes_the_branch_and_the_mess(repo: Path) -> None:
    """A failed task's branch is deleted and its files cleaned; the repo is on main."""

    def fails(task: Task, ctx: TaskContext) -> str:
        writes("junk.txt")(task, ctx)
        (repo / "README").write_text("changed\n")
        raise RuntimeError("agent crashed")

    with pytest.raises(RuntimeError, match="agent crashed"):
        GitWorkspace(repo, fails)(TASK, context())
    assert branches(repo) == ["main"]
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "README").read_text() == "hello\n"


def test_failed_result_also_discards(repo: Path) -> None:
    """A returned failure is passed on, and the branch is discarded."""

    def reports_failure(task: Task, ctx: TaskContext) -> TaskResult:
        writes("partial.txt")(task, ctx)
        return TaskResult(success=False, error_message="tests fail")

    result = GitWorkspace(repo, reports_failure)(TASK, context())
    assert result.error_message == "tests fail"
    assert branches(repo) == ["main"]
    assert not (repo / "partial.txt").exists()


def test_dirty_tree_is_refused_and_left_alone(repo: Path) -> None:
    """Uncommitted changes stop the task before the handler runs (before_work: its job
    is not counted); nothing is touched."""
    (repo / "mine.txt").write_text("user work\n")
    called: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> None:
        called.append(task.id)

    with pytest.raises(WorkspaceError, match=r"uncommitted changes \(mine.txt\)") as raised:
        GitWorkspace(repo, handler)(TASK, context())
    assert raised.value.before_work is True
    assert called == []
    assert (repo / "mine.txt").read_text() == "user work\n"
    assert branches(repo) == ["main"]


def test_branch_name_is_stable(repo: Path) -> None:
    """The branch is agentic/ + 12 hex of sha256(id + title): same task, same branch."""
    name = GitWorkspace.branch_name(TASK)
    expected = hashlib.sha256(b"t1Write hello").hexdigest()[:12]
    assert name == f"agentic/{expected}"
    assert re.fullmatch(r"agentic/[0-9a-f]{12}", name)
    assert GitWorkspace.branch_name(TASK.model_copy()) == name
    assert GitWorkspace.branch_name(TASK.model_copy(update={"title": "Other"})) != name


def test_rerun_resets_the_branch(repo: Path) -> None:
    """Running the same task again starts its branch afresh: still one commit."""
    GitWorkspace(repo, writes("hello.txt", "one\n"))(TASK, context())
    GitWorkspace(repo, writes("hello.txt", "two\n"))(TASK, context())
    branch = GitWorkspace.branch_name(TASK)
    assert git(repo, "rev-list", "--count", f"main..{branch}") == "1"
    assert git(repo, "show", f"{branch}:hello.txt") == "two"


def test_nothing_to_commit_is_success_without_branch(repo: Path) -> None:
    """A task that changes nothing succeeds with no commit and no branch left."""
    result = GitWorkspace(repo, lambda task, ctx: "looked around")(TASK, context())
    assert result.success and result.artifacts == []
    assert branches(repo) == ["main"]


def test_base_branch_is_used_and_returned_to(repo: Path) -> None:
    """With base_branch set, the task branches from it even if another is checked out."""
    git(repo, "checkout", "-q", "-b", "develop")
    (repo / "dev.txt").write_text("dev\n")
    git(repo, "add", "dev.txt")
    git(repo, "commit", "-q", "-m", "dev")
    git(repo, "checkout", "-q", "main")
    GitWorkspace(repo, writes("hello.txt"), base_branch="develop")(TASK, context())
    branch = GitWorkspace.branch_name(TASK)
    assert git(repo, "merge-base", "develop", branch) == git(repo, "rev-parse", "develop")
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "develop"


def test_push_sends_the_branch(repo: Path, tmp_path: Path) -> None:
    """With push=True the branch reaches the remote."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    GitWorkspace(repo, writes("hello.txt"), push=True)(TASK, context())
    branch = GitWorkspace.branch_name(TASK)
    assert git(remote, "rev-parse", branch) == git(repo, "rev-parse", branch)


def test_failed_push_keeps_the_local_commit(repo: Path) -> None:
    """A push that fails is a WorkspaceError after the work (its job counts); the commit
    stays on the local branch."""
    with pytest.raises(WorkspaceError, match="push") as raised:
        GitWorkspace(repo, writes("hello.txt"), push=True, remote="nowhere")(TASK, context())
    assert raised.value.before_work is False
    branch = GitWorkspace.branch_name(TASK)
    assert git(repo, "rev-list", "--count", f"main..{branch}") == "1"
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"


def test_a_rerun_pushes_over_its_earlier_push(repo: Path, tmp_path: Path) -> None:
    """A task run again (a new clone, a new commit) replaces its branch on the remote."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    GitWorkspace(repo, writes("hello.txt", "first\n"), push=True)(TASK, context())
    branch = GitWorkspace.branch_name(TASK)
    git(repo, "branch", "-q", "-D", branch)  # as on another agent's clone
    git(repo, "update-ref", "-d", f"refs/remotes/origin/{branch}")
    GitWorkspace(repo, writes("hello.txt", "second\n"), push=True)(TASK, context())
    assert git(remote, "rev-parse", branch) == git(repo, "rev-parse", branch)
    assert git(remote, "show", f"{branch}:hello.txt") == "second"


def test_a_commit_refused_by_a_hook_fails_the_task(repo: Path) -> None:
    """A pre-commit hook refusing the changes fails the task (its content is at fault),
    with the hook's words, and nothing stays behind."""
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'lint: trailing whitespace' >&2\nexit 1\n")
    hook.chmod(0o755)
    result = GitWorkspace(repo, writes("hello.txt"))(TASK, context())
    assert not result.success
    assert "refused the commit" in result.error_message
    assert "trailing whitespace" in result.error_message
    assert branches(repo) == ["main"] and git(repo, "status", "--porcelain") == ""


def test_no_committer_identity_is_an_agent_error(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a committer identity the commit is the agent's problem, not the task's."""
    git(repo, "config", "--unset", "user.email")
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "user.useConfigOnly", "true")
    monkeypatch.setenv("HOME", str(repo.parent))  # no global identity either
    monkeypatch.delenv("GIT_COMMITTER_EMAIL", raising=False)
    monkeypatch.delenv("EMAIL", raising=False)
    with pytest.raises(WorkspaceError, match="GIT_COMMITTER_IDENT"):
        GitWorkspace(repo, writes("hello.txt"))(TASK, context())
    assert branches(repo) == ["main"]


def test_a_task_branch_left_checked_out_is_discarded_first(repo: Path) -> None:
    """An attempt that never ended (kill -9) left its branch and changes: the next task
    starts from the base, without them."""
    workspace = GitWorkspace(repo, writes("y.txt"))
    dead = Task(id="x1", title="dead attempt")
    git(repo, "checkout", "-q", "-b", GitWorkspace.branch_name(dead))
    (repo / "half.txt").write_text("half done\n")
    other = Task(id="y1", title="next task")
    workspace(other, context())
    branch = GitWorkspace.branch_name(other)
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(repo, "ls-tree", "--name-only", branch).splitlines() == ["README", "y.txt"]
    assert sorted(branches(repo)) == sorted(["main", branch])


def test_a_task_branch_is_refused_as_the_base(repo: Path) -> None:
    """Made on a task's branch without base_branch, a workspace says what to do."""
    git(repo, "checkout", "-q", "-b", "agentic/0123456789ab")
    with pytest.raises(ConfigError, match="a task's branch"):
        GitWorkspace(repo, writes("hello.txt"))


def test_a_task_cancelled_while_waiting_for_the_tree_is_given_back(repo: Path) -> None:
    """A task whose time runs out while another holds the tree never starts: given back."""
    entered, leave = threading.Event(), threading.Event()

    def slow(task: Task, ctx: TaskContext) -> str:
        entered.set()
        leave.wait(5)
        return "done"

    workspace = GitWorkspace(repo, slow)
    first = threading.Thread(target=workspace, args=(TASK, context()))
    first.start()
    assert entered.wait(5)
    waiting = context()
    threading.Timer(0.3, waiting.cancel, args=("timed out after 0.3 s",)).start()
    started = time.monotonic()
    with pytest.raises(WorkspaceError, match="busy with another task") as raised:
        workspace(Task(id="t2", title="second"), waiting)
    assert raised.value.before_work and time.monotonic() - started < 2
    leave.set()
    first.join(5)


def test_another_process_on_the_tree_waits_and_leaves_the_running_task_alone(
    repo: Path,
) -> None:
    """Two workspaces on one tree (two agent processes) run one task at a time: the
    second waits (the lock in .git) and never takes the first's branch for a leftover."""
    entered, leave = threading.Event(), threading.Event()

    def slow(task: Task, ctx: TaskContext) -> str:
        assert ctx.workdir is not None
        (ctx.workdir / "first.txt").write_text("in progress\n")
        entered.set()
        leave.wait(5)
        return "done"

    first = threading.Thread(target=GitWorkspace(repo, slow), args=(TASK, context()))
    first.start()
    assert entered.wait(5)
    waiting = context()
    threading.Timer(0.5, waiting.cancel, args=("timed out",)).start()
    with pytest.raises(WorkspaceError, match="busy with another task"):
        second = GitWorkspace(repo, writes("second.txt"), base_branch="main")
        second(Task(id="t2", title="second"), waiting)
    assert (repo / "first.txt").exists()  # the running task's work is untouched
    leave.set()
    first.join(5)
    assert git(repo, "ls-tree", "--name-only", GitWorkspace.branch_name(TASK)).splitlines() == [
        "README",
        "first.txt",
    ]


def run_one(repo: Path, task: Task, prepare: Callable[[], None] | None = None) -> Task:
    """Run ``task`` through a runner with a git workspace around a shell command."""
    store, registry = MemoryTaskStore(), MemoryRegistry()
    handler = GitWorkspace(repo, SubprocessHandler(["sh", "-c", "echo hi > out.txt"]))
    with running_server(store, requeue_interval=None) as url, TaskClient(url, "") as client:
        runner = AgentRunner(
            "a1", client, registry, handler, heartbeat_interval=0.1, poll_interval=0.05
        )
        runner.start()
        try:
            created = store.create(task)
            if prepare:
                prepare()
            deadline = time.monotonic() + 5
            while not registry.list() and time.monotonic() < deadline:
                time.sleep(0.01)
            client.claim_task(created.id, agent_id="a1")
            while store.get(created.id).status == TaskStatus.IN_PROGRESS:
                assert time.monotonic() < deadline, "task did not finish"
                time.sleep(0.01)
            return store.get(created.id)
        finally:
            runner.stop()


def test_runner_with_workspace_commits_subprocess_work(repo: Path) -> None:
    """Under a runner, the command runs in the repo and its work is committed."""
    done = run_one(repo, Task(title="say hi"))
    assert done.status == TaskStatus.COMPLETED
    assert done.result is not None
    (artifact,) = done.result.artifacts
    branch = artifact.split("@")[0]
    assert git(repo, "show", f"{branch}:out.txt") == "hi"


def test_runner_releases_a_task_when_the_tree_is_dirty(repo: Path) -> None:
    """A dirty tree gives the task back without counting a retry."""

    def dirty() -> None:
        (repo / "x").write_text("x")

    done = run_one(repo, Task(title="say hi"), dirty)
    assert (done.status, done.retry_count, done.claimed_by) == (TaskStatus.PENDING, 0, "")
