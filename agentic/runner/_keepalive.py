"""Keeping running jobs' quota reservations alive.

A reservation expires after the lifetime it was reserved with (the allowance's
``max_job_duration``, else the store's ``reservation_ttl``, an hour by default) so
that a crashed runner cannot hold a concurrency slot for ever. A job may run longer
than that (a coding agent runs for hours when no ``max_job_duration`` stops it): its
reservation would expire while it runs, freeing its slot and reserved tokens, and a
dispatcher would admit one job too many. So while an attempt runs, the runner extends
its job's reservation (:meth:`AllowanceService.extend
<agentic.allowance.AllowanceService.extend>`): first one heartbeat after the attempt
started (a job shorter than that never costs a call), then whenever a third of the
reservation's lifetime has passed since the last extension (learned from the answer:
its expiry minus now; about every 20 minutes with the defaults), so two extensions
in a row may fail before it expires.

The calls run off the heartbeat thread, one round at a time: a slow quota store must
not delay lease renewals. A store that fails is logged and counted, and the job is
tried again at the next heartbeat. A reservation that is gone (it expired, or a
dispatcher ended it after a lost lease) is said once per job, as a warning, and not
tried again: the slot was freed while the job runs; its usage is still charged when
it settles (the runner settles with its agent id, which charges after an expiry).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ..allowance import AllowanceService
from ..errors import AgenticError, NotFoundError
from ._attempt import Attempt, Stop

__all__ = ["Keepalive"]

log = logging.getLogger("agentic.runner")

# Attempts stopped for these reasons are no longer this runner's to keep: the lease
# was lost (a dispatcher ends the reservation), or another runner took (or, the id
# lease lapsed, may take) the agent id.
_NOT_OURS = (Stop.LOST, Stop.DISPLACED, Stop.LAPSED)


class Keepalive:
    """Extends the reservations of the attempts a runner is running, when due
    (nothing without an ``allowance``: no quotas, no reservations).

    ``first``: seconds after an attempt's start of its first extension, and the
    shortest time between two (the heartbeat interval). ``start(name, call)`` runs a
    round on another thread; ``on_error(what, exc)`` logs and counts an error.
    """

    def __init__(
        self,
        allowance: AllowanceService | None,
        first: float,
        start: Callable[[str, Callable[[], object]], object],
        on_error: Callable[[str, Exception], None],
    ) -> None:
        self._allowance = allowance
        self._first = first
        self._start = start
        self._on_error = on_error
        self._lock = threading.Lock()
        self._round = threading.Lock()  # held while a round runs: one at a time
        #: job id -> monotonic time of its next extension
        self._due: dict[str, float] = {}
        #: job ids whose reservation was found gone: said once, not tried again
        self._gone: set[str] = set()
        #: extensions that landed
        self.extended = 0

    def tick(self, attempts: Sequence[Attempt]) -> None:
        """Called with each heartbeat: start a round for the attempts that are due."""
        if self._allowance is None:
            return
        now = time.monotonic()
        due = []
        with self._lock:
            held = {a.task.job_id for a in attempts if a.task.job_id}
            # Jobs that ended are forgotten (job ids are never reused by a claim).
            self._due = {job: at for job, at in self._due.items() if job in held}
            self._gone &= held
            for attempt in attempts:
                job = attempt.task.job_id
                if not job or job in self._gone or not self._keeps(attempt):
                    continue
                if now >= self._due.setdefault(job, attempt.started + self._first):
                    due.append(attempt)
        if due and self._round.acquire(blocking=False):
            try:
                self._start("agentic-keepalive", lambda: self._extend_all(due))
            except BaseException:
                self._round.release()
                raise

    @staticmethod
    def _keeps(attempt: Attempt) -> bool:
        """Whether the attempt's reservation is this runner's to keep alive."""
        return not attempt.reporting and attempt.stop_kind not in _NOT_OURS

    def _extend_all(self, attempts: list[Attempt]) -> None:
        try:
            for attempt in attempts:
                try:
                    self._extend(attempt)
                except Exception as exc:  # a bug must not end the others' keepalive
                    self._on_error(f"task {attempt.task.id}: keeping its reservation failed", exc)
                    log.exception("reservation keepalive failed")
        finally:
            self._round.release()

    def _extend(self, attempt: Attempt) -> None:
        task = attempt.task
        job = task.job_id
        if self._allowance is None or not self._keeps(attempt):
            return  # settling or given up since the round was planned
        try:
            reservation = self._allowance.extend(job)
        except NotFoundError as exc:
            if not self._keeps(attempt):
                return  # it settled meanwhile: that ended the reservation
            with self._lock:
                self._gone.add(job)
                self._due.pop(job, None)
            self._on_error(
                f"task {task.id}: the quota reservation of job {job} is gone while the job"
                " runs (it expired, or a dispatcher ended it): its concurrency slot and"
                " reserved tokens were freed, so more jobs than the allowance permits may"
                " run meanwhile; its usage will still be charged when it settles",
                exc,
            )
            return
        except AgenticError as exc:  # a store outage (failing closed): next heartbeat
            self._on_error(
                f"task {task.id}: extending job {job}'s quota reservation failed; trying"
                " again at the next heartbeat",
                exc,
            )
            return
        if reservation is None:  # failing open, the store down: the service said it
            self._on_error(
                f"task {task.id}: job {job}'s quota reservation not extended",
                AgenticError("quota store unavailable; trying again at the next heartbeat"),
            )
            return
        left = reservation.expires_at.timestamp() - time.time() if reservation.expires_at else 0
        with self._lock:
            self.extended += 1
            if job in self._due:  # still running
                self._due[job] = time.monotonic() + max(self._first, left / 3)
