"""AsyncTaskClient: the HTTP client of the task API for asyncio (go-agentic's contract,
plus ours).

Every request sends ``Authorization: Bearer <token>`` (when a token is set) and
``Accept: application/json``; a request with a body also sends
``Content-Type: application/json``. Empty ids are refused with
:class:`~agentic.errors.ConfigError` before any request is made.

Errors: any 2xx is success. Otherwise a ``{"code", "message", "details"}`` body
becomes :class:`NotFoundError` (404), :class:`ConflictError` (409) or
:class:`APIError` (anything else), with ``code`` set to the HTTP status. A body
without a message gives ``HTTP n: StatusText`` (``message`` is the status text)
with the raw body as ``details``. No answer at all, after the allowed retries, is
:class:`TransportError` (code 0). A closed client, or a request httpx cannot build
(a query past its URL length limit), is :class:`ConfigError`. httpx exceptions never
escape; the original is on ``__cause__``.

An :class:`AsyncTaskClient` belongs to the event loop of its first call: a call from
another loop (a second ``asyncio.run``) is refused with :class:`ConfigError` before
anything is sent. Make one per loop and keep it (building one takes about 40 ms).

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
* A 429 of an unsafe call is not repeated here either, though the task API answers
  it only for work it did not begin (a batch out of time, a caller over
  ``server.rate_limit``): the runner and the dispatcher retry on their own schedule
  (a waiting claim is tried in a later pass, a completion is retried with backoff,
  log lines stay buffered), where a wait here would stall the thread that renews
  the leases.
* Other 4xx answers are never retried: the same request gets the same answer.
"""

# The source of client.py's TaskClient: scripts/unasync.py writes that file from this
# one (async def -> def, await dropped, httpx.AsyncClient -> httpx.Client, ...), so the
# two never drift apart. Edit here, then run the script; a test checks they agree.

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx

from ._client_wire import (
    CHANGES_HEADER,
    CLAIMS,
    COUNTS,
    EVENTS,
    HTTP_RETRY,
    MAX_CLAIM_BATCH,
    NOT_SENT,
    OFFSET,
    PAGE,
    RETRIED,
    RETRY_STATUSES,
    STREAM_READ_TIMEOUT,
    TASK,
    TASKS,
    WITHDRAWN,
    Claim,
    EventPage,
    RetryDelay,
    claim_answers,
    encode_body,
    error_from,
    fenced,
    list_params,
    parse,
    task_of,
    task_path,
    tls_verify,
    wait_param,
)
from ._log_events import LogEvent, SSEDecoder
from .errors import APIError, ConfigError, NotFoundError, TransportError
from .models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from .retry import parse_retry_after
from .stores._tasks import MAX_REASON
from .stores.base import LoggedEvent, LogPage, Retried, RunSeen, require_id, require_page

__all__ = ["MAX_CLAIM_BATCH", "AsyncTaskClient", "Claim", "EventPage", "LogEvent", "RetryDelay"]

#: Seconds a client keeps the server's features for its conditional calls (a pass of
#: a dispatcher recording failures makes one health read, not one per failure).
FEATURES_KEPT = 5.0


# begin async only
class _OtherLoop(Exception):
    """A call from another event loop than the client's (see ``_same_loop``)."""


# end async only


class AsyncTaskClient:
    """An asyncio client of the task API. Use it as an async context manager, or
    ``await close()``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        agent_id: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retry_policy: RetryDelay | None = None,
        max_retry_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._policy: RetryDelay = retry_policy or HTTP_RETRY
        self._sleep = sleep
        self._loop: asyncio.AbstractEventLoop | None = None  # async only
        #: the features a conditional call last read, and until when (monotonic) they hold
        self._features: tuple[frozenset[str], float] | None = None
        headers = {"Accept": "application/json", "User-Agent": "agentic-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=timeout,
                transport=transport,
                verify=tls_verify(self.base_url),
            )
        except httpx.InvalidURL as exc:
            raise ConfigError(f"base_url {base_url!r} is not a valid URL: {exc}") from exc

    # --- lifecycle ---
    async def close(self) -> None:
        """Close the connection pool. Idempotent."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- transport ---
    async def _request(
        self,
        method: str,
        path: str,
        *,
        safe: bool,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One call with the retry rules of the module docstring; raises on non-2xx.
        ``timeout`` replaces the client's for this call (a long-poll waits longer)."""
        sent_headers = dict(headers or {})
        content = None
        if body is not None:
            content = encode_body(body)
            sent_headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            try:
                with self._refusals(f"{method} {self.base_url}{path}"):
                    response = await self._http.request(
                        method,
                        path,
                        content=content,
                        params=params,
                        headers=sent_headers,
                        timeout=self.timeout if timeout is None else timeout,
                    )
            except httpx.HTTPError as exc:
                retryable = isinstance(exc, NOT_SENT) or (
                    safe and isinstance(exc, httpx.TransportError)
                )
                if not retryable or attempt >= self.retries:
                    raise TransportError(
                        f"{method} {self.base_url}{path}: no answer"
                        f" after {attempt + 1} attempt(s): {exc!r}"
                    ) from exc
                attempt += 1
                await self._sleep(self._policy.delay(attempt))
                continue
            if response.is_success:
                return response
            if safe and response.status_code in RETRY_STATUSES and attempt < self.retries:
                asked = parse_retry_after(response.headers.get("Retry-After"))
                if asked is None or asked <= self.max_retry_wait:
                    attempt += 1
                    await self._sleep(self._policy.delay(attempt, retry_after=asked))
                    continue
            raise error_from(response)

    @contextlib.contextmanager
    def _refusals(self, what: str) -> Iterator[None]:
        """Turn httpx's refusals to send at all into :class:`ConfigError`.

        ConfigError rather than TransportError: nothing went over the wire and the same
        call fails the same way every time, while a TransportError is retryable (the
        runner and the dispatcher would back off and try a closed client again).
        """
        try:
            self._same_loop()  # async only
            yield
        except httpx.InvalidURL as exc:
            raise ConfigError(f"{what}: cannot build the request URL: {exc}") from exc
        # begin async only
        except _OtherLoop as exc:
            raise ConfigError(
                f"{what}: not sent: this client was first used on another event loop, and"
                " its connections belong to that loop; make one client per event loop"
                " (each asyncio.run is a new loop)"
            ) from exc
        # end async only
        except RuntimeError as exc:
            # httpx says "the client has been closed" with a bare RuntimeError; any
            # other RuntimeError is not httpx's refusal and keeps its own traceback.
            if self._http.is_closed:
                name = type(self).__name__
                raise ConfigError(f"{what}: the client is closed; make a new {name}") from exc
            raise

    # begin async only
    def _same_loop(self) -> None:
        """Refuse, before anything is sent, a call from another event loop than the
        first call's: httpx's pooled connections belong to the loop that opened them,
        and one reused from a loop that has ended fails only after the request was
        written (a create would then be made twice by a caller who tries again)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise _OtherLoop

    # end async only
    def _agent(self, agent_id: str | None) -> str:
        return require_id("agent_id", agent_id or self.agent_id or "")

    # --- tasks ---
    async def list_tasks(
        self,
        status: TaskStatus | str | None = None,
        priority: Priority | str | None = None,
        project: str | None = None,
        claimed_by: str | None = None,
        labels: Iterable[str] | None = None,
        ready: bool | None = None,
        limit: int | None = None,
        after: str | None = None,
        labels_within: Iterable[str] | None = None,
    ) -> list[Task]:
        """Tasks matching every given filter, most urgent and oldest first; with
        ``after`` (the id of the last task of the previous page), the next page.
        ``labels`` means "has all of them"; ``labels_within`` "has no label but these"
        (what agents with those capabilities could take; a server without the
        ``labels_within`` feature ignores it)."""
        params = list_params(status, priority, project, claimed_by, labels, ready, limit)
        if after is not None:
            params["after"] = require_id("after", after)
        if labels_within is not None:
            within = list(labels_within)
            if not all(isinstance(label, str) and "," not in label for label in within):
                raise ConfigError(f"labels_within must be labels without commas, got {within!r}")
            params["labels_within"] = ",".join(within)
        return parse(await self._request("GET", "/api/tasks", safe=True, params=params), TASKS)

    async def count_tasks(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status present). A server without
        ``task_counts`` (older, or go-agentic's) answers 404: the tasks of each status
        are then listed and counted, as its clients must."""
        try:
            found = parse(await self._request("GET", "/api/tasks/counts", safe=True), COUNTS)
        except NotFoundError:
            return {status: len(await self.list_tasks(status=status)) for status in TaskStatus}
        return {status: found.get(status, 0) for status in TaskStatus}

    async def read_events(self, after: int = 0, limit: int = 100, wait: float = 0.0) -> EventPage:
        """The server's event log after the offset ``after`` (0: from the oldest kept),
        at most ``limit`` events: what :meth:`EventLog.read` gives, for readers without
        store credentials. Needs an admin token and a server with ``event_log`` in its
        features (one without answers 404).

        With ``wait`` (seconds, at most 60) a long-poll: when nothing is after ``after``
        the server answers once something is, or after ``wait``. A server older than
        the long-poll answers at once: sleep before asking again after an empty page
        that came quickly."""
        require_page(after, limit)
        params = {"after": str(after), "limit": str(limit), **wait_param(wait)}
        response = await self._request(
            "GET", "/api/events", safe=True, params=params, timeout=self.timeout + wait
        )
        found = parse(response, EVENTS)
        events = [LoggedEvent(logged.offset, logged.event) for logged in found.events]
        return EventPage(events, found.last_offset)

    async def watch_tasks(
        self,
        since: str = "",
        wait: float = 0.0,
        *,
        status: TaskStatus | str | None = None,
        claimed_by: str | None = None,
        ready: bool | None = None,
        limit: int | None = None,
    ) -> tuple[list[Task], str | None]:
        """:meth:`list_tasks` as a long-poll: the tasks, and the token to pass back as
        ``since`` next time.

        The server answers once the watched topic changed since ``since`` (at once for
        ``""``), or after ``wait`` seconds (at most 60). The topic is the claims made for
        ``claimed_by`` when it is given (a runner's wait), else any change that may let
        a dispatcher do more (a task created, released, finished, updated or requeued).
        The token is None when the server does not watch (an older server, or
        go-agentic's): it answered at once, so the caller should sleep between calls.
        """
        params = {
            **list_params(status, None, None, claimed_by, None, ready, limit),
            **wait_param(wait),
        }
        if since:
            params["since"] = since
        response = await self._request(
            "GET", "/api/tasks", safe=True, params=params, timeout=self.timeout + wait
        )
        return parse(response, TASKS), response.headers.get(CHANGES_HEADER)

    async def get_task(self, task_id: str) -> Task:
        """One task (:class:`NotFoundError` if unknown)."""
        path = task_path(task_id)
        return parse(await self._request("GET", path, safe=True), TASK)

    async def create_task(self, task: Task, idempotency_key: str | None = None) -> Task:
        """Create a task; retrying with the same ``Idempotency-Key`` never creates two."""
        key = idempotency_key or str(uuid.uuid4())
        # Fields newer than strict bodies are sent only when set, so that an older
        # server takes the body: lease_seconds (the server's; then refused, as any
        # claim on a new task) and reruns (a new task has run no times yet).
        unset = {"lease_seconds"} if task.lease_seconds is None else set()
        if task.reruns == 0:
            unset.add("reruns")
        body = task.model_dump(mode="json", exclude=unset)
        response = await self._request(
            "POST", "/api/tasks", safe=True, body=body, headers={"Idempotency-Key": key}
        )
        return parse(response, TASK)

    async def claim_task(
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
        path = task_path(task_id, "claim")
        body = self._claim_body(Claim(task_id, agent_id, job_id, lease_seconds))
        return task_of(await self._request("POST", path, safe=False, body=body))

    async def claim_tasks(self, claims: Sequence[Claim]) -> list[Task | APIError]:
        """Several claims in one request (``POST /api/tasks/claims``), made one by one.

        One entry per claim, in order: the claimed Task, or the error
        :meth:`claim_task` would have raised for that claim alone (ConflictError when
        the task is not claimable, NotFoundError, ...); a refused claim leaves the
        others made. Like ``claim_task`` it is never repeated once it may have reached
        the server: the whole call raises TransportError (no answer) or APIError (a
        refusal of the request, or an answer that does not give one outcome per claim
        in order; its ``code`` is then the answer's 2xx status). Claims the server had
        no time to begin within half this client's timeout come back as 429 APIErrors:
        not made. A server without the endpoint refuses the request with 404, 405 or
        501. At most ``MAX_CLAIM_BATCH``.
        """
        if not 1 <= len(claims) <= MAX_CLAIM_BATCH:
            raise ConfigError(f"claim_tasks takes 1 to {MAX_CLAIM_BATCH} claims, got {len(claims)}")
        body = {
            "claims": [
                {"task_id": require_id("task_id", claim.task_id), **self._claim_body(claim)}
                for claim in claims
            ],
            # The server begins no claim after half our wait: it answers in time, and
            # nothing is claimed after we stopped listening (those come back 429).
            "time_limit": min(self.timeout / 2, 300.0),
        }
        response = await self._request("POST", "/api/tasks/claims", safe=False, body=body)
        return claim_answers(claims, response, parse(response, CLAIMS).results)

    def _claim_body(self, claim: Claim) -> dict[str, Any]:
        body: dict[str, Any] = {"agent_id": self._agent(claim.agent_id)}
        if claim.lease_seconds is not None:
            body["lease_seconds"] = claim.lease_seconds
        if claim.job_id:
            body["job_id"] = claim.job_id
        return body

    async def update_task(
        self, task_id: str, update: TaskUpdate, if_pending: RunSeen | None = None
    ) -> Task:
        """Apply a partial update (fields left ``None`` are not sent).

        ``if_pending`` (:class:`~agentic.stores.base.RunSeen`, the task as read): the
        server applies it only while the task is still pending in that run with that
        retry count, and answers :class:`ConflictError` otherwise (nothing changed).
        A server without ``update_fencing`` cannot: a :class:`ConfigError` then, and
        nothing is sent.
        """
        path = task_path(task_id)
        body = update.model_dump(mode="json", exclude_none=True)
        if if_pending is None:
            return parse(await self._request("PATCH", path, safe=True, body=body), TASK)
        cannot = ConfigError(
            f"the task server at {self.base_url} cannot make an update conditional"
            " (it is older than update_fencing): upgrade it, or update without if_pending"
        )
        if "update_fencing" not in await self._kept_features():
            raise cannot
        body["if_pending"] = {"reruns": if_pending.reruns, "retry_count": if_pending.retry_count}
        try:
            response = await self._request("PATCH", path, safe=True, body=body)
        except APIError as exc:
            if await self._lost_after(exc, "update_fencing"):
                raise cannot from exc
            raise
        return parse(response, TASK)

    # complete, release and renew take the claim's ``job_id`` to fence the attempt: the
    # server refuses it (ConflictError) once the task was claimed again, even by this
    # agent. Left out (None) it is not sent and only the holder is checked.

    async def complete_task(
        self,
        task_id: str,
        result: TaskResult,
        agent_id: str | None = None,
        job_id: str | None = None,
    ) -> Task:
        """Report the outcome of a claimed task (a failure may be retried or dead-lettered)."""
        path = task_path(task_id, "complete")
        body = result.model_dump(mode="json")
        if agent_id or self.agent_id:
            body["agent_id"] = self._agent(agent_id)
        return task_of(await self._request("POST", path, safe=False, body=fenced(body, job_id)))

    async def withdraw_claim(self, task_id: str, job_id: str) -> bool:
        """Settle a claim whose answer was lost (``POST /api/tasks/{id}/withdraw``):
        True if it was made; False if not, and then it never will be (the server
        refuses that job id for this task from now on), so its reservation can go back.

        Safe to retry. A server without ``claim_fencing`` answers 404 or 405.
        """
        path = task_path(task_id, "withdraw")
        response = await self._request("POST", path, safe=True, body={"job_id": job_id})
        return parse(response, WITHDRAWN).made

    async def retry_task(self, task_id: str, reruns: int | None = None) -> Retried:
        """Run a failed task (dead-lettered or cancelled) again from the start
        (``POST /api/tasks/{id}/retry``, admin token): its ``task`` as it now is
        (pending, no retry counted; blocked while a dependency of it is failed) and
        the ids of the tasks its failure blocked that are pending again
        (``unblocked``). :class:`ConflictError` for a task that is not failed.

        Made once: the retry names the run it retries, ``reruns`` (the task's count
        the caller saw; read from the task first when not given). Once the task has
        been retried since, the answer is the task as it is, ``repeated``, and nothing
        changes (even when that re-run failed again), so the request is repeated after
        a lost answer and two operators retrying at once run it once. A server
        without ``retry_reruns`` gets the retry without that condition, and it is not
        repeated once it may have reached the server (``reruns`` given is then a
        :class:`ConfigError`); one without ``task_retry`` answers 404 or 405.
        """
        path = task_path(task_id, "retry")
        if "retry_reruns" in await self._kept_features():
            body = {"reruns": (await self.get_task(task_id)).reruns if reruns is None else reruns}
            try:
                answer = parse(await self._request("POST", path, safe=True, body=body), RETRIED)
                return Retried(answer.task, answer.unblocked, answer.repeated)
            except APIError as exc:
                if not await self._lost_after(exc, "retry_reruns"):
                    raise
        if reruns is not None:
            raise ConfigError(
                f"the task server at {self.base_url} cannot make a retry once (it is older"
                " than retry_reruns): upgrade it, or retry without reruns"
            )
        answer = parse(await self._request("POST", path, safe=False), RETRIED)
        return Retried(answer.task, answer.unblocked, answer.repeated)

    async def release_task(
        self,
        task_id: str,
        agent_id: str | None = None,
        job_id: str | None = None,
        reason: str = "",
    ) -> Task:
        """Give a claim back (pending again, no retry counted), saying why: the reason
        goes with the ``task_requeued`` event (a server that predates it ignores it)."""
        path = task_path(task_id, "release")
        body: dict[str, Any] = (
            {"agent_id": self._agent(agent_id)} if agent_id or self.agent_id else {}
        )
        if reason:
            # Informative only: a long one (an error with its traceback) is cut, not refused.
            body["reason"] = reason[:MAX_REASON]
        response = await self._request("POST", path, safe=False, body=fenced(body, job_id))
        return parse(response, TASK)

    async def renew_lease(
        self,
        task_id: str,
        lease_seconds: float | None = None,
        agent_id: str | None = None,
        job_id: str | None = None,
    ) -> Task:
        """Extend the lease of a task this agent holds to ``lease_seconds`` from now;
        None lets the server use its default lease, which need not be the length the
        claim was made with (so the runner always gives one)."""
        path = task_path(task_id, "lease")
        body: dict[str, Any] = {"agent_id": self._agent(agent_id)}
        if lease_seconds is not None:
            body["lease_seconds"] = lease_seconds
        response = await self._request("POST", path, safe=True, body=fenced(body, job_id))
        return parse(response, TASK)

    # --- logs ---
    async def append_logs(self, task_id: str, lines: Iterable[str]) -> int:
        """Append log lines to a task; returns the offset after the last one."""
        path = task_path(task_id, "logs")
        batch = list(lines)
        if not all(isinstance(line, str) for line in batch):
            raise ConfigError("log lines must be strings")
        response = await self._request("POST", path, safe=False, body={"lines": batch})
        return parse(response, OFFSET).next_offset

    async def get_logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        """Log lines from ``offset``; ask again from ``next_offset`` for more."""
        path = task_path(task_id, "logs")
        params = {"offset": str(offset)}
        if limit:
            params["limit"] = str(limit)
        page = parse(await self._request("GET", path, safe=True, params=params), PAGE)
        return LogPage(page.lines, page.offset, page.next_offset)

    async def follow_logs(self, task_id: str, offset: int = 0) -> AsyncIterator[LogEvent]:
        """Follow a task's log as Server-Sent Events until the task finishes.

        Raises :class:`TransportError` when the stream breaks; resume from the last
        offset seen (``event.offset + 1`` of the last ``log`` event).
        """
        path = task_path(task_id, "logs")
        params = {"follow": "true", "offset": str(offset)}
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT))
        headers = {"Accept": "text/event-stream"}
        decoder = SSEDecoder()
        try:
            with self._refusals(f"GET {self.base_url}{path}"):
                async with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise error_from(response)
                    async for line in response.aiter_lines():
                        event = decoder.feed(line)
                        if event is not None:
                            yield event
        except httpx.HTTPError as exc:
            raise TransportError(f"log stream of task {task_id} broke: {exc!r}") from exc

    # --- health ---
    async def ping(self) -> None:
        """Raise unless the server answers its health check (``/v1/health``, else the older
        ``/api/health``)."""
        await self._health()

    async def server_features(self) -> frozenset[str]:
        """What the server does beyond go-agentic's API, as its health check lists it
        (``attempt_fencing``, ``batch_claims``, ``claim_fencing``, ``list_pages``,
        ``long_polls``, ``task_counts``); empty for a server that lists none (older,
        or go-agentic's)."""
        features = (await self._health_body()).get("features")
        if not isinstance(features, list):
            return frozenset()
        return frozenset(str(feature) for feature in features)

    async def _kept_features(self) -> frozenset[str]:
        """The features a conditional call checks (``update_fencing``,
        ``retry_reruns``): read from the health check and kept :data:`FEATURES_KEPT`
        seconds, or until an answer says the server behind the address may have
        changed (:meth:`_lost_after`), so a dispatcher recording many failures reads
        them once, not once per failure."""
        now = time.monotonic()
        if self._features is None or now >= self._features[1]:
            self._features = (await self.server_features(), now + FEATURES_KEPT)
        return self._features[0]

    async def _lost_after(self, exc: APIError, feature: str) -> bool:
        """After a conditional call failed with ``exc``: whether the server behind the
        address now lacks ``feature``. An answer a server older than the feature gives
        (404 or 405 for a route it lacks, 422 for a field its strict bodies refuse;
        nothing was done) has the features read again at once; no answer at all (a
        restart, perhaps onto another version) has them read at the next call."""
        if exc.code not in (0, 404, 405, 422):
            return False
        self._features = None
        if exc.code == 0:
            return False
        return feature not in await self._kept_features()

    async def server_store_id(self) -> str:
        """The id of the store the server serves (see ``store_id`` of the stores), to
        tell whether a store opened directly is the same one; "" when the server does
        not say (memory://, an older server, go-agentic's)."""
        found = (await self._health_body()).get("store_id")
        return found if isinstance(found, str) else ""

    async def _health_body(self) -> dict[str, Any]:
        """The health check's JSON object ({} when the answer is not one)."""
        try:
            body = (await self._health()).json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def _health(self) -> httpx.Response:
        try:
            return await self._request("GET", "/v1/health", safe=True)
        except NotFoundError:
            return await self._request("GET", "/api/health", safe=True)
