"""Helpers shared by the benchmarks: a private redis-server and percentiles."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


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
