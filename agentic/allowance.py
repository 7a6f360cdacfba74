"""AllowanceService: quota checks, reservations and usage reports, with events.

The store does the arithmetic atomically (see :mod:`agentic.stores.base`); this
service adds what callers want around it:

* ``check`` is read-only: no side effects, no events (go-agentic's defect 12).
* ``reserve`` / ``settle`` emit ``quota_warning`` and ``quota_exceeded`` exactly when
  an operation moves the agent's status across 80% / 100% of the tokens used (or
  starts its last job of the day; tokens reserved count for admission, not for the
  status, so estimates crossing and falling back raise nothing). The store reports the
  status before and after each atomic step, so a crossing is seen by exactly one
  caller even with many dispatchers, and a new day starts a new crossing: once per
  crossing per period, without extra state. A store opened with
  ``record_events=True`` records them itself, in the same atomic step, under the
  same ids (:func:`~agentic.events.crossing_id`): the event log keeps one.
* ``settle`` emits ``usage_recorded`` (not for a duplicate report).
* ``record_usage`` keeps go-agentic's entry point: job_started reserves,
  job_completed / job_failed / job_cancelled settle.
* An unreachable store fails closed by default: :class:`StoreUnavailableError` with a
  message saying work is refused. With ``fail_open=True`` checks and reservations
  pass (logged and counted in ``store_failures``) and settles are dropped with an
  error log, for teams that prefer availability over the cap.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import StoreError, StoreLostError, StoreUnavailableError
from .events import Event, EventEmitter
from .models import (
    AllowanceStatus,
    QuotaCheckResult,
    QuotaEvent,
    Reservation,
    Settlement,
    UsageRecord,
    UsageReport,
)
from .quota import Step, crossing_events, usage_recorded
from .stores.base import AllowanceStore

__all__ = ["AllowanceService"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: the steps that admit work: a store failure in one refuses work (fails closed)
_ADMITTING = frozenset({"check", "reserve", "usages"})


class AllowanceService:
    """Quota enforcement over an :class:`AllowanceStore`."""

    def __init__(
        self,
        store: AllowanceStore,
        emitter: EventEmitter | None = None,
        fail_open: bool = False,
    ) -> None:
        self.store = store
        self.emitter = emitter
        self.fail_open = fail_open
        self._lock = threading.Lock()
        #: store calls that failed (each is logged too)
        self.store_failures = 0
        #: events the emitter refused (each is logged too)
        self.emit_failures = 0

    # --- queries ---
    def check(self, agent_id: str, model: str = "", tokens: int = 0) -> QuotaCheckResult:
        """Would a job of ``tokens`` on ``model`` be admitted now? No side effects."""
        failing_open = QuotaCheckResult(
            allowed=True, status=AllowanceStatus.OK, reason="quota store unreachable: failing open"
        )
        return self._guarded(
            "check", lambda: self.store.check(agent_id, model, tokens), failing_open
        )

    def active_jobs(self) -> dict[str, int]:
        """Jobs holding a reservation, per agent: claimed (or about to be), not settled.

        Empty only when failing open with the store down.
        """
        none: list[UsageRecord] = []
        usages = self._guarded("usages", self.store.usages, none)
        return {usage.agent_id: usage.active_jobs for usage in usages}

    # --- operations ---
    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        """Hold quota for one job (of task ``task_id``, when known: its threshold
        events name it), or raise :class:`QuotaExceededError`."""
        try:
            # task_id only when known: a store written before it existed still reserves.
            named = {"task_id": task_id} if task_id else {}
            reservation = self.store.reserve(agent_id, model, tokens, job_id, **named)
        except StoreError as exc:
            self._store_failed("reserve", exc)
            return Reservation(job_id=job_id, agent_id=agent_id, model=model, tokens=tokens)
        self._crossing(
            "reserve",
            job_id,
            agent_id,
            model,
            reservation.previous_status,
            reservation.status,
            task_id,
        )
        return reservation

    def settle(
        self,
        job_id: str,
        tokens_in: int,
        tokens_out: int,
        outcome: QuotaEvent,
        agent_id: str | None = None,
        model: str | None = None,
        task_id: str = "",
    ) -> Settlement | None:
        """Charge a finished job (of task ``task_id``, when known: its usage event names
        it); ``None`` only when failing open with the store down."""
        try:
            # task_id only when known: a store written before it existed still settles
            # go-agentic's usage reports.
            named = {"task_id": task_id} if task_id else {}
            settlement = self.store.settle(
                job_id, tokens_in, tokens_out, outcome, agent_id=agent_id, model=model, **named
            )
        except StoreError as exc:
            self._store_failed("settle", exc)
            return None
        total = tokens_in + tokens_out
        if settlement.duplicate and total > 0:
            # The first settlement stands. The same end again (a restarted runner
            # settling what its predecessor's file recorded, after that settle had
            # landed) charged what this one would: nothing is lost, no warning. Another
            # is said: these tokens are not charged.
            replayed = settlement.outcome == outcome and settlement.tokens_charged in (
                total,
                total - total // 2,
            )
            log.log(
                logging.INFO if replayed else logging.WARNING,
                "job %s was settled already%s; %d tokens reported again are not charged",
                job_id,
                " with the same end" if replayed else "",
                total,
            )
        if not settlement.duplicate:
            # The id the quota store records it under, when it does: the log keeps one.
            self._send(usage_recorded(settlement, tokens_in, tokens_out, task_id=task_id))
            self._crossing(
                "settle",
                job_id,
                settlement.agent_id,
                settlement.model,
                settlement.previous_status,
                settlement.status,
                task_id,
            )
        return settlement

    def unreserve(self, job_id: str) -> Settlement | None:
        """Undo the reservation of a job that never started (its claim was lost).

        No event: nothing was used, and giving quota back crosses no threshold.
        ``None`` only when failing open with the store down.
        """
        return self._guarded("unreserve", functools.partial(self.store.unreserve, job_id), None)

    def withdraw(self, job_id: str) -> Settlement | None:
        """Take back a reservation whose reserve raised a store error (a timeout): it
        may have been made, or may still be on its way. Held, it is undone as by
        :meth:`unreserve`; held or not, a reserve of that job id arriving later is
        refused. Repeating it is harmless. No event. ``None`` only when failing open
        with the store down."""
        return self._guarded("withdraw", functools.partial(self.store.withdraw, job_id), None)

    def expire(self, job_id: str) -> Settlement | None:
        """End a reservation now, as its expiry would (a dead attempt's): the job stays
        counted, and a settle that comes later still charges. ``None`` only when
        failing open with the store down."""
        return self._guarded("expire", functools.partial(self.store.expire, job_id), None)

    def extend(self, job_id: str) -> Reservation | None:
        """Keep a running job's reservation alive: its expiry becomes now plus the
        lifetime it was reserved with (never earlier). :class:`NotFoundError` when it
        is gone (ended, or expired); no event. ``None`` only when failing open with the
        store down."""
        return self._guarded("extend", functools.partial(self.store.extend, job_id), None)

    def record_usage(self, report: UsageReport) -> Reservation | Settlement | None:
        """go-agentic's entry point: started reserves, the final events settle."""
        if report.event is QuotaEvent.JOB_STARTED:
            return self.reserve(
                report.agent_id,
                report.model,
                report.tokens_in + report.tokens_out,
                report.job_id,
            )
        return self.settle(
            report.job_id,
            report.tokens_in,
            report.tokens_out,
            report.event,
            agent_id=report.agent_id,
            model=report.model,
        )

    def reset_agent(self, agent_id: str) -> None:
        """Zero the agent's usage for the current period."""
        self.store.reset_usage(agent_id)

    # --- internals ---
    def _guarded(self, operation: str, call: Callable[[], T], failing_open: T) -> T:
        """``call()``; on a store failure, fail closed (raise) or answer ``failing_open``."""
        try:
            return call()
        except StoreError as exc:
            self._store_failed(operation, exc)
            return failing_open

    def _store_failed(self, operation: str, exc: StoreError) -> None:
        with self._lock:
            self.store_failures += 1
        # A store emptied under this process does not come back by waiting, as an
        # unreachable one does: failing open would admit work unmetered for good.
        lost = isinstance(exc, StoreLostError)
        if not self.fail_open or lost:
            if operation not in _ADMITTING or lost:  # no advice: fail_open is no fix here
                raise StoreUnavailableError(
                    f"quota store failed during {operation}: {exc}"
                ) from exc
            raise StoreUnavailableError(
                f"quota store failed during {operation} ({exc}); refusing work because the"
                " service fails closed. Fix the store, or set dispatcher.fail_open to accept"
                " work without quota enforcement"
            ) from exc
        log.error("quota store failed during %s; failing open: %s", operation, exc)

    def _crossing(
        self,
        step: Step,
        job_id: str,
        agent_id: str,
        model: str,
        before: AllowanceStatus,
        after: AllowanceStatus,
        task_id: str = "",
    ) -> None:
        # The ids the quota store records them under, when it does: the log keeps one.
        for event in crossing_events(step, job_id, agent_id, model, before, after, task_id=task_id):
            self._send(event)

    def _send(self, event: Event) -> None:
        if self.emitter is None:
            return
        try:
            self.emitter.emit(event)
        except Exception:
            # The quota step already happened; a failing emitter must not make it look
            # failed to the caller (that would leak the reservation).
            with self._lock:
                self.emit_failures += 1
            log.exception("event emitter failed on %s", event.type.value)
