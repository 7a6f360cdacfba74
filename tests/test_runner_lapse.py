"""A runner whose agent-id lease goes unrenewed lapses (``runner/_idwatch.py``).

Once less than the margin (its cancel grace and a safety) of the id lease is left
unrenewed, the runner takes no work and cancels its running attempts without
reporting or settling them, before a second runner with the same id could take the
id and the same claims; a renewal that lands again (nobody took the id) makes it take
work again, the claims still held for it taken up again as by a restart.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agentic.allowance import AllowanceService
from agentic.errors import StoreUnavailableError
from agentic.events import EventType
from agentic.models import AgentInfo, AgentStatus, Task, TaskStatus, TaskUpdate
from agentic.runner import AgentRunner, Handler, TaskCancelled, TaskContext
from agentic.runner._idwatch import lapse_margin, runner_id_lease
from agentic.stores import open_registry
from agentic.stores.base import AgentRegistry
from agentic.stores.memory import MemoryRegistry

from .test_runner import AGENT, System, build_system, wait_for
from .test_runner_identity import OutageRegistry, holder_of, left_unreported

# A lease of 2 s with a cancel grace of 0.2 s: lapsed 0.8 s after the last renewal.
LEASE, GRACE = 2.0, 0.2


@pytest.fixture
def system() -> Iterator[System]:
    with build_system() as made:
        yield made


def lapse_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "its id lease lapsed" in r.getMessage()]


def completions(system: System, task_id: str) -> int:
    """How many times the task store recorded the task completed."""
    return sum(
        1
        for logged in system.log.read(0, 1000)
        if logged.event.task_id == task_id and logged.event.type is EventType.TASK_COMPLETED
    )


def test_the_margin_covers_the_cancel_grace_and_leaves_three_beats() -> None:
    """Lapsed with the cancel grace and a safety (1 s, or a tenth of the lease) left;
    a lease too short for three renewals before that is lengthened."""
    assert lapse_margin(30.0, 5.0) == 8.0  # the CLI's defaults: lapsed after 22 s
    assert lapse_margin(2.0, 0.2) == pytest.approx(1.2)
    assert runner_id_lease(5.0, None, 5.0) == 30.0
    assert runner_id_lease(5.0, 15.0, 5.0) == pytest.approx((5.0 + 15.0) / 0.9)
    assert runner_id_lease(0.1, LEASE, GRACE) == LEASE


def test_the_lease_leaves_three_beats_before_the_lapse_whatever_the_settings() -> None:
    """The lease held, less the margin the watch takes of that lease, spans three
    heartbeats for any settings (a long cancel grace lapsed a runner at every beat)."""
    for beat in (0.1, 1.0, 5.0, 30.0):
        for lease in (None, 1.0, 15.0, 30.0, 600.0):
            for grace in (0.0, 0.2, 5.0, 60.0, 300.0, 3600.0):
                held = runner_id_lease(beat, lease, grace)
                assert held - lapse_margin(held, grace) >= 3 * beat - 1e-9, (beat, lease, grace)
                assert held >= (lease or 0.0)


def test_a_lapsed_runner_cancels_unreported_takes_nothing_then_resumes(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals failing past lease - margin: the running attempt is cancelled, neither
    reported nor settled, and no work is taken (a claim made meanwhile waits); once a
    renewal lands with the id still ours, the still-claimed task runs again and
    completes once, charged once with the cancelled run's tokens."""
    caplog.set_level(logging.INFO, "agentic.runner")
    system.registry = registry = OutageRegistry()
    system.dispatcher.registry = registry
    calls: Counter[str] = Counter()
    cancelled: list[tuple[str, float]] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        calls[task.id] += 1
        ctx.log(f"run {calls[task.id]}")
        if task.title == "long" and calls[task.id] == 1:
            ctx.usage("m", 100, 50)  # spent before the lapse
            ctx.cancel_event.wait(10)
            cancelled.append((ctx.cancel_reason, time.monotonic()))
            raise TaskCancelled(ctx.cancel_reason)
        ctx.usage("m", 10, 5)
        return "done"

    runner = system.started(handler, id_lease=LEASE, cancel_grace=GRACE, max_load=2)
    task = system.submit("long")
    wait_for(lambda: calls[task.id] == 1)
    job_id = system.tasks.get(task.id).job_id
    registry.down.set()
    down_at = time.monotonic()
    wait_for(lambda: cancelled, timeout=LEASE + 1)
    [(reason, at)] = cancelled
    # After lease - margin (less one beat: the last renewal may predate the outage),
    # and with the cancel grace and more left before the lease could run out.
    assert LEASE - lapse_margin(LEASE, GRACE) - 0.15 <= at - down_at <= LEASE - GRACE - 0.5
    assert "id lease ran out unrenewed" in reason
    assert runner.lapsed and runner.id_watch.lapses == 1
    wait_for(lambda: runner.load == 0)
    # Not reported and not settled: still claimed under the same job, still reserved.
    left_unreported(system, runner, task.id, job_id)
    [warning] = lapse_warnings(caplog)
    assert "1 running task(s) cancelled, neither reported nor settled" in warning
    assert "registry down" in warning  # the last renewal's error
    assert runner.errors >= 2  # the failed renewals and the lapse
    # Published full while lapsed (the registry takes heartbeats here): no routing.
    wait_for(lambda: registry.get(AGENT).current_load == 2)
    # A claim made for the agent meanwhile is neither run nor given back.
    later = system.tasks.create(Task(title="later", labels=["py"]))
    AllowanceService(system.quota).reserve(AGENT, "", 0, "job-later", later.id)
    system.client.claim_task(later.id, AGENT, job_id="job-later")
    time.sleep(0.5)
    assert calls[later.id] == 0
    assert system.tasks.get(later.id).status is TaskStatus.IN_PROGRESS
    assert runner.lapsed
    # The registry is back and nobody took the id: the runner takes work again.
    registry.down.clear()
    wait_for(lambda: not runner.lapsed)
    assert system.finished(task.id).status is TaskStatus.COMPLETED
    assert system.finished(later.id).status is TaskStatus.COMPLETED
    wait_for(lambda: runner.completed == 2)
    assert (calls[task.id], calls[later.id]) == (2, 1)
    assert completions(system, task.id) == 1
    assert runner.displaced_by is None
    assert holder_of(system) == runner._id.holder
    # The cancelled run's tokens joined the rerun's settle (its usage file): charged once.
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (100 + 50 + 15 + 15, 0)
    assert any("renewed again after" in r.getMessage() for r in caplog.records)
    # The task's log says the job ran again, and why its run before ended.
    lines = system.tasks.logs(task.id).lines
    headers = [line for line in lines if line.startswith("[agentic: ")]
    assert lines.index("run 1") < lines.index(headers[-1]) < lines.index("run 2")
    assert headers[-1].startswith(f"[agentic: {AGENT} runs job {job_id} again (its run before")
    assert "stopped unreported: " in headers[-1] and "id lease ran out" in headers[-1]


def test_a_runner_stopped_while_lapsed_leaves_its_claims_and_entry(system: System) -> None:
    """Stopped while lapsed (the registry still out of reach): nothing is given back,
    reported or settled, the registry entry stays (it may be another runner's), and
    the stop takes no longer than the handlers' cancel grace."""
    system.registry = registry = OutageRegistry()
    system.dispatcher.registry = registry
    seen: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.cancel_event.wait(10)
        seen.append(ctx.cancel_reason)
        raise TaskCancelled(ctx.cancel_reason)

    runner = system.started(handler, id_lease=LEASE, cancel_grace=GRACE)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    registry.down.set()
    wait_for(lambda: runner.lapsed and runner.load == 0, timeout=LEASE + 1)
    began = time.monotonic()
    runner.stop()
    assert time.monotonic() - began < 2.0
    assert len(seen) == 1 and "id lease ran out unrenewed" in seen[0]
    current = system.tasks.get(task.id)
    assert (current.status, current.claimed_by) == (TaskStatus.IN_PROGRESS, AGENT)
    assert runner.completed == runner.failed == runner.released == 0
    assert system.quota.get_usage(AGENT).active_jobs == 1
    assert AGENT in {agent.id for agent in registry.list()}


class Unreachable(AgentRegistry):
    """Another registry, seen through a link that can be cut: while ``down`` is set
    every call raises :class:`StoreUnavailableError`, as a store out of reach."""

    def __init__(self, inner: AgentRegistry) -> None:
        self.inner = inner
        self.down = threading.Event()

    def _reach(self) -> AgentRegistry:
        if self.down.is_set():
            raise StoreUnavailableError("registry unreachable")
        return self.inner

    def register(self, info: AgentInfo) -> AgentInfo:
        return self._reach().register(info)

    def deregister(self, agent_id: str) -> None:
        self._reach().deregister(agent_id)

    def get(self, agent_id: str) -> AgentInfo:
        return self._reach().get(agent_id)

    def list(
        self, status: AgentStatus | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        return self._reach().list(status, capability)

    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        return self._reach().heartbeat(agent_id, load)

    def reap(self, ttl: float | timedelta) -> builtins.list[str]:
        return self._reach().reap(ttl)

    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        return self._reach().hold_lease(name, holder, ttl)

    def drop_lease(self, name: str, holder: str) -> None:
        self._reach().drop_lease(name, holder)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_runner_cut_from_the_registry_stops_before_its_twin_takes_over(
    system: System, tmp_path: Path, store: str
) -> None:
    """Runner A loses the registry for longer than the id lease; runner B with the
    same id takes the id and runs the claimed task (same claim, same job): A's handler
    had stopped before B's started, the task completes once, charged once with both
    runs' tokens, and A, back in reach, finds itself displaced."""
    if store == "sqlite":
        real: AgentRegistry = open_registry(f"sqlite:///{tmp_path}/registry.db")
    else:
        real = MemoryRegistry()
    system.registry = real  # type: ignore[assignment]  # the dispatcher's and B's
    system.dispatcher.registry = real
    cut = Unreachable(real)
    seen: list[tuple[str, str, float]] = []  # (runner, start / end, monotonic time)
    grace = 0.5

    def handler_of(name: str) -> Handler:
        def handler(task: Task, ctx: TaskContext) -> str:
            seen.append((name, "start", time.monotonic()))
            try:
                if name == "A":
                    ctx.usage("m", 100, 50)
                    ctx.cancel_event.wait(30)
                    time.sleep(0.3)  # a process that takes a moment to stop
                    raise TaskCancelled(ctx.cancel_reason)
                time.sleep(0.2)
                ctx.usage("m", 10, 5)
                return "done by B"
            finally:
                seen.append((name, "end", time.monotonic()))

        return handler

    system.registry = cut  # type: ignore[assignment]  # A's only
    a = system.runner(handler_of("A"), id_lease=2.5, cancel_grace=grace)
    system.registry = real  # type: ignore[assignment]
    a.start()
    wait_for(lambda: AGENT in {agent.id for agent in real.list()})
    task = system.submit()
    wait_for(lambda: [s for s in seen if s[:2] == ("A", "start")])
    cut.down.set()
    b = system.runner(handler_of("B"), id_lease=2.5, cancel_grace=grace)
    b.start()  # waits for the id: A's lease has not run out
    assert system.finished(task.id).status is TaskStatus.COMPLETED
    events = [(name, what) for name, what, _ in seen]
    assert events == [("A", "start"), ("A", "end"), ("B", "start"), ("B", "end")]
    a_end = next(at for name, what, at in seen if (name, what) == ("A", "end"))
    b_start = next(at for name, what, at in seen if (name, what) == ("B", "start"))
    assert a_end < b_start  # never both running at once
    assert completions(system, task.id) == 1
    wait_for(lambda: b.completed == 1)  # counted once the report's answer is read
    assert a.completed == 0
    assert a.id_watch.lapses == 1
    # B took A's usage file up with the claim (one machine): both runs charged, once.
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (150 + 15, 0)
    # Back in reach, A's next renewal finds B holding the id: displaced, it stops.
    cut.down.clear()
    assert a._thread is not None
    a._thread.join(5)
    assert not a._thread.is_alive()
    assert a.displaced_by == b._id.holder
    assert AGENT in {agent.id for agent in real.list()}  # B's entry, left alone
    b.stop()
    real.close()


def test_a_lapsed_runner_keeps_no_reservation_alive() -> None:
    """The keepalive extends no reservation of an attempt cancelled by the lapse while
    its handler is still stopping (the job may be another runner's now)."""
    from .test_runner_keepalive import quota_system

    with quota_system(reservation_ttl=0.6) as system:
        system.registry = registry = OutageRegistry()
        system.dispatcher.registry = registry

        def handler(task: Task, ctx: TaskContext) -> str:
            ctx.cancel_event.wait(10)
            time.sleep(0.9)  # a handler that takes a while to stop
            raise TaskCancelled(ctx.cancel_reason)

        runner = system.started(handler, id_lease=LEASE, cancel_grace=1.5)
        system.submit()
        wait_for(lambda: runner.keepalive.extended >= 2)  # kept alive while it runs
        registry.down.set()
        wait_for(lambda: runner.lapsed, timeout=LEASE + 1)
        time.sleep(0.05)  # a round planned before the lapse may still land
        kept = runner.keepalive.extended
        wait_for(lambda: runner.load == 0, timeout=3)
        assert runner.keepalive.extended == kept


def test_a_long_cancel_grace_does_not_lapse_a_runner_in_reach(system: System) -> None:
    """A cancel grace far longer than the id lease (a handler given minutes to stop)
    lengthens the lease: the runner keeps its id and works (it lapsed at every beat)."""
    runner = system.started(lambda task, ctx: "done", id_lease=LEASE, cancel_grace=30.0)
    time.sleep(0.3)
    assert not runner.lapsed and runner.id_watch.lapses == 0
    assert system.finished(system.submit().id).status is TaskStatus.COMPLETED


def test_load_changes_more_often_than_a_heartbeat_do_not_lapse_the_id_lease(
    system: System,
) -> None:
    """A runner whose load changes more often than every heartbeat (tasks starting
    and ending back to back) still renews its id lease each heartbeat: it never lapses
    (the beats publishing each change pushed the next renewal back past the lapse)."""
    runner = system.started(
        lambda task, ctx: time.sleep(0.02), heartbeat_interval=0.3, id_lease=LEASE
    )
    lapse_after = runner._id.ttl - runner.id_watch.margin
    end = time.monotonic() + 2 * lapse_after + 0.5
    while time.monotonic() < end and not runner.lapsed:
        # Both counts: the registry's (the dispatcher routes by it) and the runner's
        # own (a claim arriving while its slot is still taken is given back).
        wait_for(
            lambda: (
                (runner.load == 0 and system.registry.get(AGENT).current_load == 0) or runner.lapsed
            )
        )
        if not runner.lapsed:
            assert system.finished(system.submit().id).status is TaskStatus.COMPLETED
    assert runner.id_watch.lapses == 0 and not runner.lapsed


def test_a_lapse_ended_before_its_cancelled_run_stopped_still_settles_that_run(
    system: System,
) -> None:
    """A lapse whose renewal lands before its cancelled run has stopped (a runner
    frozen past its lease, then resumed: both at once): once the run stops and its
    claim has ended meanwhile, its recorded tokens are settled (as failed) while the
    runner runs on, not left uncharged until the agent starts again."""
    system.registry = registry = OutageRegistry()
    system.dispatcher.registry = registry
    runner: list[AgentRunner] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 100, 50)
        ctx.cancel_event.wait(10)
        # Cancelled by the lapse: the registry is back, the lapse ends before this
        # run stops, and the task's claim ended meanwhile (an operator's cancel).
        registry.down.clear()
        wait_for(lambda: not runner[0].lapsed, timeout=2)
        system.client.update_task(task.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="x"))
        raise TaskCancelled(ctx.cancel_reason)

    runner.append(system.started(handler, id_lease=3.0, cancel_grace=1.0))
    task = system.submit("frozen")
    wait_for(lambda: runner[0].load == 1)
    registry.down.set()
    wait_for(lambda: runner[0].id_watch.lapses == 1, timeout=4)
    wait_for(lambda: runner[0].load == 0, timeout=4)
    assert system.tasks.get(task.id).status is TaskStatus.FAILED
    # Failed: half of what it recorded, and its reservation given back.
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 75, timeout=3)
    assert system.quota.get_usage(AGENT).active_jobs == 0
    assert runner[0].recovery is not None and not runner[0].recovery.pending


def test_a_run_that_finished_as_the_id_lapsed_is_reported_once_back_not_run_again(
    system: System,
) -> None:
    """A handler that returns its result just as the id lease lapses (the registry out
    of reach) is not reported then, but its end is written down: once a renewal lands
    with the id still ours, the task is completed with that result, not run again."""
    system.registry = registry = OutageRegistry()
    system.dispatcher.registry = registry
    calls: Counter[str] = Counter()

    def handler(task: Task, ctx: TaskContext) -> str:
        calls[task.id] += 1
        ctx.usage("m", 100, 50)
        if calls[task.id] == 1:
            registry.down.set()
            ctx.cancel_event.wait(10)  # the lapse: its work is done all the same
        return "finished as the id lapsed"

    runner = system.started(handler, id_lease=LEASE, cancel_grace=GRACE)
    task = system.submit("lapsing")
    wait_for(lambda: runner.id_watch.lapses == 1, timeout=LEASE + 1)
    wait_for(lambda: runner.load == 0)
    assert system.tasks.get(task.id).status is TaskStatus.IN_PROGRESS  # not reported
    registry.down.clear()
    done = system.finished(task.id)
    assert done.status is TaskStatus.COMPLETED
    assert done.result is not None and done.result.output == "finished as the id lapsed"
    assert calls[task.id] == 1 and completions(system, task.id) == 1
    wait_for(lambda: system.quota.get_usage(AGENT).tokens_used == 150)
    assert system.quota.get_usage(AGENT).active_jobs == 0
