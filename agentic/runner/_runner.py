"""AgentRunner: the agent side of the fleet (see the package docstring for the rules)."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._bounds import require_seconds, require_up_to
from .._signals import StopFirst, stop_on_signals
from ..allowance import AllowanceService
from ..client import TaskClient
from ..config import HEARTBEAT_INTERVAL
from ..errors import AgenticError, ConfigError, ConflictError, NotFoundError
from ..events import Event, EventEmitter, EventType, transition_id
from ..models import AgentInfo, Task, TaskResult, TaskStatus
from ..retry import RetryPolicy, doubled
from ..stores.base import AgentRegistry
from ._allowed import Allowed
from ._attempt import (
    Attempt,
    Outcome,
    RenewalLength,
    Report,
    Stop,
    attempt_key,
    decide,
    describe,
)
from ._context import Handler, TaskContext, call_handler
from ._idlease import IdLease
from ._idwatch import IdWatch, runner_id_lease
from ._journal import UsageJournal, default_state_dir
from ._keepalive import Keepalive
from ._presence import Presence
from ._recovery import Recovery
from ._reporting import Reporter
from ._threads import Threads

__all__ = ["AgentRunner"]

log = logging.getLogger("agentic.runner")

# Attempts remembered after they end, so a task still listed as ours (the list was
# read before our report landed, or the report failed and the lease must expire) is
# never started twice.
_REMEMBERED = 10_000
# A change of load is published by a heartbeat at most this often (seconds): a busy
# agent starts and ends tasks every few milliseconds, and a beat per change cost a
# registry write per start and per end. Dispatchers count live reservations too.
_LOAD_BEAT_SPACING = 0.1
# Seconds of one long-poll for claimed tasks at most: how soon a stop is seen while
# waiting (a read blocks its thread until it is answered).
_WATCH_CHUNK = 2.0
# Agent errors in a row on one task after which it is failed, not given back again.
_MAX_AGENT_ERRORS = 3
# Seconds between looks at "displaced" while the poll loop waits out a backoff.
_DISPLACED_CHECK = 0.2
_EVENTS = {
    Report.COMPLETED: EventType.TASK_COMPLETED,
    Report.FAILED: EventType.TASK_FAILED,
    Report.RELEASED: EventType.TASK_REQUEUED,
}


class AgentRunner:
    """Registers an agent, runs the tasks claimed for it, reports and settles them."""

    def __init__(
        self,
        agent: AgentInfo | str,
        client: TaskClient,
        registry: AgentRegistry,
        handler: Handler,
        allowance: AllowanceService | None = None,
        *,
        capabilities: list[str] | None = None,
        max_load: int | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        poll_interval: float = 1.0,
        lease_seconds: float | None = None,
        max_job_duration: float | None = None,
        grace_period: float = 30.0,
        cancel_grace: float = 5.0,
        max_workers: int = 32,
        log_flush_interval: float = 0.5,
        report_retry: RetryPolicy | None = None,
        emitter: EventEmitter | None = None,
        sleep: Callable[[float], None] | None = None,
        id_lease: float | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(agent, AgentInfo):
            if capabilities is not None or max_load is not None:
                raise ConfigError("give capabilities and max_load in the AgentInfo, not twice")
            info = agent.model_copy(update={"current_load": 0})
        else:
            info = AgentInfo(
                id=agent,
                capabilities=list(capabilities or []),
                max_load=1 if max_load is None else max_load,
            )
        for said, seconds in (
            ("heartbeat_interval", heartbeat_interval),
            ("poll_interval", poll_interval),
            ("log_flush_interval", log_flush_interval),
            ("id_lease", id_lease),
            ("max_job_duration", max_job_duration),
            ("lease_seconds", lease_seconds),
        ):
            if seconds is not None:
                require_seconds(said, seconds)
        require_seconds("grace_period", grace_period, zero=True)
        require_seconds("cancel_grace", cancel_grace, zero=True)
        require_up_to("max_workers", max_workers, 10_000)
        if lease_seconds is not None and lease_seconds <= 2 * heartbeat_interval:
            # Renewal happens once per heartbeat; one late beat must not lose the lease.
            raise ConfigError(
                f"lease_seconds ({lease_seconds}) must exceed twice heartbeat_interval"
                f" ({heartbeat_interval}), or running tasks lose their lease"
            )
        self.info = info
        self.agent_id = info.id
        self.client = client
        self.registry = registry
        self.handler = handler
        self.allowance = allowance
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.grace_period = grace_period
        self.cancel_grace = cancel_grace
        self.log_flush_interval = log_flush_interval
        self.emitter = emitter
        #: each job's reported usage on disk, so a killed runner's tokens are charged
        #: when it starts again (with quotas on; see _journal)
        self.journal = (
            UsageJournal(
                Path(state_dir) if state_dir else default_state_dir(), info.id, self._error
            )
            if allowance is not None
            else None
        )
        self._state_dir_given = state_dir is not None
        # Set by a second signal (or stop(now=True)): the shutdown skips the grace
        # period, and reports and settles stop retrying (the leases and the usage files
        # cover what is left).
        self._hurry = threading.Event()
        # Stopping: published full until drained, then deregistered.
        self._draining, self._drained = threading.Event(), threading.Event()
        self.reporter = Reporter(
            info.id,
            client,
            allowance,
            report_retry or RetryPolicy(max_retries=5, base=0.5, cap=10.0),
            sleep or self._hurry.wait,
            self._error,
            self.journal,
            self._hurry,
        )
        #: what an earlier process of this agent left unsettled (None: no usage files)
        self.recovery = (
            Recovery(self.journal, info.id, client, self.reporter, self._error)
            if self.journal is not None
            else None
        )
        #: how many tasks may run at once (max_load, or max_workers when unlimited)
        self.capacity = info.max_load or max_workers
        #: errors seen (task API, registry, quota store, emitter), each one logged
        self.errors = 0
        self._errors_lock = threading.Lock()  # not _lock: errors are said while holding it
        #: attempts reported completed / failed / released to the task server
        self.completed = 0
        self.failed = 0
        self.released = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._attempts: dict[str, Attempt] = {}
        # Each attempt's supervisor and handler, on threads reused between attempts.
        self._threads = Threads("agentic-task")
        #: extends the running jobs' quota reservations, with the lease renewals
        self.keepalive = Keepalive(allowance, heartbeat_interval, self._threads.run, self._error)
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        #: job ids whose run here stopped unreported (lapsed), and why: said in the
        #: log header when the job runs again
        self._unreported: OrderedDict[str, str] = OrderedDict()
        # While paused (or lapsed) the agent is published full: dispatchers route elsewhere.
        self.presence = Presence(
            registry, info, lambda: self.load, self._error, self._no_work, self.capacity
        )
        #: waits after consecutive infrastructure errors (the agent cannot run tasks)
        self.infrastructure_backoff = RetryPolicy(base=2.0, cap=120.0, jitter="equal")
        self._infrastructure_failures = 0
        #: task id -> agent errors in a row on it here (oldest first, bounded)
        self._agent_errors: OrderedDict[str, int] = OrderedDict()
        self._paused_until = 0.0
        self._ran = False
        #: the allowance's max_job_duration and model allowlist, read at start and
        #: again every heartbeat_interval by the poll loop
        self.allowed = Allowed(allowance, info.id, max_job_duration)
        self._wake = threading.Event()
        self._maintenance_stop = threading.Event()
        self._own_stop = threading.Event()
        #: how long each renewal of a task's lease asks for
        self._lease_ttl = RenewalLength(lease_seconds, heartbeat_interval)
        self._thread: threading.Thread | None = None
        self._signals: StopFirst | None = None  # start()'s, when it handles signals
        #: the agent id's lease in the registry: one runner per agent id
        self._id = IdLease(
            registry, info.id, runner_id_lease(heartbeat_interval, id_lease, cancel_grace)
        )
        # Set (with the lock held) once another runner took the id lease.
        self._displaced = threading.Event()
        #: renews the id lease; lapses it (no work, attempts cancelled) before it runs out
        self.id_watch = IdWatch(
            self._id, cancel_grace, self._lock, on_error=self._error, cancel=self._cancel_running,
            resume=self._resume, displaced=self._on_displaced,
        )  # fmt: skip

    # --- public control ---
    @property
    def load(self) -> int:
        """Tasks this runner holds now (running or being reported)."""
        with self._lock:
            return len(self._attempts)

    @property
    def max_job_duration(self) -> float | None:
        """Seconds an attempt may run, the runner's own limit (None: none; the
        allowance's applies too, whichever is smaller)."""
        return self.allowed.max_job_duration

    @property
    def displaced_by(self) -> str | None:
        """The id lease holder (``host:pid:token``) that took this agent id from this
        runner, which then stopped without reporting its tasks; None otherwise."""
        return self._id.displaced_by

    @property
    def paused(self) -> bool:
        """Whether the agent takes no work now, after an infrastructure error."""
        return time.monotonic() < self._paused_until

    @property
    def lapsed(self) -> bool:
        """Whether the agent takes no work now, its id lease not renewed in time."""
        return self.id_watch.lapsing()

    def _no_work(self) -> bool:
        return self.paused or self.lapsed or self._draining.is_set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Work until ``stop`` is set (without one: until ``stop()``), or SIGTERM/SIGINT
        arrives in the main thread; then shut down: finish or give back every task
        held, and deregister."""
        if self._ran:
            raise ConfigError("a runner runs once; create a new one")
        self._ran = True
        stop = stop or self._own_stop
        self._open_journal()
        restore = stop_on_signals(stop, **self._signal_words())
        try:
            # One runner per agent id: wait while another one runs it.
            if not self._id.acquire(stop, self.heartbeat_interval, self._error):
                return
            try:
                self._work(stop)
            finally:
                self._id.release()  # a replacement may start at once (not if displaced)
        finally:
            restore()

    def _work(self, stop: threading.Event) -> None:
        """Register, work until ``stop`` (or displaced), shut down."""
        if not self.presence.register(stop, self.poll_interval):
            return
        # Registering may have taken longer than the id lease (a registry retried):
        # make sure the id is still ours before taking any work.
        if not self.id_watch.renew():
            return
        self._emit(EventType.AGENT_REGISTERED, None, {"max_load": self.info.max_load})
        log.info("agent %s registered (capacity %d)", self.agent_id, self.capacity)
        self.reporter.check_server()
        self.allowed.read(warn=True)
        if self.recovery is not None:
            # Before the first poll: a job found later could be run again already.
            self._guarded("reading an earlier run's job files", self.recovery.find)
        # Threads of their own: the registry and the task API are separate services,
        # so a task API that accepts connections but hangs (renewals, log flushes wait
        # out the client's timeout) must not delay the heartbeat that keeps the agent
        # alive in the registry, a slow registry must not delay renewals, and
        # settling an earlier run's jobs must delay neither.
        maintenance = [
            threading.Thread(target=target, name=f"{name}-{self.agent_id}", daemon=True)
            for target, name in (
                (self._beat, "agentic-heartbeat"),
                (self._keep, "agentic-leases"),
                (self._recovering, "agentic-recovery"),
                (self.id_watch.run, "agentic-idwatch"),
            )
        ]
        for thread in maintenance:
            thread.start()
        try:
            self._poll_loop(stop)
        finally:
            self._shutdown()
            self._maintenance_stop.set()
            self.id_watch.close()
            self._wake.set()
            for thread in maintenance:
                thread.join()

    def _signal_words(self) -> dict[str, Any]:
        return {
            "what": f"finishing held tasks (up to {self.grace_period:g} s), then stopping;"
            " a second signal gives them back at once",
            "hurry": self._hurry,
            "hurry_what": "skipping the grace period: running tasks are cancelled and"
            " given back now",
        }

    def start(self, *, signals: bool = True) -> None:
        """Run in a background thread; ``stop()`` ends it. Called from the main thread
        of a program that left SIGTERM / SIGINT at their defaults (and ``signals``),
        they stop the runner first, as in ``run``, then take their usual effect (the
        process ends; Ctrl-C raises KeyboardInterrupt)."""
        if self._thread is not None or self._own_stop.is_set():
            raise ConfigError("this runner was started or stopped already; create a new one")
        self._signals = StopFirst(self._own_stop, **self._signal_words()) if signals else None
        if self._signals is not None:
            self._signals.install()
        self._thread = threading.Thread(
            target=self._run_started, name="agentic-runner", daemon=True
        )
        self._thread.start()

    def _run_started(self) -> None:
        try:
            self.run(self._own_stop)
        finally:
            if self._signals is not None:
                self._signals.ended()

    def stop(self, timeout: float | None = None, *, now: bool = False) -> None:
        """Ask the runner to stop (unless ``run`` was given its own event); wait for the
        shutdown when it was started with ``start()``. ``now``: skip the grace period,
        cancel the running tasks and give them back at once (a second SIGTERM's way)."""
        if now:
            self._hurry.set()
        self._own_stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self._shutdown_bound())
            if self._signals is not None and not self._thread.is_alive():
                self._signals.restore()

    def _shutdown_bound(self) -> float:
        return self.grace_period + self.cancel_grace + self.reporter.bound() + 30.0

    def _open_journal(self) -> None:
        """Make sure job usage files can be written: a ``state_dir`` given that cannot
        is a ConfigError; the default one is warned about and done without."""
        if self.journal is None:
            return
        try:
            self.journal.check()
        except OSError as exc:
            where = self.journal.directory
            if self._state_dir_given:
                raise ConfigError(
                    f"state_dir (agent.state_dir, --state-dir): cannot write job usage"
                    f" files in {where} ({exc}); give a writable directory"
                ) from exc
            log.warning(
                "cannot write job usage files in %s (%s): tokens a task spends before"
                " this process is killed will not be charged; give a writable state_dir",
                where,
                exc,
            )
            self.journal = self.reporter.journal = self.recovery = None

    def _recovering(self) -> None:
        """Settle, a round each heartbeat_interval, the jobs an earlier process of
        this agent left (killed, or stopped with the quota store down; see
        Recovery). Its own thread: a slow task API or quota store must
        delay neither the first task nor lease renewals."""
        recovery = self.recovery
        if recovery is None:
            return
        # Until stopped, not until none is pending: a give-back that did not land
        # puts its job back after a moment.
        while not self._maintenance_stop.is_set():
            if recovery.pending:
                settle = functools.partial(recovery.settle_round, self._running_jobs)
                self._guarded("settling an earlier run's jobs", settle)
            self._maintenance_stop.wait(self.heartbeat_interval)

    def _running_jobs(self) -> set[str]:
        with self._lock:
            return {a.task.job_id for a in self._attempts.values()}

    # --- registration and the poll loop ---
    def _poll_loop(self, stop: threading.Event) -> None:
        """Take the tasks claimed for this agent, as soon as they are claimed.

        Each read is a long-poll: the task API answers when a claim is made for this
        agent, or after ``poll_interval`` (2 s at most, so a stop is seen soon). A
        server that does not watch (no token) answers at once, and the loop sleeps
        ``poll_interval`` between reads instead.
        """
        failures = 0
        token: str | None = ""
        while not (stop.is_set() or self._displaced.is_set()):
            if self.lapsed:  # no work until the id lease is renewed (or taken)
                token = ""
                self._pause(stop, _DISPLACED_CHECK)
                continue
            self.reporter.check_server()  # at once when it answered at the start
            self.allowed.refresh(self.heartbeat_interval)
            try:
                tasks, token = self.client.watch_tasks(
                    token or "",
                    min(self.poll_interval, _WATCH_CHUNK) if token else 0.0,
                    status=TaskStatus.IN_PROGRESS,
                    claimed_by=self.agent_id,
                )
                self._take(tasks)
            except AgenticError as exc:
                failures += 1
                token = ""
                self._error(f"polling for tasks failed ({failures} in a row)", exc)
            else:
                failures = 0
            if failures or token is None:
                self._pause(stop, doubled(self.poll_interval, failures, 30))

    def _pause(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds``, or until ``stop`` is set or this runner is displaced."""
        deadline = time.monotonic() + seconds
        while not (stop.is_set() or self._displaced.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, _DISPLACED_CHECK))

    def _take(self, tasks: list[Task]) -> None:
        """Start the tasks claimed for this agent that are not running yet."""
        for task in tasks:
            if self._no_id():
                return  # another runner has (or may have) this agent id: its tasks
            key = attempt_key(task)
            if self.allowance is not None and not task.job_id:
                # Claimed without a reservation (by hand, or by a dispatcher that keeps
                # no quota): run, it would spend tokens no limit counted.
                self._give_back(
                    task,
                    f"agent {self.agent_id} keeps quotas and runs only claims made with a"
                    " reservation (a job id): this one has none; a dispatcher will claim it",
                )
                continue
            left = self.recovery.decided(task.job_id) if self.recovery is not None else None
            if left is not None and self.recovery is not None:
                # Its run here ended before this process, its report unlanded: reported
                # as decided, or (no result recorded) given back, not run again.
                if not left.reportable:
                    self._give_back(
                        task,
                        f"agent {self.agent_id} stopped before its report of this job landed;"
                        " given back to run under a new job",
                    )
                elif report := self.recovery.report_decided(task, left):
                    self._count_report(report)
                    self._emit(_EVENTS[report], task, {})
                continue
            paused = self.paused
            with self._lock:
                if self._no_id():
                    return  # another runner has (or may have) this agent id: its tasks
                running = self._attempts.get(task.id)
                if running is not None and running.key != key:
                    # Requeued and claimed for us again: the old attempt can no longer
                    # report (its claim is gone); the new one starts once it is gone.
                    running.stop(Stop.LOST, "the task was claimed again (new attempt)")
                if running is not None or key in self._seen:
                    continue
                full = len(self._attempts) >= self.capacity
                if not (full or paused):
                    self._start(task, key)
            if paused:
                self._give_back(task, f"agent {self.agent_id} is paused after an agent error")
            elif full:
                self._give_back(task, f"agent {self.agent_id} is at capacity")

    def _start(self, task: Task, key: tuple[str, str, str]) -> None:
        """Create and launch an attempt (called with the lock held)."""
        # An earlier run's tokens (its job file) join this run's.
        earlier = self.recovery.take(task.job_id) if self.recovery is not None else None
        again = self._unreported.pop(task.job_id, "")
        if not again and earlier is not None:
            again = "an earlier run of this job here ended with its runner"
        ctx = TaskContext(
            task, self.client, on_error=self._error, cancel_grace=self.cancel_grace, again=again
        )
        attempt = Attempt(task, ctx, key, lease_ttl=self._lease_ttl(task))
        self._attempts[task.id] = attempt
        self._remember(key)
        log.info("task %s (%s): started", task.id, task.title)
        self._threads.run(f"agentic-task-{task.id}", functools.partial(self._supervise, attempt))
        self._wake.set()

    def _remember(self, key: tuple[str, str, str]) -> None:
        self._seen[key] = None
        while len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)

    # --- one attempt ---
    def _supervise(self, attempt: Attempt) -> None:
        """Run the handler in its own thread and enforce max_job_duration."""
        try:
            if self.journal is not None and attempt.task.job_id:
                # Here, not under the runner's lock: it reads and opens a file.
                attempt.ctx.attach_journal(self.journal.job(attempt.task, self._error))
            self._threads.run(
                f"agentic-handler-{attempt.task.id}", functools.partial(self._run_handler, attempt)
            )
            limit = self.allowed.job_limit()
            if not attempt.wait(limit):
                attempt.stop(Stop.TIMEOUT, f"timed out after {limit:g} s")
            # Asked to stop (timeout, shutdown, lost lease): the handler gets cancel_grace.
            if not attempt.done.wait(self.cancel_grace):
                # Python cannot kill a thread: the handler is abandoned, its slot freed.
                log.warning("task %s: the handler ignored cancellation", attempt.task.id)
            outcome = self._limit_agent_errors(attempt.task, decide(attempt, limit))
        except Exception as exc:
            # A bug here must not leave the task held (its lease renewed) forever.
            self._error(f"task {attempt.task.id}: could not judge how it ended", exc)
            outcome = Outcome(
                Report.FAILED,
                TaskResult(success=False, error_message=f"agent error: {describe(exc)}"),
                f"agent error: {describe(exc)}",
            )
        self._finish(attempt, outcome)

    def _limit_agent_errors(self, task: Task, outcome: Outcome) -> Outcome:
        """Fail a task given back for an agent error for the ``_MAX_AGENT_ERRORS``-th
        time in a row here (a retry counted, so the dead letter ends it): an error that
        only this task triggers (a hook, its remote, its size) must not loop forever
        between give-back and claim."""
        with self._lock:
            if not (outcome.infrastructure and outcome.report is Report.RELEASED):
                self._agent_errors.pop(task.id, None)
                return outcome
            count = self._agent_errors.pop(task.id, 0) + 1
            self._agent_errors[task.id] = count
            while len(self._agent_errors) > _REMEMBERED:
                self._agent_errors.popitem(last=False)
        if count < _MAX_AGENT_ERRORS:
            return outcome
        reason = f"{outcome.reason} (an agent error {count} times in a row on this task here)"
        failed = TaskResult(success=False, error_message=reason)
        return Outcome(Report.FAILED, failed, reason, True, outcome.before_work)

    def _run_handler(self, attempt: Attempt) -> None:
        try:
            attempt.result = call_handler(self.handler, attempt.task, attempt.ctx)
        except BaseException as exc:
            # Anything the handler raises (SystemExit included) ends this task only.
            attempt.error = exc
            if not attempt.ctx.cancelled:
                log.warning("task %s: handler raised %r", attempt.task.id, exc)
        finally:
            attempt.set_done()

    def _finish(self, attempt: Attempt, outcome: Outcome) -> None:
        """Settle the attempt's usage, then report it; exactly once per attempt."""
        if not attempt.take():
            return
        task = attempt.task
        if attempt.stop_kind not in (Stop.DISPLACED, Stop.LAPSED) and self.lapsed:
            self.id_watch.renewed_since(None)  # due to lapse, not lapsed (frozen): ask first
        unreported = attempt.stop_kind in (Stop.DISPLACED, Stop.LAPSED) or self._no_id()
        try:
            if unreported:
                # The runner that took (or may take) the id runs the task now (same
                # claim, same job id): its settle and report count, a settle here would
                # make its own a duplicate (also when stopping for another reason already:
                # a timeout or a shutdown keeps its stop kind, the first one). Forgotten:
                # the id still ours after a lapse, the poll takes it up again.
                log.info("task %s: not reported (the agent id lease lapsed or was taken)", task.id)
                self.reporter.keep_end(attempt, outcome)  # ran to its end: not run again
                with self._lock:
                    self._seen.pop(attempt.key, None)
                    self._unreported[task.job_id] = attempt.ctx.cancel_reason or "stopped"
                    while len(self._unreported) > _REMEMBERED:
                        self._unreported.popitem(last=False)
                return
            # Settle BEFORE the report: once the task is pending again a dispatcher
            # may expire the old reservation, freeing its slot before this job's end.
            # And before the last log lines, which wait for a task API that is down:
            # the settle writes the decided end (a restart reports it, not reruns it).
            try:
                self.allowed.warn_unlisted(task.id, attempt.ctx.models)
                self.reporter.settle(attempt, outcome)
            except Exception as exc:  # a bug here must not keep the report from going
                self._error(f"task {task.id}: settling its usage failed unexpectedly", exc)
            self.reporter.last_flush(attempt)
            self._pace(outcome)
            delivered = self.reporter.report(attempt, outcome)
            if delivered:
                self._count_report(outcome.report)
                if outcome.report in _EVENTS:
                    self._emit(_EVENTS[outcome.report], task, {"reason": outcome.reason})
            said = outcome.report.value if delivered else "report not delivered"
            why = f" ({outcome.reason})" if outcome.reason else ""
            log.info("task %s: %s%s", task.id, said, why)
        finally:
            if attempt.ctx.journal is not None:
                attempt.ctx.journal.close()
            if unreported and not self._no_id():  # the lapse ended before this run did:
                self._resume()  # the resume's reading skipped its file (held then)
            with self._lock:
                if self._attempts.get(task.id) is attempt:
                    del self._attempts[task.id]
                self._changed.notify_all()
            self._wake.set()

    def _pace(self, outcome: Outcome) -> None:
        """Pause taking work after an infrastructure error, longer each time in a row.

        Such an agent gives every task back at once, and being the least loaded it
        would be handed the next one straight away: without a pause one broken agent
        (a missing binary, a full disk) would bounce the whole queue.
        """
        with self._lock:
            if not outcome.infrastructure:
                if outcome.report in (Report.COMPLETED, Report.FAILED):
                    self._infrastructure_failures = 0  # the handler ran: the agent works
                return
            self._infrastructure_failures += 1
            failures = self._infrastructure_failures
            wait = self.infrastructure_backoff.delay(failures)
            self._paused_until = max(self._paused_until, time.monotonic() + wait)
        log.warning(
            "agent %s: taking no work for %.1f s after %d agent error(s) in a row: %s",
            self.agent_id,
            wait,
            failures,
            outcome.reason,
        )
        self.presence.heartbeat()  # now published full: dispatchers route elsewhere

    def _count_report(self, report: Report) -> None:
        with self._lock:
            if report is Report.COMPLETED:
                self.completed += 1
            elif report is Report.FAILED:
                self.failed += 1
            elif report is Report.RELEASED:
                self.released += 1

    def _give_back(self, task: Task, reason: str) -> None:
        """Release a claimed task this runner will not run (no retry is counted)."""
        recovery = self.recovery
        ran = recovery.take(task.job_id) if recovery and task.job_id else None
        if not self.reporter.give_back(task, reason, ran.settlement() if ran else None):
            if ran is not None and recovery is not None:
                recovery.keep(ran)  # the next round, or the next give-back, settles it
            return
        with self._lock:
            self.released += 1
        self._emit(EventType.TASK_REQUEUED, task, {"reason": reason})
        log.info("task %s: released (%s)", task.id, reason)

    # --- shutdown ---
    def _shutdown(self) -> None:
        """Stop taking work, wait for running tasks, give back the rest, deregister.

        A displaced runner leaves the registry entry, the tasks claimed for the agent
        and the id lease to the runner that took the id: it only waits for its
        handlers (cancelled when it was displaced) to stop. So does a lapsed one
        whose id lease cannot be renewed now (another runner may take it)."""
        if self.lapsed:
            self.id_watch.renew()  # the registry back: resumed, or displaced
        if self._no_id():
            self._wait_idle(self.cancel_grace + 1.0)
            self.reporter.settle_pending(wait=True)  # earlier runs' settles still count
            return
        # Published full while it drains (routed nothing, still shown by `status`), then
        # deregistered, on a thread of its own: a registry that hangs holds up neither
        # the drain nor a second signal's cancelling (a new-user trial: 13 s).
        self._draining.set()
        offline = threading.Thread(target=self._go_offline, name="agentic-offline", daemon=True)
        offline.start()
        try:
            self._drain()
        finally:
            self._drained.set()
        # The sweep after the deregistration: no claim for us can follow it then
        # (hurried, a registry that hangs is not waited for: the leases cover it).
        offline.join(1.0 if self._hurry.is_set() else None)
        if not self._no_id():  # displaced or lapsed meanwhile: the tasks may not be ours
            self._sweep()
        self.reporter.settle_pending(wait=True)  # a last try; what still fails is logged

    def _drain(self) -> None:
        """Wait out the grace period, then cancel what still runs and wait for its end."""
        self._wait_idle(self.grace_period, self._hurry)
        with self._lock:
            left = list(self._attempts.values())
        reason = "the agent is shutting down"
        if left and self._hurry.is_set():
            reason = "the agent is stopping at once (grace period skipped)"
            what = "grace period skipped: cancelling %d running task(s) and giving them back"
            log.warning("agent %s: " + what, self.agent_id, len(left))
        for attempt in left:
            attempt.stop(Stop.SHUTDOWN, reason)
        # Each supervisor now reports its attempt within cancel_grace (released unless
        # it finished); reports retrying a blip get their full retry budget, unless
        # hurried (then each is tried once: its lease and usage file cover a failure).
        self._wait_idle(self.cancel_grace + self.reporter.bound() + 1.0)

    def _go_offline(self) -> None:
        self.presence.heartbeat()  # draining: published full at once
        self._drained.wait()
        if self.presence.deregister():
            self._emit(EventType.AGENT_OFFLINE, None, {"reason": "deregistered"})

    def _wait_idle(self, timeout: float, hurry: threading.Event | None = None) -> None:
        """Wait until no attempt is held, ``timeout`` passes or ``hurry`` is set (a
        signal handler cannot notify a condition: looked at every 0.1 s)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._attempts:
                left = deadline - time.monotonic()
                if left <= 0 or (hurry is not None and hurry.is_set()):
                    return
                self._changed.wait(left if hurry is None else min(left, 0.1))

    def _sweep(self) -> None:
        """Give back tasks claimed for us while we were shutting down."""
        try:
            tasks = self.client.list_tasks(status=TaskStatus.IN_PROGRESS, claimed_by=self.agent_id)
        except AgenticError as exc:
            self._error("final check for tasks claimed during shutdown failed", exc)
            return
        for task in tasks:
            with self._lock:
                known = attempt_key(task) in self._seen
            if not known:
                self._give_back(task, "claimed while the agent was shutting down")

    # --- heartbeat, leases, logs ---
    def _beat(self) -> None:
        """Heartbeat every heartbeat_interval, and soon after a change of load (at
        most every _LOAD_BEAT_SPACING)."""
        spacing = min(self.heartbeat_interval, _LOAD_BEAT_SPACING)
        next_beat = time.monotonic() + self.heartbeat_interval
        last_beat, unpublished = 0.0, False
        while not self._maintenance_stop.is_set():
            wait = max(0.0, next_beat - time.monotonic())
            if unpublished:  # a load change waits for its beat no longer than spacing
                wait = min(wait, max(0.0, last_beat + spacing - time.monotonic()))
            if self._wake.wait(wait):
                # Cleared only after it was seen set: a change landing after a timed-out
                # wait stays set for the next round instead of being lost.
                self._wake.clear()
                unpublished = True
            if self._maintenance_stop.is_set():
                return
            now = time.monotonic()
            due = now >= next_beat
            if due and not self.id_watch.renew():
                return  # displaced: no more heartbeats, the agent id is another's
            if due or (unpublished and now - last_beat >= spacing):
                self._guarded("heartbeat", self.presence.heartbeat)
                last_beat, unpublished = now, False
            if due:
                # Only a due beat moves the next one: a beat publishing a load change
                # must not push back the id lease's renewal (tasks starting and ending
                # more often than every heartbeat_interval lapsed the runner).
                next_beat = now + self.heartbeat_interval

    def _no_id(self) -> bool:
        """Whether this runner may not hold its agent id now (displaced, or lapsed)."""
        return self._displaced.is_set() or self.lapsed

    def _cancel_running(self, kind: Stop, reason: str) -> int:
        """Stop every running attempt not reporting yet (one already reporting may
        land: its report was on its way); how many."""
        with self._lock:
            attempts = [a for a in self._attempts.values() if not a.reporting]
        for attempt in attempts:
            attempt.stop(kind, reason)
        return len(attempts)

    def _resume(self) -> None:
        """The id lease renewed after a lapse: read the job files again as a restart
        does (a cancelled job whose claim ended meanwhile is settled as failed)."""
        if self.recovery is not None:
            self._guarded("reading the job files again", self.recovery.find)
        self._wake.set()

    def _on_displaced(self) -> int:
        """Another runner took this agent's id (said by ``id_watch``): stop taking work
        and heartbeating, cancel the running tasks (they are that runner's now: not
        reported nor charged); the poll loop then ends and ``run`` returns."""
        with self._lock:
            self._displaced.set()
        self.presence.leave()
        holder = self._id.displaced_by
        return self._cancel_running(Stop.DISPLACED, f"agent {self.agent_id} is now run by {holder}")

    def _keep(self) -> None:
        """Renew the leases every heartbeat_interval; flush the logs every
        log_flush_interval."""
        tick = min(self.heartbeat_interval, self.log_flush_interval)
        next_renewal = time.monotonic() + self.heartbeat_interval
        while not self._maintenance_stop.wait(tick):
            now = time.monotonic()
            if now >= next_renewal:
                self._guarded("lease renewal", self._renew_leases)
                if self.reporter.unsettled:
                    # Off this thread: a slow store must not delay renewals.
                    threading.Thread(
                        target=self.reporter.settle_pending, name="agentic-settle", daemon=True
                    ).start()
                next_renewal = now + self.heartbeat_interval
            self._guarded("log flush", self._flush_logs)

    def _flush_logs(self) -> None:
        if self._displaced.is_set():
            return  # the tasks are another runner's: their logs are its own
        with self._lock:
            contexts = [a.ctx for a in self._attempts.values()]
        for ctx in contexts:
            ctx.flush_logs()

    def _guarded(self, what: str, step: Callable[[], None]) -> None:
        """Run one maintenance step; a bug in it must not end heartbeats or renewals."""
        try:
            step()
        except Exception as exc:
            self._error(f"{what} failed unexpectedly", exc)
            log.exception("%s failed", what)

    def _renew_leases(self) -> None:
        if self._displaced.is_set():
            return  # the claims are another runner's now
        with self._lock:
            attempts = list(self._attempts.values())
        # Its store calls run on a thread of their own. Lapsed, none is ours to keep
        # (an attempt stopping for a timeout before the lapse keeps that stop kind).
        self.keepalive.tick([] if self.lapsed else attempts)
        for attempt in attempts:
            try:
                # Fenced by the claim's job id: a task claimed again since refuses it (LOST).
                # The length is always sent: the server's default is not the claim's.
                task = attempt.task
                self.client.renew_lease(task.id, attempt.lease_ttl, self.agent_id, task.job_id)
                attempt.renewed()
            except (ConflictError, NotFoundError) as exc:
                if attempt.reporting:
                    continue  # the report just landed: the claim ended with it
                what = "lease lost (cancelled, requeued or claimed again): stopping it"
                self._error(f"task {attempt.task.id}: {what}", exc)
                attempt.stop(Stop.LOST, f"lost the lease: {exc}")
            except AgenticError as exc:
                self._error(f"task {attempt.task.id}: lease renewal failed", exc)

    # --- bookkeeping ---
    def _error(self, what: str, exc: Exception) -> None:
        with self._errors_lock:
            self.errors += 1
        log.warning("%s: %s", what, exc)

    def _emit(self, kind: EventType, task: Task | None, payload: dict[str, Any]) -> None:
        if self.emitter is None:
            return
        event = Event(
            # A task's transition: the id the task store records it under (the log
            # keeps one of the two).
            id=transition_id(task.id, kind, task.job_id, task.reruns) if task else uuid.uuid4().hex,
            type=kind,
            source=f"agentic.runner/{self.agent_id}",
            task_id=task.id if task else "",
            agent_id=self.agent_id,
            payload={"job_id": task.job_id, **payload} if task else payload,
        )
        try:
            self.emitter.emit(event)
        except Exception as exc:
            self._error(f"event emitter failed on {kind.value}", exc)
