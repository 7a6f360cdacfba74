"""The store interfaces every backend implements (memory, SQLite, Redis).

Contracts written here are what the shared contract tests in ``tests/`` check on
every backend; a backend that cannot keep one must not pretend to.

Common rules:

* Every method is one atomic step on its backend (memory: one lock; SQLite: one
  transaction; Redis: one command or one Lua script call).
* Methods that return collections return fully built lists: no lock, transaction or
  cursor is held while the caller's code runs.
* Backend exceptions never leak; they become :class:`~agentic.errors.StoreError`
  (``raise ... from exc``).
* Time comes from the store's clock: an injectable ``clock()`` returning epoch
  seconds for memory and SQLite; Redis uses the server's ``TIME`` unless a clock is
  injected (tests only).
"""

from __future__ import annotations

import abc
import builtins
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, Literal, Protocol, Self, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from ..errors import ConfigError, NotFoundError, StoreError
from ..events import Event
from ..models import (
    MAX_COUNT,
    STORED,
    AgentAllowance,
    AgentInfo,
    AgentStatus,
    ModelQuota,
    ModelUsage,
    Priority,
    QuotaCheckResult,
    QuotaEvent,
    Reservation,
    Settlement,
    Task,
    TaskResult,
    TaskStatus,
    TaskUpdate,
    UsageRecord,
)

__all__ = [
    "AgentRegistry",
    "AllowanceStore",
    "Buckets",
    "Closeable",
    "DEFAULT_HEARTBEAT_TTL",
    "Ending",
    "EventLog",
    "FINAL_OUTCOMES",
    "LogPage",
    "LoggedEvent",
    "MAX_READ",
    "Notices",
    "Retried",
    "RunSeen",
    "Subscription",
    "TRIM_STEP",
    "TaskStore",
    "WAIT_POLL",
    "event_json",
    "final_outcome",
    "no_allowance",
    "no_reservation",
    "parse_events",
    "parse_stored",
    "require_consumer",
    "require_amount",
    "require_count",
    "require_id",
    "require_page",
    "require_valid",
    "require_wait",
    "status_for_load",
    "ttl_seconds",
]


def require_id(kind: str, value: str) -> str:
    """Reject an empty id before it reaches a backend."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{kind} must be a non-empty string, got {value!r}")
    return value


_Checked = TypeVar("_Checked", bound=BaseModel)


def require_valid(kind: str, value: _Checked) -> _Checked:
    """``value`` checked again before it is stored: ``model_copy(update=...)`` and
    attributes set after a model was built skip its checks, and a store must not keep
    what it cannot read back (an infinite duration is written as JSON null). A
    ConfigError names each field refused."""
    try:
        return type(value).model_validate(value.model_dump())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}:"
            f" {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid {kind}: {problems}") from None


def parse_stored(model: type[_Checked], raw: str | bytes, where: str) -> _Checked:
    """A ``model`` from the JSON a store kept (``where``: the store, for the message).
    A record that does not parse (damaged, or written by hand) is a StoreError saying
    it is corrupt, the same on every backend; a record within the model's rules but
    past a bound added since it was written still loads (``models.STORED``)."""
    try:
        return model.model_validate_json(raw, context=STORED)
    except ValidationError as exc:
        raise StoreError(f"corrupt {model.__name__} JSON in {where}: {exc}") from exc


#: the outcomes that may settle a job
FINAL_OUTCOMES = (QuotaEvent.JOB_COMPLETED, QuotaEvent.JOB_FAILED, QuotaEvent.JOB_CANCELLED)


def final_outcome(outcome: QuotaEvent | str) -> QuotaEvent:
    """``outcome`` as a QuotaEvent that can settle a job (not job_started)."""
    try:
        event = QuotaEvent(outcome)
    except ValueError:
        event = None
    if event not in FINAL_OUTCOMES:
        raise ConfigError(
            f"settle needs a final outcome ({', '.join(o.value for o in FINAL_OUTCOMES)}),"
            f" got {outcome!r}"
        )
    return event


def no_allowance(agent_id: str) -> NotFoundError:
    """The fail-closed error for an agent without an allowance."""
    return NotFoundError(f"no allowance for agent {agent_id!r}: set one before it takes work")


#: How a reservation ends: ``settle`` charges and records; ``unreserve`` (the job never
#: started) also takes back its job and request; ``expire`` frees the hold as its expiry
#: would; these two record nothing, so a later settle still charges. ``withdraw``:
#: unreserve's undoing, if held, and the job id recorded as withdrawn (see the store).
Ending = Literal["settle", "unreserve", "expire", "withdraw"]


def no_reservation(job_id: str, ending: Ending | Literal["extend"] = "settle") -> NotFoundError:
    """The error for ending (or extending) a job that has no live reservation."""
    if ending != "settle":
        return NotFoundError(
            f"no live reservation for job {job_id!r} (never reserved, or expired): nothing"
            f" to {ending}"
        )
    return NotFoundError(
        f"no live reservation for job {job_id!r} (never reserved, or expired);"
        " pass agent_id and model to charge it anyway"
    )


def require_count(kind: str, value: int) -> int:
    """Reject a negative or non-integer count (tokens, jobs, load)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{kind} must be an integer >= 0, got {value!r}")
    if value >= 2**63:  # what SQLite and Redis integers hold
        raise ConfigError(f"{kind} must be below 2**63, got {value}")
    return value


def require_amount(kind: str, value: int) -> int:
    """:func:`require_count` for an amount a store counts (tokens, jobs, a task's
    counts): at most ``models.MAX_COUNT`` (2**50), which every store counts exactly
    (Redis's Lua in doubles), so it is taken or refused alike on every backend."""
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_COUNT:
        raise ConfigError(f"{kind} must be at most 2**50 ({MAX_COUNT}), got {value}")
    return require_count(kind, value)


def settle_arguments(
    job_id: str, tokens_in: int, tokens_out: int, outcome: QuotaEvent | str, task_id: str
) -> QuotaEvent:
    """Check a settle's arguments before anything is charged (every store alike);
    the outcome as a :class:`QuotaEvent` that can settle a job."""
    require_id("job id", job_id)
    require_amount("tokens_in", tokens_in)
    require_amount("tokens_out", tokens_out)
    if task_id != "":  # None included: a ConfigError before anything is charged
        require_id("task id", task_id)
    return final_outcome(outcome)


def ttl_seconds(ttl: float | timedelta) -> float:
    """Seconds from a number or a timedelta; rejects negative values."""
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not 0 <= seconds < math.inf:
        raise ConfigError(f"ttl must be a number of seconds >= 0, got {seconds}")
    return seconds


def status_for_load(current_load: int, max_load: int) -> AgentStatus:
    """An online agent at ``max_load`` is busy; below it (or unlimited) it is available."""
    if max_load > 0 and current_load >= max_load:
        return AgentStatus.BUSY
    return AgentStatus.AVAILABLE


#: seconds an agent may go without a heartbeat before it counts as gone: the default
#: of ``dispatcher.heartbeat_ttl`` (reaped offline after it), and how long the agent
#: id lease of a runner that died blocks its replacement (the two agree on "dead")
DEFAULT_HEARTBEAT_TTL = 30.0


class Closeable:
    """Something holding connections or files: a store."""

    def close(self) -> None:
        """Release connections and files. Idempotent."""

    def store_id(self) -> str:
        """The id of the storage this store lives in, the same for every store in it
        (one SQLite file; one Redis database and prefix), so two processes can tell
        whether they share one; "" when it does not say (every store of this
        package says). A memory store's is ``memory:<random>``, its own: each
        instance is storage no other process (nor instance) sees. A Redis store
        raises StoreLostError when its id is no longer there (the store was emptied or
        replaced since it opened), an SQLite store when its path no longer names the
        file it opened."""
        return ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AgentRegistry(Closeable):
    """Where agents announce themselves and prove they are alive.

    * ``register(info)`` upserts; the first ``registered_at`` is kept; registering
      counts as a heartbeat; status follows load (at ``max_load`` → busy).
    * ``deregister(id)`` removes the agent (:class:`NotFoundError` if unknown).
    * ``heartbeat(id, load=None)`` stamps the time, optionally sets the load, turns an
      offline agent back online; :class:`NotFoundError` for an unknown or
      deregistered id (a heartbeat never resurrects a deregistered agent).
    * ``reap(ttl)`` marks offline every online agent whose last heartbeat is older
      than ``ttl`` and returns those ids (sorted). Costs O(stale), not O(all).
    * ``hold_lease(name, holder, ttl)`` takes the named lease for ``holder`` when
      nobody holds it or its holder let it run out, or extends it when ``holder``
      has it, until ``ttl`` seconds from now; returns who holds it after the call,
      in one atomic step (two callers never both get it). ``drop_lease(name,
      holder)`` gives it up, only if ``holder`` holds it. Dispatchers use one lease
      so that one of them is active and the others stand by; agent runners one per
      agent id (``agent:<id>``) so that one runner runs an agent's tasks.
    """

    @abc.abstractmethod
    def register(self, info: AgentInfo) -> AgentInfo:
        """Add or replace an agent; returns what is stored."""

    @abc.abstractmethod
    def deregister(self, agent_id: str) -> None:
        """Remove an agent."""

    @abc.abstractmethod
    def get(self, agent_id: str) -> AgentInfo:
        """One agent (a copy)."""

    @abc.abstractmethod
    def list(
        self, status: AgentStatus | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        """Agents sorted by id, optionally only those with a status / capability."""

    @abc.abstractmethod
    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        """Record that the agent is alive (and its load)."""

    @abc.abstractmethod
    def reap(self, ttl: float | timedelta) -> builtins.list[str]:
        """Mark stale agents offline; returns the ids newly marked."""

    @abc.abstractmethod
    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        """Take or extend the lease ``name`` for ``holder``; who holds it now."""

    @abc.abstractmethod
    def drop_lease(self, name: str, holder: str) -> None:
        """Give up the lease ``name`` if ``holder`` holds it."""


class AllowanceStore(Closeable):
    """Quota configuration, usage counters and atomic reservations.

    The data operations keep go-agentic's names and floors (counters never go below
    zero). Usage belongs to a period (the day in the store's timezone) and rolls over
    by itself: reading or writing in a new day starts from zero.

    ``reserve`` and ``settle`` are each ONE atomic step applying :mod:`agentic.quota`:

    * ``reserve(agent_id, model, tokens, job_id)`` checks every limit and, only if all
      pass, counts the job (jobs +1, active +1, tokens and cost reserved, one request
      in the model's hour). A denied reserve changes nothing and raises
      :class:`QuotaExceededError`; a missing allowance raises :class:`NotFoundError`
      (fail closed). Repeating a live job id returns the existing reservation; a job
      id already settled (or withdrawn) raises :class:`ConflictError`. It expires after
      the agent's ``max_job_duration`` (else the store default), freeing its slot and
      reserved tokens, charging nothing.
    * ``settle(job_id, tokens_in, tokens_out, outcome)`` drops the reservation, charges
      the agent and model per :func:`agentic.quota.charged_tokens` (a failed job by
      the owner's ``failure_charge`` as it reads at the settle), adds the cost and
      frees the slot. Repeating it returns the first result with ``duplicate=True``
      and changes nothing. When the reservation is gone (expired), pass ``agent_id``
      (and ``model``) so the tokens are still charged; without them it is
      :class:`NotFoundError`. The model charged (and named by the settlement and its
      events) is the reservation's, else the settle's ``model``: a job reserved
      with no model still charges the one its usage report names.
    * ``unreserve(job_id)`` undoes a reservation whose job never started (the claim
      it was made for was lost or refused): as if it had never been made, the job is
      not counted, its slot, tokens and cost are freed and its request leaves the
      model's hour. It leaves no settlement behind: a repeat is
      :class:`NotFoundError` (nothing held), and should the job run after all (a claim
      believed lost that was made) its ``settle`` with ``agent_id`` still charges the
      tokens, as after an expiry. A job already settled is a duplicate, unchanged.
      A job that started and was stopped is ``settle(..., JOB_CANCELLED)``
      instead: it counts as a job, its tokens are not charged.
    * ``withdraw(job_id)``, for a reserve whose answer was lost (it may land later):
      held, undone as by ``unreserve``; held or not, recorded settled as
      ``JOB_WITHDRAWN`` (nothing charged), so a reserve of it arriving later is
      :class:`ConflictError` holding nothing. A repeat is a duplicate, unchanged.
    * ``expire(job_id)`` ends a reservation now, as its expiry would: the slot and
      the reserved tokens and cost go back, the job stays counted, nothing is
      recorded, so the attempt's own ``settle`` (should it be alive after all)
      still charges what it used. For a dead attempt whose lease ran out.
    * ``extend(job_id)`` keeps a live reservation alive: its expiry becomes now plus
      the lifetime it was reserved with (:func:`agentic.quota.extended_expiry`),
      never earlier than it was. A runner calls it while the job runs, so a job
      longer than that lifetime keeps its slot; expiry is then only for jobs whose
      runner is gone. A reservation that is gone (settled, unreserved, expired, or
      past its expiry) is :class:`NotFoundError` and nothing changes.
    * ``check(agent_id, model, tokens)`` runs the same rules without changing anything.
    """

    # --- configuration ---
    @abc.abstractmethod
    def get_allowance(self, agent_id: str) -> AgentAllowance:
        """The agent's allowance (:class:`NotFoundError` when none is set)."""

    @abc.abstractmethod
    def set_allowance(self, allowance: AgentAllowance) -> None:
        """Create or replace an agent's allowance (usage is kept)."""

    @abc.abstractmethod
    def get_model_quota(self, model: str) -> ModelQuota:
        """The model's quota (:class:`NotFoundError` when none is set)."""

    @abc.abstractmethod
    def set_model_quota(self, quota: ModelQuota) -> None:
        """Create or replace a model's quota (usage is kept)."""

    @abc.abstractmethod
    def allowances(self) -> list[AgentAllowance]:
        """Every allowance, sorted by agent id."""

    # --- usage data operations (go-agentic's) ---
    @abc.abstractmethod
    def get_usage(self, agent_id: str) -> UsageRecord:
        """The agent's usage in the current period (zeros when none)."""

    @abc.abstractmethod
    def usages(self) -> list[UsageRecord]:
        """Current-period usage of every agent that has an allowance or usage, by id."""

    @abc.abstractmethod
    def increment_usage(self, agent_id: str, tokens: int, jobs: int) -> None:
        """tokens_used += tokens, jobs_started += jobs, active_jobs += jobs."""

    @abc.abstractmethod
    def decrement_active_jobs(self, agent_id: str) -> None:
        """active_jobs -= 1, never below zero."""

    @abc.abstractmethod
    def return_tokens(self, agent_id: str, tokens: int) -> None:
        """tokens_used -= tokens, never below zero."""

    @abc.abstractmethod
    def reset_usage(self, agent_id: str) -> None:
        """Zero tokens_used and jobs_started; live reservations keep their slots."""

    @abc.abstractmethod
    def get_model_usage(self, model: str) -> ModelUsage:
        """The model's usage in the current period and rolling hour."""

    @abc.abstractmethod
    def increment_model_usage(self, model: str, tokens: int) -> None:
        """Model tokens_used += tokens in the current period."""

    # --- atomic quota operations ---
    @abc.abstractmethod
    def check(self, agent_id: str, model: str = "", tokens: int = 0) -> QuotaCheckResult:
        """Would ``reserve`` pass now? Read-only."""

    @abc.abstractmethod
    def reserve(
        self, agent_id: str, model: str, tokens: int, job_id: str, task_id: str = ""
    ) -> Reservation:
        """Atomically check every limit and hold quota for one job (of task ``task_id``,
        when known: the threshold events it records name it)."""

    @abc.abstractmethod
    def settle(
        self,
        job_id: str,
        tokens_in: int,
        tokens_out: int,
        outcome: QuotaEvent,
        agent_id: str | None = None,
        model: str | None = None,
        task_id: str = "",
    ) -> Settlement:
        """Atomically end a job's reservation and charge what it used.

        ``task_id``: the task the job ran, named by the ``usage_recorded`` event a
        store that records events records (else ``""``).
        """

    @abc.abstractmethod
    def unreserve(self, job_id: str) -> Settlement:
        """Atomically undo the reservation of a job that never started."""

    @abc.abstractmethod
    def withdraw(self, job_id: str) -> Settlement:
        """Atomically undo a reservation that may not have landed yet; refuse it for good."""

    @abc.abstractmethod
    def expire(self, job_id: str) -> Settlement:
        """Atomically end a reservation now, as its expiry would."""

    @abc.abstractmethod
    def extend(self, job_id: str) -> Reservation:
        """Atomically push a live reservation's expiry to now plus its lifetime."""


class Buckets(Protocol):
    """Token buckets shared by the task API servers of one store (the rate limit
    holds across them). Raises :class:`StoreError` when the store fails."""

    def take(self, key: str, rate: float, burst: float) -> float:
        """Take a request from ``key``'s bucket (``rate`` a second, ``burst`` at most;
        a new bucket is full): 0 when it had one, else the seconds until it has."""


class Subscription(Protocol):
    """Notices as they arrive, on a connection of their own."""

    def receive(self, timeout: float) -> str | None:
        """The next notice, or None when none came within ``timeout`` seconds."""

    def close(self) -> None:
        """Unsubscribe and let the connection go."""


class Notices(Protocol):
    """A broadcast channel among the task API servers that share one store: each
    tells the others what it changed, so their long-polls wake at once. Delivery is
    at most once, to those listening when a notice is sent; every call raises
    :class:`StoreError` (or :class:`StoreUnavailableError`) when the store fails."""

    def publish(self, message: str) -> None:
        """Send ``message`` to every subscription (this process's own included)."""

    def listeners(self) -> int:
        """How many subscriptions a notice sent now would reach."""

    def subscribe(self) -> Subscription:
        """Start receiving notices."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """Log lines of a task from ``offset``; ask again with ``next_offset`` for more."""

    lines: builtins.list[str]
    offset: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class Retried:
    """What :meth:`TaskStore.retry` did: the task as it now is, and the ids of the
    tasks that were blocked by it and are pending again, sorted. ``repeated``: the
    retry asked for had been made already (the task was retried since the run the
    asker saw), so nothing changed."""

    task: Task
    unblocked: builtins.list[str]
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class RunSeen:
    """A pending task as an update's caller read it: its run (``reruns``, the
    operator's retries) and the failed attempts counted in that run
    (``retry_count``). Given to :meth:`TaskStore.update` as ``if_pending``, the
    update applies only while the task is still that: pending, in the same run, with
    the same count (so a failure computed from it is still the task's next one)."""

    reruns: int
    retry_count: int

    @classmethod
    def of(cls, task: Task) -> RunSeen:
        """The run and the count of ``task`` as read."""
        return cls(task.reruns, task.retry_count)


class TaskStore(Closeable):
    """Tasks, their claims, leases, retries, dependencies and log lines.

    * ``create(task, idempotency_key=None)``: an empty id, status or time means "the
      store decides" (new id, pending, now). Dependencies must exist. A task whose
      dependency is failed (dead-lettered) is created blocked, naming the blocker.
      The same idempotency key returns the task created first (a retried POST never
      creates two tasks), if it asks for the same task (the fields its creator
      decides); a key reused for another task is a ConflictError answered 422.
    * ``list(...)``: ordered by priority (critical first), then age, then id;
      ``labels`` means "has all of them", ``labels_within`` "has none but these"
      (what agents holding those capabilities could take; a task without labels
      passes, ``[]`` lists only those); ``ready=True`` means pending with every
      dependency completed. ``after`` (a task id) pages: only tasks after that one in
      this order, whatever its own state now (priority and creation time never
      change, so the order is stable); :class:`NotFoundError` for an unknown id.
    * ``claim(task_id, agent_id, lease_seconds, job_id="")``: ONE compare-and-set: pending with
      every dependency completed -> in_progress, claimed_by, claimed_at, lease. Two
      claimers never both win; the loser gets :class:`ConflictError` (so does a task
      that is not claimable); :class:`NotFoundError` for an unknown id. With a
      ``job_id``, a claim is idempotent and a job id claims a task once: a repeat of
      the claim that holds the task (same agent and job id) returns the task as it
      is; a job id whose attempt ended (failed, lease expired, released) or that was
      withdrawn gets :class:`ConflictError`.
    * ``withdraw_claim(task_id, job_id)``: settles the fate of a claim whose answer
      was lost, in one atomic step: True if it was made (the task carries its job
      id: the attempt's own reports settle its quota); otherwise the job id can never
      claim the task from then on, and False (its reservation is the caller's to
      give back). A claim still travelling to the store is thereby refused. On a
      completed task (no claim can land; its retired ids are dropped) the answer
      is True: the caller lets the reservation expire rather than take back one a
      job that ran may still settle. A failed task keeps its retired ids (a retry
      makes it claimable again), so it answers as an unfinished one.
    * ``renew(task_id, agent_id, lease_seconds, job_id=None)``: extends the lease of
      a task held by ``agent_id``; :class:`ConflictError` if someone else (or nobody)
      holds it.
    * ``release(task_id, agent_id=None, job_id=None)``: gives a claim back (pending
      again, no retry counted): for shutdowns and dispatch steps that failed after the
      claim. The claim's job id is dropped from the task and remembered as retired.
    * ``complete(task_id, result, agent_id=None, retry_at=None, job_id=None)``:
      success -> completed. Failure is a real failure: retry_count +1 and
      last_attempt = now; past ``max_retries`` the task becomes failed with the reason
      (the dead letter) and its dependents become blocked naming it; otherwise it is
      pending again with ``next_attempt_at = retry_at``.
    * Attempt fencing: renew, release and complete given a ``job_id`` act only on the
      claim made under that job id. If the task is not in progress, or was claimed
      again since (another ``job_id``, even by the same agent), they raise
      :class:`ConflictError` ("a stale attempt") and change nothing, checked in the
      same atomic step as the write. ``job_id=None`` skips the check (go-agentic's
      client sends none); two claims both made with ``""`` cannot be told apart.
    * ``retry(task_id, reruns=None)``: an operator's re-run of a failed task (dead-lettered or
      cancelled), in ONE atomic step: it is pending again as if new (retry count 0;
      no backoff, failure, result, progress or claim; its last job id retired), or
      blocked when a dependency of it is failed; and every blocked task below it
      finds its blockers again from its dependencies (dependencies first), pending
      again once none is left (a task also blocked by another failed task stays
      blocked, naming it; a blocked task names failed tasks only). Each task
      made pending records a ``task_requeued``. :class:`ConflictError` for a task
      in any other status (saying what that status allows), :class:`NotFoundError`
      for an unknown id. ``retry(task_id, reruns)`` makes it once: a task retried
      since its ``reruns`` was that count is answered as it is, ``repeated``, with
      nothing changed (even when that re-run failed again); a count ahead of the
      task's is a ConflictError.
    * ``update(task_id, update, if_pending=None)``: a partial update (see
      ``_tasks.updated`` for the status changes it may make). With ``if_pending`` (a
      :class:`RunSeen`, the task as the caller read it) it applies only while the
      task is pending in that run (``reruns``) with that ``retry_count``, checked in
      the same atomic step as the write; otherwise :class:`ConflictError` naming
      what changed, and nothing changes. The dispatcher's failure record is made so:
      computed from the listed task, it must not land on a task claimed, failed or
      retried since.
    * ``requeue_expired()``: every in_progress task whose lease has expired is treated
      as a failure (retry counted, dead letter past max_retries); returns the tasks
      changed. Costs O(expired).
    * ``append_logs`` / ``logs``: an append-only list of lines per task with offsets.
    """

    #: True when a call may wait long, on a lock held by another process (SQLite's
    #: writer lock): the task API then runs the store's calls in worker threads. A
    #: store whose every call is bounded by one round trip (memory; Redis, within its
    #: socket timeout) says False and is called on the server's event loop, which
    #: saves a thread hand-off (about 0.2 ms of CPU) per request.
    blocking: ClassVar[bool] = True

    @abc.abstractmethod
    def create(self, task: Task, idempotency_key: str | None = None) -> Task:
        """Store a new task and return it as stored."""

    @abc.abstractmethod
    def get(self, task_id: str) -> Task:
        """One task (:class:`NotFoundError` if unknown)."""

    @abc.abstractmethod
    def list(
        self,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        project: str | None = None,
        claimed_by: str | None = None,
        labels: builtins.list[str] | None = None,
        ready: bool | None = None,
        limit: int | None = None,
        after: str | None = None,
        labels_within: builtins.list[str] | None = None,
    ) -> builtins.list[Task]:
        """Tasks matching every given filter, most urgent and oldest first; with
        ``after``, only those that come after that task in this order (a page)."""

    @abc.abstractmethod
    def counts(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status, 0 for none), read at one
        instant, without listing them."""

    @abc.abstractmethod
    def claim(self, task_id: str, agent_id: str, lease_seconds: float, job_id: str = "") -> Task:
        """Atomically claim a claimable task for ``agent_id``.

        ``job_id`` is the quota reservation made for this attempt (stored on the task
        so the agent's runner settles usage under it). The lease runs ``lease_seconds``
        from now, a length the task records (``Task.lease_seconds``).
        """

    @abc.abstractmethod
    def withdraw_claim(self, task_id: str, job_id: str) -> bool:
        """Whether the claim made under ``job_id`` was made; if not, it never will be."""

    @abc.abstractmethod
    def renew(
        self, task_id: str, agent_id: str, lease_seconds: float, job_id: str | None = None
    ) -> Task:
        """Extend the lease of a task held by ``agent_id`` (under ``job_id`` if given) to
        ``lease_seconds`` from now, recording that length on the task."""

    @abc.abstractmethod
    def release(
        self,
        task_id: str,
        agent_id: str | None = None,
        job_id: str | None = None,
        reason: str = "",
    ) -> Task:
        """Give a claim back without counting a retry (only claim ``job_id`` if given).

        ``reason`` (why it is given back; at most 1,000 characters) goes with the
        ``task_requeued`` event a store that records events records.
        """

    @abc.abstractmethod
    def update(self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None) -> Task:
        """Apply a partial update (progress, notes, status, retry fields).

        ``if_pending``: the task as the caller read it; the update then applies only
        while the task is still pending in that run with that retry count, checked in
        the same atomic step (:class:`ConflictError` otherwise, nothing changed).
        """

    @abc.abstractmethod
    def complete(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        retry_at: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        """Finish a claimed task: completed, back to pending for a retry, or dead-lettered.

        Only the claim made under ``job_id`` when given (a stale attempt gets
        :class:`ConflictError`).
        """

    @abc.abstractmethod
    def retry(self, task_id: str, reruns: int | None = None) -> Retried:
        """Start a failed task afresh and unblock what its failure blocked.

        ``reruns``: the task's ``reruns`` the asker saw. Given, the retry is made once:
        asked again after the task was retried (a repeat after a lost answer, a second
        operator), it changes nothing and answers the task as it is, ``repeated``.
        """

    @abc.abstractmethod
    def requeue_expired(self) -> builtins.list[Task]:
        """Requeue (or dead-letter) every task whose lease expired."""

    @abc.abstractmethod
    def append_logs(self, task_id: str, lines: builtins.list[str]) -> int:
        """Append log lines; returns the offset after the last one."""

    @abc.abstractmethod
    def logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        """Log lines from ``offset``."""

    def notices(self) -> Notices | None:
        """The channel on which the servers sharing this store tell each other their
        changes; None where a store has none (memory: one process; SQLite: servers
        sharing a file see each other's changes at their long-polls' timeouts)."""
        return None

    def rate_buckets(self) -> Buckets | None:
        """The rate-limit buckets the servers sharing this store share; None where a
        store has none (each server process then keeps its own)."""
        return None


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event as the log holds it: ``offset`` is its position (from 1)."""

    offset: int
    event: Event


#: Most events one read returns.
MAX_READ = 1000
#: Most events one trim step drops (one transaction / script call).
TRIM_STEP = 5000


def require_page(after: int, limit: int) -> None:
    """The arguments of :meth:`EventLog.read`: ``after`` >= 0, ``limit`` in 1..MAX_READ."""
    require_count("after", after)
    if not 1 <= limit <= MAX_READ:
        raise ConfigError(f"limit must be from 1 to {MAX_READ}, got {limit}")


#: seconds between reads of a log that cannot tell a waiter of appends (SQLite)
WAIT_POLL = 0.2


def require_wait(after: int, timeout: float) -> None:
    """Refuse a negative offset or timeout of :meth:`EventLog.wait`."""
    require_count("after", after)
    if not timeout >= 0:
        raise ConfigError(f"timeout must be a number of seconds >= 0, got {timeout}")


def require_consumer(name: str) -> str:
    """A consumer name: non-empty, at most 200 characters."""
    if not name or len(name) > 200:
        raise ConfigError(f"consumer name must be 1-200 characters, got {name!r}")
    return name


def event_json(event: Event) -> str:
    """``event`` as the JSON a store keeps; a payload JSON cannot hold is a ConfigError."""
    try:
        return event.model_dump_json()
    except PydanticSerializationError as exc:
        raise ConfigError(
            f"event {event.id} ({event.type.value}): its payload is not JSON ({exc}); give"
            " plain values (str, numbers, bools, None, lists, dicts)"
        ) from exc


def parse_events(rows: Iterable[tuple[int, str | bytes]], where: str) -> list[LoggedEvent]:
    """Stored (offset, JSON) rows as events, in order, up to the first that does not
    parse: a bad first row is a StoreError naming its offset (see EventLog.read)."""
    out: list[LoggedEvent] = []
    for offset, body in rows:
        try:
            out.append(LoggedEvent(offset, Event.model_validate_json(body, context=STORED)))
        except ValidationError as exc:
            if out:
                break  # the good events first; the next read starts at the bad one
            raise StoreError(
                f"the event at offset {offset} in {where} cannot be read (written by a newer"
                f" agentic, or damaged): {exc.errors()[0]['msg']}. Upgrade this agentic, or"
                f" read past it with after={offset} (a consumer: reset(name, {offset}))"
            ) from exc
    return out


class EventLog(Closeable):
    """The append-only log of lifecycle events, shared by every process on the store.

    * ``append(events)``: adds the events at the end, in order, in one atomic step,
      and returns their offsets. Offsets are consecutive integers from 1 in append
      order and are never reused, trims included. Appends are serialized, so a reader
      asking for what is after ``n`` never misses an event that is still kept; a jump
      in the offsets it reads means the events between were trimmed. An event whose
      ``id`` is already in the log is not added again: its offset is returned (a
      retried append adds nothing twice). An event whose payload is not JSON is a
      :class:`~agentic.errors.ConfigError` and nothing is appended.
    * ``read(after=0, limit=100)``: the events with an offset above ``after``, oldest
      first, at most ``limit``. An event of a type a newer version added is read with
      its type as written (``EventType.later``). An entry that cannot be read
      otherwise (damaged) ends the page: the events before it are returned, and a
      read that starts at it raises :class:`~agentic.errors.StoreError` naming its
      offset, so nothing is skipped in silence.
    * ``last_offset()``: the offset of the newest event ever appended (0 for none).
    * ``wait(after, timeout)``: whether an event with an offset above ``after`` is in
      the log (kept: a log trimmed empty has none), waiting up to ``timeout`` seconds
      for one to be appended by any process: at once on memory and Redis (``XREAD
      BLOCK``, on a pooled connection of its own while it blocks), within a 0.2 s
      poll on SQLite. Readers that are caught up wait here instead of sleeping.
    * ``commit(consumer, offset)``: a consumer's durable position. It only moves
      forward: a commit below the stored one changes nothing. ``committed(consumer)``
      reads it (0 for a consumer never seen); ``reset(consumer, offset)`` sets it to
      any value (to replay, or to step past an entry that cannot be read).
    * ``forget(consumer)``: drops a consumer's position (one that is gone for good no
      longer holds events back from a trim that spares unread ones); whether it had one.
    * ``trim(keep, up_to=None)``: drops all but the newest ``keep`` events, and with
      ``up_to`` none whose offset is above it (the slowest consumer's position, say);
      returns how many went. Their ids are forgotten with them (a retry of a trimmed
      event is a new event). Large trims go in steps, so other clients of the store
      are not held up.
    """

    #: True when :meth:`wait` hears of appends by any process (it does not poll)
    hears_appends: ClassVar[bool] = False

    @abc.abstractmethod
    def append(self, events: builtins.list[Event]) -> builtins.list[int]:
        """Add ``events`` at the end of the log; their offsets."""

    @abc.abstractmethod
    def read(self, after: int = 0, limit: int = 100) -> builtins.list[LoggedEvent]:
        """Events after the offset ``after``, oldest first."""

    @abc.abstractmethod
    def last_offset(self) -> int:
        """The offset of the newest event appended, or 0."""

    def wait(self, after: int, timeout: float) -> bool:
        """Whether an event after ``after`` is there, waiting up to ``timeout``
        seconds. This version looks every :data:`WAIT_POLL` seconds; a store that
        hears of appends overrides it."""
        require_wait(after, timeout)
        deadline = time.monotonic() + timeout
        while not self._kept_after(after):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(WAIT_POLL, left))
        return True

    def _kept_after(self, after: int) -> bool:
        """Whether the log keeps an event after ``after`` (not merely appended one:
        a log trimmed empty keeps none, and a reader would find nothing)."""
        return bool(self.read(after, 1))

    @abc.abstractmethod
    def commit(self, consumer: str, offset: int) -> None:
        """Store ``consumer``'s position, if it moves forward."""

    @abc.abstractmethod
    def committed(self, consumer: str) -> int:
        """``consumer``'s stored position, or 0."""

    @abc.abstractmethod
    def consumers(self) -> dict[str, int]:
        """Every consumer with a stored position: name -> position, by name."""

    @abc.abstractmethod
    def reset(self, consumer: str, offset: int = 0) -> None:
        """Set ``consumer``'s position to ``offset``, back or forward."""

    @abc.abstractmethod
    def forget(self, consumer: str) -> bool:
        """Drop ``consumer``'s position; whether it had one."""

    @abc.abstractmethod
    def trim(self, keep: int, up_to: int | None = None) -> int:
        """Drop all but the newest ``keep`` events, none past offset ``up_to``; how
        many were dropped."""
