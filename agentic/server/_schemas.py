"""Request and response bodies of the task API that are not shared models.

Every request body is a :class:`RequestBody` (``extra="forbid"``), nested objects
included: a field the server does not know is refused with 422 (``_errors`` says
which, what it may have meant and what is accepted), never silently dropped. The
shared models (``Task``, ``TaskResult``, ``TaskUpdate``) stay lenient for what a
client reads; the bodies here are their strict twins.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..events import Event
from ..models import MAX_COUNT, Priority, Task, TaskResult, TaskUpdate
from ..stores._tasks import MAX_REASON

__all__ = [
    "MAX_CLAIM_BATCH",
    "AgentRequest",
    "AppendResponse",
    "ClaimBatch",
    "ClaimItem",
    "ClaimOutcome",
    "ClaimRequest",
    "ClaimResults",
    "CompleteRequest",
    "ErrorBody",
    "EventPageBody",
    "HealthBody",
    "LoggedEventBody",
    "LeaseRequest",
    "LogLines",
    "LogPageBody",
    "NewTask",
    "ReleaseRequest",
    "RequestBody",
    "ResultBody",
    "RetryRequest",
    "RetryResult",
    "RunSeenBody",
    "TaskResponse",
    "UpdateBody",
]

# A lease of more than a week is almost certainly a unit mistake (ms for s).
MAX_LEASE_SECONDS = 7 * 24 * 3600.0
#: claims in one POST /api/tasks/claims
MAX_CLAIM_BATCH = 100


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestBody(BaseModel):
    """The base of every request body (and of every object nested in one): an unknown
    field is a 422, not ignored. Listed last among a body's bases, so that its
    ``extra="forbid"`` wins over a shared model's ``extra="ignore"``.

    A new request field therefore needs a feature in the health check that clients
    look for before sending it: a server older than the field refuses the body."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Body):
    """Every error answer. ``details`` is a string, as go-agentic's client decodes it."""

    code: int
    message: str
    details: str | None = None


class ResultBody(TaskResult, RequestBody):
    """A TaskResult sent to the server (a new task's ``result``)."""


class NewTask(Task, RequestBody):
    """A task to create, as go-agentic sends it: ``""`` priority means medium."""

    title: str = Field(max_length=1000)
    result: ResultBody | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _empty_priority(cls, value: Any) -> Any:
        return Priority.MEDIUM if value in ("", None) else value

    @field_validator("title")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("blank", "title must not be blank")
        return value


class RunSeenBody(RequestBody):
    """``{"reruns", "retry_count"}``: the pending task an update was computed from, as
    the asker read it (``stores.base.RunSeen``; feature ``update_fencing``)."""

    reruns: int = Field(ge=0, le=MAX_COUNT)
    retry_count: int = Field(ge=0, le=MAX_COUNT)


class UpdateBody(TaskUpdate, RequestBody):
    """A partial update (PATCH): only these fields; the rest of a task is set when it
    is created. ``if_pending`` (``update_fencing``) is its condition, not a field it
    sets: applied only while the task is still pending in that run with that retry
    count, else 409 and nothing changes."""

    if_pending: RunSeenBody | None = None


class HealthBody(_Body):
    """The health check: ``status`` "ok", the server's version, and its ``features``
    beyond go-agentic's API (``attempt_fencing``, ``batch_claims``, ``claim_fencing``,
    ``long_polls``, ...; ``event_log`` when it serves ``GET /api/events``)."""

    status: str
    version: str = ""
    features: list[str] = Field(default_factory=list)
    #: the id of the store the server serves ("" for memory://, or unknown), so a
    #: client reading a store directly can tell whether it is the same one
    store_id: str = ""


class TaskResponse(_Body):
    """``{"task", "message"}``: the answer to claim and complete (go-agentic's)."""

    task: Task
    message: str = ""


class AgentRequest(RequestBody):
    """Names the agent a call is made for; an agent token may leave it out."""

    agent_id: str = Field(default="", max_length=256)


def _fence() -> Any:
    # One definition, so the three fenced bodies document the field alike in OpenAPI.
    return Field(
        default=None,
        max_length=256,
        description="the job id of the claim this call belongs to: a stale attempt (the"
        " task was claimed again since) gets 409; leave it out to skip the check",
    )


class ReleaseRequest(AgentRequest):
    """Release: ``{"agent_id", "job_id", "reason"}``, all optional; the reason goes
    with the ``task_requeued`` event the store records."""

    job_id: str | None = _fence()
    reason: str = Field(default="", max_length=MAX_REASON)


class _Lease(AgentRequest):
    lease_seconds: float | None = Field(default=None, gt=0, le=MAX_LEASE_SECONDS)


class LeaseRequest(_Lease):
    """Renew a lease: ``{"agent_id", "lease_seconds", "job_id"}``."""

    job_id: str | None = _fence()


class ClaimRequest(_Lease):
    """``{"agent_id"}``, optionally with a lease other than the server's default and
    the ``job_id`` of the quota reservation made for this attempt."""

    job_id: str = Field(default="", max_length=256)


class WithdrawRequest(RequestBody):
    """``{"job_id"}``: the claim, made under this job id, whose answer was lost."""

    job_id: str = Field(min_length=1, max_length=256)


class WithdrawResult(_Body):
    """``{"made", "message"}``: whether the claim was made. When not, it never will be."""

    made: bool
    message: str = ""


class RetryRequest(RequestBody):
    """Retry: ``{"reruns"}``, optional: the task's ``reruns`` the asker saw, so that
    the retry is made once however often it is asked (``retry_reruns``)."""

    reruns: int | None = Field(default=None, ge=0, le=2**50)


class RetryResult(_Body):
    """``{"task", "unblocked", "repeated", "message"}``: a failed task retried, as it
    now is, and the ids of the tasks its failure blocked that are pending again;
    ``repeated`` when it had been retried already since the ``reruns`` asked with
    (nothing changed)."""

    task: Task
    unblocked: list[str]
    repeated: bool = False
    message: str = ""


class ClaimItem(ClaimRequest):
    """One claim of a batch: a claim request and the id of the task to claim."""

    task_id: str = Field(min_length=1, max_length=256)


class ClaimBatch(RequestBody):
    """``{"claims": [...], "time_limit": seconds}``: claims made one by one, in order,
    in one request; those not begun within ``time_limit`` are not made (429)."""

    claims: list[ClaimItem] = Field(min_length=1, max_length=MAX_CLAIM_BATCH)
    time_limit: float = Field(default=5.0, gt=0, le=300)


class ClaimOutcome(_Body):
    """One claim's answer: ``code`` is the status its own ``POST .../claim`` would
    have answered; on 200 ``task`` is the claimed task, else ``message`` and
    ``details`` are its error's."""

    task_id: str
    code: int
    message: str = ""
    details: str | None = None
    task: Task | None = None


class ClaimResults(_Body):
    """``{"results": [...]}``, one per claim asked, in the same order."""

    results: list[ClaimOutcome]


class CompleteRequest(TaskResult, RequestBody):
    """A TaskResult, plus the optional ``agent_id`` of the holder and ``job_id`` of its
    claim (each checked when given)."""

    agent_id: str = Field(default="", max_length=256)
    job_id: str | None = _fence()

    def result(self) -> TaskResult:
        return TaskResult.model_validate(self.model_dump(exclude={"agent_id", "job_id"}))


class LogLines(RequestBody):
    """``{"lines": [...]}``: log lines to append, each stored as one entry."""

    lines: list[str]


class AppendResponse(_Body):
    """The offset after the last stored line."""

    next_offset: int


class LogPageBody(_Body):
    """A page of log lines; ask again from ``next_offset`` for more."""

    lines: list[str]
    offset: int
    next_offset: int


class LoggedEventBody(_Body):
    """One event of the log with its ``offset`` (from 1, in append order)."""

    offset: int
    event: Event


class EventPageBody(_Body):
    """``GET /api/events``: the events after the offset asked for, oldest first, and
    the offset of the newest event in the log (a gap before the first one means the
    events between were trimmed)."""

    events: list[LoggedEventBody]
    last_offset: int
