"""Dispatcher against a real task server on loopback (go-agentic's cases + fixed defects)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import agentic.client
from agentic._client_wire import FEATURES
from agentic.allowance import AllowanceService
from agentic.client import Claim, TaskClient
from agentic.dispatcher import LEASE, Dispatcher, DispatchReport
from agentic.errors import (
    APIError,
    ConfigError,
    ConflictError,
    NoEligibleAgentError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
    StoreUnavailableError,
    TransportError,
)
from agentic.events import Event, EventEmitter, EventType
from agentic.models import (
    AgentAllowance,
    AgentInfo,
    ModelQuota,
    Priority,
    QuotaEvent,
    Reservation,
    Settlement,
    Task,
    TaskResult,
    TaskStatus,
    TaskUpdate,
)
from agentic.retry import RetryPolicy
from agentic.router import DefaultRouter
from agentic.stores.base import RunSeen
from agentic.stores.memory import MemoryAllowanceStore, MemoryRegistry
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server
from tests.test_long_poll import wait_until
from tests.test_runner_identity import dead_holder


class Recorder(EventEmitter):
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def of(self, kind: EventType) -> list[Event]:
        return [e for e in self.events if e.type == kind]


@dataclass
class System:
    """A registry, an allowance store, a task server and a dispatcher wired together."""

    registry: MemoryRegistry
    quota: MemoryAllowanceStore
    tasks: MemoryTaskStore
    client: TaskClient
    events: Recorder
    dispatcher: Dispatcher

    def agent(
        self, agent_id: str, *caps: str, max_load: int = 0, load: int = 0, **limits: Any
    ) -> None:
        self.registry.register(
            AgentInfo(id=agent_id, capabilities=list(caps), max_load=max_load, current_load=load)
        )
        self.quota.set_allowance(AgentAllowance(agent_id=agent_id, **limits))

    def task(self, title: str, *labels: str, **fields: Any) -> Task:
        return self.tasks.create(Task(title=title, labels=list(labels), **fields))


@pytest.fixture
def system() -> Iterator[System]:
    tasks = MemoryTaskStore()
    with running_server(tasks, requeue_interval=None) as url:
        registry, quota, events = MemoryRegistry(), MemoryAllowanceStore(), Recorder()
        client = TaskClient(url, token="", retries=0)
        dispatcher = Dispatcher(
            registry,
            DefaultRouter(),
            AllowanceService(quota, events),
            client,
            emitter=events,
            retry=RetryPolicy(base=5, cap=60),
        )
        yield System(registry, quota, tasks, client, events, dispatcher)
        client.close()


def test_dispatch_picks_least_loaded_and_claims_in_its_name(system: System) -> None:
    """The task goes to the least loaded capable agent, claimed in that agent's name."""
    system.agent("busy", "py", max_load=4, load=3)
    system.agent("idle", "py", max_load=4, load=0)
    system.agent("other", "go", max_load=4)
    task = system.task("t", "py")
    assert system.dispatcher.dispatch(task) == "idle"
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.claimed_by) == (TaskStatus.IN_PROGRESS, "idle")
    assert stored.job_id
    assert system.quota.get_usage("idle").active_jobs == 1
    kinds = [e.type for e in system.events.events]
    assert kinds[-2:] == [EventType.TASK_CLAIMED, EventType.TASK_DISPATCHED]


def test_no_agents_waits_and_emits(system: System) -> None:
    """With no capable agent the task waits (no retry counted) and an event says why."""
    system.agent("a", "go")
    task = system.task("t", "py")
    report = system.dispatcher.run_once()
    assert task.id in report.waiting
    assert system.tasks.get(task.id).retry_count == 0
    assert system.events.of(EventType.DISPATCH_FAILED_NO_AGENT)


def test_agent_at_max_load_is_not_routed(system: System) -> None:
    """An available agent already at max_load gets nothing (defect 13)."""
    system.agent("full", max_load=1, load=1)
    with pytest.raises(NoEligibleAgentError):
        system.dispatcher.dispatch(system.task("t"))


def test_over_quota_agent_is_skipped_for_the_next(system: System) -> None:
    """When the best agent is over quota the next ranked agent gets the task."""
    system.agent("best", max_load=10, daily_job_limit=1)
    system.agent("second", max_load=2, load=1)
    system.quota.increment_usage("best", 0, 1)
    assert system.dispatcher.dispatch(system.task("t")) == "second"


def test_all_over_quota_waits_and_emits(system: System) -> None:
    """Every candidate over quota: the task waits, dispatch_failed_quota is emitted."""
    system.agent("a", daily_token_limit=10)
    task = system.task("t", estimated_tokens=50)
    with pytest.raises(QuotaExceededError):
        system.dispatcher.dispatch(task)
    report = system.dispatcher.run_once()
    assert "no eligible agent has quota for it" in report.waiting[task.id]
    assert system.tasks.get(task.id).retry_count == 0
    assert system.events.of(EventType.DISPATCH_FAILED_QUOTA)
    assert system.quota.get_usage("a").jobs_started == 0


def test_task_model_limits_apply(system: System) -> None:
    """The task's model is passed to the quota check, so model budgets apply (defect 2)."""
    system.agent("a")
    system.quota.set_model_quota(ModelQuota(model="big", daily_token_budget=100))
    task = system.task("t", model="big", estimated_tokens=500)
    with pytest.raises(QuotaExceededError, match="budget"):
        system.dispatcher.dispatch(task)
    assert system.dispatcher.dispatch(system.task("u", model="big", estimated_tokens=100)) == "a"
    assert system.quota.get_model_usage("big").tokens_reserved == 100


def test_one_pass_spreads_work(system: System) -> None:
    """Load is counted locally, so one pass gives three agents one task each (defect 4)."""
    for name in ("a", "b", "c"):
        system.agent(name, max_load=1)
    for i in range(4):
        system.task(f"t{i}")
    report = system.dispatcher.run_once()
    assert sorted(report.dispatched.values()) == ["a", "b", "c"]
    assert len(report.waiting) == 1


def test_priority_then_age_order(system: System) -> None:
    """A pass dispatches critical, high, medium, low; oldest first within a priority."""
    system.agent("only", max_load=1)
    system.task("low", priority=Priority.LOW)
    first_high = system.task("high-old", priority=Priority.HIGH)
    system.task("high-new", priority=Priority.HIGH)
    report = system.dispatcher.run_once()
    assert list(report.dispatched) == [first_high.id]


def test_critical_goes_to_lowest_absolute_load(system: System) -> None:
    """Critical tasks bypass the ratio and go to the lowest absolute load."""
    system.agent("big", max_load=100, load=10)  # ratio 0.9 free
    system.agent("small", max_load=2, load=1)  # ratio 0.5 free, load 1
    assert system.dispatcher.dispatch(system.task("c", priority=Priority.CRITICAL)) == "small"
    assert system.dispatcher.dispatch(system.task("n")) == "big"


class ScriptedClaims(TaskClient):
    """A client whose claims go wrong as told: the claim reaches the server or not,
    then ``error`` is raised; asking after it (withdraw, or the read-back against a
    server without claim fencing, ``fencing=False``) raises ``read_error`` when given.
    By default: a broken server (nothing claimed, 500)."""

    def __init__(
        self,
        base_url: str,
        *,
        reach_server: bool = False,
        error: Exception | None = None,
        read_error: Exception | None = None,
        fencing: bool = True,
        withdraw_error: Exception | None = None,
    ) -> None:
        super().__init__(base_url, token="", retries=0)
        self.reach_server = reach_server
        self.error = error or APIError("boom", 500)
        self.read_error = read_error
        self.fencing = fencing
        self.withdraw_error = withdraw_error
        #: (task id, job id) of every claim sent
        self.sent: list[tuple[str, str | None]] = []
        #: how the fate of lost claims was asked: "withdraw" or "read"
        self.asked: list[str] = []

    def claim_task(
        self,
        task_id: str,
        agent_id: str | None = None,
        lease_seconds: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        self.sent.append((task_id, job_id))
        if self.reach_server:
            super().claim_task(task_id, agent_id, lease_seconds, job_id)
        raise self.error

    def server_features(self) -> frozenset[str]:
        features = super().server_features()
        return features if self.fencing else features - {"claim_fencing"}

    def withdraw_claim(self, task_id: str, job_id: str) -> bool:
        self.asked.append("withdraw")
        if self.read_error is not None or self.withdraw_error is not None:
            raise self.withdraw_error or self.read_error  # type: ignore[misc]
        return super().withdraw_claim(task_id, job_id)

    def get_task(self, task_id: str) -> Task:
        self.asked.append("read")
        if self.read_error is not None:
            raise self.read_error
        return super().get_task(task_id)


def scripted(system: System, **script: Any) -> ScriptedClaims:
    """Make the system's dispatcher claim through a ScriptedClaims client."""
    client = ScriptedClaims(system.client.base_url, **script)
    system.dispatcher.client = client
    return client


def test_claim_failure_releases_reservation_and_counts_retry(system: System) -> None:
    """A failed claim frees its reservation (defect 6) and stores the retry (defect 5)."""
    system.agent("a", concurrent_jobs=1)
    task = system.task("t")
    scripted(system)
    report = system.dispatcher.run_once()
    assert task.id in report.failed
    assert system.quota.get_usage("a").active_jobs == 0
    stored = system.tasks.get(task.id)
    assert stored.retry_count == 1
    assert stored.last_attempt is not None and stored.next_attempt_at is not None
    assert stored.fail_reason


def test_backoff_is_respected_across_dispatchers(system: System) -> None:
    """A task in backoff is skipped by any dispatcher, because the retry lives on the server."""
    system.agent("a")
    task = system.task("t")
    scripted(system)
    system.dispatcher.run_once()
    fresh = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(system.quota), system.client
    )
    report = fresh.run_once()
    assert report.waiting[task.id].startswith("backoff until")
    later = datetime.now(UTC) + timedelta(minutes=5)
    fresh._clock = lambda: later
    assert fresh.run_once().dispatched == {task.id: "a"}


def test_dead_letter_after_max_retries(system: System) -> None:
    """After max_retries real failures the task is failed and task_dead_lettered emitted."""
    system.agent("a")
    task = system.task("t", max_retries=2)
    scripted(system)
    now = datetime.now(UTC)
    for attempt in range(3):
        at = now + timedelta(hours=attempt)
        system.dispatcher._clock = lambda at=at: at  # type: ignore[misc]
        system.dispatcher.run_once()
    stored = system.tasks.get(task.id)
    assert stored.status == TaskStatus.FAILED
    assert "max retries" in stored.fail_reason
    assert stored.retry_count == 3
    assert [e.task_id for e in system.events.of(EventType.TASK_DEAD_LETTERED)] == [task.id]


def cancel_and_retry(system: System, task_id: str) -> None:
    """What an operator may do while a pass holds its listing: cancel the task, then
    retry it (a new run, pending, no retry counted)."""
    system.tasks.update(task_id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    system.tasks.retry(task_id, reruns=0)


@pytest.mark.parametrize("max_retries", [0, 3], ids=["dead letter", "retry counted"])
def test_a_failure_is_not_recorded_on_a_task_retried_since_it_was_listed(
    system: System, max_retries: int
) -> None:
    """A claim refused after the listed task was failed and retried by an operator: the
    failure PATCH, computed from the previous run, is refused (409): the new run keeps
    no retry counted and is not dead-lettered, and no task_dead_lettered is emitted."""
    system.agent("a")
    task = system.task("t", max_retries=max_retries)
    client = scripted(system)  # claims refused with a 500, nothing claimed
    send = client.claim_task

    def retried_then_refused(*args: Any, **kwargs: Any) -> Task:
        cancel_and_retry(system, task.id)
        return send(*args, **kwargs)

    client.claim_task = retried_then_refused  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert "boom" in report.failed[task.id]  # the dispatch failed...
    assert report.dead_lettered == []  # ...but its record named the previous run
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.reruns, stored.retry_count) == (TaskStatus.PENDING, 1, 0)
    assert (stored.fail_reason, stored.last_attempt, stored.next_attempt_at) == ("", None, None)
    assert not system.events.of(EventType.TASK_DEAD_LETTERED)
    assert system.dispatcher.errors == 1  # the dispatch's own failure only


def test_a_failure_is_not_recorded_unconditioned_while_the_features_cannot_be_read(
    system: System,
) -> None:
    """While the task API's health check fails (its features unknown), a failure
    record is not sent without its condition: a task retried by an operator since it
    was listed keeps its new run's state, and the unrecorded failure is counted."""
    system.agent("a")
    task = system.task("t", max_retries=3)
    client = scripted(system, error=APIError("boom", 400))  # a definite refusal
    send = client.claim_task

    def unreadable() -> frozenset[str]:
        raise TransportError("the health check timed out")

    def retried_then_refused(*args: Any, **kwargs: Any) -> Task:
        cancel_and_retry(system, task.id)
        return send(*args, **kwargs)

    client.server_features = unreadable  # type: ignore[method-assign]
    client.claim_task = retried_then_refused  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert "boom" in report.failed[task.id]
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.reruns, stored.retry_count) == (TaskStatus.PENDING, 1, 0)
    assert stored.next_attempt_at is None
    assert system.dispatcher.errors == 2  # the dispatch's failure, and its record's


def test_a_listed_dead_letter_retried_before_its_patch_stays_retried(system: System) -> None:
    """A task listed past its retries, failed and retried by an operator before the
    pass dead-letters it: the dead letter is refused and the new run stays pending."""
    task = system.task("t", max_retries=1, retry_count=2)
    client = system.dispatcher.client
    listing = client.list_tasks

    def listed_then_retried(*args: Any, **kwargs: Any) -> list[Task]:
        listed = listing(*args, **kwargs)
        if any(t.id == task.id and t.reruns == 0 for t in listed):
            cancel_and_retry(system, task.id)
        return listed

    client.list_tasks = listed_then_retried  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert report.dead_lettered == []
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.reruns, stored.retry_count) == (TaskStatus.PENDING, 1, 0)
    assert not system.events.of(EventType.TASK_DEAD_LETTERED)
    client.list_tasks = listing  # type: ignore[method-assign]
    system.agent("a")
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}  # the new run runs


def test_against_a_server_without_update_fencing_a_failure_is_recorded_as_before(
    system: System,
) -> None:
    """A task API older than update_fencing gets the failure PATCH without the condition
    (it would refuse it): the retry is counted, no ConfigError."""
    system.agent("a")
    task = system.task("t")
    client = scripted(system)
    client.server_features = lambda: frozenset({"claim_fencing", "list_pages"})  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert task.id in report.failed
    assert system.tasks.get(task.id).retry_count == 1
    assert system.dispatcher.errors == 1


def test_a_server_without_fencing_is_named_once(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A dispatcher warns, once, of the fencing the task API does not list (an older
    server mid-upgrade: the races they close stay open), and not when it lists them."""
    system.agent("a")
    client = system.dispatcher.client
    client.server_features = lambda: frozenset({"list_pages"})  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="agentic.dispatcher"):
        system.dispatcher.run_once()
        system.dispatcher._features.forget()  # read again: the same answer is not said again
        system.dispatcher.run_once()
    said = [r.getMessage() for r in caplog.records if "does not list" in r.getMessage()]
    assert len(said) == 1
    assert "claim_fencing or update_fencing" in said[0] and "Upgrade the server" in said[0]
    client.server_features = lambda: frozenset(FEATURES)  # type: ignore[method-assign]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentic.dispatcher"):
        system.dispatcher._features.forget()
        system.dispatcher.run_once()
    assert not [r for r in caplog.records if "does not list" in r.getMessage()]


def test_a_server_that_lost_update_fencing_since_is_asked_again(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the server behind the address no longer lists update_fencing (a rollback,
    read once the client's kept features are past their time), the conditional record
    is refused by the client: counted as an error, no exception escapes the pass, and
    the next pass reads the features again and records it."""
    monkeypatch.setattr(agentic.client, "FEATURES_KEPT", 0.0)  # the passes are an hour apart
    system.agent("a")
    task = system.task("t")
    client = scripted(system)
    system.dispatcher.run_once()  # features read (update_fencing listed); retry 1 stored
    older = frozenset({"claim_fencing", "list_pages"})
    client.server_features = lambda: older  # type: ignore[method-assign]
    later = datetime.now(UTC) + timedelta(hours=1)
    system.dispatcher._clock = lambda: later
    report = system.dispatcher.run_once()
    assert task.id in report.failed
    assert system.tasks.get(task.id).retry_count == 1  # not recorded
    assert system.dispatcher.errors == 3  # two failed dispatches, one failure unrecorded
    system.dispatcher._clock = lambda: later + timedelta(hours=1)
    system.dispatcher.run_once()
    assert system.tasks.get(task.id).retry_count == 2  # recorded, unconditioned


def test_a_pass_recording_many_failures_reads_the_features_twice(system: System) -> None:
    """A pass whose eight claims fail records the eight failures, each only onto the
    task as listed, reading the health check's features twice (the dispatcher's read
    and the client's kept one), not once per failure."""
    system.agent("a", max_load=10)
    tasks = [system.task(f"t{i}") for i in range(8)]
    client = scripted(system)
    reads: list[frozenset[str]] = []
    read = client.server_features

    def counted() -> frozenset[str]:
        reads.append(read())
        return reads[-1]

    def broken(claims: Sequence[Claim]) -> list[Task | APIError]:
        raise client.error  # the batch of the pass fails as a whole, as one claim would

    client.server_features = counted  # type: ignore[method-assign]
    client.claim_tasks = broken  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert sorted(report.failed) == sorted(task.id for task in tasks)
    assert [system.tasks.get(task.id).retry_count for task in tasks] == [1] * 8
    assert len(reads) == 2 and all("update_fencing" in found for found in reads)


def test_conflict_is_not_a_failure(system: System) -> None:
    """A task claimed elsewhere between list and claim waits; no retry is counted."""
    system.agent("a")
    task = system.task("t")
    system.tasks.claim(task.id, "someone", 60)
    with pytest.raises(ConflictError):
        system.dispatcher.dispatch(task)
    assert system.quota.get_usage("a").active_jobs == 0
    assert system.tasks.get(task.id).retry_count == 0


def test_lost_claims_cost_no_quota(system: System) -> None:
    """Claims lost to another dispatcher give back the job, the slot and the hour's request."""
    system.agent("a", daily_job_limit=1)
    system.quota.set_model_quota(ModelQuota(model="m1", hourly_rate_limit=1))
    lost = [system.task(f"lost{i}", model="m1") for i in range(3)]
    for task in lost:
        system.tasks.claim(task.id, "someone", 60)
        with pytest.raises(ConflictError):
            system.dispatcher.dispatch(task)
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (0, 0)
    assert system.quota.get_model_usage("m1").requests_last_hour == 0
    won = system.task("won", model="m1")
    assert system.dispatcher.dispatch(won) == "a"


def silent(system: System, reach_server: bool, read_fails: bool = False) -> ScriptedClaims:
    """Claims whose answer is lost; with ``read_fails`` asking after them gets none either."""
    return scripted(
        system,
        reach_server=reach_server,
        error=TransportError("no answer"),
        read_error=TransportError("still no answer") if read_fails else None,
    )


def test_claim_made_with_its_answer_lost_is_dispatched(system: System) -> None:
    """A claim that reached the server is withdrawn as made: dispatched, its reservation kept."""
    system.agent("a")
    task = system.task("t")
    with silent(system, reach_server=True):
        assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    stored = system.tasks.get(task.id)
    assert (stored.status, stored.claimed_by) == (TaskStatus.IN_PROGRESS, "a")
    assert system.quota.get_usage("a").active_jobs == 1
    done = system.quota.settle(stored.job_id, 10, 0, QuotaEvent.JOB_COMPLETED)
    assert (done.duplicate, done.tokens_charged) == (False, 10)  # the runner can settle it


def test_claim_that_never_arrived_is_unreserved(system: System) -> None:
    """A claim that never reached the server is withdrawn: the quota is given back."""
    system.agent("a")
    task = system.task("t")
    with silent(system, reach_server=False):
        report = system.dispatcher.run_once()
    assert task.id in report.failed
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (0, 0)
    assert system.tasks.get(task.id).retry_count == 1


def test_a_lost_claim_of_a_task_failed_meanwhile_is_not_announced(system: System) -> None:
    """A lost claim of a task cancelled meanwhile is not made: given back, not announced."""
    system.agent("a")
    task = system.task("t")
    client = silent(system, reach_server=False)
    send = client.claim_task

    def dead_letter_then_claim(*args: Any, **kwargs: Any) -> Task:
        failed = TaskUpdate(status=TaskStatus.FAILED, fail_reason="obsolete")
        system.tasks.update(task.id, failed)
        return send(*args, **kwargs)

    client.claim_task = dead_letter_then_claim  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert task.id not in report.dispatched
    # withdraw knows it was not made, and it never will be (not after a retry either)
    assert "no answer" in report.failed[task.id]
    assert not system.events.of(EventType.TASK_CLAIMED)
    assert not system.events.of(EventType.TASK_DISPATCHED)
    assert system.quota.get_usage("a").active_jobs == 0  # given back at once
    failed = system.tasks.get(task.id)
    assert (failed.status, failed.retry_count, failed.fail_reason) == (
        TaskStatus.FAILED,
        0,
        "obsolete",
    )  # its failure not recorded on the cancelled task


def test_a_lost_claim_made_then_released_is_still_dispatched(system: System) -> None:
    """A lost claim that was made (withdraw: made) and given back since by its runner
    is dispatched and announced, not reported as claimed elsewhere."""
    system.agent("a")
    task = system.task("t")
    client = system.dispatcher.client
    send = client.claim_task

    def claim_release_then_lose(*args: Any, **kwargs: Any) -> Task:
        held = send(*args, **kwargs)  # the claim is made on the server...
        system.tasks.release(task.id, "a", job_id=held.job_id, reason="agent a is at capacity")
        raise TransportError("no answer")  # ...given back by its runner; the answer lost

    client.claim_task = claim_release_then_lose  # type: ignore[method-assign]
    report = system.dispatcher.run_once()
    assert report.dispatched == {task.id: "a"} and task.id not in report.waiting
    assert system.events.of(EventType.TASK_DISPATCHED)


def test_a_withdrawn_claim_arriving_late_is_refused(system: System) -> None:
    """A claim still on its way when its fate was asked (a slow server) is refused when it
    lands, so it never runs on the reservation that was given back."""
    system.agent("a", concurrent_jobs=1)
    task = system.task("t")
    client = silent(system, reach_server=False)
    system.dispatcher.run_once()
    assert client.asked == ["withdraw"]
    assert system.quota.get_usage("a").active_jobs == 0  # given back
    [(_task_id, job_id)] = client.sent
    assert job_id
    with pytest.raises(ConflictError, match="withdrawn"):
        system.client.claim_task(task.id, "a", job_id=job_id)  # the late arrival
    assert system.tasks.get(task.id).status is TaskStatus.PENDING


def test_a_withdraw_route_missing_behind_the_same_address_keeps_the_reservation(
    system: System,
) -> None:
    """A 404 from withdraw for a task that exists (an older replica answered) settles
    nothing: the reservation stays and the server's features are asked for again."""
    system.agent("a", concurrent_jobs=1)
    task = system.task("t")
    no_route = NotFoundError("Not Found")
    client = silent(system, reach_server=True)
    client.withdraw_error = no_route
    report = system.dispatcher.run_once()
    assert "cannot tell yet" in report.waiting[task.id]
    assert system.quota.get_usage("a").active_jobs == 1  # the claim was made: kept
    assert system.dispatcher._features.known("claim_fencing") is None
    system.dispatcher.client = system.client
    system.dispatcher.run_once()
    assert system.dispatcher._lost.unsure == {}
    assert system.quota.get_usage("a").active_jobs == 1  # made: the runner settles it


def test_a_task_with_an_unsettled_claim_is_not_claimed_again(system: System) -> None:
    """While a claim's fate is unknown its task waits: no second claim, no second slot."""
    system.agent("a", concurrent_jobs=2)
    task = system.task("t")
    client = silent(system, reach_server=False, read_fails=True)
    system.dispatcher.run_once()
    report = system.dispatcher.run_once()  # the task is listed pending again
    assert report.waiting[task.id] == "a claim of it has no known outcome yet"
    assert len(client.sent) == 1
    assert system.quota.get_usage("a").active_jobs == 1
    system.dispatcher.client = system.client  # the server answers again
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    [(_task_id, lost_job)] = client.sent
    with pytest.raises(ConflictError):  # the lost claim, arriving at last
        system.client.claim_task(task.id, "a", job_id=lost_job)
    assert system.quota.get_usage("a").active_jobs == 1


def test_a_server_without_claim_fencing_is_read_back(system: System) -> None:
    """Against a task API that cannot withdraw claims, the dispatcher reads the task back."""
    system.agent("a")
    task = system.task("t")
    client = scripted(system, reach_server=True, error=TransportError("no answer"), fencing=False)
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    assert client.asked == ["read"]


@pytest.mark.parametrize("landed", [True, False], ids=["claim made", "claim not made"])
def test_claim_of_unknown_fate_keeps_its_reservation_until_known(
    system: System, landed: bool
) -> None:
    """No answer and no read-back: the reservation stays and nothing is recorded on the
    task; the next pass finds out and gives the quota back only if no claim was made."""
    system.agent("a", concurrent_jobs=1)
    task = system.task("t")
    with silent(system, reach_server=landed, read_fails=True):
        report = system.dispatcher.run_once()
    assert "cannot tell yet" in report.waiting[task.id]
    assert task.id not in report.failed
    assert system.quota.get_usage("a").active_jobs == 1  # kept: the job may be running
    stored = system.tasks.get(task.id)
    assert (stored.retry_count, stored.next_attempt_at) == (0, None)
    system.dispatcher.client = system.client  # the server answers again
    system.dispatcher.run_once()
    usage = system.quota.get_usage("a")
    if landed:
        assert stored.status is TaskStatus.IN_PROGRESS
        assert (usage.jobs_started, usage.active_jobs) == (1, 1)  # the runner settles it
    else:
        # given back, then the task was dispatched again by that same pass
        assert system.tasks.get(task.id).status is TaskStatus.IN_PROGRESS
        assert (usage.jobs_started, usage.active_jobs) == (1, 1)
        assert system.tasks.get(task.id).job_id != stored.job_id


def test_claim_of_a_task_that_is_gone_is_given_back(system: System) -> None:
    """No answer, and the task reads back as unknown (404): no claim of it can run, so
    the reservation goes back and nothing is left to ask about."""
    system.agent("a")
    task = system.task("t")
    gone = NotFoundError(f"task {task.id!r} does not exist")
    with scripted(system, error=TransportError("no answer"), read_error=gone):
        report = system.dispatcher.run_once()
    assert task.id in report.failed
    assert system.quota.get_usage("a").active_jobs == 0
    assert system.dispatcher._lost.unsure == {}


def test_a_task_that_can_never_fit_is_told_so_once(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A task refused for its size or model by every agent (an estimate above each
    daily token limit, a model outside the allowlist) is said to never fit as the
    allowances stand, in the event and once in the log, not as a wait for a reset."""
    system.agent("small", daily_token_limit=500)
    system.agent("picky", model_allowlist=["m-1"])
    system.quota.set_model_quota(ModelQuota(model="m-2"))
    task = system.task("big", estimated_tokens=1_000, model="m-2")
    with caplog.at_level(logging.WARNING, logger="agentic.dispatcher"):
        for _ in range(3):
            assert task.id in system.dispatcher.run_once().waiting
    [told] = system.events.of(EventType.DISPATCH_FAILED_QUOTA)
    assert told.payload["never"] == (
        "picky: model 'm-2' is not in its allowlist;"
        " small: 1000 tokens exceed its daily token limit of 500"
    )
    warned = [r.getMessage() for r in caplog.records if "can never be dispatched" in r.getMessage()]
    assert len(warned) == 1 and "lower the task's estimated_tokens" in warned[0]


def test_a_task_that_fits_after_a_reset_is_not_said_to_never_fit(system: System) -> None:
    """A refusal one agent would lift tomorrow (today's tokens used up) is a wait: no
    "never" in the event, even when another agent could never take the task."""
    system.agent("small", daily_token_limit=500)
    system.agent("spent", daily_token_limit=5_000)
    system.quota.increment_usage("spent", 4_500, 1)
    task = system.task("big", estimated_tokens=1_000)
    assert task.id in system.dispatcher.run_once().waiting
    [told] = system.events.of(EventType.DISPATCH_FAILED_QUOTA)
    assert "never" not in told.payload


def test_a_task_waiting_for_the_same_reason_is_told_once(system: System) -> None:
    """dispatch_failed_* is emitted when a task starts waiting or its reason changes,
    not on every pass it waits."""
    system.agent("a", "gpu", concurrent_jobs=1)
    system.quota.reserve("a", "", 0, "held")
    task = system.task("t", "gpu")
    for _ in range(3):
        assert task.id in system.dispatcher.run_once().waiting
    assert len(system.events.of(EventType.DISPATCH_FAILED_QUOTA)) == 1
    system.registry.deregister("a")  # a new reason: nobody holds gpu
    for _ in range(2):
        system.dispatcher.run_once()
    assert len(system.events.of(EventType.DISPATCH_FAILED_NO_AGENT)) == 1
    system.agent("a", "gpu", concurrent_jobs=1)  # back, and still full
    system.dispatcher.run_once()
    assert len(system.events.of(EventType.DISPATCH_FAILED_QUOTA)) == 2


def test_waiting_events_dedupe_on_the_set_of_reasons(system: System) -> None:
    """dispatch_failed_quota is emitted again only when the set of (agent, reason) a task
    waits for changes: not each pass, nor when the agents are ranked in another order."""
    for agent in ("a", "b"):
        system.agent(agent, "gpu", max_load=4, concurrent_jobs=1)
        system.quota.reserve(agent, "", 0, f"held-{agent}")
    task = system.task("t", "gpu")
    orders = []
    for load_a, load_b in ((3, 1), (1, 3), (3, 1), (1, 3)):
        system.registry.heartbeat("a", load=load_a)
        system.registry.heartbeat("b", load=load_b)
        orders.append(system.dispatcher.run_once().waiting[task.id])
    assert len(set(orders)) == 2  # the reasons came in both orders
    told = system.events.of(EventType.DISPATCH_FAILED_QUOTA)
    assert len(told) == 1
    assert set(told[0].payload["reasons"].split("; ")) == {
        "a: concurrent job limit",
        "b: concurrent job limit",
    }
    # a's reason changes (its day's one job is used): a new set, told once
    system.quota.set_allowance(AgentAllowance(agent_id="a", concurrent_jobs=1, daily_job_limit=1))
    for _ in range(2):
        assert task.id in system.dispatcher.run_once().waiting
    told = system.events.of(EventType.DISPATCH_FAILED_QUOTA)
    assert len(told) == 2
    assert set(told[1].payload["reasons"].split("; ")) == {
        "a: daily job limit",
        "b: concurrent job limit",
    }


class CountingQuota(MemoryAllowanceStore):
    """A memory quota store that counts reserve calls per agent."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: dict[str, int] = {}

    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        self.asked[agent_id] = self.asked.get(agent_id, 0) + 1
        return super().reserve(agent_id, model, tokens, job_id, task_id)


def test_an_agent_refused_for_any_task_is_asked_once_per_pass(system: System) -> None:
    """An agent at its concurrent (or daily) job limit, or without an allowance, is
    asked once in a pass, not once per task; the tasks go to the others or wait."""
    quota = CountingQuota()
    for agent_id, limits in {
        "full": {"concurrent_jobs": 1},
        "spent": {"daily_job_limit": 1},
    }.items():
        system.registry.register(AgentInfo(id=agent_id, capabilities=["x"]))
        quota.set_allowance(AgentAllowance(agent_id=agent_id, **limits))
        quota.reserve(agent_id, "", 0, f"{agent_id}-held")
    system.registry.register(AgentInfo(id="unknown", capabilities=["x"]))  # no allowance
    system.registry.register(AgentInfo(id="free", capabilities=["x"], max_load=3))
    quota.set_allowance(AgentAllowance(agent_id="free"))
    quota.asked.clear()
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(quota), system.client
    )
    tasks = [system.task(f"t{i}", "x") for i in range(20)]
    report = dispatcher.run_once()
    assert sorted(report.dispatched.values()) == ["free"] * 3
    assert len(report.waiting) == 17
    assert "concurrent job limit" in report.waiting[tasks[-1].id]
    assert "daily job limit" in report.waiting[tasks[-1].id]
    assert (quota.asked["full"], quota.asked["spent"], quota.asked["unknown"]) == (1, 1, 1)
    dispatcher.run_once()  # a new pass asks again: a slot may have been freed since
    assert quota.asked["full"] == 2


class CountingLists(TaskClient):
    """A client that records each list request's ``after``; ``features`` stand in for
    the server's, and ``ignore_after`` plays a server that does not page."""

    def __init__(
        self, base_url: str, features: frozenset[str] | None = None, ignore_after: bool = False
    ) -> None:
        super().__init__(base_url, token="", retries=0)
        self.features = features
        self.ignore_after = ignore_after
        self.lists: list[str | None] = []
        self.within: list[list[str] | None] = []

    def server_features(self) -> frozenset[str]:
        return super().server_features() if self.features is None else self.features

    def list_tasks(self, *args: Any, **kwargs: Any) -> list[Task]:
        self.lists.append(kwargs.get("after"))
        self.within.append(kwargs.get("labels_within"))
        if self.ignore_after:
            kwargs.pop("after", None)
        return super().list_tasks(*args, **kwargs)


def paged(system: System, **client: Any) -> tuple[Dispatcher, CountingLists]:
    """A dispatcher listing 10 ready tasks per page through a CountingLists client."""
    counting = CountingLists(system.client.base_url, **client)
    quota = AllowanceService(system.quota)
    return Dispatcher(system.registry, DefaultRouter(), quota, counting, page_size=10), counting


def test_a_pass_lists_the_next_page_only_while_an_agent_has_room(system: System) -> None:
    """25 ready tasks, pages of 10: with room for 3, one page is listed; the most urgent
    3 are dispatched, the rest wait for a later pass."""
    system.agent("a", max_load=3)
    tasks = [system.task(f"t{i:02}") for i in range(25)]
    dispatcher, client = paged(system)
    report = dispatcher.run_once()
    assert client.lists == [None]
    assert sorted(report.dispatched) == sorted(t.id for t in tasks[:3])
    assert len(report.waiting) == 7


def test_a_pass_pages_through_a_backlog_an_agent_can_take(system: System) -> None:
    """With room for everything the pass walks every page, each after the last task."""
    system.agent("a")
    tasks = [system.task(f"t{i:02}") for i in range(25)]
    dispatcher, client = paged(system)
    report = dispatcher.run_once()
    assert sorted(report.dispatched) == sorted(t.id for t in tasks)
    assert client.lists == [None, tasks[9].id, tasks[19].id]


def test_pages_after_the_first_skip_a_backlog_only_busy_agents_could_take(
    system: System,
) -> None:
    """25 tasks for a busy gpu agent, then 3 for an idle py agent: the first page is
    whole (the head's waits are reported), the next pages hold only what the agents
    with room could take, so the py tasks are found without walking the gpu backlog."""
    system.agent("gpu-1", "gpu", max_load=1, load=1)
    system.agent("py-1", "py")
    gpu = [system.task(f"g{i:02}", "gpu") for i in range(25)]
    py = [system.task(f"p{i}", "py") for i in range(3)]
    dispatcher, client = paged(system)
    report = dispatcher.run_once()
    assert sorted(report.dispatched) == sorted(t.id for t in py)
    assert client.lists == [None, gpu[9].id] and client.within == [None, ["py"]]
    assert len(report.waiting) == 10  # the first page's gpu tasks, with their reason


def test_a_dead_attempts_task_past_the_first_page_frees_its_agent(system: System) -> None:
    """An agent full only of a dead attempt's reservation (its task requeued when the
    lease ran out) keeps its capability in the later pages' filter: that task is
    listed and the reservation freed, so the next pass gives the agent work again
    (not the reservation's expiry, an hour later)."""
    system.agent("g", "gpu", max_load=1)
    system.agent("py-1", "py")
    old = system.task("old", "gpu", priority="low")
    dispatcher, client = paged(system)
    assert dispatcher.run_once().dispatched == {old.id: "g"}
    held = system.tasks.get(old.id)
    system.tasks.renew(old.id, "g", 0.01, job_id=held.job_id)  # its runner went silent
    time.sleep(0.05)
    assert [t.id for t in system.tasks.requeue_expired()] == [old.id]
    for i in range(10):
        system.task(f"m{i}", "gpu", priority="medium")  # a full first page ahead of it
    assert dispatcher.run_once().dispatched == {}  # listed: its reservation is freed
    assert client.within[-1] == ["gpu", "py"]
    # The next pass, not the reservation's expiry an hour later, gives g work again
    # (the most urgent gpu task, which is not the old one).
    assert list(dispatcher.run_once().dispatched.values()) == ["g"]


def test_a_capability_with_a_comma_is_left_out_of_the_filter(system: System) -> None:
    """No label holds a comma, so such a capability matches no task: it is dropped from
    the filter instead of failing the listing, and the pass goes on."""
    system.agent("odd", "a,b", "py")
    for i in range(10):
        system.task(f"g{i}", "gpu")
    last = system.task("p", "py")
    dispatcher, client = paged(system)
    assert list(dispatcher.run_once().dispatched) == [last.id]
    assert client.within == [None, ["py"]]


class AnyAgentRouter(DefaultRouter):
    """A router with rules of its own: when no agent has a task's labels, any agent
    takes it (and it says nothing of which labels it can route)."""

    def rank(self, task: Task, agents: Any, limit: int | None = None) -> list[str]:
        try:
            return super().rank(task, agents, limit)
        except NoEligibleAgentError:
            return super().rank(task.model_copy(update={"labels": []}), agents, limit)

    def routable_labels(self, agents: Any, excluding: Any = ()) -> frozenset[str] | None:
        return None


def test_a_router_that_does_not_say_what_it_routes_gets_whole_pages(system: System) -> None:
    """A router whose routable_labels is None (the TaskRouter default) gets every page
    whole: a task only its own rules can route is still found past the first page."""
    system.agent("any", max_load=20)
    for i in range(10):
        system.task(f"h{i}", priority="high")
    rust = system.task("r", "rust")
    counting = CountingLists(system.client.base_url)
    quota = AllowanceService(system.quota)
    dispatcher = Dispatcher(system.registry, AnyAgentRouter(), quota, counting, page_size=10)
    assert rust.id in dispatcher.run_once().dispatched
    assert counting.within == [None, None]


def test_a_server_without_label_filters_is_paged_as_before(system: System) -> None:
    """Against a server without labels_within, later pages are listed whole."""
    system.agent("gpu-1", "gpu", max_load=1, load=1)
    system.agent("py-1", "py")
    for i in range(25):
        system.task(f"g{i:02}", "gpu")
    py = system.task("p", "py")
    dispatcher, client = paged(system, features=frozenset({"list_pages"}))
    assert list(dispatcher.run_once().dispatched) == [py.id]
    assert client.within == [None, None, None]


def test_a_server_that_does_not_page_is_listed_whole(system: System) -> None:
    """Without list_pages the first list asks for everything, as before pages existed."""
    system.agent("a")
    for i in range(25):
        system.task(f"t{i:02}")
    dispatcher, client = paged(system, features=frozenset())
    assert len(dispatcher.run_once().dispatched) == 25
    assert client.lists == [None]


def test_a_server_repeating_pages_stops_the_listing(system: System) -> None:
    """A server that says it pages but answers the first page again: no task twice."""
    system.agent("a", max_load=15)
    for i in range(25):
        system.task(f"t{i:02}")
    dispatcher, client = paged(system, ignore_after=True)
    report = dispatcher.run_once()
    assert len(report.dispatched) == 10 and not report.failed
    assert len(client.lists) == 2


class BrokenQuota(MemoryAllowanceStore):
    """A quota store whose reservations fail like an unreachable backend."""

    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        raise StoreError("connection refused")


def test_a_quota_store_outage_fails_the_pass_not_the_tasks(system: System) -> None:
    """With the quota store down (fail closed) the pass fails; no task counts a retry."""
    quota = BrokenQuota()
    quota.set_allowance(AgentAllowance(agent_id="a"))
    system.registry.register(AgentInfo(id="a"))
    task = system.task("t")
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(quota), system.client
    )
    with pytest.raises(StoreUnavailableError):
        dispatcher.run_once()
    assert system.tasks.get(task.id).retry_count == 0


class StallingQuota(MemoryAllowanceStore):
    """A quota store whose reserves time out, by script: ``made`` ones after the
    reservation was made (the answer lost), ``unmade`` ones before (still on its way);
    ``down``: every reserve and withdraw times out (the reserves unmade)."""

    def __init__(self) -> None:
        super().__init__()
        self.made = 0
        self.unmade = 0
        self.down = False
        self.lost: list[str] = []  # the job ids of reserves that timed out
        self.withdrawals = 0

    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        if self.made:
            self.made -= 1
            super().reserve(agent_id, model, tokens, job_id, task_id)
        elif self.unmade or self.down:
            self.unmade = max(0, self.unmade - 1)
        else:
            return super().reserve(agent_id, model, tokens, job_id, task_id)
        self.lost.append(job_id)
        raise StoreUnavailableError("Redis timed out")

    def withdraw(self, job_id: str) -> Settlement:
        self.withdrawals += 1
        if self.down:
            raise StoreUnavailableError("Redis timed out")
        return super().withdraw(job_id)


def stalling(system: System, slots: int = 1) -> tuple[StallingQuota, Dispatcher]:
    """One agent a with ``slots`` slots, its quota on a StallingQuota, its dispatcher."""
    quota = StallingQuota()
    quota.set_allowance(AgentAllowance(agent_id="a", concurrent_jobs=slots))
    system.registry.register(AgentInfo(id="a", max_load=slots))
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(quota), system.client
    )
    return quota, dispatcher


def test_a_reserve_made_though_it_timed_out_is_withdrawn_by_the_next_pass(
    system: System,
) -> None:
    """A reserve that timed out after it was made is withdrawn next pass: the slot is free."""
    quota, dispatcher = stalling(system)
    quota.made = 1
    task = system.task("t")
    with pytest.raises(StoreUnavailableError):
        dispatcher.run_once()
    assert quota.get_usage("a").active_jobs == 1  # the leak: a slot nobody will give back
    report = dispatcher.run_once()
    assert report.dispatched == {task.id: "a"}  # the slot was free again for it
    usage = quota.get_usage("a")
    assert (usage.active_jobs, usage.jobs_started) == (1, 1)  # the new job only
    assert system.tasks.get(task.id).job_id != quota.lost[0]
    with pytest.raises(ConflictError):  # the lost job id holds nothing, ever
        quota.reserve("a", "", 0, quota.lost[0])
    dispatcher.run_once()
    assert quota.withdrawals == 1  # withdrawn once, then forgotten


def test_a_withdrawn_reserve_landing_late_holds_nothing(system: System) -> None:
    """A reserve still on its way when withdrawn is refused when it lands: nothing held."""
    quota, dispatcher = stalling(system)
    quota.unmade = 1
    system.task("t")
    with pytest.raises(StoreUnavailableError):
        dispatcher.run_once()
    dispatcher.run_once()  # withdraws it, then dispatches the task under a new job id
    with pytest.raises(ConflictError):  # the stalled reserve, landing now
        MemoryAllowanceStore.reserve(quota, "a", "", 0, quota.lost[0])
    usage = quota.get_usage("a")
    assert (usage.active_jobs, usage.jobs_started) == (1, 1)


def test_a_withdraw_the_store_cannot_answer_is_asked_once_a_pass_until_it_can(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store fails, each pass tries one withdraw however many wait (an error
    counted, warned once) and keeps every lost job id; once it answers, all go."""
    quota, dispatcher = stalling(system, slots=2)
    quota.made = 1
    system.task("t")
    with pytest.raises(StoreUnavailableError):
        dispatcher.run_once()  # reserved, made, timed out
    quota.down = True
    errors = dispatcher.errors
    with caplog.at_level(logging.DEBUG, logger="agentic.dispatcher"):
        for _ in range(3):
            with pytest.raises(StoreUnavailableError):
                dispatcher.run_once()  # no withdraw answers; nor does the reserve
    assert len(quota.lost) == 4  # each pass's reserve is kept too (made or not)
    assert (quota.withdrawals, dispatcher.errors - errors) == (3, 3)
    warned = [r for r in caplog.records if "could not withdraw" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert quota.get_usage("a").active_jobs == 1
    quota.down = False
    report = dispatcher.run_once()
    assert len(report.dispatched) == 1
    assert quota.withdrawals == 3 + 4
    usage = quota.get_usage("a")
    assert (usage.active_jobs, usage.jobs_started) == (1, 1)
    for job_id in quota.lost:
        with pytest.raises(ConflictError):
            MemoryAllowanceStore.reserve(quota, "a", "", 0, job_id)


def test_claim_made_behind_a_5xx_is_dispatched(system: System) -> None:
    """A 5xx may hide a claim made: it is read back, and found ours, kept."""
    system.agent("a")
    task = system.task("t")
    with scripted(system, reach_server=True, error=APIError("Bad Gateway", 502)):
        assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    assert system.quota.get_usage("a").active_jobs == 1
    assert system.tasks.get(task.id).retry_count == 0


def test_concurrent_dispatchers_claim_each_task_once(system: System) -> None:
    """Four dispatchers in threads over 40 tasks claim every task exactly once."""
    for i in range(4):
        system.agent(f"a{i}")
    tasks = [system.task(f"t{i}") for i in range(40)]
    dispatchers = [
        Dispatcher(
            system.registry,
            DefaultRouter(),
            AllowanceService(system.quota),
            TaskClient(system.client.base_url, token="", retries=0),
        )
        for _ in range(4)
    ]
    reports = []

    def run(d: Dispatcher) -> None:
        reports.append(d.run_once())

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [tid for r in reports for tid in r.dispatched]
    assert sorted(claimed) == sorted(t.id for t in tasks)
    assert sum(u.active_jobs for u in system.quota.usages()) == 40


def test_a_pass_that_works_after_failures_is_said(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """After failed passes, the first pass that works says so: a log must not end on
    the last failure of an outage that is over."""
    outcomes = [StoreError("down"), StoreError("down")]

    class Recovering(Dispatcher):
        def run_once(self) -> DispatchReport:
            if outcomes:
                raise outcomes.pop(0)
            stop.set()
            return DispatchReport()

    dispatcher = Recovering(
        system.registry, DefaultRouter(), AllowanceService(system.quota), system.client
    )
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="agentic.dispatcher"):
        dispatcher.run(stop, 0.01)
    assert "dispatch passes work again after 2 failure(s) in a row" in caplog.text


def test_run_stops_when_asked_and_counts_errors(system: System) -> None:
    """run() makes its first pass at once, stops on the event, and counts failed passes."""
    system.agent("a")
    task = system.task("t")
    stop = threading.Event()
    thread = threading.Thread(target=system.dispatcher.run, args=(stop, 0.05))
    thread.start()
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while system.tasks.get(task.id).status != TaskStatus.IN_PROGRESS:
        assert datetime.now(UTC) < deadline
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    broken = Dispatcher(
        system.registry,
        DefaultRouter(),
        AllowanceService(system.quota),
        TaskClient("http://127.0.0.1:9", token="", retries=0, timeout=0.2),
    )
    stop = threading.Event()
    thread = threading.Thread(target=broken.run, args=(stop, 0.01))
    thread.start()
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while broken.errors < 2:
        assert datetime.now(UTC) < deadline
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(TransportError):
        broken.run_once()


def twin(system: System, name: str, **options: Any) -> Dispatcher:
    """Another dispatcher on the same registry, quota store and task server."""
    return Dispatcher(
        system.registry,
        DefaultRouter(),
        AllowanceService(system.quota),
        system.client,
        name=name,
        **options,
    )


def test_exclusive_dispatchers_have_one_active_and_a_standby_takes_over(system: System) -> None:
    """Of two exclusive dispatchers one passes; when it stops, the standby takes over."""
    system.agent("a")
    first, second = twin(system, "first"), twin(system, "second")
    stops = {d.name: threading.Event() for d in (first, second)}
    threads = {
        d.name: threading.Thread(target=d.run, args=(stops[d.name], 0.05)) for d in (first, second)
    }
    threads["first"].start()
    wait_until(lambda: first.active)
    threads["second"].start()
    early = system.task("early")
    wait_until(lambda: system.tasks.get(early.id).status == TaskStatus.IN_PROGRESS)
    assert (first.active, second.active) == (True, False)
    assert system.registry.hold_lease(LEASE, "someone else", 60) == "first"
    stops["first"].set()
    threads["first"].join(5)
    assert not first.active  # it gave the lease up on the way out
    wait_until(lambda: second.active)  # within a standby's wait (1 s), not the lease's 15 s
    late = system.task("late")
    wait_until(lambda: system.tasks.get(late.id).status == TaskStatus.IN_PROGRESS)
    stops["second"].set()
    threads["second"].join(5)
    assert not threads["second"].is_alive()
    assert first.errors == second.errors == 0


class CountingPasses(Dispatcher):
    """A dispatcher that counts its passes."""

    passes = 0

    def run_once(self) -> DispatchReport:
        self.passes += 1
        return super().run_once()


def test_only_the_holder_passes_and_one_that_lost_the_lease_stops(system: System) -> None:
    """A standby makes no pass while another holds the lease; a holder whose lease was
    taken (it ran out) stops passing at its next turn."""
    quota = AllowanceService(system.quota)
    counting = CountingPasses(
        system.registry, DefaultRouter(), quota, system.client, name="counted"
    )
    system.registry.hold_lease(LEASE, "other", 60)
    stop = threading.Event()
    thread = threading.Thread(target=counting.run, args=(stop, 0.05))
    thread.start()
    try:
        time.sleep(0.5)
        assert counting.passes == 0 and not counting.active
        system.registry.drop_lease(LEASE, "other")
        wait_until(lambda: counting.passes > 0)
        # another takes the lease (as if ours had run out): no more passes here
        system.registry.drop_lease(LEASE, "counted")
        system.registry.hold_lease(LEASE, "other", 60)
        wait_until(lambda: not counting.active)
        passes = counting.passes
        time.sleep(0.5)
        assert counting.passes == passes
    finally:
        stop.set()
        thread.join(5)


def test_a_dispatcher_starting_as_standby_says_so(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """A dispatcher that starts while another holds the lease logs that it stands by
    and who is active, at once, instead of printing nothing until it takes over."""
    quota = AllowanceService(system.quota)
    standby = Dispatcher(system.registry, DefaultRouter(), quota, system.client, name="late")
    system.registry.hold_lease(LEASE, "other", 60)
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="agentic"):
        thread = threading.Thread(target=standby.run, args=(stop, 0.05))
        thread.start()
        try:
            wait_until(lambda: "dispatcher late stands by: other holds the lease" in caplog.text)
        finally:
            stop.set()
            thread.join(5)


def test_a_failing_holder_keeps_its_lease(system: System) -> None:
    """Passes that fail back off, but never longer than a third of the lease: a live
    holder whose task API is down is not replaced by a standby meanwhile."""
    broken = TaskClient("http://127.0.0.1:9", token="", retries=0, timeout=0.05)
    quota = AllowanceService(system.quota)
    holder = Dispatcher(
        system.registry, DefaultRouter(), quota, broken, name="holder", active_lease=1.0
    )
    stop = threading.Event()
    thread = threading.Thread(target=holder.run, args=(stop, 0.3))  # backoff up to 3 s
    thread.start()
    try:
        wait_until(lambda: holder.errors >= 5, timeout=30)  # backoff past the lease by now
        for _ in range(5):
            assert system.registry.hold_lease(LEASE, "standby", 15) == "holder"
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(5)


def test_a_standby_takes_over_when_the_active_dispatcher_dies(system: System) -> None:
    """A lease left by a dispatcher that died is taken once it runs out."""
    system.registry.hold_lease(LEASE, "dead", 0.2)
    standby = twin(system, "standby")
    stop = threading.Event()
    thread = threading.Thread(target=standby.run, args=(stop, 0.05))
    thread.start()
    try:
        assert not standby.active
        wait_until(lambda: standby.active, timeout=5)
    finally:
        stop.set()
        thread.join(5)


def test_a_dispatcher_killed_on_this_machine_is_not_waited_for(system: System) -> None:
    """A lease whose holder was a process of this machine that has ended (kill -9) is
    taken at once, not after it runs out (60 s here): a one-off pass is made."""
    system.registry.hold_lease(LEASE, dead_holder(), 60)
    report = twin(system, "next").run_turn(interval=0.05)
    assert report is not None
    assert system.registry.hold_lease(LEASE, "probe", 1) == "probe"  # given back after


def test_a_registry_failing_while_taking_over_a_dead_dispatchers_lease_stands_by(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping a dead holder's lease fails (the registry blips): no pass, no raise;
    the next turn tries again."""
    system.registry.hold_lease(LEASE, dead_holder(), 60)
    dispatcher = twin(system, "next")

    def blip(name: str, holder: str) -> None:
        raise StoreUnavailableError("registry blip")

    monkeypatch.setattr(system.registry, "drop_lease", blip)
    assert dispatcher.run_turn(interval=0.05) is None
    monkeypatch.undo()
    assert dispatcher.run_turn(interval=0.05) is not None


def test_every_number_of_seconds_is_checked_when_built(system: System) -> None:
    """Zero or less, NaN, infinity or past 1e9 s for active_lease, heartbeat_ttl,
    lease_seconds or the interval of a turn is a ConfigError naming it (heartbeat_ttl
    1e300 was taken, then every pass failed reaping agents)."""
    for bad in (0, -1, float("nan"), float("inf"), 1e10, "5"):
        for option in ("active_lease", "heartbeat_ttl", "lease_seconds"):
            with pytest.raises(ConfigError, match=f"{option} must be a number of seconds > 0"):
                twin(system, "bad", **{option: bad})
        with pytest.raises(ConfigError, match="interval must be a number of seconds > 0"):
            twin(system, "bad").run_turn(interval=bad)  # type: ignore[arg-type]
    assert twin(system, "longest", active_lease=1e9, heartbeat_ttl=1e9).active_lease == 1e9


def test_dispatchers_not_exclusive_all_pass(system: System) -> None:
    """exclusive=False: every dispatcher passes, the lease is never taken."""
    system.agent("a")
    loose = twin(system, "loose", exclusive=False)
    assert loose.active
    system.registry.hold_lease(LEASE, "someone else", 60)
    task = system.task("t")
    stop = threading.Event()
    thread = threading.Thread(target=loose.run, args=(stop, 0.05))
    thread.start()
    try:
        wait_until(lambda: system.tasks.get(task.id).status == TaskStatus.IN_PROGRESS)
    finally:
        stop.set()
        thread.join(5)


class BrokenLeases(MemoryRegistry):
    """A registry whose leases fail like an unreachable store."""

    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        raise StoreUnavailableError("registry unreachable")


def test_a_registry_outage_stops_exclusive_passes_and_is_counted(system: System) -> None:
    """Nobody can tell who is active while leases fail: no pass, each failure counted."""
    task = system.task("t")
    quota = AllowanceService(system.quota)
    blind = Dispatcher(BrokenLeases(), DefaultRouter(), quota, system.client)
    stop = threading.Event()
    thread = threading.Thread(target=blind.run, args=(stop, 0.01))
    thread.start()
    try:
        wait_until(lambda: blind.errors >= 2)
    finally:
        stop.set()
        thread.join(5)
    assert system.tasks.get(task.id).status == TaskStatus.PENDING


class SlowClaims(TaskClient):
    """A client whose claims take a while and that records how many overlap; the claim
    of a task in ``fail`` raises the exception given for it."""

    def __init__(
        self, *args: Any, fail: Mapping[str, Exception] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fail = dict(fail or {})
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0

    def claim_task(
        self,
        task_id: str,
        agent_id: str | None = None,
        lease_seconds: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            threading.Event().wait(0.1)
            if task_id in self.fail:
                raise self.fail[task_id]
            return super().claim_task(task_id, agent_id, lease_seconds, job_id)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_a_pass_runs_claims_concurrently_up_to_the_limit(system: System) -> None:
    """Claims of one pass overlap, never more than claim_concurrency at once."""
    for i in range(3):
        system.agent(f"a{i}", max_load=3)
    tasks = [system.task(f"t{i}") for i in range(9)]
    client = SlowClaims(system.client.base_url, token="", retries=0)
    dispatcher = Dispatcher(
        system.registry,
        DefaultRouter(),
        AllowanceService(system.quota),
        client,
        claim_concurrency=3,
        claim_batch=1,
    )
    with client:
        report = dispatcher.run_once()
    assert sorted(report.dispatched) == sorted(t.id for t in tasks)
    assert sorted(report.dispatched.values()) == ["a0"] * 3 + ["a1"] * 3 + ["a2"] * 3
    assert client.most == 3


def test_a_failed_claim_in_a_pass_gives_back_quota_and_counts_a_retry(system: System) -> None:
    """Among concurrent claims, the one that fails is unreserved and retried later."""
    system.agent("a", daily_job_limit=10)
    good, bad = system.task("good"), system.task("bad")
    client = SlowClaims(
        system.client.base_url, token="", retries=0, fail={bad.id: APIError("boom", 500)}
    )
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(system.quota), client, claim_batch=1
    )
    with client:
        report = dispatcher.run_once()
    assert report.dispatched == {good.id: "a"}
    assert bad.id in report.failed
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (1, 1)
    assert system.tasks.get(bad.id).retry_count == 1
    assert dispatcher.errors == 1


def test_an_unexpected_error_fails_one_task_not_the_pass(system: System) -> None:
    """A claim that raises a non-SDK error fails its task; the pass sees every other claim
    through, and nothing stays reserved for it."""
    system.agent("a")
    tasks = [system.task(f"t{i}") for i in range(4)]
    bug = {tasks[0].id: RuntimeError("a bug")}
    client = SlowClaims(system.client.base_url, token="", retries=0, fail=bug)
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(system.quota), client, claim_batch=1
    )
    with client:
        report = dispatcher.run_once()
    assert sorted(report.dispatched) == sorted(t.id for t in tasks[1:])
    assert "a bug" in report.failed[tasks[0].id]
    assert system.quota.get_usage("a").active_jobs == 3
    assert dispatcher.errors == 1


class UnrecordableFailures(SlowClaims):
    """Claims as SlowClaims; recording a task's failure always fails."""

    def update_task(
        self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None
    ) -> Task:
        raise RuntimeError("cannot record")


def test_a_failure_that_cannot_be_recorded_stops_no_other_claim(system: System) -> None:
    """When recording one claim's failure raises, the pass still sees the others through."""
    system.agent("a")
    tasks = [system.task(f"t{i}") for i in range(3)]
    client = UnrecordableFailures(
        system.client.base_url, token="", retries=0, fail={tasks[0].id: APIError("no", 400)}
    )
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(system.quota), client, claim_batch=1
    )
    with client:
        report = dispatcher.run_once()
    assert sorted(report.dispatched) == sorted(t.id for t in tasks[1:])
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (2, 2)  # the refused one given back
    assert dispatcher.errors >= 1


def test_a_dead_attempts_reservation_does_not_hold_its_agent(system: System) -> None:
    """A task requeued after its agent died is routed again at once, though the dead
    attempt's reservation has not expired: it is cancelled before loads are counted."""
    system.agent("a", max_load=1)
    task = system.task("t")
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    system.tasks.requeue_expired()  # nothing expired yet
    lease = system.tasks.get(task.id).lease_expires_at
    assert lease is not None
    system.tasks._clock = lambda: lease.timestamp() + 1  # the agent died; its lease ran out
    assert [t.id for t in system.tasks.requeue_expired()] == [task.id]
    report = system.dispatcher.run_once()
    assert report.dispatched == {task.id: "a"}
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (2, 1)


def test_an_attempt_thought_dead_still_gets_its_usage_charged(system: System) -> None:
    """A runner whose lease ran out while it kept working settles later: its tokens are
    charged, though the dispatcher freed that attempt's slot for the retry."""
    system.agent("a", max_load=2)
    task = system.task("t")
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    first_job = system.tasks.get(task.id).job_id
    lease = system.tasks.get(task.id).lease_expires_at
    assert lease is not None
    system.tasks._clock = lambda: lease.timestamp() + 1
    assert [t.id for t in system.tasks.requeue_expired()] == [task.id]
    system.tasks._clock = time.time
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (2, 1)  # the dead attempt's slot freed
    late = system.quota.settle(first_job, 300, 100, QuotaEvent.JOB_COMPLETED, agent_id="a")
    assert (late.duplicate, late.tokens_charged) == (False, 400)
    assert system.quota.get_usage("a").tokens_used == 400


def test_a_previous_attempt_is_ended_once_not_every_pass(system: System) -> None:
    """A task waiting out its backoff keeps its old job id; it is expired once."""
    system.agent("a")
    task = system.task("t")
    assert system.dispatcher.run_once().dispatched == {task.id: "a"}
    later = datetime.now(UTC) + timedelta(hours=1)
    system.tasks.complete(task.id, TaskResult(success=False), "a", later.timestamp())
    ended: list[str] = []
    real_expire = system.quota.expire

    def expire(job_id: str) -> Any:
        ended.append(job_id)
        return real_expire(job_id)

    system.quota.expire = expire  # type: ignore[method-assign]
    for _ in range(3):
        assert task.id in system.dispatcher.run_once().waiting  # in backoff
    assert ended == [system.tasks.get(task.id).job_id]


@pytest.mark.parametrize(
    ("name", "bad"),
    [("claim_concurrency", v) for v in (0, -1, 65, 1.5, True)]
    + [("claim_batch", v) for v in (0, 101, 2.0, False)],
)
def test_claim_concurrency_and_batch_must_be_in_range(system: System, name: str, bad: Any) -> None:
    """claim_concurrency (1-64) and claim_batch (1-100) out of range are ConfigErrors."""
    with pytest.raises(ConfigError, match=name):
        Dispatcher(
            system.registry,
            DefaultRouter(),
            AllowanceService(system.quota),
            system.client,
            **{name: bad},
        )


class BatchClaims(TaskClient):
    """Records each batch of claims sent; ``before`` runs first (a rival's move), then
    ``error`` is raised after (``reach_server``) or instead of sending the batch."""

    def __init__(
        self,
        base_url: str,
        *,
        before: Any = None,
        error: Exception | None = None,
        reach_server: bool = True,
    ) -> None:
        super().__init__(base_url, token="", retries=0)
        self.before, self.error, self.reach_server = before, error, reach_server
        self.batches: list[list[str]] = []
        self.single = 0

    def claim_tasks(self, claims: Sequence[Claim]) -> list[Task | APIError]:
        self.batches.append([claim.task_id for claim in claims])
        if self.before is not None:
            self.before()
        answers = super().claim_tasks(claims) if self.reach_server else []
        if self.error is not None:
            raise self.error
        return answers

    def claim_task(self, task_id: str, *args: Any, **kwargs: Any) -> Task:
        self.single += 1
        return super().claim_task(task_id, *args, **kwargs)


def batching(system: System, batch: int = 50, **script: Any) -> BatchClaims:
    """Make the system's dispatcher claim through a BatchClaims client."""
    client = BatchClaims(system.client.base_url, **script)
    system.dispatcher.client, system.dispatcher.claim_batch = client, batch
    return client


def test_a_pass_claims_in_batches(system: System) -> None:
    """Nine tasks with claim_batch=4 are claimed in three requests, in urgency order,
    each task in its routed agent's name with its own reservation."""
    for i in range(3):
        system.agent(f"a{i}", max_load=3, concurrent_jobs=3)
    ranks = [Priority.LOW, Priority.CRITICAL, Priority.MEDIUM, Priority.HIGH]
    tasks = [system.task(f"t{i}", priority=ranks[i % 4]) for i in range(9)]
    client = batching(system, 4)
    report = system.dispatcher.run_once()
    # the last one alone goes to the per-task endpoint
    assert [len(batch) for batch in client.batches] == [4, 4] and client.single == 1
    by_id = {task.id: task for task in tasks}
    sent = [by_id[task_id] for batch in client.batches for task_id in batch]
    assert sent == sorted(sent, key=lambda t: (t.priority.rank, t.created_at, t.id))
    assert sorted(report.dispatched) == sorted(t.id for t in tasks)
    stored = [system.tasks.get(task.id) for task in tasks]
    assert [t.claimed_by for t in stored] == [report.dispatched[t.id] for t in stored]
    assert len({t.job_id for t in stored}) == 9 and all(t.job_id for t in stored)
    assert [system.quota.get_usage(f"a{i}").active_jobs for i in range(3)] == [3, 3, 3]
    assert len(system.events.of(EventType.TASK_DISPATCHED)) == 9


def test_a_claim_refused_in_a_batch_leaves_the_others_made(system: System) -> None:
    """A task taken by a rival before the batch lands is refused alone (409: waiting,
    its quota given back); the batch's other claims are made."""
    system.agent("a", daily_job_limit=10)
    first, second, third = system.task("t1"), system.task("t2"), system.task("t3")
    batching(system, before=lambda: system.tasks.claim(second.id, "rival", 60))
    report = system.dispatcher.run_once()
    assert report.dispatched == {first.id: "a", third.id: "a"}
    assert report.waiting[second.id].startswith("claimed elsewhere")
    usage = system.quota.get_usage("a")
    assert (usage.jobs_started, usage.active_jobs) == (2, 2)
    assert system.tasks.get(second.id).retry_count == 0
    assert system.dispatcher.errors == 0


@pytest.mark.parametrize("landed", [True, False], ids=["batch made", "batch not made"])
def test_a_batch_whose_answer_is_lost_is_settled_claim_by_claim(
    system: System, landed: bool
) -> None:
    """No answer to a batch: each claim is withdrawn. Made -> dispatched, the quota kept
    for the runner; not made -> given back and counted as a failure."""
    system.agent("a", daily_job_limit=10)
    tasks = [system.task(f"t{i}") for i in range(3)]
    batching(system, error=TransportError("lost"), reach_server=landed)
    report = system.dispatcher.run_once()
    usage = system.quota.get_usage("a")
    if landed:
        assert sorted(report.dispatched) == sorted(t.id for t in tasks)
        assert (usage.jobs_started, usage.active_jobs) == (3, 3)
    else:
        assert sorted(report.failed) == sorted(t.id for t in tasks)
        assert (usage.jobs_started, usage.active_jobs) == (0, 0)
        assert all(system.tasks.get(t.id).retry_count == 1 for t in tasks)


@pytest.mark.parametrize("status", [404, 405])
def test_a_task_api_without_batch_claims_gets_one_claim_per_request(
    system: System, status: int
) -> None:
    """A batch answered 404/405 (no such route) is sent again one claim per request,
    and later passes send no batch at all."""
    system.agent("a", daily_job_limit=10)
    tasks = [system.task(f"t{i}") for i in range(3)]
    missing = APIError("Not Found", status, from_response=True)
    client = batching(system, error=missing, reach_server=False)
    report = system.dispatcher.run_once()
    assert sorted(report.dispatched) == sorted(t.id for t in tasks)
    assert (len(client.batches), client.single) == (1, 3)
    more = [system.task(f"u{i}") for i in range(2)]
    assert sorted(system.dispatcher.run_once().dispatched) == sorted(t.id for t in more)
    assert (len(client.batches), client.single) == (1, 5)
    assert system.quota.get_usage("a").jobs_started == 5


def test_claims_of_earlier_passes_count_as_load(system: System) -> None:
    """A task claimed but not yet started by its agent still fills it: no routing past max_load."""
    system.agent("a", max_load=1)
    system.agent("b", max_load=1)
    first, second, third = system.task("1"), system.task("2"), system.task("3")
    assert system.dispatcher.run_once().dispatched == {first.id: "a", second.id: "b"}
    # the agents have not polled yet: the registry still says load 0 for both
    assert [a.current_load for a in system.registry.list()] == [0, 0]
    report = system.dispatcher.run_once()
    assert report.dispatched == {}
    assert third.id in report.waiting


def test_agent_without_allowance_is_skipped_not_a_failure(system: System) -> None:
    """An agent with no allowance is passed over for the next; alone, the task waits."""
    system.registry.register(AgentInfo(id="a-new", capabilities=["py"]))
    system.agent("b-ok", "py")
    task = system.task("t", "py")
    assert system.dispatcher.run_once().dispatched == {task.id: "b-ok"}
    system.registry.deregister("b-ok")
    lonely = system.task("u", "py")
    report = system.dispatcher.run_once()
    assert "no allowance for agent 'a-new'" in report.waiting[lonely.id]
    assert system.tasks.get(lonely.id).retry_count == 0
    assert system.dispatcher.errors == 0


class PoisonStore(MemoryTaskStore):
    """Claims of ``bad`` raise a non-SDK error (a corrupt record, say); others may be
    slowed down by ``delay`` seconds each."""

    def __init__(self, bad: str = "", delay: float = 0.0) -> None:
        super().__init__()
        self.bad, self.delay = bad, delay

    def claim(self, task_id: str, *args: Any, **kwargs: Any) -> Task:
        if task_id == self.bad:
            raise KeyError("corrupt record")
        time.sleep(self.delay)
        return super().claim(task_id, *args, **kwargs)


def dispatcher_over(
    store: MemoryTaskStore, url: str, **options: Any
) -> tuple[Dispatcher, MemoryAllowanceStore]:
    """A dispatcher for one agent "a" (10 jobs, 10 at once) against the server at ``url``."""
    registry, quota = MemoryRegistry(), MemoryAllowanceStore()
    registry.register(AgentInfo(id="a", max_load=10))
    quota.set_allowance(AgentAllowance(agent_id="a", daily_job_limit=10))
    client = TaskClient(url, token="", retries=0, timeout=options.pop("timeout", 10.0))
    return Dispatcher(registry, DefaultRouter(), AllowanceService(quota), client, **options), quota


def test_a_poison_claim_fails_alone_in_its_batch() -> None:
    """A claim the server fails unexpectedly (500) is that task's failure only: the rest
    of its batch is claimed."""
    store = PoisonStore()
    tasks = [store.create(Task(title=f"t{i}")) for i in range(5)]
    store.bad = tasks[0].id
    with running_server(store, requeue_interval=None) as url:
        dispatcher, quota = dispatcher_over(store, url)
        report = dispatcher.run_once()
        dispatcher.client.close()
    assert sorted(report.dispatched) == sorted(t.id for t in tasks[1:])
    assert list(report.failed) == [tasks[0].id]
    assert [store.get(t.id).retry_count for t in tasks] == [1, 0, 0, 0, 0]
    assert quota.get_usage("a").active_jobs == 4


def test_a_slow_batch_makes_no_claim_after_its_time_limit() -> None:
    """A batch slower than half the client's timeout: the server stops beginning claims
    (429 each, waiting: no retry counted, quota given back), so nothing is claimed after
    the dispatcher stopped listening and every running task holds its reservation."""
    store = PoisonStore(delay=0.2)
    tasks = [store.create(Task(title=f"t{i}")) for i in range(10)]
    with running_server(store, requeue_interval=None) as url:
        # time_limit 1 s: about 5 claims begin, the answer comes at about 1.2 s
        dispatcher, quota = dispatcher_over(store, url, timeout=2.0, claim_batch=10)
        report = dispatcher.run_once()
        time.sleep(1.0)  # had the server gone on, it would claim the rest now
        dispatcher.client.close()
    claimed = [t for t in tasks if store.get(t.id).status is TaskStatus.IN_PROGRESS]
    assert 1 <= len(report.dispatched) == len(claimed) < 10
    assert all(why.startswith("claim not attempted") for why in report.waiting.values())
    assert len(report.waiting) == 10 - len(claimed)
    assert quota.get_usage("a").active_jobs == len(claimed)
    assert all(store.get(t.id).retry_count == 0 for t in tasks)


def test_without_batch_claims_the_claims_still_run_concurrently(system: System) -> None:
    """After a 404 for its batch, a dispatcher's claims overlap (claim_concurrency)
    as with claim_batch=1, in the pass that found out and in later ones."""
    system.agent("a", daily_job_limit=20)
    for i in range(8):
        system.task(f"t{i}")

    class NoBatches(SlowClaims):
        def claim_tasks(self, claims: Sequence[Claim]) -> list[Task | APIError]:
            raise APIError("Not Found", 404, from_response=True)

    client = NoBatches(system.client.base_url, token="", retries=0)
    dispatcher = Dispatcher(
        system.registry, DefaultRouter(), AllowanceService(system.quota), client,
        claim_concurrency=4,
    )  # fmt: skip
    with client:
        assert len(dispatcher.run_once().dispatched) == 8
        assert client.most == 4
        client.most = 0
        for i in range(8):
            system.task(f"u{i}")
        assert len(dispatcher.run_once().dispatched) == 8
        assert client.most == 4
