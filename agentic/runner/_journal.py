"""A file per job of the tokens its attempt reported, so that tokens spent before the
runner process died (``kill -9``, an out-of-memory kill) are still charged.

The runner settles a job's usage when the attempt ends, from memory: a process killed
mid-task used to take its tokens with it. Each ``ctx.usage`` of a job is now also
appended to ``<state dir>/usage/<agent id>/<job id>.jsonl`` (created at the first
one), then the settle and the report decided at the attempt's end (written even by a
job that reported no usage), and the file is removed once the quota store took that
settle and the report landed. A
runner starting with the same agent id finds what is left: a job whose end was
decided is settled as decided (settles are idempotent per job id, so one that landed
changes nothing), and, when its task is still this agent's claim under that job,
reported as decided with the result the end recorded (its run is not repeated); a
job that died running is resumed when its claim is still this
agent's (its recorded tokens are added to the new run's), else settled as failed,
as for an attempt whose lease was lost. A live attempt holds an exclusive ``flock``
on its file, so another runner on the machine never settles a job still running.

A subprocess's command appends its usage to a file of its own beside the job's
(``<job id>.jsonl.command``, its ``$AGENTIC_USAGE_FILE``), which is the record of
the command's lines: the runner counts them in memory as they come and never copies
them into the job's file, and a restart reads both files. So a line the command
wrote just before the runner was killed is charged, and no line has two records
that a restart would have to tell apart.

Lines are flushed to the OS as written (they survive the process), not fsynced (a
machine crash may lose the last ones): a sync per usage report would cost more than
the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

import platformdirs
from pydantic import ValidationError

from ..models import QuotaEvent, Task, TaskResult

__all__ = [
    "Decided",
    "JobJournal",
    "Leftover",
    "Settle",
    "UsageJournal",
    "bad_tokens",
    "default_state_dir",
    "journaled_agents",
    "usage_line",
]

log = logging.getLogger("agentic.runner")

#: a settle's (tokens in, tokens out, event, model, task id); event None: unreserve
Settle = tuple[int, int, QuotaEvent | None, str | None, str]
_UNRESERVE = "unreserve"
# The suffix of the command's usage file, after the job file's name (as the .bad and
# .stale of files moved aside): never matched by the "*.jsonl" of the job files, and
# no job id's file name ends so.
_COMMAND = ".command"
# Seconds after which a decided job's file is not settled again: the quota store
# remembers settled job ids for 7 days, so a repeat within that is a no-op.
_SETTLE_AGAIN_WITHIN = 6 * 24 * 3600.0
# Seconds an attempt waits for its job file while another holds it: a listing (a
# re-read of the files, in this process or another) holds each only while reading it;
# a live attempt holds it for good.
_LISTING_WAIT = 0.5


def default_state_dir() -> Path:
    """Where runners keep state that must outlive their process."""
    return Path(platformdirs.user_state_dir("agentic")).absolute()


def journaled_agents(state_dir: Path) -> list[str]:
    """The agent ids that have a directory of job usage files in ``state_dir``."""
    try:
        found = [path for path in (state_dir / "usage").iterdir() if path.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(unquote(path.name) for path in found)


#: the reports an earlier run's recorded end may name
_REPORTS = frozenset({"completed", "failed", "released", "nothing"})


@dataclass(frozen=True)
class Decided:
    """What an attempt's end decided to tell the task server: its report (a
    ``Report`` value), the result, and why (a give-back's reason)."""

    report: str
    result: TaskResult | None = None
    reason: str = ""


@dataclass(frozen=True)
class Leftover:
    """What a job's file says about a job no live attempt holds."""

    job_id: str
    task_id: str
    model: str | None
    tokens_in: int
    tokens_out: int
    #: the settle decided at the attempt's end; None: it died running
    end: Settle | None
    #: the report decided with it (None: none recorded, by a version before it)
    decided: Decided | None = None

    @property
    def reportable(self) -> bool:
        """Whether its decided end can be reported as it was decided: completed or
        failed, with the result recorded."""
        decided = self.decided
        return (
            decided is not None
            and decided.report in ("completed", "failed")
            and decided.result is not None
        )

    def settlement(self) -> Settle:
        """The settle to make: the decided one, else a failure's for what was used."""
        if self.end is not None:
            return self.end
        return (self.tokens_in, self.tokens_out, QuotaEvent.JOB_FAILED, self.model, self.task_id)


class JobJournal:
    """One job's file, held (``flock``) while its attempt lives."""

    def __init__(
        self,
        path: Path,
        task: Task,
        on_error: Callable[[str, Exception], None],
        recovered: list[tuple[str, int, int]] | None = None,
    ) -> None:
        self.path = path
        self._task = task
        self._error = on_error
        #: (model, tokens in, tokens out) recorded by an earlier run of this job
        self.recovered = recovered or []
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._closed = False  # closed or failed: nothing more is written
        self._ended = False  # the end is recorded

    def open_existing(self) -> bool:
        """Take the file an earlier run left (for a resumed job); False when another
        live process holds it (the error is reported; this run keeps no file)."""
        with self._lock:
            return self._open()

    @property
    def command_path(self) -> Path:
        """Where the job's command appends its usage (see :meth:`command_file`)."""
        return _command_path(self.path)

    def command_file(self) -> Path | None:
        """The job's command's usage file (its ``$AGENTIC_USAGE_FILE``), beside the
        job's file, which is opened now (header written, lock held) so a restart
        finds both. None when the job's file cannot be held (reported): the command
        then writes where no restart looks, as without a state directory."""
        with self._lock:
            if self._closed or not self._open():
                return None
            try:
                if self.command_path.exists() and not _ends_a_line(self.command_path):
                    # An earlier run's command was cut mid-line: this one starts afresh.
                    with self.command_path.open("a", encoding="utf-8") as file:
                        file.write("\n")
            except OSError as exc:
                self._fail("could not be written", exc)
                return None
        return self.command_path

    def usage(self, model: str, tokens_in: int, tokens_out: int) -> None:
        """Append one usage report (creating the file at the first)."""
        self._write({"model": model, "tokens_in": tokens_in, "tokens_out": tokens_out})

    def end(self, settle: Settle, decided: Decided | None = None, *, always: bool = False) -> None:
        """Record the settle and the report decided at the attempt's end, once: when
        anything was written (else a restart needs nothing), or ``always`` (its
        report has not landed: a restart must know the job ended, and how). Without
        ``decided`` a restart gives the task back rather than report it."""
        tokens_in, tokens_out, event, model, task_id = settle
        with self._lock:
            if self._ended or (self._file is None and not always):
                return
            self._ended = True
        entry: dict[str, Any] = {
            "end": event.value if event is not None else _UNRESERVE,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "model": model,
            "task": task_id,
        }
        if decided is not None:
            result = decided.result
            entry["report"], entry["reason"] = decided.report, decided.reason
            entry["result"] = result.model_dump(mode="json") if result is not None else None
        self._write(entry)

    def close(self) -> None:
        """Let go of the file (kept on disk until its settle lands)."""
        with self._lock:
            self._closed = True
            self._drop()

    def _drop(self) -> None:
        """Close the file (lock held), dropping the flock; never raises: what could
        not be written is already reported, and the attempt must end whatever
        the disk does."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if self._closed or (self._file is None and not self._open()):
                return
            assert self._file is not None
            try:
                self._file.write(json.dumps(entry) + "\n")
                self._file.flush()
            except OSError as exc:
                self._fail("could not be written", exc)

    def _open(self) -> bool:
        """Open and lock the file, writing its header when new (lock held)."""
        if self._file is not None:
            return True
        try:
            _make_private(self.path.parent)
            file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            self._fail("could not be opened", exc)
            return False
        try:
            _lock_within(file, _LISTING_WAIT)
        except OSError as exc:
            file.close()
            self._fail(
                "is held by another live process (a second runner with this agent id on"
                " this machine?)",
                exc,
            )
            return False
        self._file = file
        try:
            if file.tell() == 0:
                task = self._task
                header = {"job": task.job_id, "task": task.id, "model": task.model or None}
                file.write(json.dumps(header) + "\n")
            elif not _ends_a_line(self.path):
                file.write("\n")  # an earlier run's last line was cut: start afresh
            # Now, not with the first usage: a command given its usage file writes
            # none here, and a restart takes a file without a header for an empty one.
            file.flush()
        except OSError as exc:
            self._fail("could not be written", exc)
            return False
        return True

    def _fail(self, what: str, exc: Exception) -> None:
        # Once per job: the tokens are still settled from memory at the attempt's end,
        # only a crash before then would lose them.
        self._closed = True
        self._drop()
        self._error(f"task {self._task.id}: the usage file {self.path} {what}", exc)


class UsageJournal:
    """The job files of one agent id on this machine."""

    def __init__(
        self,
        state_dir: Path,
        agent_id: str,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.directory = state_dir / "usage" / _file_name(agent_id)
        self._error = on_error or _log_error

    def check(self) -> None:
        """Create the directory now; OSError when it cannot be (read-only, a file), or
        when another user may change what is in it (see :func:`_require_own`)."""
        _make_private(self.directory)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.directory} is not writable")
        _require_own(self.directory)
        _require_own(self.directory.parent)  # usage/
        _require_own(self.directory.parent.parent, owned=False)  # the state_dir

    def job(self, task: Task, on_error: Callable[[str, Exception], None]) -> JobJournal:
        """The journal of ``task``'s job; an earlier run's usage comes with it."""
        path = self._path(task.job_id)
        if not path.exists():
            return JobJournal(path, task, on_error)
        try:
            leftover = _read(path)
        except Exception as exc:  # garbage: this run's own lines still go after it
            on_error(f"task {task.id}: an earlier run's usage file {path} cannot be read", exc)
            leftover = None
        recovered = [] if leftover is None else leftover[1]
        journal = JobJournal(path, task, on_error, recovered)
        journal.open_existing()
        return journal

    def leftovers(self, tidy: bool = True, held: list[str] | None = None) -> list[Leftover]:
        """The files no live attempt holds, each read under its lock. One that cannot
        be read is moved aside (``.bad``), one too old to settle again safely
        (``.stale``), each said: neither stops a start. Without ``tidy`` (a dry run)
        nothing is moved or removed, only said. The job ids of the files skipped as
        held (by a live attempt, or by another listing reading them) go to ``held``."""
        try:
            paths = sorted(self.directory.glob("*.jsonl"))
        except OSError as exc:
            self._error(f"cannot list the job usage files in {self.directory}", exc)
            return []
        found = []
        for path in paths:
            with _try_lock(path) as locked:
                if not locked:
                    # a live attempt (here or in another process) holds it, or
                    # another listing for the moment of its read
                    if held is not None:
                        held.append(unquote(path.name.removesuffix(".jsonl")))
                    continue
                try:
                    read = _read(path)
                except Exception as exc:  # garbage a later edit or a bug left
                    self._aside(path, ".bad", "cannot be read: not charged", exc, tidy)
                    continue
                if read is None:
                    # No header: nothing was recorded (it is written before a command
                    # is given its file).
                    if tidy:
                        _command_path(path).unlink(missing_ok=True)
                        path.unlink(missing_ok=True)
                    continue
                if read[0].end is not None and _age(path) > _SETTLE_AGAIN_WITHIN:
                    # Its settle may have landed (it was decided) and the quota store
                    # remembers settled jobs for 7 days only: settling it again now
                    # could charge it twice.
                    why = "is older than 6 days: not settled again"
                    self._aside(path, ".stale", why, None, tidy)
                    continue
            found.append(read[0])
        return found

    def discard(self, job_id: str) -> None:
        """Remove a job's file: its settle landed (or can never land). Never raises:
        the settle is done; a file left is only settled again as a duplicate."""
        path = self._path(job_id)
        try:
            # The command's first: a job file left alone is settled again as a
            # duplicate, a command file left alone would never be found.
            _command_path(path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        except OSError as exc:
            self._error(f"job {job_id}: its usage file could not be removed", exc)

    @contextlib.contextmanager
    def held(self, job_id: str) -> Iterator[Leftover | None]:
        """The job's file read again under its lock, held until the block ends (a
        listing skips it meanwhile); None when it is gone (its settle landed), held
        by another, or unreadable (the next listing says so)."""
        path = self._path(job_id)
        with _try_lock(path) as locked:
            read = None
            if locked:
                with contextlib.suppress(Exception):
                    read = _read(path)
            yield None if read is None else read[0]

    def has(self, job_id: str) -> bool:
        """Whether the job's file is still there (its settle has not landed)."""
        return self._path(job_id).exists()

    def _aside(self, path: Path, suffix: str, why: str, exc: Exception | None, move: bool) -> None:
        """Move the file (and its command's) aside with ``suffix``, and say why."""
        if not move:
            why += f" (would be moved aside, {suffix})"
        else:
            why += f" (moved aside, {suffix})"
            try:
                command = _command_path(path)
                if command.exists():
                    command.rename(command.with_name(command.name + suffix))
                path.rename(path.with_name(path.name + suffix))
            except OSError as rename_error:
                exc = exc or rename_error
        self._error(f"the job usage file {path} {why}", exc or ValueError(why))

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{quote(job_id, safe='')}.jsonl"


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    try:
        file = path.open("r", encoding="utf-8")
    except OSError:
        yield False
        return
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def _lock_within(file: IO[str], wait: float) -> None:
    """Lock ``file`` (``flock``), waiting up to ``wait`` seconds while another holds
    it: a listing holds each file only while it reads it; OSError after that."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
        else:
            return
        time.sleep(0.005)


def _file_name(agent_id: str) -> str:
    """``agent_id`` as one directory name: quoted, so no ``/`` leaves the usage
    directory, and ``.`` or ``..`` (ids an ``AgentRunner`` accepts) spelt ``%2E``, so
    neither names the usage directory itself or the state_dir (unquote gives it back)."""
    quoted = quote(agent_id, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _make_private(directory: Path) -> None:
    """Make ``directory`` and each missing parent readable and writable by this user
    only (``mkdir(parents=True)`` gives the parents the umask's mode: 0775 under
    umask 002, which :func:`_require_own` would then refuse). Existing ones are left
    as they are."""
    for level in [*reversed(directory.parents), directory]:
        if not level.is_dir():
            level.mkdir(mode=0o700, exist_ok=True)


def _require_own(directory: Path, *, owned: bool = True) -> None:
    """PermissionError unless no one else may write in ``directory`` (one with the
    sticky bit, such as /tmp, is fine) and, if ``owned``, it is this user's. Job files
    are opened by name: another user who could put a link there would have a runner
    append to, or settle from, a file of their choosing (a state_dir in a shared
    place)."""
    status = directory.stat()
    if owned and status.st_uid != os.getuid():
        raise PermissionError(
            f"{directory} belongs to another user (uid {status.st_uid}): use a directory"
            " of your own for job usage files"
        )
    if status.st_mode & 0o022 and not status.st_mode & 0o1000:
        raise PermissionError(
            f"other users may write in {directory} (mode {status.st_mode & 0o7777:04o}):"
            f" chmod go-w {directory}, or use a directory of your own"
        )


def _command_path(path: Path) -> Path:
    return path.with_name(path.name + _COMMAND)


def _read(path: Path) -> tuple[Leftover, list[tuple[str, int, int]]] | None:
    """The job's leftover and its usage lines, its command's included; None without
    a readable header. A last line cut short by the kill is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    if not entries or not isinstance(entries[0].get("job"), str):
        return None
    header, rest = entries[0], entries[1:]
    task_id, model = str(header.get("task", "")), header.get("model")
    usage: list[tuple[str, int, int]] = []
    end: Settle | None = None
    decided: Decided | None = None
    for entry in rest:
        tokens = (_count(entry.get("tokens_in")), _count(entry.get("tokens_out")))
        if "end" in entry:
            kind = entry["end"]
            if not isinstance(kind, str) or (kind != _UNRESERVE and kind not in set(QuotaEvent)):
                continue  # not written by this version: settled as a failure instead
            event = None if kind == _UNRESERVE else QuotaEvent(kind)
            model_ended = entry.get("model")
            end = (*tokens, event, model_ended if isinstance(model_ended, str) else None, task_id)
            decided = _decided(entry)
        else:
            usage.append((str(entry.get("model", "")), *tokens))
    default_model = model if isinstance(model, str) and model else None
    usage += _command_usage(_command_path(path), default_model or "")
    first_used = next((m for m, _, _ in usage if m), None)
    leftover = Leftover(
        job_id=header["job"],
        task_id=task_id,
        model=default_model or first_used,
        tokens_in=sum(u[1] for u in usage),
        tokens_out=sum(u[2] for u in usage),
        end=end,
        decided=decided,
    )
    return leftover, usage


def _decided(entry: dict[str, Any]) -> Decided | None:
    """The report an end line records; None when it records none this version
    reads (then the job is given back, not reported)."""
    report, reason = entry.get("report"), entry.get("reason")
    if report not in _REPORTS:
        return None
    result = None
    if entry.get("result") is not None:
        with contextlib.suppress(ValidationError):
            result = TaskResult.model_validate(entry["result"])
    return Decided(str(report), result, reason if isinstance(reason, str) else "")


def _command_usage(path: Path, default_model: str) -> list[tuple[str, int, int]]:
    """The usage lines of a job's command file, read as the runner reads them when
    the command has ended: a last line without a newline counts when it is whole
    (the command is gone, it will not finish it), a line cut mid-way is no JSON and
    is skipped, as are lines the runner said it ignored."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []  # the command reported nothing
    found = []
    for line in text.splitlines():
        used = usage_line(line, default_model) if line.strip() else ""
        if not isinstance(used, str):
            found.append(used)
    return found


def usage_line(line: str, default_model: str) -> tuple[str, int, int] | str:
    """One line of a command's usage file as (model, tokens in, tokens out), or what
    is wrong with it; ``model`` defaults to ``default_model`` (the task's)."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError) as exc:  # the latter: nested too deep
        return f"not JSON ({exc})"
    if not isinstance(entry, dict):
        return "not a JSON object"
    model = entry.get("model", default_model)
    if not isinstance(model, str):
        return "model must be a string"
    tokens_in, tokens_out = entry.get("tokens_in", 0), entry.get("tokens_out", 0)
    problem = bad_tokens(tokens_in, tokens_out)
    return problem or (model, tokens_in, tokens_out)


def bad_tokens(tokens_in: object, tokens_out: object) -> str:
    """What is wrong with a usage report's token counts ("" when nothing)."""
    for name, value in (("tokens_in", tokens_in), ("tokens_out", tokens_out)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name} must be an integer >= 0, got {value!r}"
    return ""


def _ends_a_line(path: Path) -> bool:
    """Whether the file's last byte ends a line (or it is empty)."""
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _age(path: Path) -> float:
    return time.time() - path.stat().st_mtime


def _log_error(what: str, exc: Exception) -> None:
    log.warning("%s: %s", what, exc)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
