"""TaskClient and AsyncTaskClient against respx-mocked HTTP: every method, error
mapping and retry rule."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx

import agentic._async_client
import agentic.client
from agentic import AsyncTaskClient
from agentic._client_wire import tls_verify
from agentic.client import Claim, LogEvent, TaskClient
from agentic.errors import APIError, ConfigError, ConflictError, NotFoundError, TransportError
from agentic.models import Priority, Task, TaskResult, TaskStatus, TaskUpdate
from agentic.retry import retry_after_of
from agentic.stores.base import RunSeen

BASE = "http://tasks.test"


def task_json(task_id: str = "t1", **fields: object) -> dict[str, object]:
    """A task as the server answers it."""
    data: dict[str, object] = {"id": task_id, "title": "do it", "status": "pending", **fields}
    return Task.model_validate(data).model_dump(mode="json")


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the client asked for, instead of sleeping."""
    return []


class AsyncDriven:
    """An AsyncTaskClient driven from these synchronous tests, one event loop for all
    its calls."""

    def __init__(self, client: AsyncTaskClient) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)
        if inspect.isasyncgenfunction(found):
            return lambda *args, **kwargs: self._iterate(found(*args, **kwargs))
        if inspect.iscoroutinefunction(found):
            return lambda *args, **kwargs: self._loop.run_until_complete(found(*args, **kwargs))
        return found

    def _iterate(self, stream: AsyncGenerator[Any, None]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(anext(stream))
                except StopAsyncIteration:
                    return
        finally:  # stopped early: the stream is closed, as a sync generator's would be
            self._loop.run_until_complete(stream.aclose())

    def __enter__(self) -> AsyncDriven:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())

    def dispose(self) -> None:
        """Close the client and its event loop (the fixture's teardown)."""
        self.close()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., TaskClient]]:
    """Makes clients as ``TaskClient(...)`` does, then (the second time) AsyncTaskClients
    (the source of TaskClient) driven through :class:`AsyncDriven`, with ``sleep``
    wrapped in a coroutine: every test using it checks both clients."""
    made: list[AsyncDriven] = []

    def make(*args: Any, sleep: Callable[[float], None] | None = None, **kwargs: Any) -> Any:
        if request.param == "sync":
            if sleep is not None:
                kwargs["sleep"] = sleep
            return TaskClient(*args, **kwargs)
        if sleep is not None:
            recorder = sleep

            async def waits(seconds: float) -> None:
                recorder(seconds)

            kwargs["sleep"] = waits
        made.append(AsyncDriven(AsyncTaskClient(*args, **kwargs)))
        return made[-1]

    yield make
    for driven in made:
        driven.dispose()


@pytest.fixture
def client(make_client: Callable[..., TaskClient], sleeps: list[float]) -> Iterator[TaskClient]:
    """A client with agent id a1 that records its waits (each of the two kinds)."""
    with make_client(BASE, "secret", agent_id="a1", retries=3, sleep=sleeps.append) as made:
        yield made


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    """respx router for BASE; every request must match a route."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


# --- headers and each method ---


def test_headers_follow_go_agentic(client: TaskClient, mock: respx.MockRouter) -> None:
    """Bearer token and Accept on every request, Content-Type with a body."""
    get = mock.get("/api/tasks/t1").respond(200, json=task_json())
    patch = mock.patch("/api/tasks/t1").respond(200, json=task_json())
    client.get_task("t1")
    client.update_task("t1", TaskUpdate(progress=50))
    request = get.calls.last.request
    assert request.headers["Authorization"] == "Bearer secret"
    assert request.headers["Accept"] == "application/json"
    assert "Content-Type" not in request.headers
    assert patch.calls.last.request.headers["Content-Type"] == "application/json"


def test_no_token_sends_no_authorization(mock: respx.MockRouter) -> None:
    """An empty token (open server) sends no Authorization header."""
    route = mock.get("/api/tasks/t1").respond(200, json=task_json())
    with TaskClient(BASE, "") as open_client:
        open_client.get_task("t1")
    assert "Authorization" not in route.calls.last.request.headers


def test_list_tasks_sends_only_set_filters(client: TaskClient, mock: respx.MockRouter) -> None:
    """Filters are sent only when set; labels are comma-joined; a bare array comes back."""
    route = mock.get("/api/tasks").respond(200, json=[task_json("t1"), task_json("t2")])
    tasks = client.list_tasks(
        status=TaskStatus.PENDING,
        priority=Priority.HIGH,
        project="p",
        claimed_by="a2",
        labels=["go", "py"],
        ready=True,
        limit=5,
    )
    assert [t.id for t in tasks] == ["t1", "t2"]
    params = dict(route.calls.last.request.url.params)
    assert params == {
        "status": "pending",
        "priority": "high",
        "project": "p",
        "claimed_by": "a2",
        "labels": "go,py",
        "ready": "true",
        "limit": "5",
    }
    client.list_tasks()
    assert dict(route.calls.last.request.url.params) == {}
    client.list_tasks(labels_within=["py", "go"])
    assert dict(route.calls.last.request.url.params) == {"labels_within": "py,go"}
    client.list_tasks(labels_within=[])  # only tasks without labels
    assert dict(route.calls.last.request.url.params) == {"labels_within": ""}
    with pytest.raises(ConfigError, match="without commas"):
        client.list_tasks(labels_within=["a,b"])


def test_get_task(client: TaskClient, mock: respx.MockRouter) -> None:
    """get_task returns the parsed Task."""
    mock.get("/api/tasks/t1").respond(200, json=task_json(labels=["x"]))
    task = client.get_task("t1")
    assert task.id == "t1" and task.labels == ["x"] and task.status is TaskStatus.PENDING


def test_create_task_sends_task_and_idempotency_key(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """create_task posts the Task with an Idempotency-Key (given or generated)."""
    route = mock.post("/api/tasks").respond(201, json=task_json("new"))
    created = client.create_task(Task(title="do it"), idempotency_key="k-1")
    assert created.id == "new"
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == "k-1"
    assert json.loads(request.content)["title"] == "do it"
    client.create_task(Task(title="again"))
    generated = route.calls.last.request.headers["Idempotency-Key"]
    assert len(generated) == 36 and generated != "k-1"


def test_create_task_leaves_an_unset_lease_length_out(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A create body carries lease_seconds and reruns only when set (older servers refuse them)."""
    route = mock.post("/api/tasks").respond(201, json=task_json("new"))
    client.create_task(Task(title="do it"))
    sent = json.loads(route.calls.last.request.content)
    assert set(sent) == set(Task.model_fields) - {"lease_seconds", "reruns"}
    client.create_task(Task(title="do it", lease_seconds=30, reruns=2))
    sent = json.loads(route.calls.last.request.content)
    assert (sent["lease_seconds"], sent["reruns"]) == (30, 2)


def test_claim_task_uses_own_agent_and_reads_claim_response(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """claim_task sends {"agent_id"} (default: the client's) and returns the task."""
    route = mock.post("/api/tasks/t1/claim").respond(
        200, json={"task": task_json(claimed_by="a1"), "message": "claimed"}
    )
    assert client.claim_task("t1").claimed_by == "a1"
    assert json.loads(route.calls.last.request.content) == {"agent_id": "a1"}
    client.claim_task("t1", agent_id="a2", lease_seconds=30, job_id="j1")
    assert json.loads(route.calls.last.request.content) == {
        "agent_id": "a2",
        "lease_seconds": 30,
        "job_id": "j1",
    }


def test_claim_accepts_a_bare_task(client: TaskClient, mock: respx.MockRouter) -> None:
    """Like go-agentic's client, a bare Task answer to a claim is accepted."""
    mock.post("/api/tasks/t1/claim").respond(200, json=task_json(claimed_by="a1"))
    assert client.claim_task("t1").claimed_by == "a1"


def test_claim_tasks_sends_one_batch_and_maps_each_outcome(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """claim_tasks posts every claim at once and returns, in order, each claimed Task
    or the error that claim alone would raise."""
    route = mock.post("/api/tasks/claims").respond(
        200,
        json={
            "results": [
                {"task_id": "t1", "code": 200, "task": task_json(claimed_by="a1")},
                {"task_id": "t2", "code": 409, "message": "taken", "details": "by a2"},
                {"task_id": "t3", "code": 404, "message": "no such task"},
                {"task_id": "t4", "code": 403, "message": "not yours"},
            ]
        },
    )
    claims = [Claim("t1", job_id="j1", lease_seconds=30), Claim("t2"), Claim("t3")]
    answers = client.claim_tasks([*claims, Claim("t4", agent_id="a2")])
    assert json.loads(route.calls.last.request.content) == {
        "claims": [
            {"task_id": "t1", "agent_id": "a1", "lease_seconds": 30, "job_id": "j1"},
            {"task_id": "t2", "agent_id": "a1"},
            {"task_id": "t3", "agent_id": "a1"},
            {"task_id": "t4", "agent_id": "a2"},
        ],
        "time_limit": 5.0,  # half the client's timeout (10 s)
    }
    first, taken, gone, refused = answers
    assert isinstance(first, Task) and first.claimed_by == "a1"
    assert isinstance(taken, ConflictError) and taken.details == "by a2"
    assert isinstance(gone, NotFoundError)
    assert isinstance(refused, APIError) and refused.code == 403
    assert str(refused) == "HTTP 403: not yours"


def test_claim_tasks_answer_it_cannot_read_is_a_2xx_api_error(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """Outcomes out of step with the claims raise an APIError with the answer's 2xx
    code; a success without its task is that claim's 2xx APIError: either way the
    claim may have been made (the dispatcher reads it back)."""
    route = mock.post("/api/tasks/claims")
    route.respond(200, json={"results": [{"task_id": "t2", "code": 200, "task": task_json("t2")}]})
    with pytest.raises(APIError) as raised:
        client.claim_tasks([Claim("t1")])
    assert raised.value.code == 200
    route.respond(200, json={"results": [{"task_id": "t1", "code": 200}]})
    (answer,) = client.claim_tasks([Claim("t1")])
    assert isinstance(answer, APIError) and answer.code == 200


def test_claim_tasks_is_never_repeated_and_limits_its_size(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A lost batch answer raises TransportError without a retry; 0 or 101 claims, or
    an empty task id, are refused before any request."""
    route = mock.post("/api/tasks/claims").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TransportError):
        client.claim_tasks([Claim("t1")])
    assert route.call_count == 1
    for bad in ([], [Claim("t")] * 101, [Claim("")]):
        with pytest.raises(ConfigError):
            client.claim_tasks(bad)
    assert route.call_count == 1


def test_server_features_read_the_health_check(client: TaskClient, mock: respx.MockRouter) -> None:
    """server_features lists what the health check names; a server that names none
    (go-agentic's plain {"status": "ok"}, or a body that is not JSON) has none."""
    route = mock.get("/v1/health")
    route.respond(200, json={"status": "ok", "features": ["attempt_fencing", "long_polls"]})
    assert client.server_features() == {"attempt_fencing", "long_polls"}
    route.respond(200, json={"status": "ok"})
    assert client.server_features() == frozenset()
    route.respond(200, text="fine")
    assert client.server_features() == frozenset()


def test_conditional_calls_read_the_features_once_for_a_while(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """Conditional updates and retries keep the features one health read found: five
    of each make one health request, and the conditions are sent."""
    features = ["update_fencing", "retry_reruns", "strict_bodies"]
    health = mock.get("/v1/health").respond(200, json={"status": "ok", "features": features})
    patch = mock.patch("/api/tasks/t1").respond(200, json=task_json(retry_count=1))
    retry = mock.post("/api/tasks/t1/retry").respond(200, json={"task": task_json()})
    for _ in range(5):
        client.update_task("t1", TaskUpdate(retry_count=1), RunSeen(0, 0))
        client.retry_task("t1", reruns=0)
    assert (health.call_count, patch.call_count, retry.call_count) == (1, 5, 5)
    assert json.loads(patch.calls.last.request.content)["if_pending"] == {
        "reruns": 0,
        "retry_count": 0,
    }
    assert json.loads(retry.calls.last.request.content) == {"reruns": 0}


def test_kept_features_are_read_again_after_a_while(
    client: TaskClient, mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once FEATURES_KEPT seconds have passed, the next conditional call reads the
    health check again, and a server that lost update_fencing gets no update."""
    monkeypatch.setattr(agentic.client, "FEATURES_KEPT", 0.0)
    monkeypatch.setattr(agentic._async_client, "FEATURES_KEPT", 0.0)
    health = mock.get("/v1/health")
    health.respond(200, json={"status": "ok", "features": ["update_fencing"]})
    patch = mock.patch("/api/tasks/t1").respond(200, json=task_json())
    client.update_task("t1", TaskUpdate(progress=1), RunSeen(0, 0))
    health.respond(200, json={"status": "ok", "features": ["strict_bodies"]})
    with pytest.raises(ConfigError, match="cannot make an update conditional"):
        client.update_task("t1", TaskUpdate(progress=1), RunSeen(0, 0))
    assert (health.call_count, patch.call_count) == (2, 1)


def test_a_server_that_lost_update_fencing_is_noticed_at_its_refusal(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A server behind the address that no longer lists update_fencing (a rollback)
    while the features are kept refuses the condition (422): the features are read at
    once and the call is the ConfigError of a server that cannot; the next one sends
    nothing. Another refusal (409) reads nothing."""
    health = mock.get("/v1/health")
    health.respond(200, json={"status": "ok", "features": ["update_fencing"]})
    patch = mock.patch("/api/tasks/t1")
    patch.respond(409, json={"code": 409, "message": "changed since it was read"})
    with pytest.raises(ConflictError):
        client.update_task("t1", TaskUpdate(progress=1), RunSeen(0, 0))
    health.respond(200, json={"status": "ok", "features": ["strict_bodies"]})
    patch.respond(422, json={"code": 422, "message": "unknown field body.if_pending"})
    with pytest.raises(ConfigError, match="cannot make an update conditional") as refused:
        client.update_task("t1", TaskUpdate(progress=1), RunSeen(0, 0))
    assert isinstance(refused.value.__cause__, APIError)
    assert (health.call_count, patch.call_count) == (2, 2)
    with pytest.raises(ConfigError, match="cannot make an update conditional"):
        client.update_task("t1", TaskUpdate(progress=1), RunSeen(0, 0))
    assert (health.call_count, patch.call_count) == (2, 2)


def test_a_server_that_lost_retry_reruns_gets_the_retry_unconditioned(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A retry without reruns given, refused (422) by a server that no longer lists
    retry_reruns, is made unconditioned, as a server read without it gets; with
    reruns given it is the ConfigError; a lost answer has the features read again."""
    health = mock.get("/v1/health")
    health.respond(200, json={"status": "ok", "features": ["retry_reruns"]})
    mock.get("/api/tasks/t1").respond(200, json=task_json(reruns=2))
    retry = mock.post("/api/tasks/t1/retry")
    retry.respond(200, json={"task": task_json()})
    client.retry_task("t1")
    health.respond(200, json={"status": "ok", "features": ["strict_bodies"]})
    retry.side_effect = [
        httpx.Response(422, json={"code": 422, "message": "unknown field body.reruns"}),
        httpx.Response(200, json={"task": task_json(reruns=3)}),
    ]
    assert client.retry_task("t1").task.reruns == 3
    sent = [call.request.content for call in retry.calls]
    assert [json.loads(body) if body else None for body in sent] == [
        {"reruns": 2},
        {"reruns": 2},
        None,
    ]
    assert health.call_count == 2
    with pytest.raises(ConfigError, match="cannot make a retry once"):
        client.retry_task("t1", reruns=3)
    assert (health.call_count, retry.call_count) == (2, 3)


def test_update_task_sends_only_set_fields(client: TaskClient, mock: respx.MockRouter) -> None:
    """update_task PATCHes the fields that are not None."""
    route = mock.patch("/api/tasks/t1").respond(200, json=task_json(progress=40))
    assert client.update_task("t1", TaskUpdate(progress=40, notes="half")).progress == 40
    assert json.loads(route.calls.last.request.content) == {"progress": 40, "notes": "half"}


def test_complete_task(client: TaskClient, mock: respx.MockRouter) -> None:
    """complete_task posts the TaskResult with the agent id and returns the task."""
    route = mock.post("/api/tasks/t1/complete").respond(
        200, json={"task": task_json(status="completed"), "message": "done"}
    )
    task = client.complete_task("t1", TaskResult(success=True, output="ok"))
    assert task.status is TaskStatus.COMPLETED
    body = json.loads(route.calls.last.request.content)
    assert body == {
        "success": True,
        "output": "ok",
        "artifacts": [],
        "error_message": "",
        "agent_id": "a1",
    }


def test_release_and_renew(client: TaskClient, mock: respx.MockRouter) -> None:
    """release_task and renew_lease post the agent id (and lease seconds)."""
    release = mock.post("/api/tasks/t1/release").respond(200, json=task_json())
    lease = mock.post("/api/tasks/t1/lease").respond(200, json=task_json(claimed_by="a1"))
    assert client.release_task("t1").status is TaskStatus.PENDING
    assert json.loads(release.calls.last.request.content) == {"agent_id": "a1"}
    client.renew_lease("t1", lease_seconds=60)
    assert json.loads(lease.calls.last.request.content) == {"agent_id": "a1", "lease_seconds": 60}


def test_release_sends_its_reason_cut_to_the_limit(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """release_task sends a reason when given, cut to 1,000 characters, not refused."""
    release = mock.post("/api/tasks/t1/release").respond(200, json=task_json())
    client.release_task("t1", reason="at capacity")
    assert json.loads(release.calls.last.request.content)["reason"] == "at capacity"
    client.release_task("t1", reason="x" * 5000)
    assert json.loads(release.calls.last.request.content)["reason"] == "x" * 1000


def test_read_events_pages_the_servers_log(client: TaskClient, mock: respx.MockRouter) -> None:
    """read_events sends after and limit and gives LoggedEvents and the newest offset;
    bad arguments are refused before any request."""
    event = {"id": "e1", "type": "agent_offline", "time": "2026-01-02T03:04:05Z"}
    route = mock.get("/api/events").respond(
        200, json={"events": [{"offset": 4, "event": event}], "last_offset": 9}
    )
    page = client.read_events(after=3, limit=10)
    assert dict(route.calls.last.request.url.params) == {"after": "3", "limit": "10"}
    assert [(e.offset, e.event.id) for e in page.events] == [(4, "e1")]
    assert page.last_offset == 9
    with pytest.raises(ConfigError, match="limit must be from 1 to 1000"):
        client.read_events(limit=0)
    assert route.call_count == 1


def test_read_events_takes_a_type_a_newer_server_added(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """An event of a type this version does not know (a newer server's log) is read
    with its type as written, not taken for an unexpected answer."""
    event = {"id": "e1", "type": "task_paused", "time": "2026-01-02T03:04:05Z"}
    mock.get("/api/events").respond(
        200, json={"events": [{"offset": 4, "event": event}], "last_offset": 4}
    )
    assert [e.event.type for e in client.read_events().events] == ["task_paused"]


def test_job_id_fences_complete_release_and_renew(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A given job_id ("" too) is sent in each body; None sends none (go-agentic's body)."""
    complete = mock.post("/api/tasks/t1/complete").respond(200, json={"task": task_json()})
    release = mock.post("/api/tasks/t1/release").respond(200, json=task_json())
    lease = mock.post("/api/tasks/t1/lease").respond(200, json=task_json())
    for job in ("job-2", ""):
        client.complete_task("t1", TaskResult(success=True), job_id=job)
        client.release_task("t1", job_id=job)
        client.renew_lease("t1", job_id=job)
        for route in (complete, release, lease):
            assert json.loads(route.calls.last.request.content)["job_id"] == job
    client.complete_task("t1", TaskResult(success=True))
    client.release_task("t1")
    client.renew_lease("t1")
    for route in (complete, release, lease):
        assert "job_id" not in json.loads(route.calls.last.request.content)
    with pytest.raises(ConfigError, match="job_id must be a string"):
        client.release_task("t1", job_id=7)  # type: ignore[arg-type]
    assert release.call_count == 3


def test_list_tasks_sends_the_page_cursor(client: TaskClient, mock: respx.MockRouter) -> None:
    """list_tasks(after=...) sends the cursor with the limit; an empty one is refused."""
    route = mock.get("/api/tasks").respond(200, json=[])
    assert client.list_tasks(limit=10, after="t9") == []
    assert dict(route.calls.last.request.url.params) == {"limit": "10", "after": "t9"}
    with pytest.raises(ConfigError, match="after"):
        client.list_tasks(after="")
    assert route.call_count == 1


def test_withdraw_claim_posts_the_job_id_and_is_retried(
    client: TaskClient, mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """withdraw_claim posts the job id, reads "made", and (idempotent) retries a 503."""
    route = mock.post("/api/tasks/t1/withdraw")
    route.side_effect = [
        httpx.Response(503),
        httpx.Response(200, json={"made": False, "message": "not made"}),
    ]
    assert client.withdraw_claim("t1", "job-1") is False
    assert json.loads(route.calls.last.request.content) == {"job_id": "job-1"}
    assert route.call_count == 2 and len(sleeps) == 1


def test_stale_job_id_answer_is_conflict(client: TaskClient, mock: respx.MockRouter) -> None:
    """The server's 409 for a stale attempt is ConflictError carrying its message, not retried."""
    message = "cannot renew task t1 for job 'job-1': a stale attempt: the task was claimed again"
    route = mock.post("/api/tasks/t1/lease").respond(
        409, json={"code": 409, "message": message, "details": None}
    )
    with pytest.raises(ConflictError) as info:
        client.renew_lease("t1", job_id="job-1")
    assert (info.value.code, info.value.message) == (409, message)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_task("t1"),
        lambda c: c.complete_task("t1", TaskResult(success=True), job_id="j"),
        lambda c: c.renew_lease("t1"),
        lambda c: list(c.follow_logs("t1")),
    ],
)
def test_closed_client_raises_config_error(
    make_client: Callable[..., TaskClient],
    mock: respx.MockRouter,
    sleeps: list[float],
    call: Callable[[TaskClient], object],
) -> None:
    """After close() every call is ConfigError (httpx's RuntimeError on __cause__), not retried."""
    closed = make_client(BASE, "t", agent_id="a1", sleep=sleeps.append)
    closed.close()
    with pytest.raises(ConfigError, match="the client is closed") as info:
        call(closed)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not mock.calls and not sleeps


def test_url_httpx_cannot_build_is_config_error(client: TaskClient, mock: respx.MockRouter) -> None:
    """A query past httpx's URL length limit is ConfigError, not an escaping httpx.InvalidURL."""
    with pytest.raises(ConfigError, match="cannot build the request URL") as info:
        client.list_tasks(project="x" * 70_000)
    assert isinstance(info.value.__cause__, httpx.InvalidURL)
    assert not mock.calls


def test_logs_append_and_page(client: TaskClient, mock: respx.MockRouter) -> None:
    """append_logs returns next_offset; get_logs returns a LogPage."""
    post = mock.post("/api/tasks/t1/logs").respond(200, json={"next_offset": 2})
    mock.get("/api/tasks/t1/logs").respond(
        200, json={"lines": ["b"], "offset": 1, "next_offset": 2}
    )
    assert client.append_logs("t1", ["a", "b"]) == 2
    assert json.loads(post.calls.last.request.content) == {"lines": ["a", "b"]}
    page = client.get_logs("t1", offset=1, limit=10)
    assert (page.lines, page.offset, page.next_offset) == (["b"], 1, 2)
    with pytest.raises(ConfigError):
        client.append_logs("t1", [1])  # type: ignore[list-item]


def test_follow_logs_decodes_sse(client: TaskClient, mock: respx.MockRouter) -> None:
    """follow_logs yields log, status, ping and end events from the SSE stream."""
    stream = (
        ": keep-alive\n\n"
        'event: status\ndata: {"status": "in_progress"}\n\n'
        'id: 1\nevent: log\ndata: {"offset": 0, "line": "hello"}\n\n'
        'event: novel\ndata: {"x": 1}\n\n'
        'event: end\ndata: {"status": "failed", "next_offset": 1}\n\n'
    )
    route = mock.get("/api/tasks/t1/logs").respond(
        200, content=stream.encode(), headers={"Content-Type": "text/event-stream"}
    )
    events = list(client.follow_logs("t1", offset=0))
    assert events == [
        LogEvent("ping"),
        LogEvent("status", status=TaskStatus.IN_PROGRESS),
        LogEvent("log", line="hello", offset=0),
        LogEvent("end", offset=1, status=TaskStatus.FAILED),
    ]
    request = route.calls.last.request
    assert request.url.params["follow"] == "true"
    assert request.headers["Accept"] == "text/event-stream"


def test_follow_logs_errors(client: TaskClient, mock: respx.MockRouter) -> None:
    """A 404 stream is NotFoundError; a broken connection is TransportError."""
    route = mock.get("/api/tasks/t1/logs")
    route.respond(404, json={"code": 404, "message": "no task t1"})
    with pytest.raises(NotFoundError):
        list(client.follow_logs("t1"))
    route.side_effect = httpx.ReadError("reset")
    with pytest.raises(TransportError) as info:
        list(client.follow_logs("t1"))
    assert isinstance(info.value.__cause__, httpx.ReadError)
    route.side_effect = None
    route.respond(200, content=b"event: log\ndata: not json\n\n")
    with pytest.raises(APIError, match="malformed log event"):
        list(client.follow_logs("t1"))


def test_ping_falls_back_to_old_health_path(client: TaskClient, mock: respx.MockRouter) -> None:
    """ping uses /v1/health, then /api/health on older servers."""
    mock.get("/v1/health").respond(404)
    old = mock.get("/api/health").respond(200, json={"status": "ok"})
    client.ping()
    assert old.called


# --- argument checks ---


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_task(""),
        lambda c: c.claim_task(""),
        lambda c: c.update_task("", TaskUpdate()),
        lambda c: c.complete_task("", TaskResult(success=True)),
        lambda c: c.release_task(""),
        lambda c: c.renew_lease(""),
        lambda c: c.append_logs("", ["x"]),
        lambda c: c.get_logs(""),
        lambda c: list(c.follow_logs("")),
    ],
)
def test_empty_ids_rejected_before_any_request(
    client: TaskClient, mock: respx.MockRouter, call: Callable[[TaskClient], object]
) -> None:
    """An empty task id raises ConfigError and sends nothing."""
    with pytest.raises(ConfigError):
        call(client)
    assert not mock.calls


def test_ids_are_path_escaped(client: TaskClient, mock: respx.MockRouter) -> None:
    """An id with / or ? cannot reach another route (go-agentic's url.PathEscape)."""
    route = mock.get(url__regex=r".*").respond(200, json=task_json())
    client.get_task("a/b?c")
    assert route.calls.last.request.url.raw_path == b"/api/tasks/a%2Fb%3Fc"


def test_claim_without_any_agent_id_is_rejected(mock: respx.MockRouter) -> None:
    """A claim needs an agent id, from the call or the client."""
    with TaskClient(BASE, "t") as anonymous, pytest.raises(ConfigError):
        anonymous.claim_task("t1")
    assert not mock.calls


@pytest.mark.parametrize("url", ["", "tasks.test", "ftp://x"])
def test_bad_base_url(url: str) -> None:
    """base_url must be http(s)."""
    with pytest.raises(ConfigError):
        TaskClient(url, "t")


# --- error mapping ---


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, NotFoundError), (409, ConflictError), (400, APIError), (403, APIError), (500, APIError)],
)
def test_error_body_mapping(
    client: TaskClient, mock: respx.MockRouter, status: int, kind: type[APIError]
) -> None:
    """{"code","message","details"} becomes the matching error with code = HTTP status."""
    mock.get("/api/tasks/t1").respond(
        status, json={"code": 999, "message": "nope", "details": {"why": 1}}
    )
    with pytest.raises(kind) as info:
        client.get_task("t1")
    assert type(info.value) is kind
    assert (info.value.code, info.value.message, info.value.details) == (
        status,
        "nope",
        {"why": 1},
    )


def test_error_without_message_uses_status_text(client: TaskClient, mock: respx.MockRouter) -> None:
    """A body without a message gives "HTTP n: StatusText" with the raw body as details."""
    mock.get("/api/tasks/t1").respond(400, text="<html>bad</html>")
    with pytest.raises(APIError) as info:
        client.get_task("t1")
    assert str(info.value) == "HTTP 400: Bad Request"
    assert info.value.details == "<html>bad</html>"


def test_unparseable_success_body_is_api_error(client: TaskClient, mock: respx.MockRouter) -> None:
    """A 2xx answer that is not a Task raises APIError, not a pydantic error."""
    mock.get("/api/tasks/t1").respond(200, text="not json")
    mock.get("/api/tasks").respond(200, json={"not": "a list"})
    mock.post("/api/tasks/t1/logs").respond(200, json={})
    with pytest.raises(APIError, match="unexpected answer"):
        client.get_task("t1")
    with pytest.raises(APIError, match="unexpected answer"):
        client.list_tasks()
    with pytest.raises(APIError, match="unexpected answer"):
        client.append_logs("t1", ["x"])


# --- retries ---


def test_connect_errors_are_retried_then_transport_error(
    client: TaskClient, mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """Connect errors are retried `retries` times, then TransportError from the cause."""
    route = mock.get("/api/tasks/t1").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransportError) as info:
        client.get_task("t1")
    assert route.call_count == 4 and len(sleeps) == 3
    assert info.value.code == 0
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_claim_and_complete_retried_on_connect_error_only(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """A claim that never reached the server is retried; one that did is not."""
    claimed = {"task": task_json(claimed_by="a1"), "message": "claimed"}
    claim = mock.post("/api/tasks/t1/claim").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=claimed)]
    )
    assert client.claim_task("t1").claimed_by == "a1"
    assert claim.call_count == 2
    complete = mock.post("/api/tasks/t1/complete").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TransportError):
        client.complete_task("t1", TaskResult(success=True))
    assert complete.call_count == 1


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_unsafe_posts_not_retried_on_status(
    client: TaskClient, mock: respx.MockRouter, status: int
) -> None:
    """Claim, complete, release and log appends are not repeated after an answer."""
    routes = [
        mock.post(f"/api/tasks/t1/{name}").respond(status)
        for name in ("claim", "complete", "release", "logs")
    ]
    calls: list[Callable[[], object]] = [
        lambda: client.claim_task("t1"),
        lambda: client.complete_task("t1", TaskResult(success=False)),
        lambda: client.release_task("t1"),
        lambda: client.append_logs("t1", ["x"]),
    ]
    for call in calls:
        with pytest.raises(APIError) as info:
            call()
        assert info.value.code == status
    assert [r.call_count for r in routes] == [1, 1, 1, 1]


def test_a_refusal_carries_the_wait_the_server_asked(
    client: TaskClient, mock: respx.MockRouter
) -> None:
    """An error answer's Retry-After is on the APIError (retry_after), for callers
    that retry on their own schedule."""
    mock.post("/api/tasks/t1/complete").respond(429, headers={"Retry-After": "7"})
    with pytest.raises(APIError) as refused:
        client.complete_task("t1", TaskResult(success=True))
    assert (refused.value.code, refused.value.retry_after) == (429, 7.0)
    assert retry_after_of(refused.value) == 7.0


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_safe_calls_retried_on_status(
    client: TaskClient, mock: respx.MockRouter, status: int
) -> None:
    """GET is retried on 429/502/503/504 until it succeeds."""
    route = mock.get("/api/tasks/t1").mock(
        side_effect=[httpx.Response(status), httpx.Response(200, json=task_json())]
    )
    assert client.get_task("t1").id == "t1"
    assert route.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_no_retry_on_other_4xx(client: TaskClient, mock: respx.MockRouter, status: int) -> None:
    """Other 4xx answers are final."""
    route = mock.get("/api/tasks/t1").respond(status, json={"message": "no"})
    with pytest.raises(APIError):
        client.get_task("t1")
    assert route.call_count == 1


def test_retry_after_seconds_and_date_are_honoured(
    client: TaskClient, mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """Retry-After as delta-seconds and as an HTTP date sets the wait."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    mock.get("/api/tasks/t1").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "7"}),
            httpx.Response(429, headers={"Retry-After": when}),
            httpx.Response(429, headers={"Retry-After": "garbage"}),
            httpx.Response(200, json=task_json()),
        ]
    )
    client.get_task("t1")
    assert sleeps[0] == 7.0
    assert 25 <= sleeps[1] <= 30
    assert 0 <= sleeps[2] <= 5  # unparseable header: ordinary backoff


def test_retry_after_beyond_max_wait_gives_up(
    make_client: Callable[..., TaskClient], mock: respx.MockRouter
) -> None:
    """A Retry-After longer than max_retry_wait raises at once instead of waiting less."""
    waits: list[float] = []
    route = mock.get("/api/tasks/t1").respond(503, headers={"Retry-After": "3600"})
    impatient = make_client(BASE, "t", sleep=waits.append, max_retry_wait=60)
    with impatient, pytest.raises(APIError) as info:
        impatient.get_task("t1")
    assert info.value.code == 503 and route.call_count == 1 and waits == []


def test_retries_exhausted_raise_last_answer(
    client: TaskClient, mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """After the last retry the last answer's error is raised."""
    route = mock.get("/api/tasks").respond(502, json={"message": "gateway"})
    with pytest.raises(APIError, match="gateway"):
        client.list_tasks()
    assert route.call_count == 4 and len(sleeps) == 3


def test_create_retry_reuses_idempotency_key(client: TaskClient, mock: respx.MockRouter) -> None:
    """A create retried after a lost answer sends the same Idempotency-Key."""
    route = mock.post("/api/tasks").mock(
        side_effect=[
            httpx.ReadTimeout("lost"),
            httpx.Response(503),
            httpx.Response(201, json=task_json("new")),
        ]
    )
    assert client.create_task(Task(title="x")).id == "new"
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert route.call_count == 3 and len(keys) == 1


def test_retry_policy_is_used(
    make_client: Callable[..., TaskClient], mock: respx.MockRouter
) -> None:
    """A given retry policy decides the waits."""

    class Fixed:
        def delay(self, attempt: int, retry_after: float | None = None) -> float:
            return 100.0 + attempt if retry_after is None else retry_after

    waits: list[float] = []
    mock.get("/api/tasks/t1").mock(side_effect=httpx.ConnectError("refused"))
    fixed = make_client(BASE, "t", retries=2, retry_policy=Fixed(), sleep=waits.append)
    with fixed, pytest.raises(TransportError):
        fixed.get_task("t1")
    assert waits == [101.0, 102.0]  # attempt counts retries from 1


_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "https_proxy", "HTTPS_PROXY")


@pytest.mark.parametrize(
    ("url", "proxy", "verify"),
    [
        ("http://127.0.0.1:8080", None, False),
        ("https://tasks.example.com", None, True),
        ("http://127.0.0.1:8080", ("HTTP_PROXY", "https://proxy.example.com:3128"), True),
        ("http://127.0.0.1:8080", ("all_proxy", "https://proxy.example.com:3128"), True),
        ("http://127.0.0.1:8080", ("HTTPS_PROXY", "https://proxy.example.com:3128"), False),
    ],
)
def test_certificates_are_loaded_only_where_tls_can_happen(
    monkeypatch: pytest.MonkeyPatch, url: str, proxy: tuple[str, str] | None, verify: bool
) -> None:
    """http:// with no proxy for it loads no CA bundle; https:// or a proxy keeps the checks."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    if proxy is not None:
        monkeypatch.setenv(*proxy)
    assert tls_verify(url) is verify


def test_an_http_client_still_talks_to_its_server() -> None:
    """Built without certificates, a client of an http:// URL makes its requests as before."""
    with respx.mock(base_url="http://tasks.local") as mock:
        mock.get("/api/tasks/t1").respond(json=Task(id="t1", title="x").model_dump(mode="json"))
        with TaskClient("http://tasks.local", token="") as client:
            assert client.get_task("t1").title == "x"
