"""``agentic admin prune-functions``: other versions' Redis Functions pruned, on a real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import closing

import pytest
import redis

from agentic.models import AgentAllowance
from agentic.stores import open_allowance_store

from .conftest import RedisServer
from .test_cli import clean_environment, no_traceback, run
from .test_redis_functions import libraries, stale_library

__all__ = ["clean_environment"]  # a fixture, used by name

PRUNE = ["admin", "prune-functions"]


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's redis-server."""
    with closing(redis.Redis(port=redis_server.port)) as client:
        yield client


def test_prune_deletes_other_versions_and_says_what_it_kept(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """prune-functions deletes another version's library, prints each library kept and
    deleted, warns that a running version reloads its own; a store works after."""
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    with closing(open_allowance_store(url)) as quota:
        quota.set_allowance(AgentAllowance(agent_id="a"))
        quota.reserve("a", "", 1, "j1")  # loads this version's quota library
        stale = stale_library(admin)
        result = run(*PRUNE, "--store", url)
        assert result.exit_code == 0, result.output
        assert f"deleted {stale}" in result.stdout.splitlines()
        assert any(line.startswith("kept agentic_") for line in result.stdout.splitlines())
        assert "loads its libraries again at its next call" in " ".join(result.stderr.split())
        assert stale not in libraries(admin)
        assert quota.reserve("a", "", 1, "j2").job_id == "j2"

    again = run(*PRUNE, "--store", url)
    assert again.exit_code == 0
    assert again.stdout.splitlines()[-1].endswith(" kept, 0 deleted")
    assert again.stderr == ""  # nothing deleted: nothing to warn of


def test_dry_run_json_lists_what_it_would_delete(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """--dry-run --json lists the library it would delete and leaves it loaded."""
    stale = stale_library(admin)
    try:
        result = run(*PRUNE, "--store", redis_server.url, "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["deleted"] == [stale] and data["dry_run"] is True
        assert stale in libraries(admin)
    finally:
        admin.function_delete(stale)


@pytest.mark.parametrize("url", ["sqlite:///agentic.db", "memory://"])
def test_a_store_other_than_redis_is_a_usage_error(url: str) -> None:
    """A store URL that is not Redis exits 2 saying a redis:// URL is needed."""
    result = run(*PRUNE, "--store", url)
    assert result.exit_code == 2
    assert "give a redis:// or rediss:// URL" in " ".join(result.stderr.split())
    no_traceback(result)


def test_a_user_refused_function_exits_1(redis_server: RedisServer, admin: redis.Redis) -> None:
    """A Redis user whose ACL refuses FUNCTION gets exit 1 and what it needs."""
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], commands=["+@all", "-function"])
    try:
        result = run(*PRUNE, "--store", f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0")
    finally:
        admin.acl_deluser(user)
    assert result.exit_code == 1
    assert "may not manage functions" in " ".join(result.stderr.split())
    no_traceback(result)
