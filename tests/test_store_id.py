"""Store ids: every store in one storage (a SQLite file, a Redis database and prefix)
reports the same id, another storage another one, and the task API says which one
it serves."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from agentic.client import TaskClient
from agentic.stores import open_allowance_store, open_event_log, open_registry, open_task_store
from agentic.stores.memory import MemoryEventLog
from agentic.stores.memory.tasks import MemoryTaskStore
from agentic.testing import running_server

from .conftest import RedisServer

# clean_environment is autouse in test_cli: imported here, it applies here too.
from .test_cli import clean_environment, run, write_config  # noqa: F401


def _sqlite(path: Path) -> str:
    return "sqlite:///" + path.as_posix().lstrip("/")


def test_stores_on_one_sqlite_file_share_its_id(tmp_path: Path) -> None:
    """The registry, the allowance store, the task store and the event log of one file
    report one id, stable across opens; another file has another (the allowance store
    said "" as if it could not tell)."""
    url = _sqlite(tmp_path / "a.db")
    with (
        open_registry(url) as registry,
        open_task_store(url) as tasks,
        open_allowance_store(url) as quota,
        open_event_log(url) as log,
    ):
        first = registry.store_id()
        assert len(first) == 32 and tasks.store_id() == first
        assert quota.store_id() == log.store_id() == first
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


def test_each_memory_store_has_an_id_of_its_own() -> None:
    """memory:// is storage private to one instance in one process: each store has its
    own memory:<random> id, the same every time it is asked; a store recording into a
    memory event log is that log's storage and shares its id."""
    with (
        open_registry("memory://") as registry,
        open_allowance_store("memory://") as quota,
        open_task_store("memory://") as tasks,
        open_event_log("memory://") as log,
        open_registry("memory://") as other,
    ):
        ids = [store.store_id() for store in (registry, quota, tasks, log, other)]
        assert all(re.fullmatch(r"memory:[0-9a-f]{32}", one) for one in ids), ids
        assert len(set(ids)) == len(ids)
        assert registry.store_id() == ids[0]
    shared = MemoryEventLog()
    assert MemoryTaskStore(events=shared).store_id() == shared.store_id()


def test_the_task_api_says_which_store_it_serves(tmp_path: Path) -> None:
    """The health check carries the served store's id, a memory store's included."""
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
        assert api.server_store_id() == tasks.store_id()
        assert api.server_store_id().startswith("memory:")


@pytest.mark.parametrize("local", ["memory", "sqlite"])
def test_status_and_events_against_a_memory_server_say_it_is_per_process(
    tmp_path: Path, local: str
) -> None:
    """status (and events, reading a SQLite log) against a server on memory://, or
    status reading memory:// itself, warn that a memory store is per-process and to
    point both at SQLite or Redis (events: or read with --api), and exit 1; events
    --consumers, about the local log itself, still answers."""
    url = "memory://" if local == "memory" else _sqlite(tmp_path / "local.db")
    if local == "sqlite":
        with open_registry(url), open_event_log(url):
            pass  # the file exists: status and events read it
    with open_task_store("memory://") as tasks, running_server(tasks) as base:
        config = write_config(tmp_path / "c.yaml", base, url)
        status = run("status", "--config", str(config))
        assert status.exit_code == 1, status.output
        said = " ".join(status.stderr.split())
        assert "a memory:// store is per-process" in said
        assert "point both at one SQLite file or Redis database" in said
        assert f"serves store {tasks.store_id()}" in said
        if local == "sqlite":
            events = run("events", "--config", str(config))
            assert events.exit_code == 1, events.output
            said = " ".join(events.stderr.split())
            assert "a memory:// store is per-process" in said and "with --api" in said
            # The local log's own consumers are listed whatever the server serves.
            listed = run("events", "--consumers", "--json", "--config", str(config))
            assert listed.exit_code == 0, listed.output
