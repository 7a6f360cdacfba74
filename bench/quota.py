"""Quota stores against a bare PING and the limits library, on one Redis, in one run.

    python bench/quota.py [--quick] [--redis-url redis://host:port/db] [--ops N]

Without ``--redis-url`` a private redis-server is started on a free loopback port
(``--save "" --appendonly no``); SQLite uses a temporary file. Keys live under a
random prefix and are deleted at the end, so a shared Redis can be used too.

1. Latency: one client, one operation at a time: redis-py PING, our ``reserve``,
   our ``reserve`` + ``settle``, limits' moving-window and fixed-window ``hit``; then
   our stores on ``memory://`` and a SQLite file. Ours run with every limit active
   (set far above what the bench spends, so nothing is refused). Each case gets a
   warm-up run, then 5 measured runs; the table shows medians over the 5 runs and
   the Redis server's own time per operation from ``INFO commandstats``. The client
   and the private server share one CPU here (``--no-pin`` to leave them free).
2. Accuracy: 2 spawned OS processes x 200 threads send their requests at the same
   instant against one limit: 100 jobs, then a cap of 10,000 tokens with random
   requests of 1-500 tokens. Ours on Redis and SQLite against a naive
   check-then-record on the same Redis (GET, compare, INCRBY) and limits' moving
   window. ``memory://`` lives inside one process, so it has no place here.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Literal, cast

# Runnable from a checkout that was never pip-installed: the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import limits
import redis
from _common import percentile, private_redis
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from agentic.errors import QuotaExceededError
from agentic.models import AgentAllowance, ModelQuota, QuotaEvent
from agentic.stores import AllowanceStore, open_allowance_store

RUNS = 5
TARGET_RATIO = 1.3

AGENT, MODEL = "bench-agent", "bench-model"
TOKENS, TOKENS_IN, TOKENS_OUT = 100, 60, 40
# Every limit is set (none is 0 = unlimited), so reserve evaluates all of them, but
# far above what the bench spends so that none refuses.
ALLOWANCE = AgentAllowance(
    agent_id=AGENT,
    daily_token_limit=10**12,
    daily_job_limit=10**9,
    concurrent_jobs=10**9,
    max_job_duration=3_600,
    model_allowlist=["other-model", MODEL],
)
QUOTA = ModelQuota(
    model=MODEL,
    daily_token_budget=10**12,
    hourly_rate_limit=10**9,
    cost_ceiling=10**9,
    input_price=300.0,
    output_price=1_500.0,
)

PROCESSES, REQUESTS = 2, 200
JOB_LIMIT, TOKEN_CAP, MAX_REQUEST = 100, 10_000, 500
SEED = 2026
# Longest wait for the other process at a start line; only a crash gets near it.
BARRIER_TIMEOUT = 120.0


# --- 1. latency -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One operation to time; ``command`` is the top-level Redis command it sends."""

    label: str
    op: Callable[[], object]
    command: str | None


@dataclass(frozen=True, slots=True)
class Run:
    """One run's figures; the server's are per op, from INFO commandstats."""

    ops_per_s: float
    median_us: float
    p99_us: float
    server_us: float | None = None  # the top-level commands: PING, FCALL or EVALSHA
    inner_calls: float = 0.0  # commands run by a script (Redis counts them too)
    inner_us: float = 0.0


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the measured runs, and the runs themselves."""

    median: Run
    runs: list[Run]


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Calls and total microseconds per command since the server started."""
    stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
    return {
        name.removeprefix("cmdstat_"): (int(row["calls"]), int(row["usec"]))
        for name, row in stats.items()
    }


def time_run(case: Case, ops: int, stats: redis.Redis) -> Run:
    # Snapshots instead of CONFIG RESETSTAT, so a shared server's statistics stay intact.
    before = command_stats(stats) if case.command else {}
    samples = []
    began = time.perf_counter_ns()
    for _ in range(ops):
        start = time.perf_counter_ns()
        case.op()
        samples.append((time.perf_counter_ns() - start) / 1000)
    elapsed = (time.perf_counter_ns() - began) / 1e9
    run = Run(ops / elapsed, statistics.median(samples), percentile(samples, 0.99))
    if not case.command:
        return run
    delta = {
        name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
        for name, (calls, usec) in command_stats(stats).items()
    }
    delta.pop("info", None)  # the first snapshot itself
    _calls, usec = delta.pop(case.command, (0, 0))
    return replace(
        run,
        server_us=usec / ops,
        inner_calls=sum(calls for calls, _ in delta.values()) / ops,
        inner_us=sum(usec for _, usec in delta.values()) / ops,
    )


def measure(cases: list[Case], ops: int, stats: redis.Redis) -> dict[str, Summary]:
    """A warm-up run of each case, then RUNS rounds over all of them.

    Rounds interleave the cases, so a slow spell of the machine lands on all of them
    rather than on one.
    """
    for case in cases:
        time_run(case, ops, stats)
    runs: dict[str, list[Run]] = {case.label: [] for case in cases}
    for _ in range(RUNS):
        for case in cases:
            runs[case.label].append(time_run(case, ops, stats))
    summaries = {}
    for label, rows in runs.items():
        server = [r.server_us for r in rows if r.server_us is not None]
        median = Run(
            statistics.median(r.ops_per_s for r in rows),
            statistics.median(r.median_us for r in rows),
            statistics.median(r.p99_us for r in rows),
            statistics.median(server) if server else None,
            statistics.median(r.inner_calls for r in rows),
            statistics.median(r.inner_us for r in rows),
        )
        summaries[label] = Summary(median, rows)
    return summaries


def ratio(a: Summary, b: Summary) -> tuple[float, float, float]:
    """a's median latency over b's: the median, lowest and highest over the rounds.

    Taken round by round, where both were measured moments apart: the speed of a
    shared or virtual machine drifts between rounds.
    """
    values = [x.median_us / y.median_us for x, y in zip(a.runs, b.runs, strict=True)]
    return statistics.median(values), min(values), max(values)


def with_prefix(redis_url: str, prefix: str) -> str:
    """The store URL whose keys live under ``prefix``."""
    return f"{redis_url}{'&' if '?' in redis_url else '?'}prefix={prefix}"


def configured(url: str) -> AllowanceStore:
    store = open_allowance_store(url)
    store.set_allowance(ALLOWANCE)
    store.set_model_quota(QUOTA)
    return store


def our_cases(store: AllowanceStore, backend: str, command: str | None) -> list[Case]:
    ids = itertools.count()

    # Unique job ids: each reserve is a new job, never the idempotent replay of one.
    # Reservations made alone stay live (an hour); concurrent_jobs is high enough.
    def reserve() -> None:
        store.reserve(AGENT, MODEL, TOKENS, f"{backend}-r{next(ids)}")

    def reserve_settle() -> None:
        job = f"{backend}-p{next(ids)}"
        store.reserve(AGENT, MODEL, TOKENS, job)
        store.settle(job, TOKENS_IN, TOKENS_OUT, QuotaEvent.JOB_COMPLETED)

    return [
        Case(f"ours reserve ({backend})", reserve, command),
        Case(f"ours reserve+settle ({backend})", reserve_settle, command),
    ]


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """The calling thread on ``cpu`` meanwhile, when one is given."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def latency(redis_url: str, prefix: str, tmp: str, ops: int, cpu: int | None) -> None:
    client = redis.Redis.from_url(redis_url)
    pool = redis.ConnectionPool.from_url(redis_url)
    # The same redis-py pool class for limits as for our store and the PING client.
    storage = RedisStorage(redis_url, connection_pool=pool, key_prefix=f"{prefix}-limits")
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    per_day = limits.parse("1000000/day")
    on_redis = configured(with_prefix(redis_url, prefix))
    in_memory = configured("memory://")
    on_sqlite = configured(f"sqlite:///{tmp}/latency.db")
    # Our Lua runs as Redis Functions (FCALL) from Redis 7 on, as scripts before.
    version = cast(dict[str, Any], client.info("server"))["redis_version"]
    ours = "fcall" if int(str(version).split(".")[0]) >= 7 else "evalsha"

    cases = [
        Case("redis-py PING", client.ping, "ping"),
        *our_cases(on_redis, "redis", ours),
        Case("limits MovingWindow hit 1000000/day", lambda: moving.hit(per_day, "m"), "evalsha"),
        Case("limits FixedWindow hit 1000000/day", lambda: fixed.hit(per_day, "f"), "evalsha"),
        *our_cases(in_memory, "memory", None),
        *our_cases(on_sqlite, "sqlite file", None),
    ]
    with pinned(cpu):
        summaries = measure(cases, ops, client)
    stores = {"redis": on_redis, "memory": in_memory, "sqlite file": on_sqlite}
    # Each reserve adds a request to the model's rolling hour, so later runs see more of
    # them: worth knowing for any store whose cost grows with that count.
    in_hour = {name: s.get_model_usage(MODEL).requests_last_hour for name, s in stores.items()}
    for store in stores.values():
        store.close()
    pool.disconnect()
    client.close()

    print(
        f"1. Latency, one client, one operation at a time: warm-up + {RUNS} runs x {ops:,}"
        f" ops per case; medians of the {RUNS} runs"
    )
    print(f"{'case':<38} {'ops/s':>7} {'(runs min-max)':>16} {'median us':>10} {'p99 us':>8}")
    for case in cases:
        s = summaries[case.label]
        speeds = [r.ops_per_s for r in s.runs]
        spread = f"{min(speeds):,.0f}-{max(speeds):,.0f}"
        print(
            f"{case.label:<38} {s.median.ops_per_s:>7,.0f} {spread:>16}"
            f" {s.median.median_us:>10.1f} {s.median.p99_us:>8.1f}"
        )

    counts = ", ".join(f"{name} {count:,}" for name, count in in_hour.items())
    print(f"requests in the model's rolling hour after the runs: {counts}")

    print("\nRedis server time per op (INFO commandstats, medians of the runs)")
    print(
        f"{'case':<38} {'the command us':>16} {'cmds in script':>15} {'their us':>9}"
        f" {'script own us':>14}"
    )
    for case in cases:
        run = summaries[case.label].median
        if run.server_us is None:
            continue
        # Redis times a script as a whole and each command it runs on its own; the
        # difference is the script's own share: the Lua interpreter, the redis.call
        # bridge (argument and reply conversion), JSON decoding, number formatting.
        own = run.server_us - run.inner_us if run.inner_calls else 0.0
        print(
            f"{case.label:<38} {run.server_us:>16.2f} {run.inner_calls:>15.1f}"
            f" {run.inner_us:>9.2f} {own:>14.2f}"
        )

    ping, reserve = summaries["redis-py PING"], summaries["ours reserve (redis)"]
    pair = summaries["ours reserve+settle (redis)"]
    window = summaries["limits MovingWindow hit 1000000/day"]
    print(f"\nLatency ratios, median of the {RUNS} rounds (lowest-highest round)")
    for name, (mid, low, high) in (
        ("reserve / PING", ratio(reserve, ping)),
        ("reserve+settle / PING", ratio(pair, ping)),
        ("reserve / limits moving-window hit", ratio(reserve, window)),
    ):
        print(f"{name:<36} {mid:>5.2f}x ({low:.2f}-{high:.2f})")
    mid = ratio(reserve, ping)[0]
    verdict = "met" if mid <= TARGET_RATIO else f"missed, {mid / TARGET_RATIO:.1f}x over it"
    print(f"target reserve / PING <= {TARGET_RATIO:g}x: {verdict}")
    if reserve.median.server_us is not None and ping.median.server_us is not None:
        # What the server spends beyond a PING is the script; the rest of reserve's
        # extra time is the client's (arguments, reply parsing, models).
        extra = reserve.median.median_us - ping.median.median_us
        lua = reserve.median.server_us - ping.median.server_us
        print(
            f"reserve - PING = {extra:.1f} us: {lua:.1f} us more in Redis (the script),"
            f" {extra - lua:.1f} us more in the client"
        )


# --- 2. accuracy ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contest:
    """Every request of every process goes to one key at once; ``sized`` requests ask
    for random token amounts (a token cap), the others for one job (a count limit)."""

    name: str
    kind: Literal["ours", "naive", "limits"]
    url: str
    key: str
    cap: int
    sized: bool

    @property
    def label(self) -> str:
        return f"{self.name} {'tokens' if self.sized else 'jobs'}"


@dataclass(frozen=True, slots=True)
class Tally:
    label: str
    admitted: int
    spent: int
    demand: int
    errors: int


Attempt = Callable[[str, int], bool]


@contextmanager
def contender(contest: Contest) -> Iterator[tuple[Callable[[], object], Attempt]]:
    """(warm, attempt): ``warm`` opens the calling thread's connection before the start
    line, so connecting is not part of the race; ``attempt(job_id, amount)`` asks for
    ``amount`` and says whether it was admitted."""
    if contest.kind == "ours":
        store = open_allowance_store(contest.url)

        def reserve(job_id: str, amount: int) -> bool:
            try:
                store.reserve(contest.key, "", amount, job_id)
            except QuotaExceededError:
                return False
            return True

        try:
            yield (lambda: store.check(contest.key)), reserve
        finally:
            store.close()
        return
    pool = redis.ConnectionPool.from_url(contest.url)
    try:
        if contest.kind == "naive":
            client = redis.Redis(connection_pool=pool)

            # The classic race: between the GET and the INCRBY others read the same total.
            def check_then_record(_job_id: str, amount: int) -> bool:
                if int(cast(bytes | None, client.get(contest.key)) or 0) + amount > contest.cap:
                    return False
                client.incrby(contest.key, amount)
                return True

            yield client.ping, check_then_record
        else:
            storage = RedisStorage(contest.url, connection_pool=pool, key_prefix=contest.key)
            window = MovingWindowRateLimiter(storage)
            item = limits.parse(f"{contest.cap}/day")
            yield storage.check, lambda _job_id, amount: window.hit(item, contest.key, cost=amount)
    finally:
        pool.disconnect()


def race(contest: Contest, index: int, amounts: list[int], start: Barrier) -> Tally:
    """REQUESTS threads of this process ask at once, in step with the other process."""
    admitted: list[bool | None] = [None] * REQUESTS

    # Runs once every thread is ready: waits for the other process, so that the
    # 2 x REQUESTS requests leave together.
    def in_step_with_other_process() -> None:
        start.wait(BARRIER_TIMEOUT)

    gate = threading.Barrier(REQUESTS, action=in_step_with_other_process)
    with contender(contest) as (warm, attempt):

        def request(i: int) -> None:
            warm()
            gate.wait(BARRIER_TIMEOUT)
            # An error leaves None: neither admitted nor refused.
            admitted[i] = attempt(f"{contest.key}-{index}-{i}", amounts[i])

        threads = [threading.Thread(target=request, args=(i,)) for i in range(REQUESTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return Tally(
        contest.label,
        admitted=admitted.count(True),
        spent=sum(a for a, ok in zip(amounts, admitted, strict=True) if ok),
        demand=sum(amounts),
        errors=admitted.count(None),
    )


def contend(index: int, contests: list[Contest], start: Barrier, results: Queue[Tally]) -> None:
    """One OS process: the contests in order, each one raced by REQUESTS threads."""
    rng = random.Random(SEED + index)
    sizes = [rng.randint(1, MAX_REQUEST) for _ in range(REQUESTS)]
    for contest in contests:
        results.put(race(contest, index, sizes if contest.sized else [1] * REQUESTS, start))


def accuracy(redis_url: str, prefix: str, tmp: str) -> None:
    ours_redis = with_prefix(redis_url, prefix)
    # A generous busy timeout: 400 writers queue for SQLite's single write lock.
    ours_sqlite = f"sqlite:///{tmp}/accuracy.db?timeout=60"
    contests: list[Contest] = []
    for sized, cap in ((False, JOB_LIMIT), (True, TOKEN_CAP)):
        case = "tokens" if sized else "jobs"
        contests += [
            Contest("ours (redis)", "ours", ours_redis, f"agent-redis-{case}", cap, sized),
            Contest("ours (sqlite file)", "ours", ours_sqlite, f"agent-sqlite-{case}", cap, sized),
            Contest(
                "naive GET/compare/INCRBY", "naive", redis_url, f"{prefix}:naive:{case}", cap, sized
            ),
            Contest(
                "limits MovingWindow", "limits", redis_url, f"{prefix}:limits:{case}", cap, sized
            ),
        ]
    stores = {url: open_allowance_store(url) for url in (ours_redis, ours_sqlite)}
    for contest in contests:
        if contest.kind == "ours":
            limit = "daily_token_limit" if contest.sized else "daily_job_limit"
            stores[contest.url].set_allowance(
                AgentAllowance.model_validate({"agent_id": contest.key, limit: contest.cap})
            )

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results: Queue[Tally] = ctx.Queue()
    workers = [
        ctx.Process(target=contend, args=(i, contests, start, results)) for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    tallies = [results.get(timeout=BARRIER_TIMEOUT) for _ in range(PROCESSES * len(contests))]
    for worker in workers:
        worker.join()

    totals = {c.label: Tally(c.label, 0, 0, 0, 0) for c in contests}
    for t in tallies:
        s = totals[t.label]
        totals[t.label] = Tally(
            t.label,
            s.admitted + t.admitted,
            s.spent + t.spent,
            s.demand + t.demand,
            s.errors + t.errors,
        )
    # Our stores' own counters must agree with what the clients were told.
    for contest in contests:
        if contest.kind == "ours":
            usage = stores[contest.url].get_usage(contest.key)
            counted = usage.tokens_reserved if contest.sized else usage.jobs_started
            expected = totals[contest.label]
            assert counted == (expected.spent if contest.sized else expected.admitted), contest
    for store in stores.values():
        store.close()

    print(
        f"\n2a. Accuracy: {PROCESSES} processes x {REQUESTS} threads at once,"
        f" limit {JOB_LIMIT} jobs/day"
    )
    print(f"{'contender':<28} {'requests':>8} {'admitted':>8} {'limit':>6} {'errors':>6}  verdict")
    for contest in contests:
        if contest.sized:
            continue
        t = totals[contest.label]
        print(
            f"{contest.name:<28} {PROCESSES * REQUESTS:>8} {t.admitted:>8} {contest.cap:>6}"
            f" {t.errors:>6}  {verdict(t.admitted, contest.cap)}"
        )
    print(
        f"\n2b. Token cap: {PROCESSES} x {REQUESTS} requests of 1-{MAX_REQUEST} tokens"
        f" (seeded), cap {TOKEN_CAP:,}"
    )
    print(
        f"{'contender':<28} {'demand':>8} {'admitted':>8} {'spent':>7} {'cap':>7} {'errors':>6}"
        "  verdict"
    )
    for contest in contests:
        if not contest.sized:
            continue
        t = totals[contest.label]
        print(
            f"{contest.name:<28} {t.demand:>8,} {t.admitted:>8} {t.spent:>7,} {contest.cap:>7,}"
            f" {t.errors:>6}  {verdict(t.spent, contest.cap)}"
        )


def verdict(got: int, cap: int) -> str:
    if got == cap:
        return "exact"
    if got > cap:
        return f"OVER by {got - cap:,} ({got / cap - 1:.0%})"
    return f"under by {cap - got:,}"


# --- main -------------------------------------------------------------------------


def header(redis_url: str, private: bool, cpu: int | None) -> None:
    client = redis.Redis.from_url(redis_url)
    server = cast(dict[str, Any], client.info("server"))
    client.close()
    where = 'private, loopback, --save "" --appendonly no' if private else "given by --redis-url"
    placement = (
        "client and server not pinned"
        if cpu is None
        else f"redis-server pinned to CPU {cpu}, the client too in part 1"
    )
    print(
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, load average"
        f" {os.getloadavg()[0]:.2f} at start; {placement}"
    )
    print(
        f"Software: Python {platform.python_version()}, redis-server"
        f" {server['redis_version']} ({where}), redis-py {redis.__version__},"
        f" limits {limits.__version__}\n"
    )


def delete_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i : i + 1000])
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="an existing Redis to use (a private one otherwise)")
    parser.add_argument("--quick", action="store_true", help="fewer ops per latency run")
    parser.add_argument(
        "--no-pin", action="store_true", help="leave the private server and the client unpinned"
    )
    parser.add_argument("--ops", type=int, help="ops per latency run (default 2000, quick 300)")
    args = parser.parse_args()
    ops = args.ops or (300 if args.quick else 2_000)

    prefix = f"bench-quota-{uuid.uuid4().hex[:8]}"
    # Part 1 runs the client and a private server on one CPU: the client waits for
    # every reply, so they never compete, and no reply pays for waking another CPU
    # (tens of microseconds on virtual machines, more than a PING costs).
    cpu = None
    if not (args.redis_url or args.no_pin) and hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0))
    server = nullcontext(args.redis_url) if args.redis_url else private_redis(cpu)
    with tempfile.TemporaryDirectory() as tmp, server as url:
        header(url, private=not args.redis_url, cpu=cpu)
        try:
            latency(url, prefix, tmp, ops, cpu)
            accuracy(url, prefix, tmp)
        finally:
            delete_keys(url, prefix)


if __name__ == "__main__":
    main()
