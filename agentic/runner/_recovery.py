"""Settling what an earlier process of this agent left unsettled (see ``_journal``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..client import TaskClient
from ..errors import AgenticError, NotFoundError
from ..models import Task, TaskStatus
from ._attempt import Report
from ._journal import Leftover, UsageJournal
from ._reporting import Reporter

__all__ = ["Recovery", "Settled"]

log = logging.getLogger("agentic.runner")


@dataclass(frozen=True)
class Settled:
    """What became (in a dry run: would become) of one job a runner left."""

    left: Leftover
    #: "release": its task was still this agent's claim under the job id, given back
    #: and then settled; "report": so claimed and its end decided with a result,
    #: settled and reported as decided; "settle": settled; "unknown": the task API
    #: could not tell whether it is still claimed (or does not know the task: another
    #: store's), so it was left for another time
    action: Literal["release", "report", "settle", "unknown"]
    #: its file is gone: the settle landed (or was refused for good, said)
    done: bool


class Recovery:
    """The jobs an earlier process of this agent left in its usage files.

    A job still claimed by this agent under its job id waits: one that died running
    is run again (:meth:`take`: its recorded tokens join the new run's), one whose
    end was decided is reported as decided, with the result it recorded
    (:meth:`report_decided`: its handler ran to its end; a task is not run twice),
    or, recorded without one (a version before it), given back: a rerun under the
    same job id would settle as a duplicate and its tokens would go uncharged. Any other
    is settled as its file says, tried once a round (a failure joins the reporter's
    unsettled jobs, retried with each heartbeat), so a quota store that is down at
    start delays nothing.
    """

    def __init__(
        self,
        journal: UsageJournal,
        agent_id: str,
        client: TaskClient,
        reporter: Reporter,
        on_error: Callable[[str, Exception], None],
    ) -> None:
        self.journal = journal
        self.agent_id = agent_id
        self.client = client
        self.reporter = reporter
        self._error = on_error
        self._lock = threading.Lock()
        self._left: dict[str, Leftover] = {}
        # One per find whose listing is under way: job id -> what was done to it since
        # the listing began (None: taken; else put back), which its listing is too old
        # to know.
        self._reading: list[dict[str, Leftover | None]] = []
        self._foreign: set[str] = set()  # jobs whose task the task API does not know

    def find(self, tidy: bool = True) -> None:
        """Read the files no live attempt holds (once the agent id is this runner's:
        one waiting for it must not touch the live runner's files); without
        ``tidy`` (a dry run) none is moved aside.

        Merged, not copied: a job taken since the listing began (settled and its file
        removed by a round, say) is not put back from a listing read before, one
        put back since stays, and one whose file another listing was reading (so
        skipped here) stays as it was."""
        since: dict[str, Leftover | None] = {}
        with self._lock:
            self._reading.append(since)
        found: list[Leftover] | None = None
        held: list[str] = []
        try:
            found = self.journal.leftovers(tidy, held)
        finally:
            with self._lock:
                self._reading = [other for other in self._reading if other is not since]
                if found is not None:
                    left = {job.job_id: job for job in found}
                    for job_id in held:  # read by another listing meanwhile: as it was
                        if job_id in self._left:
                            left.setdefault(job_id, self._left[job_id])
                    for job_id, kept in since.items():
                        if kept is None:
                            left.pop(job_id, None)
                        else:
                            left[job_id] = kept
                    self._left = left

    @property
    def pending(self) -> bool:
        """Whether any job is still to settle."""
        with self._lock:
            return bool(self._left)

    def decided(self, job_id: str) -> Leftover | None:
        """What ``job_id``'s earlier run left, when its end was decided."""
        with self._lock:
            left = self._left.get(job_id)
        return left if left is not None and left.end is not None else None

    def report_decided(self, task: Task, left: Leftover) -> Report | None:
        """Report ``left``'s decided end for ``task`` (see ``Reporter.report_decided``):
        the report when it landed; else None, and the job waits for the next try."""
        if left.decided is None or self.take(left.job_id) is None:
            return None  # taken up meanwhile
        with self.journal.held(left.job_id):  # no listing reads it meanwhile
            report = self.reporter.report_decided(task, left.settlement(), left.decided)
        if report is None:
            self.keep(left)
        elif report is not Report.RELEASED:  # given back: its refusal is said already
            log.info(
                "task %s: %s as an earlier run of job %s decided (its report had not landed)",
                task.id,
                report.value,
                left.job_id,
            )
        return report

    def take(self, job_id: str) -> Leftover | None:
        """Hand ``job_id`` over to a new run (or a give-back that settles it)."""
        with self._lock:
            self._since(job_id, None)
            return self._left.pop(job_id, None)

    def keep(self, left: Leftover) -> None:
        """Put back a job taken for a give-back that did not land."""
        with self._lock:
            self._since(left.job_id, self._left.setdefault(left.job_id, left))

    def _since(self, job_id: str, left: Leftover | None) -> None:
        """Tell each listing under way what became of ``job_id`` (lock held)."""
        for since in self._reading:
            since[job_id] = left

    def settle_round(self, running: Callable[[], set[str]]) -> None:
        """Settle each job whose claim is gone; ``running``: job ids of live attempts."""
        with self._lock:
            waiting = list(self._left.values())
        busy = running()
        for left in waiting:
            if left.job_id in busy:
                continue  # a run of it here
            try:
                if self._claim(left) is not None:
                    continue  # its claim is ours: the poll loop runs it or gives it back
            except _Unknown:
                continue  # asked again next round
            if self.take(left.job_id) is None:
                continue  # taken up by a new run meanwhile
            with self.journal.held(left.job_id) as now:
                # Read again under its lock, held while settling (no listing reads it
                # meanwhile): None when settled and removed since it was read.
                if now is not None:
                    self._settle(now)
                elif self.journal.has(left.job_id):
                    # Held by a listing meanwhile (a re-read in another thread or
                    # process): put back for the next round, not dropped unsettled.
                    self.keep(left)

    def settle_idle(self, dry_run: bool, renew: Callable[[], bool]) -> list[Settled]:
        """Settle every job found, for an agent id no runner runs (``agentic admin
        settle-usage``, holding the id's lease): a job whose task is still this
        agent's claim under its job id is settled and reported as decided when its
        end was decided with a result (its handler ran to its end: not run twice),
        else given back (pending again, no retry counted: the task did not fail, its
        runner is gone), then settled as its file says, as a runner's give-back of
        an earlier run's job is; any other is settled as its file says. A job that
        died running is so settled as failed for what it recorded, as for a lost
        lease: spent is spent. Each settle is
        tried once, a give-back's with the reporter's retries; what fails keeps its
        file. ``renew`` is called before each job: False (the id is another
        runner's now) stops. With ``dry_run`` nothing is given back or settled."""
        with self._lock:
            waiting = list(self._left.values())
        done: list[Settled] = []
        for left in waiting:
            if not renew():
                break
            try:
                task = self._claim(left)
            except _Unknown:
                done.append(Settled(left, "unknown", False))
                continue
            action: Literal["release", "report", "settle"] = "settle"
            if task is not None:
                action = "report" if left.reportable else "release"
            if not dry_run and self.take(left.job_id) is not None:
                if task is None:
                    self._settle(left)
                elif action == "report" and left.decided is not None:
                    self.reporter.report_decided(task, left.settlement(), left.decided)
                else:
                    reason = f"agent {self.agent_id} does not run: its job was settled for it"
                    self.reporter.give_back(task, reason, left.settlement())
            done.append(Settled(left, action, not dry_run and not self.journal.has(left.job_id)))
        return done

    def _settle(self, left: Leftover) -> None:
        log.info(
            "job %s (task %s): settling %d tokens an earlier run of agent %s recorded",
            left.job_id,
            left.task_id,
            left.tokens_in + left.tokens_out,
            self.agent_id,
        )
        self.reporter.end_job(left.job_id, left.settlement(), patient=False)

    def _claim(self, left: Leftover) -> Task | None:
        """The job's task when it is still claimed by this agent under its job id,
        else None. :class:`_Unknown` when the task API could not tell, or does not know
        the task (reported; asked again next round)."""
        try:
            task: Task = self.client.get_task(left.task_id)
        except NotFoundError as exc:
            # Tasks are never deleted: a task this task API does not know is another
            # store's (the same agent id run against another store from this machine,
            # found in a new-user trial). Its tokens are that store's to charge: the
            # file is kept for a runner of it, and said once.
            if left.job_id not in self._foreign:
                self._foreign.add(left.job_id)
                self._error(
                    f"job {left.job_id}: its task {left.task_id} is unknown to this task"
                    " API; its usage file (likely left by a run of this agent id against"
                    " another store) is kept, not settled here",
                    exc,
                )
            raise _Unknown from exc
        except AgenticError as exc:
            self._error(f"job {left.job_id}: reading task {left.task_id} failed", exc)
            raise _Unknown from exc
        ours = (
            task.status is TaskStatus.IN_PROGRESS
            and task.claimed_by == self.agent_id
            and task.job_id == left.job_id
        )
        return task if ours else None


class _Unknown(Exception):
    """The task API could not tell whether a job's task is still claimed."""
