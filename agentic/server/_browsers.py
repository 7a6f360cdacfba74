"""Requests a web page could make are refused: the task API serves no browser.

A page from another site may send a browser to the task API: a form or a
``fetch(..., {mode: "no-cors"})`` POST needs no permission, and on a server with no
token (the default, on loopback) creating a task is all it takes to have an agent run
a command. Browsers name the page's origin in an ``Origin`` header on every such
request: one that is not the server's own (its ``Host``) is refused. A page can also
reach a loopback server under a DNS name of its own that it points at 127.0.0.1
(DNS rebinding): its requests are then same-origin, so a server open on loopback
also refuses a ``Host`` that is neither an IP address, ``localhost``, nor a name it
trusts. Our clients send no ``Origin`` and address the server as configured.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["browser_refusal"]

_CROSS_ORIGIN = (
    "cross-origin request refused: the task API serves no web pages, and a page of"
    " another site must not use it (Origin {origin!r})"
)
_HOST = (
    "request refused: Host {host!r} is not this server's (a server without tokens"
    " answers only to an IP address, localhost or server.host, so that a web page"
    " cannot reach it under a DNS name of its own)"
)


def _local(name: str, trusted: Collection[str]) -> bool:
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in trusted:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def browser_refusal(
    headers: list[tuple[bytes, bytes]], trusted_hosts: Collection[str] | None
) -> tuple[int, str] | None:
    """403 and why, for a request a browser made for another site's page (``Origin``
    not the ``Host``) or, when ``trusted_hosts`` is given, one addressed to a ``Host``
    that is none of them, an IP address or localhost; else None."""
    host = origin = None
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
        elif name == b"origin":
            origin = value.decode("latin-1").strip()
    if origin is not None and _netloc(origin) != host:
        return 403, _CROSS_ORIGIN.format(origin=origin)
    trusted = None if trusted_hosts is None else {h.lower() for h in trusted_hosts}
    if trusted is not None and not _local(_hostname(host or ""), trusted):
        return 403, _HOST.format(host=host or "")
    return None


def _netloc(origin: str) -> str | None:
    """An origin's ``host[:port]``, lowercase; None for ``null`` or one unparsable."""
    try:
        return urlsplit(origin).netloc.lower() or None
    except ValueError:
        return None


def _hostname(host: str) -> str:
    """A ``Host`` header's name without its port ("" if unparsable)."""
    try:
        return urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""
