"""The reference task API: ``create_app(store, ...)`` builds the FastAPI application.

Endpoints are go-agentic's (list, get, create, claim, update, complete, health) plus
ours (release, lease renewal, batch claims, withdraw, retry, counts, logs with SSE
follow, the event log, metrics). Every error answer is ``{"code", "message", "details"}``;
bad input gets a 4xx and changes nothing stored.

Auth: with any token configured, every ``/api/tasks`` route needs
``Authorization: Bearer``. Admin tokens may do anything. An agent token may read,
and may claim, renew, release, log to, complete and report progress on tasks only
as its own agent id (403 otherwise). Health and metrics stay open so probes and
scrapers need no secret; they expose counts, never task content. With NO token
configured the server is open: anyone who can reach it may do anything (fine on
loopback, never on a network; ``agentic serve`` warns, and refuses a non-loopback
address unless told ``--allow-open``). Requests a web page made are refused
(``_browsers``): another site's ``Origin``, and on a server open on loopback a
``Host`` name not its own.

Endpoints are ``async``; they reach the store through :class:`StoreCalls`, in a worker
thread for a store that may wait on locks (SQLite), inline for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Annotated

from anyio import CapacityLimiter, to_thread
from fastapi import Body, Depends, FastAPI, Header, Query, Request, Security
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter

from .. import __version__
from .._client_wire import FEATURES, LOG_FULL
from ..errors import (
    APIError,
    ConfigError,
    NotFoundError,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
)
from ..models import Priority, Task, TaskStatus, TaskUpdate
from ..retry import RetryPolicy, doubled
from ..stores.base import MAX_READ, EventLog, LoggedEvent, RunSeen, TaskStore
from ._auth import Auth, Principal, token_key
from ._calls import StoreCalls
from ._changes import CHANGES_HEADER, EVENTS_TOPIC, Changes, Relay
from ._errors import describe, details_text, install_error_handlers
from ._json import UnicodeRoute
from ._limits import RateLimiter
from ._metrics import Guard, Metrics
from ._schemas import (
    AppendResponse,
    ClaimBatch,
    ClaimItem,
    ClaimOutcome,
    ClaimRequest,
    ClaimResults,
    CompleteRequest,
    ErrorBody,
    EventPageBody,
    HealthBody,
    LeaseRequest,
    LoggedEventBody,
    LogLines,
    LogPageBody,
    NewTask,
    ReleaseRequest,
    RetryRequest,
    RetryResult,
    TaskResponse,
    UpdateBody,
    WithdrawRequest,
    WithdrawResult,
)
from ._sse import follow_log

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON",
        401: "Missing or invalid token",
        403: "The token may not do this",
        404: "Unknown task",
        409: "Not possible in the task's state",
        413: "Body too large",
        422: "Invalid input",
        429: "Over the caller's rate limit (server.rate_limit): wait Retry-After",
        503: "Store unavailable",
    }.items()
}
_MAX_LIST = 10_000
_MAX_WAIT = 60.0
# The fields of an update that may let a dispatcher do more (a task pending again, a
# backoff moved); progress and notes, written while tasks run, wake nobody.
_DISPATCH_FIELDS = frozenset({"status", "next_attempt_at"})
_WAIT_DOC = "long-poll: wait up to this many seconds for a change since `since`"
_WITHIN_DOC = (
    "comma-separated: the only labels a task may have (what agents with these"
    " capabilities could take); empty: tasks without labels"
)
_SINCE_DOC = "the X-Agentic-Changes token of the previous answer"
_AFTER_DOC = "a page: only tasks after this task id in list order"
_LATE = "not attempted: the batch's time_limit passed first; claim it again"
_TASKS = TypeAdapter(list[Task])


def _json(body: BaseModel | list[Task], status: int = 200) -> Response:
    """``body`` as a JSON answer, serialised once.

    The routes still declare their ``response_model`` (for the OpenAPI schema), but a
    returned Response is sent as is: FastAPI would otherwise validate our own model
    again and serialise it through a generic encoder, which costs more than the store
    call of most endpoints.
    """
    raw = _TASKS.dump_json(body) if isinstance(body, list) else body.model_dump_json()
    return Response(raw, status, media_type="application/json")


# Requests a second one busy agent runner may send; a rate limit below is warned of.
_BUSY_AGENT_RATE = 5
_EVENTS_AFTER_DOC = "the offset of the last event read; 0: from the oldest kept"
_EVENTS_WAIT_DOC = "long-poll: wait up to this many seconds for an event after `after`"
# A waiting read of a log that cannot tell of appends (SQLite) reads it again this
# often: other processes append to it without telling this server.
_EVENTS_POLL = 0.2
# Waiting reads of a log that tells of appends (Redis) wait in worker threads: at
# most this many at once (the others queue for one), a second at a time each.
_EVENT_WAITERS = 16


def _event_page(events: EventLog, after: int, limit: int) -> tuple[list[LoggedEvent], int]:
    """A page of the log and its newest offset, read after the page: never below the
    page's last event, whatever is appended meanwhile."""
    page = events.read(after, limit)
    return page, events.last_offset()


_BEARER = HTTPBearer(auto_error=False, description="an admin token or an agent token")


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> Principal:
    auth: Auth = request.app.state.auth
    token = credentials.credentials if credentials else None
    who = auth.authenticate(token)
    limiter: RateLimiter | None = request.app.state.limiter
    if limiter is not None:
        # Per token (by its digest: tokens are not kept). An open server accepts any
        # token, so there a caller is its address: a new token per request is no way
        # around the limit.
        peer = request.client.host if request.client else "?"
        key = token_key(token) if token and not auth.open else f"peer:{peer}"
        if limiter.shared:  # a round trip to the store: made as its calls are
            calls: StoreCalls = request.app.state.calls
            await calls(limiter.check, key)
        else:
            limiter.check(key)
    return who


Caller = Annotated[Principal, Depends(_caller)]


async def _requeue_loop(
    store: TaskStore, calls: StoreCalls, metrics: Metrics, changes: Changes, interval: float
) -> None:
    """Requeue expired leases every ``interval`` seconds until cancelled; after a
    failure the next pass waits longer (doubling, up to 10 intervals)."""
    failures = 0
    while True:
        try:
            changed = await calls(store.requeue_expired)
        except Exception as exc:
            # A store outage must not kill the loop; it is logged (its message: a
            # traceback only for what is not the store's own error) and counted.
            failures += 1
            metrics.inc("requeue_errors")
            log.error(
                "requeue of expired leases failed (%d in a row): %s",
                failures,
                exc,
                exc_info=not isinstance(exc, StoreError),
            )
        else:
            if failures:  # said, or the log would end on the last failure
                log.info("requeue of expired leases works again after %d failure(s)", failures)
            failures = 0
            if changed:
                changes.bump("dispatch")
                metrics.inc("tasks_requeued", len(changed))
                log.info("lease expired: %s", ", ".join(t.id for t in changed))
        await asyncio.sleep(doubled(interval, failures, 10))


def create_app(
    store: TaskStore,
    *,
    admin_tokens: tuple[str, ...] | list[str] = (),
    agent_tokens: Mapping[str, str] | None = None,
    lease_seconds: float = 300,
    max_body_bytes: int = 1 << 20,
    requeue_interval: float | None = 5.0,
    retry_policy: RetryPolicy | None = None,
    log_poll_interval: float = 0.25,
    clock: Callable[[], float] = time.time,
    events: EventLog | None = None,
    rate_limit: float = 0.0,
    rate_burst: int = 0,
    trusted_hosts: Collection[str] | None = None,
    max_log_lines: int = 100_000,
    agent_claims: bool = True,
) -> FastAPI:
    """The task API over ``store`` (which the caller keeps and closes).

    ``agent_tokens`` maps token -> agent id. ``lease_seconds`` is the default claim
    lease. ``requeue_interval`` seconds between passes requeueing expired leases
    (``None`` or 0: no background pass). ``retry_policy`` spaces the retries of
    failed tasks (default :class:`RetryPolicy`); ``clock`` must be the store's clock.
    ``events``: the event log ``GET /api/events`` serves to admin tokens (the caller
    keeps and closes it; without one that route answers 404). ``rate_limit``: requests
    a second each caller may send on average (0: no limit), ``rate_burst`` at once
    (0: a second's worth); past it, 429 with ``Retry-After``. A request whose
    ``Origin`` is not the server's own (a web page of another site) is refused (403);
    with ``trusted_hosts`` so is one whose ``Host`` is not one of them, an IP address
    or localhost (a page reaching a server open on loopback through a DNS name of its
    own: ``agentic serve`` passes ``server.host`` there when it serves with no token).
    ``max_log_lines``: the most lines a task's log may hold (0: no limit); an append
    that would pass it is refused whole (409, details ``log_full``), so a runaway
    task cannot fill the store. ``agent_claims`` False: agent tokens may not claim
    (403), only admin tokens (the dispatcher), so an agent cannot take a task routed
    to no one, or to another agent, for itself.
    """
    if lease_seconds <= 0 or max_body_bytes <= 0 or log_poll_interval <= 0:
        raise ConfigError("lease_seconds, max_body_bytes and log_poll_interval must be > 0")
    if max_log_lines < 0:
        raise ConfigError(f"max_log_lines must be >= 0 (0: no limit), got {max_log_lines}")
    auth = Auth(admin_tokens, agent_tokens or {})
    if auth.open:
        log.warning("task API without tokens: anyone who can reach it may do anything")
    if 0 < rate_limit < _BUSY_AGENT_RATE:
        log.warning(
            "server.rate_limit %g is below the %d requests a second a busy agent may send"
            " (a long-poll a second, plus two or three requests per task): agents will"
            " wait on 429 answers",
            rate_limit,
            _BUSY_AGENT_RATE,
        )
    policy = retry_policy or RetryPolicy()
    metrics = Metrics()
    calls = StoreCalls(store)
    changes = Changes()
    served_id: list[str] = []  # the store's id, once read (see health)
    waiters: list[CapacityLimiter] = []  # made on first use: it needs the event loop

    def event_waiters() -> CapacityLimiter:
        if not waiters:
            waiters.append(CapacityLimiter(_EVENT_WAITERS))
        return waiters[0]

    notices = store.notices()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        relay = Relay(changes, notices, metrics) if notices is not None else None
        if relay is not None:
            relay.start(asyncio.get_running_loop())
            changes.relay = relay
        requeue = (
            asyncio.create_task(_requeue_loop(store, calls, metrics, changes, requeue_interval))
            if requeue_interval
            else None
        )
        try:
            yield
        finally:
            if requeue is not None:
                requeue.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await requeue
            if relay is not None:
                changes.relay = None
                await to_thread.run_sync(relay.stop)  # joins its threads: not on the loop

    app = FastAPI(title="agentic task API", version="1", lifespan=lifespan, responses=_ERRORS)
    app.router.route_class = UnicodeRoute  # before the routes below are added
    app.state.metrics = metrics
    app.state.auth = auth
    app.state.calls = calls
    app.state.limiter = (
        RateLimiter(rate_limit, rate_burst, shared=store.rate_buckets(), metrics=metrics)
        if rate_limit
        else None
    )
    app.add_middleware(
        Guard, metrics=metrics, max_body_bytes=max_body_bytes, trusted_hosts=trusted_hosts
    )
    install_error_handlers(app, metrics)

    def required_agent(who: Principal, agent_id: str) -> str:
        agent = who.act_as(agent_id)
        if not agent:
            raise APIError("agent_id is required with an admin token", 422)
        return agent

    async def require_holder(who: Principal, task_id: str, action: str) -> None:
        if who.admin:
            return
        task = await calls(store.get, task_id)
        if task.claimed_by != who.agent_id or task.status != TaskStatus.IN_PROGRESS:
            raise APIError(
                f"agent {who.agent_id!r} cannot {action} task {task_id}: it does not hold it",
                403,
            )

    # --- health and metrics (open) ---
    @app.get("/v1/health", tags=["health"])
    @app.get("/api/health", tags=["health"])
    async def health() -> HealthBody:
        """The server is up; its version, what it does beyond go-agentic's API, and the
        id of the store it serves. 503 when that store was emptied or replaced under
        the server (a Redis restarted without persistence, a FLUSHDB; an SQLite file
        deleted or replaced)."""
        features = [*FEATURES, "event_log"] if events is not None else list(FEATURES)
        try:  # read at every check: a Redis store checks that its id is still there
            found = await calls(store.store_id)
        except StoreLostError:
            raise
        except StoreError as exc:  # a store down must not fail the check
            if not served_id:
                log.warning("the store's id could not be read: %s", exc)
        else:
            served_id[:] = [found]
        identity = served_id[0] if served_id else ""
        return HealthBody(status="ok", version=__version__, features=features, store_id=identity)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics_text() -> PlainTextResponse:
        """Prometheus text format: requests by route and status, claims, conflicts, requeues."""
        return PlainTextResponse(
            metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    # --- the event log ---
    @app.get("/api/events", response_model=EventPageBody, tags=["events"])
    async def read_events(
        request: Request,
        who: Caller,
        after: Annotated[int, Query(ge=0, description=_EVENTS_AFTER_DOC)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_READ)] = 100,
        wait: Annotated[float, Query(ge=0, le=_MAX_WAIT, description=_EVENTS_WAIT_DOC)] = 0,
    ) -> Response:
        """The event log after an offset, oldest first (admin tokens): for readers
        without credentials of the store it lives in.

        A long-poll with ``wait`` (seconds): when nothing is after ``after`` the answer
        waits until something is, at most ``wait`` seconds. On Redis an append by any
        process wakes it at once; on SQLite writes through this server do, and what
        other processes append is seen within 0.2 s."""
        who.require_admin("read the event log")
        if events is None:
            raise APIError(
                "this server serves no event log (events.log is off, or its store is"
                " memory://): read it from its store with agentic events --store URL",
                404,
            )
        deadline = asyncio.get_running_loop().time() + wait
        try:
            while True:
                token = changes.token(EVENTS_TOPIC)  # before the read: no change is missed
                page, last = await to_thread.run_sync(_event_page, events, after, limit)
                left = deadline - asyncio.get_running_loop().time()
                # Nothing can come after an offset past the newest (the log went back):
                # answered now, so the reader sees it; likewise a reader gone.
                if page or left <= 0 or last < after or await request.is_disconnected():
                    break
                if events.hears_appends:
                    await to_thread.run_sync(
                        events.wait, after, min(left, 1.0), limiter=event_waiters()
                    )
                else:
                    await changes.wait(EVENTS_TOPIC, token, min(left, _EVENTS_POLL))
        except StoreUnavailableError as exc:
            raise APIError("the event log is unavailable", 503, str(exc)) from exc
        except StoreError as exc:  # an unreadable entry: its message says how to pass it
            raise APIError(f"the event log could not be read: {exc}", 500) from exc
        body = EventPageBody(
            events=[LoggedEventBody(offset=e.offset, event=e.event) for e in page],
            last_offset=last,
        )
        return _json(body)

    # --- tasks ---
    @app.get("/api/tasks", response_model=list[Task], tags=["tasks"])
    async def list_tasks(
        who: Caller,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        project: str | None = None,
        claimed_by: str | None = None,
        labels: Annotated[str | None, Query(description="comma-separated: has all")] = None,
        ready: Annotated[bool | None, Query(description="pending, dependencies done")] = None,
        labels_within: Annotated[str | None, Query(description=_WITHIN_DOC)] = None,
        limit: Annotated[int | None, Query(ge=1, le=_MAX_LIST)] = None,
        after: Annotated[
            str | None, Query(min_length=1, max_length=256, description=_AFTER_DOC)
        ] = None,
        wait: Annotated[float, Query(ge=0, le=_MAX_WAIT, description=_WAIT_DOC)] = 0,
        since: Annotated[str, Query(max_length=64, description=_SINCE_DOC)] = "",
    ) -> Response:
        """Tasks matching every filter, most urgent and oldest first (a bare array).

        A long-poll with ``wait`` (seconds) and ``since``: the answer waits until the
        watched topic changed since that token, at most ``wait`` seconds. The topic is
        the claims made for ``claimed_by`` when it is given (what a runner waits for),
        else any change that may let a dispatcher do more. Every answer carries the
        topic's current token in ``X-Agentic-Changes``. Pages: ``limit`` and ``after``
        (the id of the last task of the previous page); 422 for an unknown one."""
        topic = f"claims:{claimed_by}" if claimed_by else "dispatch"
        token = await changes.wait(topic, since, wait) if wait else changes.token(topic)
        wanted = [label for label in (labels or "").split(",") if label] or None
        within = (
            None
            if labels_within is None
            else [label for label in labels_within.split(",") if label]
        )
        try:
            # labels_within only when asked: a custom store older than it still lists.
            found = await calls(
                store.list,
                status,
                priority,
                project,
                claimed_by,
                wanted,
                ready,
                limit,
                after,
                **({} if within is None else {"labels_within": within}),
            )
        except NotFoundError as exc:  # the cursor, not the URL: bad input
            raise APIError(f"after: {exc.message}", 422) from exc
        answer = _json(found)
        answer.headers[CHANGES_HEADER] = token
        return answer

    @app.post("/api/tasks", status_code=201, response_model=Task, tags=["tasks"])
    async def create_task(
        who: Caller,
        task: NewTask,
        idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
    ) -> Response:
        """Create a task; empty id/status and zero times mean "the server decides"."""
        who.require_admin("create tasks")
        try:
            new = Task.model_validate(task.model_dump())
            created = await calls(store.create, new, idempotency_key or None)
            changes.bump("dispatch")
            return _json(created, 201)
        except NotFoundError as exc:  # a missing dependency is bad input, not a bad URL
            raise APIError(exc.message, 422) from exc

    # Before /api/tasks/{task_id}, which would take "counts" for a task id.
    @app.get("/api/tasks/counts", response_model=dict[TaskStatus, int], tags=["tasks"])
    async def count_tasks(who: Caller) -> Response:
        """How many tasks are in each status (every status is present), without
        listing them: what a status display needs on any backlog."""
        found = await calls(store.counts)
        return Response(
            json.dumps({status.value: n for status, n in found.items()}),
            media_type="application/json",
        )

    @app.get("/api/tasks/{task_id}", response_model=Task, tags=["tasks"])
    async def get_task(who: Caller, task_id: str) -> Response:
        """One task."""
        return _json(await calls(store.get, task_id))

    @app.patch("/api/tasks/{task_id}", response_model=Task, tags=["tasks"])
    async def update_task(who: Caller, task_id: str, update: UpdateBody) -> Response:
        """Partial update; an agent token may only set progress and notes of its task.

        With ``{"if_pending": {"reruns", "retry_count"}}`` it applies only while the
        task is still pending in that run with that retry count (409 otherwise)."""
        if not who.admin:
            if update.model_fields_set - {"progress", "notes"}:
                raise APIError("an agent token may only update progress and notes", 403)
            await require_holder(who, task_id, "update")
        seen = update.if_pending
        fields = TaskUpdate(**update.model_dump(exclude={"if_pending"}, exclude_unset=True))
        condition = None if seen is None else RunSeen(seen.reruns, seen.retry_count)
        updated = await calls(store.update, task_id, fields, condition)
        if update.model_fields_set & _DISPATCH_FIELDS:  # not progress or notes
            changes.bump("dispatch")
        return _json(updated)

    @app.post("/api/tasks/{task_id}/claim", response_model=TaskResponse, tags=["tasks"])
    async def claim_task(
        who: Caller, task_id: str, body: Annotated[ClaimRequest | None, Body()] = None
    ) -> Response:
        """Claim a pending task whose dependencies are completed; 409 if not claimable."""
        task, message = await claim(who, task_id, body or ClaimRequest())
        return _json(TaskResponse(task=task, message=message))

    async def claim(who: Principal, task_id: str, request: ClaimRequest) -> tuple[Task, str]:
        """One claim, as both claim endpoints make it: the task and the answer's message."""
        if not (who.admin or agent_claims):
            raise APIError(
                "an agent token cannot claim tasks on this server (server.agent_claims is"
                " off): the dispatcher claims them for agents",
                403,
            )
        agent = required_agent(who, request.agent_id)
        lease = request.lease_seconds or lease_seconds
        task = await calls(store.claim, task_id, agent, lease, request.job_id)
        changes.bump(f"claims:{agent}")
        metrics.inc("task_claims")
        return task, f"task {task_id} claimed by {agent}"

    @app.post("/api/tasks/{task_id}/withdraw", response_model=WithdrawResult, tags=["tasks"])
    async def withdraw_claim(who: Caller, task_id: str, body: WithdrawRequest) -> Response:
        """Settle a claim whose answer was lost: ``made`` true if it was made (the task
        carries its job id). Otherwise its job id can never claim the task from now on
        (a claim still on its way is refused), so its reservation can be given back."""
        who.require_admin("withdraw claims")
        made = await calls(store.withdraw_claim, task_id, body.job_id)
        message = "the claim was made" if made else "the claim was not made and never will be"
        return _json(WithdrawResult(made=made, message=message))

    @app.post("/api/tasks/{task_id}/retry", response_model=RetryResult, tags=["tasks"])
    async def retry_task(
        who: Caller, task_id: str, body: Annotated[RetryRequest | None, Body()] = None
    ) -> Response:
        """Run a failed task (dead-lettered or cancelled) again from the start (admin
        tokens): pending with no retry counted (blocked instead while a dependency of
        it is failed), and the tasks its failure blocked pending again once no other
        failed task blocks them (``unblocked``). 409 for a task that is not failed.

        With ``{"reruns": n}`` (the task's count the asker saw) it is made once: asked
        again once the task was retried, it answers the task as it is, ``repeated``,
        changing nothing (so a client may repeat it after a lost answer)."""
        who.require_admin("retry tasks")
        reruns = body.reruns if body is not None else None
        retried = await calls(store.retry, task_id, reruns)
        task = retried.task
        if retried.repeated:
            message = (
                f"task {task_id} was retried already (it has run {task.reruns + 1} times"
                f" in all): it is {task.status} now; nothing changed"
            )
            return _json(RetryResult(task=task, unblocked=[], repeated=True, message=message))
        changes.bump("dispatch")
        metrics.inc("task_retries")
        if task.status == TaskStatus.BLOCKED:
            message = (
                f"task {task_id} is blocked by failed task(s) {', '.join(task.blockers)}:"
                " retry those to run it"
            )
        else:
            message = f"task {task_id} is pending again"
        if retried.unblocked:
            message += f"; unblocked: {', '.join(retried.unblocked)}"
        return _json(RetryResult(task=task, unblocked=retried.unblocked, message=message))

    @app.post("/api/tasks/claims", response_model=ClaimResults, tags=["tasks"])
    async def claim_tasks(who: Caller, body: ClaimBatch) -> Response:
        """Several claims in one request, made one by one in order, each exactly as its
        own ``POST /api/tasks/{id}/claim`` would be: one refused (409, 403, 500, ...)
        leaves the others made. 200 with one outcome per claim, in the same order.

        Claims not begun within ``time_limit`` seconds of the request are not made:
        429 each. The caller sets it under its own timeout, so the answer arrives while
        it still waits and no claim is made after it gave up on the batch."""
        deadline = time.monotonic() + body.time_limit
        results = []
        for item in body.claims:
            if time.monotonic() < deadline:
                results.append(await claim_one(who, item))
            else:
                results.append(ClaimOutcome(task_id=item.task_id, code=429, message=_LATE))
        return _json(ClaimResults(results=results))

    async def claim_one(who: Principal, item: ClaimItem) -> ClaimOutcome:
        try:
            task, message = await claim(who, item.task_id, item)
        except Exception as exc:
            described = describe(exc, metrics)
            if described is None:
                # A bug (a corrupt record, say) fails this claim, never its batch-mates.
                log.exception("claim of task %s failed", item.task_id)
                described = (500, "internal server error", None)
            code, message, details = described
            if isinstance(exc, StoreError):
                log.error("claim of task %s: store failed: %s", item.task_id, exc)
            return ClaimOutcome(
                task_id=item.task_id, code=code, message=message, details=details_text(details)
            )
        return ClaimOutcome(task_id=item.task_id, code=200, message=message, task=task)

    @app.post("/api/tasks/{task_id}/complete", response_model=TaskResponse, tags=["tasks"])
    async def complete_task(who: Caller, task_id: str, body: CompleteRequest) -> Response:
        """Finish a claimed task; a failure is retried later (backoff) or dead-lettered.

        409 when the task is not held (by ``agent_id``, under ``job_id``, when given)."""
        agent = who.act_as(body.agent_id)
        retry_at = None
        if not body.success:
            current = await calls(store.get, task_id)
            attempt = current.retry_count + 1
            if policy.should_retry(attempt, current.max_retries):
                retry_at = clock() + policy.delay(attempt)
        task = await calls(store.complete, task_id, body.result(), agent, retry_at, body.job_id)
        changes.bump("dispatch")
        if task.status == TaskStatus.COMPLETED:
            message = "task completed"
        elif task.status == TaskStatus.FAILED:
            message = f"task dead-lettered: {task.fail_reason}"
        else:
            when = task.next_attempt_at.isoformat() if task.next_attempt_at else "now"
            message = f"task failed (retry {task.retry_count} of {task.max_retries} at {when})"
        return _json(TaskResponse(task=task, message=message))

    @app.post("/api/tasks/{task_id}/release", response_model=Task, tags=["tasks"])
    async def release_task(
        who: Caller, task_id: str, body: Annotated[ReleaseRequest | None, Body()] = None
    ) -> Response:
        """Give a claim back: pending again, no retry counted; 409 for a stale job_id."""
        request = body or ReleaseRequest()
        agent = who.act_as(request.agent_id)
        released = await calls(store.release, task_id, agent, request.job_id, request.reason)
        changes.bump("dispatch")
        return _json(released)

    @app.post("/api/tasks/{task_id}/lease", response_model=Task, tags=["tasks"])
    async def renew_lease(who: Caller, task_id: str, body: LeaseRequest) -> Response:
        """Extend the lease of a task the agent holds; 409 for a stale job_id."""
        agent = required_agent(who, body.agent_id)
        lease = body.lease_seconds or lease_seconds
        return _json(await calls(store.renew, task_id, agent, lease, body.job_id))

    # --- logs ---
    @app.post("/api/tasks/{task_id}/logs", response_model=AppendResponse, tags=["logs"])
    async def append_logs(who: Caller, task_id: str, body: LogLines) -> AppendResponse:
        """Append log lines; an agent token may log only to a task it holds. 409 (details
        ``log_full``) when the log would hold more than the server's ``max_log_lines``."""
        await require_holder(who, task_id, "log to")
        if max_log_lines and body.lines:
            # A line at this offset means the log cannot take them all. Concurrent
            # appends may each pass the check: the bound holds within one batch each.
            room = max(0, max_log_lines - len(body.lines))
            if len(body.lines) > max_log_lines or (await calls(store.logs, task_id, room, 1)).lines:
                raise APIError(
                    f"the log of task {task_id} is full: it holds at most {max_log_lines}"
                    " lines (server.max_log_lines); these were not added",
                    409,
                    LOG_FULL,
                )
        return AppendResponse(next_offset=await calls(store.append_logs, task_id, body.lines))

    @app.get(
        "/api/tasks/{task_id}/logs",
        response_model=LogPageBody,
        tags=["logs"],
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def get_logs(
        who: Caller,
        task_id: str,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=_MAX_LIST)] = 1000,
        follow: bool = False,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> LogPageBody | StreamingResponse:
        """A page of log lines, or with ``follow=true`` Server-Sent Events until the task
        is completed, failed or blocked (``Last-Event-ID`` resumes a stream)."""
        if not follow:
            page = await calls(store.logs, task_id, offset, limit)
            return LogPageBody(lines=page.lines, offset=page.offset, next_offset=page.next_offset)
        await calls(store.get, task_id)  # 404 now, not inside a 200 stream
        # SSE ids are opaque strings to a browser; ours are offsets, anything else is
        # ignored rather than refused so a reconnecting client is never locked out.
        # ASCII digits only: "²" is a digit to isdigit(), not to int().
        resume = last_event_id or ""
        start = int(resume) if resume.isascii() and resume.isdigit() else offset
        return StreamingResponse(
            follow_log(store, calls, task_id, start, log_poll_interval),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app
