"""Retrying a failed task through the task API: the endpoint (auth, answers, errors),
both clients, and a dead-lettered chain run to its end after a retry."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentic import AsyncTaskClient
from agentic.errors import ConfigError, ConflictError, NotFoundError
from agentic.events import EventType
from agentic.models import Task, TaskResult, TaskStatus, TaskUpdate
from agentic.runner import TaskContext
from agentic.server import create_app
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import FakeClock, running_server
from tests.test_runner import AGENT, build_system, wait_for
from tests.test_server import ADMIN, AGENT1, TOKENS, assert_error

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette asks for httpx2 here
    from fastapi.testclient import TestClient


@pytest.fixture
def store() -> MemoryTaskStore:
    """An empty memory task store on a fake clock."""
    return MemoryTaskStore(clock=FakeClock())


@pytest.fixture
def api(store: MemoryTaskStore) -> Iterator[TestClient]:
    """A client of a server with admin and agent tokens over ``store``."""
    with TestClient(create_app(store, requeue_interval=None, **TOKENS)) as client:
        yield client


def dead_lettered_chain(store: MemoryTaskStore) -> tuple[Task, Task]:
    """A task failed past its retries, and a task depending on it (blocked)."""
    root = store.create(Task(title="root", max_retries=0))
    child = store.create(Task(title="child", dependencies=[root.id]))
    store.claim(root.id, "a1", 30, job_id="j1")
    store.complete(root.id, TaskResult(success=False, error_message="boom"), job_id="j1")
    return root, child


def test_retry_answers_the_task_and_the_dependents_unblocked(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """An admin's retry answers 200: the task pending again, the unblocked ids, a message."""
    root, child = dead_lettered_chain(store)
    response = api.post(f"/api/tasks/{root.id}/retry", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert (body["task"]["id"], body["task"]["status"], body["task"]["retry_count"]) == (
        root.id,
        "pending",
        0,
    )
    assert body["unblocked"] == [child.id]
    assert body["message"] == f"task {root.id} is pending again; unblocked: {child.id}"
    assert store.get(child.id).status is TaskStatus.PENDING
    assert "agentic_task_retries_total 1" in api.get("/metrics").text


def test_an_agent_token_cannot_retry(api: TestClient, store: MemoryTaskStore) -> None:
    """An agent token gets 403 and nothing changes."""
    root, child = dead_lettered_chain(store)
    body = assert_error(api.post(f"/api/tasks/{root.id}/retry", headers=AGENT1), 403)
    assert "an agent token cannot retry tasks" in body["message"]
    assert store.get(root.id).status is TaskStatus.FAILED
    assert store.get(child.id).status is TaskStatus.BLOCKED


def test_retry_refusals_carry_the_error_body(api: TestClient, store: MemoryTaskStore) -> None:
    """404 for an unknown task, 409 for one that is not failed, saying its status."""
    assert_error(api.post("/api/tasks/ghost/retry", headers=ADMIN), 404)
    task = store.create(Task(title="t"))
    body = assert_error(api.post(f"/api/tasks/{task.id}/retry", headers=ADMIN), 409)
    assert body["message"] == f"task {task.id} is pending, not failed: it is waiting to run already"
    assert store.get(task.id).status is TaskStatus.PENDING


def test_a_retry_blocked_by_a_failed_dependency_says_so(
    api: TestClient, store: MemoryTaskStore
) -> None:
    """A task whose dependency is failed comes back blocked, and the message names it."""
    root, child = dead_lettered_chain(store)
    store.update(child.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))
    body = api.post(f"/api/tasks/{child.id}/retry", headers=ADMIN).json()
    assert (body["task"]["status"], body["unblocked"]) == ("blocked", [])
    assert body["message"] == (
        f"task {child.id} is blocked by failed task(s) {root.id}: retry those to run it"
    )


def test_a_retry_naming_its_run_is_made_once(api: TestClient, store: MemoryTaskStore) -> None:
    """Asked twice with the same reruns, the second retry answers repeated and changes nothing."""
    root, child = dead_lettered_chain(store)
    path = f"/api/tasks/{root.id}/retry"
    first = api.post(path, headers=ADMIN, json={"reruns": 0}).json()
    made = (first["task"]["reruns"], first["unblocked"], first["repeated"])
    assert made == (1, [child.id], False)
    second = api.post(path, headers=ADMIN, json={"reruns": 0})
    assert second.status_code == 200, second.text
    body = second.json()
    assert (body["task"]["status"], body["unblocked"], body["repeated"]) == ("pending", [], True)
    assert body["message"] == (
        f"task {root.id} was retried already (it has run 2 times in all): it is pending now;"
        " nothing changed"
    )
    assert "agentic_task_retries_total 1" in api.get("/metrics").text
    ahead = assert_error(api.post(path, headers=ADMIN, json={"reruns": 5}), 409)
    assert "has been retried 1 time(s), not 5" in ahead["message"]


@pytest.mark.parametrize("body", [{"reruns": -1}, {"reruns": "x"}, {"reruns": 0, "run": 1}, [0]])
def test_a_retry_body_it_cannot_read_is_a_422(
    api: TestClient, store: MemoryTaskStore, body: Any
) -> None:
    """A negative or non-integer reruns, an unknown field or a list is a 422; nothing changes."""
    root, _child = dead_lettered_chain(store)
    assert_error(api.post(f"/api/tasks/{root.id}/retry", headers=ADMIN, json=body), 422)
    assert store.get(root.id).status is TaskStatus.FAILED


class _LosesRetryAnswers(httpx.HTTPTransport):
    """Sends every request, but loses the answers of the first ``n`` retries."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lost = n

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/retry") and self.lost:
            self.lost -= 1
            response.read()
            response.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_a_retry_whose_answer_is_lost_is_repeated_and_made_once() -> None:
    """The client repeats a retry whose answer was lost; the task is re-run once, not twice."""
    from agentic.client import TaskClient

    store = MemoryTaskStore()
    with running_server(store, requeue_interval=None) as url:
        root, _child = dead_lettered_chain(store)
        transport = _LosesRetryAnswers(1)
        with TaskClient(url, token="", transport=transport, sleep=lambda _s: None) as client:
            retried = client.retry_task(root.id)
        assert (transport.lost, retried.repeated, retried.task.status) == (
            0,
            True,
            TaskStatus.PENDING,
        )
        assert store.get(root.id).reruns == 1


def test_a_client_naming_reruns_needs_a_server_that_knows_them() -> None:
    """reruns given to a server without retry_reruns is a ConfigError before any retry."""
    from agentic.client import TaskClient

    store = MemoryTaskStore()
    with running_server(store, requeue_interval=None) as url:
        root, _child = dead_lettered_chain(store)
        with TaskClient(url, token="") as client:
            client.server_features = lambda: frozenset({"task_retry"})  # type: ignore[method-assign]
            with pytest.raises(ConfigError, match="cannot make a retry once"):
                client.retry_task(root.id, reruns=0)
            assert store.get(root.id).status is TaskStatus.FAILED
            assert client.retry_task(root.id).task.reruns == 1  # unconditioned, as before


def test_both_clients_retry_and_get_the_refusals() -> None:
    """Both clients' retry_task give the task and unblocked ids, and raise 409 / 404 errors."""
    from agentic.client import TaskClient

    store = MemoryTaskStore()
    with running_server(store, requeue_interval=None) as url:
        root, child = dead_lettered_chain(store)
        with TaskClient(url, token="") as client:
            assert "task_retry" in client.server_features()
            assert "retry_reruns" in client.server_features()
            retried = client.retry_task(root.id)
            assert (retried.task.status, retried.unblocked) == (TaskStatus.PENDING, [child.id])
            assert not retried.repeated
            with pytest.raises(ConflictError, match="is pending, not failed"):
                client.retry_task(root.id)
        store.update(root.id, TaskUpdate(status=TaskStatus.FAILED, fail_reason="cancelled"))

        async def scenario() -> None:
            async with AsyncTaskClient(url, token="") as api:
                again = await api.retry_task(root.id)
                assert (again.task.reruns, again.unblocked) == (2, [child.id])
                with pytest.raises(NotFoundError):
                    await api.retry_task("ghost")

        asyncio.run(scenario())


def test_a_dead_lettered_chain_runs_to_its_end_after_a_retry() -> None:
    """A dead-lettered task retried is dispatched, run and completed, and then its dependent too."""
    failures = threading.Semaphore(1)  # the first attempt of the root fails

    def handler(task: Task, ctx: TaskContext) -> str:
        if task.title == "root" and failures.acquire(blocking=False):
            raise RuntimeError("flaky")
        return f"did {task.title}"

    with build_system() as system:
        system.started(handler)
        root = system.submit("root", max_retries=0)
        child = system.tasks.create(Task(title="child", labels=["py"], dependencies=[root.id]))
        assert system.finished(root.id).status is TaskStatus.FAILED
        assert system.tasks.get(child.id).status is TaskStatus.BLOCKED

        retried = system.client.retry_task(root.id)
        assert retried.unblocked == [child.id]

        def both_done() -> bool:
            system.dispatcher.run_once()
            return {system.tasks.get(t).status for t in (root.id, child.id)} == {
                TaskStatus.COMPLETED
            }

        wait_for(both_done, timeout=10)
        done = system.tasks.get(root.id)
        assert (done.retry_count, done.reruns, done.result and done.result.output) == (
            0,
            1,
            "did root",
        )
        logged = [e.event for e in system.log.read(limit=1000)]
        kinds = [(e.task_id, e.type) for e in logged]
        assert kinds.index((root.id, EventType.TASK_DEAD_LETTERED)) < kinds.index(
            (root.id, EventType.TASK_REQUEUED)
        )
        assert (child.id, EventType.TASK_COMPLETED) in kinds
        completed = f"{root.id}:task_completed:1"
        assert next(e.id for e in logged if e.type == EventType.TASK_COMPLETED) == completed
        emitted = [e for e in system.events.events if e.type == EventType.TASK_COMPLETED]
        assert completed in {e.id for e in emitted}  # the runner's own, deduped by id
        assert AGENT in {e.agent_id for e in emitted}
