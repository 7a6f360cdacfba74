"""Claims per second: through the HTTP task API on loopback vs TaskStore.claim directly.

Run: ``python bench/claim.py [--tasks N]``. For SQLite and Redis (a redis-server
started here on a free loopback port), it measures in one run:

* direct      ``store.claim`` in this process, one task after another;
* http x1     one TaskClient claiming one task after another (latency-bound);
* http x4     four TaskClient threads claiming disjoint tasks at once;

against one uvicorn server in its own process over the same store. Each row claims a
fresh set of pending tasks. Compare the ratios, not the absolute numbers: they depend
on the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from agentic.client import TaskClient
from agentic.models import Task
from agentic.stores import open_task_store

THREADS = 4
# The server checks a token like a real deployment does, so auth is in the cost.
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(url: str, port: int) -> None:
    """Child process: the task API over ``url``, without access logs."""
    import uvicorn

    from agentic.server import create_app

    app = create_app(open_task_store(url), admin_tokens=[TOKEN], requeue_interval=None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def server(url: str) -> Iterator[str]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(url, port))
    process.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the task API server did not start")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.join(10)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def seed(url: str, count: int) -> list[str]:
    """``count`` pending tasks in the store at ``url``."""
    store = open_task_store(url)
    try:
        return [store.create(Task(title=f"bench {n}")).id for n in range(count)]
    finally:
        store.close()


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def direct(url: str, ids: list[str]) -> float:
    store = open_task_store(url)
    try:
        return timed(lambda: [store.claim(i, "bench", 300) for i in ids])
    finally:
        store.close()


def http_sequential(base: str, ids: list[str]) -> float:
    with TaskClient(base, TOKEN, agent_id="bench") as client:
        client.ping()  # connect first: measure claims, not the TCP handshake
        return timed(lambda: [client.claim_task(i) for i in ids])


def http_threads(base: str, ids: list[str]) -> float:
    clients = [TaskClient(base, TOKEN, agent_id=f"bench-{n}") for n in range(THREADS)]
    for client in clients:
        client.ping()
    shares = [ids[n::THREADS] for n in range(THREADS)]

    def claim_share(n: int) -> None:
        for task_id in shares[n]:
            clients[n].claim_task(task_id)

    try:
        with ThreadPoolExecutor(THREADS) as pool:
            return timed(lambda: list(pool.map(claim_share, range(THREADS))))
    finally:
        for client in clients:
            client.close()


def fresh(base_url: str) -> str:
    """A URL for a new, empty namespace of the same backend."""
    if base_url.startswith("redis"):
        return f"{base_url}?prefix=bench{uuid.uuid4().hex[:8]}"
    return base_url.replace(".db", f"-{uuid.uuid4().hex[:8]}.db")


def measure(backend: str, url: str, count: int) -> list[tuple[str, str, int, float]]:
    rows = []
    direct_url = fresh(url)
    rows.append(
        (backend, "direct TaskStore.claim", count, direct(direct_url, seed(direct_url, count)))
    )
    for label, run in (
        ("http x1 (one client)", http_sequential),
        (f"http x{THREADS} (threads)", http_threads),
    ):
        http_url = fresh(url)
        ids = seed(http_url, count)
        with server(http_url) as base:
            rows.append((backend, label, count, run(base, ids)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="claims per row")
    args = parser.parse_args()
    rows: list[tuple[str, str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        rows += measure("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.tasks)
        rows += measure("redis", redis_url, args.tasks)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {sys.platform}")
    header = ("backend", "path", "claims", "seconds", "claims/s", "vs direct")
    print("{:<8} {:<24} {:>7} {:>8} {:>9} {:>10}".format(*header))
    baseline: dict[str, float] = {}
    for backend, label, count, seconds in rows:
        rate = count / seconds
        baseline.setdefault(backend, rate)
        ratio = rate / baseline[backend]
        print(f"{backend:<8} {label:<24} {count:>7} {seconds:>8.2f} {rate:>9.0f} {ratio:>9.2f}x")


if __name__ == "__main__":
    main()
