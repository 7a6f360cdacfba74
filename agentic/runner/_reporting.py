"""Settling an attempt's usage and reporting its end, telling blips from refusals."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from ..allowance import AllowanceService
from ..client import TaskClient
from ..errors import (
    AgenticError,
    APIError,
    ConflictError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from ..models import QuotaEvent, Task, TaskStatus
from ..retry import RetryPolicy, is_retryable, retry_after_of
from ._attempt import Attempt, Outcome, Report, attempt_key, bare, shrink
from ._journal import Decided, Settle, UsageJournal

__all__ = ["Reporter"]

log = logging.getLogger("agentic.runner")

#: settlements kept for another try, at most; past it a failed settle is dropped (logged)
_MAX_UNSETTLED = 10_000
#: 429 answers in a row a report waits out before counting them as failures
_MAX_REFUSALS = 30
T = TypeVar("T")


class Reporter:
    """Talks to the quota store and the task API at the end of an attempt.

    Errors that may pass (no answer, 5xx, 429, a store outage) are retried with
    ``policy``; each failure goes to ``on_error`` (logged and counted by the runner).
    """

    def __init__(
        self,
        agent_id: str,
        client: TaskClient,
        allowance: AllowanceService | None,
        policy: RetryPolicy,
        sleep: Callable[[float], object],
        on_error: Callable[[str, Exception], None],
        journal: UsageJournal | None = None,
        hurry: threading.Event | None = None,
    ) -> None:
        self.agent_id = agent_id
        #: the jobs' usage files, removed as their settles land
        self.journal = journal
        self.client = client
        self.allowance = allowance
        self.policy = policy
        self._sleep = sleep
        #: once set, a failed call is not retried (the runner is stopping at once)
        self._hurry = hurry or threading.Event()
        self._error = on_error
        #: settlements that failed every retry: job id -> the settle call's arguments
        #: (event None: give the reservation back whole, the job never started)
        self._unsettled: dict[str, Settle] = {}
        #: attempts' jobs whose report has not ended yet -> their decided settle and
        #: report: their usage files stay until the report lands (see report_ended)
        self._reporting: dict[str, tuple[Settle, Decided]] = {}
        self._unsettled_lock = threading.Lock()
        self._settling = threading.Lock()  # one settle_pending run at a time
        self._server_checked = False  # whether check_server had its answer

    def bound(self) -> float:
        """About the longest an attempt's end (its last log lines, its settle and its
        report) can spend waiting between retries."""
        return 3 * self.policy.max_retries * self.policy.cap

    def check_server(self) -> None:
        """Warn when the task API does not fence attempts: its runs are then guarded
        by the holder's agent id alone. Once answered; until then asked at each call
        (a server unreachable when the runner started is checked once it answers)."""
        if self._server_checked:
            return
        try:
            features = self.client.server_features()
        except AgenticError as exc:  # the poll loop reports an unreachable server
            log.debug("could not read the task API's features: %s", exc)
            return
        self._server_checked = True
        if "attempt_fencing" not in features:
            log.warning(
                "the task API at %s does not list attempt_fencing (an older agentic"
                " server, or go-agentic's): it ignores job ids, so a late report of an"
                " attempt whose task was claimed again may finish the new attempt."
                " Upgrade the server.",
                self.client.base_url,
            )

    def settle(self, attempt: Attempt, outcome: Outcome) -> None:
        """Charge what the attempt used under its claim's job id (if quota is on)."""
        ended = self.record(attempt, outcome)
        if ended is None:
            return
        job_id = attempt.task.job_id
        with self._unsettled_lock:
            self._reporting[job_id] = ended
        self.end_job(job_id, ended[0])

    def keep_end(self, attempt: Attempt, outcome: Outcome) -> None:
        """Write the end of an attempt whose handler ran to its end but which is not
        reported (the agent id lapsed meanwhile), neither settled nor reported: once
        the id is back (or at the agent's next start here) its task, still claimed, is
        reported as decided, not run again; its claim gone, it is settled so."""
        if outcome.report in (Report.COMPLETED, Report.FAILED):
            self.record(attempt, outcome)

    def record(self, attempt: Attempt, outcome: Outcome) -> tuple[Settle, Decided] | None:
        """Write the attempt's end to its job file, what a restart settles and
        reports; the settle and the report (None when no quota is kept)."""
        job_id = attempt.task.job_id
        if self.allowance is None or not job_id:
            return None
        tokens_in, tokens_out = attempt.ctx.settle_tokens()
        model = attempt.task.model or next(iter(attempt.ctx.models), "") or None
        event: QuotaEvent | None = outcome.report.quota_event
        if outcome.before_work and not tokens_in + tokens_out:
            # The agent could not start it (a missing command, a dirty workspace):
            # like a task given back unrun, the job is not counted. Else a broken
            # agent would use up its daily jobs on nothing, one give-back at a time.
            event = None
        elif event is QuotaEvent.JOB_CANCELLED and tokens_in + tokens_out:
            # Given back after spending (shutdown, or an agent error once the work was
            # done): those tokens were spent all the same, charged as for a failure.
            event = QuotaEvent.JOB_FAILED
        args = (tokens_in, tokens_out, event, model, attempt.task.id)
        decided = Decided(outcome.report.value, outcome.result, outcome.reason)
        if attempt.ctx.journal is not None:
            # A restart settles it so, and reports it so, should we die first: written
            # even when the job recorded no usage (about 70 us a job), so a process
            # killed while its report is on its way never runs the job again.
            attempt.ctx.journal.end(args, decided, always=True)
        return args, decided

    def end_job(self, job_id: str, args: Settle, patient: bool = True) -> None:
        """Settle (or, event None, give back whole) a job's reservation, retried (once
        only when not ``patient``); kept for later tries when the quota store stays
        down."""
        try:
            if patient:
                self.retrying(f"settling job {job_id}", lambda: self._settle_once(job_id, args))
            else:
                self._settle_once(job_id, args)
        except StoreError as exc:
            # Kept and tried again with each heartbeat (settles are idempotent): a
            # store outage must neither lose the tokens nor hold the slot for the
            # reservation's whole lifetime.
            with self._unsettled_lock:
                if len(self._unsettled) < _MAX_UNSETTLED:
                    self._unsettled[job_id] = args
                    kept = "; tried again with each heartbeat"
                else:
                    kept = f"; {_MAX_UNSETTLED} are waiting already, so this one is dropped"
            self._error(f"job {job_id} not settled yet{kept}", exc)
        except AgenticError as exc:  # refused for good (bad amounts, ...): no retry helps
            self._error(f"job {job_id} not settled; its reservation will expire", exc)
            self._forget(job_id)

    def _settle_once(self, job_id: str, args: Settle) -> None:
        if self.allowance is None:
            return
        tokens_in, tokens_out, event, model, task_id = args
        done: object = True
        if event is None:
            with contextlib.suppress(NotFoundError):  # gone already (expired): nothing held
                done = self.allowance.unreserve(job_id)
        else:
            done = self.allowance.settle(
                job_id,
                tokens_in,
                tokens_out,
                event,
                agent_id=self.agent_id,
                model=model,
                task_id=task_id,
            )
        if done is None:  # failing open: the service logged it; it is not settled
            raise StoreUnavailableError(f"quota store unavailable settling job {job_id}")
        self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        """The job's settle landed, or never will: its usage file goes, unless its
        attempt's report is still on its way (then report_ended removes it)."""
        with self._unsettled_lock:
            if job_id in self._reporting:
                return
        if self.journal is not None:
            self.journal.discard(job_id)

    def _report_ended(self, attempt: Attempt, undelivered: bool) -> None:
        """The attempt's report landed, or the task is no longer its claim, or
        (``undelivered``) the report was given up on: the task may then still be
        claimed under this job when the agent starts again, so the job's file stays,
        with its decided end (written at the settle), and that start reports it as
        decided instead of running it again."""
        job_id = attempt.task.job_id
        with self._unsettled_lock:
            ended = self._reporting.pop(job_id, None)
            unsettled = job_id in self._unsettled
        if ended is None or self.journal is None:
            return
        if not (undelivered or unsettled):
            self.journal.discard(job_id)

    def settle_pending(self, wait: bool = False) -> None:
        """Try once more each settlement that failed; keep those the store still
        refuses. One run at a time: without ``wait``, a call while one runs returns."""
        if self.allowance is None or not self._settling.acquire(blocking=wait):
            return
        try:
            with self._unsettled_lock:
                pending = list(self._unsettled.items())
            for job_id, args in pending:
                try:
                    self._settle_once(job_id, args)
                except StoreUnavailableError as exc:
                    self._error(f"job {job_id} still not settled (store unavailable)", exc)
                    return  # the store is down: the next heartbeat tries them all again
                except AgenticError as exc:
                    self._error(f"job {job_id} not settled; dropped, it will expire", exc)
                    self._forget(job_id)
                else:
                    log.info("job %s settled after all", job_id)
                with self._unsettled_lock:
                    self._unsettled.pop(job_id, None)
        finally:
            self._settling.release()

    @property
    def unsettled(self) -> int:
        """Settlements that failed and wait for the next try."""
        with self._unsettled_lock:
            return len(self._unsettled)

    def last_flush(self, attempt: Attempt) -> None:
        """Send the attempt's last log lines, retried like a report: after the report
        nothing would send them (a send whose answer was lost may show a line twice,
        never drop it). Each failure is logged and counted."""
        with contextlib.suppress(AgenticError):  # logged and counted; the report goes on
            self.retrying(f"task {attempt.task.id}: last log lines", attempt.ctx._send_logs)

    def report(self, attempt: Attempt, outcome: Outcome) -> bool:
        """Complete or release the task; True when the server took the report."""
        delivered = self._send_report(attempt, outcome)
        self._report_ended(attempt, undelivered=delivered is None)
        return bool(delivered)

    def _send_report(self, attempt: Attempt, outcome: Outcome) -> bool | None:
        """True: the report landed; False: none is due, or the task is no longer
        this attempt's; None: given up (the task API stayed down)."""
        task = attempt.task
        if outcome.report is Report.NOTHING:
            return False
        sent = False

        def send() -> bool:
            nonlocal sent
            # A retry after a lost answer must not repeat a report that landed: look
            # first, and resend only while this very claim is still in progress.
            if sent:
                current = self.client.get_task(task.id)
                if _landed(attempt, outcome.report, current, self.agent_id):
                    return True
                if not self._holds(attempt, current):
                    raise ConflictError(f"task {task.id} is no longer held by this attempt")
            sent = True
            # The claim's job id fences the report: should the task have been requeued
            # and claimed again (even by this agent), the server refuses it (409)
            # instead of letting this old attempt finish the new claim.
            try:
                if outcome.report is Report.RELEASED:
                    self.client.release_task(
                        task.id, agent_id=self.agent_id, job_id=task.job_id, reason=outcome.reason
                    )
                else:
                    self._complete(task, outcome)
            except AgenticError as exc:
                if _refused(exc):
                    sent = False  # refused before any work: nothing can have landed
                raise
            return True

        try:
            return self.retrying(
                f"the report of task {task.id} ({outcome.report.value})", send, attempt.holds_lease
            )
        except (ConflictError, NotFoundError) as exc:
            self._error(f"task {task.id}: not reported, it is no longer ours", exc)
        except AgenticError as exc:
            self._error(
                f"task {task.id}: giving up reporting; its lease will expire and the"
                " server will requeue it",
                exc,
            )
            return None
        return False

    def _complete(self, task: Task, outcome: Outcome) -> None:
        """Complete (or fail) the task; should the task API refuse the result as too
        large (413: a body limit below the 1 MiB results are clipped to), it is sent
        again cut to a few KiB, then with a one-line note only: refused, nothing
        landed, so each resend is safe."""
        result = outcome.result
        for smaller in (shrink(result), bare(result), None):
            try:
                self.client.complete_task(
                    task.id, result, agent_id=self.agent_id, job_id=task.job_id
                )
            except APIError as exc:
                if not (exc.from_response and exc.code == 413) or smaller is None:
                    raise
                self._error(f"task {task.id}: result refused as too large; sending it cut", exc)
                result = smaller
            else:
                return

    def report_decided(self, task: Task, settle: Settle, decided: Decided) -> Report | None:
        """Settle and report the end an earlier process of this agent decided for
        ``task``'s job, still this agent's claim under it (that process died before
        its report landed), as an attempt's end is: settled first, then completed or
        failed with the recorded result, fenced by the job id. Tried once: the task
        stays listed as ours, so the next poll tries again. Refused for good (a 4xx
        no repeat changes), it is given back instead, to run under a new job. The
        report that landed (RELEASED for that give-back), else None."""
        report = Report(decided.report)
        assert report in (Report.COMPLETED, Report.FAILED) and decided.result is not None
        job_id = task.job_id
        with self._unsettled_lock:
            self._reporting[job_id] = (settle, decided)  # the file stays until it lands
        landed: Report | None = None
        ended = True  # nothing is left to report (the file may go once settled)
        try:
            self.end_job(job_id, settle, patient=False)
            self._complete(task, Outcome(report, decided.result))
            landed = report
        except (ConflictError, NotFoundError) as exc:
            self._error(f"task {task.id}: an earlier run's end not reported, no longer ours", exc)
        except AgenticError as exc:
            self._error(f"task {task.id}: reporting an earlier run's end failed", exc)
            ended = False
            if not is_retryable(exc):  # the recorded end can never be reported
                why = f"the report of an earlier run of job {job_id} was refused ({exc})"
                ended = self.give_back(task, f"{why}; given back to run under a new job", settle)
                landed = Report.RELEASED if ended else None
        with self._unsettled_lock:
            self._reporting.pop(job_id, None)
            unsettled = job_id in self._unsettled
        if ended and not unsettled and self.journal is not None:
            self.journal.discard(job_id)
        return landed

    def give_back(self, task: Task, reason: str, ran: Settle | None = None) -> bool:
        """Release a claimed task that never ran here, then give its reservation back
        whole (the job never started, so it is not counted); ``ran``: it did run, in
        an earlier process of this agent, whose recorded end this is instead.

        Released first: while the release has not gone through the task is still ours
        and may yet run here, so its reservation must stay. Tried once: the task stays
        listed as ours, so the next poll tries again.
        """
        try:
            self.client.release_task(
                task.id, agent_id=self.agent_id, job_id=task.job_id, reason=reason
            )
        except AgenticError as exc:
            self._error(f"task {task.id}: could not give it back", exc)
            return False
        if self.allowance is not None and task.job_id:
            self.end_job(task.job_id, ran or (0, 0, None, None, task.id))
        return True

    def _holds(self, attempt: Attempt, current: Task) -> bool:
        return (
            current.status == TaskStatus.IN_PROGRESS
            and current.claimed_by == self.agent_id
            and attempt_key(current) == attempt.key
        )

    def retrying(
        self, what: str, call: Callable[[], T], hold: Callable[[], bool] | None = None
    ) -> T:
        """``call()``, retried with backoff while the error may pass; else raised.

        A 429 (the server refused before doing anything: over its rate limit) is
        waited out as the server asks and does not use up the retries, up to
        :data:`_MAX_REFUSALS` in a row: a busy server must not make finished work
        look lost. With ``hold``, an error that may pass is retried past the policy's
        retries for as long as ``hold()`` is true (a report, while the claim's lease
        may still hold: an outage shorter than the lease must not lose the work).
        Once the runner is hurried (a second signal) nothing is retried: the exit must
        not wait out an outage; the claim's lease and the job's usage file are how the
        work is found again."""
        failures = refusals = 0
        while True:
            try:
                return call()
            except (ConflictError, NotFoundError):
                raise
            except AgenticError as exc:
                refused = _refused(exc)
                refusals = refusals + 1 if refused else 0
                failures += 0 if refused else 1
                attempt = failures + refusals
                told = f"{what} failed (attempt {attempt})"
                if hold is not None and attempt % 10 == 1:
                    # Said now and then: a stopping runner waits here, and nothing
                    # else in its log says why it does not exit.
                    told += (
                        "; tried again while the task's lease holds (a stop waits for"
                        " it): a second signal, or stop(now=True), gives up, and the"
                        " task then runs again once its lease runs out, unless this"
                        " agent starts again first (it then reports it)"
                    )
                self._error(told, exc)
                if self._hurry.is_set():
                    raise
                if refused and refusals <= _MAX_REFUSALS:
                    self._sleep(self.policy.delay(max(1, failures), retry_after_of(exc)))
                    continue
                if not is_retryable(exc):
                    raise
                if not self.policy.should_retry(max(1, failures)) and not (hold and hold()):
                    raise
                self._sleep(self.policy.delay(failures, retry_after_of(exc)))


def _landed(attempt: Attempt, report: Report, current: Task, agent_id: str) -> bool:
    """Whether ``current`` shows that our earlier ``report`` reached the server.

    A failure is recognised by the one extra retry counted; a lease that expired at
    the same moment looks the same and means the same thing (one failure counted).
    """
    before = attempt.task
    if report is Report.COMPLETED:
        return current.status == TaskStatus.COMPLETED and current.claimed_by == agent_id
    if report is Report.FAILED:
        return current.retry_count == before.retry_count + 1
    same_claim = current.status == TaskStatus.IN_PROGRESS and attempt_key(current) == attempt.key
    return (
        report is Report.RELEASED and current.retry_count == before.retry_count and not same_claim
    )


def _refused(exc: AgenticError) -> bool:
    """A 429 from the task API: refused before any work (a rate limit, a batch out
    of time), so repeating it cannot do anything twice."""
    return isinstance(exc, APIError) and exc.from_response and exc.code == 429
