"""The quota store's outbox, on every backend: a settle records its usage_recorded
event in the event log in the same atomic step as the charge, under the id the
service emits it with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentic.allowance import AllowanceService
from agentic.errors import ConfigError
from agentic.eventlog import EventLogEmitter
from agentic.events import EventType, usage_id
from agentic.models import AgentAllowance, ModelQuota, QuotaEvent
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


def test_a_cost_past_2_63_is_recorded_as_charged(pair: tuple[AllowanceStore, EventLog]) -> None:
    """The event's cost_charged equals the settlement's past 2**63 (Lua's %d wraps)."""
    store, log = pair
    store.set_model_quota(ModelQuota(model="huge", input_price=60_000.0, output_price=60_000.0))
    store.reserve("a1", "huge", 0, "j1")
    try:
        settlement = store.settle("j1", 2**47, 2**47, QuotaEvent.JOB_COMPLETED)
    except OverflowError:
        pytest.skip("SQLite stores integers below 2**63")
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
