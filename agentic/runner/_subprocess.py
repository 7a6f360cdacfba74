"""SubprocessHandler: run any CLI agent (goose, claude, codex, a script) on a task."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from pydantic_core import PydanticSerializationError

from ..config import without_secrets
from ..errors import ConfigError
from ..models import Task, TaskResult
from ._context import InfrastructureError, TaskCancelled, TaskContext
from ._journal import usage_line

__all__ = ["SubprocessHandler"]

log = logging.getLogger("agentic.runner")

_FILE = "{file}"
#: the file a command may append its token usage to (see SubprocessHandler)
USAGE_ENV = "AGENTIC_USAGE_FILE"
_GUARD = Path(__file__).with_name("_guard.py")
_STDERR_TAIL = 4 * 1024
# How often the wait loop looks at the process besides reacting to cancellation.
_POLL = 0.05
# Readers are joined after the process group is gone; a descendant that escaped
# the group (setsid) may still hold a pipe open, and must not hang the task.
_READER_JOIN = 5.0
# Bytes read at most at a time from the command's output (its log lines are cut at
# 16 Ki characters anyway).
_CHUNK = 64 * 1024
# Each task's temporary directory (the task file, the usage file): named so, and
# holding a lock file its task keeps locked (see _task_dir).
_DIR_PREFIX = "agentic-task-"
_DIR_LOCK = ".agentic-lock"


@contextlib.contextmanager
def _task_dir() -> Iterator[Path]:
    """A temporary directory for one task, locked while the task runs: an agent
    killed mid-task (``kill -9``) cannot remove it, and the next handler to start
    on the machine removes it instead (:func:`_remove_abandoned`). Removed before
    the lock is let go, so a sweeper never removes a live task's directory."""
    path = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
    try:
        lock = (path / _DIR_LOCK).open("w")
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)  # the lock is still held


def _remove_abandoned(root: Path) -> None:
    """Remove the task directories under ``root`` whose lock nobody holds (their
    agent died). Ones without a lock file (being created, or made by an older
    version) are left alone, and so is what is not this user's own directory with a
    regular lock file: ``root`` is shared (/tmp), and another user's look-alike (a
    FIFO for a lock, which an open would wait on for ever) must not stop the sweep."""
    for path in root.glob(_DIR_PREFIX + "*"):
        # No lock file, one held by a live task, or not ours: left alone.
        with contextlib.suppress(OSError):
            found = path.lstat()
            if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                continue
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
            with open(os.open(path / _DIR_LOCK, flags), "rb") as lock:
                if not stat.S_ISREG(os.fstat(lock.fileno()).st_mode):
                    continue
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)


class _Tail:
    """The last ``limit`` characters of a stream, kept line by line."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lines: deque[str] = deque()
        self._size = 0
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            # Drop the oldest only while the rest still holds ``limit`` characters.
            while len(self._lines) > 1 and self._size - len(self._lines[0]) >= self.limit:
                self._size -= len(self._lines.popleft())

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)[-self.limit :]


class SubprocessHandler:
    """A handler that runs a command per task.

    * ``input="stdin"`` writes the task to the process's stdin; ``input="file"``
      writes it to a temporary file whose path replaces ``{file}`` in ``argv``.
    * ``format="text"``: the title, a blank line, the description; ``"json"``: the
      whole task as JSON.
    * stdout and stderr lines go to the task's log as they come (stderr lines with a
      ``[stderr]`` prefix). The environment is inherited but for the ``AGENTIC_*``
      variables holding a secret (tokens, the webhook secret, URLs with a
      password: ``config.without_secrets``; ``env`` may give one back), plus
      ``env``, plus ``AGENTIC_TASK_ID`` and ``AGENTIC_USAGE_FILE``: a path the command may append
      its token usage to, one JSON object a line (``{"model": "m", "tokens_in": 1200,
      "tokens_out": 300}``; ``model`` defaults to the task's), charged when it ends
      however it ends, and on cancellation also before the command is signalled
      (so its job's settle, which may not wait for a command slow to die, has
      them; a line that is not one is said in the task's log). With quotas on it
      lives beside the job's usage file in the runner's state directory, so what
      it holds is charged also when the runner is killed (see ``_journal``);
      otherwise in the task's temporary directory. ``cwd``
      defaults to the context's ``workdir`` (set by ``GitWorkspace``), else the
      current directory.
    * Exit code 0: success, the output is the last ``output_limit`` characters of
      stdout. Non-zero: failure naming the code (or signal) and the tail of stderr.
    * ``timeout`` (seconds) or the task's cancellation ends the whole process group
      (the command runs in its own session): SIGTERM, then SIGKILL after
      ``kill_grace`` (on cancellation sooner if the runner's ``cancel_grace`` leaves
      less: the command must be gone before the runner frees its slot).
      Descendants left behind after a normal exit are ended the same
      way, so nothing the task started outlives it. Nor does it outlive the agent:
      the command runs under a small guard process (``_guard.py``) that ends the
      group when the agent process disappears (``kill -9``), instead of leaving it
      to run beside the copy another agent starts when the lease expires.
    * A command that cannot be started (missing binary) is an
      :class:`InfrastructureError`: the runner gives the task back.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        input: Literal["stdin", "file"] = "stdin",
        format: Literal["text", "json"] = "text",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        kill_grace: float = 5.0,
        output_limit: int = 64 * 1024,
    ) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError("argv must be a non-empty list of strings (not a shell string)")
        if input not in ("stdin", "file"):
            raise ConfigError(f"input must be 'stdin' or 'file', got {input!r}")
        if format not in ("text", "json"):
            raise ConfigError(f"format must be 'text' or 'json', got {format!r}")
        if input == "file" and not any(_FILE in a for a in argv):
            raise ConfigError(f"input='file' needs {_FILE} in argv, where the path goes")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if kill_grace < 0 or output_limit <= 0:
            raise ConfigError("kill_grace must be >= 0 and output_limit > 0")
        self.argv = list(argv)
        self.input = input
        self.format = format
        self.env = dict(env or {})
        self.cwd = cwd
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.output_limit = output_limit
        # At the first task: the directories of tasks whose agent was killed go.
        self._swept = False
        self._sweep_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SubprocessHandler({self.argv!r}, input={self.input!r})"

    def payload(self, task: Task) -> str:
        """What the command receives for ``task``."""
        if self.format == "json":
            return task.model_dump_json()
        return f"{task.title}\n\n{task.description}".rstrip() + "\n"

    def check(self, workdir: str | os.PathLike[str] | None = None) -> None:
        """Raise ConfigError unless the command can be started now (found on ``PATH``,
        or at its path, and executable); ``workdir``: where a relative path is found
        when the handler has no ``cwd`` (a git workspace's repository).

        For callers that start an agent: one whose command is missing would take every
        task routed to it and give each back, a pause longer each time.
        """
        cwd = self.cwd if self.cwd is not None else workdir
        if _FILE in self.argv[0]:
            return  # the task file is the program: it exists once a task is taken
        try:
            _require_executable(self.argv[0], cwd, {**os.environ, **self.env})
        except InfrastructureError as exc:
            raise ConfigError(
                f"{exc}: give a program on PATH or the path of an executable"
            ) from exc

    def __call__(self, task: Task, ctx: TaskContext) -> TaskResult:
        with self._sweep_lock:
            if not self._swept:
                self._swept = True
                _remove_abandoned(Path(tempfile.gettempdir()))
        with _task_dir() as tmp:
            # With a job usage file (quotas on) the command's lives beside it, where a
            # restart after a kill reads it; else here, gone with the task.
            kept = ctx.journal.command_file() if ctx.journal is not None else None
            usage = _UsageFile(kept or tmp / "usage.jsonl", task, ctx, kept=kept is not None)
            try:
                payload = self._encoded(task)
                if self.input == "stdin":
                    return self._run(self.argv, task, ctx, payload, usage)
                path = tmp / ("task.json" if self.format == "json" else "task.txt")
                path.write_bytes(payload)
                argv = [a.replace(_FILE, str(path)) for a in self.argv]
                return self._run(argv, task, ctx, None, usage)
            finally:
                # Whatever the outcome (a failure, a timeout, a cancel): spent is spent.
                usage.charge(final=True)

    def _encoded(self, task: Task) -> bytes:
        """The payload as UTF-8, before anything starts: a task whose text is not valid
        Unicode (a lone surrogate) fails here with a message, not in a writer thread
        that would leave the command reading nothing."""
        try:
            return self.payload(task).encode("utf-8")
        except (UnicodeEncodeError, PydanticSerializationError) as exc:
            raise ValueError(
                f"task {task.id} holds text that is not valid Unicode ({exc});"
                f" it cannot be given to {self.argv[0]!r}"
            ) from exc

    def _run(
        self,
        argv: list[str],
        task: Task,
        ctx: TaskContext,
        stdin: bytes | None,
        usage: _UsageFile,
    ) -> TaskResult:
        cwd = self.cwd if self.cwd is not None else ctx.workdir
        env = {
            **without_secrets(os.environ),  # the runner's tokens are not the command's
            **self.env,
            "AGENTIC_TASK_ID": task.id,
            USAGE_ENV: str(usage.path),
        }
        _require_executable(argv[0], cwd, env)
        # The guard runs the command and ends its group should this process die; it
        # says on a pipe of its own whether the command started.
        status_read, status_write = os.pipe()
        guarded = [
            *(sys.executable, "-I", str(_GUARD), str(os.getpid()), repr(self.kill_grace)),
            str(status_write),
        ]
        try:
            process = subprocess.Popen(
                [*guarded, "--", *argv],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
                pass_fds=(status_write,),
            )
        except OSError as exc:
            os.close(status_read)
            raise InfrastructureError(f"cannot start {argv[0]!r}: {exc}", before_work=True) from exc
        finally:
            os.close(status_write)
        stdout, stderr = _Tail(self.output_limit), _Tail(_STDERR_TAIL)
        threads = [
            _thread(_read, process.stdout, ctx, stdout, ""),
            _thread(_read, process.stderr, ctx, stderr, "[stderr] "),
        ]
        with os.fdopen(status_read, "rb") as status:
            # Until the guard writes it or ends; the readers drain the output meanwhile.
            started = status.read().decode("utf-8", "replace")
        if started != "started":
            process.wait()
            for thread in threads:
                thread.join(_READER_JOIN)
            # The machine cannot run it (a bad interpreter line, the wrong format):
            # the agent's problem, not the task's.
            why = started or f"the guard ended with {process.returncode}"
            raise InfrastructureError(f"cannot start {argv[0]!r}: {why}", before_work=True)
        if stdin is not None:
            threads.append(_thread(_write, process.stdin, stdin))
        stopped, end_by = self._wait(process, ctx, usage)
        # Whatever happened, the task's process group ends with the task.
        self._end_group(process, end_by)
        for thread in threads:
            thread.join(_READER_JOIN)
        code = process.returncode
        if stopped == "cancelled":
            raise TaskCancelled(ctx.cancel_reason or "cancelled")
        if stopped == "timeout":
            return TaskResult(
                success=False,
                output=stdout.text(),
                error_message=f"timed out after {self.timeout:g} s; process group killed",
            )
        if code == 0:
            return TaskResult(success=True, output=stdout.text())
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = stderr.text().strip()
        return TaskResult(
            success=False,
            output=stdout.text(),
            error_message=f"{argv[0]} {how}" + (f": {tail}" if tail else ""),
        )

    def _wait(
        self, process: subprocess.Popen[bytes], ctx: TaskContext, usage: _UsageFile
    ) -> tuple[str, float]:
        """Wait for the process: "exited", "timeout" or "cancelled" (group killed), and
        the monotonic time by which what is left of its group must be gone.

        On cancellation the whole ending (SIGTERM, SIGKILL, the rest of the group)
        fits in ``kill_grace`` or, when shorter, about the runner's ``cancel_grace``
        less a second: the command must be gone before the runner frees its slot."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while process.poll() is None:
            # Charged as it is written: the job's usage file keeps it should this
            # process be killed before the command ends.
            usage.charge(final=False)
            if ctx.cancel_event.wait(_POLL):
                usage.charge(final=False)  # before the runner's settle, which may not wait
                budget = min(self.kill_grace, max(ctx.cancel_grace / 2, ctx.cancel_grace - 1))
                end_by = time.monotonic() + budget
                self._kill(process, budget / 2)  # the rest of the group gets the rest
                return "cancelled", end_by
            if deadline is not None and time.monotonic() >= deadline:
                self._kill(process, self.kill_grace)
                return "timeout", time.monotonic() + self.kill_grace
        return "exited", time.monotonic() + self.kill_grace

    def _kill(self, process: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM the group, SIGKILL it ``grace`` seconds later; reap the process."""
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def _end_group(self, process: subprocess.Popen[bytes], end_by: float) -> None:
        """End descendants still in the group after the leader exited, by ``end_by``."""
        if not _signal_group(process.pid, signal.SIGTERM):
            return
        deadline = end_by
        while time.monotonic() < deadline:
            if not _signal_group(process.pid, 0):
                return
            time.sleep(_POLL)
        _signal_group(process.pid, signal.SIGKILL)


class _UsageFile:
    """``$AGENTIC_USAGE_FILE``, charged as it grows: each complete line once.

    ``kept``: the file is the job's own in the state directory, a restart's record
    of the command's lines: they are counted, not copied to the job's file, and
    what an earlier run of the job wrote there (counted already) is skipped."""

    def __init__(self, path: Path, task: Task, ctx: TaskContext, kept: bool = False) -> None:
        self.path = path
        self._task = task
        self._ctx = ctx
        self._count = ctx.recorded_usage if kept else ctx.usage
        self._offset = 0  # bytes charged so far
        if kept:
            with contextlib.suppress(FileNotFoundError):  # none: no earlier run wrote one
                self._offset = path.stat().st_size
        self._lines = 0  # lines charged so far (for messages)

    def charge(self, final: bool) -> None:
        """Charge the lines added since the last call; ``final``: the last one too
        when it has no newline (the command is gone, it will not be finished)."""
        try:
            if not final and self.path.stat().st_size <= self._offset:
                return  # nothing new (checked every poll while the command runs)
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return  # the command reported nothing
        except OSError as exc:  # read again next time; the last time, said in the log
            if final:
                self._ctx.log(f"[agentic: {USAGE_ENV} could not be read: {exc}]")
            return
        if not final:
            data = data[: data.rfind(b"\n") + 1]  # an unfinished line waits
        self._offset += len(data)
        for raw in data.splitlines():
            self._lines += 1
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            used = usage_line(line, self._task.model or "")
            if isinstance(used, str):
                # In the task's log for its owner, and in the runner's for its operator:
                # a command whose usage lines are refused spends uncounted tokens.
                self._ctx.log(f"[agentic: {USAGE_ENV} line {self._lines} ignored: {used}]")
                log.warning(
                    "task %s: %s line %d ignored (its tokens are not counted): %s",
                    self._task.id,
                    USAGE_ENV,
                    self._lines,
                    used,
                )
            else:
                self._count(*used)


def _require_executable(
    command: str, cwd: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> None:
    """InfrastructureError unless ``command`` can be started (found, executable).

    Checked here because the guard starts it: a missing binary must stay the agent's
    problem (the task is given back), not look like the task's own failure.
    """
    if os.sep in command:
        found = Path(cwd or ".", command)
        ok = found.is_file() and os.access(found, os.X_OK)
    else:
        ok = shutil.which(command, path=env.get("PATH", os.defpath)) is not None
    if not ok:
        raise InfrastructureError(
            f"cannot start {command!r}: not found or not executable", before_work=True
        )


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its credentials (setuid); it is not ours to end.
        return False
    return True


def _thread(target: Callable[..., None], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _read(stream: IO[bytes] | None, ctx: TaskContext, tail: _Tail, prefix: str) -> None:
    """Log the stream line by line and keep its tail, reading at most ``_CHUNK``
    bytes at a time: a line without end (a binary dump) costs no more memory. A
    line longer than that is logged by its start (cut, see TaskContext.log)."""
    if stream is None:
        return
    # One decoder for the stream: a character split between two chunks is whole.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with contextlib.suppress(ValueError, OSError), stream:
        continued = False  # the chunk before was a part of a line with no end yet
        while raw := stream.readline(_CHUNK):
            line = decoder.decode(raw)
            tail.add(line)
            if not continued:
                ctx.log(prefix + line.rstrip("\r\n"))
            continued = not raw.endswith(b"\n")
        tail.add(decoder.decode(b"", final=True))  # an incomplete character at the end


def _write(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        return
    # The command may exit without reading its input: a broken pipe is its choice.
    with contextlib.suppress(BrokenPipeError, OSError), stream:
        stream.write(data)
