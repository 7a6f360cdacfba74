"""Registry and usage races between real OS processes on one SQLite file / one Redis.

Each worker is a spawned process that opens the store from its URL, so nothing is
shared but the store itself. Workers wait on a barrier, then race for a few seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import pytest

from agentic.errors import NotFoundError
from agentic.models import AgentInfo, AgentStatus
from agentic.stores import open_allowance_store, open_registry
from agentic.stores.base import AgentRegistry

pytestmark = pytest.mark.slow
SPAWN = mp.get_context("spawn")
#: seconds a race runs once every process is ready
RACE = 3.0


def _increment(url: str, times: int, barrier: Barrier, out: Any) -> None:
    store = open_allowance_store(url)
    barrier.wait(60)
    for _ in range(times):
        store.increment_usage("agent", 1, 0)
    store.close()
    out.put(times)


def _heartbeat(url: str, agent_id: str, barrier: Barrier, stop: Event, out: Any) -> None:
    registry = open_registry(url)
    barrier.wait(60)
    _beat_until(registry, agent_id, stop, out)


def _heartbeat_at_once(url: str, agent_id: str, beating: Event, stop: Event, out: Any) -> None:
    """Beat from the start, and say so: the agent stays live however long the other
    processes of the race take to start (seconds on a loaded machine)."""
    registry = open_registry(url)
    registry.heartbeat(agent_id, load=0)
    beating.set()
    _beat_until(registry, agent_id, stop, out)


def _beat_until(registry: AgentRegistry, agent_id: str, stop: Event, out: Any) -> None:
    beats = missed = 0
    while not stop.is_set():
        try:
            registry.heartbeat(agent_id, load=0)
            beats += 1
        except NotFoundError:
            missed += 1  # deregistered: keep trying, it must stay gone
        # A millisecond between beats (a real agent waits seconds): a writer looping
        # with no pause at all starves the other SQLite writers of the lock, and the
        # race would be measured on one side only.
        time.sleep(0.001)
    registry.close()
    out.put(("heartbeat", beats, missed))


def _reap(url: str, ttl: float, barrier: Barrier, stop: Event, out: Any) -> None:
    registry = open_registry(url)
    barrier.wait(60)
    reaped: list[str] = []
    passes = 0
    while not stop.is_set():
        reaped += registry.reap(ttl)
        passes += 1
        # As between heartbeats: a reaper looping with no pause at all can starve the
        # heartbeat's SQLite writes for longer than the ttl on a loaded machine, and
        # then reaping the agent is right (its heartbeats did not land).
        time.sleep(0.001)
    registry.close()
    out.put(("reap", reaped, passes))


def _take_lease(url: str, name: str, rounds: int, barrier: Barrier, out: Any) -> None:
    """Each round: all processes ask for a fresh lease at once; report who got each."""
    registry = open_registry(url)
    seen: list[str] = []
    for i in range(rounds):
        barrier.wait(60)
        seen.append(registry.hold_lease(f"lease-{i}", name, 60))
    registry.close()
    out.put((name, seen))


@pytest.fixture
def started() -> Iterator[list[BaseProcess]]:
    """Processes the test starts; any still running at its end are terminated (no hang)."""
    procs: list[BaseProcess] = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(10)


def _start(
    started: list[BaseProcess], target: Any, args: list[tuple[Any, ...]], out: Any
) -> list[BaseProcess]:
    procs: list[BaseProcess] = [
        SPAWN.Process(target=target, args=(*a, out), daemon=True) for a in args
    ]
    for p in procs:
        p.start()
    started += procs
    return procs


def _collect(procs: list[BaseProcess], out: Any) -> list[Any]:
    """One result per process; fails fast when a process dies without answering."""
    results: list[Any] = []
    deadline = time.monotonic() + 120
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                pytest.fail(f"worker processes failed (exit codes {dead})")
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def test_concurrent_increments_are_all_counted(shared_url: str, started: list[BaseProcess]) -> None:
    """4 processes x 500 increment_usage(agent, 1, 0) on one store count exactly 2000."""
    store = open_allowance_store(shared_url)
    out, barrier = SPAWN.Queue(), SPAWN.Barrier(4)
    procs = _start(started, _increment, [(shared_url, 500, barrier)] * 4, out)
    assert sum(_collect(procs, out)) == 2000
    usage = store.get_usage("agent")
    assert (usage.tokens_used, usage.jobs_started, usage.active_jobs) == (2000, 0, 0)
    store.close()


def test_heartbeats_racing_reap_never_mark_a_live_agent_offline(
    shared_url: str, started: list[BaseProcess]
) -> None:
    """An agent heartbeating every few ms is never reaped by a concurrent reap (ttl 2 s)."""
    registry = open_registry(shared_url)
    registry.register(AgentInfo(id="live"))
    registry.register(AgentInfo(id="silent"))  # nobody beats it: the reaper must see it
    out, beating, stop = SPAWN.Queue(), SPAWN.Event(), SPAWN.Event()
    procs = _start(started, _heartbeat_at_once, [(shared_url, "live", beating, stop)], out)
    # The reaper starts once "live" is beaten: its registration alone may be older
    # than the ttl by then (starting a process can take seconds on a loaded machine).
    assert beating.wait(60)
    barrier = SPAWN.Barrier(2)
    procs += _start(started, _reap, [(shared_url, 2.0, barrier, stop)], out)
    barrier.wait(60)
    time.sleep(RACE)
    stop.set()
    results = {r[0]: r[1:] for r in _collect(procs, out)}
    (beats, missed), (reaped, passes) = results["heartbeat"], results["reap"]
    assert beats > 20 and missed == 0 and passes > 20  # both sides ran, many times
    assert reaped == ["silent"]
    assert registry.get("live").status == AgentStatus.AVAILABLE
    registry.close()


def test_heartbeat_racing_deregister_never_brings_the_agent_back(
    shared_url: str, started: list[BaseProcess]
) -> None:
    """Once deregistered, an agent stays gone however hard a process heartbeats it."""
    registry = open_registry(shared_url)
    registry.register(AgentInfo(id="a1"))
    out, barrier, stop = SPAWN.Queue(), SPAWN.Barrier(2), SPAWN.Event()
    procs = _start(started, _heartbeat, [(shared_url, "a1", barrier, stop)], out)
    barrier.wait(60)
    rounds = 0
    end = time.monotonic() + 30  # a bound for a loaded machine; 20 rounds take about 1.5 s
    while rounds < 20 and time.monotonic() < end:
        registry.register(AgentInfo(id="a1"))
        time.sleep(0.01)  # let heartbeats land on the live agent
        registry.deregister("a1")
        rounds += 1
        gone_until = time.monotonic() + 0.05
        while time.monotonic() < gone_until:
            with pytest.raises(NotFoundError):
                registry.get("a1")
            assert registry.list() == []
    stop.set()
    ((_kind, beats, missed),) = _collect(procs, out)
    assert rounds == 20 and beats > 0 and missed > 0  # both sides of the race happened
    with pytest.raises(NotFoundError):
        registry.get("a1")
    assert registry.list() == []
    registry.close()


def test_processes_racing_for_a_lease_agree_on_one_holder(
    shared_url: str, started: list[BaseProcess]
) -> None:
    """4 processes asking for the same free lease at once: one gets it, all are told it."""
    out, barrier = SPAWN.Queue(), SPAWN.Barrier(4)
    names = [f"d{i}" for i in range(4)]
    procs = _start(started, _take_lease, [(shared_url, n, 20, barrier) for n in names], out)
    answers = dict(_collect(procs, out))
    for i in range(20):
        holders = {answers[n][i] for n in names}
        assert len(holders) == 1 and holders <= set(names), (i, holders)
