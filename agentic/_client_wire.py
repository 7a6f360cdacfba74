"""What the task client sends and reads: request paths and bodies, and answers decoded
into SDK values and errors. Apart from ``client.py``, which keeps the transport (retries,
timeouts, the closed-client check) and the public methods.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import APIError, ConfigError, ConflictError, NotFoundError
from .events import Event
from .models import Task, TaskStatus
from .retry import parse_retry_after
from .stores.base import require_id

__all__ = [
    "ANSWER",
    "CHANGES_HEADER",
    "FEATURES",
    "CLAIMS",
    "COUNTS",
    "EVENTS",
    "OFFSET",
    "PAGE",
    "TASK",
    "TASKS",
    "api_error",
    "error_from",
    "fenced",
    "parse",
    "same_source",
    "task_path",
]

T = TypeVar("T")

#: the answer header of GET /api/tasks holding the watched topic's token (long-polls):
#: "<server process id>.<change count>"
CHANGES_HEADER = "X-Agentic-Changes"


#: what this version's task API does beyond go-agentic's, as its health check lists it
#: (clients check for them: a server that predates one ignores what it needs)
FEATURES = (
    "attempt_fencing",
    "batch_claims",
    "claim_fencing",
    "list_pages",
    "long_polls",
    "task_counts",
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


class _LoggedEvent(BaseModel):
    offset: int
    event: Event


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
