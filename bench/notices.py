"""Two task API servers on one Redis (as behind a load balancer): how soon a runner
long-polling server B sees a claim made through server A, with change notices
between the servers and without them (plain polling: the wait runs out), in one run.

Run: ``python bench/notices.py [--trials N] [--wait SECONDS]``. A redis-server is
started here on a free loopback port. Each trial takes B's token, claims a task for
the agent through A, and times B's long-poll (``wait`` seconds, the runner's default
poll interval) from the claim to its answer. Also: the time of a create through A
while B (another process) listens, which costs one PUBLISH per write, against a lone
server (none).
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis
from _common import percentile, private_redis

from agentic.client import TaskClient
from agentic.models import Task
from agentic.stores.base import Notices
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.testing import running_server


class Silent(RedisTaskStore):
    """A Redis task store whose servers tell each other nothing (before notices)."""

    def notices(self) -> Notices | None:
        return None


@contextmanager
def servers(url: str, count: int, kind: type[RedisTaskStore]) -> Iterator[list[TaskClient]]:
    """``count`` servers over one fresh prefix, a client of each, once they listen."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    with ExitStack() as stack:
        apis = []
        for _ in range(count):
            store = kind(client, prefix=prefix)
            base = stack.enter_context(running_server(store, requeue_interval=None))
            apis.append(stack.enter_context(TaskClient(base, token="")))
        time.sleep(1.5)  # every server has counted the others (once a second)
        yield apis
    client.close()


def claim_soon(api: TaskClient, task_id: str, agent: str, moment: list[float]) -> None:
    """Claim ``task_id`` for ``agent`` in 0.05 s (a long-poll waits by then); the
    moment of the claim goes in ``moment``."""
    time.sleep(0.05)
    moment.append(time.monotonic())
    api.claim_task(task_id, agent)


def wake_ms(url: str, kind: type[RedisTaskStore], trials: int, wait: float) -> list[float]:
    """Milliseconds from a claim through A to the answer of B's long-poll, per trial."""
    times = []
    with servers(url, 2, kind) as (api_a, api_b):
        for n in range(trials):
            agent = f"a{n}"
            task = api_a.create_task(Task(title="t"))
            _tasks, token = api_b.watch_tasks(claimed_by=agent)
            moment: list[float] = []
            thread = threading.Thread(target=claim_soon, args=(api_a, task.id, agent, moment))
            thread.start()
            api_b.watch_tasks(token or "", wait, claimed_by=agent)
            answered = time.monotonic()
            thread.join()
            times.append((answered - moment[0]) * 1000)
    return times


@contextmanager
def served_elsewhere(url: str, prefix: str) -> Iterator[None]:
    """``agentic serve`` in another process over the same Redis prefix."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agentic = Path(sys.executable).with_name("agentic")
    command = [str(agentic), "serve", "--store", f"{url}?prefix={prefix}"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with TaskClient(f"http://127.0.0.1:{port}", token="") as api:
            deadline = time.monotonic() + 20
            while True:
                try:
                    api.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline or process.poll() is not None:
                        sys.exit("agentic serve did not start")
                    time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(20)


def create_us(url: str, creates: int, peer: bool) -> float:
    """Median microseconds of a create through a server, with another server (another
    process) listening to its notices or alone."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    with ExitStack() as stack:
        base = stack.enter_context(
            running_server(RedisTaskStore(client, prefix=prefix), requeue_interval=None)
        )
        api = stack.enter_context(TaskClient(base, token=""))
        if peer:
            stack.enter_context(served_elsewhere(url, prefix))
        time.sleep(1.5)  # the server has counted its listeners since
        samples = []
        for _ in range(creates):
            started = time.perf_counter()
            api.create_task(Task(title="t"))
            samples.append((time.perf_counter() - started) * 1e6)
    client.close()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--wait", type=float, default=1.0)
    parser.add_argument("--creates", type=int, default=1000)
    args = parser.parse_args()
    with private_redis() as url:
        notified = wake_ms(url, RedisTaskStore, args.trials, args.wait)
        polled = wake_ms(url, Silent, args.trials, args.wait)
        lone, paired = create_us(url, args.creates, False), create_us(url, args.creates, True)
    print(
        f"python {platform.python_version()}, {sys.platform}; {args.trials} claims through"
        f" server A, a runner long-polling server B with wait={args.wait:g} s"
    )
    print(f"{'servers tell each other':<26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, times in (("with notices", notified), ("without (plain polling)", polled)):
        print(
            f"{name:<26}{percentile(times, 0.5):>9.1f}{percentile(times, 0.99):>9.1f}"
            f"{max(times):>9.1f}"
        )
    print(
        f"\nclaim seen on B, p50: {percentile(polled, 0.5) / percentile(notified, 0.5):.0f}x"
        " sooner with notices"
    )
    print(
        f"create through A, median of {args.creates}: {lone:.0f} us alone,"
        f" {paired:.0f} us with a server in another process listening ({paired / lone:.2f}x)"
    )


if __name__ == "__main__":
    main()
