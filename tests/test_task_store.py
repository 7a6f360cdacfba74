"""TaskStore contract, run on every backend: create, list, claim, leases, retries, logs."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from agentic.errors import ConfigError, ConflictError, NotFoundError
from agentic.models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from agentic.stores import open_task_store
from agentic.stores.base import RunSeen, TaskStore
from tests.conftest import Backend, fake_redis_6

PENDING, IN_PROGRESS, COMPLETED, BLOCKED, FAILED = (
    TaskStatus.PENDING,
    TaskStatus.IN_PROGRESS,
    TaskStatus.COMPLETED,
    TaskStatus.BLOCKED,
    TaskStatus.FAILED,
)
OK = TaskResult(success=True, output="done")


def _make_store(backend: Backend, request: pytest.FixtureRequest) -> TaskStore:
    """A task store on ``backend``'s kind of storage, bound to its fake clock."""
    if backend.name == "memory":
        from agentic.stores.memory.tasks import MemoryTaskStore

        return MemoryTaskStore(clock=backend.clock)
    url = backend.url or ""
    if backend.name == "sqlite":
        from agentic.stores.sqlite.tasks import SQLiteTaskStore

        return SQLiteTaskStore(Path("/" + urlsplit(url).path.lstrip("/")), clock=backend.clock)
    from agentic.stores.redis.tasks import RedisTaskStore

    if backend.name == "redis":
        import redis

        parts = urlsplit(url)
        client: Any = redis.Redis(host=parts.hostname or "", port=parts.port or 6379)
        prefix = parse_qs(parts.query)["prefix"][0]
    else:
        client = fake_redis_6()
        prefix = "t"
    request.addfinalizer(client.close)
    return RedisTaskStore(client, prefix=prefix, clock=backend.clock)


@pytest.fixture
def store(backend: Backend, request: pytest.FixtureRequest) -> Iterator[TaskStore]:
    """A fresh task store on each backend of the table."""
    made = _make_store(backend, request)
    yield made
    made.close()


def new(store: TaskStore, title: str = "t", **fields: Any) -> Task:
    return store.create(Task.model_validate({"title": title, **fields}))


def fail(message: str = "boom") -> TaskResult:
    return TaskResult(success=False, error_message=message)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- create ----------------------------------------------------------------------------


def test_create_fills_server_decided_fields(store: TaskStore, backend: Backend) -> None:
    """An empty id/status/time gets a uuid4 hex id, pending, and the clock's time."""
    task = new(store, "write docs", priority="high", labels=["py"], max_retries=2)
    assert len(task.id) == 32
    int(task.id, 16)
    assert task.status == PENDING
    assert task.created_at == task.updated_at == at(backend.clock())
    assert (task.retry_count, task.max_retries, task.blockers) == (0, 2, [])
    assert store.get(task.id) == task


def test_create_accepts_go_agentic_zero_values(store: TaskStore, backend: Backend) -> None:
    """go-agentic's client payload (empty id and status, zero timestamps) is accepted."""
    zero = "0001-01-01T00:00:00Z"
    payload = {
        "id": "",
        "title": "go",
        "status": "",
        "created_at": zero,
        "updated_at": zero,
        "claimed_at": zero,
        "last_attempt": zero,
        "claimed_by": "",
        "priority": "low",
    }
    task = store.create(Task.model_validate(payload))
    assert task.id
    assert task.status == PENDING
    assert task.created_at == at(backend.clock())
    assert task.claimed_at is None
    assert task.last_attempt is None


def test_create_keeps_given_id_and_created_at(store: TaskStore) -> None:
    """A given id and created_at are kept; a second task with that id is a conflict."""
    task = new(store, id="job-1", created_at="2025-01-01T00:00:00Z")
    assert task.id == "job-1"
    assert task.created_at == datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(ConflictError, match="job-1"):
        new(store, id="job-1")
    assert len(store.list()) == 1


def test_create_is_idempotent_per_key(store: TaskStore) -> None:
    """The same idempotency key returns the first task; another key creates another."""
    first = store.create(Task(title="a"), idempotency_key="k1")
    again = store.create(Task(title="a"), idempotency_key="k1")
    other = store.create(Task(title="a"), idempotency_key="k2")
    assert again.id == first.id
    assert other.id != first.id
    assert len(store.list()) == 2


def test_a_repeat_under_one_key_must_ask_for_the_same_task(store: TaskStore) -> None:
    """A key repeated with another task is refused (422) naming what differs; one
    repeated with the same task (changed since by updates) returns the first."""
    dep = store.create(Task(title="dep"))
    asked = Task(title="a", labels=["py", "go"], dependencies=[dep.id, dep.id], max_retries=1)
    first = store.create(asked, idempotency_key="k1")
    store.update(first.id, TaskUpdate(notes="later", progress=10))
    assert store.create(asked, idempotency_key="k1").id == first.id
    assert store.create(asked.model_copy(update={"notes": "n"}), idempotency_key="k1") == (
        store.get(first.id)
    )
    other = asked.model_copy(update={"title": "b", "priority": Priority.HIGH, "id": "given"})
    with pytest.raises(ConflictError) as info:
        store.create(other, idempotency_key="k1")
    assert info.value.code == 422
    assert info.value.message == (
        f"idempotency key 'k1' created task {first.id} with another id, title, priority:"
        " a repeat must send the same task, and a new task needs a new key"
    )
    assert len(store.list()) == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"title": ""},
        {"title": "   "},
        {"title": "t", "id": "a/b"},
        {"title": "t", "status": "in_progress"},
        {"title": "t", "status": "completed"},
        {"title": "t", "claimed_by": "a1"},
        {"title": "t", "labels": ["a,b"]},
        {"title": "t", "labels": [""]},
        {"title": "t", "id": "x", "dependencies": ["x"]},
    ],
)
def test_create_rejects_bad_input(store: TaskStore, fields: dict[str, Any]) -> None:
    """Bad input raises ConfigError and stores nothing (not even the idempotency key)."""
    with pytest.raises(ConfigError):
        store.create(Task.model_validate(fields), idempotency_key="k")
    assert store.list() == []
    assert store.create(Task(title="ok"), idempotency_key="k").title == "ok"


def test_create_needs_existing_dependencies(store: TaskStore) -> None:
    """A missing dependency raises NotFoundError naming it; nothing is stored."""
    dep = new(store, "dep")
    with pytest.raises(NotFoundError, match="ghost"):
        new(store, dependencies=[dep.id, "ghost"])
    assert [t.id for t in store.list()] == [dep.id]


def test_get_returns_a_copy(store: TaskStore) -> None:
    """Mutating a returned Task does not change the stored one."""
    task = new(store, labels=["a"])
    task.labels.append("evil")
    assert store.get(task.id).labels == ["a"]


def test_unknown_id_raises_not_found(store: TaskStore) -> None:
    """Every operation on an unknown task id raises NotFoundError."""
    calls: list[Callable[[], object]] = [
        lambda: store.get("nope"),
        lambda: store.claim("nope", "a1", 30),
        lambda: store.renew("nope", "a1", 30),
        lambda: store.release("nope"),
        lambda: store.update("nope", TaskUpdate(progress=5)),
        lambda: store.complete("nope", OK),
        lambda: store.append_logs("nope", ["x"]),
        lambda: store.logs("nope"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()


# --- list ------------------------------------------------------------------------------


def test_list_orders_by_priority_then_age_then_id(store: TaskStore, backend: Backend) -> None:
    """list() puts critical first, then older, then lower id."""
    new(store, id="m-old", priority="medium")
    backend.clock.advance(1)
    new(store, id="b-new", priority="medium")
    new(store, id="a-new", priority="medium")
    new(store, id="low", priority="low")
    new(store, id="crit", priority="critical")
    assert [t.id for t in store.list()] == ["crit", "m-old", "a-new", "b-new", "low"]
    assert [t.id for t in store.list(limit=2)] == ["crit", "m-old"]
    assert store.list(limit=0) == []


def test_list_pages_after_a_task(store: TaskStore, backend: Backend) -> None:
    """after=id lists what follows that task in list order, page by page, filters kept."""
    new(store, id="m-old", priority="medium")
    backend.clock.advance(1)
    for task_id in ("b-new", "a-new", "B-new", "a-new-2"):  # equal times: ids decide
        new(store, id=task_id, priority="medium")
    new(store, id="low", priority="low")
    new(store, id="crit", priority="critical")
    order = ["crit", "m-old", "B-new", "a-new", "a-new-2", "b-new", "low"]
    assert [t.id for t in store.list()] == order
    for i, task_id in enumerate(order):
        assert [t.id for t in store.list(after=task_id)] == order[i + 1 :], task_id
    pages, after = [], None
    while True:
        page = [t.id for t in store.list(limit=3, after=after)]
        pages.append(page)
        if len(page) < 3:
            break
        after = page[-1]
    assert pages == [order[:3], order[3:6], order[6:]]
    # the cursor's own state does not matter: a claimed task still marks the place
    store.claim("a-new", "agent-1", 30)
    assert [t.id for t in store.list(status=PENDING, after="a-new")] == ["a-new-2", "b-new", "low"]
    assert [t.id for t in store.list(priority=Priority.LOW, after="crit")] == ["low"]


def test_list_after_an_unknown_or_empty_id_is_refused(store: TaskStore) -> None:
    """after names a task that exists: NotFoundError otherwise, ConfigError when empty."""
    new(store, id="a")
    with pytest.raises(NotFoundError):
        store.list(after="nope")
    with pytest.raises(ConfigError, match="after"):
        store.list(after="")


def test_list_filters(store: TaskStore) -> None:
    """status, priority, project, claimed_by and labels (all of them) filter the list."""
    new(store, id="a", project="p1", labels=["go", "py"], priority="high")
    new(store, id="b", project="p2", labels=["py"])
    new(store, id="c", project="p1")
    store.claim("c", "agent-1", 30)

    def ids(**filters: Any) -> list[str]:
        return [t.id for t in store.list(**filters)]

    assert ids(status=PENDING) == ["a", "b"]
    assert ids(status=IN_PROGRESS) == ["c"]
    assert ids(priority=Priority.HIGH) == ["a"]
    assert ids(project="p1") == ["a", "c"]
    assert ids(claimed_by="agent-1") == ["c"]
    assert ids(labels=["py"]) == ["a", "b"]
    assert ids(labels=["py", "go"]) == ["a"]
    assert ids(labels=["rust"]) == []
    assert ids(project="p1", status=PENDING) == ["a"]
    with pytest.raises(ConfigError):
        store.list(labels_within="py")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        store.list(status="bogus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        store.list(limit=-1)


def test_labels_within_lists_what_those_capabilities_could_take(store: TaskStore) -> None:
    """labels_within keeps the tasks with no label outside it (unlabelled ones too);
    [] keeps only unlabelled tasks; it pages and combines like any filter."""
    for task_id, labels in [
        ("a", ["go", "py"]),
        ("b", ["py"]),
        ("c", []),
        ("d", ["gpu"]),
        ("e", ["py", "gpu"]),
        ("f", ["py"]),
    ]:
        new(store, id=task_id, labels=labels)

    def ids(**filters: Any) -> list[str]:
        return [t.id for t in store.list(**filters)]

    assert ids(labels_within=["py"]) == ["b", "c", "f"]
    assert ids(labels_within=["py", "go"]) == ["a", "b", "c", "f"]
    assert ids(labels_within=["gpu", "py"]) == ["b", "c", "d", "e", "f"]
    assert ids(labels_within=[]) == ["c"]
    assert ids(labels_within=["py"], labels=["py"]) == ["b", "f"]
    assert ids(labels_within=["py"], limit=2) == ["b", "c"]
    assert ids(labels_within=["py"], after="c") == ["f"]
    assert ids(labels_within=["py"], ready=True, status=PENDING) == ["b", "c", "f"]


def test_ready_means_pending_with_dependencies_completed(store: TaskStore) -> None:
    """ready=True lists pending tasks whose dependencies are all completed."""
    new(store, id="dep")
    new(store, id="child", dependencies=["dep"])
    new(store, id="free")
    assert [t.id for t in store.list(ready=True)] == ["dep", "free"]
    assert [t.id for t in store.list(ready=False)] == ["child"]
    store.claim("dep", "a1", 30)
    assert [t.id for t in store.list(ready=True)] == ["free"]
    store.complete("dep", OK, agent_id="a1")
    assert [t.id for t in store.list(ready=True)] == ["child", "free"]


# --- claim, renew, release, complete ---------------------------------------------------


def test_claim_sets_claimer_and_lease(store: TaskStore, backend: Backend) -> None:
    """A claim puts the task in progress for the agent with a lease of now + seconds."""
    task = new(store)
    backend.clock.advance(5)
    claimed = store.claim(task.id, "agent-1", 30)
    now = backend.clock()
    assert claimed.status == IN_PROGRESS
    assert claimed.claimed_by == "agent-1"
    assert claimed.claimed_at == claimed.updated_at == at(now)
    assert claimed.lease_expires_at == at(now + 30)
    assert store.get(task.id) == claimed


def test_second_claim_conflicts_naming_the_holder(store: TaskStore) -> None:
    """A task already claimed cannot be claimed again, by anyone; the error names the holder."""
    task = new(store)
    store.claim(task.id, "agent-1", 30)
    for agent in ("agent-2", "agent-1"):
        with pytest.raises(ConflictError, match="agent-1"):
            store.claim(task.id, agent, 30)
    assert store.get(task.id).claimed_by == "agent-1"


def test_claim_records_the_job_id(store: TaskStore, backend: Backend) -> None:
    """The claim stores the quota job id; it stays after a lease expiry for the dispatcher
    and goes with a release."""
    task = new(store)
    assert store.claim(task.id, "a1", 10, job_id="job-1").job_id == "job-1"
    backend.clock.advance(10)
    assert store.requeue_expired()[0].job_id == "job-1"
    assert store.claim(task.id, "a2", 10, job_id="job-2").job_id == "job-2"
    # released by its holder: the holder deals with the reservation, the id goes
    assert store.release(task.id, "a2").job_id == ""


def test_claim_rejects_bad_arguments(store: TaskStore) -> None:
    """Bad agent ids and leases raise ConfigError and leave the task pending."""
    task = new(store)
    for agent, lease in [("", 30), ("a1", 0), ("a1", -1), ("a1", float("inf"))]:
        with pytest.raises(ConfigError):
            store.claim(task.id, agent, lease)
    assert store.get(task.id).status == PENDING


def test_dependencies_gate_the_claim(store: TaskStore) -> None:
    """A task is claimable only when every dependency is completed."""
    new(store, id="d1")
    new(store, id="d2")
    new(store, id="child", dependencies=["d1", "d2", "d1"])
    assert store.get("child").dependencies == ["d1", "d2"]
    with pytest.raises(ConflictError, match="waiting for dependencies: d1, d2"):
        store.claim("child", "a1", 30)
    store.claim("d1", "a1", 30)
    store.complete("d1", OK)
    with pytest.raises(ConflictError, match="waiting for dependencies: d2"):
        store.claim("child", "a1", 30)
    store.claim("d2", "a1", 30)
    store.complete("d2", OK)
    assert store.claim("child", "a1", 30).status == IN_PROGRESS


def test_renew_extends_the_holders_lease(store: TaskStore, backend: Backend) -> None:
    """renew moves the lease to now + seconds for the holder; others get ConflictError."""
    task = new(store)
    store.claim(task.id, "agent-1", 30)
    backend.clock.advance(20)
    renewed = store.renew(task.id, "agent-1", 60)
    assert renewed.lease_expires_at == at(backend.clock() + 60)
    with pytest.raises(ConflictError, match="agent-1"):
        store.renew(task.id, "agent-2", 60)
    store.release(task.id)
    with pytest.raises(ConflictError, match="pending"):
        store.renew(task.id, "agent-1", 60)


def test_the_lease_length_is_recorded_with_the_lease(store: TaskStore, backend: Backend) -> None:
    """The claim and each renewal record their lease length, which an update since
    leaves exact; it goes with the lease (complete, release, expiry, dead letter),
    and a new task may not carry one."""
    task, other = new(store), new(store, max_retries=0)
    assert task.lease_seconds is None
    assert store.claim(task.id, "agent-1", 30).lease_seconds == 30.0
    backend.clock.advance(5)
    assert store.renew(task.id, "agent-1", 60).lease_seconds == 60.0
    backend.clock.advance(4)
    patched = store.update(task.id, TaskUpdate(progress=50))
    assert patched.lease_seconds == 60.0
    assert patched.lease_expires_at == at(backend.clock() + 56)
    assert store.complete(task.id, OK).lease_seconds is None
    store.claim(other.id, "agent-1", 30)
    assert store.release(other.id).lease_seconds is None
    store.claim(other.id, "agent-1", 30)
    backend.clock.advance(30)
    (dead,) = store.requeue_expired()
    assert (dead.status, dead.lease_seconds) == (FAILED, None)
    with pytest.raises(ConfigError, match="claim"):
        new(store, lease_seconds=30)


def test_release_gives_the_claim_back_without_a_retry(store: TaskStore, backend: Backend) -> None:
    """release makes the task pending and unclaimed; no retry is counted."""
    task = new(store)
    store.claim(task.id, "agent-1", 30)
    with pytest.raises(ConflictError):
        store.release(task.id, "agent-2")
    released = store.release(task.id, "agent-1")
    assert released.status == PENDING
    assert (released.claimed_by, released.claimed_at, released.lease_expires_at) == ("", None, None)
    assert released.retry_count == 0
    with pytest.raises(ConflictError):
        store.release(task.id)
    backend.clock.advance(60)
    assert store.requeue_expired() == []
    assert store.claim(task.id, "agent-2", 30).claimed_by == "agent-2"


def test_complete_success(store: TaskStore, backend: Backend) -> None:
    """Success completes the task with its result; completing twice is a conflict."""
    task = new(store)
    store.claim(task.id, "agent-1", 30)
    with pytest.raises(ConflictError, match="agent-1"):
        store.complete(task.id, OK, agent_id="agent-2")
    result = TaskResult(success=True, output="out", artifacts=["a.txt"])
    done = store.complete(task.id, result, agent_id="agent-1")
    assert done.status == COMPLETED
    assert done.result == result
    assert done.progress == 100
    assert done.claimed_by == "agent-1"
    assert done.lease_expires_at is None
    with pytest.raises(ConflictError, match="completed"):
        store.complete(task.id, OK)
    with pytest.raises(ConflictError, match="not pending"):
        store.claim(task.id, "agent-2", 30)
    backend.clock.advance(60)
    assert store.requeue_expired() == []


def test_complete_failure_counts_a_retry(store: TaskStore, backend: Backend) -> None:
    """A failure makes the task pending again with retry_count +1 and next_attempt_at."""
    task = new(store)
    store.claim(task.id, "agent-1", 30)
    backend.clock.advance(3)
    now = backend.clock()
    again = store.complete(task.id, fail("oops"), retry_at=now + 10)
    assert again.status == PENDING
    assert again.retry_count == 1
    assert again.last_attempt == at(now)
    assert again.next_attempt_at == at(now + 10)
    assert again.claimed_by == ""
    assert again.result is not None
    assert again.result.error_message == "oops"
    assert again.fail_reason == ""
    assert store.claim(task.id, "agent-2", 30).status == IN_PROGRESS


def test_dead_letter_after_max_retries(store: TaskStore) -> None:
    """Past max_retries a failure dead-letters the task: failed, with the reason."""
    task = new(store, max_retries=1)
    for expected in (PENDING, FAILED):
        store.claim(task.id, "a1", 30)
        assert store.complete(task.id, fail("disk full")).status == expected
    dead = store.get(task.id)
    assert dead.retry_count == 2
    assert "max retries exceeded" in dead.fail_reason
    assert "disk full" in dead.fail_reason
    with pytest.raises(ConflictError, match="failed"):
        store.claim(task.id, "a1", 30)


def test_counts_follow_every_status_change(store: TaskStore) -> None:
    """counts gives every status, 0 included, and follows claims, results and blocks."""
    assert store.counts() == dict.fromkeys(TaskStatus, 0)
    first, second = new(store, max_retries=0), new(store, priority=Priority.CRITICAL)
    child = new(store, dependencies=[first.id])
    done = new(store, priority=Priority.LOW)
    store.claim(first.id, "a1", 30)
    store.claim(done.id, "a1", 30)
    store.complete(done.id, TaskResult(success=True))
    assert store.counts() == {
        PENDING: 2,  # second, child
        TaskStatus.IN_PROGRESS: 1,
        TaskStatus.COMPLETED: 1,
        FAILED: 0,
        TaskStatus.BLOCKED: 0,
    }
    store.complete(first.id, fail())  # dead-lettered: child is blocked
    assert store.counts() == {
        PENDING: 1,
        TaskStatus.IN_PROGRESS: 0,
        TaskStatus.COMPLETED: 1,
        FAILED: 1,
        TaskStatus.BLOCKED: 1,
    }
    assert sum(store.counts().values()) == len(store.list()) == 4
    assert second.id in {t.id for t in store.list(status=PENDING)}
    assert child.id in {t.id for t in store.list(status=TaskStatus.BLOCKED)}


def test_dead_letter_blocks_every_transitive_dependent(store: TaskStore) -> None:
    """Dependents of a dead-lettered task, transitively, become blocked naming it."""
    new(store, id="root", max_retries=0)
    new(store, id="child", dependencies=["root"])
    new(store, id="grandchild", dependencies=["child"])
    new(store, id="other", dependencies=["root"])
    new(store, id="unrelated")
    store.claim("root", "a1", 30)
    store.complete("root", fail())
    for task_id in ("child", "grandchild", "other"):
        task = store.get(task_id)
        assert (task.status, task.blockers) == (BLOCKED, ["root"])
    assert store.get("unrelated").status == PENDING
    with pytest.raises(ConflictError, match="blocked by failed task"):
        store.claim("grandchild", "a1", 30)
    late = new(store, id="late", dependencies=["grandchild"])
    assert (late.status, late.blockers) == (BLOCKED, ["root"])


def test_lease_expiry_requeues_and_counts_a_retry(store: TaskStore, backend: Backend) -> None:
    """An expired lease puts the task back to pending with a retry counted; live ones stay."""
    task = new(store)
    kept = new(store)
    store.claim(task.id, "agent-1", 30)
    store.claim(kept.id, "agent-2", 30)
    backend.clock.advance(20)
    store.renew(kept.id, "agent-2", 30)
    assert store.requeue_expired() == []
    backend.clock.advance(10)
    requeued = store.requeue_expired()
    assert [t.id for t in requeued] == [task.id]
    assert requeued[0] == store.get(task.id)
    assert requeued[0].status == PENDING
    assert requeued[0].retry_count == 1
    assert requeued[0].last_attempt == at(backend.clock())
    assert requeued[0].claimed_by == ""
    assert store.requeue_expired() == []
    assert store.get(kept.id).status == IN_PROGRESS


def test_lease_expiry_dead_letters_past_max_retries(store: TaskStore, backend: Backend) -> None:
    """A lease expiry past max_retries dead-letters the task and blocks its dependents."""
    new(store, id="root", max_retries=0)
    new(store, id="child", dependencies=["root"])
    store.claim("root", "agent-1", 10)
    backend.clock.advance(10)
    (dead,) = store.requeue_expired()
    assert dead.status == FAILED
    assert "lease" in dead.fail_reason
    assert store.get("child").blockers == ["root"]


def test_update_fields_and_allowed_status_changes(store: TaskStore, backend: Backend) -> None:
    """update sets progress/notes/retry fields; status changes follow the rules."""
    task = new(store)
    backend.clock.advance(1)
    later = backend.clock() + 60
    got = store.update(
        task.id, TaskUpdate(progress=40, notes="half", retry_count=2, next_attempt_at=at(later))
    )
    assert (got.progress, got.notes, got.retry_count) == (40, "half", 2)
    assert got.next_attempt_at == at(later)
    assert got.updated_at == at(backend.clock())
    assert store.update(task.id, TaskUpdate(status=BLOCKED)).status == BLOCKED
    assert store.update(task.id, TaskUpdate(status=PENDING)).status == PENDING
    for status in (IN_PROGRESS, COMPLETED):
        with pytest.raises(ConflictError):
            store.update(task.id, TaskUpdate(status=status))
    assert store.get(task.id).status == PENDING


def test_the_last_time_utc_holds_is_kept_and_one_past_it_is_refused(store: TaskStore) -> None:
    """9999-12-31T23:59:59Z is stored and read back; a time past it in UTC (an offset
    west of it) is refused by the update itself, so no store keeps a time it cannot
    read back (SQLite kept it, then failed every read of the task and of its lists)."""
    task = new(store)
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert store.update(task.id, TaskUpdate(last_attempt=last)).last_attempt == last
    with pytest.raises(ValidationError, match="years 1 to 9999"):
        TaskUpdate.model_validate({"last_attempt": "9999-12-31T23:59:59-05:00"})
    assert store.get(task.id).last_attempt == last
    assert [t.id for t in store.list()] == [task.id]


def test_update_to_failed_dead_letters(store: TaskStore, backend: Backend) -> None:
    """update(status=failed) is the dispatcher's dead letter: claim cleared, dependents blocked."""
    new(store, id="root")
    new(store, id="child", dependencies=["root"])
    store.claim("root", "a1", 10)
    store.update("root", TaskUpdate(next_attempt_at=datetime.now(UTC)))
    dead = store.update("root", TaskUpdate(status=FAILED, fail_reason="max retries exceeded"))
    assert (dead.status, dead.fail_reason, dead.claimed_by) == (FAILED, "max retries exceeded", "")
    assert dead.next_attempt_at is None and store.get("root").next_attempt_at is None
    assert store.get("child").status == BLOCKED
    with pytest.raises(ConflictError, match="final"):
        store.update("root", TaskUpdate(status=PENDING))
    with pytest.raises(ConflictError, match="stays blocked"):
        store.update("child", TaskUpdate(status=PENDING))
    backend.clock.advance(60)
    assert store.requeue_expired() == []


def test_a_final_task_changes_only_its_notes(store: TaskStore) -> None:
    """Of a completed or failed task, an update may change the notes and nothing else."""
    done = new(store, id="done")
    store.claim(done.id, "a1", 10)
    store.complete(done.id, TaskResult(success=True), agent_id="a1")
    new(store, id="dead")
    store.update("dead", TaskUpdate(status=FAILED, fail_reason="gave up"))
    for task_id in ("done", "dead"):
        before = store.get(task_id)
        for update in (
            TaskUpdate(retry_count=50),
            TaskUpdate(progress=10, notes="x"),
            TaskUpdate(fail_reason="other"),
            TaskUpdate(status=before.status, next_attempt_at=datetime.now(UTC)),
        ):
            with pytest.raises(ConflictError, match="final: only its notes may change"):
                store.update(task_id, update)
        assert store.get(task_id) == before
        assert store.update(task_id, TaskUpdate(notes="post-mortem")).notes == "post-mortem"


def test_counts_past_2_50_are_refused_before_anything_is_stored(store: TaskStore) -> None:
    """max_retries, retry_count and estimated_tokens above 2**50 are a ConfigError."""
    counts: list[dict[str, Any]] = [
        {"max_retries": 2**60},
        {"retry_count": 2**51},
        {"estimated_tokens": 10**30},
    ]
    for fields in counts:
        with pytest.raises(ConfigError, match=r"must be at most 2\*\*50"):
            new(store, **fields)
    assert store.list() == []
    task = new(store, max_retries=2**50, estimated_tokens=2**50)
    with pytest.raises(ConfigError, match=r"retry_count must be at most 2\*\*50"):
        store.update(task.id, TaskUpdate(retry_count=2**51))
    assert store.get(task.id).retry_count == 0


# --- logs ------------------------------------------------------------------------------


def test_logs_append_and_read_with_offsets(store: TaskStore) -> None:
    """Log lines append in order; reads page through them by offset."""
    task = new(store)
    assert store.logs(task.id).lines == []
    assert store.append_logs(task.id, ["one", "two"]) == 2
    assert store.append_logs(task.id, ["three"]) == 3
    assert store.append_logs(task.id, []) == 3
    page = store.logs(task.id, offset=1, limit=1)
    assert (page.lines, page.offset, page.next_offset) == (["two"], 1, 2)
    page = store.logs(task.id, offset=page.next_offset)
    assert (page.lines, page.next_offset) == (["three"], 3)
    assert store.logs(task.id, offset=9).lines == []
    with pytest.raises(ConfigError):
        store.append_logs(task.id, "not a list")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        store.logs(task.id, offset=-1)


def test_open_task_store_memory() -> None:
    """open_task_store("memory://") gives a working store; unknown options are refused."""
    with open_task_store("memory://") as opened:
        assert isinstance(opened, TaskStore)
        assert opened.create(Task(title="x")).status == PENDING
    with pytest.raises(ConfigError, match="bogus"):
        open_task_store("memory://?bogus=1")


# --- every backend agrees with memory on random operation sequences ---------------------


def _random_step(rng: random.Random, step: int, ids: list[str], now: float) -> Any:
    """One random operation, as a function of a store (the same for every store)."""
    task_id = rng.choice(ids) if ids else "none"
    agent = rng.choice(["a1", "a2"])
    # claims record one of two job ids; renew/release/complete are fenced by one, or not
    job, fence = rng.choice(["j1", "j2"]), rng.choice([None, "j1", "j2"])
    op = rng.choice(["create"] * 3 + ["claim"] * 4 + ["renew", "release", "update"]
                    + ["complete"] * 2 + ["requeue", "list", "logs", "retry"])  # fmt: skip
    if op == "create":
        deps = rng.sample(ids, k=min(len(ids), rng.randint(0, 2)))
        ids.append(f"t{step}")
        task = Task(
            id=f"t{step}",
            title="x",
            dependencies=deps,
            max_retries=rng.randint(0, 2),
            priority=rng.choice(list(Priority)),
            labels=rng.sample(["a", "b"], rng.randint(0, 2)),
        )
        return lambda s: s.create(task)
    if op == "claim":
        lease = rng.choice([5, 10, 30])
        return lambda s: s.claim(task_id, agent, lease, job)
    if op == "renew":
        return lambda s: s.renew(task_id, agent, 10, fence)
    if op == "release":
        holder = rng.choice([None, agent])
        return lambda s: s.release(task_id, holder, fence)
    if op == "update":
        status = rng.choice([None, *TaskStatus])
        update = TaskUpdate(status=status, progress=rng.choice([None, 50]), fail_reason="r")
        # made onto the task as read, or not (a run and a retry count it has or not)
        seen = rng.choice([None, None, RunSeen(0, 0), RunSeen(0, 1), RunSeen(1, 0)])
        return lambda s: s.update(task_id, update, seen)
    if op == "complete":
        result = TaskResult(success=rng.random() < 0.4, error_message=rng.choice(["", "e"]))
        holder, retry_at = rng.choice([None, agent]), rng.choice([None, now + 7])
        return lambda s: s.complete(task_id, result, holder, retry_at, fence)
    if op == "list":
        filters: list[dict[str, Any]] = [
            {},
            {"ready": True},
            {"ready": False},
            {"labels": ["a"]},
            {"status": PENDING, "limit": 3},
            {"priority": Priority.HIGH},
        ]
        chosen = rng.choice(filters)
        return lambda s: s.list(**chosen)
    if op == "logs":
        return lambda s: (s.append_logs(task_id, ["line"]), s.logs(task_id, offset=1))
    if op == "retry":
        return lambda s: s.retry(task_id)
    return lambda s: s.requeue_expired()


def _outcome(call: Any, store: TaskStore) -> tuple[str, str]:
    try:
        return "ok", repr(call(store))
    except (ConfigError, ConflictError, NotFoundError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("seed", range(15))
def test_backend_agrees_with_memory(store: TaskStore, backend: Backend, seed: int) -> None:
    """Random claim/complete/update/requeue/retry sequences (fenced by job ids, or
    updates by the run read, or not) give memory's answers, errors included."""
    from agentic.stores.memory.tasks import MemoryTaskStore

    reference = MemoryTaskStore(clock=backend.clock)
    rng = random.Random(seed)
    ids: list[str] = []
    for step in range(120):
        if rng.random() < 0.15:
            backend.clock.advance(rng.choice([1, 5, 20]))
            continue
        call = _random_step(rng, step, ids, backend.clock())
        assert _outcome(call, store) == _outcome(call, reference), f"step {step}"
    assert store.list() == reference.list()
