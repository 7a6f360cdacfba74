"""Settling what an earlier process of this agent left unsettled (see ``_journal``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..client import TaskClient
from ..errors import AgenticError, NotFoundError
from ..models import Task, TaskStatus
from ._journal import Leftover, Settle, UsageJournal
from ._reporting import Reporter

__all__ = ["Recovery"]

log = logging.getLogger("agentic.runner")


class Recovery:
    """The jobs an earlier process of this agent left in its usage files.

    A job still claimed by this agent under its job id waits: one that died running
    is run again (:meth:`take`: its recorded tokens join the new run's), one whose
    end was decided is given back instead (:meth:`decided`): a rerun under the same
    job id would settle as a duplicate and its tokens would go uncharged. Any other
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

    def find(self) -> None:
        """Read the files no live attempt holds (once the agent id is this runner's:
        one waiting for it must not touch the live runner's files)."""
        found = {left.job_id: left for left in self.journal.leftovers()}
        with self._lock:
            self._left = found

    @property
    def pending(self) -> bool:
        """Whether any job is still to settle."""
        with self._lock:
            return bool(self._left)

    def decided(self, job_id: str) -> Settle | None:
        """The decided end of ``job_id``'s earlier run, if it has one."""
        with self._lock:
            left = self._left.get(job_id)
        return left.end if left is not None else None

    def take(self, job_id: str) -> Leftover | None:
        """Hand ``job_id`` over to a new run (or a give-back that settles it)."""
        with self._lock:
            return self._left.pop(job_id, None)

    def keep(self, left: Leftover) -> None:
        """Put back a job taken for a give-back that did not land."""
        with self._lock:
            self._left.setdefault(left.job_id, left)

    def settle_round(self, running: Callable[[], set[str]]) -> None:
        """Settle each job whose claim is gone; ``running``: job ids of live attempts."""
        with self._lock:
            waiting = list(self._left.values())
        busy = running()
        for left in waiting:
            if left.job_id in busy or self._still_ours(left) is not False:
                continue  # a run of it here, or its claim is ours (or unknown yet)
            if self.take(left.job_id) is None:
                continue  # taken up by a new run meanwhile
            log.info(
                "job %s (task %s): settling %d tokens an earlier run of agent %s recorded",
                left.job_id,
                left.task_id,
                left.tokens_in + left.tokens_out,
                self.agent_id,
            )
            self.reporter.end_job(left.job_id, left.settlement(), patient=False)

    def _still_ours(self, left: Leftover) -> bool | None:
        """Whether the job's task is still claimed by this agent under its job id;
        None when the task API could not tell (reported; asked again next round)."""
        try:
            task: Task = self.client.get_task(left.task_id)
        except NotFoundError:
            return False  # deleted: what was spent is settled
        except AgenticError as exc:
            self._error(f"job {left.job_id}: reading task {left.task_id} failed", exc)
            return None
        return (
            task.status is TaskStatus.IN_PROGRESS
            and task.claimed_by == self.agent_id
            and task.job_id == left.job_id
        )
