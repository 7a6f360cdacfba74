"""An SQLite store file deleted, moved or replaced under running processes.

A process keeps using the file its connections opened, even once the path names
another file or none (``rm agentic.db`` to "reset", a copy moved over it), while
every process started afterwards opens what the path names now: a split brain. Every
SQLite store (one helper, ``_db.Database``) records the file it opened (device,
inode) and checks at every transaction and query that the path still names it,
raising StoreLostError, writing nothing, when it does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentic.client import TaskClient
from agentic.errors import APIError, StoreLostError
from agentic.events import Event
from agentic.models import AgentAllowance, AgentInfo, Task
from agentic.stores import open_task_store
from agentic.stores.sqlite import SQLiteAllowanceStore, SQLiteEventLog, SQLiteRegistry
from agentic.stores.sqlite.tasks import SQLiteTaskStore
from agentic.testing import running_server
from tests.conftest import every_store_use, the_other_store_uses

# clean_environment is autouse in test_cli: imported here, it applies here too.
from tests.test_cli import clean_environment, run, write_config  # noqa: F401

LOST = "was deleted, moved or replaced under this process"


@dataclass
class Stores:
    """One of each SQLite store on one file, each used once already."""

    path: Path
    registry: SQLiteRegistry
    quota: SQLiteAllowanceStore
    tasks: SQLiteTaskStore
    log: SQLiteEventLog

    def close(self) -> None:
        for store in (self.registry, self.quota, self.tasks, self.log):
            store.close()


def _open(path: Path) -> Stores:
    return Stores(
        path,
        SQLiteRegistry(path),
        SQLiteAllowanceStore(path),
        SQLiteTaskStore(path),
        SQLiteEventLog(path),
    )


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Stores]:
    """Every SQLite store on tmp_path/agentic.db, holding an agent, an allowance, a
    reservation, a task and an event."""
    made = _open(tmp_path / "agentic.db")
    made.registry.register(AgentInfo(id="a1", capabilities=["py"], max_load=2))
    made.quota.set_allowance(AgentAllowance(agent_id="a1"))
    made.quota.reserve("a1", "m", 10, "j1")
    made.tasks.create(Task(id="t1", title="before"))
    made.log.append([Event(type="agent_registered")])
    yield made
    made.close()


def _uses(stores: Stores) -> list[Callable[[], object]]:
    """A call of every method of every store."""
    stored = (stores.registry, stores.quota, stores.tasks, stores.log)
    return every_store_use(*stored) + the_other_store_uses(*stored)


def _files(path: Path) -> dict[str, bytes]:
    """The bytes of the database file and its -wal, by name."""
    return {p.name: p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists()}


def _remove(path: Path) -> None:
    """``rm agentic.db agentic.db-wal agentic.db-shm``."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


def test_every_use_after_the_file_is_deleted_raises_store_lost_and_writes_nothing(
    stores: Stores, tmp_path: Path
) -> None:
    """After the file (and its -wal, -shm) is deleted under open stores, every write and
    read of every store raises StoreLostError naming the path, its store id and what to
    do; the deleted file is left as it was and no new file is made at the path."""
    seen = stores.tasks.store_id()
    kept = tmp_path / "kept"  # hard links keep the deleted files readable
    kept.mkdir()
    os.link(stores.path, kept / "agentic.db")
    os.link(f"{stores.path}-wal", kept / "agentic.db-wal")
    before = _files(kept / "agentic.db")
    _remove(stores.path)
    for use in _uses(stores):
        with pytest.raises(StoreLostError) as caught:
            use()
        message = str(caught.value)
        assert f"the SQLite store {str(stores.path)!r} {LOST}" in message
        assert f"(it opened store id {seen}, inode" in message
        assert "no file is there now" in message
        assert "restart every agentic process on this path" in message
        assert "together with its -wal and -shm files" in message
    assert _files(kept / "agentic.db") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_a_file_replaced_by_another_stores_is_refused_and_left_alone(
    stores: Stores, tmp_path: Path
) -> None:
    """A file moved over the path (another store's, with the -wal and -shm of the one
    there removed first) is refused by the stores opened before, naming the path and
    both inodes, and is left as it was; a process opening the path now uses it."""
    other_path = tmp_path / "other.db"
    with SQLiteTaskStore(other_path) as other:
        other.create(Task(id="t9", title="other"))
        other_id = other.store_id()
    opened = os.stat(stores.path).st_ino
    _remove(stores.path)
    os.rename(other_path, stores.path)
    moved = os.stat(stores.path).st_ino
    before = _files(stores.path)
    for use in _uses(stores):
        with pytest.raises(StoreLostError) as caught:
            use()
        assert f"inode {opened}; another file is there now, inode {moved})" in str(caught.value)
    assert _files(stores.path) == before
    with SQLiteTaskStore(stores.path) as fresh:
        assert fresh.store_id() == other_id
        assert [task.id for task in fresh.list()] == ["t9"]


def test_the_same_file_goes_on_untouched_written_by_others_or_moved_back(
    stores: Stores, tmp_path: Path
) -> None:
    """Stores whose file is still at the path go on: while other stores (another
    process's included) write to it, and after the file was moved away and back."""
    others = _open(stores.path)
    try:
        others.registry.register(AgentInfo(id="a2", capabilities=["py"]))
        others.tasks.create(Task(id="o1", title="by others"))
        others.log.append([Event(type="agent_registered")])
    finally:
        others.close()
    script = (
        "import sys; from agentic.stores.sqlite.tasks import SQLiteTaskStore;"
        "from agentic.models import Task;"
        "s = SQLiteTaskStore(sys.argv[1]); s.create(Task(id='p1', title='x')); s.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(stores.path)], check=True, timeout=60)
    for use in every_store_use(stores.registry, stores.quota, stores.tasks, stores.log):
        use()
    moved = tmp_path / "away.db"
    os.rename(stores.path, moved)
    with pytest.raises(StoreLostError):
        stores.registry.heartbeat("a1")
    os.rename(moved, stores.path)
    stores.registry.heartbeat("a1")
    assert {task.id for task in stores.tasks.list()} == {"t1", "t2", "o1", "p1"}
    assert stores.quota.get_usage("a1").jobs_started == 2


def test_a_fresh_store_opens_and_a_symlinked_path_works(tmp_path: Path) -> None:
    """A path naming no file yet (in a directory not made yet) opens a new store that
    works; a symlink to it is the same store, used through the link as through the
    file, and a symlink pointed at another file is refused like a replaced file."""
    path = tmp_path / "new" / "agentic.db"
    with SQLiteTaskStore(path) as fresh:
        fresh.create(Task(id="t1", title="first"))
        first_id = fresh.store_id()
    link = tmp_path / "link.db"
    link.symlink_to(path)
    with SQLiteTaskStore(link) as linked, SQLiteTaskStore(path) as direct:
        assert linked.store_id() == first_id
        linked.create(Task(id="t2", title="through the link"))
        direct.create(Task(id="t3", title="direct"))
        assert {task.id for task in linked.list()} == {"t1", "t2", "t3"}
        with SQLiteTaskStore(tmp_path / "other.db") as other:
            other.store_id()
        link.unlink()
        link.symlink_to(tmp_path / "other.db")
        with pytest.raises(StoreLostError, match="another file is there now"):
            linked.create(Task(id="t4", title="refused"))
        direct.create(Task(id="t4", title="the file itself is still there"))


def test_a_new_thread_of_a_process_whose_file_was_deleted_opens_nothing(
    stores: Stores,
) -> None:
    """A thread opening its first connection after the file was deleted raises
    StoreLostError and does not create a new file at the path."""
    _remove(stores.path)
    caught: list[BaseException] = []

    def write() -> None:
        try:
            stores.tasks.create(Task(id="t2", title="from a new thread"))
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(30)
    assert len(caught) == 1 and isinstance(caught[0], StoreLostError), caught
    assert "no file is there now" in str(caught[0])
    assert not stores.path.exists()


_CHILD = """
import sys
from agentic.errors import StoreLostError
from agentic.models import AgentInfo
from agentic.stores.sqlite import SQLiteRegistry
registry = SQLiteRegistry(sys.argv[1])
registry.register(AgentInfo(id="child", capabilities=["py"]))
print("ready", flush=True)
sys.stdin.readline()
try:
    registry.heartbeat("child")
except StoreLostError as exc:
    print("lost:", exc, flush=True)
else:
    print("wrote", flush=True)
"""


def test_a_running_process_refuses_once_its_file_is_replaced(tmp_path: Path) -> None:
    """A process that opened the file, whose file another process then replaces with a
    new store (the "reset" of rm and start again), refuses its next write, saying so,
    and the new store gets nothing from it."""
    path = tmp_path / "agentic.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        _remove(path)
        with SQLiteRegistry(path) as fresh:  # a process started after the reset
            fresh.register(AgentInfo(id="new", capabilities=["py"]))
            child.stdin.write("go\n")
            child.stdin.flush()
            said = child.stdout.readline()
            assert said.startswith(f"lost: the SQLite store {str(path)!r} {LOST}"), said
            assert "another file is there now" in said
            assert [agent.id for agent in fresh.list()] == ["new"]
    finally:
        child.kill()
        child.wait(30)


def test_the_task_api_and_status_say_the_file_was_lost(tmp_path: Path) -> None:
    """A server whose SQLite file was deleted answers a create, a read and its health
    check with 503 saying the store was lost, naming the file and what to do; `agentic
    status` prints that and exits 1."""
    path = tmp_path / "agentic.db"
    url = f"sqlite:///{path.as_posix().lstrip('/')}"
    with (
        open_task_store(url) as tasks,
        running_server(tasks, requeue_interval=None) as base,
        TaskClient(base, "", retries=0) as api,
    ):
        api.create_task(Task(id="t1", title="before"))
        _remove(path)
        calls: list[Callable[[], object]] = [
            lambda: api.create_task(Task(title="x")),
            lambda: api.get_task("t1"),
            api.server_store_id,
        ]
        for call in calls:
            with pytest.raises(APIError) as caught:
                call()
            assert caught.value.code == 503
            message = caught.value.message
            assert message.startswith("the task server's store was lost: the SQLite store")
            assert f"{str(path)!r} {LOST}" in message
        status = run("status", "--config", str(write_config(tmp_path / "c.yaml", base, url)))
        assert status.exit_code == 1, status.output
        told = " ".join(status.stderr.split())
        assert "the task server's store was lost: the SQLite store" in told
        assert "no file is there now" in told
        assert not path.exists()  # a read-only status made no file either
