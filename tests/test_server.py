"""The task API server in-process (FastAPI TestClient) on the memory TaskStore."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from agentic.errors import ConfigError, StoreError
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.retry import RetryPolicy
from agentic.server import create_app
from agentic.server._calls import StoreCalls
from agentic.server._changes import Changes
from agentic.server._errors import StoreFailures
from agentic.server._json import body_model, model_at
from agentic.server._metrics import Metrics
from agentic.server.app import _requeue_loop
from agentic.stores.base import LogPage
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import FakeClock

with warnings.catch_warnings():
    # Starlette asks for httpx2 here; httpx is what this project uses.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ADMIN = {"Authorization": "Bearer admin-token"}
AGENT1 = {"Authorization": "Bearer agent-1-token"}
AGENT2 = {"Authorization": "Bearer agent-2-token"}
TOKENS: dict[str, Any] = {
    "admin_tokens": ["admin-token"],
    "agent_tokens": {"agent-1-token": "a1", "agent-2-token": "a2"},
}


@pytest.fixture
def clock() -> FakeClock:
    """The store's and the server's clock."""
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryTaskStore:
    """An empty memory task store on the fake clock."""
    return MemoryTaskStore(clock=clock)


@pytest.fixture
def make_client(store: MemoryTaskStore, clock: FakeClock) -> Iterator[Callable[..., TestClient]]:
    """Build a TestClient for create_app(store, **options) (tokens by default)."""
    opened: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        settings = {**TOKENS, "requeue_interval": None, "clock": clock, **options}
        client = TestClient(create_app(store, **settings))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_client: Callable[..., TestClient]) -> TestClient:
    """A client of a server with admin and agent tokens."""
    return make_client()


def new_task(store: MemoryTaskStore, **fields: Any) -> Task:
    """Create a task directly in the store."""
    return store.create(Task(title=fields.pop("title", "work"), **fields))


def claimed_by(store: MemoryTaskStore, agent: str = "a1", **fields: Any) -> Task:
    """A task claimed by ``agent``."""
    return store.claim(new_task(store, **fields).id, agent, 60)


def assert_error(response: Any, status: int) -> dict[str, Any]:
    """The answer has ``status`` and the {"code","message","details"} body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == status and body["message"]
    assert body["details"] is None or isinstance(body["details"], str)
    return body


# --- health, metrics, openapi ---


def test_health_and_metrics_need_no_token(api: TestClient) -> None:
    """Both health paths and /metrics answer without a token."""
    health = api.get("/v1/health").json()
    assert health["status"] == "ok" and health["version"]
    assert set(health["features"]) == {
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
    }
    assert api.get("/api/health").status_code == 200
    response = api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE agentic_http_requests_total counter" in response.text


def test_openapi_lists_every_endpoint(api: TestClient) -> None:
    """/openapi.json documents the API with bearer auth."""
    spec = api.get("/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/claim",
        "/api/tasks/{task_id}/complete",
        "/api/tasks/{task_id}/release",
        "/api/tasks/{task_id}/lease",
        "/api/tasks/{task_id}/logs",
        "/v1/health",
        "/metrics",
    }
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_metrics_count_requests_claims_and_conflicts(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """Requests by route template and status; claims and 409s counted."""
    task = new_task(store)
    api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a1"}, headers=ADMIN)
    api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a2"}, headers=ADMIN)
    api.get("/no/such/path")
    text = api.get("/metrics").text
    route = 'route="/api/tasks/{task_id}/claim"'
    assert f'agentic_http_requests_total{{method="POST",{route},status="200"}} 1' in text
    assert f'agentic_http_requests_total{{method="POST",{route},status="409"}} 1' in text
    assert 'route="unmatched",status="404"} 1' in text
    assert "agentic_task_claims_total 1" in text
    assert "agentic_task_conflicts_total 1" in text
    assert task.id not in text


# --- auth ---


def test_missing_and_wrong_tokens_get_401(api: TestClient, store: MemoryTaskStore) -> None:
    """Every /api/tasks route needs a valid bearer token; the message says where a
    token goes, or that the server was started with other ones."""
    task = new_task(store)
    said = []
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
        response = api.get(f"/api/tasks/{task.id}", headers=headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        said.append(response.json()["message"])
    assert "(TaskClient's token argument)" in said[0]
    assert "not one this server was started with" in said[1]
    assert "admin-token" not in api.get("/api/tasks").text


def test_agent_token_cannot_act_for_another_agent(api: TestClient, store: MemoryTaskStore) -> None:
    """An agent token naming another agent id gets 403 and changes nothing."""
    task = new_task(store)
    held = claimed_by(store, "a2")
    before = store.list()
    assert_error(
        api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a2"}, headers=AGENT1), 403
    )
    assert_error(
        api.post(f"/api/tasks/{held.id}/release", json={"agent_id": "a2"}, headers=AGENT1), 403
    )
    assert_error(
        api.post(f"/api/tasks/{held.id}/lease", json={"agent_id": "a2"}, headers=AGENT1), 403
    )
    assert_error(
        api.post(
            f"/api/tasks/{held.id}/complete",
            json={"success": True, "agent_id": "a2"},
            headers=AGENT1,
        ),
        403,
    )
    assert_error(api.post(f"/api/tasks/{held.id}/logs", json={"lines": ["x"]}, headers=AGENT1), 403)
    assert_error(api.patch(f"/api/tasks/{held.id}", json={"progress": 5}, headers=AGENT1), 403)
    assert store.list() == before
    assert store.logs(held.id).lines == []


def test_agent_claims_off_leaves_claims_to_admin_tokens(
    make_client: Callable[..., TestClient], store: MemoryTaskStore
) -> None:
    """With agent_claims off an agent token's claim, alone or in a batch, is 403 and
    claims nothing; an admin token still claims for any agent."""
    api = make_client(agent_claims=False)
    task = new_task(store)
    refused = assert_error(api.post(f"/api/tasks/{task.id}/claim", json={}, headers=AGENT1), 403)
    assert "server.agent_claims" in refused["message"]
    batch = {"claims": [{"task_id": task.id, "agent_id": "a1"}]}
    answer = api.post("/api/tasks/claims", json=batch, headers=AGENT1).json()
    assert [result["code"] for result in answer["results"]] == [403]
    assert store.get(task.id).status is TaskStatus.PENDING
    claimed = api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a1"}, headers=ADMIN)
    assert claimed.status_code == 200 and store.get(task.id).claimed_by == "a1"


def test_agent_token_acts_as_itself(api: TestClient, store: MemoryTaskStore) -> None:
    """An agent token claims, reports progress, logs, renews and completes as its own id."""
    task = new_task(store)
    claim = api.post(f"/api/tasks/{task.id}/claim", headers=AGENT1)
    assert claim.status_code == 200 and claim.json()["task"]["claimed_by"] == "a1"
    assert (
        api.patch(f"/api/tasks/{task.id}", json={"progress": 50}, headers=AGENT1).json()["progress"]
        == 50
    )
    assert api.post(
        f"/api/tasks/{task.id}/logs", json={"lines": ["hi"]}, headers=AGENT1
    ).json() == {"next_offset": 1}
    assert api.post(f"/api/tasks/{task.id}/lease", json={}, headers=AGENT1).status_code == 200
    done = api.post(f"/api/tasks/{task.id}/complete", json={"success": True}, headers=AGENT1)
    assert done.json()["task"]["status"] == "completed"


def test_agent_token_admin_only_operations(api: TestClient, store: MemoryTaskStore) -> None:
    """Agent tokens cannot create tasks or change status fields."""
    held = claimed_by(store, "a1")
    assert_error(api.post("/api/tasks", json={"title": "x"}, headers=AGENT1), 403)
    assert_error(api.patch(f"/api/tasks/{held.id}", json={"status": "failed"}, headers=AGENT1), 403)
    assert len(store.list()) == 1


def test_agent_cannot_complete_a_task_another_agent_holds(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """Completing without naming anyone still checks that the caller holds the task."""
    held = claimed_by(store, "a2")
    assert_error(
        api.post(f"/api/tasks/{held.id}/complete", json={"success": True}, headers=AGENT1), 409
    )
    assert store.get(held.id).status is TaskStatus.IN_PROGRESS


def test_open_server_needs_no_token(make_client: Callable[..., TestClient]) -> None:
    """With no tokens configured every caller is an admin."""
    api = make_client(admin_tokens=(), agent_tokens={})
    assert api.post("/api/tasks", json={"title": "x"}).status_code == 201


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://testserver:8081", "http://[::1"]
)
def test_a_web_page_of_another_site_is_refused(
    make_client: Callable[..., TestClient], store: MemoryTaskStore, origin: str
) -> None:
    """A request with another site's Origin (a page's form or no-cors fetch) gets 403
    and creates nothing, on an open server; its own origin is served."""
    api = make_client(admin_tokens=(), agent_tokens={})
    refused = assert_error(
        api.post("/api/tasks", json={"title": "x"}, headers={"Origin": origin}), 403
    )
    assert "cross-origin" in refused["message"]
    assert_error(api.get("/api/tasks", headers={"Origin": origin}), 403)
    assert store.list() == []
    own = {"Origin": "http://testserver"}  # TestClient's Host
    assert api.post("/api/tasks", json={"title": "x"}, headers=own).status_code == 201


@pytest.mark.parametrize(
    ("host", "code"),
    [
        ("evil.example:8080", 403),
        ("127.0.0.1.evil.example", 403),
        ("127.0.0.1:8080", 200),
        ("[::1]:8080", 200),
        ("localhost:8080", 200),
        ("10.1.2.3", 200),
        ("agents.internal:8080", 200),
    ],
)
def test_an_open_server_answers_only_its_own_host_names(
    make_client: Callable[..., TestClient], host: str, code: int
) -> None:
    """With trusted_hosts, a Host that is not one of them, an IP address or localhost
    (a page's own DNS name pointed at the server) gets 403."""
    api = make_client(admin_tokens=(), agent_tokens={}, trusted_hosts=["agents.internal"])
    answer = api.get("/api/tasks", headers={"Host": host})
    assert answer.status_code == code, answer.text


@pytest.mark.parametrize(
    "options",
    [
        {"admin_tokens": ["same"], "agent_tokens": {"same": "a1"}},
        {"admin_tokens": [""]},
        {"agent_tokens": {"t": ""}},
        {"lease_seconds": 0},
    ],
)
def test_bad_server_configuration(store: MemoryTaskStore, options: dict[str, Any]) -> None:
    """Overlapping or empty tokens and a zero lease are refused."""
    with pytest.raises(ConfigError):
        create_app(store, **options)


# --- create, list, get, update ---


def test_create_as_go_agentic_sends_it(
    api: TestClient, store: MemoryTaskStore, clock: FakeClock
) -> None:
    """Empty id/status/priority and zero times mean "the server decides"."""
    body = {
        "id": "",
        "title": "port it",
        "description": "",
        "priority": "",
        "status": "",
        "labels": ["go"],
        "created_at": "0001-01-01T00:00:00Z",
        "updated_at": "0001-01-01T00:00:00Z",
        "claimed_at": "0001-01-01T00:00:00Z",
    }
    response = api.post("/api/tasks", json=body, headers=ADMIN)
    assert response.status_code == 201
    task = Task.model_validate(response.json())
    assert task.id and task.status is TaskStatus.PENDING and task.priority == "medium"
    assert task.created_at is not None and task.created_at.timestamp() == clock()
    assert store.get(task.id) == task


def test_create_honours_idempotency_key(api: TestClient, store: MemoryTaskStore) -> None:
    """The same Idempotency-Key returns the first task instead of creating another."""
    headers = {**ADMIN, "Idempotency-Key": "k1"}
    first = api.post("/api/tasks", json={"title": "once"}, headers=headers).json()
    again = api.post("/api/tasks", json={"title": "once"}, headers=headers).json()
    assert first["id"] == again["id"] and len(store.list()) == 1
    other = api.post("/api/tasks", json={"title": "another"}, headers=headers)
    assert "created task" in assert_error(other, 422)["message"]
    assert len(store.list()) == 1


def test_create_with_unknown_dependency_is_422(api: TestClient, store: MemoryTaskStore) -> None:
    """A missing dependency is bad input."""
    body = {"title": "x", "dependencies": ["ghost"]}
    assert "ghost" in assert_error(api.post("/api/tasks", json=body, headers=ADMIN), 422)["message"]
    assert store.list() == []


def test_list_filters(api: TestClient, store: MemoryTaskStore) -> None:
    """status, priority, project, claimed_by, labels=a,b, labels_within=a (empty: no
    labels), ready and limit filter the bare array."""
    done = new_task(store, title="dep")
    new_task(store, title="waits", dependencies=[done.id], labels=["a", "b"])
    new_task(store, title="high", priority="high", project="p", labels=["a"])
    claimed_by(store, "a1", title="held")

    def ids(query: str) -> list[str]:
        response = api.get(f"/api/tasks{query}", headers=AGENT1)
        assert response.status_code == 200 and isinstance(response.json(), list)
        return [t["title"] for t in response.json()]

    assert ids("?labels=a,b") == ["waits"]
    assert ids("?labels=a") == ["high", "waits"]
    # (dep and held were made at one instant of the fake clock: their order is their ids')
    assert sorted(ids("?labels_within=a")) == ["dep", "held", "high"]
    assert sorted(ids("?labels_within=")) == ["dep", "held"]
    assert ids("?priority=high&project=p") == ["high"]
    assert ids("?claimed_by=a1") == ["held"]
    assert ids("?status=in_progress") == ["held"]
    assert "waits" not in ids("?ready=true")
    assert ids("?ready=true&limit=1") == ["high"]
    assert len(ids("")) == 4
    store.complete(store.claim(done.id, "a2", 60).id, TaskResult(success=True))
    assert "waits" in ids("?ready=true")


def test_counts_answer_every_status_to_any_token(api: TestClient, store: MemoryTaskStore) -> None:
    """GET /api/tasks/counts counts by status (every status present), for agent tokens
    too, and is not taken for a task id."""
    new_task(store, title="one")
    new_task(store, title="two")
    claimed_by(store, "a1", title="held")
    response = api.get("/api/tasks/counts", headers=AGENT1)
    assert response.status_code == 200
    assert response.json() == {
        "pending": 2,
        "in_progress": 1,
        "completed": 0,
        "failed": 0,
        "blocked": 0,
    }
    assert api.get("/api/tasks/counts").status_code == 401


@pytest.mark.parametrize("query", ["?status=nope", "?priority=urgent", "?limit=0", "?ready=maybe"])
def test_list_bad_filters_are_422(api: TestClient, query: str) -> None:
    """Invalid filters answer 422 with the error body, whose message names the filter."""
    body = assert_error(api.get(f"/api/tasks{query}", headers=ADMIN), 422)
    assert body["message"].startswith("invalid request: query.") and "query" in body["details"]


def test_get_unknown_task_is_404(api: TestClient) -> None:
    """An unknown id is 404 with the error body."""
    assert "ghost" in assert_error(api.get("/api/tasks/ghost", headers=ADMIN), 404)["message"]


def test_patch_updates_and_validates(api: TestClient, store: MemoryTaskStore) -> None:
    """PATCH applies progress/notes/status; invalid values are 422; illegal moves 409."""
    task = new_task(store)
    response = api.patch(
        f"/api/tasks/{task.id}", json={"notes": "n", "status": "blocked"}, headers=ADMIN
    )
    assert response.json()["notes"] == "n" and response.json()["status"] == "blocked"
    assert_error(api.patch(f"/api/tasks/{task.id}", json={"progress": 101}, headers=ADMIN), 422)
    assert_error(
        api.patch(f"/api/tasks/{task.id}", json={"status": "completed"}, headers=ADMIN), 409
    )
    assert_error(api.patch("/api/tasks/ghost", json={"notes": "x"}, headers=ADMIN), 404)
    assert store.get(task.id).progress == 0


# --- claim, complete, release, lease ---


def test_claim_answers_task_and_message_then_409(api: TestClient, store: MemoryTaskStore) -> None:
    """The first claim wins {"task","message"}; the next is 409."""
    task = new_task(store)
    response = api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a1"}, headers=ADMIN)
    assert response.status_code == 200
    assert set(response.json()) == {"task", "message"}
    assert response.json()["task"]["status"] == "in_progress"
    body = assert_error(
        api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a2"}, headers=ADMIN), 409
    )
    assert "a1" in body["message"]
    assert store.get(task.id).claimed_by == "a1"


def test_claim_needs_an_agent_and_a_claimable_task(api: TestClient, store: MemoryTaskStore) -> None:
    """Admin claims must name the agent; unknown is 404; waiting on dependencies is 409."""
    dep = new_task(store)
    task = new_task(store, dependencies=[dep.id])
    assert_error(api.post(f"/api/tasks/{task.id}/claim", headers=ADMIN), 422)
    assert_error(api.post("/api/tasks/ghost/claim", json={"agent_id": "a1"}, headers=ADMIN), 404)
    assert_error(
        api.post(f"/api/tasks/{task.id}/claim", json={"agent_id": "a1"}, headers=ADMIN), 409
    )
    lease = {"agent_id": "a1", "lease_seconds": -1}
    assert_error(api.post(f"/api/tasks/{dep.id}/claim", json=lease, headers=ADMIN), 422)
    assert store.get(dep.id).status is TaskStatus.PENDING


def test_claim_stores_the_job_id(api: TestClient, store: MemoryTaskStore) -> None:
    """The claim's job_id (the quota reservation) is stored on the task."""
    task = new_task(store)
    body = {"agent_id": "a1", "job_id": "job-7"}
    assert api.post(f"/api/tasks/{task.id}/claim", json=body, headers=ADMIN).status_code == 200
    assert store.get(task.id).job_id == "job-7"


def test_batch_claims_answer_each_claim_in_order(api: TestClient, store: MemoryTaskStore) -> None:
    """POST /api/tasks/claims makes each claim on its own and answers one outcome per
    claim, in order, with the status that claim alone would get; the refused ones
    leave the others made."""
    free, taken, waiting = new_task(store), claimed_by(store, "a2"), new_task(store)
    blocked = new_task(store, dependencies=[waiting.id])
    claims = [
        {"task_id": free.id, "agent_id": "a1", "job_id": "j1", "lease_seconds": 30},
        {"task_id": taken.id, "agent_id": "a1"},
        {"task_id": "ghost", "agent_id": "a1"},
        {"task_id": blocked.id, "agent_id": "a1"},
        {"task_id": waiting.id},  # an admin must name the agent
    ]
    response = api.post("/api/tasks/claims", json={"claims": claims}, headers=ADMIN)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["task_id"], r["code"]) for r in results] == [
        (free.id, 200),
        (taken.id, 409),
        ("ghost", 404),
        (blocked.id, 409),
        (waiting.id, 422),
    ]
    assert results[0]["task"]["claimed_by"] == "a1" and results[0]["task"]["job_id"] == "j1"
    assert all(r["task"] is None and r["message"] for r in results[1:])
    assert store.get(free.id).claimed_by == "a1"
    assert (store.get(taken.id).claimed_by, store.get(waiting.id).status) == (
        "a2",
        TaskStatus.PENDING,
    )


def test_batch_claims_hold_agent_tokens_to_their_agent(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """An agent token's batch claims for itself; a claim in another agent's name is
    refused alone (403)."""
    mine, theirs = new_task(store), new_task(store)
    claims = [{"task_id": mine.id}, {"task_id": theirs.id, "agent_id": "a2"}]
    results = api.post("/api/tasks/claims", json={"claims": claims}, headers=AGENT1).json()
    assert [r["code"] for r in results["results"]] == [200, 403]
    assert store.get(mine.id).claimed_by == "a1"
    assert store.get(theirs.id).status is TaskStatus.PENDING


@pytest.mark.parametrize(
    "body",
    [{"claims": []}, {"claims": [{"task_id": "t", "agent_id": "a1"}] * 101}, {}, {"claims": [{}]}],
    ids=["empty", "over 100", "no claims", "no task id"],
)
def test_batch_claims_refuse_a_bad_batch_whole(
    api: TestClient, store: MemoryTaskStore, body: dict[str, Any]
) -> None:
    """An empty batch, more than 100 claims, or a claim without task_id is 422, and
    nothing is claimed."""
    task = new_task(store)
    assert_error(api.post("/api/tasks/claims", json=body, headers=ADMIN), 422)
    assert store.get(task.id).status is TaskStatus.PENDING


def test_batch_claims_answer_503_per_claim_when_the_store_fails(
    make_client: Callable[..., TestClient],
) -> None:
    """A store failure during a claim is that claim's 503, not a 500 for the batch."""

    class Failing(MemoryTaskStore):
        def claim(self, *args: Any, **kwargs: Any) -> Task:
            raise StoreError("disk on fire")

    api = TestClient(create_app(Failing(), **TOKENS, requeue_interval=None))
    claims = [{"task_id": "t", "agent_id": "a1"}]
    results = api.post("/api/tasks/claims", json={"claims": claims}, headers=ADMIN).json()
    assert results["results"][0]["code"] == 503
    assert "disk on fire" in results["results"][0]["details"]


def test_batch_claims_fail_an_unexpected_error_alone(
    make_client: Callable[..., TestClient],
) -> None:
    """A claim that raises a non-SDK error (a corrupt record) is that claim's 500; the
    claims after it are still made."""

    class Corrupt(MemoryTaskStore):
        def claim(self, task_id: str, *args: Any, **kwargs: Any) -> Task:
            if task_id == "bad":
                raise KeyError("corrupt record")
            return super().claim(task_id, *args, **kwargs)

    store = Corrupt()
    good = new_task(store)
    api = TestClient(create_app(store, **TOKENS, requeue_interval=None))
    claims = [{"task_id": "bad", "agent_id": "a1"}, {"task_id": good.id, "agent_id": "a1"}]
    results = api.post("/api/tasks/claims", json={"claims": claims}, headers=ADMIN).json()
    assert [r["code"] for r in results["results"]] == [500, 200]
    assert store.get(good.id).claimed_by == "a1"


def test_batch_claims_begin_none_after_the_time_limit(
    make_client: Callable[..., TestClient],
) -> None:
    """Claims not begun within time_limit seconds are answered 429 and not made."""

    class Slow(MemoryTaskStore):
        def claim(self, *args: Any, **kwargs: Any) -> Task:
            time.sleep(0.2)
            return super().claim(*args, **kwargs)

    store = Slow()
    tasks = [new_task(store) for _ in range(4)]
    api = TestClient(create_app(store, **TOKENS, requeue_interval=None))
    claims = [{"task_id": t.id, "agent_id": "a1"} for t in tasks]
    body = {"claims": claims, "time_limit": 0.3}
    results = api.post("/api/tasks/claims", json=body, headers=ADMIN).json()["results"]
    assert [r["code"] for r in results] == [200, 200, 429, 429]
    assert "time_limit" in results[2]["message"]
    assert [store.get(t.id).status for t in tasks[2:]] == [TaskStatus.PENDING] * 2


def test_claim_uses_the_lease(api: TestClient, store: MemoryTaskStore, clock: FakeClock) -> None:
    """The claim's lease_seconds (or the server default) sets lease_expires_at."""
    task, other = new_task(store), new_task(store)
    api.post(
        f"/api/tasks/{task.id}/claim", json={"agent_id": "a1", "lease_seconds": 30}, headers=ADMIN
    )
    api.post(f"/api/tasks/{other.id}/claim", json={"agent_id": "a1"}, headers=ADMIN)
    assert store.get(task.id).lease_expires_at.timestamp() == clock() + 30  # type: ignore[union-attr]
    assert store.get(other.id).lease_expires_at.timestamp() == clock() + 300  # type: ignore[union-attr]


def test_complete_success(api: TestClient, store: MemoryTaskStore) -> None:
    """A successful result completes the task and stores the result."""
    held = claimed_by(store)
    body = {"success": True, "output": "done", "artifacts": ["a.txt"], "agent_id": "a1"}
    response = api.post(f"/api/tasks/{held.id}/complete", json=body, headers=ADMIN)
    assert response.json()["message"] == "task completed"
    stored = store.get(held.id)
    assert stored.status is TaskStatus.COMPLETED and stored.result is not None
    assert stored.result.artifacts == ["a.txt"]


def test_complete_failure_schedules_retry_with_policy(
    make_client: Callable[..., TestClient], store: MemoryTaskStore, clock: FakeClock
) -> None:
    """A failure is pending again with next_attempt_at from the retry policy."""
    api = make_client(retry_policy=RetryPolicy(base=10, cap=10, jitter="equal"))
    held = claimed_by(store)
    body = {"success": False, "error_message": "boom"}
    response = api.post(f"/api/tasks/{held.id}/complete", json=body, headers=AGENT1)
    task = Task.model_validate(response.json()["task"])
    assert task.status is TaskStatus.PENDING and task.retry_count == 1
    assert task.next_attempt_at is not None
    assert clock() + 5 <= task.next_attempt_at.timestamp() <= clock() + 10
    assert "retry 1 of 3" in response.json()["message"]


def test_complete_failure_past_max_retries_dead_letters(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """The last failure dead-letters the task, with no retry time."""
    held = claimed_by(store, max_retries=0)
    response = api.post(f"/api/tasks/{held.id}/complete", json={"success": False}, headers=AGENT1)
    assert response.json()["task"]["status"] == "failed"
    assert response.json()["message"].startswith("task dead-lettered")
    assert store.get(held.id).next_attempt_at is None


def test_complete_needs_a_claimed_task(api: TestClient, store: MemoryTaskStore) -> None:
    """Completing a pending task is 409; a body without success is 422."""
    task = new_task(store)
    assert_error(
        api.post(f"/api/tasks/{task.id}/complete", json={"success": True}, headers=ADMIN), 409
    )
    assert_error(api.post(f"/api/tasks/{task.id}/complete", json={}, headers=ADMIN), 422)
    assert store.get(task.id).status is TaskStatus.PENDING


def test_release(api: TestClient, store: MemoryTaskStore) -> None:
    """Release gives the claim back without counting a retry; admin may force it."""
    held, other = claimed_by(store, "a1"), claimed_by(store, "a2")
    response = api.post(f"/api/tasks/{held.id}/release", headers=AGENT1)
    assert response.json()["status"] == "pending" and response.json()["retry_count"] == 0
    assert api.post(f"/api/tasks/{other.id}/release", headers=ADMIN).json()["status"] == "pending"
    assert_error(api.post(f"/api/tasks/{held.id}/release", headers=AGENT1), 409)


def test_release_reason_reaches_the_recorded_event(clock: FakeClock) -> None:
    """A release's reason goes with the task_requeued event; one too long is 422."""
    from fastapi.testclient import TestClient

    from agentic.stores.memory import MemoryEventLog

    log = MemoryEventLog()
    store = MemoryTaskStore(clock=clock, events=log)
    held = claimed_by(store, "a1")
    with TestClient(create_app(store, **TOKENS, requeue_interval=None, clock=clock)) as api:
        too_long = {"reason": "x" * 1001}
        release = f"/api/tasks/{held.id}/release"
        assert_error(api.post(release, json=too_long, headers=AGENT1), 422)
        assert store.get(held.id).status is TaskStatus.IN_PROGRESS
        reason = {"reason": "agent a1 is at capacity"}
        assert api.post(release, json=reason, headers=AGENT1).status_code == 200
    requeued = log.read()[-1].event
    assert (requeued.type.value, requeued.payload["reason"]) == ("task_requeued", reason["reason"])


def test_event_log_is_read_by_admins_after_an_offset(clock: FakeClock) -> None:
    """GET /api/events pages the log after an offset with its newest offset; agent
    tokens get 403, bad arguments 422, and health lists event_log."""
    from fastapi.testclient import TestClient

    from agentic.events import Event, EventType
    from agentic.stores.memory import MemoryEventLog

    log = MemoryEventLog()
    log.append([Event(type=EventType.AGENT_OFFLINE, agent_id=f"a{n}") for n in range(5)])
    app = create_app(MemoryTaskStore(clock=clock), **TOKENS, requeue_interval=None, events=log)
    with TestClient(app) as api:
        page = api.get("/api/events", params={"after": 1, "limit": 2}, headers=ADMIN).json()
        assert [e["offset"] for e in page["events"]] == [2, 3]
        assert [e["event"]["agent_id"] for e in page["events"]] == ["a1", "a2"]
        assert page["last_offset"] == 5
        assert api.get("/api/events", params={"after": 5}, headers=ADMIN).json()["events"] == []
        assert_error(api.get("/api/events", headers=AGENT1), 403)
        for bad in ({"after": -1}, {"limit": 0}, {"limit": 1001}, {"after": "x"}):
            assert_error(api.get("/api/events", params=bad, headers=ADMIN), 422)
        assert "event_log" in api.get("/api/health").json()["features"]


def test_an_unreadable_event_is_named_not_a_store_outage(tmp_path: Any, clock: FakeClock) -> None:
    """GET /api/events over a damaged entry answers 500 naming its offset and how to
    read past it, not 503 "the task store is unavailable"."""
    import sqlite3

    from fastapi.testclient import TestClient

    from agentic.events import Event, EventType
    from agentic.stores import open_event_log

    path = tmp_path / "events.db"
    log = open_event_log("sqlite:///" + path.as_posix().lstrip("/"))
    log.append([Event(type=EventType.AGENT_OFFLINE, agent_id=f"a{n}") for n in range(3)])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET body = '{bad' WHERE position = 2")
    app = create_app(MemoryTaskStore(clock=clock), **TOKENS, requeue_interval=None, events=log)
    try:
        with TestClient(app) as api:
            body = assert_error(api.get("/api/events", params={"after": 1}, headers=ADMIN), 500)
    finally:
        log.close()
    assert "the event log could not be read" in body["message"] and "2" in body["message"]


def test_a_server_without_an_event_log_says_so(api: TestClient) -> None:
    """Without an event log GET /api/events is 404 saying where to read it instead,
    and health does not list event_log."""
    body = assert_error(api.get("/api/events", headers=ADMIN), 404)
    assert "agentic events --store" in body["message"]
    assert "event_log" not in api.get("/api/health").json()["features"]


def test_list_pages_after_a_task(api: TestClient, store: MemoryTaskStore, clock: FakeClock) -> None:
    """limit and after page the list; an unknown after is 422, an empty one too."""
    made = []
    for i in range(5):
        made.append(new_task(store, title=f"t{i}").id)
        clock.advance(1)
    page = api.get("/api/tasks", params={"limit": 2, "after": made[1]}, headers=ADMIN)
    assert [t["id"] for t in page.json()] == made[2:4]
    assert_error(api.get("/api/tasks", params={"after": "nope"}, headers=ADMIN), 422)
    assert_error(api.get("/api/tasks", params={"after": ""}, headers=ADMIN), 422)


def test_withdraw_claim(api: TestClient, store: MemoryTaskStore) -> None:
    """Withdraw answers whether a claim was made; one not made is refused from then on."""
    task = new_task(store)
    path = f"/api/tasks/{task.id}/withdraw"
    answer = api.post(path, json={"job_id": "j1"}, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["made"] is False
    late = api.post(
        f"/api/tasks/{task.id}/claim", json={"agent_id": "a1", "job_id": "j1"}, headers=ADMIN
    )
    assert_error(late, 409)
    claim = {"agent_id": "a1", "job_id": "j2"}
    assert api.post(f"/api/tasks/{task.id}/claim", json=claim, headers=ADMIN).status_code == 200
    # a repeat of the claim that holds the task is answered as made, not 409
    again = api.post(f"/api/tasks/{task.id}/claim", json=claim, headers=ADMIN)
    assert again.status_code == 200 and again.json()["task"]["job_id"] == "j2"
    assert api.post(path, json={"job_id": "j2"}, headers=ADMIN).json()["made"] is True


def test_withdraw_claim_rejects_bad_calls(api: TestClient, store: MemoryTaskStore) -> None:
    """Withdraw is for admin tokens, needs a job id and a task that exists."""
    task = new_task(store)
    path = f"/api/tasks/{task.id}/withdraw"
    assert_error(api.post(path, json={"job_id": "j1"}, headers=AGENT1), 403)
    assert_error(api.post(path, json={"job_id": ""}, headers=ADMIN), 422)
    assert_error(api.post(path, json={}, headers=ADMIN), 422)
    assert_error(api.post("/api/tasks/nope/withdraw", json={"job_id": "j1"}, headers=ADMIN), 404)
    # nothing was withdrawn by the refused calls: j1 still claims
    claim = {"agent_id": "a1", "job_id": "j1"}
    assert api.post(f"/api/tasks/{task.id}/claim", json=claim, headers=ADMIN).status_code == 200


def test_renew_lease(api: TestClient, store: MemoryTaskStore, clock: FakeClock) -> None:
    """Renewal moves lease_expires_at; someone else's or an unheld task is 409."""
    held = claimed_by(store, "a1")
    clock.advance(10)
    response = api.post(
        f"/api/tasks/{held.id}/lease", json={"agent_id": "a1", "lease_seconds": 100}, headers=ADMIN
    )
    assert Task.model_validate(response.json()).lease_expires_at.timestamp() == clock() + 100  # type: ignore[union-attr]
    assert_error(
        api.post(f"/api/tasks/{held.id}/lease", json={"agent_id": "a2"}, headers=ADMIN), 409
    )
    assert_error(api.post(f"/api/tasks/{held.id}/lease", json={}, headers=ADMIN), 422)


FENCED: dict[str, dict[str, object]] = {
    "complete": {"success": True, "output": "late"},
    "release": {},
    "lease": {"lease_seconds": 100},
}


def reclaimed(store: MemoryTaskStore, clock: FakeClock) -> Task:
    """A task a1 claimed under job-1, whose lease expired, claimed again by a1 under job-2."""
    task = new_task(store)
    store.claim(task.id, "a1", 60, job_id="job-1")
    clock.advance(60)
    store.requeue_expired()
    return store.claim(task.id, "a1", 60, job_id="job-2")


@pytest.mark.parametrize("action", FENCED)
def test_stale_job_id_is_409_and_changes_nothing(
    api: TestClient, store: MemoryTaskStore, clock: FakeClock, action: str
) -> None:
    """complete / release / lease with an old attempt's job_id get 409 and the error body."""
    task = reclaimed(store, clock)
    body = {**FENCED[action], "agent_id": "a1", "job_id": "job-1"}
    response = api.post(f"/api/tasks/{task.id}/{action}", json=body, headers=AGENT1)
    error = assert_error(response, 409)
    assert "a stale attempt: the task was claimed again since (job 'job-2')" in error["message"]
    assert store.get(task.id) == task


@pytest.mark.parametrize("action", FENCED)
def test_current_or_no_job_id_is_accepted(
    api: TestClient, store: MemoryTaskStore, clock: FakeClock, action: str
) -> None:
    """The current claim's job_id is accepted; a body without one (go-agentic) is unchecked."""
    for job in ("job-2", None):
        task = reclaimed(store, clock)
        body = {**FENCED[action], "agent_id": "a1"} | ({"job_id": job} if job else {})
        response = api.post(f"/api/tasks/{task.id}/{action}", json=body, headers=AGENT1)
        assert response.status_code == 200, response.text
        assert store.get(task.id) != task


def test_fenced_bodies_document_and_validate_job_id(
    api: TestClient, store: MemoryTaskStore, clock: FakeClock
) -> None:
    """OpenAPI lists the optional job_id of each fenced body; a non-string one is 422."""
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    for name in ("CompleteRequest", "ReleaseRequest", "LeaseRequest"):
        assert "job_id" in schemas[name]["properties"]
        assert "job_id" not in schemas[name].get("required", [])
    task = reclaimed(store, clock)
    for action, body in FENCED.items():
        bad = {**body, "agent_id": "a1", "job_id": 7}
        assert_error(api.post(f"/api/tasks/{task.id}/{action}", json=bad, headers=AGENT1), 422)
    assert store.get(task.id) == task


# --- logs ---


def test_a_full_log_refuses_more_lines(
    make_client: Callable[..., TestClient], store: MemoryTaskStore
) -> None:
    """Past max_log_lines an append is refused whole (409, details log_full), to admin
    and agent tokens alike, and the log keeps what it held; up to it lines are added."""
    api = make_client(max_log_lines=5)
    held = claimed_by(store)
    path = f"/api/tasks/{held.id}/logs"
    assert api.post(path, json={"lines": ["1", "2", "3"]}, headers=AGENT1).status_code == 200
    refused = assert_error(api.post(path, json={"lines": ["4", "5", "6"]}, headers=AGENT1), 409)
    assert refused["details"] == "log_full" and "at most 5 lines" in refused["message"]
    assert api.post(path, json={"lines": ["4", "5"]}, headers=ADMIN).status_code == 200
    assert_error(api.post(path, json={"lines": ["6"]}, headers=ADMIN), 409)
    assert store.logs(held.id).lines == ["1", "2", "3", "4", "5"]
    other = claimed_by(store)
    too_many = {"lines": [str(n) for n in range(6)]}
    assert_error(api.post(f"/api/tasks/{other.id}/logs", json=too_many, headers=AGENT1), 409)
    assert store.logs(other.id).lines == []


def test_logs_append_and_page(api: TestClient, store: MemoryTaskStore) -> None:
    """POST appends lines; GET pages them with offset, limit and next_offset."""
    held = claimed_by(store)
    api.post(f"/api/tasks/{held.id}/logs", json={"lines": ["a", "b\nc", "d"]}, headers=AGENT1)
    page = api.get(f"/api/tasks/{held.id}/logs?offset=1&limit=1", headers=AGENT2).json()
    assert page == {"lines": ["b\nc"], "offset": 1, "next_offset": 2}
    assert api.get(f"/api/tasks/{held.id}/logs", headers=ADMIN).json()["next_offset"] == 3
    assert_error(api.get(f"/api/tasks/{held.id}/logs?offset=-1", headers=ADMIN), 422)
    assert_error(api.post(f"/api/tasks/{held.id}/logs", json={"lines": [1]}, headers=ADMIN), 422)
    assert_error(api.get("/api/tasks/ghost/logs", headers=ADMIN), 404)


def sse_events(api: TestClient, url: str, headers: dict[str, str]) -> list[tuple[str, Any]]:
    """(event, data) pairs of a followed log, read to the end of the stream."""
    events: list[tuple[str, Any]] = []
    kind = ""
    with api.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


class FinishingStore(MemoryTaskStore):
    """Runs ``on_first_logs`` right after the first log read: a task that ends mid-stream.

    TestClient buffers a whole response, so the change must come from inside the
    server's own calls to be ordered after the stream started.
    """

    on_first_logs: Callable[[], None] = staticmethod(lambda: None)

    def logs(self, task_id: str, offset: int = 0, limit: int | None = None) -> LogPage:
        page = super().logs(task_id, offset, limit)
        action, self.on_first_logs = self.on_first_logs, lambda: None
        action()
        return page


@pytest.mark.parametrize("final", ["completed", "failed", "blocked"])
def test_follow_logs_ends_on_final_status(clock: FakeClock, final: str) -> None:
    """The SSE stream sends status, every line, then the final status, and ends."""
    store = FinishingStore(clock=clock)
    held = claimed_by(store, max_retries=0)
    store.append_logs(held.id, ["one"])

    def finish() -> None:
        store.append_logs(held.id, ["two", "three"])
        if final == "completed":
            store.complete(held.id, TaskResult(success=True))
        elif final == "failed":
            store.complete(held.id, TaskResult(success=False))
        else:
            store.release(held.id)
            store.update(held.id, TaskUpdate(status=TaskStatus.BLOCKED))

    store.on_first_logs = finish
    app = create_app(store, requeue_interval=None, log_poll_interval=0.01)
    with TestClient(app) as api:
        events = sse_events(api, f"/api/tasks/{held.id}/logs?follow=true", {})
    assert events[0] == ("status", {"status": "in_progress"})
    assert [data["line"] for kind, data in events if kind == "log"] == ["one", "two", "three"]
    assert [data for kind, data in events if kind == "status"] == [
        {"status": "in_progress"},
        {"status": final},
    ]
    assert events[-1] == ("end", {"status": final, "next_offset": 3})
    # the lines written before the task finished come before its final status
    assert [kind for kind, _data in events][-3:] == ["log", "status", "end"]


def test_follow_logs_resumes_from_offset_or_last_event_id(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """offset and Last-Event-ID start the stream mid-log."""
    held = claimed_by(store)
    store.append_logs(held.id, ["a", "b", "c"])
    store.complete(held.id, TaskResult(success=True))
    url = f"/api/tasks/{held.id}/logs?follow=true"
    lines = [d["line"] for k, d in sse_events(api, url + "&offset=1", ADMIN) if k == "log"]
    assert lines == ["b", "c"]
    resumed = sse_events(api, url, {**ADMIN, "Last-Event-ID": "2"})
    assert [d["line"] for k, d in resumed if k == "log"] == ["c"]
    opaque = sse_events(api, url, {**ADMIN, "Last-Event-ID": "abc"})
    assert [d["line"] for k, d in opaque if k == "log"] == ["a", "b", "c"]


def test_follow_logs_ignores_a_last_event_id_of_other_digits(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """A Last-Event-ID of digits int() does not read ("²", one Latin-1 byte) starts the
    stream from the offset, as any other opaque id does; it answered 500."""
    held = claimed_by(store)
    store.append_logs(held.id, ["a", "b"])
    store.complete(held.id, TaskResult(success=True))

    async def follow() -> httpx.Response:
        # TestClient re-encodes header values as UTF-8; the ASGI transport sends the byte.
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = [(b"Authorization", b"Bearer admin-token"), (b"Last-Event-ID", b"\xb2")]
            url = f"/api/tasks/{held.id}/logs?follow=true&offset=1"
            return await client.get(url, headers=headers)

    response = asyncio.run(follow())
    assert response.status_code == 200, response.text
    assert '"line": "b"' in response.text and '"line": "a"' not in response.text


def test_follow_unknown_task_is_404(api: TestClient) -> None:
    """Following an unknown task fails before the stream starts."""
    assert_error(api.get("/api/tasks/ghost/logs?follow=true", headers=ADMIN), 404)


# --- bad input never changes state ---


# Every endpoint that reads a JSON body: (method, path, a valid body, that body with one
# field misspelt, the field's path, the name it should suggest (or None), the fields
# accepted where the misspelt one sits).
_TASK_FIELDS = sorted(Task.model_fields)
STRICT_BODIES = [
    ("POST", "/api/tasks", {"title": "x"}, {"title": "x", "priorty": "high"},
     "body.priorty", "priority", _TASK_FIELDS),
    ("PATCH", "/api/tasks/{id}", {"progress": 5}, {"progres": 5},
     "body.progres", "progress", sorted([*TaskUpdate.model_fields, "if_pending"])),
    ("POST", "/api/tasks/{id}/claim", {"agent_id": "a1"}, {"agent_id": "a1", "lease_secnds": 30},
     "body.lease_secnds", "lease_seconds", ["agent_id", "job_id", "lease_seconds"]),
    ("POST", "/api/tasks/claims", {"claims": [{"task_id": "{id}", "agent_id": "a1"}]},
     {"claims": [{"task_id": "{id}", "agent_id": "a1"}], "time_limt": 5},
     "body.time_limt", "time_limit", ["claims", "time_limit"]),
    ("POST", "/api/tasks/{id}/withdraw", {"job_id": "j"}, {"job_id": "j", "jobid": "j"},
     "body.jobid", "job_id", ["job_id"]),
    ("POST", "/api/tasks/{id}/complete", {"success": True}, {"success": True, "ouput": "x"},
     "body.ouput", "output",
     ["agent_id", "artifacts", "error_message", "job_id", "output", "success"]),
    ("POST", "/api/tasks/{id}/release", {"agent_id": "a1"}, {"agent_id": "a1", "reson": "x"},
     "body.reson", "reason", ["agent_id", "job_id", "reason"]),
    ("POST", "/api/tasks/{id}/lease", {"agent_id": "a1"}, {"agent_id": "a1", "colour": "red"},
     "body.colour", None, ["agent_id", "job_id", "lease_seconds"]),
    ("POST", "/api/tasks/{id}/logs", {"lines": ["a"]}, {"lines": ["a"], "line": "b"},
     "body.line", "lines", ["lines"]),
    ("POST", "/api/tasks/{id}/retry", {"reruns": 0}, {"rerun": 0},
     "body.rerun", "reruns", ["reruns"]),
]  # fmt: skip


def _with_id(value: Any, task_id: str) -> Any:
    """``value`` with each ``{id}`` in its strings replaced by ``task_id``."""
    if isinstance(value, str):
        return value.replace("{id}", task_id)
    if isinstance(value, list):
        return [_with_id(item, task_id) for item in value]
    if isinstance(value, dict):
        return {key: _with_id(item, task_id) for key, item in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "valid", "misspelt", "where", "meant", "accepted"),
    STRICT_BODIES,
    ids=[f"{row[0]} {row[1]}" for row in STRICT_BODIES],
)
def test_every_body_refuses_an_unknown_field(
    api: TestClient,
    store: MemoryTaskStore,
    method: str,
    path: str,
    valid: dict[str, Any],
    misspelt: dict[str, Any],
    where: str,
    meant: str | None,
    accepted: list[str],
) -> None:
    """On every endpoint with a JSON body an unknown field is a 422 naming its path, the
    field meant (when one is close) and the fields accepted, and nothing changes; the
    same body spelt right is not refused for its fields."""
    task = claimed_by(store)
    before = (store.list(), store.logs(task.id))
    url = path.replace("{id}", task.id)
    answer = api.request(method, url, json=_with_id(misspelt, task.id), headers=ADMIN)
    message = assert_error(answer, 422)["message"]
    assert message.startswith(f"unknown field {where}")
    if meant is not None:
        assert f"did you mean {meant!r}?" in message
    else:
        assert "did you mean" not in message
    assert message.endswith(f"accepted fields: {', '.join(accepted)}")
    assert (store.list(), store.logs(task.id)) == before
    right = api.request(method, url, json=_with_id(valid, task.id), headers=ADMIN)
    assert right.status_code != 422, right.text


def test_the_table_covers_every_body_and_every_body_is_strict(api: TestClient) -> None:
    """STRICT_BODIES lists every route that reads a JSON body, and each body model, with
    every model nested in it, forbids unknown fields (one base, RequestBody)."""
    routes = {
        (method, route.path.replace("{task_id}", "{id}")): body_model(route)
        for route in api.app.routes  # type: ignore[attr-defined]
        if getattr(route, "body_field", None) is not None
        for method in route.methods
    }
    assert set(routes) == {(method, path) for method, path, *_ in STRICT_BODIES}

    def strict(model: type[BaseModel]) -> None:
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name in model.model_fields:
            inner = model_at(model, (name,))
            if inner is not None:
                strict(inner)

    for model in routes.values():
        assert model is not None
        strict(model)


def test_a_misspelt_nested_field_is_named_by_its_path(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """An unknown field inside a nested object (a batch's claim, a new task's result)
    is named by its whole path, with what that object accepts."""
    task = new_task(store)
    claims = {
        "claims": [{"task_id": task.id, "agent_id": "a1"}, {"task_id": task.id, "agnet_id": "a1"}]
    }
    message = assert_error(api.post("/api/tasks/claims", json=claims, headers=ADMIN), 422)[
        "message"
    ]
    assert message == (
        "unknown field body.claims.1.agnet_id (did you mean 'agent_id'?);"
        " accepted fields: agent_id, job_id, lease_seconds, task_id"
    )
    result = {"title": "x", "result": {"success": True, "artifact": []}}
    message = assert_error(api.post("/api/tasks", json=result, headers=ADMIN), 422)["message"]
    assert message == (
        "unknown field body.result.artifact (did you mean 'artifacts'?);"
        " accepted fields: artifacts, error_message, output, success"
    )
    assert store.get(task.id) == task and len(store.list()) == 1


def test_every_unknown_field_of_a_body_is_named(api: TestClient, store: MemoryTaskStore) -> None:
    """Several unknown fields are each named in the one 422, and the details keep
    pydantic's description of every problem."""
    body = {"title": "x", "priorty": "high", "sla_tier": "gold", "max_retries": -1}
    answer = assert_error(api.post("/api/tasks", json=body, headers=ADMIN), 422)
    assert "unknown field body.priorty (did you mean 'priority'?)" in answer["message"]
    assert "unknown field body.sla_tier; accepted fields:" in answer["message"]
    assert "body.max_retries" in answer["details"]
    assert store.list() == []


def test_an_update_names_the_fields_it_may_change(api: TestClient, store: MemoryTaskStore) -> None:
    """A task field an update cannot change is a 422 that says so and lists what an update
    may change, with nothing stored."""
    task = store.create(Task(title="t"))
    for field, value in (("priority", "high"), ("title", ""), ("dependencies", [task.id])):
        refused = assert_error(
            api.patch(f"/api/tasks/{task.id}", json={field: value}, headers=ADMIN), 422
        )
        assert refused["message"].startswith(f"field body.{field} cannot be changed by an update")
        assert "progress" in refused["message"] and "status" in refused["message"]
        assert "if_pending" not in refused["message"]  # a condition, not a field it sets
    assert store.list() == [task]


@pytest.mark.parametrize("title", ["", " ", "\t\n  "])
def test_a_blank_title_is_refused(api: TestClient, store: MemoryTaskStore, title: str) -> None:
    """A task whose title is empty or only whitespace is a 422 "title must not be blank"."""
    answer = assert_error(api.post("/api/tasks", json={"title": title}, headers=ADMIN), 422)
    assert "title must not be blank" in answer["message"]
    assert store.list() == []


def test_a_body_sent_as_a_form_is_told_to_be_json(api: TestClient, store: MemoryTaskStore) -> None:
    """A JSON body sent with another Content-Type (curl --data) is a 415 saying what to send."""
    form = {**ADMIN, "Content-Type": "application/x-www-form-urlencoded"}
    answer = assert_error(api.post("/api/tasks", content=b'{"title": "x"}', headers=form), 415)
    assert "Content-Type: application/json" in answer["message"]
    assert store.list() == []
    vendor = {**ADMIN, "Content-Type": "application/vnd.agentic+json; charset=utf-8"}
    assert api.post("/api/tasks", content=b'{"title": "x"}', headers=vendor).status_code == 201


def test_a_lone_surrogate_is_malformed_json_and_stores_nothing(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """A string escaping a lone surrogate (not Unicode) is a 400; lists still answer."""
    held = claimed_by(store)
    before = (store.list(), store.logs(held.id))
    json_headers = {**ADMIN, "Content-Type": "application/json"}
    for path, body in (
        ("/api/tasks", b'{"title": "fix", "description": "see \\ud800 log"}'),
        ("/api/tasks", b'{"title": "fix", "labels": ["\\uDC00"]}'),
        (f"/api/tasks/{held.id}/logs", b'{"lines": ["a \\udfff b"]}'),
    ):
        answer = assert_error(api.post(path, content=body, headers=json_headers), 400)
        assert "lone surrogate" in answer["details"] and "not valid Unicode" in answer["details"]
    for path, raw in (
        ("/api/tasks", b'{"title": "fix", "description": "see \xed\xa0\x80 log"}'),
        ("/api/tasks", '{"title": "fix", "description": "see \\ud800"}'.encode("utf-16")),
        (f"/api/tasks/{held.id}/logs", b'{"lines": ["a \xed\xa0\x80 b"]}'),
    ):
        answer = assert_error(api.post(path, content=raw, headers=json_headers), 400)
        assert "not UTF-8" in answer["details"]
    assert (store.list(), store.logs(held.id)) == before
    bom = "\ufeff".encode() + b'{"title": "with a byte order mark"}'
    assert api.post("/api/tasks", content=bom, headers=json_headers).status_code == 201
    pair = b'{"title": "smile \\ud83d\\ude00"}'  # a surrogate pair is one valid character
    made = api.post("/api/tasks", content=pair, headers=json_headers)
    assert made.status_code == 201 and made.json()["title"] == "smile \U0001f600"
    assert api.get("/api/tasks", headers=ADMIN).status_code == 200


def test_bad_input_gets_4xx_and_changes_nothing(api: TestClient, store: MemoryTaskStore) -> None:
    """Malformed JSON 400, invalid bodies 422, oversize 413; the store is untouched."""
    held = claimed_by(store)
    before = (store.list(), store.logs(held.id))
    json_headers = {**ADMIN, "Content-Type": "application/json"}
    assert (
        assert_error(api.post("/api/tasks", content=b"{oops", headers=json_headers), 400)["message"]
        == "malformed JSON body"
    )
    assert_error(api.patch(f"/api/tasks/{held.id}", content=b"[", headers=json_headers), 400)
    assert_error(api.post("/api/tasks", json={"title": "  "}, headers=ADMIN), 422)
    assert_error(
        api.post("/api/tasks", json={"title": "x", "priority": "asap"}, headers=ADMIN), 422
    )
    assert_error(
        api.post("/api/tasks", json={"title": "x", "status": "completed"}, headers=ADMIN), 422
    )
    assert_error(api.post("/api/tasks", json={"title": "x", "id": "bad id!"}, headers=ADMIN), 422)
    huge = assert_error(
        api.post("/api/tasks", json={"title": "x", "max_retries": 10**23}, headers=ADMIN), 422
    )
    assert huge["message"] == f"max_retries must be at most 2**50 ({2**50}), got {10**23}"
    assert_error(
        api.patch(f"/api/tasks/{held.id}", json={"retry_count": 10**23}, headers=ADMIN), 422
    )
    assert_error(api.post("/api/tasks", json=["not", "an", "object"], headers=ADMIN), 422)
    assert_error(api.post(f"/api/tasks/{held.id}/logs", json={"lines": "x"}, headers=ADMIN), 422)
    assert_error(
        api.post(f"/api/tasks/{held.id}/complete", json={"success": "maybe"}, headers=ADMIN), 422
    )
    assert (store.list(), store.logs(held.id)) == before


@pytest.mark.parametrize("value", [{}, []])
def test_non_scalar_time_is_422(api: TestClient, store: MemoryTaskStore, value: object) -> None:
    """A list or dict where a time belongs is bad input (found by the schema fuzz)."""
    task = new_task(store)
    patch = api.patch(f"/api/tasks/{task.id}", json={"next_attempt_at": value}, headers=ADMIN)
    assert_error(patch, 422)
    assert_error(
        api.post("/api/tasks", json={"title": "x", "created_at": value}, headers=ADMIN), 422
    )


def test_a_time_utc_cannot_hold_is_422_and_stores_nothing(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """A time whose offset puts it past year 9999 in UTC is a 422
    naming the field, on create and on PATCH; before, create failed with a 500 and a
    PATCH stored a time no SQLite or Redis read could turn back into a task."""
    task = new_task(store)
    before = store.list()
    value = "9999-12-31T23:59:59-05:00"
    created = assert_error(
        api.post("/api/tasks", json={"title": "x", "created_at": value}, headers=ADMIN), 422
    )
    assert "body.created_at" in created["message"] and "years 1 to 9999" in created["message"]
    patch = api.patch(f"/api/tasks/{task.id}", json={"last_attempt": value}, headers=ADMIN)
    assert "body.last_attempt" in assert_error(patch, 422)["message"]
    assert store.list() == before


def test_body_limit_413(make_client: Callable[..., TestClient], store: MemoryTaskStore) -> None:
    """Bodies over max_body_bytes are refused by Content-Length and while streaming."""
    api = make_client(max_body_bytes=1000)
    big = json.dumps({"title": "x" * 2000}).encode()
    headers = {**ADMIN, "Content-Type": "application/json"}
    body = assert_error(api.post("/api/tasks", content=big, headers=headers), 413)
    assert "1000" in body["message"]

    def chunks() -> Iterator[bytes]:
        yield big[:600]
        yield big[600:]

    assert_error(api.post("/api/tasks", content=chunks(), headers=headers), 413)
    bad_length = {**headers, "Content-Length": "lots"}
    assert_error(api.post("/api/tasks", content=b"{}", headers=bad_length), 400)
    assert store.list() == []


def test_unknown_route_and_method(api: TestClient) -> None:
    """404 and 405 use the error body too."""
    assert_error(api.get("/api/nothing", headers=ADMIN), 404)
    response = api.delete("/api/tasks", headers=ADMIN)
    assert_error(response, 405)
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


class BrokenStore(MemoryTaskStore):
    """A store whose reads and requeues fail."""

    def get(self, task_id: str) -> Task:
        raise StoreError("disk on fire")

    def requeue_expired(self) -> list[Task]:
        raise StoreError("disk on fire")


def test_store_failures_are_logged_once_a_window_with_a_count(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """During an outage every request fails: the log says it once per window, then
    how many more failed since, instead of a line per request; each is still a 503."""
    app = create_app(BrokenStore(clock=clock), requeue_interval=None)
    with TestClient(app) as api, caplog.at_level(logging.ERROR, logger="agentic.server._errors"):
        for _ in range(5):
            assert api.get("/api/tasks/t1", headers=ADMIN).status_code == 503
    said = [r.getMessage() for r in caplog.records if "store failed" in r.getMessage()]
    assert said == ["GET /api/tasks/t1: store failed: disk on fire"]
    now = [0.0]
    failures = StoreFailures(window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="agentic.server._errors"):
        caplog.clear()
        for at in (0.0, 1.0, 2.0, 11.0):
            now[0] = at
            failures("GET /x", StoreError("down"))
    assert [r.getMessage() for r in caplog.records] == [
        "GET /x: store failed: down",
        "GET /x: store failed: down (2 more request(s) failed since the last one logged)",
    ]


def test_store_errors_are_503(clock: FakeClock) -> None:
    """A failing store answers 503 with the error body."""
    with TestClient(create_app(BrokenStore(clock=clock), requeue_interval=None)) as api:
        body = assert_error(api.get("/api/tasks/t1"), 503)
        assert body["details"] == "disk on fire"
        assert "agentic_store_errors_total 1" in api.get("/metrics").text


# --- background requeue ---


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_expired_leases_are_requeued_in_the_background(
    make_client: Callable[..., TestClient], store: MemoryTaskStore, clock: FakeClock
) -> None:
    """The lifespan loop requeues expired leases, counting a retry, and counts them."""
    api = make_client(requeue_interval=0.01)
    held = claimed_by(store)
    clock.advance(61)
    wait_for(lambda: store.get(held.id).status is TaskStatus.PENDING)
    assert store.get(held.id).retry_count == 1
    wait_for(lambda: "agentic_tasks_requeued_total 1" in api.get("/metrics").text)


def test_requeue_errors_are_counted_and_the_loop_survives(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing requeue pass is logged (the store's message, no traceback) and
    counted; later passes still run."""
    app = create_app(BrokenStore(clock=clock), requeue_interval=0.01)
    with TestClient(app) as api:
        wait_for(lambda: app.state.metrics.value("requeue_errors") >= 3)
        assert api.get("/v1/health").status_code == 200
    failed = [r for r in caplog.records if "requeue of expired leases failed" in r.getMessage()]
    assert "(3 in a row): disk on fire" in failed[2].getMessage()
    assert not any(record.exc_info for record in failed)


def test_requeue_backs_off_while_the_store_fails(caplog: pytest.LogCaptureFixture) -> None:
    """Failed requeue passes come further apart, doubling up to 10 intervals, and
    the first pass that works brings back the interval and says so."""
    waits: list[float] = []
    outcomes: Iterator[StoreError | list[Task]] = iter([StoreError("down")] * 5 + [[]] * 2)

    class Flaky(MemoryTaskStore):
        def requeue_expired(self) -> list[Task]:
            outcome = next(outcomes)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 7:
            raise asyncio.CancelledError

    store = Flaky()
    caplog.set_level(logging.INFO, logger="agentic.server.app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("agentic.server.app.asyncio.sleep", sleep)
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(_requeue_loop(store, StoreCalls(store), Metrics(), Changes(), 1.0))
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0, 1.0, 1.0]
    assert "requeue of expired leases works again after 5 failure(s)" in caplog.text
