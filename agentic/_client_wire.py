"""What the task clients send and read: request paths and bodies, and answers decoded
into SDK values and errors. Apart from ``_async_client.py`` (and ``client.py``, made
from it), which keep the transport (retries, timeouts, the closed-client check) and
the public methods.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, TypeVar
from urllib.parse import quote
from urllib.request import getproxies

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError, field_validator

from .errors import APIError, ConfigError, ConflictError, NotFoundError
from .events import Event
from .models import STORED, Priority, Task, TaskStatus
from .retry import RetryPolicy, parse_retry_after
from .stores.base import LoggedEvent, require_id

__all__ = [
    "ANSWER",
    "CHANGES_HEADER",
    "FEATURES",
    "CLAIMS",
    "COUNTS",
    "EVENTS",
    "HTTP_RETRY",
    "MAX_CLAIM_BATCH",
    "MAX_WAIT",
    "NOT_SENT",
    "OFFSET",
    "PAGE",
    "RETRIED",
    "RETRY_STATUSES",
    "LOG_FULL",
    "STORE_LOST",
    "STREAM_READ_TIMEOUT",
    "TASK",
    "tls_verify",
    "TASKS",
    "WITHDRAWN",
    "Claim",
    "EventPage",
    "RetryDelay",
    "api_error",
    "claim_answers",
    "encode_body",
    "error_from",
    "fenced",
    "list_params",
    "parse",
    "same_source",
    "task_of",
    "task_path",
    "wait_param",
]

T = TypeVar("T")

#: the answer header of GET /api/tasks holding the watched topic's token (long-polls):
#: "<server process id>.<change count>"
CHANGES_HEADER = "X-Agentic-Changes"


#: how a 503 begins when the server's store was emptied or replaced under it (a Redis
#: restarted without persistence, a FLUSHDB; an SQLite file deleted or replaced): the
#: rest of the message says what to do
STORE_LOST = "the task server's store was lost"

#: the ``details`` of the 409 refusing log lines a task's log has no room for (the
#: server's ``max_log_lines``): a runner stops sending that task's lines
LOG_FULL = "log_full"

#: what this version's task API does beyond go-agentic's, as its health check lists it
#: (clients check for them: a server that predates one ignores what it needs, or, from
#: ``strict_bodies`` on, refuses a body holding a field it does not know with 422; so
#: a new request field comes with a feature here that clients check before sending it)
FEATURES = (
    "attempt_fencing",
    "batch_claims",
    "claim_fencing",
    "labels_within",
    "list_pages",
    "long_polls",
    "retry_reruns",
    "strict_bodies",
    "task_counts",
    "task_retry",
    "update_fencing",
)


def same_source(token: str, other: str) -> bool:
    """Whether two change tokens come from one server process (only then comparable)."""
    return token.partition(".")[0] == other.partition(".")[0]


class _Offset(BaseModel):
    next_offset: int


class _LogPageModel(_Offset):
    lines: list[str]
    offset: int


class _Answer(BaseModel):
    task: Task
    message: str = ""


class _ClaimOutcome(BaseModel):
    task_id: str
    code: int
    message: str = ""
    details: Any = None
    task: Task | None = None


class _ClaimResults(BaseModel):
    results: list[_ClaimOutcome]


class _Withdrawn(BaseModel):
    made: bool


class _Retried(BaseModel):
    task: Task
    unblocked: list[str] = []
    repeated: bool = False


class _LoggedEvent(BaseModel):
    offset: int
    event: Event

    @field_validator("event", mode="before")
    @classmethod
    def _as_stored(cls, value: object) -> object:
        # Read from the server's log: a type a newer agentic added is read as written.
        return value if isinstance(value, Event) else Event.model_validate(value, context=STORED)


class _EventPage(BaseModel):
    events: list[_LoggedEvent]
    last_offset: int


TASK = TypeAdapter(Task)
TASKS = TypeAdapter(list[Task])
COUNTS = TypeAdapter(dict[TaskStatus, int])
OFFSET = TypeAdapter(_Offset)
PAGE = TypeAdapter(_LogPageModel)
ANSWER = TypeAdapter(_Answer)
CLAIMS = TypeAdapter(_ClaimResults)
WITHDRAWN = TypeAdapter(_Withdrawn)
RETRIED = TypeAdapter(_Retried)
EVENTS = TypeAdapter(_EventPage)


def error_from(response: httpx.Response) -> APIError:
    """The SDK error for a non-2xx answer (go-agentic's checkResponse)."""
    status = response.status_code
    text = response.text
    message = ""
    details: Any = text
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        message, details = body["message"], body.get("details")
    error = api_error(status, message, details, response.reason_phrase)
    # A 429 or 503 may say when to try again; retries honour it (retry_after_of).
    error.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return error


def api_error(status: int, message: str, details: Any, reason: str = "") -> APIError:
    """The SDK error for a server's answer of ``status``; an empty ``message`` is the
    status text (or ``reason``, the answer's own phrase, for a status without one)."""
    if not message:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = reason or "unknown status"
    if status == 404:
        return NotFoundError(message, 404, details, from_response=True)
    if status == 409:
        return ConflictError(message, 409, details, from_response=True)
    return APIError(message, status, details, from_response=True)


def task_path(task_id: str, action: str = "") -> str:
    """The path of a task (or of one of its actions)."""
    # Escaped like go-agentic's url.PathEscape: an id can never reach another route.
    path = f"/api/tasks/{quote(require_id('task_id', task_id), safe='')}"
    return f"{path}/{action}" if action else path


def fenced(body: dict[str, Any], job_id: str | None) -> dict[str, Any]:
    """``body`` with the claim's ``job_id`` when one is given ("" included: a claim made
    without a reservation is fenced too)."""
    if job_id is None:
        return body
    if not isinstance(job_id, str):
        raise ConfigError(f"job_id must be a string, got {job_id!r}")
    return {**body, "job_id": job_id}


def parse(response: httpx.Response, adapter: TypeAdapter[T]) -> T:
    """A 2xx answer's body as ``adapter``'s type; APIError if it is not one."""
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:  # invalid JSON or a body of another shape
        raise APIError(
            f"unexpected answer from the server: {exc}",
            response.status_code,
            response.text,
            from_response=True,
        ) from exc


#: claims in one ``claim_tasks`` call (the task API's limit)
MAX_CLAIM_BATCH = 100
#: the longest wait of a long-poll (the task API's limit)
MAX_WAIT = 60.0
#: answers a safe call is repeated after (see the client's module docstring)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: exceptions raised before a single byte of the request left this process
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: The SSE stream is quiet between events; the server sends a keep-alive comment
#: every few seconds, so a read waiting longer than this means the server is gone.
STREAM_READ_TIMEOUT = 30.0
#: HTTP retries are for blips (a restarting server, a proxy hiccup), not for the
#: minutes-long backoff the dispatcher uses after a task failed.
HTTP_RETRY = RetryPolicy(base=0.2, cap=5.0)


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of the event log read through the task API (``read_events``)."""

    #: the events after the offset asked for, oldest first
    events: list[LoggedEvent]
    #: the newest offset in the log when it was read
    last_offset: int


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim of ``claim_tasks``: what ``claim_task`` takes, for one task."""

    task_id: str
    agent_id: str | None = None
    job_id: str | None = None
    lease_seconds: float | None = None


class RetryDelay(Protocol):
    """Seconds to wait before retry number ``attempt`` (from 1); ``RetryPolicy`` fits."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float: ...


def wait_param(wait: float) -> dict[str, str]:
    """The ``wait`` query parameter of a long-poll (none for 0), checked first."""
    if not 0 <= wait <= MAX_WAIT:
        raise ConfigError(f"wait must be from 0 to {MAX_WAIT:g} seconds, got {wait}")
    return {"wait": f"{wait:g}"} if wait else {}


def list_params(
    status: TaskStatus | str | None,
    priority: Priority | str | None,
    project: str | None,
    claimed_by: str | None,
    labels: Iterable[str] | None,
    ready: bool | None,
    limit: int | None,
) -> dict[str, str]:
    """The query parameters of a task list's filters (none for those not given)."""
    given = {
        "status": status,
        "priority": priority,
        "project": project,
        "claimed_by": claimed_by,
        "labels": ",".join(labels or ()),
        "limit": limit,
    }
    params = {key: str(value) for key, value in given.items() if value}
    if ready is not None:
        params["ready"] = "true" if ready else "false"
    return params


def task_of(response: httpx.Response) -> Task:
    """The task of a claim's or a completion's answer: ``{"task", "message"}``, or a
    bare Task, as go-agentic's client accepts."""
    try:
        return ANSWER.validate_json(response.content).task
    except ValidationError:
        return parse(response, TASK)


def claim_answers(
    claims: Sequence[Claim], response: httpx.Response, results: list[_ClaimOutcome]
) -> list[Task | APIError]:
    """The outcome of each claim of a batch, in order (see ``claim_tasks``)."""
    if [outcome.task_id for outcome in results] != [claim.task_id for claim in claims]:
        raise APIError(
            "unexpected answer from the server: not one outcome per claim, in order",
            response.status_code,
            response.text,
            from_response=True,
        )
    answers: list[Task | APIError] = []
    for outcome in results:
        if outcome.code == 200 and outcome.task is not None:
            answers.append(outcome.task)
        elif outcome.code == 200:  # made, says the server, but without the task
            answers.append(
                APIError(
                    f"unexpected answer from the server: claim of {outcome.task_id}"
                    " succeeded without its task",
                    response.status_code,
                    response.text,
                    from_response=True,
                )
            )
        else:
            answers.append(api_error(outcome.code, outcome.message, outcome.details))
    return answers


def encode_body(body: Any) -> bytes:
    """A request body as JSON in UTF-8 (non-ASCII text as itself: a third of its
    ``\\uXXXX`` escapes' size). Text that is not valid Unicode (a lone surrogate)
    is refused here, before anything is sent."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"the request holds text that is not valid Unicode ({exc.reason} at"
            f" {exc.object[exc.start : exc.end]!r}), for example bytes decoded with"
            " surrogateescape: decode them with errors='replace' before sending"
        ) from exc


def tls_verify(base_url: str) -> bool:
    """httpx's ``verify`` for a client of ``base_url``: False where no TLS can happen.

    Loading the CA bundle is most of what building an httpx client costs (20-40 ms;
    inside a coroutine it blocks the event loop, and every CLI command pays it). A
    client of an ``http://`` URL with no proxy from the environment never opens a
    TLS connection (the clients follow no redirects), so it loads none; ``https://``,
    or a proxy (which may itself be ``https://``), keeps httpx's checks.
    """
    if not base_url.startswith("http://"):
        return True
    proxies = getproxies()
    return bool(proxies.get("http") or proxies.get("all"))
