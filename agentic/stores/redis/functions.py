"""The Redis Functions libraries agentic leaves on a server, and pruning them.

Each :class:`~._conn.Script` loads a library named ``agentic_<sha1 of its source>``.
Redis persists and replicates functions, so every agentic version that ever ran
against a server leaves its libraries there until someone deletes them. Deleting a
library of a version still running is safe: its next call finds no function, loads
its library again and goes on, at the cost of that one load.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

import redis
from redis.exceptions import NoPermissionError, ResponseError

from ...errors import StoreError
from ._conn import Script, refuses_functions, sync, text, translate_errors

__all__ = ["PrunedFunctions", "current_libraries", "prune_functions"]

# FUNCTION LIST LIBRARYNAME takes a glob that Redis matches ignoring case, so the
# listing is only a first cut: what is deleted must be named exactly as a Script
# names its library, and nothing else (another application's libraries included).
_LISTED = "agentic_*"
_OURS = re.compile(r"agentic_[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class PrunedFunctions:
    """The agentic libraries found on a server: those this version uses (kept) and
    the others (deleted, or with ``dry_run`` to be deleted), each sorted by name."""

    kept: tuple[str, ...]
    deleted: tuple[str, ...]


def current_libraries() -> frozenset[str]:
    """The names of the libraries this installed agentic loads: one per Script of
    the Redis backend's modules (every Script is a module constant there)."""
    package = importlib.import_module(__name__.rpartition(".")[0])
    names: set[str] = set()
    for found in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(found.name)
        names.update(value.function for value in vars(module).values() if isinstance(value, Script))
    return frozenset(names)


def prune_functions(client: redis.Redis, *, dry_run: bool = False) -> PrunedFunctions:
    """Delete the agentic libraries on the server of ``client`` that this version
    does not use (with ``dry_run``, only say which); a library not named as agentic
    names its own (``agentic_<sha1>``) is never touched.

    Raises StoreError when the server has no Functions (before Redis 7.0) or the
    user's ACL refuses FUNCTION.
    """
    with translate_errors("pruning Redis Functions"):
        try:
            return _prune(client, dry_run)
        except ResponseError as exc:
            if refuses_functions(exc):
                raise _refusal(exc) from exc
            raise


def _prune(client: redis.Redis, dry_run: bool) -> PrunedFunctions:
    current = current_libraries()
    listed = sync(client.function_list(library=_LISTED))
    found = sorted(name for name in map(_library_name, listed) if _OURS.fullmatch(name))
    stale = tuple(name for name in found if name not in current)
    if not dry_run:
        for name in stale:
            _delete(client, name)
    return PrunedFunctions(kept=tuple(name for name in found if name in current), deleted=stale)


def _library_name(entry: list[object]) -> str:
    """The ``library_name`` of one FUNCTION LIST entry (a flat field/value list)."""
    fields = {text(key): value for key, value in zip(entry[::2], entry[1::2], strict=True)}
    return text(fields["library_name"])


def _delete(client: redis.Redis, name: str) -> None:
    try:
        client.function_delete(name)
    except ResponseError as exc:
        # Gone since the listing (another prune, a FUNCTION FLUSH): what was wanted.
        if str(exc) != "Library not found":
            raise


def _refusal(exc: ResponseError) -> StoreError:
    """The error for a server or user that cannot use Redis Functions."""
    if isinstance(exc, NoPermissionError):
        return StoreError(
            f"this Redis user may not manage functions ({exc}): prune as a user whose"
            " ACL allows FUNCTION LIST and FUNCTION DELETE"
        )
    return StoreError(
        f"this Redis has no Functions ({exc}): a server before 7.0, where agentic runs"
        " its Lua as scripts, which Redis does not persist; there is nothing to prune"
    )
