"""AllowanceService on every backend: go-agentic's record_usage cases, events, fail modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from agentic.allowance import AllowanceService
from agentic.errors import (
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
    StoreUnavailableError,
)
from agentic.events import Event, EventEmitter, EventType
from agentic.models import (
    AgentAllowance,
    AllowanceStatus,
    ModelQuota,
    QuotaEvent,
    Reservation,
    Settlement,
    UsageRecord,
    UsageReport,
)
from agentic.quota import DAY, never_fits
from agentic.stores.memory import MemoryAllowanceStore
from agentic.testing import FakeClock
from tests.conftest import Backend


class Recorder(EventEmitter):
    """Keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def types(self) -> list[EventType]:
        return [e.type for e in self.events]


def service(backend: Backend, **limits: object) -> tuple[AllowanceService, Recorder]:
    store = backend.allowance()
    store.set_allowance(AgentAllowance.model_validate({"agent_id": "a1", **limits}))
    recorder = Recorder()
    return AllowanceService(store, emitter=recorder), recorder


def report(
    event: QuotaEvent, job: str = "j1", tokens_in: int = 0, tokens_out: int = 0
) -> UsageReport:
    return UsageReport(
        agent_id="a1",
        job_id=job,
        model="m1",
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        event=event,
    )


def test_record_usage_started_then_completed(backend: Backend) -> None:
    """job_started counts a job and a slot; job_completed charges all tokens and frees it."""
    svc, _ = service(backend)
    assert isinstance(svc.record_usage(report(QuotaEvent.JOB_STARTED)), Reservation)
    usage = svc.store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs) == (1, 1)
    done = svc.record_usage(report(QuotaEvent.JOB_COMPLETED, tokens_in=600, tokens_out=400))
    assert isinstance(done, Settlement)
    usage = svc.store.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (1000, 0)
    assert svc.store.get_model_usage("m1").tokens_used == 1000


def test_record_usage_failed_returns_half_of_odd_count(backend: Backend) -> None:
    """job_failed with 7 tokens charges 4 (integer 50% return), agent and model alike."""
    svc, _ = service(backend)
    svc.record_usage(report(QuotaEvent.JOB_STARTED))
    svc.record_usage(report(QuotaEvent.JOB_FAILED, tokens_in=4, tokens_out=3))
    assert svc.store.get_usage("a1").tokens_used == 4
    assert svc.store.get_model_usage("m1").tokens_used == 4


def test_record_usage_failed_charges_all_with_full_failure_charge(backend: Backend) -> None:
    """job_failed of an agent whose failure_charge is full charges all 7 tokens, and its
    usage_recorded event says so."""
    svc, recorder = service(backend, failure_charge="full")
    svc.record_usage(report(QuotaEvent.JOB_STARTED))
    svc.record_usage(report(QuotaEvent.JOB_FAILED, tokens_in=4, tokens_out=3))
    assert svc.store.get_usage("a1").tokens_used == 7
    assert svc.store.get_model_usage("m1").tokens_used == 7
    usage = next(e for e in recorder.events if e.type is EventType.USAGE_RECORDED)
    assert usage.payload["tokens_charged"] == 7


def test_a_bad_failure_charge_names_the_field_and_the_choices() -> None:
    """An allowance with an unknown failure_charge is refused, naming the field and
    the accepted values."""
    with pytest.raises(ValidationError) as caught:
        AgentAllowance.model_validate({"agent_id": "a1", "failure_charge": "all"})
    assert "failure_charge" in str(caught.value)
    assert "'half' or 'full'" in str(caught.value)


def test_record_usage_cancelled_charges_nothing(backend: Backend) -> None:
    """job_cancelled frees the slot and never eats other jobs' usage."""
    svc, _ = service(backend)
    svc.store.increment_usage("a1", 500, 0)
    svc.record_usage(report(QuotaEvent.JOB_STARTED))
    svc.record_usage(report(QuotaEvent.JOB_CANCELLED, tokens_in=300))
    usage = svc.store.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (500, 0)


def test_record_usage_zero_tokens(backend: Backend) -> None:
    """A completed job with zero tokens charges nothing and still frees the slot."""
    svc, _ = service(backend)
    svc.record_usage(report(QuotaEvent.JOB_STARTED))
    svc.record_usage(report(QuotaEvent.JOB_COMPLETED))
    usage = svc.store.get_usage("a1")
    assert (usage.tokens_used, usage.active_jobs) == (0, 0)


def test_duplicate_report_is_counted_once(backend: Backend) -> None:
    """The same completion reported twice charges once and records one usage event."""
    svc, rec = service(backend)
    svc.record_usage(report(QuotaEvent.JOB_STARTED))
    svc.record_usage(report(QuotaEvent.JOB_COMPLETED, tokens_in=10))
    svc.record_usage(report(QuotaEvent.JOB_COMPLETED, tokens_in=10))
    assert svc.store.get_usage("a1").tokens_used == 10
    assert rec.types().count(EventType.USAGE_RECORDED) == 1


def test_a_settle_repeated_with_the_same_end_is_no_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A job settled again with the end it was settled with (a restarted runner's
    replay) is said at info; one with other tokens is a warning (not charged)."""
    svc, _rec = service(backend)
    for job, repeat in (("j1", 7), ("j2", 9)):
        svc.reserve("a1", "m1", 0, job)
        svc.settle(job, 7, 0, QuotaEvent.JOB_FAILED)
        with caplog.at_level("INFO", logger="agentic.allowance"):
            svc.settle(job, repeat, 0, QuotaEvent.JOB_FAILED)
    [same, other] = [r for r in caplog.records if "settled already" in r.getMessage()]
    assert (same.levelname, other.levelname) == ("INFO", "WARNING")
    assert "with the same end" in same.getMessage()
    assert "9 tokens reported again are not charged" in other.getMessage()


def test_unknown_event_is_rejected_before_any_change() -> None:
    """A report with an unknown event cannot be built, so nothing is recorded."""
    with pytest.raises(ValueError, match="event"):
        UsageReport.model_validate({"agent_id": "a1", "job_id": "j", "event": "job_exploded"})


def test_check_emits_nothing(backend: Backend) -> None:
    """check() at 90% and at 100% emits no event (go-agentic's defect 12)."""
    svc, rec = service(backend, daily_token_limit=100)
    svc.store.increment_usage("a1", 90, 0)
    assert svc.check("a1").status == AllowanceStatus.WARNING
    svc.store.increment_usage("a1", 10, 0)
    assert not svc.check("a1").allowed
    assert rec.events == []


def test_warning_and_exceeded_once_per_crossing(backend: Backend) -> None:
    """quota_warning fires once when 80% is crossed, quota_exceeded once at 100%."""
    svc, rec = service(backend, daily_token_limit=100)
    for job, tokens in [("j1", 50), ("j2", 35), ("j3", 5), ("j4", 10)]:
        svc.reserve("a1", "", tokens, job)  # used: 50, 85 (crossing 80%), 90, 100
        svc.settle(job, tokens, 0, QuotaEvent.JOB_COMPLETED)
    with pytest.raises(QuotaExceededError):
        svc.reserve("a1", "", 1, "j5")
    types = rec.types()
    assert types.count(EventType.QUOTA_WARNING) == 1
    assert types.count(EventType.QUOTA_EXCEEDED) == 1


def test_new_day_allows_a_new_crossing(backend: Backend) -> None:
    """After the day rolls over, crossing 80% again emits a new warning."""
    svc, rec = service(backend, daily_token_limit=10)
    svc.reserve("a1", "", 9, "j1")
    svc.settle("j1", 9, 0, QuotaEvent.JOB_COMPLETED)
    backend.clock.advance(DAY)
    svc.reserve("a1", "", 9, "j2")
    svc.settle("j2", 9, 0, QuotaEvent.JOB_COMPLETED)
    assert rec.types().count(EventType.QUOTA_WARNING) == 2


def test_unreserve_gives_back_without_events(backend: Backend) -> None:
    """unreserve returns the job to the quota and emits no usage or quota event."""
    svc, events = service(backend, daily_job_limit=1)
    svc.reserve("a1", "", 0, "j1")
    seen = len(events.events)
    assert not svc.check("a1").allowed
    done = svc.unreserve("j1")
    assert done is not None and done.tokens_charged == 0
    assert svc.check("a1").allowed
    assert len(events.events) == seen


def test_active_jobs_counts_live_reservations(backend: Backend) -> None:
    """active_jobs maps each agent to its reservations not yet settled or expired."""
    svc, _events = service(backend)
    svc.reserve("a1", "", 0, "j1")
    svc.reserve("a1", "", 0, "j2")
    svc.settle("j1", 0, 0, QuotaEvent.JOB_COMPLETED)
    assert svc.active_jobs() == {"a1": 1}


def test_reset_agent(backend: Backend) -> None:
    """reset_agent zeroes the agent's usage for the period."""
    svc, _ = service(backend, daily_token_limit=10)
    svc.store.increment_usage("a1", 10, 1)
    svc.reset_agent("a1")
    assert svc.check("a1").allowed


class BrokenStore(MemoryAllowanceStore):
    """A store whose every quota operation fails like an unreachable backend."""

    def check(self, agent_id: str, model: str = "", tokens: int = 0) -> object:  # type: ignore[override]
        raise StoreError("connection refused")

    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        raise StoreError("connection refused")

    def settle(self, *args: object, **kwargs: object) -> Settlement:
        raise StoreError("connection refused")

    def unreserve(self, job_id: str) -> Settlement:
        raise StoreError("connection refused")

    def withdraw(self, job_id: str) -> Settlement:
        raise StoreError("connection refused")

    def extend(self, job_id: str) -> Reservation:
        raise StoreError("connection refused")

    def usages(self) -> list[UsageRecord]:
        raise StoreError("connection refused")


def test_unreachable_store_fails_closed() -> None:
    """By default a store failure refuses work with a clear error."""
    svc = AllowanceService(BrokenStore())
    with pytest.raises(StoreUnavailableError, match="fails closed"):
        svc.reserve("a1", "", 1, "j1")
    with pytest.raises(StoreUnavailableError):
        svc.check("a1")
    with pytest.raises(StoreUnavailableError):
        svc.unreserve("j1")
    with pytest.raises(StoreUnavailableError):
        svc.active_jobs()
    with pytest.raises(StoreUnavailableError):
        svc.extend("j1")
    with pytest.raises(StoreUnavailableError):
        svc.withdraw("j1")
    assert svc.store_failures == 6


def test_a_store_failure_outside_admission_gives_no_fail_open_advice() -> None:
    """A failed settle, extend, unreserve or withdraw says what failed, without the
    admission's "refusing work ... set dispatcher.fail_open" (it refuses no work; a
    runner's settle is retried either way), which an operator's trial read during a
    locked SQLite file on every agent's retried settle."""
    svc = AllowanceService(BrokenStore())
    failing: dict[str, Callable[[], object]] = {
        "settle": lambda: svc.settle("j1", 1, 1, QuotaEvent.JOB_COMPLETED),
        "extend": lambda: svc.extend("j1"),
        "unreserve": lambda: svc.unreserve("j1"),
        "withdraw": lambda: svc.withdraw("j1"),
    }
    for operation, call in failing.items():
        with pytest.raises(StoreUnavailableError) as raised:
            call()
        said = str(raised.value)
        assert said == f"quota store failed during {operation}: connection refused"
    with pytest.raises(StoreUnavailableError, match=r"refusing work.*fail_open"):
        svc.reserve("a1", "", 1, "j2")


def test_unreachable_store_can_fail_open() -> None:
    """With fail_open the service admits work and counts the failures."""
    svc = AllowanceService(BrokenStore(), fail_open=True)
    assert svc.check("a1").allowed
    assert svc.reserve("a1", "", 1, "j1").job_id == "j1"
    assert svc.settle("j1", 1, 1, QuotaEvent.JOB_COMPLETED) is None
    assert svc.unreserve("j1") is None
    assert svc.active_jobs() == {}
    assert svc.extend("j1") is None
    assert svc.withdraw("j1") is None
    assert svc.store_failures == 7


def test_extend_keeps_a_reservation_and_emits_nothing() -> None:
    """extend pushes a live reservation's expiry (no event); a gone one is NotFoundError."""
    clock = FakeClock()
    store = MemoryAllowanceStore(clock=clock, reservation_ttl=60)
    store.set_allowance(AgentAllowance(agent_id="a1", daily_token_limit=10))
    emitter = Recorder()
    svc = AllowanceService(store, emitter=emitter)
    svc.reserve("a1", "", 9, "j1")  # crosses 80%: a warning
    sent = len(emitter.events)
    clock.advance(50)
    extended = svc.extend("j1")
    assert extended is not None and extended.expires_at is not None
    assert extended.expires_at.timestamp() == clock() + 60
    assert len(emitter.events) == sent
    with pytest.raises(NotFoundError):
        svc.extend("never")


def test_withdraw_takes_a_reservation_back_and_emits_nothing() -> None:
    """withdraw undoes a held reservation, refuses its job id after, and emits no event."""
    store = MemoryAllowanceStore()
    store.set_allowance(AgentAllowance(agent_id="a1", daily_token_limit=10))
    emitter = Recorder()
    svc = AllowanceService(store, emitter=emitter)
    svc.reserve("a1", "", 9, "j1")  # crosses 80%: a warning
    sent = len(emitter.events)
    done = svc.withdraw("j1")
    assert done is not None and done.outcome is QuotaEvent.JOB_WITHDRAWN
    assert store.get_usage("a1").active_jobs == 0
    assert len(emitter.events) == sent
    with pytest.raises(ConflictError):
        svc.reserve("a1", "", 9, "j1")


class ExplodingEmitter(EventEmitter):
    """An emitter that always raises."""

    def emit(self, event: Event) -> None:
        raise RuntimeError("sink down")

    def close(self) -> None:
        pass


def test_failing_emitter_does_not_fail_the_reservation() -> None:
    """A reservation that succeeded stays successful when the emitter raises."""
    store = MemoryAllowanceStore()
    store.set_allowance(AgentAllowance(agent_id="a1", daily_job_limit=1))
    svc = AllowanceService(store, emitter=ExplodingEmitter())
    svc.reserve("a1", "", 9, "j1")  # the day's last job: quota_warning, quota_exceeded
    assert svc.emit_failures == 2
    assert store.get_usage("a1").active_jobs == 1


@pytest.mark.parametrize(
    ("allowance", "quota", "model", "tokens", "why"),
    [
        (AgentAllowance(agent_id="a", daily_token_limit=500), None, "", 1_000, "exceed its daily"),
        (AgentAllowance(agent_id="a", daily_token_limit=500), None, "", 500, None),
        (AgentAllowance(agent_id="a", model_allowlist=["m1"]), None, "m2", 1, "allowlist"),
        (
            AgentAllowance(agent_id="a"),
            ModelQuota(model="m", daily_token_budget=9),
            "m",
            10,
            "budget",
        ),
        (
            AgentAllowance(agent_id="a"),
            ModelQuota(model="m", cost_ceiling=1, input_price=1_000_000),
            "m",
            2,
            "cost ceiling",
        ),
        (AgentAllowance(agent_id="a"), ModelQuota(model="m", cost_ceiling=1), "m", 10**6, None),
    ],
    ids=["tokens", "tokens-fit", "allowlist", "budget", "cost", "free"],
)
def test_never_fits_tells_size_and_model_from_todays_use(
    allowance: AgentAllowance, quota: ModelQuota | None, model: str, tokens: int, why: str | None
) -> None:
    """never_fits names what refuses a job on any day (its size, its model), and
    nothing for a job an empty day would admit."""
    told = never_fits(allowance, quota, model, tokens)
    assert (told is None) if why is None else (told is not None and why in told)


def test_estimates_near_the_limit_raise_no_repeated_or_false_alarms(backend: Backend) -> None:
    """Reservations larger than what jobs use raise no quota event: quota_warning comes
    once, when the tokens used reach 80%, and quota_exceeded once, when they are used
    up, however often estimates cross the thresholds and fall back."""
    svc, rec = service(backend, daily_token_limit=1000)
    svc.reserve("a1", "", 700, "j0")
    svc.settle("j0", 700, 0, QuotaEvent.JOB_COMPLETED)
    for n in range(1, 4):  # each reserves 200 and uses 50: 750, 800, 850 used
        svc.reserve("a1", "", 200, f"j{n}")
        svc.settle(f"j{n}", 50, 0, QuotaEvent.JOB_COMPLETED)
    assert rec.types().count(EventType.QUOTA_WARNING) == 1
    assert EventType.QUOTA_EXCEEDED not in rec.types()  # 85% used is not exceeded
    svc.reserve("a1", "", 150, "j4")
    svc.settle("j4", 150, 0, QuotaEvent.JOB_COMPLETED)  # 1000: used up
    assert rec.types().count(EventType.QUOTA_EXCEEDED) == 1
    assert rec.types().count(EventType.QUOTA_WARNING) == 1


def test_a_raised_limit_warns_again_at_its_own_threshold(backend: Backend) -> None:
    """After the token limit is raised, reaching 80% of the new limit is a new crossing;
    a new day starts from ok."""
    svc, rec = service(backend, daily_token_limit=100)
    svc.reserve("a1", "", 90, "j1")
    svc.settle("j1", 90, 0, QuotaEvent.JOB_COMPLETED)
    assert rec.types().count(EventType.QUOTA_WARNING) == 1
    svc.store.set_allowance(AgentAllowance(agent_id="a1", daily_token_limit=1000))
    svc.reserve("a1", "", 710, "j2")
    svc.settle("j2", 710, 0, QuotaEvent.JOB_COMPLETED)  # 800 of 1000
    assert rec.types().count(EventType.QUOTA_WARNING) == 2
    backend.clock.advance(DAY)
    svc.reserve("a1", "", 800, "j3")
    assert rec.types().count(EventType.QUOTA_WARNING) == 2  # reserved, not used
    svc.settle("j3", 800, 0, QuotaEvent.JOB_COMPLETED)
    assert rec.types().count(EventType.QUOTA_WARNING) == 3
