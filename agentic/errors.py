"""Every error agentic raises, under one root.

Catch :class:`AgenticError` to handle anything the SDK raises; backend exceptions
(sqlite3, redis, httpx) never escape: they are translated at the boundary with
``raise ... from exc`` so the original stays on ``__cause__``.

::

    AgenticError
    ├── ConfigError              bad configuration, store URL or argument
    ├── StoreError               a store failed (I/O, corrupt data, script error)
    │   ├── StoreUnavailableError   the store could not be reached in time
    │   └── StoreLostError          the store was emptied or replaced under this process
    ├── NoEligibleAgentError     no registered agent can take the task now
    ├── QuotaExceededError       a reservation was refused (reason, retry_after)
    ├── InfrastructureError      the agent cannot run a task here (release, no retry)
    │   └── WorkspaceError          git workspace unusable (dirty tree, push failed)
    ├── TaskCancelled            a handler stopped because the task was cancelled
    ├── ClaimUnknownError        a claim's outcome cannot be known yet (quota kept)
    └── APIError                 an HTTP/API failure (code, message, details)
        ├── NotFoundError           404: unknown task, agent, allowance, job
        ├── ConflictError           409: already claimed, not claimable, settled
        └── TransportError          no answer: connect/read failure after retries

``NotFoundError`` and ``ConflictError`` are raised by stores as well as by the HTTP
client, so code that handles "not found" works the same in-process and remotely;
their ``code`` is the HTTP status the server answers with. The three runner errors
are defined in :mod:`agentic.runner` (they belong to the agent side) and
``ClaimUnknownError`` in :mod:`agentic.dispatcher`; all are exported from the
package root.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "AgenticError",
    "ConfigError",
    "ConflictError",
    "NoEligibleAgentError",
    "NotFoundError",
    "QuotaExceededError",
    "StoreError",
    "StoreLostError",
    "StoreUnavailableError",
    "TransportError",
]


class AgenticError(Exception):
    """Root of every error raised by agentic."""


class ConfigError(AgenticError):
    """Configuration, a store URL or an argument is wrong; the message says how to fix it."""


class StoreError(AgenticError):
    """A store operation failed."""


class StoreUnavailableError(StoreError):
    """The store could not be reached within the configured time."""


class StoreLostError(StoreError):
    """The store this process opened was emptied or replaced under it (a Redis
    restarted without persistence, a ``FLUSHDB``, a failover to a replica that had not
    caught up; an SQLite file deleted, moved or replaced): what it held is gone, and
    nothing is written into the empty one (nor into the SQLite file now unseen)."""


class NoEligibleAgentError(AgenticError):
    """No agent is online, capable and below capacity for the task."""


class QuotaExceededError(AgenticError):
    """A quota refused the request.

    ``reason`` names the limit (for example ``"daily token limit"``) and
    ``retry_after`` is the number of seconds after which the same request may pass,
    or ``None`` when only a settle can free room (concurrency).
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class APIError(AgenticError):
    """An API call failed; ``code`` is the HTTP status (0 when there was no answer).

    ``from_response`` marks an error read from a server's answer: its text then starts
    with ``HTTP <code>:``. The same classes raised in-process (a store's "not found")
    carry the code for the server to answer with, but say nothing of HTTP.
    """

    default_code = 500

    def __init__(
        self,
        message: str,
        code: int | None = None,
        details: Any = None,
        *,
        from_response: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = self.default_code if code is None else code
        self.message = message
        self.details = details
        self.from_response = from_response
        #: seconds the server asked to wait before trying again (its Retry-After)
        self.retry_after: float | None = None

    def __str__(self) -> str:
        return f"HTTP {self.code}: {self.message}" if self.from_response else self.message

    def to_body(self) -> dict[str, Any]:
        """The wire form ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": self.details}


class NotFoundError(APIError):
    """The task, agent, allowance or job does not exist."""

    default_code = 404


class ConflictError(APIError):
    """The operation conflicts with the current state (already claimed, settled...)."""

    default_code = 409


class TransportError(APIError):
    """The server could not be reached or did not answer, after the allowed retries."""

    default_code = 0
