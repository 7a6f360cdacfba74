"""``agentic serve``: the reference task API on uvicorn."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import signal
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import ConfigError
from ..stores import open_event_log, open_task_store, persistence_warning
from ._common import (
    EXIT_RUNTIME,
    ConfigOption,
    config,
    fail,
    handled,
    records_events,
    redacted,
    retry_policy,
    shared_log_url,
    stdout,
    store_options,
    warn,
)
from ._logging import setup_logging

if TYPE_CHECKING:
    from collections.abc import Callable

    import uvicorn


def _agent_tokens(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    tokens = {}
    for pair in pairs:
        # rpartition, as for AGENTIC_SERVER__AGENT_TOKENS: base64 tokens may end in "=".
        token, equals, agent = pair.rpartition("=")
        if not equals or not token or not agent:
            # The value is not echoed: it holds a token.
            raise ConfigError("--agent-token must be TOKEN=AGENT_ID, both non-empty (not shown)")
        tokens[token] = agent
    return tokens


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket; IPPROTO_TCP named so asyncio sets TCP_NODELAY.

    Without it every small answer waits for the peer's delayed ACK (~40 ms).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = (
            ": another server holds the port (agentic serve already running?); stop it, or"
            " give another with --port (and the same in base_url for the other commands)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def _open_hosts(sock: socket.socket, host: str, allowed: bool) -> tuple[str, ...] | None:
    """The Host names a server with no token answers to, given the address it bound.

    On loopback: ``host`` (besides IP addresses and localhost), so that a web page
    cannot reach it through a DNS name of its own (see ``server._browsers``). On any
    other address it refuses to serve (ConfigError) unless ``allowed``: anyone who can
    reach it could create tasks, which agents run as commands; allowed, it answers
    to any name (None)."""
    if ipaddress.ip_address(sock.getsockname()[0].partition("%")[0]).is_loopback:
        return (host,)
    if allowed:
        return None
    raise ConfigError(
        f"refusing to serve without a token on {host} (not a loopback address): anyone"
        " who can reach it could create tasks, which agents run as commands. Give an"
        " admin token (server.admin_tokens, or AGENTIC_SERVER__ADMIN_TOKENS; --token"
        " shows it to every user of this machine in ps), or --allow-open"
        " (server.allow_open) to serve open anyway"
    )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@handled
def serve(
    config_path: ConfigOption = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="URL of every store: tasks, and the event log (default: the config's;"
            " a SQLite file in the user data dir).",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8080].")] = None,
    token: Annotated[
        list[str] | None,
        typer.Option(
            "--token",
            metavar="T",
            help="Admin token (repeatable); replaces config's. Seen by every user of the"
            " machine in ps: prefer AGENTIC_SERVER__ADMIN_TOKENS or the config file.",
        ),
    ] = None,
    agent_token: Annotated[
        list[str] | None,
        typer.Option(
            "--agent-token",
            metavar="TOKEN=AGENT",
            help="Token that may act only as AGENT (repeatable); replaces config's. Seen"
            " in ps like --token: prefer AGENTIC_SERVER__AGENT_TOKENS or the config file.",
        ),
    ] = None,
    allow_open: Annotated[
        bool | None,
        typer.Option(
            "--allow-open",
            help="Serve with no token on an address other than loopback (refused otherwise).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Serve the task API until SIGTERM or Ctrl-C (graceful shutdown)."""
    import uvicorn

    from ..server import create_app

    options, stores = store_options(store)
    cfg = config(
        config_path,
        {
            **options,
            "server.host": "--host",
            "server.port": "--port",
            "server.admin_tokens": "--token",
            "server.agent_tokens": "--agent-token",
            "server.allow_open": "--allow-open",
        },
        **stores,
        server={
            "host": host,
            "port": port,
            "admin_tokens": token,
            "agent_tokens": _agent_tokens(agent_token),
            "allow_open": allow_open,
        },
    )
    # Bound before anything else starts: a port in use is the most likely mistake,
    # and it should be reported before logging is set up and the store is opened.
    sock = _bind(cfg.server.host, cfg.server.port)
    trusted_hosts = None
    if not (cfg.server.admin_tokens or cfg.server.agent_tokens):
        try:
            trusted_hosts = _open_hosts(sock, cfg.server.host, cfg.server.allow_open)
        except ConfigError:
            sock.close()
            raise
    url = cfg.store_url_for("task")
    record = records_events(cfg, "task")
    events_url = shared_log_url(cfg)
    with (
        contextlib.closing(sock),
        open_task_store(url, record_events=record) as tasks,
        open_event_log(events_url) if events_url else contextlib.nullcontext() as events,
    ):
        setup_logging(verbose)
        app = create_app(
            tasks,
            admin_tokens=cfg.server.admin_tokens,
            agent_tokens=cfg.server.agent_tokens,
            lease_seconds=cfg.dispatcher.lease_seconds,
            max_body_bytes=cfg.server.max_body_bytes,
            max_log_lines=cfg.server.max_log_lines,
            agent_claims=cfg.server.agent_claims,
            rate_limit=cfg.server.rate_limit,
            rate_burst=cfg.server.rate_burst,
            retry_policy=retry_policy(cfg),
            events=events,
            trusted_hosts=trusted_hosts,
        )
        # Request lines would flood the log (every agent polls every second); the
        # /metrics endpoint counts requests instead.
        server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10)
        )

        def announce() -> None:
            out = stdout()
            out.print(f"store: {redacted(url)}", highlight=False)
            if note := persistence_warning(url):
                warn(note)
            if record:
                out.print("task lifecycles recorded in its event log (agentic events)")
            if events_url:
                out.print("event log served to admin tokens at /api/events", highlight=False)
            out.print(f"serving the task API on {_url(cfg.server.host, cfg.server.port)}")

        _run(server, sock, announce)


def _run(server: uvicorn.Server, sock: socket.socket, announce: Callable[[], None]) -> None:
    """Run uvicorn; a signal ends it with exit 0 after its graceful shutdown.

    uvicorn re-raises the signal it caught once it has shut down, which would kill
    the process with that signal (exit -15 for SIGTERM). Handlers that only ask the
    server to exit are installed first: uvicorn restores them before re-raising, so
    the re-raised signal lands on them and the process exits normally, and a signal
    that comes before uvicorn has installed its own handlers stops the server as soon
    as it has started, not never. ``announce`` (what serve prints, ending with the URL
    it serves) runs once they are installed: a signal sent when the URL is seen stops it.
    """

    def stop(*_: object) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce()
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise typer.Exit(EXIT_RUNTIME)
