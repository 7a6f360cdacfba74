"""AllowanceStore.withdraw on every backend: a reserve whose answer was lost, taken back
(a held one is undone as unreserve does: see test_allowance_store)."""

from __future__ import annotations

import pytest

from agentic.errors import ConflictError, NotFoundError
from agentic.models import AgentAllowance, AllowanceStatus, QuotaEvent
from agentic.quota import DAY
from tests.conftest import Backend

COMPLETED, WITHDRAWN = QuotaEvent.JOB_COMPLETED, QuotaEvent.JOB_WITHDRAWN


def allowance(**limits: object) -> AgentAllowance:
    return AgentAllowance.model_validate({"agent_id": "a1", **limits})


def test_a_reserve_arriving_after_its_withdraw_is_refused_and_holds_nothing(
    backend: Backend,
) -> None:
    """Withdrawn before its reserve landed: the reserve is ConflictError and changes nothing."""
    store = backend.allowance()
    store.set_allowance(allowance(concurrent_jobs=1))
    done = store.withdraw("j1")
    assert (done.agent_id, done.model, done.outcome, done.duplicate) == ("", "", WITHDRAWN, False)
    assert (done.previous_status, done.status) == (AllowanceStatus.OK, AllowanceStatus.OK)
    assert [u.agent_id for u in store.usages()] == ["a1"]  # the mark is no agent's row
    with pytest.raises(ConflictError, match="withdrawn"):
        store.reserve("a1", "m1", 300, "j1")
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_reserved) == (0, 0, 0)
    assert store.get_model_usage("m1").requests_last_hour == 0
    store.reserve("a1", "", 0, "j2")  # the slot is free


def test_a_repeated_withdraw_is_a_harmless_duplicate(backend: Backend) -> None:
    """Withdrawing again (held or not at first) returns the first answer and changes nothing."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "held")
    store.reserve("a1", "m1", 20, "other")
    first = {job: store.withdraw(job) for job in ("held", "never")}
    before = store.get_usage("a1")
    for job, answer in first.items():
        again = store.withdraw(job)
        assert again.duplicate
        assert again.model_copy(update={"duplicate": False}) == answer
    assert store.get_usage("a1") == before
    assert (before.jobs_started, before.active_jobs, before.tokens_reserved) == (1, 1, 20)
    assert store.get_model_usage("m1").requests_last_hour == 1


def test_ending_a_withdrawn_job_any_other_way_changes_nothing(backend: Backend) -> None:
    """settle (even naming its agent), unreserve and expire of a withdrawn job are duplicates."""
    store = backend.allowance()
    store.set_allowance(allowance())
    store.reserve("a1", "m1", 10, "j1")
    store.withdraw("j1")
    late = store.settle("j1", 50, 50, COMPLETED, agent_id="a1", model="m1")
    assert (late.duplicate, late.outcome, late.tokens_charged) == (True, WITHDRAWN, 0)
    assert store.unreserve("j1").duplicate
    assert store.expire("j1").duplicate
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_used) == (0, 0, 0)
    assert store.get_model_usage("m1").tokens_used == 0


def test_real_jobs_settle_and_unreserve_as_before_beside_withdrawals(backend: Backend) -> None:
    """Withdrawals touch only their own job: others settle, unreserve and repeat as before."""
    store = backend.allowance()
    store.set_allowance(allowance())
    for job in ("ran", "given back", "withdrawn"):
        store.reserve("a1", "m1", 10, job)
    store.withdraw("withdrawn")
    store.withdraw("never reserved")
    assert store.settle("ran", 5, 5, COMPLETED).tokens_charged == 10
    assert store.settle("ran", 5, 5, COMPLETED).duplicate
    store.unreserve("given back")
    with pytest.raises(NotFoundError):  # unreserve still leaves nothing behind
        store.unreserve("given back")
    late = store.settle("given back", 2, 2, COMPLETED, agent_id="a1", model="m1")
    assert (late.duplicate, late.tokens_charged) == (False, 4)
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs, usage.tokens_used) == (1, 0, 14)
    assert store.get_model_usage("m1").requests_last_hour == 1


def test_withdraw_of_an_expired_reservation_keeps_its_job_counted(backend: Backend) -> None:
    """Expired before the withdraw: the job stays counted (as any expiry); the id is refused."""
    store = backend.allowance()
    store.set_allowance(allowance(max_job_duration=10))
    store.reserve("a1", "", 0, "j1")
    backend.clock.advance(10)
    assert store.withdraw("j1").agent_id == ""  # nothing held any more
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs) == (1, 0)
    with pytest.raises(ConflictError):
        store.reserve("a1", "", 0, "j1")


def test_withdraw_across_midnight_leaves_the_new_day_alone(backend: Backend) -> None:
    """A reservation of yesterday withdrawn today does not lower today's job count."""
    store = backend.allowance()
    store.set_allowance(allowance(daily_job_limit=2, max_job_duration=2 * DAY))
    store.reserve("a1", "", 0, "old")
    backend.clock.advance(DAY)
    store.reserve("a1", "", 0, "new")
    store.withdraw("old")
    usage = store.get_usage("a1")
    assert (usage.jobs_started, usage.active_jobs) == (1, 1)


def test_withdraw_records_no_event(backend: Backend) -> None:
    """A store recording events records none for a withdraw, held or not."""
    log = backend.event_log()
    if backend.name == "memory":
        store = backend.allowance(events=log)
    else:
        store = backend.allowance(record_events=True)
    store.set_allowance(allowance(daily_token_limit=100))
    store.reserve("a1", "", 90, "j1")  # ok -> warning: one event
    recorded = len(log.read())
    store.withdraw("j1")
    store.withdraw("j2")
    assert len(log.read()) == recorded
