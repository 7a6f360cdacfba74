"""The data types every part of agentic shares (pydantic v2).

JSON field names are snake_case and match go-agentic's wire format, so a Task sent
by go-agentic's client (empty id and status, zero timestamps) is accepted as is:
``0001-01-01T00:00:00Z`` and empty strings in time fields mean "not set" (``None``).
All times are timezone-aware UTC ``datetime`` objects; durations are seconds.
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

__all__ = [
    "AgentAllowance",
    "AgentInfo",
    "AgentStatus",
    "AllowanceStatus",
    "FailureCharge",
    "ModelQuota",
    "ModelUsage",
    "Priority",
    "QuotaCheckResult",
    "QuotaEvent",
    "Reservation",
    "Settlement",
    "StatusSummary",
    "Task",
    "TaskResult",
    "TaskStatus",
    "TaskUpdate",
    "UsageRecord",
    "UsageReport",
    "utcnow",
]


#: the longest a job's quota reservation may live, in seconds (an allowance's
#: ``max_job_duration``, a store's ``reservation_ttl``): about 31 years, so that its
#: expiry stays a time every store can hold
MAX_RESERVATION_TTL = 1e9

#: the largest count limit of an allowance or a model quota (tokens, jobs, requests),
#: and the largest count a task holds: every store counts to it exactly (SQLite's
#: 64-bit integers; Redis's Lua doubles, exact below 2**53), and the sums made of a
#: few (used + reserved + a request; 5 * used against 4 * the limit) stay exact too
MAX_COUNT = 2**50
#: the largest cost ceiling, in cents a day ($10 million): its micro-cents (10**15) are
#: below MAX_COUNT, so the ceiling and the costs summed against it stay exact in Lua
MAX_COST_CEILING = 10**9
#: the largest price, in cents per million tokens ($10,000; a cent a token): the cost
#: of a job (tokens times a price, in micro-cents) stays a finite number everywhere
MAX_PRICE = 1e6

#: the validation context of a record read back from a store: the bounds above apply
#: to what is written (a constructor, ``require_valid``), not to what was stored before
#: they existed, which still loads (so it can be shown and lowered)
STORED = {"stored": True}


def _at_most(bound: float, said: str, *, stored_as_bound: bool = False) -> AfterValidator:
    """At most ``bound`` when written; past it when read back (``STORED``) as it was,
    or as the bound itself when ``stored_as_bound``: for a number of seconds, which no
    clock could add to a time past the bound (31 years is as good as longer)."""

    def check(value: float, info: ValidationInfo) -> float:
        if value <= bound:
            return value
        if not (info.context or {}).get("stored"):
            raise ValueError(f"must be at most {said}")
        return bound if stored_as_bound else value

    return AfterValidator(check)


_COUNT_LIMIT = _at_most(MAX_COUNT, "2**50 (1125899906842624), what every store counts exactly")
_CEILING = _at_most(
    MAX_COST_CEILING, "10**9 cents a day (1000000000): a larger one is not exact in every store"
)
_PRICE = _at_most(
    MAX_PRICE, "10**6 cents per million tokens (1000000): a larger one overflows the costs"
)
_DURATION = _at_most(MAX_RESERVATION_TTL, "1e9 seconds (about 31 years)", stored_as_bound=True)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _optional_time(value: Any) -> Any:
    """Map go's zero time and empty strings to ``None``; make naive datetimes UTC."""
    # Only go's "empty" scalars mean unset; anything else (lists, dicts) goes on to
    # pydantic, which rejects it with a 422-worthy validation error.
    if value is None or (isinstance(value, str) and value == ""):
        return None
    if isinstance(value, str) and value.startswith("0001-01-01"):
        return None
    if isinstance(value, datetime):
        if value.year == 1:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
    return value


def _to_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
        raise ValueError("out of range: a time must fall in years 1 to 9999 in UTC") from None


#: every time field: a time with an offset is kept in UTC, where every store keeps it,
#: so a time that UTC cannot hold is refused here, not stored unreadable
OptionalTime = Annotated[datetime | None, BeforeValidator(_optional_time), AfterValidator(_to_utc)]


class _Model(BaseModel):
    # Unknown JSON fields from newer peers are ignored rather than rejected, so an
    # older SDK keeps talking to a newer server.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Input(_Model):
    """A model people build in code (a task, an allowance, a quota): its constructor
    refuses a keyword that is no field. The SDK's own answers (a reservation, a
    settlement, a usage record) stay on ``_Model``: built on hot paths, never by hand.
    """

    #: the keywords the constructor takes: field names and their aliases
    _keywords: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        names = set(cls.model_fields)
        for field in cls.model_fields.values():
            aliases = field.validation_alias
            choices = aliases.choices if isinstance(aliases, AliasChoices) else [aliases]
            names.update(a for a in [field.alias, *choices] if isinstance(a, str))
        cls._keywords = frozenset(names)

    def __init__(self, /, **data: Any) -> None:
        # A keyword given to the constructor is code, not a newer peer's field: a typo
        # there (AgentAllowance(daily_tokens=5) for daily_token_limit) would silently
        # leave the limit at 0, unlimited. So it is an error, naming the close field.
        if not data.keys() <= self._keywords:
            raise TypeError(_unexpected(type(self), [k for k in data if k not in self._keywords]))
        super().__init__(**data)

    # Tells pydantic this is its own __init__: validation (JSON from the wire, rows
    # from a store) does not call it, so parsing stays lenient as said above.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


def _unexpected(model: type[BaseModel], unknown: list[str]) -> str:
    fields = sorted(model.model_fields)
    told = []
    for name in unknown:
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
        told.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"{model.__name__}() got unexpected keyword argument(s) {', '.join(told)};"
        f" its fields: {', '.join(fields)}"
    )


class TaskStatus(StrEnum):
    """Where a task is in its life; ``failed`` is the dead letter."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    BLOCKED = "blocked"
    FAILED = "failed"


class Priority(StrEnum):
    """Task priority, most urgent first."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical up to 3 for low: sort ascending to take the most urgent first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.MEDIUM: 2, Priority.LOW: 3}


class AgentStatus(StrEnum):
    """An agent's liveness and capacity state."""

    AVAILABLE = "available"
    BUSY = "busy"
    OFFLINE = "offline"


class AllowanceStatus(StrEnum):
    """Quota state: ``warning`` from 80% of a limit used, ``exceeded`` at 100%."""

    OK = "ok"
    WARNING = "warning"
    EXCEEDED = "exceeded"


class FailureCharge(StrEnum):
    """How much of a failed job's tokens its agent is charged (``AgentAllowance``)."""

    #: go-agentic's rule: half, rounded up (the settle gives back ``total // 2``)
    HALF = "half"
    #: every token: the daily token limit caps what the agent really spent
    FULL = "full"


class QuotaEvent(StrEnum):
    """The events of a usage report (go-agentic's ``record_usage`` entry point), and
    the outcome of a settlement."""

    JOB_STARTED = "job_started"
    JOB_COMPLETED = "job_completed"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    #: never reported: the outcome an ``AllowanceStore.withdraw`` records for a job
    #: whose reserve may have landed unseen (it never ran; nothing is charged)
    JOB_WITHDRAWN = "job_withdrawn"


class TaskResult(_Input):
    """What an agent reports when it finishes a task."""

    success: bool
    output: str = ""
    artifacts: list[str] = Field(default_factory=list)
    error_message: str = ""


class Task(_Input):
    """A unit of work. Fields after ``fail_reason`` are agentic's extensions."""

    id: str = ""
    title: str = ""
    description: str = ""
    priority: Priority = Priority.MEDIUM
    status: TaskStatus | None = None
    labels: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    created_at: OptionalTime = None
    updated_at: OptionalTime = None
    claimed_by: str = ""
    claimed_at: OptionalTime = None
    project: str = ""
    dependencies: list[str] = Field(default_factory=list)
    blockers: list[str] = Field(default_factory=list)
    max_retries: int = Field(default=3, ge=0)
    retry_count: int = Field(default=0, ge=0)
    last_attempt: OptionalTime = None
    fail_reason: str = ""
    # --- extensions ---
    next_attempt_at: OptionalTime = None
    lease_expires_at: OptionalTime = None
    #: the length of the lease the claim or its last renewal gave, in seconds (None
    #: when no lease runs, or from a server older than it): a runner taking the claim
    #: up again renews it for as long
    lease_seconds: float | None = Field(default=None, gt=0)
    progress: int = Field(default=0, ge=0, le=100)
    notes: str = ""
    model: str = ""
    estimated_tokens: int = Field(default=0, ge=0)
    #: the quota reservation of the current attempt, set by the claim; the runner
    #: settles usage under this id
    job_id: str = ""
    #: how many times the task was retried after it failed (``agentic retry``, the
    #: store's ``retry``): each retry starts a new run, with its own retry count
    reruns: int = Field(default=0, ge=0)
    result: TaskResult | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _empty_status(cls, value: Any) -> Any:
        # go-agentic's client sends "" for "let the server decide".
        return None if value == "" else value


class TaskUpdate(_Input):
    """A partial update of a task (PATCH); ``None`` fields are left unchanged."""

    status: TaskStatus | None = None
    progress: int | None = Field(default=None, ge=0, le=100)
    notes: str | None = None
    retry_count: int | None = Field(default=None, ge=0)
    last_attempt: OptionalTime = None
    next_attempt_at: OptionalTime = None
    fail_reason: str | None = None


class AgentInfo(_Input):
    """A registered agent. ``max_load == 0`` means unlimited."""

    id: str = Field(min_length=1)
    name: str = ""
    capabilities: list[str] = Field(default_factory=list)
    status: AgentStatus = AgentStatus.AVAILABLE
    last_heartbeat: OptionalTime = None
    current_load: int = Field(default=0, ge=0)
    max_load: int = Field(default=0, ge=0)
    registered_at: OptionalTime = None


class AgentAllowance(_Input):
    """Per-agent limits; 0 or empty means unlimited. ``max_job_duration`` is seconds.
    Counts are at most 2**50 (:data:`MAX_COUNT`), what every store counts exactly.

    ``failure_charge`` (ours; go-agentic has only its half) is what a failed job of
    this agent is charged: half its tokens, or all of them. Allowances stored
    before it existed read as ``half``.
    """

    agent_id: str = Field(min_length=1)
    daily_token_limit: Annotated[int, _COUNT_LIMIT] = Field(default=0, ge=0)
    daily_job_limit: Annotated[int, _COUNT_LIMIT] = Field(default=0, ge=0)
    concurrent_jobs: Annotated[int, _COUNT_LIMIT] = Field(default=0, ge=0)
    max_job_duration: Annotated[float, _DURATION] = Field(default=0, ge=0, allow_inf_nan=False)
    model_allowlist: list[str] = Field(default_factory=list)
    failure_charge: FailureCharge = FailureCharge.HALF


class ModelQuota(_Input):
    """Per-model limits shared by all agents; 0 means unlimited.

    ``cost_ceiling`` is in cents per period (day), at most 10**9; prices are cents per
    million input / output tokens, at most 10**6, and may be fractional; counts are at
    most 2**50.
    """

    model: str = Field(min_length=1)
    daily_token_budget: Annotated[int, _COUNT_LIMIT] = Field(default=0, ge=0)
    hourly_rate_limit: Annotated[int, _COUNT_LIMIT] = Field(default=0, ge=0)
    cost_ceiling: Annotated[int, _CEILING] = Field(default=0, ge=0)
    input_price: Annotated[float, _PRICE] = Field(default=0, ge=0, allow_inf_nan=False)
    output_price: Annotated[float, _PRICE] = Field(default=0, ge=0, allow_inf_nan=False)


class UsageRecord(_Model):
    """An agent's usage in the current period (``tokens_reserved`` is ours)."""

    agent_id: str
    tokens_used: int = 0
    jobs_started: int = 0
    active_jobs: int = 0
    period_start: OptionalTime = None
    tokens_reserved: int = 0


class ModelUsage(_Model):
    """A model's usage in the current period, across all agents.

    ``cost_used`` / ``cost_reserved`` are micro-cents (cents x 10^-6), integers so
    that every backend adds them up exactly alike.
    """

    model: str
    tokens_used: int = 0
    tokens_reserved: int = 0
    cost_used: int = 0
    cost_reserved: int = 0
    requests_last_hour: int = 0
    period_start: OptionalTime = None


class UsageReport(_Input):
    """go-agentic's usage report: one event of one job."""

    agent_id: str = Field(min_length=1)
    job_id: str = Field(min_length=1)
    model: str = ""
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    event: QuotaEvent
    timestamp: OptionalTime = None


class QuotaCheckResult(_Model):
    """The answer of a quota check. ``-1`` remaining means unlimited."""

    allowed: bool
    status: AllowanceStatus
    remaining_tokens: int = -1
    remaining_jobs: int = -1
    reason: str = ""
    reset_at: OptionalTime = None
    retry_after: float | None = None


class Reservation(_Model):
    """Quota held for one job between ``reserve`` and ``settle`` (or expiry).

    ``previous_status`` / ``status`` are the agent's allowance status before and
    after this reservation, so a caller can tell a threshold crossing apart from a
    repeat without any extra state.
    """

    job_id: str
    agent_id: str
    model: str = ""
    tokens: int = 0
    cost: int = 0
    created_at: OptionalTime = None
    expires_at: OptionalTime = None
    previous_status: AllowanceStatus = AllowanceStatus.OK
    status: AllowanceStatus = AllowanceStatus.OK


class Settlement(_Model):
    """The result of settling one job.

    ``duplicate`` is true when the job had already been settled: nothing changed
    and the first settlement's figures are returned.
    """

    job_id: str
    agent_id: str
    model: str = ""
    outcome: QuotaEvent
    tokens_charged: int = 0
    cost_charged: int = 0
    duplicate: bool = False
    previous_status: AllowanceStatus = AllowanceStatus.OK
    status: AllowanceStatus = AllowanceStatus.OK


class StatusSummary(_Model):
    """What ``agentic status`` shows; any part may be absent (empty)."""

    agents: list[AgentInfo] = Field(default_factory=list)
    pending_tasks: int = 0
    in_progress_tasks: int = 0
    allowance_remaining: dict[str, int] = Field(default_factory=dict)
