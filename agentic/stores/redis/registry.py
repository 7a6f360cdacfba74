"""AgentRegistry on Redis: a hash per agent, a set of ids, a sorted set of heartbeats.

Every write is one Lua script, so a heartbeat, a reap and a deregister never
interleave: a heartbeat only updates an existing hash (it cannot bring back an
agent deregistered a moment before, go-agentic defect 14), and reap reads only the
stale end of the heartbeat sorted set, which holds online agents only: O(stale).
Times are the server's (``TIME``) unless a clock is injected.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from ...errors import NotFoundError, StoreError
from ...models import AgentInfo, AgentStatus
from ..base import AgentRegistry, require_count, require_id, status_for_load, ttl_seconds
from ..keys import RegistryKeys
from ._conn import (
    DEFAULT_PREFIX,
    Script,
    checked_read,
    now_arg,
    open_identity,
    text,
)

__all__ = ["RedisRegistry"]

# Fields kept outside the JSON ``doc`` because the scripts read or write them.
_LIVE_FIELDS = {"current_load", "max_load", "status", "last_heartbeat", "registered_at"}

_REGISTER = Script("common.lua", "reg_register.lua")
_HEARTBEAT = Script("common.lua", "reg_heartbeat.lua")
_DEREGISTER = Script("reg_deregister.lua")
_REAP = Script("common.lua", "reg_reap.lua")
_LEASE = Script("common.lua", "reg_lease.lua")


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _missing(agent_id: str) -> NotFoundError:
    return NotFoundError(f"agent {agent_id!r} is not registered")


def _info(raw: Mapping[object, object]) -> AgentInfo:
    """An AgentInfo from its hash (as HGETALL returns it)."""
    fields = {text(k): text(v) for k, v in raw.items()}
    try:
        return AgentInfo.model_validate(
            {
                **json.loads(fields["doc"]),
                "current_load": int(fields["current_load"]),
                "max_load": int(fields["max_load"]),
                "status": fields["status"],
                "last_heartbeat": _ts(float(fields["last_heartbeat"])),
                "registered_at": _ts(float(fields["registered_at"])),
            }
        )
    except (KeyError, ValueError) as exc:
        raise StoreError(f"corrupt agent record in Redis: {exc}") from exc


class RedisRegistry(AgentRegistry):
    """AgentRegistry shared by every machine that reaches one Redis server.

    ``client`` is a redis-py client; it is closed by :meth:`close` only when
    ``close_client`` is true (stores opened from a URL own their client).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
        close_client: bool = False,
        create: bool = True,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._keys = RegistryKeys.under(require_id("prefix", prefix))
        self._clock = clock
        self._close_client = close_client
        self._identity = open_identity(client, prefix, close_client, create)

    def close(self) -> None:
        if self._close_client:
            self._client.close()

    def store_id(self) -> str:
        return self._identity.check(self._client)

    def register(self, info: AgentInfo) -> AgentInfo:
        require_id("agent id", info.id)
        status = status_for_load(info.current_load, info.max_load)
        doc = info.model_dump_json(exclude=_LIVE_FIELDS)
        now, _at = now_arg(self._clock)
        k = self._keys
        registered, beat = _REGISTER(
            self._client,
            [now, info.id, doc, str(info.current_load), str(info.max_load), status.value],
            keys=[k.agent(info.id), k.ids, k.beats],
            identity=self._identity,
        )
        return info.model_copy(
            update={
                "registered_at": _ts(float(text(registered))),
                "last_heartbeat": _ts(float(text(beat))),
                "status": status,
            },
            deep=True,
        )

    def deregister(self, agent_id: str) -> None:
        k = self._keys
        removed = _DEREGISTER(
            self._client,
            [agent_id],
            keys=[k.agent(agent_id), k.ids, k.beats],
            identity=self._identity,
        )
        if not removed:
            raise _missing(agent_id)

    def get(self, agent_id: str) -> AgentInfo:
        # With the store id (checked_read): not "not registered" from an emptied store.
        key = self._keys.agent(agent_id)
        [raw] = checked_read(self._client, self._identity, "get agent", lambda p: p.hgetall(key))
        if not raw:
            raise _missing(agent_id)
        return _info(raw)

    def list(
        self, status: AgentStatus | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        # Two round trips whatever the fleet size (one for none): the ids, then every
        # hash pipelined, each with the store id (checked_read), so that an emptied
        # store is not an empty fleet. An agent deregistered in between has an empty
        # hash and is skipped.
        [members] = checked_read(
            self._client, self._identity, "list agents", lambda p: p.smembers(self._keys.ids)
        )
        ids = sorted(text(i) for i in members)

        def hashes(pipe: Any) -> None:
            for agent_id in ids:
                pipe.hgetall(self._keys.agent(agent_id))

        found = checked_read(self._client, self._identity, "list agents", hashes) if ids else []
        agents = [_info(raw) for raw in found if raw]
        return [
            a
            for a in agents
            if (status is None or a.status == status)
            and (capability is None or capability in a.capabilities)
        ]

    def heartbeat(self, agent_id: str, load: int | None = None) -> AgentInfo:
        if load is not None:
            require_count("load", load)
        now, _at = now_arg(self._clock)
        k = self._keys
        raw = _HEARTBEAT(
            self._client,
            [now, agent_id, "" if load is None else str(load)],
            keys=[k.agent(agent_id), k.beats],
            identity=self._identity,
        )
        if raw is None:
            raise _missing(agent_id)
        return _info(dict(zip(raw[::2], raw[1::2], strict=True)))

    def reap(self, ttl: float | timedelta) -> builtins.list[str]:
        seconds = ttl_seconds(ttl)
        now, _at = now_arg(self._clock)
        k = self._keys
        reaped = _REAP(
            self._client,
            [now, repr(seconds), k.agent_head],
            keys=[k.beats],
            identity=self._identity,
        )
        return sorted(text(i) for i in reaped)

    def hold_lease(self, name: str, holder: str, ttl: float | timedelta) -> str:
        require_id("lease name", name)
        require_id("lease holder", holder)
        seconds = ttl_seconds(ttl)
        now, _at = now_arg(self._clock)
        key = self._keys.lease_head + name
        return text(
            _LEASE(self._client, [now, holder, repr(seconds)], keys=[key], identity=self._identity)
        )

    def drop_lease(self, name: str, holder: str) -> None:
        now, _at = now_arg(self._clock)
        key = self._keys.lease_head + name
        _LEASE(self._client, [now, holder, ""], keys=[key], identity=self._identity)
