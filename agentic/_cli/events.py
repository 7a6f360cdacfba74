"""``agentic events``: the store's event log, printed or followed.

Text lines are ``offset  time  type  task=…  agent=…  key=value…``; a value with
spaces, quotes or line breaks is printed as JSON, so a payload can never make a line
that reads as another event. Gaps (events trimmed before they were read) and a log
that went back (emptied) are said on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Annotated, Protocol

import typer

from .._client_wire import STORE_LOST
from .._printable import printable
from ..client import TaskClient
from ..config import Config
from ..errors import AgenticError, ConfigError, NotFoundError
from ..events import EventType
from ..retry import is_retryable
from ..stores import open_event_log, parse_store_url
from ..stores.base import MAX_READ, EventLog, LoggedEvent
from ._common import (
    PER_PROCESS,
    ConfigOption,
    StoreOption,
    client,
    existing,
    handled,
    interrupt_exits,
    other_store,
    print_json,
    store_config,
    warn,
)

_POLL = 0.5  # seconds between reads while following through an older server
_STORE_WAIT = 1.0  # seconds a follower of a store waits on its log at a time
_HEALTH_WAIT = 0.5  # seconds the store check waits for the task server's answer
_API_WAIT = 10.0  # seconds a follow through the task API waits in one request
_LAST = 20


def _types(given: list[str] | None) -> set[EventType] | None:
    # Repeatable, or comma separated (as tasks --status takes them).
    names = [part.strip() for item in given or [] for part in item.split(",") if part.strip()]
    if not names:
        return None
    known = {t.value for t in EventType}
    bad = [name for name in names if name not in known]
    if bad:
        raise ConfigError(
            f"--type {', '.join(bad)}: not an event type; one of {', '.join(sorted(known))}"
        )
    return {EventType(name) for name in names}


def _value(value: object) -> str:
    """A payload value on one line: plain when it cannot be misread, else JSON."""
    if isinstance(value, str) and value and value.isprintable() and " " not in value:
        return value if '"' not in value and "=" not in value else json.dumps(value)
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _line(logged: LoggedEvent) -> str:
    event = logged.event
    parts = [
        f"{logged.offset:>6}",
        event.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        event.type.value,
    ]
    if event.task_id:
        parts.append(f"task={_value(event.task_id)}")
    if event.agent_id:
        parts.append(f"agent={_value(event.agent_id)}")
    parts += [f"{_value(key)}={_value(value)}" for key, value in event.payload.items()]
    return "  ".join(parts)


class _Readable(Protocol):
    """What printing the log needs of it: an :class:`EventLog`, or the task API."""

    def read(self, after: int = 0, limit: int = 100) -> list[LoggedEvent]: ...

    def last_offset(self) -> int: ...


class _ApiLog:
    """The event log read through the task API (``GET /api/events``)."""

    # after this offset there is nothing: a read of it gives the newest offset alone
    _BEYOND = 2**62

    def __init__(self, api: TaskClient) -> None:
        self.api = api
        # What a pause's long-poll brought (after, events): the next read of that
        # offset is answered with it instead of asking the server again.
        self._waited: tuple[int, list[LoggedEvent]] | None = None

    def read(self, after: int = 0, limit: int = 100) -> list[LoggedEvent]:
        waited, self._waited = self._waited, None
        if waited is not None and waited[0] == after:
            return waited[1][:limit]
        return self.api.read_events(after, limit).events

    def last_offset(self) -> int:
        return self.api.read_events(self._BEYOND, 1).last_offset

    def pause(self, after: int) -> None:
        """Until an event after ``after`` may be there: the server's long-poll, and the
        poll interval after an empty answer that came at once (an older server)."""
        started = time.monotonic()
        events = self.api.read_events(after, MAX_READ, wait=_API_WAIT).events
        if events:
            self._waited = (after, events)
            return
        time.sleep(max(0.0, _POLL - (time.monotonic() - started)))


def _waiting_on(log: EventLog) -> Callable[[int], None]:
    """A follower of a store waits on its log: a new event ends the wait at once
    (within 0.2 s on SQLite); at most ``_STORE_WAIT`` seconds at a time."""

    def pause(after: int) -> None:
        log.wait(after, _STORE_WAIT)

    return pause


class _Reader:
    """Reads the log from a position, says what it could not see, prints what passes."""

    def __init__(
        self,
        log: _Readable,
        types: set[EventType] | None,
        task: str | None,
        as_json: bool,
        pause: Callable[[int], None],
    ) -> None:
        self.log, self.types, self.task, self.as_json = log, types, task, as_json
        self.pause = pause  # while following: until events after an offset may be there

    def wanted(self, logged: LoggedEvent) -> bool:
        event = logged.event
        return not (self.types and event.type not in self.types) and not (
            self.task and event.task_id != self.task
        )

    def print(self, logged: LoggedEvent) -> None:
        if self.as_json:
            data = {"offset": logged.offset, **logged.event.model_dump(mode="json")}
            print_json(data, indent=None)
        else:
            # Plain writes, not rich: lines must stay whole at any width, and rich
            # turns a closed pipe into exit 1.
            sys.stdout.write(printable(_line(logged)) + "\n")

    def pages(self, after: int, gaps: bool = True) -> Iterator[LoggedEvent]:
        """Every event after ``after`` in the log now, oldest first; ``gaps``: say
        when events after ``after`` (not 0: "the oldest kept") were trimmed."""
        while page := self.log.read(after, MAX_READ):
            if gaps and after and page[0].offset > after + 1:
                warn(
                    f"events {after + 1} to {page[0].offset - 1} were trimmed from the log"
                    " (it keeps the newest events.log_keep)"
                )
            yield from page
            sys.stdout.flush()
            after = page[-1].offset

    def went_back(self, position: int) -> bool:
        """True (and said) when the log's newest offset is below ``position``."""
        last = self.log.last_offset()
        if last < position:
            warn(f"the log went back to offset {last} (emptied?); reading it from the start")
            return True
        return False


@handled
def events(
    config_path: ConfigOption = None,
    store: StoreOption = None,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            metavar="OFFSET",
            help="Print every event after this offset (0: from the oldest kept).",
        ),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            "-n",
            min=0,
            max=10**12,  # events.log_keep's bound; more overflowed the window kept
            metavar="N",
            help=f"The last N events that match (default {_LAST}); not with --after.",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing new events; Ctrl-C or SIGTERM stops it, exit 0 (a"
            " stream has no outcome, unlike logs -f).",
        ),
    ] = False,
    type_names: Annotated[
        list[str] | None,
        typer.Option(
            "--type", "-t", metavar="TYPE", help="Only this type (repeatable, or comma separated)."
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", metavar="ID", help="Only this task's events.")
    ] = None,
    api: Annotated[
        bool,
        typer.Option(
            "--api",
            help="Read it through the task API (base_url, an admin token) instead of the store.",
        ),
    ] = False,
    consumers: Annotated[
        bool,
        typer.Option(
            "--consumers",
            help="List the consumers instead: position, events behind, events missed.",
        ),
    ] = False,
    forget: Annotated[
        str | None,
        typer.Option(
            "--forget",
            metavar="NAME",
            help="Drop a consumer gone for good: trims stop sparing its unread events.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, with its offset.")
    ] = False,
) -> None:
    """Print the lifecycle events in the store's event log (offset, time, type, ids)."""
    if after is not None and last is not None:
        raise ConfigError("--after and --last choose the start two ways: give one of them")
    if consumers and (after is not None or last is not None or follow or type_names or task):
        raise ConfigError(
            "--consumers lists consumers: it takes no --after, --last, -f, --type or --task"
        )
    if forget is not None and (
        consumers or api or after is not None or last is not None or follow or type_names or task
    ):
        raise ConfigError("--forget drops one consumer: it takes only --store, --config and --json")
    if api and (consumers or store):
        raise ConfigError("--api reads the events through the task API: no --store or --consumers")
    types = _types(type_names)
    cfg = store_config(config_path, store)
    if api:
        with client(cfg) as task_api, interrupt_exits(0), _quiet_broken_pipe():
            api_log = _ApiLog(task_api)
            reader = _Reader(api_log, types, task, json_output, api_log.pause)
            _print(reader, after, last, follow)
        return
    url = cfg.store_url_for("events")
    if parse_store_url(url).scheme == "memory":
        raise ConfigError(
            "memory:// is private to one process: give the store URL (or event_log_url)"
            " that the dispatcher and the agents use"
        )
    with existing(open_event_log, url) as log, interrupt_exits(0), _quiet_broken_pipe():
        # Consumers are this log's own, whatever the server serves.
        if consumers:
            _consumers(log, json_output)
            return
        if forget is not None:
            _forget(log, forget, json_output)
            return
        if url == cfg.store_url:  # else the server's id names its task store, not this
            _same_store_as_server(cfg, log)
        _print(_Reader(log, types, task, json_output, _waiting_on(log)), after, last, follow)


def _same_store_as_server(cfg: Config, log: EventLog) -> None:
    """Warn when the configured task server serves another store than the one read
    here (a forgotten --store or prefix: its events would all be missing). Silent
    when the server does not answer within a moment, or cannot say."""
    local = log.store_id()
    if not local:
        return
    with TaskClient(cfg.base_url, cfg.token, timeout=_HEALTH_WAIT, retries=0) as api:
        mismatch = other_store(api, cfg.store_url, local)
    if mismatch.startswith(STORE_LOST):  # its events went with its store
        warn(mismatch)
        raise typer.Exit(1)
    if mismatch.startswith(PER_PROCESS):  # none of the server's events can be here
        warn(f"{mismatch}; or read the server's events through it with --api")
        raise typer.Exit(1)
    if mismatch:
        warn(
            f"{mismatch}: the events of its tasks are not here; give the store it uses"
            " (--store, store_url), or read through it with --api"
        )


def _print(reader: _Reader, after: int | None, last: int | None, follow: bool) -> None:
    """Print from ``after`` (else the last ``last`` that match); with ``follow`` go on
    printing what comes until stopped."""
    position = _start(reader, after, _LAST if last is None else last)
    if position == 0 and reader.log.last_offset() == 0:
        # Said on stderr: stdout stays empty for scripts, a person learns why.
        warn(
            "the event log is empty: the server, dispatchers and agents using this store"
            " append to it as they work (events.log); check the store URL or prefix"
        )
    failing = False
    while True:
        try:
            for logged in reader.pages(position):
                position = logged.offset
                if reader.wanted(logged):
                    reader.print(logged)
            if not follow:
                return
            reader.pause(position)
            if reader.went_back(position):
                position = 0
        except AgenticError as exc:
            # A follower outlasts what may pass (a busy server's 429, an outage): said
            # once, then tried again each poll; anything else ends it.
            if not follow or not is_retryable(exc):
                raise
            if not failing:
                warn(f"reading the event log failed ({exc}); trying again every {_POLL:g} s")
            failing = True
            time.sleep(_POLL)
            continue
        if failing:
            warn("reading the event log works again")
            failing = False


def consumer_rows(log: EventLog) -> list[dict[str, int | str]]:
    """Each consumer's position, the events after it (``behind``) and, of those, the
    ones trimmed before it read them (``missed``: it will never see them)."""
    last = log.last_offset()
    first = log.read(0, 1)
    oldest = first[0].offset if first else last + 1  # the oldest kept, if any is
    return [
        {
            "consumer": name,
            "position": position,
            "behind": max(0, last - position),
            "missed": max(0, oldest - 1 - position),
        }
        for name, position in log.consumers().items()
    ]


def _consumers(log: EventLog, as_json: bool) -> None:
    rows = consumer_rows(log)
    if as_json:
        for row in rows:
            print_json(row, indent=None)
        return
    if not rows:
        sys.stdout.write("no consumer has committed a position\n")
        return
    names = [_value(row["consumer"]) for row in rows]  # a name cannot forge a line
    width = max(len("consumer"), *map(len, names))
    sys.stdout.write(f"{'consumer':<{width}}  {'position':>10}  {'behind':>10}  {'missed':>10}\n")
    for name, row in zip(names, rows, strict=True):
        counts = "  ".join(f"{row[key]:>10}" for key in ("position", "behind", "missed"))
        sys.stdout.write(f"{name:<{width}}  {counts}\n")


def _forget(log: EventLog, name: str, as_json: bool) -> None:
    position = log.committed(name)
    if not log.forget(name):
        raise NotFoundError(
            f"no consumer {name!r} in this log (agentic events --consumers lists them)"
        )
    if as_json:
        print_json({"consumer": name, "position": position}, indent=None)
        return
    sys.stdout.write(f"forgot consumer {_value(name)} (it was at offset {position})\n")


def _start(reader: _Reader, after: int | None, last: int) -> int:
    """Print the last ``last`` events that match (unless ``after`` is given); the
    offset to go on from."""
    log = reader.log
    if after is not None:
        newest = log.last_offset()
        if after > newest:
            raise ConfigError(
                f"--after {after} is past the newest event of the log ({newest}): give an"
                f" offset up to {newest} (0: from the oldest kept)"
            )
        return after
    position = 0
    if reader.types is None and reader.task is None:
        position = max(0, log.last_offset() - last)  # unfiltered: read only those
    recent: deque[LoggedEvent] = deque(maxlen=last)
    for logged in reader.pages(position, gaps=False):
        position = logged.offset
        if reader.wanted(logged):
            recent.append(logged)
    for logged in recent:
        reader.print(logged)
    return position


@contextlib.contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    """``agentic events | head`` ends quietly with exit 0 when the reader goes away."""
    try:
        yield
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
