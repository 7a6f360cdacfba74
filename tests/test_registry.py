"""AgentRegistry contract, run on every backend (go-agentic's registry cases, ported)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agentic.errors import ConfigError, NotFoundError
from agentic.models import AgentInfo, AgentStatus
from agentic.stores import open_allowance_store, open_event_log, open_registry, open_task_store
from tests.conftest import Backend, free_port


def agent(agent_id: str, **fields: object) -> AgentInfo:
    return AgentInfo.model_validate({"id": agent_id, "name": agent_id.upper(), **fields})


def test_register_and_get(backend: Backend) -> None:
    """A registered agent can be read back with its fields and a heartbeat stamp."""
    reg = backend.registry()
    reg.register(agent("a1", capabilities=["go", "py"], max_load=3, current_load=1))
    got = reg.get("a1")
    assert got.name == "A1"
    assert got.capabilities == ["go", "py"]
    assert (got.current_load, got.max_load) == (1, 3)
    assert got.status == AgentStatus.AVAILABLE
    assert got.last_heartbeat is not None
    assert got.last_heartbeat.timestamp() == pytest.approx(backend.clock())


def test_register_is_upsert_keeping_first_registered_at(backend: Backend) -> None:
    """Registering again replaces the fields but keeps the first registered_at."""
    reg = backend.registry()
    first = reg.register(agent("a1", capabilities=["go"]))
    backend.clock.advance(60)
    reg.register(agent("a1", capabilities=["rust"], max_load=2))
    got = reg.get("a1")
    assert got.capabilities == ["rust"]
    assert got.max_load == 2
    assert got.registered_at == first.registered_at
    assert len(reg.list()) == 1


def test_register_at_max_load_is_busy(backend: Backend) -> None:
    """Status follows load: an agent registered at max_load is busy."""
    reg = backend.registry()
    reg.register(agent("a1", max_load=2, current_load=2))
    assert reg.get("a1").status == AgentStatus.BUSY


def test_get_unknown_raises_not_found(backend: Backend) -> None:
    """Getting an unknown agent raises NotFoundError."""
    with pytest.raises(NotFoundError):
        backend.registry().get("nobody")


def test_get_returns_a_copy(backend: Backend) -> None:
    """Mutating a returned AgentInfo does not change the stored agent."""
    reg = backend.registry()
    reg.register(agent("a1", capabilities=["go"]))
    got = reg.get("a1")
    got.capabilities.append("evil")
    assert reg.get("a1").capabilities == ["go"]


def test_deregister(backend: Backend) -> None:
    """A deregistered agent is gone; deregistering it again raises NotFoundError."""
    reg = backend.registry()
    reg.register(agent("a1"))
    reg.deregister("a1")
    with pytest.raises(NotFoundError):
        reg.get("a1")
    with pytest.raises(NotFoundError):
        reg.deregister("a1")
    assert reg.list() == []


def test_list_sorted_and_filtered(backend: Backend) -> None:
    """list() is sorted by id and filters by status and capability."""
    reg = backend.registry()
    reg.register(agent("c", capabilities=["go"]))
    reg.register(agent("a", capabilities=["go", "py"], max_load=1, current_load=1))
    reg.register(agent("b", capabilities=["py"]))
    assert [a.id for a in reg.list()] == ["a", "b", "c"]
    assert [a.id for a in reg.list(capability="go")] == ["a", "c"]
    assert [a.id for a in reg.list(status=AgentStatus.BUSY)] == ["a"]
    assert [a.id for a in reg.list(status=AgentStatus.AVAILABLE, capability="py")] == ["b"]


def test_heartbeat_updates_time_and_load(backend: Backend) -> None:
    """A heartbeat stamps the store's time and sets the load; status follows load."""
    reg = backend.registry()
    reg.register(agent("a1", max_load=2))
    backend.clock.advance(10)
    info = reg.heartbeat("a1", load=2)
    assert info.current_load == 2
    assert info.status == AgentStatus.BUSY
    assert reg.get("a1").last_heartbeat.timestamp() == pytest.approx(backend.clock())  # type: ignore[union-attr]
    assert reg.heartbeat("a1", load=1).status == AgentStatus.AVAILABLE


def test_heartbeat_unknown_raises_not_found(backend: Backend) -> None:
    """A heartbeat for an unknown id raises NotFoundError and creates nothing."""
    reg = backend.registry()
    with pytest.raises(NotFoundError):
        reg.heartbeat("ghost")
    assert reg.list() == []


def test_heartbeat_recovers_from_offline(backend: Backend) -> None:
    """An agent reaped offline comes back available on its next heartbeat."""
    reg = backend.registry()
    reg.register(agent("a1"))
    backend.clock.advance(100)
    assert reg.reap(30) == ["a1"]
    assert reg.get("a1").status == AgentStatus.OFFLINE
    assert reg.heartbeat("a1").status == AgentStatus.AVAILABLE


def test_heartbeat_busy_stays_busy(backend: Backend) -> None:
    """A busy agent (at max_load) stays busy after a heartbeat without a load."""
    reg = backend.registry()
    reg.register(agent("a1", max_load=1, current_load=1))
    assert reg.heartbeat("a1").status == AgentStatus.BUSY


def test_heartbeat_rejects_negative_load(backend: Backend) -> None:
    """A negative load is a ConfigError, not a stored value."""
    reg = backend.registry()
    reg.register(agent("a1"))
    with pytest.raises(ConfigError):
        reg.heartbeat("a1", load=-1)
    assert reg.get("a1").current_load == 0


def test_reap_marks_only_stale_agents(backend: Backend) -> None:
    """reap(ttl) marks agents silent for longer than ttl offline and returns their ids."""
    reg = backend.registry()
    reg.register(agent("old1"))
    reg.register(agent("old2"))
    backend.clock.advance(50)
    reg.register(agent("fresh"))
    backend.clock.advance(20)
    assert reg.reap(timedelta(seconds=30)) == ["old1", "old2"]
    assert reg.get("fresh").status == AgentStatus.AVAILABLE
    assert reg.get("old1").status == AgentStatus.OFFLINE


def test_reap_skips_already_offline(backend: Backend) -> None:
    """An agent already offline is not returned by a second reap."""
    reg = backend.registry()
    reg.register(agent("a1"))
    backend.clock.advance(100)
    assert reg.reap(30) == ["a1"]
    backend.clock.advance(100)
    assert reg.reap(30) == []


def test_reap_includes_busy_agents(backend: Backend) -> None:
    """Busy agents are reaped too when they stop heartbeating."""
    reg = backend.registry()
    reg.register(agent("a1", max_load=1, current_load=1))
    backend.clock.advance(100)
    assert reg.reap(30) == ["a1"]


def test_reap_with_boundary_heartbeat_keeps_agent(backend: Backend) -> None:
    """An agent whose heartbeat is exactly ttl old is not stale yet."""
    reg = backend.registry()
    reg.register(agent("a1"))
    backend.clock.advance(30)
    assert reg.reap(30) == []


def test_reap_rejects_negative_ttl(backend: Backend) -> None:
    """A negative ttl is a ConfigError."""
    with pytest.raises(ConfigError):
        backend.registry().reap(-1)


def test_register_rejects_empty_id(backend: Backend) -> None:
    """An AgentInfo cannot be built with an empty id."""
    with pytest.raises(ValueError, match="id"):
        agent("")


def test_persistence_across_instances(backend: Backend) -> None:
    """A second registry on the same backend sees what the first stored (not memory)."""
    if backend.name == "memory":
        pytest.skip("memory stores are per instance by design")
    backend.registry().register(agent("a1", capabilities=["go"]))
    assert backend.registry().get("a1").capabilities == ["go"]


# --- named leases (one active dispatcher) ---------------------------------------------


def test_a_lease_has_one_holder_until_it_runs_out(backend: Backend) -> None:
    """The first caller takes the lease; others are told who holds it until it expires."""
    reg = backend.registry()
    assert reg.hold_lease("dispatcher", "d1", 10) == "d1"
    assert reg.hold_lease("dispatcher", "d2", 10) == "d1"
    backend.clock.advance(9)
    assert reg.hold_lease("dispatcher", "d1", 10) == "d1"  # extended: 10 s from now
    backend.clock.advance(9)
    assert reg.hold_lease("dispatcher", "d2", 10) == "d1"
    backend.clock.advance(2)
    assert reg.hold_lease("dispatcher", "d2", timedelta(seconds=10)) == "d2"  # ran out
    assert reg.hold_lease("dispatcher", "d1", 10) == "d2"
    assert reg.hold_lease("other", "d1", 10) == "d1"  # leases are independent


def test_dropping_a_lease_frees_it_only_for_its_holder(backend: Backend) -> None:
    """drop_lease by someone else changes nothing; by the holder, the next caller gets it."""
    reg = backend.registry()
    reg.hold_lease("dispatcher", "d1", 60)
    reg.drop_lease("dispatcher", "d2")
    assert reg.hold_lease("dispatcher", "d2", 60) == "d1"
    reg.drop_lease("dispatcher", "d1")
    assert reg.hold_lease("dispatcher", "d2", 60) == "d2"
    reg.drop_lease("never held", "d1")  # nothing to drop: no error


def test_lease_arguments_are_checked(backend: Backend) -> None:
    """An empty name or holder, or a negative ttl, is a ConfigError."""
    reg = backend.registry()
    with pytest.raises(ConfigError, match="lease name"):
        reg.hold_lease("", "d1", 10)
    with pytest.raises(ConfigError, match="lease holder"):
        reg.hold_lease("dispatcher", "", 10)
    with pytest.raises(ConfigError, match="ttl"):
        reg.hold_lease("dispatcher", "d1", -1)
    assert reg.hold_lease("dispatcher", "d1", 10) == "d1"


@pytest.mark.parametrize(
    "opener", [open_registry, open_allowance_store, open_event_log, open_task_store]
)
@pytest.mark.parametrize("scheme", ["memory", "sqlite", "redis"])
@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("reservation_ttl=inf", r"reservation_ttl='inf' must be a number of seconds"),
        ("reservation_ttl=0", r"reservation_ttl='0' must be a number of seconds >= 0.001"),
        ("tz=Mars/Base", r"unknown timezone tz='Mars/Base'"),
    ],
)
def test_every_opener_refuses_the_options_the_allowance_opener_refuses(
    opener: Callable[[str], Any], scheme: str, option: str, said: str, tmp_path: Path
) -> None:
    """A bad tz or reservation_ttl is a ConfigError from every store opener, before
    any connection; the registry, task store and event log openers took it silently,
    so one store_url was accepted by some openers and refused by the allowance one."""
    where = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp_path}/a.db",
        "redis": f"redis://127.0.0.1:{free_port()}/0",
    }[scheme]
    with pytest.raises(ConfigError, match=said):
        opener(f"{where}?{option}")
