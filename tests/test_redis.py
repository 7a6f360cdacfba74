"""Redis-specific behaviour: parity with memory, one round trip, server time, keys, errors."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import astuple
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
import redis
from pydantic import BaseModel

from agentic.errors import (
    ConfigError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
    StoreUnavailableError,
)
from agentic.events import Event, EventType
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    AgentStatus,
    FailureCharge,
    ModelQuota,
    QuotaEvent,
    Reservation,
    Task,
    TaskResult,
    TaskStatus,
    TaskUpdate,
)
from agentic.quota import DAY, SETTLED_RETENTION, cost_microcents, share_of_cost
from agentic.stores import open_allowance_store, open_registry, open_task_store
from agentic.stores.base import AgentRegistry, AllowanceStore
from agentic.stores.keys import (
    QuotaKeys,
    RegistryKeys,
    TaskKeys,
    store_count_key,
    store_id_key,
)
from agentic.stores.memory import MemoryAllowanceStore, MemoryRegistry
from agentic.stores.redis import RedisAllowanceStore, RedisEventLog, RedisRegistry
from agentic.stores.redis._conn import _OPEN, _WRITE, sync, text
from agentic.stores.redis.allowance import _RESERVE
from agentic.stores.redis.tasks import RedisTaskStore
from agentic.testing import FakeClock
from tests.conftest import RedisServer, free_port

COMPLETED, FAILED, CANCELLED = (
    QuotaEvent.JOB_COMPLETED,
    QuotaEvent.JOB_FAILED,
    QuotaEvent.JOB_CANCELLED,
)


@pytest.fixture(params=["redis", "fakeredis"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A client of a real redis-server, then of fakeredis (with Lua)."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = redis.Redis(port=server.port)
    else:
        import fakeredis

        made = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield made
    made.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def answer(target: object, method: str, args: list[Any]) -> Any:
    """What a store call returned, or which error it raised, as comparable data."""
    try:
        result = getattr(target, method)(*args)
    except Exception as exc:
        return (type(exc).__name__, str(exc), getattr(exc, "retry_after", None))
    if isinstance(result, BaseModel):
        return result.model_dump()
    if isinstance(result, list):
        return [r.model_dump() if isinstance(r, BaseModel) else r for r in result]
    return result


# --- parity with the memory store ----------------------------------------------------

# fmt: off
QUOTA_SEQUENCE: list[tuple[Any, ...]] = [
    ("set_allowance", AgentAllowance(agent_id="a", daily_token_limit=1000, daily_job_limit=5,
                                     concurrent_jobs=2, max_job_duration=600,
                                     model_allowlist=["m1", "m2"])),
    ("set_allowance", AgentAllowance(agent_id="b", concurrent_jobs=1)),
    ("set_model_quota", ModelQuota(model="m1", daily_token_budget=5000, hourly_rate_limit=3,
                                   cost_ceiling=2, input_price=150.5, output_price=600)),
    ("check", "a", "m1", 100),
    ("reserve", "a", "m1", 400, "j1"),
    ("reserve", "a", "m1", 400, "j1"),
    ("reserve", "a", "m3", 1, "j2"),
    ("reserve", "a", "m1", 700, "j2"),
    ("reserve", "a", "m2", 300, "j2"),
    ("reserve", "a", "", 1, "j3"),
    ("check", "a", "", 0),
    ("settle", "j1", 200, 100, COMPLETED),
    ("settle", "j1", 1, 1, COMPLETED),
    ("reserve", "a", "m1", 1, "j1"),
    ("advance", 601),
    ("get_usage", "a"),
    ("settle", "j2", 10, 11, FAILED, "a", "m2"),
    ("reserve", "b", "m1", 3200, "k0"),
    ("reserve", "b", "m1", 2000, "k1"),
    ("reserve", "b", "m1", 2000, "k2"),
    ("settle", "k1", 1000, 999, FAILED),
    ("reserve", "b", "m1", 4000, "k2"),
    ("reserve", "b", "m1", 2000, "k2"),
    ("settle", "k2", 7, 0, CANCELLED),
    ("reserve", "b", "m1", 1, "k3"),
    ("increment_usage", "c", 10, 1),
    ("decrement_active_jobs", "c"),
    ("return_tokens", "c", 5),
    ("increment_model_usage", "m2", 77),
    ("get_model_usage", "m1"),
    ("usages",),
    ("advance", 9 * 3600),
    ("check", "a", "m1", 1000),
    ("get_model_usage", "m1"),
    ("advance", DAY),
    ("reset_usage", "a"),
    ("usages",),
    ("allowances",),
    ("get_model_quota", "m1"),
    ("settle", "nope", 1, 1, COMPLETED),
    ("reserve", "nobody", "", 0, "x"),
    ("check", "b", "m1", 0),
]
# fmt: on


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_allowance_answers_match_memory(client: redis.Redis, prefix: str, tz: str) -> None:
    """A fixed mix of ~40 quota operations gives the memory store's answer at every step."""
    clock = FakeClock()
    zone = ZoneInfo(tz)
    stores: list[AllowanceStore] = [
        MemoryAllowanceStore(clock=clock, tz=zone, reservation_ttl=900),
        RedisAllowanceStore(client, prefix=prefix, clock=clock, tz=zone, reservation_ttl=900),
    ]
    for step, (name, *args) in enumerate(QUOTA_SEQUENCE):
        if name == "advance":
            clock.advance(args[0])
            continue
        expected, got = (answer(store, name, args) for store in stores)
        assert got == expected, f"step {step}: {name}{tuple(args)}"


def test_registry_answers_match_memory(client: redis.Redis, prefix: str) -> None:
    """A fixed mix of registry operations gives the memory registry's answer at every step."""
    clock = FakeClock()
    registries: list[AgentRegistry] = [
        MemoryRegistry(clock=clock),
        RedisRegistry(client, prefix=prefix, clock=clock),
    ]
    sequence: list[tuple[Any, ...]] = [
        ("register", AgentInfo(id="a", name="A", capabilities=["go", "py"], max_load=2)),
        ("register", AgentInfo(id="b", capabilities=["py"], max_load=1, current_load=1)),
        ("advance", 20),
        ("register", AgentInfo(id="c", capabilities=[], status=AgentStatus.OFFLINE)),
        ("heartbeat", "a", 2),
        ("advance", 15),
        ("reap", 30),
        ("list",),
        ("list", AgentStatus.BUSY),
        ("list", None, "py"),
        ("heartbeat", "b"),
        ("register", AgentInfo(id="a", name="A2", capabilities=["rust"])),
        ("deregister", "c"),
        ("heartbeat", "c"),
        ("deregister", "c"),
        ("advance", 100),
        ("reap", 30),
        ("reap", 30),
        ("get", "a"),
        ("heartbeat", "a", 0),
        ("list", AgentStatus.OFFLINE),
    ]
    for step, (name, *args) in enumerate(sequence):
        if name == "advance":
            clock.advance(args[0])
            continue
        expected, got = (answer(registry, name, args) for registry in registries)
        assert got == expected, f"step {step}: {name}{tuple(args)}"


def test_cost_share_is_exact_past_2_to_53(client: redis.Redis, prefix: str) -> None:
    """A failed job's cost share is exact even when cost x tokens passes 2**53."""
    quota = ModelQuota(model="m", input_price=333.3, output_price=999.9)
    store = RedisAllowanceStore(client, prefix=prefix, clock=FakeClock())
    store.set_model_quota(quota)
    tokens_in, tokens_out = 40_000_001, 3
    total = tokens_in + tokens_out
    charged = total - total // 2
    full = cost_microcents(quota, tokens_in, tokens_out)
    assert full * charged > 2**53
    settled = store.settle("j", tokens_in, tokens_out, FAILED, agent_id="a", model="m")
    assert settled.cost_charged == share_of_cost(full, charged, total)


def test_allowances_stored_before_failure_charge_charge_half(
    client: redis.Redis, prefix: str
) -> None:
    """An allowance stored without failure_charge reads as half, and the settle script
    (which reads the stored JSON itself) charges a failed job half."""
    store = RedisAllowanceStore(client, prefix=prefix, clock=FakeClock())
    old = (
        '{"agent_id":"a1","daily_token_limit":0,"daily_job_limit":0,"concurrent_jobs":0,'
        '"max_job_duration":0.0,"model_allowlist":[]}'
    )
    client.set(QuotaKeys.under(prefix).allowance("a1"), old)
    client.sadd(QuotaKeys.under(prefix).allowances, "a1")
    assert store.get_allowance("a1").failure_charge is FailureCharge.HALF
    assert [a.failure_charge for a in store.allowances()] == [FailureCharge.HALF]
    store.reserve("a1", "", 0, "j1")
    assert store.settle("j1", 7, 0, FAILED).tokens_charged == 4


def test_tasks_stored_before_the_lease_length_read_and_renew(
    client: redis.Redis, prefix: str
) -> None:
    """A claimed task stored without lease_seconds (an older version's hash) reads with
    none, and its next renewal records one."""
    store = RedisTaskStore(client, prefix=prefix, clock=FakeClock())
    task = store.create(Task(title="t"))
    store.claim(task.id, "a1", 30)
    client.hdel(TaskKeys.under(prefix).data(task.id), "lease_seconds")
    old = store.get(task.id)
    assert (old.status, old.lease_expires_at is not None, old.lease_seconds) == (
        TaskStatus.IN_PROGRESS,
        True,
        None,
    )
    assert store.renew(task.id, "a1", 45).lease_seconds == 45.0


def test_dead_letters_stored_before_reruns_read_and_retry(client: redis.Redis, prefix: str) -> None:
    """A dead letter stored without reruns (a hash of a version before retries, which a
    rolling upgrade keeps) reads as never retried, and its retry runs it again once."""
    store = RedisTaskStore(client, prefix=prefix, clock=FakeClock())
    task = store.create(Task(title="t", max_retries=0))
    store.claim(task.id, "a1", 30, "j1")
    store.complete(task.id, TaskResult(success=False), "a1", job_id="j1")
    client.hdel(TaskKeys.under(prefix).data(task.id), "reruns")
    assert (store.get(task.id).status, store.get(task.id).reruns) == (TaskStatus.FAILED, 0)
    again = store.retry(task.id, reruns=0)
    assert (again.task.status, again.task.reruns, again.repeated) == (TaskStatus.PENDING, 1, False)
    assert store.retry(task.id, reruns=0).repeated
    assert store.claim(task.id, "a1", 30, "j2").status == TaskStatus.IN_PROGRESS


def _created(store: RedisTaskStore, clock: FakeClock, count: int, **fields: Any) -> list[Task]:
    """``count`` tasks, a second apart (so list order is creation order)."""
    made = []
    for i in range(count):
        clock.advance(1)
        made.append(store.create(Task(title=f"t{i}", **fields)))
    return made


def _claimed_ids(store: RedisTaskStore, agent: str) -> list[str]:
    return [t.id for t in store.list(status=TaskStatus.IN_PROGRESS, claimed_by=agent)]


def _claims_index(client: redis.Redis, keys: TaskKeys, agent: str) -> set[str]:
    return {
        text(member)
        for rank in range(4)
        for member in sync(client.zrange(f"{keys.claims_head}{rank}:{agent}", 0, -1))
    }


def test_an_agents_claims_are_listed_from_its_own_index(client: redis.Redis, prefix: str) -> None:
    """A task enters its agent's claims index when claimed and leaves it on complete,
    release, expiry and dead letter; listing an agent's tasks in progress reads it."""
    clock = FakeClock()
    store = RedisTaskStore(client, prefix=prefix, clock=clock)
    keys = TaskKeys.under(prefix)
    tasks = _created(store, clock, 5, max_retries=0)
    for i, task in enumerate(tasks):
        store.claim(task.id, "a1" if i < 4 else "a2", 30 if i else 5, f"j{i}")
    assert _claimed_ids(store, "a1") == [t.id for t in tasks[:4]]
    assert _claims_index(client, keys, "a2") == {tasks[4].id}
    store.complete(tasks[1].id, TaskResult(success=True), "a1", job_id="j1")
    store.release(tasks[2].id, "a1", job_id="j2")
    store.update(tasks[3].id, TaskUpdate(status=TaskStatus.FAILED))
    clock.advance(10)
    assert [t.id for t in store.requeue_expired()] == [tasks[0].id]  # dead-lettered
    assert _claimed_ids(store, "a1") == [] and _claims_index(client, keys, "a1") == set()
    assert _claimed_ids(store, "a2") == [tasks[4].id]
    assert int(sync(client.get(keys.claimed)) or -1) == 1


def test_claims_written_without_the_index_are_still_listed(
    client: redis.Redis, prefix: str
) -> None:
    """Claims a writer left out of the index (an older version, a store from before
    it) and a task it finished are seen: the count disagrees, the index is rebuilt."""
    clock = FakeClock()
    store = RedisTaskStore(client, prefix=prefix, clock=clock)
    keys = TaskKeys.under(prefix)
    tasks = _created(store, clock, 3)
    for i, task in enumerate(tasks):
        store.claim(task.id, "a1", 30, f"j{i}")
    # As a store written before the index: no index entries, no count; and an id in
    # the status index whose task is gone (the rebuild skips it).
    client.delete(*(f"{keys.claims_head}{r}:a1" for r in range(4)), keys.claimed)
    client.zadd(f"{keys.status_head}in_progress:2", {"ghost": 0})
    assert _claimed_ids(store, "a1") == [t.id for t in tasks]
    client.zrem(f"{keys.status_head}in_progress:2", "ghost")
    # As an older writer completing one: the hash and status sets change, the index not.
    rank = f"{keys.status_head}in_progress:2"
    client.zrem(rank, tasks[0].id)
    client.zadd(f"{keys.status_head}completed:2", {tasks[0].id: 0})
    client.hset(keys.data(tasks[0].id), "status", "completed")
    assert _claimed_ids(store, "a1") == [t.id for t in tasks[1:]]
    assert _claims_index(client, keys, "a1") == {t.id for t in tasks[1:]}


def _split(client: redis.Redis, keys: TaskKeys) -> tuple[set[str], set[str]]:
    """The ids in the ready and in the waiting halves of the pending tasks."""
    ready, waiting = (
        {text(m) for rank in range(4) for m in sync(client.zrange(f"{head}{rank}", 0, -1))}
        for head in (keys.ready_head, keys.waiting_head)
    )
    return ready, waiting


def _ready_ids(store: RedisTaskStore) -> list[str]:
    return [t.id for t in store.list(status=TaskStatus.PENDING, ready=True)]


def test_ready_tasks_are_listed_from_the_ready_half(client: redis.Redis, prefix: str) -> None:
    """A task waits while a dependency is not completed and becomes ready when the last
    one completes; released, retried, blocked and re-run tasks move between the halves."""
    clock = FakeClock()
    store = RedisTaskStore(client, prefix=prefix, clock=clock)
    keys = TaskKeys.under(prefix)
    a, free = _created(store, clock, 2)
    clock.advance(1)
    b = store.create(Task(title="b", dependencies=[a.id, free.id], max_retries=0))
    clock.advance(1)
    c = store.create(Task(title="c", dependencies=[b.id]))
    assert _ready_ids(store) == [a.id, free.id]
    assert _split(client, keys) == ({a.id, free.id}, {b.id, c.id})
    store.claim(a.id, "x", 30, "ja")
    store.complete(a.id, TaskResult(success=True), "x", job_id="ja")
    assert _split(client, keys) == ({free.id}, {b.id, c.id})  # b still waits for free
    store.claim(free.id, "x", 30, "jf")
    store.release(free.id, "x", job_id="jf")  # back to pending: ready again
    assert _ready_ids(store) == [free.id]
    store.claim(free.id, "x", 30, "jf2")
    store.complete(free.id, TaskResult(success=True), "x", job_id="jf2")
    assert _ready_ids(store) == [b.id]
    store.claim(b.id, "x", 30, "jb")
    store.complete(b.id, TaskResult(success=False, error_message="no"), "x", job_id="jb")
    assert store.get(c.id).status == TaskStatus.BLOCKED  # b dead-lettered: c blocked
    assert _ready_ids(store) == [] and _split(client, keys) == (set(), set())
    store.retry(b.id)  # an operator's retry: b ready, c pending behind it (no listing yet)
    assert _split(client, keys) == ({b.id}, {c.id})
    by_status = {
        status: {text(m) for m in sync(client.zrange(f"{keys.status_head}{status}:2", 0, -1))}
        for status in ("pending", "blocked", "failed")
    }
    assert by_status == {"pending": {b.id, c.id}, "blocked": set(), "failed": set()}
    assert _ready_ids(store) == [b.id]


def test_pending_tasks_written_without_the_split_are_still_listed(
    client: redis.Redis, prefix: str
) -> None:
    """Pending tasks a writer left out of the split (an older version, a store from
    before it) are listed: the halves do not add up, the rank is split again."""
    clock = FakeClock()
    store = RedisTaskStore(client, prefix=prefix, clock=clock)
    keys = TaskKeys.under(prefix)
    a, b = _created(store, clock, 2)
    clock.advance(1)
    waiting = store.create(Task(title="w", dependencies=[a.id]))
    halves = (keys.ready_head, keys.waiting_head)
    client.delete(*(f"{head}{rank}" for head in halves for rank in range(4)))
    client.zadd(f"{keys.status_head}pending:2", {"ghost": 0})  # its task gone: skipped
    assert _ready_ids(store) == [a.id, b.id]
    client.zrem(f"{keys.status_head}pending:2", "ghost")
    assert _split(client, keys) == ({a.id, b.id}, {waiting.id})
    client.zrem(f"{keys.ready_head}2", b.id)  # as an older writer's create of b
    assert _ready_ids(store) == [a.id, b.id]
    assert [t.id for t in store.list(status=TaskStatus.PENDING, ready=True, limit=1)] == [a.id]


def test_changes_the_counts_cannot_show_are_found_by_the_audit(
    client: redis.Redis, prefix: str
) -> None:
    """A claim an older writer made while finishing another (the counts agree) and a
    dependency it completed (no promotion) are found by the next listing's audit
    of the indexes (a chunk at most once a second), not by a whole check."""
    clock = FakeClock()
    store = RedisTaskStore(client, prefix=prefix, clock=clock)
    keys = TaskKeys.under(prefix)
    a, b = _created(store, clock, 2)
    clock.advance(1)
    dependent = store.create(Task(title="d", dependencies=[a.id]))
    store.claim(a.id, "x", 30, "ja")
    assert _ready_ids(store) == [b.id] and _claimed_ids(store, "x") == [a.id]
    # As an older writer: a completed (no promotion, no unindexing), b claimed for x
    # (not indexed): every count still agrees.
    for task, old, new in ((a, "in_progress", "completed"), (b, "pending", "in_progress")):
        client.zrem(f"{keys.status_head}{old}:2", task.id)
        client.zadd(f"{keys.status_head}{new}:2", {task.id: clock()})
        client.hset(keys.data(task.id), mapping={"status": new, "claimed_by": "x"})
    client.zrem(f"{keys.ready_head}2", b.id)
    audits = [keys.checked_head + name for name in ("claims:due", "ready:2:due")]
    for mark in audits:  # audited a moment ago: not again within the second
        client.set(mark, "1", ex=60)
    assert _claimed_ids(store, "x") == []  # a is listed no more, b not yet
    assert _ready_ids(store) == []  # the dependent still waits
    client.delete(*audits)  # a second on
    assert _claimed_ids(store, "x") == [b.id]
    assert _ready_ids(store) == [dependent.id]
    assert _split(client, keys) == ({dependent.id}, set())


def test_the_audit_goes_through_an_index_a_chunk_at_a_time(
    client: redis.Redis, prefix: str
) -> None:
    """Each audit reads the next 256 ids, then starts again from the first: 300 tasks
    waiting for a dependency an older writer completed are all ready after two."""
    clock = FakeClock()
    store = RedisTaskStore(client, prefix=prefix, clock=clock)
    keys = TaskKeys.under(prefix)
    [a] = _created(store, clock, 1)
    waiting = [store.create(Task(title=f"w{i}", dependencies=[a.id])).id for i in range(300)]
    client.zrem(f"{keys.status_head}pending:2", a.id)  # as an older writer's completion
    client.zadd(f"{keys.status_head}completed:2", {a.id: clock()})
    client.zrem(f"{keys.ready_head}2", a.id)
    client.hset(keys.data(a.id), "status", "completed")
    due = keys.checked_head + "ready:2:due"
    client.delete(due)
    assert len(_ready_ids(store)) == 256
    client.delete(due)
    assert sorted(_ready_ids(store)) == sorted(waiting)
    assert int(sync(client.get(keys.checked_head + "ready:2")) or -1) == 0  # round again


def test_settled_ids_are_forgotten_after_retention(client: redis.Redis, prefix: str) -> None:
    """A settled job id is pruned by a settle after the retention, like the memory store."""
    clock = FakeClock()
    store = RedisAllowanceStore(client, prefix=prefix, clock=clock)
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.reserve("a", "", 1, "old")
    store.settle("old", 1, 0, COMPLETED)
    clock.advance(SETTLED_RETENTION + 1)
    store.settle("other", 1, 0, COMPLETED, agent_id="a")
    assert store.reserve("a", "", 1, "old").job_id == "old"


# --- keys --------------------------------------------------------------------------


def test_every_key_follows_keys_module(client: redis.Redis, prefix: str) -> None:
    """Registry and allowance keys on one prefix live apart, each under a known pattern
    (the store id and its write count, which every store writes at open when there are
    none, beside them)."""
    clock = FakeClock()
    registry = RedisRegistry(client, prefix=prefix, clock=clock)
    store = RedisAllowanceStore(client, prefix=prefix, clock=clock)
    # ids that look like other keys must not become them
    registry.register(AgentInfo(id="ids"))
    registry.register(AgentInfo(id="agent:x"))
    store.set_allowance(AgentAllowance(agent_id="agents"))
    store.set_model_quota(ModelQuota(model="m"))
    store.reserve("agents", "m", 5, "held:1")
    store.settle("held:1", 1, 1, COMPLETED)
    store.reserve("agents", "m", 5, "j2")
    reg, quota = RegistryKeys.under(prefix), QuotaKeys.under(prefix)
    patterns = [*astuple(reg), *quota.heads()]
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*"))
    assert store_id_key(prefix) in keys
    keys.remove(store_id_key(prefix))
    keys.remove(store_count_key(prefix, registry.store_id()))
    for key in keys:
        matching = [p for p in patterns if key == p or (p.endswith(":") and key.startswith(p))]
        assert matching, f"{key} matches no pattern of agentic.stores.keys"
        assert key.startswith((f"{prefix}:reg:", f"{prefix}:quota:"))
    assert client.type(reg.agent("ids")) == b"hash"
    assert client.type(reg.ids) == b"set"


def test_beats_hold_only_online_agents(client: redis.Redis, prefix: str) -> None:
    """Reaped agents leave the heartbeat sorted set and come back with a heartbeat."""
    clock = FakeClock()
    registry = RedisRegistry(client, prefix=prefix, clock=clock)
    beats = RegistryKeys.under(prefix).beats
    registry.register(AgentInfo(id="a"))
    registry.register(AgentInfo(id="b"))
    clock.advance(100)
    registry.heartbeat("b")
    assert registry.reap(30) == ["a"]
    assert client.zrange(beats, 0, -1) == [b"b"]
    registry.heartbeat("a")
    assert client.zcard(beats) == 2


def test_heartbeat_after_deregister_writes_nothing(client: redis.Redis, prefix: str) -> None:
    """A heartbeat racing a deregister gets NotFoundError and leaves no key behind."""
    registry = RedisRegistry(client, prefix=prefix, clock=FakeClock())
    keys = RegistryKeys.under(prefix)
    registry.register(AgentInfo(id="a"))
    registry.deregister("a")
    with pytest.raises(NotFoundError):
        registry.heartbeat("a", load=1)
    assert client.exists(keys.agent("a"), keys.beats, keys.ids) == 0


# --- time ------------------------------------------------------------------------------


def test_without_clock_scripts_use_server_time(
    client: redis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no clock injected, times come from Redis TIME even if the local clock is wrong."""
    from agentic.stores.redis import _conn

    wrong = types.SimpleNamespace(time=lambda: 0.0, monotonic=time.monotonic)
    monkeypatch.setattr(_conn, "time", wrong)
    server_now = float(cast(tuple[int, int], client.time())[0])
    info = RedisRegistry(client, prefix=prefix).register(AgentInfo(id="a"))
    store = RedisAllowanceStore(client, prefix=prefix)
    store.set_allowance(AgentAllowance(agent_id="a"))
    held = store.reserve("a", "", 1, "j")
    for stamp in (info.last_heartbeat, held.created_at):
        assert stamp is not None
        assert abs(stamp.timestamp() - server_now) < 5


# --- one round trip ------------------------------------------------------------------


def _commands_sent(
    redis_server: RedisServer, client: redis.Redis, prefix: str, call: Callable[[], object]
) -> list[str]:
    """The commands ``client`` sends during ``call()`` (seen with MONITOR); asserts the
    work happened inside Redis (Lua)."""
    address = cast(dict[str, str], client.client_info())["addr"]
    marker = f"end-{prefix}"
    watcher = redis.Redis(port=redis_server.port)
    seen: list[dict[str, Any]] = []
    with watcher.monitor() as monitor:  # type: ignore[no-untyped-call]
        call()
        watcher.echo(marker)  # on another connection: marks the end of the capture
        while marker not in (command := monitor.next_command())["command"]:
            seen.append(command)
    watcher.close()
    ours = [c for c in seen if f"{c['client_address']}:{c['client_port']}" == address]
    assert any(c["client_type"] == "lua" for c in seen)  # the work happened inside
    return [c["command"].split()[0].upper() for c in ours]


def test_reserve_is_one_round_trip(redis_server: RedisServer, prefix: str) -> None:
    """Once its function is loaded, a reserve sends exactly one command: FCALL."""
    client = redis.Redis(port=redis_server.port, single_connection_client=True)
    store = RedisAllowanceStore(client, prefix=prefix)
    store.set_allowance(AgentAllowance(agent_id="a", daily_token_limit=10_000))
    store.set_model_quota(ModelQuota(model="m", hourly_rate_limit=100, cost_ceiling=5))
    store.reserve("a", "m", 10, "warm-up")  # loads the function into the server
    sent = _commands_sent(redis_server, client, prefix, lambda: store.reserve("a", "m", 10, "x"))
    assert sent == ["FCALL"]
    client.close()


def test_extend_is_one_round_trip(redis_server: RedisServer, prefix: str) -> None:
    """Once its function is loaded, an extend sends exactly one command: FCALL."""
    client = redis.Redis(port=redis_server.port, single_connection_client=True)
    store = RedisAllowanceStore(client, prefix=prefix, reservation_ttl=60)
    store.set_allowance(AgentAllowance(agent_id="a"))
    made = store.reserve("a", "m", 10, "j")
    store.extend("j")  # loads the function into the server
    time.sleep(0.01)  # server time moves on: the measured extend writes
    extended: list[Reservation] = []
    sent = _commands_sent(redis_server, client, prefix, lambda: extended.append(store.extend("j")))
    assert sent == ["FCALL"]
    assert made.expires_at is not None and extended[0].expires_at is not None
    assert extended[0].expires_at > made.expires_at
    client.close()


def test_code_reloads_after_flush(client: redis.Redis, prefix: str) -> None:
    """After FUNCTION FLUSH or SCRIPT FLUSH (or a restart), the next call loads it again."""
    store = RedisAllowanceStore(client, prefix=prefix, clock=FakeClock())
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.reserve("a", "", 1, "j1")
    client.function_flush()
    assert store.reserve("a", "", 1, "j2").job_id == "j2"
    client.script_flush()
    assert store.reserve("a", "", 1, "j3").job_id == "j3"
    assert store.get_usage("a").jobs_started == 3


def test_lua_runs_as_redis_functions_named_by_their_code(
    redis_server: RedisServer, prefix: str
) -> None:
    """On Redis 7 the stores' Lua is loaded as libraries named after the code's SHA1
    (the store's open, its plain writes and the reserve here)."""
    client = redis.Redis(port=redis_server.port)
    client.function_flush()
    store = RedisAllowanceStore(client, prefix=prefix)
    store.set_allowance(AgentAllowance(agent_id="a"))
    store.reserve("a", "", 1, "j1")
    listed = [dict(zip(lib[::2], lib[1::2], strict=True)) for lib in sync(client.function_list())]
    names = {text(library[b"library_name"]) for library in listed}
    assert names == {_OPEN.function, _WRITE.function, _RESERVE.function}
    assert _RESERVE.function == f"agentic_{_RESERVE.sha}"
    client.close()


def test_at_maxmemory_reads_go_on_as_scripts(redis_server: RedisServer, prefix: str) -> None:
    """At maxmemory Redis refuses a function that may write, and its load, before it
    runs: the call goes on as a script, so a listing still answers (after a flush too,
    and those read from an index that cannot be checked then)."""
    admin = redis.Redis(port=redis_server.port)
    client = redis.Redis(port=redis_server.port)
    store = RedisTaskStore(client, prefix=prefix)
    store.create(Task(id="t1", title="x"))
    store.create(Task(id="t0", title="claimed"))
    store.claim("t0", "a1", 60)
    admin.config_set("maxmemory", "1")
    try:
        assert [task.id for task in store.list(status=TaskStatus.PENDING)] == ["t1"]
        admin.function_flush()
        admin.script_flush()
        assert [task.id for task in store.list(status=TaskStatus.PENDING)] == ["t1"]
        # The index listings too (a runner's poll, a dispatcher's ready tasks): their
        # indexes cannot be checked, so they walk the status index instead.
        assert [t.id for t in store.list(status=TaskStatus.IN_PROGRESS, claimed_by="a1")] == ["t0"]
        assert [t.id for t in store.list(status=TaskStatus.PENDING, ready=True)] == ["t1"]
        assert [t.id for t in store.list(ready=True, limit=1)] == ["t1"]
        with pytest.raises(StoreUnavailableError, match="maxmemory"):
            store.create(Task(title="y"))  # a write is still refused, as it must be
    finally:
        admin.config_set("maxmemory", "0")
    assert store.create(Task(id="t2", title="z")).id == "t2"  # functions again
    client.close()
    admin.close()


def test_a_user_without_functions_runs_scripts(redis_server: RedisServer, prefix: str) -> None:
    """A user whose ACL forbids FCALL and FUNCTION still gets every store call, as scripts."""
    admin = redis.Redis(port=redis_server.port)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-function", "-fcall", "-fcall_ro"],
    )
    client = redis.Redis(port=redis_server.port, username=user, password="pw")
    try:
        store = RedisAllowanceStore(client, prefix=prefix)
        store.set_allowance(AgentAllowance(agent_id="a", daily_job_limit=1))
        store.reserve("a", "", 1, "j1")
        with pytest.raises(QuotaExceededError):
            store.reserve("a", "", 1, "j2")
        assert store.get_usage("a").jobs_started == 1
    finally:
        client.close()
        admin.acl_deluser(user)
        admin.close()


# --- URLs and errors -----------------------------------------------------------------


def test_open_from_url_with_options(redis_server: RedisServer, prefix: str) -> None:
    """A redis:// URL opens pinged stores that share state under their prefix only."""
    url = f"{redis_server.url}?prefix={prefix}&timeout=1&tz=Europe/Paris&reservation_ttl=5"
    with closing(open_allowance_store(url)) as first, closing(open_allowance_store(url)) as second:
        first.set_allowance(AgentAllowance(agent_id="a", daily_job_limit=3))
        assert second.get_allowance("a").daily_job_limit == 3
    with closing(open_registry(f"{redis_server.url}?prefix={prefix}x")) as other:
        assert other.list() == []
    with closing(open_allowance_store(f"{redis_server.url}?prefix={prefix}x")) as other_store:
        assert other_store.allowances() == []


def test_close_releases_connections(redis_server: RedisServer, prefix: str) -> None:
    """A store opened from a URL owns its client: close() disconnects it."""
    watcher = redis.Redis(port=redis_server.port)

    def clients() -> int:
        return len(cast(list[Any], watcher.client_list()))

    before = clients()
    store = open_allowance_store(f"{redis_server.url}?prefix={prefix}")
    store.get_usage("a")
    assert clients() == before + 1
    store.close()
    # The server notices a closed socket asynchronously: poll briefly.
    deadline = time.monotonic() + 5
    while clients() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert clients() == before
    watcher.close()


def test_unknown_url_option_is_config_error(redis_server: RedisServer) -> None:
    """A typo in the URL options names the accepted ones."""
    with pytest.raises(ConfigError, match="prefix"):
        open_registry(f"{redis_server.url}?prefx=a")
    with pytest.raises(ConfigError, match="prefix"):
        open_registry(f"{redis_server.url}?prefix=")


@pytest.mark.parametrize("opener", [open_registry, open_allowance_store, open_task_store])
def test_a_host_that_does_not_parse_is_config_error(opener: Callable[[str], Any]) -> None:
    """redis://[::1/0 (an unclosed IPv6 bracket) is a ConfigError saying so, without
    the password; urlsplit's ValueError escaped every opener."""
    with pytest.raises(ConfigError, match=r"'redis://:\*\*\*@\[::1/0': Invalid IPv6 URL"):
        opener("redis://:hunter2@[::1/0")


@pytest.mark.parametrize("option", ["timeout=inf", "timeout=1e300", "reservation_ttl=1e15"])
def test_seconds_past_any_time_are_config_error(option: str) -> None:
    """?timeout=inf (an OverflowError of time_t escaped) or a reservation_ttl past
    1e9 s is a ConfigError naming the option, before any connection is tried."""
    key = option.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}=.* must be a number of seconds"):
        open_allowance_store(f"redis://127.0.0.1:{free_port()}/0?{option}")


def test_a_database_that_is_not_a_number_is_config_error(redis_server: RedisServer) -> None:
    """redis://host:port/abc is refused (redis-py would read it as database 0)."""
    base = redis_server.url.rsplit("/", 1)[0]
    with pytest.raises(ConfigError, match=r"the database is a number.*got 'abc'"):
        open_registry(f"{base}/abc")


def test_a_database_past_the_servers_is_config_error(redis_server: RedisServer) -> None:
    """redis://host:port/99 on a server of 16 databases: Redis answered, the URL is wrong."""
    base = redis_server.url.rsplit("/", 1)[0]
    with pytest.raises(ConfigError, match=r"refused this connection.*database number"):
        open_registry(f"{base}/99")


def test_unreachable_redis_fails_fast() -> None:
    """Nothing listening: StoreUnavailableError naming host:port, well within 5 s."""
    port = free_port()
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}.*redis-server"):
        open_registry(f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - start < 5


def test_silent_server_times_out() -> None:
    """A server that accepts but never answers fails after ?timeout=, not never."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"within 0\.3s"):
            open_allowance_store(f"redis://127.0.0.1:{port}/0?timeout=0.3")
        assert time.monotonic() - start < 5


def test_lost_connection_is_store_unavailable() -> None:
    """A store whose Redis went away raises StoreUnavailableError with the cause kept."""
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(StoreUnavailableError) as info:
        RedisAllowanceStore(dead).reserve("a", "", 1, "j")
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(StoreUnavailableError):
        RedisRegistry(dead).get("a")


def test_redis_errors_become_store_errors(client: redis.Redis, prefix: str) -> None:
    """A wrong-type key (in a command or inside a script) is StoreError, never redis's own."""
    registry = RedisRegistry(client, prefix=prefix)
    client.set(RegistryKeys.under(prefix).ids, "not a set")
    with pytest.raises(StoreError) as info:
        registry.list()
    assert isinstance(info.value.__cause__, redis.ResponseError)
    store = RedisAllowanceStore(client, prefix=prefix)
    store.set_allowance(AgentAllowance(agent_id="a"))
    client.set(QuotaKeys.under(prefix).expiry, "not a sorted set")
    with pytest.raises(StoreError):
        store.reserve("a", "", 1, "j")


def test_a_full_redis_is_unavailable_not_a_refusal(redis_server: RedisServer, prefix: str) -> None:
    """OOM (maxmemory reached) passes by itself: StoreUnavailableError, retried by callers."""
    client = redis.Redis(port=redis_server.port)
    log = RedisEventLog(client, prefix=prefix)
    event = Event(type=EventType.TASK_CLAIMED, task_id="t")
    client.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailableError, match="Redis unavailable") as info:
            log.append([event])
        assert isinstance(info.value.__cause__, redis.exceptions.OutOfMemoryError)
    finally:
        client.config_set("maxmemory", "0")
    assert log.append([event]) == [1]
    client.close()


def test_many_threads_share_one_store(redis_server: RedisServer, prefix: str) -> None:
    """Threads sharing one store (one connection pool) never over-admit a job limit."""
    store = open_allowance_store(f"{redis_server.url}?prefix={prefix}")
    store.set_allowance(AgentAllowance(agent_id="a", daily_job_limit=50))
    admitted: list[str] = []

    def worker(n: int) -> None:
        for i in range(20):
            with contextlib.suppress(QuotaExceededError):
                admitted.append(store.reserve("a", "", 0, f"w{n}-{i}").job_id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 50
    assert store.get_usage("a").jobs_started == 50
    store.close()
