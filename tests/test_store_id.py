"""Store ids: every store in one storage (a SQLite file, a Redis database and prefix)
reports the same id, another storage another one, and the task API says which one
it serves."""

from __future__ import annotations

import uuid
from pathlib import Path

from agentic.client import TaskClient
from agentic.stores import open_allowance_store, open_registry, open_task_store
from agentic.testing import running_server

from .conftest import RedisServer


def _sqlite(path: Path) -> str:
    return "sqlite:///" + path.as_posix().lstrip("/")


def test_stores_on_one_sqlite_file_share_its_id(tmp_path: Path) -> None:
    """The registry and the task store of one file report one id, stable across
    opens; another file has another."""
    url = _sqlite(tmp_path / "a.db")
    with open_registry(url) as registry, open_task_store(url) as tasks:
        first = registry.store_id()
        assert len(first) == 32 and tasks.store_id() == first
    with open_registry(url) as again:
        assert again.store_id() == first
    with open_registry(_sqlite(tmp_path / "b.db")) as other:
        assert other.store_id() not in ("", first)


def test_stores_under_one_redis_prefix_share_its_id(redis_server: RedisServer) -> None:
    """One Redis database and prefix is one id; another prefix is another."""
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    with open_registry(url) as registry, open_task_store(url) as tasks:
        first = registry.store_id()
        assert len(first) == 32 and tasks.store_id() == first
    with open_registry(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}") as other:
        assert other.store_id() not in ("", first)


def test_memory_stores_have_no_id() -> None:
    """memory:// is private to its process: no id to compare ("")."""
    with open_registry("memory://") as registry, open_allowance_store("memory://") as quota:
        assert registry.store_id() == quota.store_id() == ""


def test_the_task_api_says_which_store_it_serves(tmp_path: Path) -> None:
    """The health check carries the served store's id; a memory store's is ""."""
    url = _sqlite(tmp_path / "served.db")
    with (
        open_task_store(url) as tasks,
        running_server(tasks, requeue_interval=None) as base,
        TaskClient(base, "") as api,
        open_registry(url) as registry,
    ):
        assert api.server_store_id() == registry.store_id() != ""
    with (
        open_task_store("memory://") as tasks,
        running_server(tasks) as base,
        TaskClient(base, "") as api,
    ):
        assert api.server_store_id() == ""
