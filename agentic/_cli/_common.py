"""What every command shares: options, config loading, errors, output, stores.

Exit codes: 0 ok, 1 runtime error (the SDK's message, no traceback), 2 usage error
(typer's own for bad arguments, :class:`ConfigError` for bad option or config values,
and the task API's 422: it refused what was given, with its message), 130
interrupted where an interruption is not the normal way out.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, Protocol, TypeVar, overload

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from .._client_wire import STORE_LOST
from ..allowance import AllowanceService
from ..client import TaskClient
from ..config import Config, load_config
from ..errors import AgenticError, APIError, ConfigError, StoreError, TransportError
from ..eventlog import EventLogEmitter
from ..events import EventEmitter, FanoutEmitter
from ..retry import RetryPolicy
from ..stores import open_allowance_store, open_event_log, parse_store_url
from ..stores.sqlite import database_file
from ..webhook import WebhookEmitter

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class Opener(Protocol[S_co]):
    """A store opener (``open_registry``, ``open_allowance_store``, ``open_event_log``)."""

    def __call__(self, url: str, *, create: bool) -> S_co: ...


StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help="Store URL for every store (default: the config's store_url).",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="YAML config file (default: ./agentic.yaml, else ~/.config/agentic/config.yaml).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def one_of(values: Iterable[str], what: str, convert: Callable[[str], Any] = str) -> dict[str, Any]:
    """``typer.Option`` arguments for an option taking one of ``values`` (any case):
    a usage error says what was given and lists the valid ones. (typer's own check
    of an Enum or Literal prefixes its message with pydantic's "Value error, ".)"""
    names = [str(value) for value in values]

    def parse(value: str) -> Any:
        if value.lower() not in names:
            raise typer.BadParameter(f"{value!r} is not {what}; valid: {', '.join(names)}")
        return convert(value.lower())

    return {"parser": parse, "metavar": f"[{'|'.join(names)}]"}


EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def stdout() -> Console:
    """A console on stdout (rich drops colour by itself when it is not a terminal)."""
    return Console()


def stderr() -> Console:
    """A console on stderr, for warnings and errors."""
    return Console(stderr=True)


def warn(message: str) -> None:
    """A warning on stderr; markup in ``message`` is not interpreted."""
    stderr().print(f"[yellow]warning:[/] {escape(message)}")


def fail(message: str, code: int = EXIT_RUNTIME) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    stderr().print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn SDK errors into an error line and an exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except AgenticError as exc:
            if isinstance(exc, APIError) and exc.code == 422:  # input the server refused
                raise fail(_with_details(exc), EXIT_USAGE) from None
            if isinstance(exc, APIError) and exc.code == 503:  # why: a full disk, a lock
                raise fail(_with_details(exc)) from None
            raise fail(str(exc) + _hint(exc)) from None

    return wrapper


def _with_details(exc: APIError) -> str:
    """A 422's or a 503's text: the server's message, and its details when they add
    to it (what was refused; what the store said)."""
    details = exc.details if isinstance(exc.details, str) else ""
    return f"{exc} ({details})" if details and details not in exc.message else str(exc)


def _hint(exc: AgenticError) -> str:
    """What to check, for the task API errors a first setup runs into."""
    if isinstance(exc, TransportError):
        return (
            "\n  is the task API running there (`agentic serve`)? If it listens elsewhere,"
            " set base_url (AGENTIC_BASE_URL=http://host:port)"
        )
    if isinstance(exc, APIError) and exc.code == 401:
        if "invalid" in exc.message:  # one was sent: the server does not know it
            return "\n  the server does not know this token: check token (AGENTIC_TOKEN=...)"
        return "\n  the server wants a token: set token (AGENTIC_TOKEN=...)"
    if isinstance(exc, APIError) and exc.code == 403:
        return "\n  this token may not do that: an admin token can"
    return ""


def config(path: Path | None, options: dict[str, str] | None = None, **overrides: Any) -> Config:
    """The configuration; ``None`` overrides are "not given" (config wins).

    ``options`` maps a dotted key to the command line option that set it, so that a
    bad value is reported under the name the user typed.
    """
    named = {key: f"option {option}" for key, option in (options or {}).items()}
    return load_config(path, given_as=named, **overrides)


#: the keys ``--store`` sets: the URL of every store, the config's overrides included
STORE_KEYS = ("store_url", "registry_url", "allowance_url", "task_store_url", "event_log_url")


def store_options(store: str | None) -> tuple[dict[str, str], dict[str, str | None]]:
    """The option names and overrides that make ``--store`` (when given) the URL of
    every store: a config's per-store URLs (``task_store_url``...) give way to it too
    (emptied: an empty one means "use store_url")."""
    per_store = None if store is None else ""
    overrides = {key: per_store for key in STORE_KEYS}
    overrides["store_url"] = store
    return {key: "--store" for key in STORE_KEYS}, overrides


def store_config(path: Path | None, store: str | None) -> Config:
    """The configuration, with ``--store`` (when given) as the URL of every store."""
    options, overrides = store_options(store)
    return config(path, options, **overrides)


def shared_log_url(cfg: Config) -> str | None:
    """The URL of the event log readers look at (``event_log_url``, else
    ``store_url``), or None when there is none to share: ``events.log`` is off, or it
    is ``memory://``, which no other process can read and nothing ever trims."""
    url = cfg.store_url_for("events")
    return url if cfg.events.log and parse_store_url(url).scheme != "memory" else None


def records_events(cfg: Config, purpose: Literal["task", "allowance"]) -> bool:
    """Whether the ``purpose`` store records its events (a task's lifecycle, a
    settle's usage) in the event log, in the same atomic step as the change: when
    the shared log lives in that store's own storage."""
    return shared_log_url(cfg) == cfg.store_url_for(purpose)


def quota_service(
    stack: contextlib.ExitStack, cfg: Config, emitter: EventEmitter | None
) -> AllowanceService:
    """The quota service of a process that reserves or settles jobs, its store closed
    with ``stack``; each settle's usage and crossings go to the event log with it
    (no crash loses them) when the log is shared."""
    recording = records_events(cfg, "allowance")
    quota = stack.enter_context(
        open_allowance_store(cfg.store_url_for("allowance"), record_events=recording)
    )
    return AllowanceService(quota, emitter, fail_open=cfg.dispatcher.fail_open)


def client(cfg: Config, agent_id: str | None = None) -> TaskClient:
    """A task API client for the configured server and token."""
    return TaskClient(cfg.base_url, cfg.token, agent_id=agent_id)


@overload
def event_emitter(cfg: Config, first: EventEmitter) -> EventEmitter: ...
@overload
def event_emitter(cfg: Config) -> EventEmitter | None: ...
def event_emitter(cfg: Config, first: EventEmitter | None = None) -> EventEmitter | None:
    """Where events go: ``first`` (the log, say), then the store's event log, the
    configured webhook and Redis stream, if any; None when none of them."""
    emitters = [first] if first is not None else []
    if cfg.events.log:
        log = open_event_log(cfg.store_url_for("events"))
        keep, unread = cfg.events.log_keep, cfg.events.log_keep_unread
        emitters.append(EventLogEmitter(log, keep=keep, keep_unread=unread, close_log=True))
    if cfg.events.webhook_url:
        secret = cfg.events.webhook_secret or None
        emitters.append(WebhookEmitter(cfg.events.webhook_url, secret))
    if cfg.events.stream_url:
        from ..stores.redis import RedisStreamEmitter  # the redis extra, only when asked

        emitters.append(RedisStreamEmitter(cfg.events.stream_url))
    if len(emitters) > 1:
        return FanoutEmitter(*emitters)
    return emitters[0] if emitters else None


def retry_policy(cfg: Config) -> RetryPolicy:
    """The retry policy the configuration describes (its dispatcher section)."""
    section = cfg.dispatcher
    return RetryPolicy(
        max_retries=section.max_retries,
        base=section.backoff_base,
        cap=section.backoff_cap,
        jitter=section.jitter,
    )


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite://`` URL when it does not exist yet, else ``None``
    (ConfigError when the URL names what cannot be a database file: a directory).

    Read-only commands check this first: opening the store would create an empty
    database, and "no agents" would then hide a wrong path.
    """
    parsed = parse_store_url(url)
    if parsed.scheme != "sqlite":
        return None
    path = database_file(parsed)
    return None if path.exists() else path


def existing(opener: Opener[S], url: str) -> S:
    """``opener(url)`` for a command that only reads: a missing SQLite file, or a Redis
    store with no store id (never used, or emptied), is an error rather than a new
    empty store that would answer "nothing here" (and, on Redis, be given a new id,
    so that every process would later find the store replaced, not emptied)."""
    missing = missing_sqlite_file(url)
    if missing is not None:
        # A missing directory too is most likely a mistyped path.
        where = "" if missing.parent.is_dir() else f" (nor does its directory {missing.parent})"
        raise StoreError(
            f"{missing} does not exist{where}: give the URL of an existing store (--store,"
            " store_url), or create this one with a command that writes to it (agentic"
            " serve, agentic allowance set)"
        )
    return opener(url, create=False)


def redacted(url: str) -> str:
    """A store URL without its password, for output."""
    return parse_store_url(url).redacted()


#: how a mismatch involving a memory:// store begins (its message carries its own fix)
PER_PROCESS = "a memory:// store is per-process"
#: how the mismatches that carry their own fix begin (a server whose store was lost
#: says so with :data:`STORE_LOST`)
SAYS_ITS_FIX = (PER_PROCESS, STORE_LOST)


def other_store(api: TaskClient, url: str, local_id: str) -> str:
    """What to say when the task server of ``api`` serves another store than ``url``
    (whose id is ``local_id``): a wrong --store or prefix. "" when they are the same,
    or either side cannot say (a health check that fails included), except that a
    server whose store was emptied or replaced under it says so (its message, which
    begins with ``STORE_LOST``). When either is a
    memory store (``memory:<random>``: no other process ever sees it) the message
    begins with :data:`PER_PROCESS` and says how to fix it."""
    if not local_id:
        return ""
    try:
        served = api.server_store_id()
    except APIError as exc:
        return exc.message if exc.code == 503 and exc.message.startswith(STORE_LOST) else ""
    except AgenticError:
        return ""
    if not served or served == local_id:
        return ""
    if served.startswith("memory:") or local_id.startswith("memory:"):
        return (
            f"{PER_PROCESS}: the task server {api.base_url} serves store {served} and"
            f" this command reads store {local_id} ({redacted(url)}), so neither sees"
            " the other's tasks, agents and events; point both at one SQLite file or"
            " Redis database (agentic serve --store URL, and --store URL or store_url"
            " here)"
        )
    return (
        f"the task server {api.base_url} serves another store (id {served}) than"
        f" {redacted(url)} (id {local_id})"
    )


def to_data(value: Any) -> Any:
    """Pydantic models (also inside lists and dicts) as JSON-ready data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_data(item) for item in value]
    if isinstance(value, dict):
        return {key: to_data(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any, *, indent: int | None = 2) -> None:
    """``value`` as JSON on stdout (plain, never wrapped or coloured)."""
    sys.stdout.write(json.dumps(to_data(value), indent=indent) + "\n")
    sys.stdout.flush()


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """``"12s ago"``, ``"3m ago"``; ``"-"`` for never."""
    if when is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def clock_time(when: datetime | None) -> str:
    """``"2026-01-15 00:00 UTC"``; ``"-"`` when unknown."""
    return "-" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def until(when: datetime | None, now: datetime | None = None) -> str:
    """``"in 5h 12m"``, ``"in 40s"``; ``"-"`` when unknown."""
    if when is None:
        return "-"
    seconds = max(0, int((when - (now or datetime.now(UTC))).total_seconds()))
    if seconds < 60:
        return f"in {seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"in {hours}h {minutes}m" if hours else f"in {minutes}m"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_exits(code: int = 0) -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the block with exit ``code`` (0 where stopping is the
    normal end), through the same unwinding: a ``--watch`` or ``--follow`` stopped by
    a supervisor (``kill``, ``timeout``, systemd) flushes what it shows, as Ctrl-C
    does, instead of dying with its output unwritten."""
    # Only where a handler can be set (the main thread), and never over an ignored
    # SIGTERM (nohup-like parents): that choice stays the parent's.
    install = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    )
    previous = signal.signal(signal.SIGTERM, _interrupt) if install else None
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(code) from None
    finally:
        if install:  # a handler set outside Python reads as None: the default then
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
