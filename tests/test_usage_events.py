"""The quota store's outbox, on every backend: a settle records its usage_recorded
event, and a reserve or settle the thresholds it crossed, in the event log in the
same atomic step as the change, under the ids the service emits them with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentic.allowance import AllowanceService
from agentic.errors import ConfigError, QuotaExceededError
from agentic.eventlog import EventLogEmitter
from agentic.events import EventType, crossing_id, usage_id
from agentic.models import AgentAllowance, AllowanceStatus, ModelQuota, QuotaEvent
from agentic.quota import crossing_events
from agentic.stores.base import AllowanceStore, EventLog
from tests.conftest import Backend


@pytest.fixture
def pair(backend: Backend) -> tuple[AllowanceStore, EventLog]:
    """An allowance store that records usage, and the event log of the same storage."""
    log = backend.event_log()
    if backend.name == "memory":
        store = backend.allowance(events=log)
    else:
        store = backend.allowance(record_events=True)
    store.set_allowance(AgentAllowance(agent_id="a1"))
    store.set_model_quota(ModelQuota(model="m", input_price=3.0, output_price=15.0))
    return store, log


def test_a_settle_records_its_usage(
    pair: tuple[AllowanceStore, EventLog], backend: Backend
) -> None:
    """settle -> usage_recorded with what was used and charged, stamped with the
    settle's time, naming the task, under usage_id(job), source agentic.quota."""
    store, log = pair
    backend.clock.set(datetime(2026, 3, 4, 5, 6, 7, 250_000, tzinfo=UTC))
    store.reserve("a1", "m", 500, "j1")
    store.settle("j1", 300, 100, QuotaEvent.JOB_FAILED, task_id="task-7")
    [logged] = log.read()
    event = logged.event
    assert event.task_id == "task-7"
    assert (event.id, event.type, event.source) == (
        usage_id("j1"),
        EventType.USAGE_RECORDED,
        "agentic.quota",
    )
    assert event.agent_id == "a1"
    assert event.time == datetime(2026, 3, 4, 5, 6, 7, 250_000, tzinfo=UTC)
    assert event.payload == {
        "job_id": "j1",
        "model": "m",
        "outcome": "job_failed",
        "tokens_in": 300,
        "tokens_out": 100,
        "tokens_charged": 200,
        "cost_charged": 1200,  # half of 300 x 3 + 100 x 15, as half the tokens
    }


def test_only_a_first_settle_records(pair: tuple[AllowanceStore, EventLog]) -> None:
    """A repeated settle, an unreserve and an expiry record nothing."""
    store, log = pair
    for job in ("j1", "j2", "j3"):
        store.reserve("a1", "", 10, job)
    store.settle("j1", 5, 5, QuotaEvent.JOB_COMPLETED)
    store.settle("j1", 5, 5, QuotaEvent.JOB_COMPLETED)
    store.unreserve("j2")
    store.expire("j3")
    assert [e.event.id for e in log.read()] == [usage_id("j1")]


def test_a_settle_without_a_task_names_none(pair: tuple[AllowanceStore, EventLog]) -> None:
    """go-agentic's usage reports carry no task: the event's task_id is empty; a bad
    task id is refused before anything is charged."""
    store, log = pair
    store.reserve("a1", "", 10, "j1")
    with pytest.raises(ConfigError):
        store.settle("j1", 1, 1, QuotaEvent.JOB_COMPLETED, task_id=42)  # type: ignore[arg-type]
    assert store.get_usage("a1").active_jobs == 1
    store.settle("j1", 1, 1, QuotaEvent.JOB_COMPLETED)
    assert [e.event.task_id for e in log.read()] == [""]


@pytest.mark.parametrize("record", [False, True], ids=["plain", "recording"])
def test_a_none_task_id_is_refused_before_charging(backend: Backend, record: bool) -> None:
    """task_id=None is a ConfigError, and nothing is charged, recording or not."""
    if backend.name == "memory":
        store = backend.allowance(events=backend.event_log() if record else None)
    else:
        store = backend.allowance(record_events=record)
    store.set_allowance(AgentAllowance(agent_id="a1"))
    store.reserve("a1", "", 10, "j1")
    with pytest.raises(ConfigError, match="task id"):
        store.settle("j1", 5, 5, QuotaEvent.JOB_COMPLETED, task_id=None)  # type: ignore[arg-type]
    usage = store.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (0, 1)


def test_a_memory_store_records_only_into_a_memory_log(tmp_path: Path) -> None:
    """A memory store given another kind of log is refused: with no transaction to roll
    back, an append failing after the change would lose the event."""
    from agentic.stores.memory import MemoryAllowanceStore
    from agentic.stores.memory.tasks import MemoryTaskStore
    from agentic.stores.sqlite import SQLiteEventLog

    with SQLiteEventLog(tmp_path / "log.db") as log:
        with pytest.raises(ConfigError, match="into a MemoryEventLog, got SQLiteEventLog"):
            MemoryAllowanceStore(events=log)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="into a MemoryEventLog, got SQLiteEventLog"):
            MemoryTaskStore(events=log)  # type: ignore[arg-type]


def test_a_cost_past_2_63_is_recorded_as_charged(
    pair: tuple[AllowanceStore, EventLog], backend: Backend
) -> None:
    """The event's cost_charged equals the settlement's past 2**63 (Lua's %d wraps);
    SQLite, whose integers stop there, refuses it (ConfigError) and charges nothing."""
    store, log = pair
    store.set_model_quota(ModelQuota(model="huge", input_price=60_000.0, output_price=60_000.0))
    store.reserve("a1", "huge", 0, "j1")
    if backend.name == "sqlite":
        with pytest.raises(ConfigError, match=r"past SQLite's integers .*redis://"):
            store.settle("j1", 2**47, 2**47, QuotaEvent.JOB_COMPLETED)
        usage = store.get_usage("a1")
        assert (usage.tokens_used, usage.active_jobs, log.read()) == (0, 1, [])
        return
    settlement = store.settle("j1", 2**47, 2**47, QuotaEvent.JOB_COMPLETED)
    assert settlement.cost_charged > 2**63
    assert log.read()[0].event.payload["cost_charged"] == settlement.cost_charged


def test_a_store_written_before_task_ids_still_settles_usage_reports() -> None:
    """The service passes task_id only when it has one: a custom store with the older
    settle() signature still settles go-agentic's usage reports."""
    from agentic.models import Settlement
    from agentic.stores.memory import MemoryAllowanceStore

    class Older(MemoryAllowanceStore):
        def settle(  # type: ignore[override]
            self,
            job_id: str,
            tokens_in: int,
            tokens_out: int,
            outcome: QuotaEvent,
            agent_id: str | None = None,
            model: str | None = None,
        ) -> Settlement:
            return super().settle(job_id, tokens_in, tokens_out, outcome, agent_id, model)

    store = Older()
    store.set_allowance(AgentAllowance(agent_id="a1"))
    service = AllowanceService(store)
    service.reserve("a1", "", 10, "j1")
    done = service.settle("j1", 3, 4, QuotaEvent.JOB_COMPLETED)
    assert done is not None and done.tokens_charged == 7


def test_large_amounts_are_recorded_exactly(pair: tuple[AllowanceStore, EventLog]) -> None:
    """Token counts up to 2**50 are recorded as exact integers (Lua prints them whole)."""
    store, log = pair
    store.reserve("a1", "", 0, "big")
    store.settle("big", 2**50, 2**50 - 1, QuotaEvent.JOB_COMPLETED)
    payload = log.read()[0].event.payload
    assert (payload["tokens_in"], payload["tokens_out"]) == (2**50, 2**50 - 1)
    assert payload["tokens_charged"] == 2**51 - 1


def test_the_services_own_report_adds_nothing(pair: tuple[AllowanceStore, EventLog]) -> None:
    """The service emits usage_recorded under the same id: the log keeps the store's."""
    store, log = pair
    with EventLogEmitter(log) as emitter:
        service = AllowanceService(store, emitter)
        service.reserve("a1", "m", 10, "j1")
        service.settle("j1", 4, 6, QuotaEvent.JOB_COMPLETED, task_id="t1")
    events = [e.event for e in log.read() if e.event.type == EventType.USAGE_RECORDED]
    assert [(e.id, e.source, e.task_id) for e in events] == [
        (usage_id("j1"), "agentic.quota", "t1")
    ]


def _capped(store: AllowanceStore, **limits: int) -> None:
    store.set_allowance(AgentAllowance(agent_id="a1", **limits))


def test_a_reserve_records_the_crossing_it_makes(
    pair: tuple[AllowanceStore, EventLog], backend: Backend
) -> None:
    """A reserve starting the agent's last job of the day records quota_exceeded with
    it (tokens reserved cross nothing): the step's time, no task, the job and model,
    under crossing_id(job, "reserve", kind)."""
    store, log = pair
    _capped(store, daily_token_limit=1000, daily_job_limit=2)
    backend.clock.set(datetime(2026, 3, 4, 5, 6, 7, 500_000, tzinfo=UTC))
    store.increment_usage("a1", 800, 0)  # warning already
    store.reserve("a1", "m", 150, "j1")
    assert log.read() == []
    store.reserve("a1", "m", 1, "j2")
    [logged] = log.read()
    event = logged.event
    assert (event.id, event.type, event.source) == (
        crossing_id("j2", "reserve", EventType.QUOTA_EXCEEDED),
        EventType.QUOTA_EXCEEDED,
        "agentic.quota",
    )
    assert (event.agent_id, event.task_id) == ("a1", "")
    assert event.time == datetime(2026, 3, 4, 5, 6, 7, 500_000, tzinfo=UTC)
    assert event.payload == {"job_id": "j2", "model": "m"}


def test_a_reserve_naming_its_task_records_it(pair: tuple[AllowanceStore, EventLog]) -> None:
    """reserve(..., task_id=) names the task in the crossings it records (the
    dispatcher passes it, so events --task shows them); a bad one is refused first."""
    store, log = pair
    _capped(store, daily_job_limit=1)
    with pytest.raises(ConfigError, match="task id"):
        store.reserve("a1", "", 0, "j1", task_id=None)  # type: ignore[arg-type]
    assert store.get_usage("a1").active_jobs == 0
    store.reserve("a1", "", 0, "j1", task_id="t9")
    assert [e.event.task_id for e in log.read()] == ["t9", "t9"]


def test_a_jump_past_warning_records_both_in_order(
    pair: tuple[AllowanceStore, EventLog],
) -> None:
    """ok -> exceeded in one reserve records quota_warning, then quota_exceeded."""
    store, log = pair
    _capped(store, daily_job_limit=1)
    store.reserve("a1", "", 0, "j1")
    assert [(e.event.type, e.event.id) for e in log.read()] == [
        (EventType.QUOTA_WARNING, crossing_id("j1", "reserve", EventType.QUOTA_WARNING)),
        (EventType.QUOTA_EXCEEDED, crossing_id("j1", "reserve", EventType.QUOTA_EXCEEDED)),
    ]


def test_a_settle_records_the_crossing_after_its_usage(
    pair: tuple[AllowanceStore, EventLog],
) -> None:
    """A settle charging past 80% and 100% records usage_recorded, quota_warning and
    quota_exceeded, naming the task, under the settle's ids."""
    store, log = pair
    _capped(store, daily_token_limit=1000)
    store.reserve("a1", "m", 10, "j1")
    store.settle("j1", 600, 600, QuotaEvent.JOB_COMPLETED, task_id="t1")
    events = [e.event for e in log.read()]
    assert [(e.id, e.task_id) for e in events] == [
        (usage_id("j1"), "t1"),
        (crossing_id("j1", "settle", EventType.QUOTA_WARNING), "t1"),
        (crossing_id("j1", "settle", EventType.QUOTA_EXCEEDED), "t1"),
    ]
    assert events[2].payload == {"job_id": "j1", "model": "m"}


def test_a_settle_names_the_model_only_its_usage_named(
    pair: tuple[AllowanceStore, EventLog],
) -> None:
    """A job reserved with no model (its task named none) and settled naming one (the
    usage file's) records usage_recorded, quota_warning and quota_exceeded naming
    that model, the one charged."""
    store, log = pair
    _capped(store, daily_token_limit=1000)
    store.reserve("a1", "", 10, "j1")
    settled = store.settle(
        "j1", 600, 600, QuotaEvent.JOB_COMPLETED, agent_id="a1", model="m", task_id="t1"
    )
    assert (settled.model, settled.cost_charged) == ("m", 10_800)  # 600 x 3 + 600 x 15
    assert store.get_model_usage("m").tokens_used == 1200
    assert [(e.event.type, e.event.payload["model"]) for e in log.read()] == [
        (EventType.USAGE_RECORDED, "m"),
        (EventType.QUOTA_WARNING, "m"),
        (EventType.QUOTA_EXCEEDED, "m"),
    ]


def test_steps_crossing_nothing_record_no_crossing(
    pair: tuple[AllowanceStore, EventLog],
) -> None:
    """Reserved tokens, staying in a status, a denied reserve, a repeated reserve and
    a release record no crossing (a warning -> exceeded step records only
    quota_exceeded)."""
    store, log = pair
    _capped(store, daily_token_limit=1000)
    store.reserve("a1", "", 900, "j1")  # reserved, not used: ok -> ok
    store.reserve("a1", "", 900, "j1")  # a repeat: nothing
    store.settle("j1", 900, 0, QuotaEvent.JOB_COMPLETED)  # ok -> warning
    store.reserve("a1", "", 50, "j2")  # warning -> warning
    with pytest.raises(QuotaExceededError):
        store.reserve("a1", "", 500, "j3")
    store.unreserve("j2")
    store.reserve("a1", "", 100, "j4")
    store.settle("j4", 100, 0, QuotaEvent.JOB_COMPLETED)  # warning -> exceeded (1000)
    kinds = [e.event.id for e in log.read() if e.event.type != EventType.USAGE_RECORDED]
    assert kinds == [
        crossing_id("j1", "settle", EventType.QUOTA_WARNING),
        crossing_id("j4", "settle", EventType.QUOTA_EXCEEDED),
    ]


def test_the_services_own_crossings_add_nothing(
    pair: tuple[AllowanceStore, EventLog],
) -> None:
    """The service emits the crossings under the same ids: the log keeps the store's."""
    store, log = pair
    _capped(store, daily_token_limit=100)
    with EventLogEmitter(log) as emitter:
        service = AllowanceService(store, emitter)
        service.reserve("a1", "m", 90, "j1")
        service.settle("j1", 60, 60, QuotaEvent.JOB_COMPLETED, task_id="t1")
    assert [(e.event.type, e.event.source) for e in log.read()] == [
        (EventType.USAGE_RECORDED, "agentic.quota"),
        (EventType.QUOTA_WARNING, "agentic.quota"),
        (EventType.QUOTA_EXCEEDED, "agentic.quota"),
    ]


@pytest.mark.parametrize(
    ("before", "after", "kinds"),
    [
        ("ok", "ok", []),
        ("ok", "warning", ["quota_warning"]),
        ("ok", "exceeded", ["quota_warning", "quota_exceeded"]),
        ("warning", "exceeded", ["quota_exceeded"]),
        ("exceeded", "warning", []),
        ("warning", "ok", []),
    ],
)
def test_crossing_events_name_each_threshold_reached(
    before: str, after: str, kinds: list[str]
) -> None:
    """crossing_events gives one event per threshold the status reached going up."""
    events = crossing_events(
        "settle", "j1", "a1", "m", AllowanceStatus(before), AllowanceStatus(after), task_id="t"
    )
    assert [e.type.value for e in events] == kinds
    assert all(e.id == f"j1:settle:{e.type.value}" and e.task_id == "t" for e in events)
