"""AgentRunner against a real task server on loopback, with memory stores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher
from agentic.errors import (
    APIError,
    ConfigError,
    NoEligibleAgentError,
    NotFoundError,
    StoreError,
    TransportError,
)
from agentic.events import Event, EventEmitter, EventType
from agentic.models import AgentAllowance, AgentInfo, Task, TaskResult, TaskStatus, TaskUpdate
from agentic.retry import RetryPolicy
from agentic.router import DefaultRouter
from agentic.runner import (
    AgentRunner,
    Handler,
    InfrastructureError,
    SubprocessHandler,
    TaskCancelled,
    TaskContext,
)
from agentic.runner._attempt import claim_lease
from agentic.runner._presence import Presence
from agentic.stores.memory import MemoryAllowanceStore, MemoryEventLog, MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server
from tests.test_handlers import gone

AGENT = "a1"
FAST_RETRY = RetryPolicy(max_retries=3, base=0.01, cap=0.02)


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it is truthy, or fail the test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.01)


def waits_for(gate: threading.Event) -> Handler:
    """A handler that returns once ``gate`` is set."""

    def handler(task: Task, ctx: TaskContext) -> None:
        gate.wait(5)

    return handler


def sleeps(seconds: float) -> Handler:
    """A handler that sleeps (ignoring cancellation), then returns "done"."""

    def handler(task: Task, ctx: TaskContext) -> str:
        time.sleep(seconds)
        return "done"

    return handler


def stops_when_cancelled(seen: list[str]) -> Handler:
    """A handler that waits for cancellation, notes its reason in ``seen``, and stops."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.cancel_event.wait(5)
        seen.append(ctx.cancel_reason)
        raise TaskCancelled(ctx.cancel_reason)

    return handler


class Recorder(EventEmitter):
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def kinds(self) -> list[EventType]:
        return [e.type for e in self.events]


@dataclass
class System:
    """A task server, memory stores, a dispatcher, and runners started on demand."""

    url: str
    tasks: MemoryTaskStore
    registry: MemoryRegistry
    quota: MemoryAllowanceStore
    client: TaskClient
    dispatcher: Dispatcher
    events: Recorder
    #: the event log the task store records each task's lifecycle in
    log: MemoryEventLog
    runners: list[AgentRunner] = field(default_factory=list)
    clients: list[TaskClient] = field(default_factory=list)

    def runner(
        self, handler: Handler, *, client: TaskClient | None = None, **options: Any
    ) -> AgentRunner:
        options = {
            "heartbeat_interval": 0.1,
            "poll_interval": 0.05,
            "log_flush_interval": 0.05,
            "grace_period": 2.0,
            "cancel_grace": 0.2,
            "report_retry": FAST_RETRY,
            "emitter": self.events,
            **options,
        }
        agent = AgentInfo(id=AGENT, capabilities=["py"], max_load=options.pop("max_load", 1))
        self.quota.set_allowance(AgentAllowance(agent_id=AGENT))
        runner = AgentRunner(
            agent,
            client or self.client,
            self.registry,
            handler,
            AllowanceService(self.quota),
            **options,
        )
        self.runners.append(runner)
        if client is not None:
            self.clients.append(client)
        return runner

    def started(self, handler: Handler, **options: Any) -> AgentRunner:
        runner = self.runner(handler, **options)
        runner.start()
        wait_for(lambda: AGENT in {a.id for a in self.registry.list()})
        return runner

    def submit(self, title: str = "t", **fields: Any) -> Task:
        """Create a task and dispatch it to the runner's agent (quota reserved)."""
        task = self.tasks.create(Task(title=title, labels=["py"], **fields))
        assert self.dispatcher.dispatch(self.tasks.get(task.id)) == AGENT
        return task

    def finished(self, task_id: str) -> Task:
        """Wait until the task is no longer in progress; return it."""
        wait_for(lambda: self.tasks.get(task_id).status != TaskStatus.IN_PROGRESS)
        return self.tasks.get(task_id)

    def room_again(self, runner: AgentRunner) -> None:
        """Wait until ``runner`` holds nothing and a heartbeat since then published it:
        the registry's load alone may still be the 0 from before the last task began
        (no heartbeat during a quick run), and the runner would give the next one back."""
        wait_for(lambda: runner.load == 0)
        since = datetime.now(UTC)
        wait_for(
            lambda: (
                (agent := self.registry.get(AGENT)).current_load == 0
                and agent.last_heartbeat is not None
                and agent.last_heartbeat > since
            )
        )


@pytest.fixture
def system() -> Iterator[System]:
    with build_system() as made:
        yield made


@contextlib.contextmanager
def build_system(**app_options: Any) -> Iterator[System]:
    """A System whose task server is made with ``app_options``; runners stopped after."""
    log = MemoryEventLog()
    tasks = MemoryTaskStore(events=log)
    with running_server(tasks, requeue_interval=None, **app_options) as url:
        registry, quota, events = MemoryRegistry(), MemoryAllowanceStore(), Recorder()
        client = TaskClient(url, token="", retries=0)
        dispatcher = Dispatcher(registry, DefaultRouter(), AllowanceService(quota), client)
        made = System(url, tasks, registry, quota, client, dispatcher, events, log)
        yield made
        for runner in made.runners:
            runner.stop()
        for other in made.clients:
            other.close()
        client.close()


def test_runs_claimed_task_completes_and_settles(system: System) -> None:
    """A task claimed for the agent is run, completed, and its usage settled."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 100, 50)
        return f"did {task.title}"

    runner = system.started(handler)
    task = system.finished(system.submit("build").id)
    assert task.status == TaskStatus.COMPLETED
    assert task.result is not None and task.result.output == "did build"
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs, usage.tokens_reserved) == (150, 0, 0)
    wait_for(lambda: runner.completed == 1)
    assert (runner.failed, runner.errors) == (0, 0)
    assert EventType.TASK_COMPLETED in system.events.kinds()


def test_at_most_max_load_run_at_once(system: System) -> None:
    """With max_load 2, never more than two handlers run at the same time."""
    lock, running, peak = threading.Lock(), [0], [0]

    def handler(task: Task, ctx: TaskContext) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1

    system.started(handler, max_load=2)
    ids = [system.tasks.create(Task(title=f"t{i}", labels=["py"])).id for i in range(5)]

    def all_done() -> bool:
        system.dispatcher.run_once()
        return all(system.tasks.get(i).status == TaskStatus.COMPLETED for i in ids)

    wait_for(all_done, timeout=10)
    assert peak[0] == 2


def test_task_claimed_beyond_capacity_is_released(system: System) -> None:
    """A task claimed for a full agent goes back to pending, no retry or job counted;
    the recorded task_requeued says why."""
    gate = threading.Event()
    runner = system.started(waits_for(gate), max_load=1)
    first = system.submit("first")
    wait_for(lambda: runner.load == 1)
    extra = system.tasks.create(Task(title="extra", labels=["py"]))
    system.quota.reserve(AGENT, "", 0, "extra-job")
    system.client.claim_task(extra.id, agent_id=AGENT, job_id="extra-job")
    wait_for(lambda: system.tasks.get(extra.id).status == TaskStatus.PENDING)
    assert system.tasks.get(extra.id).retry_count == 0

    def counted() -> tuple[int, int]:
        usage = system.quota.get_usage(AGENT)
        return usage.jobs_started, usage.active_jobs

    # The extra job never started: not counted. Given back after the release (a
    # task whose release failed may still run here), so waited for, not read at once.
    wait_for(lambda: counted() == (1, 1))
    requeued = [e.event for e in system.log.read() if e.event.type == EventType.TASK_REQUEUED]
    assert [e.payload["reason"] for e in requeued] == [f"agent {AGENT} is at capacity"]
    gate.set()
    assert system.finished(first.id).status == TaskStatus.COMPLETED


class CompleteOutage(TaskClient):
    """A client whose complete (and, with ``renewals``, lease renewals) fail as an
    unreachable server's would until ``until`` (monotonic)."""

    until = math.inf
    renewals = False

    def complete_task(self, *args: Any, **kwargs: Any) -> Task:
        if time.monotonic() < self.until:
            raise TransportError("POST complete: no answer (outage)")
        return super().complete_task(*args, **kwargs)

    def renew_lease(self, *args: Any, **kwargs: Any) -> Task:
        if self.renewals and time.monotonic() < self.until:
            raise TransportError("POST lease: no answer (outage)")
        return super().renew_lease(*args, **kwargs)


def test_a_report_outlasts_an_outage_shorter_than_the_lease(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its retries a report keeps trying while the lease holds: finished work
    lands; the log says, from the first failure, why it waits and how to give up."""
    client = CompleteOutage(system.url, token="", retries=0)
    runner = system.runner(lambda task, ctx: "expensive result", client=client, lease_seconds=1.0)
    client.until = time.monotonic() + 2.5  # longer than the retries, and than one lease
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
    with caplog.at_level(logging.WARNING, logger="agentic.runner"):
        task = system.finished(system.submit().id)
    first = next(r.getMessage() for r in caplog.records if "(attempt 1)" in r.getMessage())
    assert "a second signal, or stop(now=True), gives up" in first
    assert task.status == TaskStatus.COMPLETED and task.retry_count == 0
    assert task.result is not None and task.result.output == "expensive result"
    wait_for(lambda: runner.completed == 1 and runner.load == 0)


def test_a_report_gives_up_once_the_lease_ran_out_unrenewed(system: System) -> None:
    """When renewals fail too, the report stops trying once the lease has run out."""
    client = CompleteOutage(system.url, token="", retries=0)
    client.renewals = True
    runner = system.runner(lambda task, ctx: "done", client=client, lease_seconds=1.0)
    client.until = time.monotonic() + 60
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
    system.submit()
    wait_for(lambda: runner.load == 1)
    started = time.monotonic()
    wait_for(lambda: runner.load == 0, timeout=10)
    assert 0.7 < time.monotonic() - started < 5
    assert runner.completed == 0


def test_a_claim_without_a_reservation_is_given_back_not_run(system: System) -> None:
    """With quotas on, a task claimed for the agent without a job id (by hand) is given
    back unrun: it would spend tokens no limit counted. A dispatcher's claim then runs."""
    runs: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        runs.append(task.id)
        return "done"

    runner = system.started(handler)
    task = system.tasks.create(Task(title="t", labels=["py"]))
    system.tasks.claim(task.id, AGENT, 60)  # no job id: no reservation behind it
    wait_for(lambda: system.tasks.get(task.id).status == TaskStatus.PENDING)
    assert runs == [] and system.tasks.get(task.id).retry_count == 0
    assert system.quota.get_usage(AGENT).jobs_started == 0
    requeued = [e.event for e in system.log.read() if e.event.type == EventType.TASK_REQUEUED]
    assert "runs only claims made with a reservation" in requeued[-1].payload["reason"]
    assert system.dispatcher.dispatch(system.tasks.get(task.id)) == AGENT
    assert system.finished(task.id).status == TaskStatus.COMPLETED and runs == [task.id]
    wait_for(lambda: runner.released == 1)


def test_handler_exception_fails_task_and_charges_half(system: System) -> None:
    """An exception fails the attempt with its message; half the tokens are charged."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 100, 0)
        raise ValueError("boom")

    runner = system.started(handler)
    task = system.finished(system.submit().id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 1)
    assert task.result is not None and task.result.error_message == "boom"
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (50, 0)
    wait_for(lambda: runner.failed == 1)
    assert EventType.TASK_FAILED in system.events.kinds()


def test_an_exception_whose_message_fails_still_fails_the_task(system: System) -> None:
    """A handler exception whose __str__ raises fails the task under its type's name."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise AttributeError("no response")

    def handler(task: Task, ctx: TaskContext) -> str:
        raise Unprintable

    runner = system.started(handler)
    task = system.finished(system.submit().id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 1)
    assert task.result is not None
    assert task.result.error_message.startswith("Unprintable (its message could not be read")
    wait_for(lambda: runner.failed == 1 and runner.load == 0)


def test_a_runner_bug_judging_an_attempt_fails_it_and_frees_the_slot(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should judging an attempt's end raise, the task still fails and the slot frees."""

    def broken(attempt: object, max_job_duration: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("agentic.runner._runner.decide", broken)
    runner = system.started(lambda task, ctx: "done")
    task = system.finished(system.submit().id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 1)
    assert task.result is not None and task.result.error_message == "agent error: bug"
    wait_for(lambda: runner.load == 0 and runner.errors >= 1)


def test_failed_result_fails_task(system: System) -> None:
    """A returned TaskResult(success=False) fails the attempt with its message."""
    system.started(lambda task, ctx: TaskResult(success=False, error_message="no luck"))
    task = system.finished(system.submit().id)
    assert task.retry_count == 1
    assert task.result is not None and task.result.error_message == "no luck"


def test_async_handler(system: System) -> None:
    """A coroutine function runs on its own event loop in the task's thread."""

    async def handler(task: Task, ctx: TaskContext) -> str:
        await asyncio.sleep(0.01)
        return "async ok"

    system.started(handler)
    task = system.finished(system.submit().id)
    assert task.result is not None and task.result.output == "async ok"


def test_timeout_cancels_and_fails(system: System) -> None:
    """Past max_job_duration the context is cancelled and the task failed as timed out."""
    seen: list[str] = []
    handler = stops_when_cancelled(seen)
    system.started(handler, max_job_duration=0.2)
    task = system.finished(system.submit().id)
    assert seen == ["timed out after 0.2 s"]
    assert task.result is not None and task.result.error_message == "timed out after 0.2 s"
    assert task.retry_count == 1


def test_the_allowance_max_job_duration_is_enforced_when_smaller(system: System) -> None:
    """The allowance's max_job_duration, read again each heartbeat, limits attempts too."""
    seen: list[str] = []
    handler = stops_when_cancelled(seen)
    runner = system.started(handler, max_job_duration=30.0)
    system.quota.set_allowance(AgentAllowance(agent_id=AGENT, max_job_duration=0.3))
    wait_for(lambda: runner.allowed.job_limit() == 0.3)
    task = system.finished(system.submit().id)
    assert seen == ["timed out after 0.3 s"]
    assert task.result is not None and task.result.error_message == "timed out after 0.3 s"
    system.quota.set_allowance(AgentAllowance(agent_id=AGENT))  # no limit there any more
    wait_for(lambda: runner.allowed.job_limit() == 30.0)


def test_a_command_ignoring_sigterm_is_killed_in_time_and_its_usage_charged(
    system: System, tmp_path: Path
) -> None:
    """Cancelled, a command that ignores SIGTERM is killed within the runner's
    cancel_grace and the tokens it reported are settled with its job."""
    pid_file = tmp_path / "pid"
    script = (
        'echo \'{"model": "m", "tokens_in": 1000, "tokens_out": 0}\' >> "$AGENTIC_USAGE_FILE";'
        f" echo $$ > {pid_file}; trap '' TERM; while true; do sleep 0.05; done"
    )
    handler = SubprocessHandler(["sh", "-c", script], kill_grace=30.0)
    runner = system.started(handler, max_job_duration=0.3, cancel_grace=1.0)
    started = time.monotonic()
    task = system.finished(system.submit().id)
    assert time.monotonic() - started < 3.0
    assert task.result is not None and task.result.error_message == "timed out after 0.3 s"
    wait_for(lambda: system.quota.get_usage(AGENT).active_jobs == 0)
    assert system.quota.get_usage(AGENT).tokens_used == 500  # failed: half is charged
    assert gone(int(pid_file.read_text()))
    assert runner.errors == 0


def test_timeout_of_async_handler_cancels_its_coroutine(system: System) -> None:
    """An async handler is cancelled through asyncio when its time is up."""
    cancelled = threading.Event()

    async def handler(task: Task, ctx: TaskContext) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    system.started(handler, max_job_duration=0.2)
    task = system.finished(system.submit().id)
    assert cancelled.is_set()
    assert task.result is not None and "timed out" in task.result.error_message


def test_uncooperative_handler_is_failed_after_the_grace(system: System) -> None:
    """A handler that ignores cancellation is abandoned and its task failed anyway."""
    started = time.monotonic()
    system.started(sleeps(10), max_job_duration=0.2, cancel_grace=0.1)
    task = system.finished(system.submit().id)
    assert time.monotonic() - started < 5  # not the handler's 10 s
    assert task.result is not None and task.result.error_message.startswith("timed out")


def test_progress_and_logs_reach_the_server(system: System) -> None:
    """ctx.progress is stored at once; ctx.log lines are flushed while the task runs."""
    gate = threading.Event()

    def handler(task: Task, ctx: TaskContext) -> None:
        ctx.log("first")
        ctx.log("second\nthird")
        assert ctx.progress(40, "halfway")
        gate.wait(5)

    system.started(handler)
    task = system.submit()
    wait_for(lambda: len(system.tasks.logs(task.id).lines) == 4)
    job = system.tasks.get(task.id).job_id
    assert system.tasks.logs(task.id).lines == [
        f"[agentic: {AGENT} runs job {job}]",
        "first",
        "second",
        "third",
    ]
    stored = system.tasks.get(task.id)
    assert (stored.progress, stored.notes) == (40, "halfway")
    gate.set()
    assert system.finished(task.id).progress == 100


def test_heartbeat_reports_load_and_renews_leases(system: System) -> None:
    """The heartbeat carries the load, and held leases keep moving forward."""
    gate = threading.Event()
    runner = system.started(waits_for(gate), lease_seconds=300)
    task = system.submit()
    wait_for(lambda: system.registry.get(AGENT).current_load == 1)
    first = system.tasks.get(task.id).lease_expires_at
    assert first is not None
    wait_for(lambda: (system.tasks.get(task.id).lease_expires_at or first) > first)
    gate.set()
    system.finished(task.id)
    wait_for(lambda: system.registry.get(AGENT).current_load == 0)
    assert runner.errors == 0


def test_lost_lease_cancels_the_handler_and_reports_nothing(system: System) -> None:
    """When the task is taken away, the handler is cancelled and nothing is reported."""
    seen: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.cancel_event.wait(5)
        seen.append(ctx.cancel_reason)
        return "finished anyway"

    runner = system.started(handler)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    system.tasks.release(task.id)  # as a lease expiry would
    wait_for(lambda: runner.load == 0)
    assert seen and "lost the lease" in seen[0]
    assert system.tasks.get(task.id).status == TaskStatus.PENDING
    assert runner.completed == 0


def test_a_task_cancelled_while_running_stops_its_handler_and_frees_its_quota(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A running task marked failed by an operator (agentic cancel) stops its handler
    at the next renewal, said as a claim ended elsewhere, not as a fault; the task
    stays failed and the job's slot is freed."""
    seen: list[str] = []
    runner = system.started(stops_when_cancelled(seen))
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    cancel = TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled")
    with caplog.at_level(logging.WARNING, logger="agentic.runner"):
        system.client.update_task(task.id, cancel)
        wait_for(lambda: runner.load == 0)
    assert seen and "lost the lease" in seen[0]
    assert "lease lost (cancelled, requeued or claimed again): stopping it" in caplog.text
    assert system.tasks.get(task.id).status is TaskStatus.FAILED
    wait_for(lambda: system.quota.get_usage(AGENT).active_jobs == 0)


def test_lost_lease_frees_the_slot_of_a_handler_that_ignores_it(system: System) -> None:
    """A handler that ignores the lost-lease cancellation is abandoned after the grace."""
    runner = system.started(sleeps(3), cancel_grace=0.1)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    system.tasks.release(task.id)
    wait_for(lambda: runner.load == 0, timeout=1.5)
    assert runner.completed == runner.failed == runner.released == 0


def started_on_submitted(
    system: System, handler: Handler, **options: Any
) -> tuple[AgentRunner, Task]:
    """A runner whose one poll (the next is 30 s away) picked up a dispatched task."""
    runner = system.runner(handler, poll_interval=30, **options)
    system.registry.register(AgentInfo(id=AGENT, capabilities=["py"], max_load=1))
    task = system.submit()
    runner.start()
    wait_for(lambda: runner.load == 1)
    return runner, system.tasks.get(task.id)


def reclaim_behind_the_runner(system: System, task_id: str) -> Task:
    """Requeue the task and claim it for the same agent again, as after a lease expiry."""
    system.tasks.release(task_id)
    return system.tasks.claim(task_id, AGENT, 300, job_id="attempt-2")


def test_late_completion_of_an_old_attempt_is_refused(system: System) -> None:
    """An old attempt finishing after its task was claimed again (by the same agent)
    cannot complete the new claim: its job id fences the report."""
    gate = threading.Event()

    def handler(task: Task, ctx: TaskContext) -> str:
        gate.wait(5)
        return "late result"

    # Neither a poll nor a lease renewal may notice the new claim before the report.
    runner, task = started_on_submitted(system, handler, heartbeat_interval=30)
    first_job = task.job_id
    new_claim = reclaim_behind_the_runner(system, task.id)
    assert new_claim.job_id != first_job
    gate.set()
    wait_for(lambda: runner.load == 0)
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.job_id, stored.result) == (
        TaskStatus.IN_PROGRESS,
        "attempt-2",
        None,
    )
    assert stored == new_claim
    assert runner.completed == 0 and runner.errors >= 1


def test_stale_lease_renewal_stops_the_old_attempt(system: System) -> None:
    """The old attempt's renewal is refused once the task was claimed again: it stops as
    lost, reports nothing, and the new claim is left as it was."""
    seen: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.cancel_event.wait(5)
        seen.append(ctx.cancel_reason)
        return "finished anyway"

    runner, task = started_on_submitted(system, handler, heartbeat_interval=0.05)
    new_claim = reclaim_behind_the_runner(system, task.id)
    wait_for(lambda: runner.load == 0)
    assert seen and "a stale attempt" in seen[0]
    assert system.tasks.get(task.id) == new_claim
    assert runner.completed == runner.failed == runner.released == 0


def test_stop_lets_a_running_task_finish_and_deregisters(system: System) -> None:
    """Within the grace period a running task finishes, the agent listed full meanwhile
    (routed nothing, still shown); then the agent deregisters."""
    release = threading.Event()

    def handler(task: Task, ctx: TaskContext) -> str:
        release.wait(5)
        return "done"

    runner = system.started(handler, max_load=2)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    stopping = threading.Thread(target=runner.stop)
    stopping.start()
    wait_for(lambda: system.registry.get(AGENT).current_load == 2)
    other = system.tasks.create(Task(title="other", labels=["py"]))
    with pytest.raises(NoEligibleAgentError):
        system.dispatcher.dispatch(system.tasks.get(other.id))
    time.sleep(0.3)  # heartbeats during the drain keep it listed, full
    listed = system.registry.get(AGENT)
    assert (listed.current_load, listed.max_load) == (2, 2)
    release.set()
    stopping.join(10)
    assert system.tasks.get(task.id).status == TaskStatus.COMPLETED
    with pytest.raises(NotFoundError):
        system.registry.get(AGENT)
    assert system.events.kinds() == [
        EventType.AGENT_REGISTERED,
        EventType.TASK_COMPLETED,
        EventType.AGENT_OFFLINE,
    ]


def test_stop_after_grace_releases_and_cancels_the_reservation(system: System) -> None:
    """Past the grace a cooperative handler is cancelled and its task released; the
    tokens it spent are charged as for a failure (half of 200 returned)."""
    seen: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> None:
        ctx.usage("m", 100, 100)
        ctx.cancel_event.wait(5)
        seen.append(ctx.cancel_reason)
        raise TaskCancelled(ctx.cancel_reason)

    runner = system.started(handler, grace_period=0.1)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    runner.stop()
    assert seen == ["the agent is shutting down"]
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.retry_count, stored.claimed_by) == (TaskStatus.PENDING, 0, "")
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (100, 0)
    assert runner.released == 1
    requeued = [e.event for e in system.log.read() if e.event.type == EventType.TASK_REQUEUED]
    assert [e.payload["reason"] for e in requeued] == ["cancelled by agent shutdown"]


def test_stop_releases_a_handler_that_never_returns(system: System) -> None:
    """A handler that ignores cancellation at shutdown is released, not waited for."""
    runner = system.started(sleeps(10), grace_period=0.1, cancel_grace=0.1)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 5  # not the handler's 10 s
    assert system.tasks.get(task.id).status == TaskStatus.PENDING
    assert system.tasks.get(task.id).retry_count == 0


def test_sigterm_stops_run_in_the_main_thread(system: System) -> None:
    """SIGTERM makes run() finish the held task, deregister and return."""
    runner = system.runner(sleeps(0.2))
    task = system.tasks.create(Task(title="t", labels=["py"]))

    def dispatch_then_signal() -> None:
        wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
        system.dispatcher.dispatch(system.tasks.get(task.id))
        wait_for(lambda: runner.load == 1)
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=dispatch_then_signal)
    helper.start()
    runner.run()
    helper.join()
    assert system.tasks.get(task.id).status == TaskStatus.COMPLETED
    assert not system.registry.list()


def test_a_second_sigterm_skips_the_grace_and_gives_the_task_back(system: System) -> None:
    """A second SIGTERM cancels the running task at once (no 30 s grace), releases it
    (pending, no retry counted), deregisters and returns, saying it skipped the grace."""
    seen: list[str] = []
    runner = system.runner(stops_when_cancelled(seen), grace_period=30.0)
    task = system.tasks.create(Task(title="t", labels=["py"]))

    def dispatch_then_signal_twice() -> None:
        wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
        system.dispatcher.dispatch(system.tasks.get(task.id))
        wait_for(lambda: runner.load == 1)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(runner._draining.is_set)  # the first one: draining (listed full)
        time.sleep(0.3)  # later than an echo of the first (see agentic._signals)
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=dispatch_then_signal_twice)
    helper.start()
    started = time.monotonic()
    runner.run()
    helper.join()
    assert time.monotonic() - started < 10  # far from the 30 s grace
    assert seen == ["the agent is stopping at once (grace period skipped)"]
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.claimed_by, stored.retry_count) == (TaskStatus.PENDING, "", 0)
    assert runner.released == 1 and not system.registry.list()


def test_stop_now_skips_the_grace_period(system: System) -> None:
    """stop(now=True) does what a second signal does: the task is given back at once."""
    seen: list[str] = []
    runner = system.started(stops_when_cancelled(seen), grace_period=30.0)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    started = time.monotonic()
    runner.stop(now=True)
    assert time.monotonic() - started < 5
    assert system.tasks.get(task.id).status == TaskStatus.PENDING
    assert seen == ["the agent is stopping at once (grace period skipped)"]


def test_stop_now_stops_retrying_a_report_against_a_task_api_that_is_down(
    system: System,
) -> None:
    """Hurried, a report failing against an outage is not retried for minutes: the
    runner exits at once, the task is left to its lease, its usage already settled."""
    client = CompleteOutage(system.url, token="", retries=0)
    slow = RetryPolicy(max_retries=5, base=10.0, cap=30.0)  # 450 s of retries at most
    runner = system.runner(lambda task, ctx: "done", client=client, report_retry=slow)
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
    task = system.submit()
    wait_for(lambda: runner.errors >= 1)  # the first report failed: now waiting to retry
    started = time.monotonic()
    runner.stop(now=True)
    assert time.monotonic() - started < 5
    assert not runner._thread or not runner._thread.is_alive()
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.claimed_by) == (TaskStatus.IN_PROGRESS, AGENT)
    assert stored.job_id and system.quota.get_usage(AGENT).active_jobs == 0  # settled


@pytest.mark.parametrize("usage", [150, 0])
def test_a_report_given_up_on_is_made_by_the_next_runner_not_rerun(
    system: System, usage: int
) -> None:
    """A hurried runner whose report did not land keeps the job's file with its end
    and result (written at the first failed try when the job recorded no usage): the
    runner started next reports the still-claimed task as decided, not running it
    again, and the job is charged once."""
    client = CompleteOutage(system.url, token="", retries=0)
    slow = RetryPolicy(max_retries=5, base=10.0, cap=30.0)
    runs: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        runs.append(task.job_id)
        if usage:
            ctx.usage("m", usage, 0)
        return "done"

    runner = system.runner(handler, client=client, report_retry=slow, lease_seconds=30.0)
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
    task = system.submit()
    wait_for(lambda: runner.errors >= 1)
    runner.stop(now=True)
    assert system.quota.get_usage(AGENT).tokens_used == usage  # settled before the report
    second = system.started(handler)
    done = system.finished(task.id)
    assert done.status == TaskStatus.COMPLETED and done.result is not None
    assert done.result.output == "done"
    wait_for(lambda: second.completed == 1)
    assert len(runs) == 1 and second.released == 0  # reported by recovery, not run
    assert system.quota.get_usage(AGENT).tokens_used == usage  # charged once


def test_a_registry_that_hangs_does_not_hold_up_a_stop_at_once(system: System) -> None:
    """Deregistering runs beside the drain: with the registry hanging, stop(now=True)
    still cancels the running task, gives it back and returns at once."""
    seen: list[str] = []
    real = system.registry.deregister
    release = threading.Event()

    def hanging(agent_id: str) -> None:
        release.wait(10)
        real(agent_id)

    system.registry.deregister = hanging  # type: ignore[method-assign]
    runner = system.started(stops_when_cancelled(seen), grace_period=30.0)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    started = time.monotonic()
    runner.stop(now=True)
    assert time.monotonic() - started < 5
    assert seen == ["the agent is stopping at once (grace period skipped)"]
    assert system.tasks.get(task.id).status == TaskStatus.PENDING
    release.set()


class Renewals(TaskClient):
    """Records the lease length each renewal asks for."""

    def __init__(self, url: str) -> None:
        super().__init__(url, token="", retries=0)
        self.asked: list[float | None] = []

    def renew_lease(
        self,
        task_id: str,
        lease_seconds: float | None = None,
        agent_id: str | None = None,
        job_id: str | None = None,
    ) -> Task:
        self.asked.append(lease_seconds)
        return super().renew_lease(task_id, lease_seconds, agent_id, job_id)


def renewed_for(system: System, task_id: str) -> float:
    """Seconds the task's lease ran from its last renewal (as the server set it)."""
    stored = system.tasks.get(task_id)
    assert stored.lease_expires_at is not None and stored.updated_at is not None
    return (stored.lease_expires_at - stored.updated_at).total_seconds()


def test_renewals_send_the_claims_lease_length_not_the_servers_default(
    system: System,
) -> None:
    """A runner without lease_seconds renews with the length its claim was made with
    (120 s here), sent explicitly: the server's default (300 s) is never used."""
    client = Renewals(system.url)
    system.dispatcher.lease_seconds = 120
    gate = threading.Event()
    system.started(waits_for(gate), client=client)
    task = system.submit()
    wait_for(lambda: len(client.asked) >= 2)
    assert set(client.asked) == {120.0}
    assert renewed_for(system, task.id) == pytest.approx(120.0)
    gate.set()
    assert system.finished(task.id).status == TaskStatus.COMPLETED


def test_a_claim_taken_up_again_is_renewed_with_its_length_not_its_age(
    system: System,
) -> None:
    """A claim of 120 s renewed for an hour by a runner that then died, listed by a
    server older than the recorded length: its successor renews with 120 s (from the
    last renewal), not the hour since the claim."""
    client = Renewals(system.url)
    system.dispatcher.lease_seconds = 120
    runner = system.runner(lambda task, ctx: "done", client=client)
    system.registry.register(AgentInfo(id=AGENT, capabilities=["py"], max_load=1))
    task = system.submit()
    system.tasks.renew(task.id, AGENT, 120, job_id=system.tasks.get(task.id).job_id)
    aged = system.tasks.get(task.id)
    assert aged.claimed_at is not None
    hour_ago = aged.claimed_at - timedelta(hours=1)
    # as listed an hour on, by a server that records no lease length
    aged = aged.model_copy(update={"claimed_at": hour_ago, "lease_seconds": None})
    assert runner._lease_ttl(aged) == pytest.approx(120.0, abs=1.0)


def test_a_claim_taken_up_again_after_an_update_keeps_its_exact_length(
    system: System,
) -> None:
    """A claim renewed for 120 s and then updated 4 s later (a progress PATCH): a runner
    taking it up again renews with the 120 s the task records, where the time left
    from the update (all a server older than the record tells) is 116 s."""
    system.dispatcher.lease_seconds = 120
    runner = system.runner(lambda task, ctx: "done")
    system.registry.register(AgentInfo(id=AGENT, capabilities=["py"], max_load=1))
    task = system.submit()
    renewed = system.tasks.renew(task.id, AGENT, 120, job_id=system.tasks.get(task.id).job_id)
    assert renewed.updated_at is not None
    patched = renewed.model_copy(update={"updated_at": renewed.updated_at + timedelta(seconds=4)})
    assert runner._lease_ttl(patched) == 120.0
    unrecorded = patched.model_copy(update={"lease_seconds": None})
    assert runner._lease_ttl(unrecorded) == pytest.approx(116.0)


def test_configured_lease_seconds_overrides_the_claims(system: System) -> None:
    """lease_seconds (agent.lease_seconds) is what every renewal asks for, whatever
    length the claim was made with."""
    client = Renewals(system.url)
    system.dispatcher.lease_seconds = 120
    gate = threading.Event()
    system.started(waits_for(gate), client=client, lease_seconds=2.5)
    task = system.submit()
    wait_for(lambda: len(client.asked) >= 2)
    assert set(client.asked) == {2.5}
    assert renewed_for(system, task.id) == pytest.approx(2.5)
    gate.set()
    system.finished(task.id)


def test_a_claim_too_short_to_renew_is_renewed_for_15_s_with_one_warning(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """Claims of 8 s, no more than two 5 s heartbeats, are renewed for 15 s (three
    heartbeats) instead, and the runner warns once, not once per task."""
    client = Renewals(system.url)
    system.dispatcher.lease_seconds = 8
    gate = threading.Event()

    def held(task: Task, ctx: TaskContext) -> None:
        gate.wait(30)  # past the first renewal round (5 s): waits_for gives up at 5 s

    with caplog.at_level(logging.WARNING, logger="agentic.runner"):
        system.started(held, client=client, heartbeat_interval=5.0, max_load=2)
        first, second = system.submit("one"), system.submit("two")
        # one renewal round: 5 s
        wait_for(
            lambda: all(abs(renewed_for(system, t.id) - 15) < 0.01 for t in (first, second)), 12
        )
    assert client.asked[:2] == [15.0, 15.0]
    warnings = [r.getMessage() for r in caplog.records if "too short" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "a lease of 8 s" in warnings[0] and "renewed for 15 s instead" in warnings[0]
    assert "agent.lease_seconds" in warnings[0]
    gate.set()
    system.finished(first.id)
    system.finished(second.id)


class FlakyClient(TaskClient):
    """complete_task fails ``failures`` times: before sending, or after (answer lost)."""

    def __init__(self, url: str, failures: int, lose_answer: bool) -> None:
        super().__init__(url, token="", retries=0)
        self.failures = failures
        self.lose_answer = lose_answer
        self.calls = 0

    def complete_task(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        job_id: str | None = None,
    ) -> Task:
        self.calls += 1
        if self.calls > self.failures:
            return super().complete_task(task_id, result, agent_id, job_id)
        if self.lose_answer:
            super().complete_task(task_id, result, agent_id, job_id)
        raise TransportError("connection reset")


@pytest.mark.parametrize("lose_answer", [False, True], ids=["not-sent", "answer-lost"])
def test_completion_blip_is_retried_not_a_task_failure(system: System, lose_answer: bool) -> None:
    """A failed completion report is retried (never resent once it landed)."""
    client = FlakyClient(system.url, failures=2, lose_answer=lose_answer)
    runner = system.started(lambda task, ctx: "ok", client=client)
    task = system.finished(system.submit().id)
    assert (task.status, task.retry_count) == (TaskStatus.COMPLETED, 0)
    wait_for(lambda: runner.completed == 1)
    assert runner.failed == 0 and runner.errors >= 1
    assert client.calls == (1 if lose_answer else 3)


class RateLimitedClient(TaskClient):
    """complete_task and append_logs answer 429 ``refusals`` times each first."""

    def __init__(self, url: str, refusals: int) -> None:
        super().__init__(url, token="", retries=0)
        self.refusals = {"complete": refusals, "logs": refusals}
        self.reads = 0

    def _refuse(self, what: str) -> None:
        if self.refusals[what] > 0:
            self.refusals[what] -= 1
            error = APIError("over the rate limit", 429, from_response=True)
            error.retry_after = 0.01
            raise error

    def complete_task(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        job_id: str | None = None,
    ) -> Task:
        self._refuse("complete")
        return super().complete_task(task_id, result, agent_id, job_id)

    def append_logs(self, task_id: str, lines: Iterable[str]) -> int:
        self._refuse("logs")
        return super().append_logs(task_id, lines)

    def get_task(self, task_id: str) -> Task:
        self.reads += 1
        return super().get_task(task_id)


def test_a_rate_limited_server_delays_reports_but_loses_nothing(system: System) -> None:
    """429s (refused before any work) are waited out past the retry limit, without
    reading the task back, and the last log lines are sent again: the task completes
    once with its whole log."""
    client = RateLimitedClient(system.url, refusals=2 * FAST_RETRY.max_retries)

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.log("the end")
        return "ok"

    runner = system.started(handler, client=client)
    task = system.finished(system.submit().id)
    assert (task.status, task.retry_count) == (TaskStatus.COMPLETED, 0)
    wait_for(lambda: runner.completed == 1)
    assert client.reads == 0
    assert system.tasks.logs(task.id).lines[1:] == ["the end"]


def test_completion_that_keeps_failing_is_tried_while_the_lease_holds(system: System) -> None:
    """Reports failing far past the retries are tried while the lease is renewed, the
    task held and not started again, until one lands."""
    client = FlakyClient(system.url, failures=100, lose_answer=False)
    runs: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        runs.append(task.id)
        return "ok"

    runner = system.started(handler, client=client)
    task = system.submit()
    wait_for(lambda: runner.errors >= 50)
    assert system.tasks.get(task.id).status == TaskStatus.IN_PROGRESS and runner.load == 1
    assert system.finished(task.id).status == TaskStatus.COMPLETED
    assert runs == [task.id]


@pytest.mark.parametrize(
    ("spent", "before_work", "jobs"),
    [(0, True, 0), (0, False, 1), (8000, True, 1), (8000, False, 1)],
    ids=["unstarted", "after the work", "unstarted but spent", "spent"],
)
def test_infrastructure_error_releases_without_a_retry(
    system: System, spent: int, before_work: bool, jobs: int
) -> None:
    """An InfrastructureError gives the task back: pending, retry_count unchanged. One
    raised before the work began with no tokens spent does not count the job (it never
    ran); otherwise the job counts (a commit or push failed after the work), and tokens
    spent are charged as for a failure."""

    def handler(task: Task, ctx: TaskContext) -> None:
        ctx.usage("m", spent, 0)
        raise InfrastructureError("workspace unusable", before_work=before_work)

    runner = system.started(handler)
    task = system.finished(system.submit().id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    wait_for(lambda: runner.released == 1)
    assert runner.failed == 0
    wait_for(lambda: system.quota.get_usage(AGENT).active_jobs == 0)
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.jobs_started) == (spent // 2, jobs)


def test_a_task_that_keeps_causing_agent_errors_is_failed_the_third_time(system: System) -> None:
    """Given back twice for an agent error, the third time in a row the task is failed
    (a retry counted), so an error only it triggers cannot loop forever."""

    def handler(task: Task, ctx: TaskContext) -> None:
        raise InfrastructureError("push refused", before_work=False)

    def dispatched_again() -> bool:
        try:  # once the agent's pause has passed and it published room again
            return system.dispatcher.dispatch(system.tasks.get(task.id)) == AGENT
        except NoEligibleAgentError:
            return False

    runner = system.started(handler)
    runner.infrastructure_backoff = RetryPolicy(base=0.01, cap=0.01)
    task = system.submit()

    def given_back(times: int) -> Callable[[], bool]:
        return lambda: runner.released == times and runner.load == 0

    for times in (1, 2):
        wait_for(given_back(times))
        assert system.tasks.get(task.id).retry_count == 0
        wait_for(dispatched_again)
    done = system.finished(task.id)
    assert done.retry_count == 1 and done.result is not None
    expected = "push refused (an agent error 3 times in a row on this task here)"
    assert done.result.error_message == expected
    wait_for(lambda: runner.failed == 1)


def test_an_unstarted_jobs_give_back_is_tried_again_until_it_lands(system: System) -> None:
    """A quota store down while an unstarted job's reservation is given back: kept and
    retried with later heartbeats like a settle, so the slot is freed uncounted."""
    down = threading.Event()
    down.set()
    real_unreserve = system.quota.unreserve

    def unreserve(job_id: str) -> Any:
        if down.is_set():
            raise StoreError("quota store unreachable")
        return real_unreserve(job_id)

    system.quota.unreserve = unreserve  # type: ignore[method-assign]

    def handler(task: Task, ctx: TaskContext) -> None:
        raise InfrastructureError("cannot start 'x'", before_work=True)

    runner = system.started(handler)
    system.submit()
    wait_for(lambda: runner.reporter.unsettled == 1)
    assert system.quota.get_usage(AGENT).active_jobs == 1  # still held
    runner.stop()  # no more attempts: the one give-back waits for the store
    down.clear()
    runner.reporter.settle_pending(wait=True)
    usage = system.quota.get_usage(AGENT)
    assert (usage.jobs_started, usage.active_jobs, runner.reporter.unsettled) == (0, 0, 0)


@pytest.mark.parametrize("max_load", [2, 0], ids=["max_load 2", "unlimited"])
def test_infrastructure_error_pauses_the_agent(system: System, max_load: int) -> None:
    """After an agent error the runner is published full and gives back what it is
    handed, so the work goes to other agents; it takes work again after the pause."""
    calls: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        calls.append(task.id)
        if len(calls) == 1:
            raise InfrastructureError("binary missing")
        return "ok"

    runner = system.started(handler, max_load=max_load)
    runner.infrastructure_backoff = RetryPolicy(base=1.5, cap=1.5, jitter="equal")
    first = system.submit("first")
    wait_for(lambda: runner.paused)
    # Published full by the heartbeat that follows the pause (not at the same instant).
    wait_for(lambda: system.registry.get(AGENT).current_load == system.registry.get(AGENT).max_load)
    assert system.registry.get(AGENT).max_load > 0
    with pytest.raises(NoEligibleAgentError):
        system.dispatcher.dispatch(system.tasks.get(first.id))
    # a task claimed for it anyway (a dispatcher with an older view) is given back
    second = system.tasks.create(Task(title="second", labels=["py"]))
    system.client.claim_task(second.id, agent_id=AGENT)
    wait_for(lambda: system.tasks.get(second.id).status == TaskStatus.PENDING)
    assert calls == [first.id]
    wait_for(lambda: not runner.paused and system.registry.get(AGENT).current_load == 0)
    # an unlimited agent is published with its capacity (max_workers, 32) as its limit
    assert system.registry.get(AGENT).max_load == (max_load or 32)
    assert system.dispatcher.dispatch(system.tasks.get(first.id)) == AGENT
    assert system.finished(first.id).status == TaskStatus.COMPLETED
    assert calls == [first.id, first.id]


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail closed", "fail open"])
def test_a_settle_that_fails_is_tried_again_until_it_lands(system: System, fail_open: bool) -> None:
    """A quota store down through every retry of a settle: the settlement is kept and
    lands with a later heartbeat, charging the tokens and freeing the slot."""
    down = threading.Event()
    down.set()
    real_settle = system.quota.settle

    def settle(*args: Any, **kwargs: Any) -> Any:
        if down.is_set():
            raise StoreError("quota store unreachable")
        return real_settle(*args, **kwargs)

    system.quota.settle = settle  # type: ignore[method-assign]

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 70, 30)
        return "done"

    runner = system.started(handler)
    assert runner.reporter.allowance is not None
    runner.reporter.allowance.fail_open = fail_open  # open: settle answers None, not raises
    task = system.finished(system.submit().id)
    assert task.status is TaskStatus.COMPLETED
    wait_for(lambda: runner.reporter.unsettled == 1)
    assert system.quota.get_usage(AGENT).active_jobs == 1  # still held
    down.clear()
    wait_for(lambda: runner.reporter.unsettled == 0)
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (100, 0)


def test_a_settle_refused_for_good_is_not_kept(system: System) -> None:
    """A settle the store refuses for a reason no retry fixes is logged and dropped."""
    real_settle = system.quota.settle

    def settle(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError("tokens beyond the exact range")

    system.quota.settle = settle  # type: ignore[method-assign]
    runner = system.started(lambda task, ctx: "done")
    system.finished(system.submit().id)
    wait_for(lambda: runner.completed == 1)
    assert runner.reporter.unsettled == 0
    assert runner.errors >= 1
    system.quota.settle = real_settle  # type: ignore[method-assign]


class FlakyRegistry(MemoryRegistry):
    """register fails the first ``failures`` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def register(self, info: AgentInfo) -> AgentInfo:
        if self.failures:
            self.failures -= 1
            raise StoreError("registry down")
        return super().register(info)


def test_registry_outage_at_start_is_retried(system: System) -> None:
    """Registration retries with backoff, counting each failure."""
    system.registry = FlakyRegistry(failures=2)
    runner = system.started(lambda task, ctx: None)
    assert runner.errors == 2


def test_deregistered_agent_registers_again(system: System) -> None:
    """A heartbeat that finds the agent gone registers it again."""
    system.started(lambda task, ctx: None)
    system.registry.deregister(AGENT)
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})


def test_bad_configuration_is_refused(system: System) -> None:
    """A lease shorter than two heartbeats, or max_load given twice, is a ConfigError."""
    from agentic.errors import ConfigError

    with pytest.raises(ConfigError, match="lease_seconds"):
        system.runner(lambda task, ctx: None, heartbeat_interval=5, lease_seconds=6)
    with pytest.raises(ConfigError, match="twice"):
        AgentRunner(AgentInfo(id="x"), system.client, system.registry, print, max_load=2)


def test_every_number_of_seconds_is_checked_when_built(system: System) -> None:
    """NaN, infinity, past 1e9 s or out of range for any interval, lease, timeout or
    grace is a ConfigError naming it (NaN passed the old "> 0" check, and an infinite
    heartbeat_interval failed later in a background thread)."""
    from agentic.errors import ConfigError

    def noop(task: Any, ctx: Any) -> None:
        return None

    for option in (
        "heartbeat_interval",
        "poll_interval",
        "log_flush_interval",
        "id_lease",
        "max_job_duration",
        "grace_period",
        "cancel_grace",
    ):
        for bad in (-1, float("nan"), float("inf"), 1e10):
            options: dict[str, Any] = {option: bad}
            with pytest.raises(ConfigError, match=f"{option} must be a number of seconds"):
                system.runner(noop, **options)
    with pytest.raises(ConfigError, match="lease_seconds must be a number of seconds"):
        system.runner(noop, lease_seconds=float("nan"))
    with pytest.raises(ConfigError, match="max_workers must be an integer from 1"):
        system.runner(noop, max_workers=0)
    assert system.runner(noop, grace_period=0, cancel_grace=0, max_job_duration=1e9)


def test_a_runner_runs_once(system: System) -> None:
    """run() after a finished run is refused: a runner's state is not reusable."""
    from agentic.errors import ConfigError

    runner = system.started(sleeps(0))
    runner.stop()
    with pytest.raises(ConfigError, match="once"):
        runner.run()


class CountingRegistry(MemoryRegistry):
    """Counts heartbeats."""

    beats = 0

    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        self.beats += 1
        return super().heartbeat(agent_id, load)


def test_load_changes_are_published_at_most_every_tenth_of_a_second(system: System) -> None:
    """Thirty quick tasks start and end 60 times; their load reaches the registry in
    spaced heartbeats, not one per start and per end, and the last load is published."""
    counting = CountingRegistry()
    system.registry = counting
    system.dispatcher.registry = counting
    runner = system.started(lambda task, ctx: "done", max_load=10, heartbeat_interval=5.0)
    started = time.monotonic()
    for round_ in range(3):  # ten at a time: the agent's max_load
        tasks = [system.submit(f"t{round_}.{n}") for n in range(10)]
        for task in tasks:
            assert system.finished(task.id).status is TaskStatus.COMPLETED
        wait_for(lambda: not runner.load)
    wait_for(lambda: counting.get(AGENT).current_load == 0)
    elapsed = time.monotonic() - started
    assert counting.beats <= 2 + elapsed / 0.1 + 2  # registration, spaced beats, the last
    assert counting.beats < 60
    runner.stop()


class HangingRenewals(TaskClient):
    """A task API whose lease renewals hang until ``hang`` is cleared."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang = threading.Event()
        self.hang.set()
        self.hanging = threading.Event()

    def renew_lease(self, *args: Any, **kwargs: Any) -> Task:
        if self.hang.is_set():
            self.hanging.set()
            while self.hang.is_set():
                time.sleep(0.01)
        return super().renew_lease(*args, **kwargs)


def test_a_hanging_task_api_does_not_delay_heartbeats(system: System) -> None:
    """While a lease renewal hangs on the task API, the registry still gets a
    heartbeat every heartbeat_interval: the agent is not reaped as silent."""
    counting = CountingRegistry()
    system.registry = counting
    system.dispatcher.registry = counting
    client = HangingRenewals(system.url, token="", retries=0)
    gate = threading.Event()
    system.started(waits_for(gate), client=client, lease_seconds=300)
    task = system.submit()
    assert client.hanging.wait(5.0)
    before = counting.beats
    time.sleep(1.0)  # ten heartbeat intervals with the renewal hung
    assert counting.beats - before >= 5
    client.hang.clear()
    gate.set()
    assert system.finished(task.id).status is TaskStatus.COMPLETED


class HangingRegistry(MemoryRegistry):
    """A registry whose heartbeats hang while ``hang`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.hanging = threading.Event()

    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        if self.hang.is_set():
            self.hanging.set()
            while self.hang.is_set():
                time.sleep(0.01)
        return super().heartbeat(agent_id, load)


def test_a_hanging_registry_does_not_delay_lease_renewals(system: System) -> None:
    """While a heartbeat hangs on the registry, held leases are still renewed."""
    hanging = HangingRegistry()
    system.registry = hanging
    system.dispatcher.registry = hanging
    gate = threading.Event()
    system.started(waits_for(gate), lease_seconds=300)
    task = system.submit()
    hanging.hang.set()
    assert hanging.hanging.wait(5.0)
    first = system.tasks.get(task.id).lease_expires_at
    assert first is not None
    wait_for(lambda: (system.tasks.get(task.id).lease_expires_at or first) > first)
    hanging.hang.clear()
    gate.set()
    assert system.finished(task.id).status is TaskStatus.COMPLETED


class OldServer(TaskClient):
    """A client of a task API that lists no features (older, or go-agentic's)."""

    def server_features(self) -> frozenset[str]:
        return frozenset()


@pytest.mark.parametrize("old", [True, False], ids=["old server", "this server"])
def test_a_server_without_attempt_fencing_is_named_at_start(
    system: System, caplog: pytest.LogCaptureFixture, old: bool
) -> None:
    """A runner warns at start when the task API does not list attempt_fencing (job
    ids would be ignored); against this server it says nothing."""
    client = OldServer(system.url, token="", retries=0) if old else None
    with caplog.at_level(logging.WARNING, logger="agentic"):
        runner = system.started(lambda task, ctx: "done", client=client)
        runner.stop()
    assert ("does not list attempt_fencing" in caplog.text) is old


class LateOldServer(TaskClient):
    """An old task API (no features) whose health check fails for its first answers."""

    failures = 3

    def server_features(self) -> frozenset[str]:
        if self.failures:
            self.failures -= 1
            raise TransportError("health check: connection refused")
        return frozenset()


def test_a_server_unreachable_at_start_is_checked_once_it_answers(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A task API whose health check fails when the runner starts is asked again at
    the next polls, so an old server is still named (it was never checked again)."""
    client = LateOldServer(system.url, token="", retries=0)
    with caplog.at_level(logging.WARNING, logger="agentic"):
        runner = system.started(lambda task, ctx: "done", client=client)
        wait_for(lambda: "does not list attempt_fencing" in caplog.text)
        runner.stop()
    assert caplog.text.count("does not list attempt_fencing") == 1


@pytest.mark.parametrize("has_allowance", [True, False], ids=["allowance", "none"])
def test_an_agent_without_an_allowance_is_told_at_start(
    system: System, caplog: pytest.LogCaptureFixture, has_allowance: bool
) -> None:
    """A runner whose agent has no allowance warns at start, naming the command that
    sets one: no dispatcher gives it work, and nothing else on its side would say so."""
    quota = MemoryAllowanceStore()
    if has_allowance:
        quota.set_allowance(AgentAllowance(agent_id=AGENT, daily_job_limit=5))
    agent = AgentInfo(id=AGENT, capabilities=["py"], max_load=1)
    runner = AgentRunner(
        agent, system.client, system.registry, lambda task, ctx: "done", AllowanceService(quota)
    )
    with caplog.at_level(logging.WARNING, logger="agentic"):
        runner.start()
        wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
        runner.stop()
    assert ("has no allowance" in caplog.text) is not has_allowance
    assert (f"agentic allowance set {AGENT}" in caplog.text) is not has_allowance


def test_a_model_outside_the_allowlist_is_warned_about_and_charged(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A task naming no model passes the allowlist at reserve; when its usage names a
    model outside it, the runner says so, and the tokens are charged all the same."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("forbidden", 10, 0)
        ctx.usage("ok", 5, 0)
        return "done"

    runner = system.runner(handler)
    system.quota.set_allowance(AgentAllowance(agent_id=AGENT, model_allowlist=["ok"]))
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
    with caplog.at_level(logging.WARNING, logger="agentic.runner"):
        assert system.finished(system.submit().id).status is TaskStatus.COMPLETED
        wait_for(lambda: runner.completed == 1)
    warned = [r.getMessage() for r in caplog.records if "allowlist" in r.getMessage()]
    assert len(warned) == 1 and "'forbidden'" in warned[0] and "'ok'," not in warned[0]
    assert system.quota.get_usage(AGENT).tokens_used == 15


def test_a_lease_length_an_older_servers_renewal_left_behind_is_not_used() -> None:
    """A recorded lease length shorter than the claim's times is not used: an older
    server renewing for 600 s leaves the field at the claim's 30, and 600 wins."""
    renewed = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    task = Task(
        title="t",
        claimed_at=renewed - timedelta(seconds=10),
        updated_at=renewed,
        lease_expires_at=renewed + timedelta(seconds=600),
        lease_seconds=30.0,
    )
    assert claim_lease(task) == 600.0
    # Recorded exactly, then a progress update 40 s after the renewal: still exact.
    exact = task.model_copy(
        update={"lease_seconds": 600.0, "updated_at": renewed + timedelta(seconds=40)}
    )
    assert claim_lease(exact) == 600.0
    assert claim_lease(task.model_copy(update={"lease_seconds": None})) == 600.0
    assert claim_lease(Task(title="t")) is None


def test_heartbeats_landing_again_after_failures_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After failed heartbeats, the first that lands says so (once): a runner's log
    must not end on the last failure of a registry outage that is over."""
    failing = [StoreError("down"), StoreError("down")]

    class Flaky(MemoryRegistry):
        def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
            if failing:
                raise failing.pop(0)
            return super().heartbeat(agent_id, load)

    errors: list[str] = []
    presence = Presence(Flaky(), AgentInfo(id="a"), lambda: 0, lambda what, e: errors.append(what))
    assert presence.register(threading.Event(), 0.01)
    with caplog.at_level(logging.INFO, logger="agentic.runner"):
        for _ in range(4):
            presence.heartbeat()
    assert errors == ["heartbeat failed", "heartbeat failed"]
    said = [r.getMessage() for r in caplog.records if "land again" in r.getMessage()]
    assert said == ["agent a: heartbeats land again after 2 failure(s)"]
