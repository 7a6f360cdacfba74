"""Names of lease holders that say which process holds a lease, so that one whose
process was killed on this machine need not be waited out (the agent id lease of
runners, the dispatchers' lease)."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import uuid
from pathlib import Path

from ..errors import AgenticError
from .base import AgentRegistry

__all__ = ["hold_lease_or_take_over", "lease_holder_gone", "new_lease_holder"]


def new_lease_holder() -> str:
    """A holder name for :meth:`AgentRegistry.hold_lease` naming this process
    (``host:pid``) plus a token: a tag of the process space (see
    :func:`lease_holder_gone`) and random digits, so two holders in one process
    differ."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_space()}{uuid.uuid4().hex[:8]}"


def hold_lease_or_take_over(
    registry: AgentRegistry,
    name: str,
    holder: str,
    ttl: float,
    log: logging.Logger,
    what: str = "lease",
) -> str:
    """:meth:`AgentRegistry.hold_lease`, except that a lease whose holder is a gone
    process of this machine (:func:`lease_holder_gone`: killed with ``kill -9``) is
    not waited out: it is dropped (only while that holder still has it) and asked for
    again, said on the caller's ``log`` (``what``: the lease's name there). A
    registry failing during the take-over leaves things as they were (said; asked
    again next time)."""
    found = registry.hold_lease(name, holder, ttl)
    if found == holder or not lease_holder_gone(found):
        return found
    log.info("%s: %s no longer runs; taking over its %s", name, found, what)
    try:
        registry.drop_lease(name, found)
        return registry.hold_lease(name, holder, ttl)
    except AgenticError as exc:
        log.warning("%s: could not take over the lease of %s: %s", name, found, exc)
        return found


def lease_holder_gone(holder: str) -> bool:
    """Whether ``holder`` (made by :func:`new_lease_holder`) names a process of this
    machine's process space that no longer runs: its lease needs no waiting out.

    Only when the host name, the boot and the pid namespace are this process's (the
    tag), since a pid means nothing elsewhere: containers sharing a host name have
    pid spaces of their own. A pid that runs again under another program is taken
    for alive (the safe side). Where the space cannot be told (no /proc), never.
    """
    tag = _process_space()
    parts = holder.split(":")
    if not tag or len(parts) < 3 or not parts[-1].startswith(tag) or not parts[-2].isdigit():
        return False
    host, pid = ":".join(parts[:-2]), int(parts[-2])
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it runs
        return False
    return False


@functools.cache
def _process_space() -> str:
    """Six hex digits naming this boot and pid namespace ("" where unknown)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return hashlib.sha1(f"{boot}:{namespace}".encode()).hexdigest()[:6]
