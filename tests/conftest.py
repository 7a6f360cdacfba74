"""Shared fixtures: the backend table that drives every store contract test.

``backend`` is parametrized over memory, SQLite, a real redis-server (started once
per session on a free loopback port) and fakeredis with Lua. The real Redis (7)
runs the stores' Lua as Redis Functions; fakeredis there plays a Redis 6, which has
none, so every contract test also covers the scripts (EVALSHA) path. Each backend builds
stores bound to a :class:`~agentic.testing.FakeClock`, and exposes a URL for tests
that spawn OS processes (SQLite file, real Redis).

Real-Redis tests skip when redis-server is missing, except when ``CI`` is set:
there they fail, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentic.events import Event
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    ModelQuota,
    QuotaEvent,
    Task,
    TaskResult,
    TaskUpdate,
)
from agentic.stores.base import AgentRegistry, AllowanceStore, EventLog, TaskStore
from agentic.testing import FakeClock

BACKENDS = ["memory", "sqlite", "redis", "fakeredis"]


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A redis-server process owned by the test session."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(autouse=True)
def _own_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's runners (and the agent processes it starts) keep their job usage
    files apart: a leftover of one test must not be settled by the next."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for the whole session."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(10)


def start_redis_server(workdir: Path, port: int | None = None) -> RedisServer:
    """Start a redis-server of its own on ``port``, else a free loopback port (the
    caller stops it); skipped when redis-server is missing, except under CI."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (the test command installs it)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the real-Redis tests")
        pytest.skip(message)
    port = port or free_port()
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
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    client.close()
    return RedisServer(port, process)


@dataclass
class Backend:
    """How to build each kind of store on one backend, bound to one fake clock."""

    name: str
    clock: FakeClock
    #: a URL other OS processes can open (None for memory and fakeredis)
    url: str | None
    _make: Callable[[str, dict[str, Any]], Any]
    _opened: list[Any] = field(default_factory=list)

    def registry(self, **options: Any) -> AgentRegistry:
        store: AgentRegistry = self._make("registry", options)
        self._opened.append(store)
        return store

    def allowance(self, **options: Any) -> AllowanceStore:
        store: AllowanceStore = self._make("allowance", options)
        self._opened.append(store)
        return store

    def event_log(self) -> EventLog:
        log: EventLog = self._make("event_log", {})
        self._opened.append(log)
        return log

    def close(self) -> None:
        for store in self._opened:
            store.close()


def _memory(clock: FakeClock) -> Callable[[str, dict[str, Any]], Any]:
    from agentic.stores.memory import MemoryAllowanceStore, MemoryEventLog, MemoryRegistry

    log = MemoryEventLog()  # one log per backend, as one file or one Redis would be

    def make(kind: str, options: dict[str, Any]) -> Any:
        if kind == "event_log":
            return log
        if kind == "registry":
            return MemoryRegistry(clock=clock, **options)
        return MemoryAllowanceStore(clock=clock, **options)

    return make


def _sqlite(clock: FakeClock, path: Path) -> Callable[[str, dict[str, Any]], Any]:
    from agentic.stores.sqlite import SQLiteAllowanceStore, SQLiteEventLog, SQLiteRegistry

    def make(kind: str, options: dict[str, Any]) -> Any:
        if kind == "event_log":
            return SQLiteEventLog(path)
        if kind == "registry":
            return SQLiteRegistry(path, clock=clock, **options)
        return SQLiteAllowanceStore(path, clock=clock, **options)

    return make


def _redis(clock: FakeClock, client: Any, prefix: str) -> Callable[[str, dict[str, Any]], Any]:
    from agentic.stores.redis import RedisAllowanceStore, RedisEventLog, RedisRegistry

    def make(kind: str, options: dict[str, Any]) -> Any:
        if kind == "event_log":
            return RedisEventLog(client, prefix=prefix)
        if kind == "registry":
            return RedisRegistry(client, prefix=prefix, clock=clock, **options)
        return RedisAllowanceStore(client, prefix=prefix, clock=clock, **options)

    return make


def fake_redis_6() -> Any:
    """The table's fakeredis: a Redis 6, which has no Functions, so the stores run
    their Lua as scripts (EVALSHA) there; the real Redis runs them as Functions."""
    import fakeredis

    return fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(6,)))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each store backend in turn, with a fresh namespace and a fake clock."""
    clock = FakeClock()
    name: str = request.param
    prefix = f"t{uuid.uuid4().hex[:12]}"
    client: Any = None
    if name == "memory":
        made = Backend(name, clock, None, _memory(clock))
    elif name == "sqlite":
        path = tmp_path / "agentic.db"
        made = Backend(name, clock, f"sqlite:///{path}", _sqlite(clock, path))
    elif name == "redis":
        import redis

        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis(port=server.port)
        made = Backend(name, clock, f"{server.url}?prefix={prefix}", _redis(clock, client, prefix))
    else:
        client = fake_redis_6()
        made = Backend(name, clock, None, _redis(clock, client, prefix))
    yield made
    made.close()
    if client is not None:
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL several OS processes can open at once: one SQLite file, one Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "fakeredis"])
def redis_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client of the session's redis-server, then of a fakeredis server (for what
    only Redis stores do)."""
    if request.param == "redis":
        import redis

        server: RedisServer = request.getfixturevalue("redis_server")
        client: Any = redis.Redis(port=server.port)
    else:
        import fakeredis

        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


def every_store_use(
    registry: AgentRegistry, quota: AllowanceStore, tasks: TaskStore, log: EventLog
) -> list[Callable[[], object]]:
    """A call of every kind, write and read, on each store (the tests of a store lost
    under open stores: each must raise StoreLostError and write nothing). Made for
    stores holding agent a1, model m, task t1, job j1 and consumer c."""
    return [
        lambda: quota.reserve("a1", "m", 10, "j2"),
        lambda: quota.settle("j1", 5, 5, QuotaEvent.JOB_COMPLETED),
        lambda: quota.set_allowance(AgentAllowance(agent_id="a1")),
        lambda: quota.set_model_quota(ModelQuota(model="m")),
        lambda: quota.get_usage("a1"),
        quota.usages,
        lambda: quota.get_model_usage("m"),
        lambda: quota.check("a1"),
        quota.allowances,
        lambda: quota.get_allowance("a1"),
        lambda: quota.get_model_quota("m"),
        quota.store_id,
        lambda: tasks.create(Task(id="t2", title="after")),
        lambda: tasks.claim("t1", "a1", 30),
        tasks.list,
        tasks.requeue_expired,
        lambda: tasks.get("t1"),
        lambda: tasks.logs("t1"),
        tasks.counts,
        tasks.store_id,
        lambda: registry.register(AgentInfo(id="a1", capabilities=["py"])),
        lambda: registry.heartbeat("a1"),
        lambda: registry.hold_lease("dispatcher", "me", 10),
        registry.list,
        lambda: registry.get("a1"),
        registry.store_id,
        lambda: log.append([Event(type="agent_registered")]),
        lambda: log.commit("c", 1),
        lambda: log.reset("c"),
        log.read,
        log.last_offset,
        lambda: log.wait(0, 0.2),
        lambda: log.committed("c"),
        log.consumers,
        lambda: log.forget("c"),
        log.store_id,
    ]


def the_other_store_uses(
    registry: AgentRegistry, quota: AllowanceStore, tasks: TaskStore, log: EventLog
) -> list[Callable[[], object]]:
    """A call of each method :func:`every_store_use` leaves out (their effects would
    upset the state a working store is checked for after it): with it, every method
    of each store, for the tests of a store lost under open stores."""
    return [
        lambda: quota.increment_usage("a1", 1, 1),
        lambda: quota.decrement_active_jobs("a1"),
        lambda: quota.return_tokens("a1", 1),
        lambda: quota.reset_usage("a1"),
        lambda: quota.increment_model_usage("m", 1),
        lambda: quota.unreserve("j1"),
        lambda: quota.withdraw("j1"),
        lambda: quota.expire("j1"),
        lambda: quota.extend("j1"),
        lambda: tasks.withdraw_claim("t1", "a1"),
        lambda: tasks.renew("t1", "a1", 30),
        lambda: tasks.release("t1", "a1"),
        lambda: tasks.update("t1", TaskUpdate(notes="after")),
        lambda: tasks.complete("t1", TaskResult(success=True), "a1"),
        lambda: tasks.retry("t1"),
        lambda: tasks.append_logs("t1", ["after"]),
        lambda: registry.deregister("a1"),
        lambda: registry.reap(30),
        lambda: registry.drop_lease("dispatcher", "me"),
        lambda: log.trim(0),
    ]
