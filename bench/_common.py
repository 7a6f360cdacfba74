"""Helpers shared by the benchmarks: a private redis-server, percentiles, and the
scaling of a task store listing."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import redis

from agentic.stores.base import TaskStore
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.stores.sqlite.tasks import SQLiteTaskStore

#: an indexed listing's cost at the large size over the small one, at most
SCALING_TARGET = 3.0


@contextmanager
def private_redis(cpu: int | None = None) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence; its URL.

    ``cpu`` pins the server to that CPU (Linux only).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it or pass the URL of a running Redis")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if cpu is not None:
                os.sched_setaffinity(process.pid, {cpu})
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        sys.exit(f"redis-server did not start on port {port}")
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def percentile(samples: list[float], q: float) -> float:
    """The sample at quantile ``q`` (0..1) by rank, without interpolation."""
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))]


def print_ratios(
    samples: dict[str, list[float]], peer: str, header: tuple[str, str, str], fmt: str
) -> None:
    """One row per contender: the median of its rounds (``fmt``), its ratio to
    ``peer``'s median, and every round; ``header``: the first three column titles."""
    base = statistics.median(samples[peer])
    width = max(len(header[0]), *map(len, samples))
    print(f"{header[0]:{width}} {header[1]:>10} {header[2]:>9}  every round")
    for name, values in samples.items():
        median = statistics.median(values)
        rounds = " ".join(format(value, fmt) for value in values)
        print(f"{name:{width}} {format(median, fmt):>10} {median / base:8.2f}x  {rounds}")


def task_store_scaling(
    redis_url: str | None,
    sizes: tuple[int, int],
    populate: Callable[[TaskStore, int], None],
    measure: Callable[[TaskStore], tuple[float, float]],
) -> list[tuple[str, int, float, float]]:
    """For the small and the large size, on a SQLite file and on Redis (``redis_url``,
    else a private server): a new task store filled by ``populate(store, size)``,
    then ``measure(store)``: (indexed listing ms, walking listing ms). The rows:
    (backend, size, indexed ms, walk ms)."""
    rows: list[tuple[str, int, float, float]] = []
    context = nullcontext(redis_url) if redis_url else private_redis()
    with context as url, tempfile.TemporaryDirectory() as folder:
        client = redis.Redis.from_url(url)
        for size in sizes:
            for backend in ("sqlite", "redis"):
                if backend == "redis":
                    prefix = f"bench-{size}-{time.time_ns()}"
                    store: TaskStore = RedisTaskStore(client, prefix=prefix)
                else:
                    store = SQLiteTaskStore(Path(folder) / f"bench-{size}.db")
                populate(store, size)
                indexed, walk = measure(store)
                rows.append((backend, size, indexed, walk))
                store.close()
        client.close()
    return rows


def print_scaling(
    rows: list[tuple[str, int, float, float]], what: str, count: Callable[[int], int]
) -> None:
    """The table of :func:`task_store_scaling` and, per backend, the ratio large /
    small of the indexed listing (target <= 3) and the walk's cost against it at the
    large size; ``what`` names the tasks counted, ``count(size)`` how many."""
    print(f"{'backend':8} {what:>12} {'listing ms':>11} {'walk ms':>9}")
    for backend, size, indexed, walk in rows:
        print(f"{backend:8} {count(size):>12,} {indexed:>11.3f} {walk:>9.3f}")
    print()
    for backend in ("sqlite", "redis"):
        small, large = (row for row in rows if row[0] == backend)
        ratio = large[2] / small[2]
        verdict = "ok" if ratio <= SCALING_TARGET else "MISSED"
        print(
            f"{backend:7} listing at {count(large[1]):,} / {count(small[1]):,} {what}:"
            f" {ratio:.2f}x  (target <= {SCALING_TARGET:g}: {verdict});"
            f" the walk at {count(large[1]):,}: {large[3] / large[2]:.0f}x the listing"
        )
