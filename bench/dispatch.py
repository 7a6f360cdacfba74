"""End-to-end dispatch throughput: agentic on SQLite and on Redis against arq, in one run.

    python bench/dispatch.py [--quick] [--jobs N] [--runs R] [--poll SECONDS]

Each system takes N no-op jobs (500; ``--quick``: 100) from one client that submits
them one after another while the workers run, with at most 10 in flight:

* agentic: the task API over the store in a spawned process (uvicorn, as ``agentic
  serve`` runs it, with tokens); in this process the Dispatcher, passing every
  ``--poll`` seconds, and one AgentRunner (``max_load`` 10, polling every ``--poll``
  seconds) whose handler returns at once. Quota is on (an allowance of 10 concurrent
  jobs), so each task is reserved and settled as in production. Once on a SQLite
  file, once on a private redis-server.
* arq: one worker in a spawned process (``max_jobs=10``, ``poll_delay`` = ``--poll``)
  whose job coroutine returns at once; this process enqueues, on the same Redis.

Interpreter start-up, imports and first-use costs are excluded for everyone: each
system's processes are up and have run a warm-up batch before the clock starts. A
job's latency runs from just before its submit call to its completion: for agentic
when the runner's ``complete`` call has returned (its ``task_completed`` event), for
arq the worker's ``finish_time``. Throughput is N over the time from the first submit
to the last completion. Each system runs ``--runs`` times (3; ``--quick``: 1),
interleaved; the tables show each system's median run by throughput.

Where the time goes: phase medians per job (submit -> claimed by the dispatcher ->
handler started -> done; arq has no claim step), and per job: HTTP requests by route
(the server's ``/metrics``), Redis commands and Redis server microseconds (``INFO
commandstats``), and CPU of each process. Idle polling during the run is included.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from queue import Empty
from typing import Any

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import redis
from _common import percentile, private_redis
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import result_key_prefix
from arq.worker import Worker

from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.dispatcher import Dispatcher, DispatchReport
from agentic.events import CallbackEmitter, Event, EventType
from agentic.models import AgentAllowance, AgentInfo, Task, TaskStatus
from agentic.router import DefaultRouter
from agentic.runner import AgentRunner, TaskContext
from agentic.stores import open_allowance_store, open_registry, open_task_store
from agentic.testing import running_server

IN_FLIGHT = 10
WARMUP = 20
TARGET = 1.0  # agentic on Redis / arq in jobs per second: our issue's goal
ADMIN_TOKEN, AGENT_TOKEN, AGENT = "bench-admin", "bench-agent-token", "bench-agent"
# A stalled system ends the run with a message instead of hanging it.
DEADLINE = 60.0
SYSTEMS = ("agentic sqlite", "agentic redis", "arq")
_REQUESTS = re.compile(
    r'^agentic_http_requests_total\{method="([^"]+)",route="([^"]+)",status="(\d+)"\} (\d+)$'
)


@dataclass(frozen=True)
class CPU:
    """CPU seconds of the spawned process (API server / arq worker), of this process,
    of its main thread (the submitter) and of the dispatcher thread; None if unknown."""

    spawned: float | None
    here: float
    submit: float
    dispatch: float | None

    @classmethod
    def now(cls, pid: int, dispatcher: int | None) -> CPU:
        in_thread = None if dispatcher is None else proc_cpu(f"/proc/self/task/{dispatcher}/stat")
        return cls(
            proc_cpu(f"/proc/{pid}/stat"), time.process_time(), time.thread_time(), in_thread
        )

    def __sub__(self, before: CPU) -> CPU:
        return CPU(
            _minus(self.spawned, before.spawned),
            self.here - before.here,
            self.submit - before.submit,
            _minus(self.dispatch, before.dispatch),
        )


def _minus(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def proc_cpu(stat: str) -> float | None:
    """CPU seconds from a /proc ``stat`` file of a process or thread; None off Linux."""
    try:
        text = Path(stat).read_text()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of proc(5); the name, field 2, may hold
    # spaces, so count from the ")" that closes it (the next field is number 3).
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cost:
    """What a measured batch cost, in total (the report divides by the jobs)."""

    cpu: CPU
    http: Counter[str] = field(default_factory=Counter)  # requests by route; agentic only
    redis_calls: int | None = None  # None on SQLite
    redis_usec: int | None = None


@dataclass
class Run:
    """One measured batch: epoch seconds per job id, and what it cost."""

    submitted: dict[str, float]  # just before the submit call
    started: dict[str, float]  # the handler / job coroutine began
    done: dict[str, float]
    submit_seconds: float
    cost: Cost
    claimed: dict[str, float] = field(default_factory=dict)  # agentic only
    passes: int = 0  # dispatcher passes during the batch; agentic only
    in_pass: float = 0.0  # share of the batch's time the dispatcher spent in a pass

    @property
    def jobs(self) -> int:
        return len(self.submitted)

    @property
    def seconds(self) -> float:
        return max(self.done.values()) - min(self.submitted.values())

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def phase(self, start: dict[str, float], end: dict[str, float]) -> list[float]:
        """Milliseconds from ``start`` to ``end``, for every job."""
        return [(end[job] - start[job]) * 1000 for job in self.submitted]


class Meter:
    """Snapshots of the counters at the start of a batch; ``read`` gives the change."""

    def __init__(
        self,
        pid: int,
        redis_url: str | None,
        base: str | None = None,
        dispatcher: int | None = None,
    ) -> None:
        self.pid, self.redis_url, self.base, self.dispatcher = pid, redis_url, base, dispatcher
        self.http = http_requests(base) if base else Counter[str]()
        if redis_url is not None:
            with redis.Redis.from_url(redis_url) as client:
                client.config_resetstat()
        self.cpu = CPU.now(pid, dispatcher)

    def read(self, own_redis_calls: int = 0) -> Cost:
        """The cost so far, less ``own_redis_calls`` the bench sent only to watch."""
        cost = Cost(CPU.now(self.pid, self.dispatcher) - self.cpu)
        if self.base:
            cost.http = http_requests(self.base) - self.http
        if self.redis_url is not None:
            with redis.Redis.from_url(self.redis_url) as client:
                stats: dict[str, dict[str, int]] = client.info("commandstats")
            # The INFO call reading these is not in them yet.
            cost.redis_calls = sum(entry["calls"] for entry in stats.values()) - own_redis_calls
            cost.redis_usec = sum(entry["usec"] for entry in stats.values())
        return cost


# --- agentic ----------------------------------------------------------------------
def _serve(url: str, ready: Queue[str], stop: ProcessEvent) -> None:
    """Child process: the task API over ``url`` until ``stop`` is set."""
    with (
        open_task_store(url) as store,
        running_server(
            store, admin_tokens=[ADMIN_TOKEN], agent_tokens={AGENT_TOKEN: AGENT}
        ) as base,
    ):
        ready.put(base)
        stop.wait()


@contextmanager
def task_server(url: str) -> Iterator[tuple[str, int]]:
    """The task API in its own process, as deployed: its base URL and process id."""
    context = multiprocessing.get_context("spawn")
    ready: Queue[str] = context.Queue()
    stop = context.Event()
    process = context.Process(target=_serve, args=(url, ready, stop), daemon=True)
    process.start()
    try:
        while True:
            try:
                base = ready.get(timeout=0.2)
                break
            except Empty:
                if not process.is_alive():
                    sys.exit("the task API server died while starting")
        assert process.pid is not None  # started above
        yield base, process.pid
    finally:
        stop.set()
        process.join(10)


def http_requests(base: str) -> Counter[str]:
    """Requests answered so far by method and route (``/metrics`` itself left out)."""
    counts: Counter[str] = Counter()
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        match = _REQUESTS.match(line)
        if match and match[2] != "/metrics":
            method, route, status, count = match.groups()
            suffix = "" if status.startswith("2") else f" ({status})"
            counts[f"{method} {route}{suffix}"] += int(count)
    return counts


class TimedDispatcher(Dispatcher):
    """The Dispatcher, counting its passes and the seconds spent in them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes = 0
        self.seconds = 0.0

    def run_once(self) -> DispatchReport:
        started = time.perf_counter()
        try:
            return super().run_once()
        finally:
            self.passes += 1
            self.seconds += time.perf_counter() - started


class Completions:
    """The no-op handler and the runner's events: when each task started and ended."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.started: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self._changed = threading.Condition()

    def handler(self, task: Task, ctx: TaskContext) -> None:
        self.started[task.id] = time.time()

    def on_event(self, event: Event) -> None:
        if event.type is EventType.TASK_COMPLETED:
            now = time.time()
            with self._changed:
                self.done[event.task_id] = now
                self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.done) >= count, DEADLINE):
                sys.exit(f"{self.system}: {len(self.done)} of {count} tasks done in {DEADLINE:g} s")


def submit(client: TaskClient, count: int) -> dict[str, float]:
    submitted = {}
    for number in range(count):
        before = time.time()
        submitted[client.create_task(Task(title=f"job {number}")).id] = before
    return submitted


def run_agentic(system: str, url: str, redis_url: str | None, jobs: int, poll: float) -> Run:
    """``jobs`` tasks through the API server, dispatcher and runner on the stores at ``url``."""
    completions = Completions(system)
    with ExitStack() as stack:
        registry = stack.enter_context(open_registry(url))
        quota = stack.enter_context(open_allowance_store(url))
        # As the demo does: the store then refuses an 11th job before the runner must.
        quota.set_allowance(AgentAllowance(agent_id=AGENT, concurrent_jobs=IN_FLIGHT))
        base, pid = stack.enter_context(task_server(url))
        emitter = stack.enter_context(CallbackEmitter(completions.on_event))
        allowance = AllowanceService(quota)
        admin = stack.enter_context(TaskClient(base, ADMIN_TOKEN))
        runner = AgentRunner(
            AgentInfo(id=AGENT, max_load=IN_FLIGHT),
            stack.enter_context(TaskClient(base, AGENT_TOKEN, AGENT)),
            registry,
            completions.handler,
            allowance,
            poll_interval=poll,
            emitter=emitter,
        )
        runner.start()
        stack.callback(runner.stop)
        dispatcher = TimedDispatcher(registry, DefaultRouter(), allowance, admin)
        stop = threading.Event()
        loop = threading.Thread(target=dispatcher.run, args=(stop, poll), daemon=True)
        loop.start()
        stack.callback(loop.join)
        stack.callback(stop.set)

        submit(admin, WARMUP)
        completions.wait_for(WARMUP)
        meter = Meter(pid, redis_url, base, loop.native_id)
        passes, in_pass = dispatcher.passes, dispatcher.seconds
        started = time.perf_counter()
        submitted = submit(admin, jobs)
        submit_seconds = time.perf_counter() - started
        completions.wait_for(WARMUP + jobs)
        cost = meter.read()
        window = time.perf_counter() - started
        passes, in_pass = dispatcher.passes - passes, dispatcher.seconds - in_pass
        claimed = {
            task.id: task.claimed_at.timestamp()
            for task in admin.list_tasks(status=TaskStatus.COMPLETED)
            if task.id in submitted and task.claimed_at is not None
        }
    return Run(
        submitted,
        {job: completions.started[job] for job in submitted},
        {job: completions.done[job] for job in submitted},
        submit_seconds,
        cost,
        claimed,
        passes,
        in_pass / window,
    )


# --- arq --------------------------------------------------------------------------
async def noop(ctx: dict[str, Any]) -> None:
    """The arq job: returns at once."""


def _arq_worker(url: str, poll: float) -> None:
    """Child process: one arq worker until SIGTERM (which it handles gracefully)."""
    settings = RedisSettings.from_dsn(url)
    Worker(functions=[noop], redis_settings=settings, max_jobs=IN_FLIGHT, poll_delay=poll).run()


async def _arq_batch(url: str, jobs: int, poll: float, pid: int) -> Run:
    """Enqueue ``jobs`` no-op jobs one after another; wait until every result is in."""
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        submitted: dict[str, float] = {}
        handles = []
        meter = Meter(pid, url)
        started = time.perf_counter()
        for _ in range(jobs):
            before = time.time()
            job = await pool.enqueue_job("noop")
            if job is None:  # arq's answer to a duplicate _job_id, which we never pass
                raise RuntimeError("arq refused a job")
            submitted[job.job_id] = before
            handles.append(job)
        submit_seconds = time.perf_counter() - started
        keys = [result_key_prefix + job_id for job_id in submitted]
        polls = 1
        deadline = time.monotonic() + DEADLINE
        # Each job's own finish_time stops its clock, so the period of this poll does
        # not count; the poll only has to notice the end.
        while await pool.exists(*keys) < jobs:
            if time.monotonic() > deadline:
                sys.exit(f"arq: not every job done in {DEADLINE:g} s")
            await asyncio.sleep(poll)
            polls += 1
        cost = meter.read(own_redis_calls=polls)
        started_at, done = {}, {}
        for job in handles:
            info = await job.result_info()
            if info is None or not info.success:
                raise RuntimeError(f"arq job {job.job_id} failed: {info}")
            started_at[job.job_id] = info.start_time.timestamp()
            done[job.job_id] = info.finish_time.timestamp()
        return Run(submitted, started_at, done, submit_seconds, cost)
    finally:
        await pool.aclose()


def run_arq(url: str, jobs: int, poll: float) -> Run:
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_arq_worker, args=(url, poll), daemon=True)
    process.start()
    assert process.pid is not None  # started above
    try:
        asyncio.run(_arq_batch(url, WARMUP, poll, process.pid))
        return asyncio.run(_arq_batch(url, jobs, poll, process.pid))
    finally:
        process.terminate()
        process.join(10)


# --- the report ---------------------------------------------------------------------
def ms(samples: list[float], q: float) -> str:
    return f"{percentile(samples, q):.1f}"


def report(runs: dict[str, list[Run]], poll: float) -> None:
    median = {
        system: sorted(batch, key=lambda run: run.rate)[len(batch) // 2]
        for system, batch in runs.items()
    }
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {sys.platform};"
        f" {median['arq'].jobs} no-op jobs, {IN_FLIGHT} in flight, poll {poll:g} s;"
        f" median of {len(runs['arq'])} run(s) by jobs/s"
    )
    arq_rate = median["arq"].rate
    print(
        f"{'system':<15} {'seconds':>8} {'jobs/s':>8} {'vs arq':>7} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'submit/s':>9}  every run, jobs/s"
    )
    for system, run in median.items():
        latency = run.phase(run.submitted, run.done)
        every = " ".join(f"{other.rate:.0f}" for other in runs[system])
        print(
            f"{system:<15} {run.seconds:>8.2f} {run.rate:>8.1f} {run.rate / arq_rate:>6.2f}x"
            f" {ms(latency, 0.5):>8} {ms(latency, 0.99):>8}"
            f" {run.jobs / run.submit_seconds:>9.0f}  {every}"
        )
    report_phases(median)
    report_costs(median)
    ratio = median["agentic redis"].rate / arq_rate
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(f"\nagentic on Redis / arq: {ratio:.2f}x jobs/s (target >= {TARGET:.1f}x): {verdict}")


def report_phases(median: dict[str, Run]) -> None:
    print("\nwhere the time goes: p50 ms per job (claimed: by the dispatcher)")
    print(
        f"{'system':<15} {'submit->claimed':>16} {'claimed->started':>17}"
        f" {'submit->started':>16} {'started->done':>14}"
    )
    for system, run in median.items():
        to_claim = ms(run.phase(run.submitted, run.claimed), 0.5) if run.claimed else "-"
        to_start = ms(run.phase(run.claimed, run.started), 0.5) if run.claimed else "-"
        print(
            f"{system:<15} {to_claim:>16} {to_start:>17}"
            f" {ms(run.phase(run.submitted, run.started), 0.5):>16}"
            f" {ms(run.phase(run.started, run.done), 0.5):>14}"
        )
    for system, run in median.items():
        if run.passes:
            print(
                f"{system}: the dispatcher was in a pass {run.in_pass:.0%} of the time;"
                f" {run.passes} passes, {run.jobs / run.passes:.1f} tasks dispatched per pass"
            )


def cost_rows(cost: Cost) -> dict[str, float | None]:
    """Totals by row label, HTTP routes aside; None where the system has no such cost."""
    cpu = cost.cpu
    runner = None if cpu.dispatch is None else cpu.here - cpu.submit - cpu.dispatch
    return {
        "HTTP requests, all": cost.http.total() if cost.http else None,
        "Redis commands": cost.redis_calls,
        "Redis server microseconds": cost.redis_usec,
        "CPU ms, API server / arq worker process": _ms(cpu.spawned),
        "CPU ms, submitting thread": _ms(cpu.submit),
        "CPU ms, dispatcher thread": _ms(cpu.dispatch),
        "CPU ms, runner threads (rest of process)": _ms(runner),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def report_costs(median: dict[str, Run]) -> None:
    print("\ncost per job (idle polling during the run included)")
    print(f"{'':<42}" + "".join(f"{system:>16}" for system in median))
    runs = list(median.values())
    routes = sorted({route for run in runs for route in run.cost.http})
    rows: list[tuple[str, list[float | None]]] = [
        (f"HTTP {route}", [run.cost.http.get(route) for run in runs]) for route in routes
    ]
    totals = [cost_rows(run.cost) for run in runs]
    rows += [(label, [total[label] for total in totals]) for label in totals[0]]
    for label, values in rows:
        cells = (
            "-" if v is None else f"{v / run.jobs:.2f}" for v, run in zip(values, runs, strict=True)
        )
        print(f"{label:<42}" + "".join(f"{cell:>16}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 jobs, one run")
    parser.add_argument("--jobs", type=int, help="jobs per system and run (default 500)")
    parser.add_argument("--runs", type=int, help="runs per system (default 3)")
    parser.add_argument("--poll", type=float, default=0.02, help="every poll interval, seconds")
    args = parser.parse_args()
    jobs = args.jobs or (100 if args.quick else 500)
    runs: dict[str, list[Run]] = {system: [] for system in SYSTEMS}
    with tempfile.TemporaryDirectory() as tmp, private_redis() as redis_url:
        for number in range(args.runs or (1 if args.quick else 3)):
            path = Path(tmp, f"run{number}.db").as_posix().lstrip("/")
            runs["agentic sqlite"].append(
                run_agentic("agentic sqlite", f"sqlite:///{path}", None, jobs, args.poll)
            )
            # Each Redis system starts on an empty server.
            with redis.Redis.from_url(redis_url) as client:
                client.flushall()
            runs["agentic redis"].append(
                run_agentic("agentic redis", redis_url, redis_url, jobs, args.poll)
            )
            with redis.Redis.from_url(redis_url) as client:
                client.flushall()
            runs["arq"].append(run_arq(redis_url, jobs, args.poll))
    report(runs, args.poll)


if __name__ == "__main__":
    main()
