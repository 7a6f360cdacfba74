"""Pruning Redis Functions: the libraries of other agentic versions go, this one's stay.

On the session's real redis-server and on fakeredis, which implements FUNCTION LOAD,
LIST and DELETE (and LIST's case-insensitive glob) as Redis 7 does.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from agentic.errors import StoreError
from agentic.events import Event, EventType
from agentic.models import AgentAllowance, AgentInfo, Task
from agentic.stores.redis import RedisAllowanceStore, RedisEventLog, RedisRegistry, prune_functions
from agentic.stores.redis._conn import sync, text
from agentic.stores.redis.functions import current_libraries
from agentic.stores.redis.tasks import RedisTaskStore

from .conftest import RedisServer, fake_redis_6

# Named like agentic's but not as agentic names its libraries: never deleted.
FOREIGN = ["mylib", "agentic_custom", "AGENTIC_" + "d" * 40, "agentic_" + "d" * 39]


def load(client: Any, name: str) -> None:
    """FUNCTION LOAD a one-function library ``name`` (its function named alike)."""
    code = f"#!lua name={name}\nredis.register_function('{name}', function() return 1 end)"
    client.function_load(code)


def stale_library(client: Any) -> str:
    """Load a library named as another agentic version's would be; its name."""
    name = "agentic_" + hashlib.sha1(uuid.uuid4().bytes, usedforsecurity=False).hexdigest()
    load(client, name)
    return name


def libraries(client: Any) -> set[str]:
    """The names of every library on the server."""
    listed = sync(client.function_list())
    return {text(dict(zip(lib[::2], lib[1::2], strict=True))[b"library_name"]) for lib in listed}


def test_prune_deletes_other_versions_libraries_and_keeps_this_ones(redis_client: Any) -> None:
    """Prune deletes an agentic_<sha1> library this version does not use, keeps the
    ones its stores loaded and every library not named so; the stores go on after."""
    redis_client.function_flush()
    prefix = f"t{uuid.uuid4().hex[:12]}"
    quota = RedisAllowanceStore(redis_client, prefix=prefix)
    quota.set_allowance(AgentAllowance(agent_id="a"))
    quota.reserve("a", "", 1, "j1")
    RedisRegistry(redis_client, prefix=prefix).register(AgentInfo(id="a"))
    RedisTaskStore(redis_client, prefix=prefix).create(Task(title="x"))
    RedisEventLog(redis_client, prefix=prefix).append([Event(type=EventType.TASK_DISPATCHED)])
    loaded = libraries(redis_client)
    assert len(loaded) == 6  # reserve, register, create, append; the open, a plain write
    stale = stale_library(redis_client)
    for name in FOREIGN:
        load(redis_client, name)
    try:
        pruned = prune_functions(redis_client)
        assert pruned.kept == tuple(sorted(loaded))
        assert pruned.deleted == (stale,)
        assert libraries(redis_client) == loaded | set(FOREIGN)
        assert quota.reserve("a", "", 1, "j2").job_id == "j2"
        assert libraries(redis_client) == loaded | set(FOREIGN)  # nothing had to reload
    finally:
        for name in FOREIGN:
            redis_client.function_delete(name)


def test_dry_run_deletes_nothing(redis_client: Any) -> None:
    """With dry_run, prune names the library it would delete and leaves it loaded."""
    stale = stale_library(redis_client)
    try:
        assert prune_functions(redis_client, dry_run=True).deleted == (stale,)
        assert stale in libraries(redis_client)
    finally:
        redis_client.function_delete(stale)


def test_a_library_deleted_meanwhile_counts_as_deleted(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library another prune deletes between the listing and the delete is no error."""
    stale = stale_library(redis_client)
    delete = redis_client.function_delete

    def raced(name: str) -> Any:
        delete(name)  # the other prune, first
        return delete(name)

    monkeypatch.setattr(redis_client, "function_delete", raced)
    assert prune_functions(redis_client).deleted == (stale,)
    assert stale not in libraries(redis_client)


def test_every_script_of_the_backend_is_a_current_library() -> None:
    """current_libraries names the library of each Script constant in the Redis
    backend's sources, and nothing else."""
    folder = Path(importlib.import_module("agentic.stores.redis").__path__[0])
    scripts = {
        getattr(importlib.import_module(f"agentic.stores.redis.{path.stem}"), name).function
        for path in folder.glob("*.py")
        for name in re.findall(r"^(\w+) = Script\(", path.read_text("utf-8"), re.MULTILINE)
    }
    assert len(scripts) >= 20  # the stores' scripts: quota, registry, tasks, log, rate
    assert current_libraries() == scripts


def test_a_server_without_functions_is_a_store_error() -> None:
    """On a server before Redis 7 prune raises StoreError saying there is nothing to prune."""
    with pytest.raises(StoreError, match=r"no Functions .* nothing to prune"):
        prune_functions(fake_redis_6())


@pytest.mark.parametrize("refused", ["-function", "-function|delete"])
def test_a_user_refused_function_is_a_store_error(redis_server: RedisServer, refused: str) -> None:
    """A user whose ACL refuses FUNCTION (LIST or DELETE) gets a StoreError naming
    what it needs, and no library is deleted."""
    admin = redis.Redis(port=redis_server.port)
    stale = stale_library(admin)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", refused]
    )
    client = redis.Redis(port=redis_server.port, username=user, password="pw")
    try:
        with pytest.raises(StoreError, match=r"may not manage functions.*FUNCTION DELETE"):
            prune_functions(client)
        assert stale in libraries(admin)
    finally:
        client.close()
        admin.acl_deluser(user)
        admin.function_delete(stale)
        admin.close()
