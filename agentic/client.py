"""TaskClient: the HTTP client of the task API (go-agentic's contract, plus ours).

Every request sends ``Authorization: Bearer <token>`` (when a token is set) and
``Accept: application/json``; a request with a body also sends
``Content-Type: application/json``. Empty ids are refused with
:class:`~agentic.errors.ConfigError` before any request is made.

Errors: any 2xx is success. Otherwise a ``{"code", "message", "details"}`` body
becomes :class:`NotFoundError` (404), :class:`ConflictError` (409) or
:class:`APIError` (anything else), with ``code`` set to the HTTP status. A body
without a message gives ``HTTP n: StatusText`` (``message`` is the status text)
with the raw body as ``details``. No answer at all, after the allowed retries, is
:class:`TransportError` (code 0). httpx exceptions never escape; the original is on
``__cause__``.

Retries (``retries`` extra attempts, waits from ``retry_policy``), only where a
repeat cannot do the work twice:

* A connect error is retried for every call: the request never reached the server.
* Safe calls are also retried on a lost answer (read timeout, dropped connection)
  and on 429, 502, 503 and 504, waiting what ``Retry-After`` asks (seconds or an
  HTTP date; more than ``max_retry_wait`` gives up at once rather than wait less
  than asked). Safe calls: every GET; PATCH (it sets absolute values); lease
  renewal (renewing twice only extends the lease); create, because it always sends
  an ``Idempotency-Key`` (the same key on every attempt), so the server returns the
  first task instead of creating a second one.
* Claim, complete, release and log appends are NOT retried once the request may
  have reached the server: a repeated claim or release would answer 409 for work
  that succeeded, a repeated complete could count a failure twice, a repeated
  append duplicates lines. Their callers get the error and decide (for a claim:
  read the task and look at ``claimed_by``).
* Other 4xx answers are never retried: the same request gets the same answer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import APIError, ConfigError, ConflictError, NotFoundError, TransportError
from .models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from .retry import RetryPolicy, parse_retry_after
from .stores.base import LogPage, require_id

__all__ = ["LogEvent", "RetryDelay", "TaskClient"]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Exceptions raised before a single byte of the request left this process.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The SSE stream is quiet between events; the server sends a keep-alive comment
# every few seconds, so a read waiting longer than this means the server is gone.
_STREAM_READ_TIMEOUT = 30.0

T = TypeVar("T")


class _Offset(BaseModel):
    next_offset: int


class _LogPageModel(_Offset):
    lines: list[str]
    offset: int


class _Answer(BaseModel):
    task: Task
    message: str = ""


_TASK = TypeAdapter(Task)
_TASKS = TypeAdapter(list[Task])
_OFFSET = TypeAdapter(_Offset)
_PAGE = TypeAdapter(_LogPageModel)
_ANSWER = TypeAdapter(_Answer)


class RetryDelay(Protocol):
    """Seconds to wait before retry number ``attempt`` (from 1); ``RetryPolicy`` fits."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float: ...


# HTTP retries are for blips (a restarting server, a proxy hiccup), not for the
# minutes-long backoff the dispatcher uses after a task failed.
_HTTP_RETRY = RetryPolicy(base=0.2, cap=5.0)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event of a followed log stream.

    ``kind`` is ``"log"`` (``line`` at ``offset``), ``"status"`` (the task's status
    changed to ``status``), ``"end"`` (the task is completed, failed or blocked;
    ``offset`` is the next offset) or ``"ping"`` (a keep-alive, so that consumers get
    a chance to check their own stop flags while the task is quiet). An ``error``
    event from the server raises :class:`APIError` (503).
    """

    kind: Literal["log", "status", "end", "ping"]
    line: str = ""
    offset: int = 0
    status: TaskStatus | None = None


def _error_from(response: httpx.Response) -> APIError:
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
    if not message:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = response.reason_phrase or "unknown status"
    if status == 404:
        return NotFoundError(message, 404, details)
    if status == 409:
        return ConflictError(message, 409, details)
    return APIError(message, status, details)


def _task_path(task_id: str, action: str = "") -> str:
    # Escaped like go-agentic's url.PathEscape: an id can never reach another route.
    path = f"/api/tasks/{quote(require_id('task_id', task_id), safe='')}"
    return f"{path}/{action}" if action else path


def _parse(response: httpx.Response, adapter: TypeAdapter[T]) -> T:
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:  # invalid JSON or a body of another shape
        raise APIError(
            f"unexpected answer from the server: {exc}", response.status_code, response.text
        ) from exc


class TaskClient:
    """A synchronous client of the task API. Use it as a context manager, or ``close()``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        agent_id: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        *,
        retry_policy: RetryDelay | None = None,
        max_retry_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if retries < 0 or timeout <= 0:
            raise ConfigError(f"need retries >= 0 and timeout > 0, got {retries}, {timeout}")
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id or None
        self.retries = retries
        self.timeout = timeout
        self.max_retry_wait = max_retry_wait
        self._policy: RetryDelay = retry_policy or _HTTP_RETRY
        self._sleep = sleep
        headers = {"Accept": "application/json", "User-Agent": "agentic-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.Client(
                base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
            )
        except httpx.InvalidURL as exc:
            raise ConfigError(f"base_url {base_url!r} is not a valid URL: {exc}") from exc

    # --- lifecycle ---
    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        self._http.close()

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transport ---
    def _request(
        self,
        method: str,
        path: str,
        *,
        safe: bool,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One call with the retry rules of the module docstring; raises on non-2xx."""
        sent_headers = dict(headers or {})
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            sent_headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, content=content, params=params, headers=sent_headers
                )
            except httpx.HTTPError as exc:
                retryable = isinstance(exc, _NOT_SENT) or (
                    safe and isinstance(exc, httpx.TransportError)
                )
                if not retryable or attempt >= self.retries:
                    raise TransportError(
                        f"{method} {self.base_url}{path}: no answer"
                        f" after {attempt + 1} attempt(s): {exc!r}"
                    ) from exc
                attempt += 1
                self._sleep(self._policy.delay(attempt))
                continue
            if response.is_success:
                return response
            if safe and response.status_code in _RETRY_STATUSES and attempt < self.retries:
                asked = parse_retry_after(response.headers.get("Retry-After"))
                if asked is None or asked <= self.max_retry_wait:
                    attempt += 1
                    self._sleep(self._policy.delay(attempt, retry_after=asked))
                    continue
            raise _error_from(response)

    def _agent(self, agent_id: str | None) -> str:
        return require_id("agent_id", agent_id or self.agent_id or "")

    # --- tasks ---
    def list_tasks(
        self,
        status: TaskStatus | str | None = None,
        priority: Priority | str | None = None,
        project: str | None = None,
        claimed_by: str | None = None,
        labels: Iterable[str] | None = None,
        ready: bool | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """Tasks matching every given filter, most urgent and oldest first."""
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
        return _parse(self._request("GET", "/api/tasks", safe=True, params=params), _TASKS)

    def get_task(self, task_id: str) -> Task:
        """One task (:class:`NotFoundError` if unknown)."""
        path = _task_path(task_id)
        return _parse(self._request("GET", path, safe=True), _TASK)

    def create_task(self, task: Task, idempotency_key: str | None = None) -> Task:
        """Create a task; retrying with the same ``Idempotency-Key`` never creates two."""
        key = idempotency_key or str(uuid.uuid4())
        body = task.model_dump(mode="json")
        response = self._request(
            "POST", "/api/tasks", safe=True, body=body, headers={"Idempotency-Key": key}
        )
        return _parse(response, _TASK)

    def claim_task(
        self,
        task_id: str,
        agent_id: str | None = None,
        lease_seconds: float | None = None,
        job_id: str | None = None,
    ) -> Task:
        """Claim a pending, ready task for ``agent_id`` (default: this client's agent).

        ``job_id`` names the quota reservation made for this attempt; it is stored on
        the task so the agent settles usage under it.
        """
        path = _task_path(task_id, "claim")
        body: dict[str, Any] = {"agent_id": self._agent(agent_id)}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        if job_id:
            body["job_id"] = job_id
        return self._task_of(self._request("POST", path, safe=False, body=body))

    def update_task(self, task_id: str, update: TaskUpdate) -> Task:
        """Apply a partial update (fields left ``None`` are not sent)."""
        path = _task_path(task_id)
        body = update.model_dump(mode="json", exclude_none=True)
        return _parse(self._request("PATCH", path, safe=True, body=body), _TASK)

    def complete_task(self, task_id: str, result: TaskResult, agent_id: str | None = None) -> Task:
        """Report the outcome of a claimed task (a failure may be retried or dead-lettered)."""
        path = _task_path(task_id, "complete")
        body = result.model_dump(mode="json")
        if agent_id or self.agent_id:
            body["agent_id"] = self._agent(agent_id)
        return self._task_of(self._request("POST", path, safe=False, body=body))

    def release_task(self, task_id: str, agent_id: str | None = None) -> Task:
        """Give a claim back (pending again, no retry counted)."""
        path = _task_path(task_id, "release")
        body = {"agent_id": self._agent(agent_id)} if agent_id or self.agent_id else {}
        return _parse(self._request("POST", path, safe=False, body=body), _TASK)

    def renew_lease(
        self, task_id: str, lease_seconds: float | None = None, agent_id: str | None = None
    ) -> Task:
        """Extend the lease of a task this agent holds."""
        path = _task_path(task_id, "lease")
        body: dict[str, Any] = {"agent_id": self._agent(agent_id)}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        return _parse(self._request("POST", path, safe=True, body=body), _TASK)

    @staticmethod
    def _task_of(response: httpx.Response) -> Task:
        # {"task", "message"}; a bare Task is accepted too, as go-agentic's client does.
        try:
            return _ANSWER.validate_json(response.content).task
        except ValidationError:
            return _parse(response, _TASK)

    # --- logs ---
    def append_logs(self, task_id: str, lines: Iterable[str]) -> int:
        """Append log lines to a task; returns the offset after the last one."""
        path = _task_path(task_id, "logs")
        batch = list(lines)
        if not all(isinstance(line, str) for line in batch):
            raise ConfigError("log lines must be strings")
        response = self._request("POST", path, safe=False, body={"lines": batch})
        return _parse(response, _OFFSET).next_offset

    def get_logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        """Log lines from ``offset``; ask again from ``next_offset`` for more."""
        path = _task_path(task_id, "logs")
        params = {"offset": str(offset)}
        if limit:
            params["limit"] = str(limit)
        page = _parse(self._request("GET", path, safe=True, params=params), _PAGE)
        return LogPage(page.lines, page.offset, page.next_offset)

    def follow_logs(self, task_id: str, offset: int = 0) -> Iterator[LogEvent]:
        """Follow a task's log as Server-Sent Events until the task finishes.

        Raises :class:`TransportError` when the stream breaks; resume from the last
        offset seen (``event.offset + 1`` of the last ``log`` event).
        """
        path = _task_path(task_id, "logs")
        params = {"follow": "true", "offset": str(offset)}
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, _STREAM_READ_TIMEOUT))
        headers = {"Accept": "text/event-stream"}
        try:
            with self._http.stream(
                "GET", path, params=params, headers=headers, timeout=timeout
            ) as response:
                if not response.is_success:
                    response.read()
                    raise _error_from(response)
                yield from _sse_events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise TransportError(f"log stream of task {task_id} broke: {exc!r}") from exc

    # --- health ---
    def ping(self) -> None:
        """Raise unless the server answers its health check (``/v1/health``, else the older
        ``/api/health``)."""
        try:
            self._request("GET", "/v1/health", safe=True)
        except NotFoundError:
            self._request("GET", "/api/health", safe=True)


def _sse_events(lines: Iterable[str]) -> Iterator[LogEvent]:
    """Decode the server's Server-Sent Events into :class:`LogEvent` s."""
    kind, data = "", []
    for line in lines:
        if line.startswith(":"):
            yield LogEvent("ping")
            continue
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            continue
        if data:
            event = _decode_event(kind, "\n".join(data))
            if event is not None:
                yield event
        kind, data = "", []


def _decode_event(kind: str, data: str) -> LogEvent | None:
    try:
        payload = json.loads(data)
        if kind == "log":
            return LogEvent("log", line=str(payload["line"]), offset=int(payload["offset"]))
        if kind == "error":  # the server's store failed mid-stream; it closes the stream
            raise APIError(str(payload.get("message", "log stream failed")), 503, data)
        if kind in {"status", "end"}:
            which: Literal["status", "end"] = "status" if kind == "status" else "end"
            offset = int(payload.get("next_offset", 0))
            return LogEvent(which, offset=offset, status=TaskStatus(payload["status"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise APIError(f"malformed log event {kind!r}: {data!r}", 200, data) from exc
    return None  # an event kind from a newer server: skip it
