"""GitWorkspace: a git branch per task around any handler (plain git commands)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

from ..errors import ConfigError
from ..models import Task, TaskResult
from ._context import Handler, InfrastructureError, TaskContext, call_handler

__all__ = ["GitWorkspace", "WorkspaceError"]

log = logging.getLogger("agentic.runner")


#: the prefix of every task's branch
_TASK_BRANCHES = "agentic/"
#: seconds between looks at a cancelled task while it waits for the working tree
_LOCK_POLL = 0.2


class WorkspaceError(InfrastructureError):
    """The repository is not fit to run a task (dirty tree, git failing, push refused)."""


class _CommitRefused(Exception):
    """``git commit`` failed with the work staged: a hook refused the task's changes."""


class GitWorkspace:
    """Runs ``handler`` in ``repo_path`` on a fresh branch per task.

    Before: the working tree must be clean (untracked files included), else
    :class:`WorkspaceError` (the runner gives the task back, no retry counted). The
    branch ``agentic/<12 hex of sha256(task id + title)>`` is created, or reset, from
    ``base_branch`` (default: the branch checked out when the workspace is made, which
    must not be a task's ``agentic/`` branch). The handler runs with ``ctx.workdir``
    set to the repository. A task's branch still checked out (an agent stopped
    mid-task, ``kill -9``) is what is left of an attempt that cannot report any more:
    it is discarded, changes included, before the next task.

    On success everything is committed as ``agentic: <title> (<task id>)``, pushed to
    ``remote`` when ``push`` is set (forced: the branch is the task's own, and a rerun
    replaces what an earlier attempt pushed), and the result's artifacts gain
    ``"<branch>@<commit>"``. A task that changed nothing leaves no commit and no branch.
    A commit the repository refuses (a hook) fails the task: its content is at fault.
    On failure, exception or cancellation the branch is reset, cleaned and deleted.
    Either way the repository ends on the base branch.

    One working tree runs one task at a time, across threads and processes (a lock
    file, ``.git/agentic.lock``): with ``max_load > 1``, or several agents on one
    tree, further tasks wait for it; one cancelled while waiting (its time ran out)
    is given back unrun.
    """

    def __init__(
        self,
        repo_path: str | os.PathLike[str],
        handler: Handler,
        *,
        base_branch: str | None = None,
        push: bool = False,
        remote: str = "origin",
        git_timeout: float = 120.0,
    ) -> None:
        self.repo = Path(repo_path).resolve()
        if not self.repo.is_dir():
            raise ConfigError(f"repo_path {str(self.repo)!r} is not a directory")
        if git_timeout <= 0:
            raise ConfigError(f"git_timeout must be > 0 seconds, got {git_timeout}")
        self.handler = handler
        self.git_timeout = git_timeout
        # Never wait for a password prompt nobody will answer; parse git in English.
        self._env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        if base_branch is None:
            try:
                base_branch = self._current_branch()
            except WorkspaceError as exc:
                raise ConfigError(f"{exc}: give base_branch") from exc
        if base_branch.startswith(_TASK_BRANCHES):
            raise ConfigError(
                f"{self.repo} is on {base_branch}, a task's branch (an agent stopped"
                " mid-task?): check out the branch tasks start from, or give base_branch"
            )
        self.base_branch = base_branch
        self.push = push
        self.remote = remote
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GitWorkspace({str(self.repo)!r}, {self.handler!r})"

    @staticmethod
    def branch_name(task: Task) -> str:
        """The task's branch: stable across attempts and agents."""
        digest = hashlib.sha256((task.id + task.title).encode("utf-8")).hexdigest()
        return f"{_TASK_BRANCHES}{digest[:12]}"

    def __call__(self, task: Task, ctx: TaskContext) -> TaskResult:
        # Waiting for the tree stops when the task is cancelled (its time ran out
        # while another task held the tree): given back unrun, not timed out.
        while not self._lock.acquire(timeout=_LOCK_POLL):
            self._require_not_cancelled(ctx)
        try:
            # The tree may be shared with other agent processes: a file lock in .git
            # keeps one task at a time in it across them too.
            with self._git_dir().joinpath("agentic.lock").open("a") as lock:
                while True:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        self._require_not_cancelled(ctx)
                        time.sleep(_LOCK_POLL)
                self._require_not_cancelled(ctx)
                return self._run(task, ctx)  # the lock ends with the file's closing
        finally:
            self._lock.release()

    def _require_not_cancelled(self, ctx: TaskContext) -> None:
        if ctx.cancelled:
            raise WorkspaceError(
                f"{self.repo} was busy with another task until this one was cancelled"
                f" ({ctx.cancel_reason})",
                before_work=True,
            )

    def _git_dir(self) -> Path:
        return self.repo / self._git("rev-parse", "--git-dir").stdout.strip()

    def _run(self, task: Task, ctx: TaskContext) -> TaskResult:
        try:
            base, branch = self._prepare(task, ctx)
        except WorkspaceError as exc:
            exc.before_work = True  # nothing ran: the job is not counted
            raise
        workdir, ctx.workdir = ctx.workdir, self.repo
        try:
            result = call_handler(self.handler, task, ctx)
        except BaseException:
            self._discard(branch, base, ctx)
            raise
        finally:
            ctx.workdir = workdir
        return self._deliver(task, ctx, result, branch, base)

    def _prepare(self, task: Task, ctx: TaskContext) -> tuple[str, str]:
        """Check the tree is clean and put the task's branch out from the base: the
        base and the branch."""
        head = self._git("symbolic-ref", "--short", "-q", "HEAD", check=False).stdout.strip()
        if head.startswith(_TASK_BRANCHES):
            # Only an attempt that never ended leaves a task's branch checked out (one
            # task at a time runs here, across processes too: the lock in .git): it
            # cannot report, so its changes go.
            ctx.log(f"[git] {head} was left by an attempt that did not end: discarding it")
            log.warning("%s: %s left by an attempt that did not end; discarded", self.repo, head)
            self._discard(head, self.base_branch, ctx)
        dirty = self._git("status", "--porcelain").stdout.strip()
        if dirty:
            listed = ", ".join(line[3:] for line in dirty.splitlines()[:5])
            raise WorkspaceError(
                f"the working tree of {self.repo} has uncommitted changes ({listed});"
                " commit, stash or remove them before this agent can take tasks"
            )
        base = self.base_branch
        branch = self.branch_name(task)
        previous = self._git("rev-parse", "-q", "--verify", f"refs/heads/{branch}", check=False)
        if previous.returncode == 0:
            # A rerun of the task (its earlier report never landed); the old tip stays
            # reachable from the reflog.
            ctx.log(f"[git] resetting {branch} (was {previous.stdout.strip()}) to {base}")
        self._git("checkout", "-q", "-B", branch, base)
        ctx.log(f"[git] working on {branch} from {base}")
        return base, branch

    def _deliver(
        self, task: Task, ctx: TaskContext, result: TaskResult, branch: str, base: str
    ) -> TaskResult:
        """Commit (and push) a success on its branch; discard a failure's branch."""
        if not result.success:
            self._discard(branch, base, ctx)
            return result
        try:
            commit = self._commit(task, branch, base, ctx)
        except _CommitRefused as exc:
            self._discard(branch, base, ctx)
            return result.model_copy(update={"success": False, "error_message": str(exc)})
        except WorkspaceError:
            self._discard(branch, base, ctx)
            raise
        if commit is None:
            return result
        if self.push:
            pushed = self._git(
                "push", "-q", "--force", "--set-upstream", self.remote, branch, check=False
            )
            if pushed.returncode != 0:
                # The commit stays on the local branch: the work is done, only its
                # delivery failed.
                raise WorkspaceError(
                    f"push of {branch} to {self.remote} failed (commit {commit} kept"
                    f" locally): {pushed.stderr.strip()}"
                )
        return result.model_copy(update={"artifacts": [*result.artifacts, f"{branch}@{commit}"]})

    def _commit(self, task: Task, branch: str, base: str, ctx: TaskContext) -> str | None:
        """Commit the work on ``branch`` and return to ``base``; the commit, or None
        (and no branch) when the task changed nothing."""
        head = self._current_branch()
        if head != branch:
            raise WorkspaceError(f"the handler left {branch} for {head}; not committing")
        self._git("add", "-A")
        if self._git("diff", "--cached", "--quiet", check=False).returncode != 0:
            # Who commits is the agent's setup: missing, it is the agent's error; with
            # it, a refused commit is the repository's verdict on the task's changes.
            self._git("var", "GIT_COMMITTER_IDENT")
            title = " ".join(task.title.split())
            made = self._git("commit", "-q", "-m", f"agentic: {title} ({task.id})", check=False)
            if made.returncode != 0:
                why = (made.stderr.strip() or made.stdout.strip())[-2000:]
                raise _CommitRefused(f"the repository refused the commit: {why}")
        ahead = int(self._git("rev-list", "--count", f"{base}..{branch}").stdout.strip())
        self._git("checkout", "-q", base)
        if ahead == 0:
            self._git("branch", "-q", "-D", branch)
            ctx.log(f"[git] nothing to commit; {branch} removed")
            return None
        commit = self._git("rev-parse", branch).stdout.strip()
        ctx.log(f"[git] committed {commit} on {branch}")
        return commit

    def _discard(self, branch: str, base: str, ctx: TaskContext) -> None:
        """Throw the branch away and return to ``base``; problems are logged, not raised,
        so they never hide the handler's own error (the next task sees a dirty tree)."""
        for args in (
            ("reset", "-q", "--hard"),
            ("clean", "-q", "-fd"),
            ("checkout", "-q", base),
            ("branch", "-q", "-D", branch),
        ):
            try:
                self._git(*args)
            except WorkspaceError as exc:
                ctx.log(f"[git] cleanup failed: {exc}")
                log.error("cleanup of %s in %s failed: %s", branch, self.repo, exc)
                return
        ctx.log(f"[git] {branch} discarded")

    def _current_branch(self) -> str:
        head = self._git("symbolic-ref", "--short", "-q", "HEAD", check=False)
        if head.returncode != 0:
            raise WorkspaceError(f"{self.repo} has a detached HEAD; set base_branch")
        return head.stdout.strip()

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=self.repo,
                capture_output=True,
                text=True,
                timeout=self.git_timeout,
                env=self._env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WorkspaceError(f"git {args[0]} in {self.repo} failed: {exc}") from exc
        if check and done.returncode != 0:
            raise WorkspaceError(
                f"git {' '.join(args)} in {self.repo} failed (exit {done.returncode}):"
                f" {done.stderr.strip()}"
            )
        return done
