"""Over-admission under real concurrency: OS processes on one SQLite file / one Redis."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import pytest

from agentic.errors import NotFoundError, QuotaExceededError
from agentic.models import AgentAllowance, QuotaEvent
from agentic.stores import open_allowance_store

pytestmark = pytest.mark.slow
SPAWN = mp.get_context("spawn")


def _reserve_many(url: str, worker: int, attempts: int, out: Any) -> None:
    store = open_allowance_store(url)
    admitted = 0
    for i in range(attempts):
        try:
            store.reserve("agent", "", 0, f"w{worker}-{i}")
            admitted += 1
        except QuotaExceededError:
            pass
    store.close()
    out.put(admitted)


def _cycle(
    url: str, worker: int, cycles: int, active: Synchronized[int], peak: Synchronized[int], out: Any
) -> None:
    store = open_allowance_store(url)
    admitted = 0
    for i in range(cycles):
        job = f"w{worker}-{i}"
        try:
            store.reserve("agent", "", 0, job)
        except QuotaExceededError:
            continue
        admitted += 1
        with active.get_lock():
            active.value += 1
            peak.value = max(peak.value, active.value)
        time.sleep(0.002)  # hold the slot so that holders overlap
        with active.get_lock():
            active.value -= 1
        store.settle(job, 0, 0, QuotaEvent.JOB_COMPLETED)
    store.close()
    out.put(admitted)


def _spend(url: str, worker: int, attempts: int, out: Any) -> None:
    store = open_allowance_store(url)
    rng = random.Random(worker)
    spent = 0
    for i in range(attempts):
        size = rng.randint(1, 500)
        job = f"w{worker}-{i}"
        try:
            store.reserve("agent", "", size, job)
        except QuotaExceededError:
            continue
        spent += size
        store.settle(job, size, 0, QuotaEvent.JOB_COMPLETED)
    store.close()
    out.put(spent)


def _run(target: Any, url: str, processes: int, *args: Any) -> list[int]:
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(url, w, *args, out)) for w in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


def test_job_limit_admits_exactly_the_limit(shared_url: str) -> None:
    """8 processes x 250 reserves against daily_job_limit=1000 admit exactly 1000."""
    store = open_allowance_store(shared_url)
    store.set_allowance(AgentAllowance(agent_id="agent", daily_job_limit=1000))
    admitted = _run(_reserve_many, shared_url, 8, 250)
    assert sum(admitted) == 1000
    assert store.get_usage("agent").jobs_started == 1000
    store.close()


def test_concurrency_never_exceeds_the_limit(shared_url: str) -> None:
    """With concurrent_jobs=5, reserve/settle cycles never hold more than 5 at once."""
    store = open_allowance_store(shared_url)
    store.set_allowance(AgentAllowance(agent_id="agent", concurrent_jobs=5))
    active = SPAWN.Value("i", 0)
    peak = SPAWN.Value("i", 0)
    admitted = _run(_cycle, shared_url, 8, 100, active, peak)
    assert sum(admitted) > 0
    assert 1 <= peak.value <= 5
    assert store.get_usage("agent").active_jobs == 0
    store.close()


def test_token_cap_is_never_exceeded(shared_url: str) -> None:
    """Random request sizes from 4 processes never spend past a 10,000-token cap."""
    store = open_allowance_store(shared_url)
    store.set_allowance(AgentAllowance(agent_id="agent", daily_token_limit=10_000))
    spent = _run(_spend, shared_url, 4, 150)
    assert sum(spent) <= 10_000
    assert sum(spent) > 9_000  # the cap was actually reached, not dodged
    usage = store.get_usage("agent")
    assert usage.tokens_used == sum(spent)
    assert usage.tokens_used <= 10_000
    store.close()


def _hold_and_end(url: str, worker: int, cycles: int, current: Any, out: Any) -> None:
    """Reserve, hold a moment, then end each job (settle; unreserve every fourth)."""
    store = open_allowance_store(url)
    ended = 0
    for i in range(cycles):
        job = f"w{worker}-{i}"
        try:
            store.reserve("agent", "", 10, job)
        except QuotaExceededError:
            continue
        current[worker] = i
        time.sleep(0.001)
        try:
            if i % 4 == 3:
                store.unreserve(job)
            else:
                store.settle(job, 5, 5, QuotaEvent.JOB_COMPLETED, agent_id="agent")
        except NotFoundError:  # expired by the dispatcher-like process: settle charges
            pass
        ended += 1
    store.close()
    out.put(ended)


def _keep_or_expire(url: str, worker: int, workers: int, current: Any, out: Any) -> None:
    """Extend the workers' jobs as they are ended (the one held and the one before);
    the last process expires them too, as a dispatcher a dead attempt's."""
    store = open_allowance_store(url)
    rng = random.Random(worker)
    calls = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and min(current[w] for w in range(workers)) < 10**6:
        for w in range(workers):
            i = current[w]
            job = f"w{w}-{max(0, i - rng.choice([0, 0, 1]))}"
            try:
                if worker == 0 and rng.random() < 0.3:
                    store.expire(job)
                else:
                    store.extend(job)
            except NotFoundError:
                pass
            calls += 1
    store.close()
    out.put(calls)


def test_extends_racing_settles_and_expiries_bring_back_no_reservation(shared_url: str) -> None:
    """Extends racing settles, unreserves and expiries (OS processes) leave nothing held."""
    store = open_allowance_store(shared_url)
    store.set_allowance(AgentAllowance(agent_id="agent", concurrent_jobs=4))
    workers, cycles = 3, 150
    current = SPAWN.Array("q", [-1] * workers)
    out, kept = SPAWN.Queue(), SPAWN.Queue()
    holders = [
        SPAWN.Process(target=_hold_and_end, args=(shared_url, w, cycles, current, out))
        for w in range(workers)
    ]
    keepers = [
        SPAWN.Process(target=_keep_or_expire, args=(shared_url, k, workers, current, kept))
        for k in range(2)
    ]
    for p in holders + keepers:
        p.start()
    ended = [out.get(timeout=120) for _ in holders]
    for w in range(workers):
        current[w] = 10**6  # the keepers stop
    calls = [kept.get(timeout=60) for _ in keepers]
    for p in holders + keepers:
        p.join(30)
        assert p.exitcode == 0
    assert sum(ended) > 0 and min(calls) > 0
    usage = store.get_usage("agent")
    assert (usage.active_jobs, usage.tokens_reserved) == (0, 0)
    for w in range(workers):
        for i in range(cycles):
            with pytest.raises(NotFoundError):
                store.extend(f"w{w}-{i}")
    assert store.get_usage("agent").active_jobs == 0
    store.close()
