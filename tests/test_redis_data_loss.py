"""Redis losing data under running stores: a FLUSHDB, a restart without persistence, a
server that evicts keys when full.

Every Redis store remembers the store id it found at open; every write checks it is
still there (in the script it already runs, or a WATCH for the plain writes) and
raises StoreLostError, writing nothing, when it is gone or replaced. Opening refuses
a Redis whose ``maxmemory-policy`` evicts keys. Real-Redis tests here use a
redis-server of their own (they flush, restart and reconfigure it); fakeredis plays
a Redis 6, so the scripts' path (EVALSHA) is covered beside the Functions'.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from agentic._cli._common import other_store
from agentic.allowance import AllowanceService
from agentic.client import TaskClient
from agentic.errors import (
    APIError,
    ConfigError,
    NotFoundError,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
)
from agentic.events import Event
from agentic.models import AgentAllowance, AgentInfo, Task
from agentic.stores import open_allowance_store, open_event_log, open_registry, open_task_store
from agentic.stores.base import AgentRegistry, AllowanceStore, EventLog, TaskStore
from agentic.stores.keys import store_count_key
from agentic.stores.redis import RedisAllowanceStore, RedisEventLog, RedisRegistry, _conn
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.testing import running_server
from tests.conftest import (
    RedisServer,
    every_store_use,
    fake_redis_6,
    free_port,
    start_redis_server,
    the_other_store_uses,
)

# clean_environment is autouse in test_cli: imported here, it applies here too.
from tests.test_cli import clean_environment, run, write_config  # noqa: F401


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server these tests may flush and reconfigure (not the session's)."""
    server = start_redis_server(tmp_path_factory.mktemp("redis-loss"))
    yield server
    server.process.terminate()
    server.process.wait(10)


@dataclass
class Stores:
    """One of each Redis store under one prefix, and a client of their server."""

    client: Any
    prefix: str
    registry: AgentRegistry
    quota: AllowanceStore
    tasks: TaskStore
    log: EventLog

    def close(self) -> None:
        for store in (self.registry, self.quota, self.tasks, self.log):
            store.close()


def _open(client: Any, prefix: str) -> Stores:
    return Stores(
        client,
        prefix,
        RedisRegistry(client, prefix=prefix),
        RedisAllowanceStore(client, prefix=prefix),
        RedisTaskStore(client, prefix=prefix),
        RedisEventLog(client, prefix=prefix),
    )


@pytest.fixture(params=["redis", "fakeredis"])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    """Every Redis store under a fresh prefix: on the module's own redis-server
    (Functions), then on a fakeredis Redis 6 (scripts); each working already."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("own_server")
        client: Any = redis.Redis(port=server.port)
    else:
        client = fake_redis_6()
    made = _open(client, f"t{uuid.uuid4().hex[:12]}")
    made.registry.register(AgentInfo(id="a1", capabilities=["py"], max_load=2))
    made.quota.set_allowance(AgentAllowance(agent_id="a1"))
    made.quota.reserve("a1", "m", 10, "j1")
    made.tasks.create(Task(id="t1", title="before"))
    made.log.append([Event(type="agent_registered")])
    yield made
    made.close()
    client.close()


def _keys(stores: Stores) -> list[bytes]:
    return sorted(stores.client.scan_iter(match=f"{stores.prefix}:*"))


def _wipe(stores: Stores) -> None:
    """What a FLUSHDB does to these stores (on the shared fakeredis and the module's
    server alike: only this test's keys)."""
    keys = _keys(stores)
    if keys:
        stores.client.delete(*keys)


def test_every_use_after_a_flush_raises_store_lost_and_writes_nothing(stores: Stores) -> None:
    """After the store is emptied under open stores, every write (reserve, settle,
    claim, create, register, heartbeat, lease, event append, allowance set) and every
    read that would answer "nothing" or "unknown" (listings of agents, allowances,
    usage, events, consumers; the gets) raises StoreLostError naming the id that is
    gone, and the store stays empty."""
    seen = stores.tasks.store_id()
    _wipe(stores)
    stored = (stores.registry, stores.quota, stores.tasks, stores.log)
    for use in every_store_use(*stored) + the_other_store_uses(*stored):
        with pytest.raises(StoreLostError) as caught:
            use()
        message = str(caught.value)
        assert f"emptied or replaced under this process (store id {seen} is gone" in message
        assert "(store id " + seen + " is gone: the store id key is gone)" in message
        assert "maxmemory-policy noeviction" in message
    assert _keys(stores) == []


def test_listings_of_a_fresh_store_are_empty(stores: Stores) -> None:
    """A store never used (opened under a new prefix) lists nothing without an error:
    no agents, allowances, usage, events or consumers; its gets answer not found."""
    fresh = _open(stores.client, f"t{uuid.uuid4().hex[:12]}")
    try:
        assert fresh.registry.list() == []
        assert fresh.quota.allowances() == []
        assert fresh.quota.usages() == []
        assert fresh.log.read() == []
        assert fresh.log.last_offset() == 0
        assert fresh.log.wait(0, 0.2) is False
        assert fresh.log.committed("c") == 0
        assert fresh.log.consumers() == {}
        assert fresh.log.forget("c") is False
        for unknown in (
            lambda: fresh.registry.get("a1"),
            lambda: fresh.quota.get_allowance("a1"),
            lambda: fresh.quota.get_model_quota("m"),
        ):
            with pytest.raises(NotFoundError):
                unknown()
    finally:
        fresh.close()


def test_a_read_only_open_of_an_emptied_store_writes_no_id(stores: Stores) -> None:
    """Opening a store with create=False (what the read-only commands do) where there
    is no store id raises StoreError saying it was never used or emptied, and writes
    nothing; where there is one it opens and reads."""
    prefix = stores.prefix
    with RedisRegistry(stores.client, prefix=prefix, create=False) as registry:
        assert [agent.id for agent in registry.list()] == ["a1"]
    _wipe(stores)
    for opener in (RedisRegistry, RedisAllowanceStore, RedisEventLog):
        with pytest.raises(StoreError) as caught:
            opener(stores.client, prefix=prefix, create=False)
        said = " ".join(str(caught.value).split())
        assert f"no agentic store under prefix {prefix!r}" in said
        assert "nothing has used it yet" in said
        assert "it was emptied" in said
    assert _keys(stores) == []


def test_a_store_replaced_under_open_stores_is_named_and_left_alone(stores: Stores) -> None:
    """A process opening the emptied store starts a new one (its own id) and works;
    the stores opened before still refuse, naming both ids, and add nothing to it."""
    seen = stores.quota.store_id()
    _wipe(stores)
    fresh = _open(stores.client, stores.prefix)
    try:
        new_id = fresh.tasks.store_id()
        assert new_id != seen
        fresh.quota.set_allowance(AgentAllowance(agent_id="a1"))
        fresh.tasks.create(Task(id="t9", title="new"))
        before = {key: stores.client.dump(key) for key in _keys(stores)}
        with pytest.raises(StoreLostError, match=f"store id {seen} is gone: it now holds id"):
            stores.quota.reserve("a1", "m", 10, "j2")
        with pytest.raises(StoreLostError, match=new_id):
            stores.tasks.claim("t9", "a1", 30)
        assert {key: stores.client.dump(key) for key in _keys(stores)} == before
        assert fresh.quota.reserve("a1", "m", 10, "j3").job_id == "j3"
    finally:
        fresh.close()


Snapshot = dict[bytes, tuple[bytes, int]]


def _snapshot(stores: Stores) -> Snapshot:
    """Every key of these stores as it is now (a backup, a replica's copy)."""
    return {key: (stores.client.dump(key), stores.client.pttl(key)) for key in _keys(stores)}


def _put_back(stores: Stores, snapshot: Snapshot) -> None:
    """The stores' keys as they were at ``snapshot`` and no others (a restored backup,
    a failover to a replica that had them)."""
    _wipe(stores)
    for key, (value, ttl) in snapshot.items():
        stores.client.restore(key, max(ttl, 0), value)


def test_a_store_restored_under_open_stores_goes_on(stores: Stores) -> None:
    """Data put back after a wipe (a backup: the same store id) lets the stores opened
    before go on where they were: the usage held before counts."""
    backup = _snapshot(stores)
    _wipe(stores)
    with pytest.raises(StoreLostError):
        stores.quota.reserve("a1", "m", 10, "j2")
    _put_back(stores, backup)
    stores.quota.reserve("a1", "m", 10, "j2")
    usage = stores.quota.get_usage("a1")
    assert (usage.jobs_started, usage.tokens_reserved) == (2, 20)
    assert stores.tasks.get("t1").title == "before"


def test_a_lost_store_is_not_failed_open(stores: Stores) -> None:
    """A quota service set to fail open refuses work on a store emptied under it (it
    never comes back by waiting, as an unreachable one does), with no fail_open
    advice: nothing is admitted unmetered."""
    service = AllowanceService(stores.quota, fail_open=True)
    _wipe(stores)
    for admit in (
        lambda: service.check("a1", "m", 10),
        lambda: service.reserve("a1", "m", 10, "j2"),
        service.active_jobs,
    ):
        with pytest.raises(StoreUnavailableError, match="emptied or replaced") as raised:
            admit()
        assert "fail_open" not in str(raised.value)
    assert _keys(stores) == []


def test_a_restart_without_persistence_is_noticed_after_functions_reload(
    tmp_path: Path,
) -> None:
    """redis-server restarted empty (no RDB/AOF) under open stores: the next call
    finds no function, loads it again, and then refuses (StoreLostError), writing
    nothing; the Functions are back, the data is not."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    server = start_redis_server(tmp_path / "a")
    url = f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    quota = open_allowance_store(url)
    tasks = open_task_store(url)
    try:
        quota.set_allowance(AgentAllowance(agent_id="a1"))
        quota.reserve("a1", "m", 10, "j1")
        tasks.create(Task(id="t1", title="before"))
        server.process.terminate()
        server.process.wait(10)
        server = start_redis_server(tmp_path / "b", port=server.port)
        for write in (
            lambda: quota.reserve("a1", "m", 10, "j2"),
            lambda: tasks.create(Task(id="t2", title="after")),
        ):
            with pytest.raises(StoreLostError, match="the store id key is gone"):
                write()
        client = redis.Redis(port=server.port)
        assert client.keys("*") == []
        assert client.function_list()  # reloaded: the refusal came from the script
        client.close()
    finally:
        quota.close()
        tasks.close()
        server.process.terminate()
        server.process.wait(10)


def test_a_fresh_store_opens_and_every_reopen_keeps_its_id(stores: Stores) -> None:
    """A prefix that never had an id opens (the first opener writes one); later
    openers find the same id and their writes pass."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    first = _open(stores.client, prefix)
    again = _open(stores.client, prefix)
    try:
        assert first.registry.store_id() == again.quota.store_id() == again.log.store_id()
        again.tasks.create(Task(id="t1", title="x"))
        assert first.tasks.claim("t1", "a1", 30).claimed_by == "a1"
    finally:
        first.close()
        again.close()


# --- a store gone back in time --------------------------------------------------------


def _names(use: Callable[[], object]) -> tuple[str, ...]:
    """The names a use's code calls (none for a bound method)."""
    code = getattr(use, "__code__", None)
    return () if code is None else tuple(code.co_names)


def _count_key(stores: Stores, store_id: str) -> bytes:
    return store_count_key(stores.prefix, store_id).encode()


def test_every_use_after_the_store_went_back_raises_store_lost_and_writes_nothing(
    stores: Stores,
) -> None:
    """The store put back to an earlier copy under open stores (a failover to a replica
    that had not caught up, a restored backup: the same store id) refuses every write
    and every read that would answer from it, saying it went back, by how much, what
    was lost and what to do; the store is marked so and nothing else is written. The
    data with the lost writes put back, the stores go on where they were."""
    seen = stores.tasks.store_id()
    count_key = _count_key(stores, seen)
    snapshot = _snapshot(stores)
    before = int(stores.client.get(count_key))
    stores.tasks.claim("t1", "a1", 30)  # lost below: t1 would be claimed twice
    stores.quota.reserve("a1", "m", 10, "j2")  # lost below: its tokens spent twice
    latest = _snapshot(stores)
    _put_back(stores, snapshot)
    stored = (stores.registry, stores.quota, stores.tasks, stores.log)
    uses = every_store_use(*stored) + the_other_store_uses(*stored)
    # A wait answers at once that there are events (the copy has some, as the store
    # had): not "nothing", and the read that follows it is refused.
    waits = [use for use in uses if "wait" in _names(use)]
    assert len(waits) == 1 and waits[0]() is True
    for use in uses:
        if use in waits:
            continue
        with pytest.raises(StoreLostError) as caught:
            use()
        said = " ".join(str(caught.value).split())
        assert f"the Redis store went back in time (store id {seen}:" in said
        assert f"its write count was {before} where a process had seen {before + 2})" in said
        assert "a failover to a replica that had not caught up" in said
        assert "run twice" in said
        assert "agentic admin accept-store" in said
    marked = count_key + b":went_back"
    assert stores.client.get(marked) == f"{before} {before + 2}".encode()
    now = {key: stores.client.dump(key) for key in _keys(stores) if key != marked}
    assert now == {key: value for key, (value, _) in snapshot.items() if key != count_key}
    _put_back(stores, latest)  # the data that has the lost writes: the stores go on
    assert stores.tasks.get("t1").claimed_by == "a1"
    stores.quota.reserve("a1", "m", 10, "j3")
    assert stores.quota.get_usage("a1").tokens_reserved == 30


def test_a_store_whose_write_count_is_gone_is_refused_as_gone_back(stores: Stores) -> None:
    """The write count missing beside the same store id (a backup from before this
    agentic counted writes) is refused as gone back, the count named as gone; a
    command that only reads, opening a store that has no count (last written by an
    older agentic), is refused and writes none."""
    seen = stores.registry.store_id()
    stores.client.delete(_count_key(stores, seen))
    with pytest.raises(StoreError, match="has no write count: it was last written"):
        RedisEventLog(stores.client, prefix=stores.prefix, create=False)
    with pytest.raises(StoreLostError, match="its write count was gone where a process"):
        stores.registry.list()
    with pytest.raises(StoreLostError, match="its write count was gone where a process"):
        stores.tasks.create(Task(id="t2", title="after"))
    assert stores.client.get(_count_key(stores, seen)) is None


def test_a_write_answered_during_a_read_is_not_taken_for_a_store_gone_back(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read whose count was read before another thread's write, answered after it, passes."""
    client = stores.tasks._client  # type: ignore[attr-defined]
    made = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = made(*args, **kwargs)
        run = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            replies = run(*a, **k)
            # Another thread's write, executed after this read and answered first.
            stores.quota.set_allowance(AgentAllowance(agent_id="a2"))
            return replies

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    assert stores.tasks.get("t1").title == "before"
    monkeypatch.undo()
    assert (
        stores.client.get(f"{_count_key(stores, stores.registry.store_id()).decode()}:went_back")
        is None
    )
    stores.tasks.create(Task(id="t2", title="after"))


# A process of its own on a store URL: it writes once and says "ready", then at each
# line read it tries a write and a read and says how each went.
_OTHER_PROCESS = """
import sys
from agentic.models import Task
from agentic.stores import open_task_store
tasks = open_task_store(sys.argv[1])
tasks.create(Task(title="before"))
print("ready", flush=True)
for n, _ in enumerate(sys.stdin):
    said = []
    for use in (lambda: tasks.create(Task(title=f"after {n}")), tasks.counts):
        try:
            use()
            said.append("ok")
        except Exception as exc:
            said.append(type(exc).__name__ + ": " + " ".join(str(exc).split()))
    print(" | ".join(said), flush=True)
"""


def test_a_store_gone_back_is_refused_by_every_process_until_an_operator_accepts_it(
    own_server: RedisServer,
) -> None:
    """Once a process finds the store gone back, every process refuses it: one that
    saw none of the lost writes (its own count not above the copy's), one opening it
    afresh; after `agentic admin accept-store` every one goes on from the store as it
    is, the running ones without a restart."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    url = f"{own_server.url}?prefix={prefix}"
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdin is not None and other.stdout is not None

    def other_says() -> str:
        assert other.stdin is not None and other.stdout is not None
        other.stdin.write("go\n")
        other.stdin.flush()
        return other.stdout.readline().strip()

    client: Any = redis.Redis(port=own_server.port)
    try:
        assert other.stdout.readline().strip() == "ready"
        made = Stores(client, prefix, *(opener(url) for opener in OPENERS))
        snapshot = _snapshot(made)
        made.tasks.create(Task(id="t9", title="lost"))
        _put_back(made, snapshot)
        with pytest.raises(StoreLostError, match="went back in time"):
            made.tasks.create(Task(id="t10", title="refused"))
        said = other_says()
        assert said.count("StoreLostError: the Redis store went back in time") == 2, said
        shown = run("allowance", "show", "--store", url)
        assert shown.exit_code == 1, shown.output
        assert "the Redis store went back in time" in " ".join(shown.stderr.split())
        accepted = run("admin", "accept-store", "--store", url)
        assert accepted.exit_code == 0, accepted.output
        assert "accepted the store as it is (its write count was" in accepted.stdout
        assert other_says() == "ok | ok"
        made.tasks.create(Task(id="t11", title="after"))
        assert sorted(t.title for t in made.tasks.list()) == ["after", "after 1", "before"]
        again = run("admin", "accept-store", "--store", url)
        assert "not marked as gone back: nothing changed" in again.stdout
        made.close()
    finally:
        other.kill()
        other.wait(10)
        client.close()


def test_accept_store_takes_only_a_redis_store(tmp_path: Path) -> None:
    """agentic admin accept-store on a store URL that is not Redis exits 2 saying it
    takes a redis:// URL (only a Redis store can go back under running processes)."""
    result = run("admin", "accept-store", "--store", f"sqlite:///{tmp_path / 'a.db'}")
    assert result.exit_code == 2, result.output
    assert "give a redis:// or rediss:// URL" in " ".join(result.stderr.split())
    assert not (tmp_path / "a.db").exists()


# --- maxmemory-policy ----------------------------------------------------------------


@pytest.fixture
def policy(own_server: RedisServer) -> Iterator[Any]:
    """A client of the module's server whose maxmemory settings the test changes; put
    back as they were afterwards."""
    client: Any = redis.Redis(port=own_server.port, decode_responses=True)
    saved = client.config_get("maxmemory*")
    yield client
    client.config_set("maxmemory", saved["maxmemory"])
    client.config_set("maxmemory-policy", saved["maxmemory-policy"])
    client.close()


OPENERS: list[Callable[[str], Any]] = [
    open_registry,
    open_allowance_store,
    open_task_store,
    open_event_log,
]


@pytest.mark.parametrize("evicting", ["allkeys-lru", "volatile-lru", "allkeys-random"])
def test_an_evicting_policy_is_refused_at_open(
    own_server: RedisServer, policy: Any, evicting: str
) -> None:
    """With maxmemory set and a policy that evicts keys, every opener refuses with a
    ConfigError naming the setting and the fix, before writing anything."""
    policy.config_set("maxmemory", "100mb")
    policy.config_set("maxmemory-policy", evicting)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    for opener in OPENERS:
        with pytest.raises(ConfigError) as caught:
            opener(f"{own_server.url}?prefix={prefix}")
        said = str(caught.value)
        assert f"maxmemory-policy {evicting}" in said
        assert "maxmemory-policy noeviction" in said
        assert "over-spent" in said
    assert policy.keys(f"{prefix}:*") == []


@pytest.mark.parametrize(("maxmemory", "setting"), [("100mb", "noeviction"), ("0", "allkeys-lru")])
def test_noeviction_or_no_maxmemory_opens(
    own_server: RedisServer, policy: Any, maxmemory: str, setting: str
) -> None:
    """noeviction with a maxmemory, or an evicting policy with no maxmemory (Redis
    never evicts then), opens every store."""
    policy.config_set("maxmemory", maxmemory)
    policy.config_set("maxmemory-policy", setting)
    url = f"{own_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    for opener in OPENERS:
        with opener(url) as store:
            assert len(store.store_id()) == 32


def test_a_user_refused_config_opens(own_server: RedisServer, policy: Any) -> None:
    """A user whose ACL refuses CONFIG (as managed Redis often does) opens every store
    without the check, even where the policy evicts: nothing can be said."""
    policy.config_set("maxmemory", "100mb")
    policy.config_set("maxmemory-policy", "allkeys-lru")
    name = f"u{uuid.uuid4().hex[:8]}"
    policy.acl_setuser(
        name,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    try:
        url = f"redis://{name}:pw@127.0.0.1:{own_server.port}/0?prefix=t{uuid.uuid4().hex[:12]}"
        for opener in OPENERS:
            with opener(url) as store:
                assert len(store.store_id()) == 32
    finally:
        policy.acl_deluser(name)


def test_an_evicting_policy_set_later_is_refused_from_the_next_look_until_put_back(
    own_server: RedisServer, policy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A maxmemory-policy that evicts, set after the stores opened, is seen at the next
    look at the settings (every POLICY_REVIEW_EVERY seconds, not at each call): from
    then every call of every store is refused (StoreError naming the policy), writing
    nothing, until the policy is noeviction again."""
    monkeypatch.setattr(_conn, "POLICY_REVIEW_EVERY", 0.3)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    url = f"{own_server.url}?prefix={prefix}"
    registry, quota, tasks, log = (opener(url) for opener in OPENERS)
    try:
        quota.set_allowance(AgentAllowance(agent_id="a1"))
        policy.config_set("maxmemory", "100mb")
        policy.config_set("maxmemory-policy", "allkeys-lru")
        tasks.create(Task(id="t1", title="before the next look"))
        time.sleep(0.35)
        stored = sorted(policy.keys(f"{prefix}:*"))
        for use in (
            lambda: tasks.create(Task(id="t2", title="refused")),
            tasks.list,
            lambda: quota.reserve("a1", "m", 10, "j1"),
            registry.list,
            log.read,
            tasks.store_id,
        ):
            with pytest.raises(StoreError) as caught:
                use()
            said = " ".join(str(caught.value).split())
            assert "maxmemory 104857600 bytes, maxmemory-policy allkeys-lru" in said
            assert "changed after this process opened the store" in said
        assert sorted(policy.keys(f"{prefix}:*")) == stored
        policy.config_set("maxmemory-policy", "noeviction")
        tasks.create(Task(id="t2", title="after"))
        assert quota.reserve("a1", "m", 10, "j1").job_id == "j1"
    finally:
        for store in (registry, quota, tasks, log):
            store.close()


# --- what the task API and status say ----------------------------------------------


def test_the_task_api_and_status_say_the_store_was_lost(
    own_server: RedisServer, tmp_path: Path
) -> None:
    """A server whose Redis store was emptied under it answers its health check and a
    create with 503 saying the store was lost and what to do; status says so (and
    that its own stores have no store id) and writes none; once a writer started a
    new store there, status's comparison of store ids reports the loss instead of
    "another store"."""
    url = f"{own_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    with (
        open_task_store(url) as tasks,
        running_server(tasks, requeue_interval=None) as base,
        TaskClient(base, "", retries=0) as api,
    ):
        seen = api.server_store_id()
        assert seen == tasks.store_id()
        client: Any = redis.Redis(port=own_server.port)
        prefix = url.rpartition("=")[2]
        client.delete(*client.keys(f"{prefix}:*"))
        config = write_config(tmp_path / "c.yaml", base, url)
        status = run("status", "--config", str(config))
        assert status.exit_code == 1, status.output
        told = " ".join(status.stderr.split())
        assert "the task server's store was lost: the Redis store was emptied" in told
        assert f"(store id {seen} is gone: the store id key is gone)" in told
        assert f"no agentic store under prefix {prefix!r}" in told
        assert client.keys(f"{prefix}:*") == []  # status wrote no new store id
        client.close()
        with open_registry(url) as reopened:  # as a command that writes does: a new id
            local_id = reopened.store_id()
        for call in (api.server_store_id, lambda: api.create_task(Task(title="x"))):
            with pytest.raises(APIError) as caught:
                call()
            assert caught.value.code == 503
            assert "the task server's store was lost" in caught.value.message
            assert f"store id {seen} is gone: it now holds id {local_id}" in caught.value.message
        said = other_store(api, url, local_id)
        assert said.startswith("the task server's store was lost: the Redis store was emptied")
        status = run("status", "--config", str(config))
        assert status.exit_code == 1, status.output
        told = " ".join(status.stderr.split())
        assert "the task server's store was lost: the Redis store was emptied" in told
        assert f"(store id {seen} is gone: it now holds id {local_id})" in told
        assert "do not belong together" not in told


@pytest.mark.parametrize("command", [("agents", "list"), ("allowance", "show"), ("events",)])
def test_read_only_commands_on_an_emptied_store_say_so_and_write_nothing(
    own_server: RedisServer, command: tuple[str, ...]
) -> None:
    """agents list, allowance show and events on a Redis store that was emptied exit 1
    saying there is no store there (never used, or emptied) and write no store id;
    on the store before the wipe they read it."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    url = f"{own_server.url}?prefix={prefix}"
    with open_allowance_store(url) as quota:
        quota.set_allowance(AgentAllowance(agent_id="a1"))
    assert run(*command, "--store", url).exit_code == 0
    client: Any = redis.Redis(port=own_server.port)
    try:
        client.delete(*client.keys(f"{prefix}:*"))
        result = run(*command, "--store", url)
        assert result.exit_code == 1, result.output
        told = " ".join(result.stderr.split())
        assert f"no agentic store under prefix {prefix!r}" in told
        assert "it was emptied" in told
        assert client.keys(f"{prefix}:*") == []
    finally:
        client.close()


def _serve_says(url: str, tmp_path: Path) -> str:
    """What `agentic serve` on ``url`` writes to stderr up to serving, then stopped."""
    port = free_port()
    agentic = Path(sys.executable).with_name("agentic")
    command = [str(agentic), "serve", "--store", url, "--port", str(port)]
    err = tmp_path / f"serve-{port}.err"
    with err.open("w") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("serving the task API"):
                break
        process.terminate()
        process.communicate(timeout=20)
    return " ".join(err.read_text().split())


def test_serve_warns_of_a_redis_without_an_append_only_file(
    own_server: RedisServer, policy: Any, tmp_path: Path
) -> None:
    """agentic serve on a Redis with appendonly no warns that a restart brings back an
    older store no process can tell apart, and how to turn it on; with it on, not."""
    url = f"{own_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    said = _serve_says(url, tmp_path)
    assert "warning: Redis at 127.0.0.1:" in said
    assert "keeps no append-only file (appendonly no)" in said
    assert "CONFIG SET appendonly yes" in said
    policy.config_set("appendonly", "yes")
    try:
        assert "append-only" not in _serve_says(url, tmp_path)
    finally:
        policy.config_set("appendonly", "no")
