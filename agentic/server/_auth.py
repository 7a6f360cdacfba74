"""Bearer tokens: admin tokens may do anything, agent tokens act only as their agent.

Tokens are kept as SHA-256 digests and compared with :func:`hmac.compare_digest`
against every configured token (no early exit), so neither the comparison nor the
position of a match in the table leaks through timing. Tokens are never logged and
never appear in error messages.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import APIError, ConfigError

__all__ = ["Auth", "Principal", "token_key"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an admin (``agent_id`` None) or one agent."""

    admin: bool
    agent_id: str | None = None

    def act_as(self, agent_id: str | None) -> str | None:
        """The agent id a call acts for: an agent token may only name itself (403)."""
        if self.admin:
            return agent_id or None
        if agent_id and agent_id != self.agent_id:
            raise APIError(
                f"this token belongs to agent {self.agent_id!r}; it cannot act for {agent_id!r}",
                403,
            )
        return self.agent_id

    def require_admin(self, action: str) -> None:
        """Raise 403 unless an admin token is calling."""
        if not self.admin:
            raise APIError(f"an agent token cannot {action}: use an admin token", 403)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_key(token: str) -> str:
    """A token's name in tables kept per caller (its digest: never the token)."""
    return _digest(token).hex()


class Auth:
    """The token table of one server; with no tokens the server is open (all admin)."""

    def __init__(self, admin_tokens: Iterable[str], agent_tokens: Mapping[str, str]) -> None:
        admins = list(admin_tokens)
        for token in [*admins, *agent_tokens]:
            if not isinstance(token, str) or not token.strip():
                raise ConfigError("tokens must be non-empty strings")
        if set(admins) & set(agent_tokens):
            raise ConfigError("a token cannot be both an admin token and an agent token")
        for agent_id in agent_tokens.values():
            if not isinstance(agent_id, str) or not agent_id:
                raise ConfigError("every agent token must map to a non-empty agent id")
        self._table = [(_digest(t), Principal(admin=True)) for t in admins] + [
            (_digest(t), Principal(admin=False, agent_id=a)) for t, a in agent_tokens.items()
        ]

    @property
    def open(self) -> bool:
        """True when no token is configured: every caller is treated as an admin."""
        return not self._table

    def authenticate(self, token: str | None) -> Principal:
        """The caller behind a bearer token, or 401."""
        if self.open:
            return Principal(admin=True)
        if not token:
            raise APIError(
                "missing bearer token: send Authorization: Bearer <token> (TaskClient's"
                " token argument)",
                401,
            )
        digest = _digest(token)
        found: Principal | None = None
        for known, principal in self._table:
            if hmac.compare_digest(digest, known):
                found = principal
        if found is None:
            raise APIError(
                "invalid bearer token: not one this server was started with (its admin"
                " tokens, or an agent token)",
                401,
            )
        return found
