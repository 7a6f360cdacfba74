"""One runner per agent id: the ``agent:<id>`` registry lease (``runner/_idlease.py``).

A second runner with the same id waits (warning once, naming the holder) and starts
when the first stops or its lease runs out; a runner whose lease another took is
displaced: it cancels its tasks without reporting or charging them, and stops.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agentic.client import TaskClient
from agentic.errors import StoreError
from agentic.models import Task, TaskStatus
from agentic.runner import AgentRunner, Handler, TaskContext
from agentic.runner._idlease import IdLease, id_lease_name, id_lease_ttl
from agentic.stores import open_registry
from agentic.stores._holders import lease_holder_gone, new_lease_holder
from agentic.stores.base import DEFAULT_HEARTBEAT_TTL
from agentic.stores.memory import MemoryRegistry

from .conftest import Backend

# clean_environment is autouse in test_cli: imported here, it applies here too.
from .test_cli import clean_environment  # noqa: F401
from .test_e2e_processes import (
    Fleet,
    Proc,
    create,
    fleet_on,
    marker_command,
    ran_once,
    registered,
    wait_completed,
    wait_until,
)
from .test_runner import AGENT, System, build_system, wait_for

LEASE = id_lease_name(AGENT)


@pytest.fixture
def system() -> Iterator[System]:
    """Memory stores, a task server and a dispatcher (test_runner's), runners on demand."""
    with build_system() as made:
        yield made


def records(ran: list[str], name: str) -> Handler:
    """A handler that notes ``name`` (which runner ran it) and returns."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ran.append(name)
        return "done"

    return handler


def left_unreported(system: System, runner: AgentRunner, task_id: str, job_id: str) -> None:
    """The task is still claimed for the agent under ``job_id``, the runner reported
    nothing, and the job is still reserved, uncharged."""
    current = system.tasks.get(task_id)
    assert (current.status, current.claimed_by, current.job_id) == (
        TaskStatus.IN_PROGRESS,
        AGENT,
        job_id,
    )
    assert runner.completed == runner.failed == runner.released == 0
    usage = system.quota.get_usage(AGENT)
    assert (usage.tokens_used, usage.active_jobs) == (0, 1)


def holder_of(system: System) -> str:
    """Who holds the agent id lease now (asked with a lease that cannot be taken:
    a probe only gets it when nobody holds it, and then gives it back)."""
    holder = system.registry.hold_lease(LEASE, "probe", 0.001)
    if holder == "probe":
        system.registry.drop_lease(LEASE, "probe")
        return ""
    return holder


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- the lease itself, on every backend ---
def test_the_id_lease_is_one_holder_at_a_time_on_every_backend(backend: Backend) -> None:
    """A second holder of agent:<id> waits until the first drops it; the first's next
    renewal then finds it displaced; other ids and the dispatcher lease are apart."""
    registry = backend.registry()
    first, second = IdLease(registry, "x", 60), IdLease(registry, "x", 60)
    assert first.holder != second.holder  # two runners in one process differ
    stop, errors = threading.Event(), list[Exception]()
    assert first.acquire(stop, 0.01, lambda what, exc: errors.append(exc))
    assert registry.hold_lease("agent:y", "other", 60) == "other"  # another id: free
    assert registry.hold_lease("dispatcher", "d", 60) == "d"  # the dispatchers' own
    taken = threading.Event()

    def wait_for_it() -> None:
        if second.acquire(stop, 0.01, lambda what, exc: errors.append(exc)):
            taken.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.2)
    assert not taken.is_set()
    assert first.renew()  # still the holder
    first.release()
    assert taken.wait(5)
    waiter.join(5)
    assert (second.held, errors) == (True, [])
    assert not first.renew()
    assert first.displaced_by == second.holder
    first.release()  # not held: leaves the other's lease alone
    assert registry.hold_lease("agent:x", "probe", 1) == second.holder


def test_waiting_for_the_id_ends_when_stopped(backend: Backend) -> None:
    """acquire returns False as soon as stop is set while another holds the id."""
    registry = backend.registry()
    assert registry.hold_lease("agent:x", "someone", 60) == "someone"
    lease, stop = IdLease(registry, "x", 60), threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert not lease.acquire(stop, 0.02, print)
    assert not lease.held


def test_the_id_lease_lasts_the_heartbeat_ttl_and_three_beats_at_least() -> None:
    """By default the id frees when the fleet reaps the agent; never under 3 beats."""
    assert id_lease_ttl(5.0) == DEFAULT_HEARTBEAT_TTL == 30.0
    assert id_lease_ttl(5.0, 7.0) == 15.0
    assert id_lease_ttl(0.1, 2.0) == 2.0


# --- runners in one process ---
def test_a_second_runner_waits_and_warns_once_naming_the_holder(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A runner whose id another live runner holds takes no work and warns once."""
    caplog.set_level(logging.INFO, "agentic.runner")
    ran: list[str] = []
    first = system.started(records(ran, "first"))
    second = system.runner(records(ran, "second"))
    second.start()
    holder = first._id.holder
    wait_for(lambda: warnings_about(caplog, "already run by"))
    time.sleep(0.5)  # five retries (heartbeat_interval 0.1): still one warning
    [warning] = warnings_about(caplog, "already run by")
    assert warning == (
        f"agent {AGENT} is already run by {holder}; waiting for it to stop"
        " (another runner with the same --id)"
    )
    for i in range(3):
        system.finished(system.submit(f"t{i}").id)
        system.room_again(first)
    assert ran == ["first"] * 3
    assert holder_of(system) == holder


def test_a_waiting_runner_starts_once_the_first_stops(system: System) -> None:
    """The first runner's clean stop drops the id lease: the second starts at once."""
    ran: list[str] = []
    first = system.started(records(ran, "first"))
    second = system.runner(records(ran, "second"))
    second.start()
    time.sleep(0.3)
    first.stop()
    wait_for(lambda: holder_of(system) == second._id.holder, timeout=2)
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()})
    task = system.finished(system.submit().id)
    assert task.status is TaskStatus.COMPLETED
    assert ran == ["second"]
    second.stop()
    assert holder_of(system) == ""  # dropped on the way out


def test_a_runner_waits_for_a_dead_holders_lease_to_run_out(system: System) -> None:
    """A lease left by a runner that died frees when it runs out; then the runner starts."""
    system.registry.hold_lease(LEASE, "gone-host:1:dead", 0.5)
    runner = system.runner(lambda task, ctx: None)
    began = time.monotonic()
    runner.start()
    wait_for(lambda: AGENT in {a.id for a in system.registry.list()}, timeout=5)
    assert time.monotonic() - began >= 0.4
    assert holder_of(system) == runner._id.holder


def dead_holder(host: str | None = None, token: str | None = None) -> str:
    """A lease holder name for a process that ran here and has ended (reaped)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    real_host, _, real_token = new_lease_holder().split(":")
    return f"{host or real_host}:{ended.pid}:{token or real_token}"


def test_a_holder_killed_on_this_machine_is_not_waited_for(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A runner restarted after kill -9 takes its id at once: the holder named this
    machine's process space and that process is gone (its lease had 60 s left)."""
    holder = dead_holder()
    assert lease_holder_gone(holder)
    system.registry.hold_lease(LEASE, holder, 60)
    runner = system.runner(lambda task, ctx: None)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="agentic.runner"):
        runner.start()
        wait_for(lambda: AGENT in {a.id for a in system.registry.list()}, timeout=5)
    assert time.monotonic() - began < 3
    assert holder_of(system) == runner._id.holder
    assert warnings_about(caplog, "no longer runs; taking over its id")
    assert not warnings_about(caplog, "waiting for it to stop")


@pytest.mark.parametrize(
    "where", ["another host", "another process space"], ids=lambda where: where
)
def test_a_holder_elsewhere_is_waited_for_whatever_its_pid(where: str) -> None:
    """A pid says nothing about another host or another pid namespace (containers
    sharing a host name): such a holder is never taken for dead."""
    if where == "another host":
        holder = dead_holder(host="elsewhere")
    else:
        holder = dead_holder(token="000000" + "ab" * 4)
    assert not lease_holder_gone(holder)
    assert not lease_holder_gone(new_lease_holder())  # this very process: alive


def test_stopping_a_waiting_runner_exits_cleanly(system: System) -> None:
    """stop() while waiting for the id: the runner ends at once, touching nothing."""
    first = system.started(lambda task, ctx: None)
    second = system.runner(lambda task, ctx: None)
    second.start()
    time.sleep(0.2)
    began = time.monotonic()
    second.stop(timeout=5)
    assert second._thread is not None and not second._thread.is_alive()
    assert time.monotonic() - began < 1.0
    assert holder_of(system) == first._id.holder
    assert AGENT in {a.id for a in system.registry.list()}  # the first's entry is kept
    assert second.errors == 0 and second.displaced_by is None


def test_a_displaced_runner_cancels_without_reporting_or_charging(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """Another holder takes the id lease: the runner cancels its running task, does not
    report or settle it, keeps the registry entry, sets displaced_by and stops."""
    caplog.set_level(logging.INFO, "agentic.runner")
    seen: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 100, 50)  # spent before it was displaced: not charged here
        ctx.cancel_event.wait(5)
        seen.append(ctx.cancel_reason)
        return "finished anyway"

    runner = system.started(handler)
    task = system.submit()
    wait_for(lambda: runner.load == 1)
    job_id = system.tasks.get(task.id).job_id
    intruder = "other-host:42:cafe0000"
    # As after a registry split longer than the lease: another runner holds it now.
    system.registry.drop_lease(LEASE, runner._id.holder)
    assert system.registry.hold_lease(LEASE, intruder, 60) == intruder
    assert runner._thread is not None
    runner._thread.join(5)
    assert not runner._thread.is_alive()  # stopped by itself, with no stop()
    assert runner.displaced_by == intruder
    assert seen == [f"agent {AGENT} is now run by {intruder}"]
    # Not reported nor charged: still claimed and reserved for the runner that took
    # the id over, under the same job.
    left_unreported(system, runner, task.id, job_id)
    # The registry entry and the lease are the new holder's: neither was touched.
    assert AGENT in {a.id for a in system.registry.list()}
    assert holder_of(system) == intruder
    [error] = [
        r for r in caplog.records if r.levelno == logging.ERROR and intruder in r.getMessage()
    ]
    assert "now run by" in error.getMessage()


class OutageRegistry(MemoryRegistry):
    """hold_lease fails while ``down`` is set (a registry out of reach)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()

    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        if self.down.is_set():
            raise StoreError("registry down")
        return super().hold_lease(name, holder, ttl)


def test_a_failed_id_lease_renewal_is_counted_not_a_displacement(system: System) -> None:
    """Renewals that fail (an outage shorter than the lease) are logged and counted;
    the runner keeps its id and its work, and renews again once the registry is back."""
    system.registry = registry = OutageRegistry()
    system.dispatcher.registry = registry
    runner = system.started(lambda task, ctx: "done")
    registry.down.set()
    wait_for(lambda: runner.errors >= 2)
    registry.down.clear()
    task = system.finished(system.submit().id)
    assert task.status is TaskStatus.COMPLETED
    assert runner.displaced_by is None
    assert registry.hold_lease(LEASE, "probe", 1) == runner._id.holder


def test_a_bad_id_lease_is_refused(system: System) -> None:
    """id_lease must be a number of seconds > 0."""
    from agentic.errors import ConfigError

    with pytest.raises(ConfigError, match="id_lease"):
        system.runner(lambda task, ctx: None, id_lease=0)


# --- real processes: two `agentic agent run --id same` on one SQLite file ---
@pytest.mark.slow
def test_two_agent_processes_with_one_id_never_run_a_task_twice(tmp_path: Path) -> None:
    """Two `agent run --id same`: one works, the other waits (warning naming it); every
    task runs once; when the first stops the second takes over and runs the rest."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    with (
        fleet_on(tmp_path, url, interval=0.2, backoff_base=0.5, backoff_cap=2) as fleet,
        open_registry(url) as registry,
        TaskClient(fleet.base_url, "") as client,
    ):
        fleet.serve()
        fleet.cli("allowance", "set", "same", "--daily-jobs", "100")
        first = fleet.agent("same", ["x"], 4, seconds=0.3)
        wait_until(lambda: registered(registry, "same"), "the first registered", fleet)
        second = spawn_twin(fleet, "same-2", "same")
        wait_until(
            lambda: "is already run by" in second.err.read_text(),
            "the second warns that the first runs the id",
            fleet,
        )
        fleet.dispatch()
        batch = {create(client, f"a{i}", labels=["x"]).id for i in range(12)}
        wait_completed(client, batch, fleet, timeout=40)
        assert first.stop() == 0
        assert first.stop_line().endswith(": 12 completed, 0 failed, 0 released, 0 errors")
        wait_until(
            lambda: "no longer runs it; starting" in second.err.read_text(),
            "the second took the id over",
            fleet,
            timeout=20,
        )
        later = {create(client, f"b{i}", labels=["x"]).id for i in range(6)}
        wait_completed(client, later, fleet, timeout=40)
        assert second.stop() == 0
        assert second.stop_line().endswith(": 6 completed, 0 failed, 0 released, 0 errors")
    [warning] = [line for line in second.err.read_text().splitlines() if "already run by" in line]
    assert f"{first.popen.pid}:" in warning  # names the holder: host:pid:token
    ran_once(fleet.marks(), batch | later)


def spawn_twin(fleet: Fleet, name: str, agent_id: str) -> Proc:
    """Another ``agentic agent run --id agent_id`` (its output under ``name``)."""
    return fleet.spawn(
        name,
        "agent", "run", "--config", str(fleet.config), "--id", agent_id, "--capability", "x",
        "--max-load", "4", "--", *marker_command(fleet.markers, agent_id, 0.3),
    )  # fmt: skip


def test_an_attempt_already_stopping_is_not_reported_once_displaced(system: System) -> None:
    """Displaced while a timed-out attempt waits for its handler to stop: that attempt
    is neither settled nor reported either (its stop kind stays the timeout)."""

    def handler(task: Task, ctx: TaskContext) -> str:
        ctx.usage("m", 100, 50)
        ctx.cancel_event.wait(5)  # cancelled by the timeout
        time.sleep(1.0)  # a process that takes a moment to stop
        return "x"

    runner = system.started(handler, max_job_duration=0.3, cancel_grace=3.0)
    task = system.submit()
    time.sleep(0.5)  # timed out; the handler is still stopping
    system.registry.drop_lease(LEASE, runner._id.holder)
    system.registry.hold_lease(LEASE, "other-host:42:cafe0000", 60)
    assert runner._thread is not None
    runner._thread.join(10)
    assert runner.displaced_by == "other-host:42:cafe0000"
    assert runner.completed == runner.failed == runner.released == 0
    assert system.quota.get_usage(AGENT).tokens_used == 0
    assert system.tasks.get(task.id).status is TaskStatus.IN_PROGRESS
