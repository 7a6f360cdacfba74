"""``agentic events``: the store's event log, printed or followed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated

import typer

from ..errors import ConfigError
from ..events import EventType
from ..stores import open_event_log
from ..stores.base import MAX_READ, EventLog, LoggedEvent
from ._common import (
    ConfigOption,
    StoreOption,
    existing,
    handled,
    interrupt_exits,
    print_json,
    stdout,
    store_config,
)

_POLL = 0.5  # seconds between reads while following


def _types(names: list[str] | None) -> set[EventType] | None:
    if not names:
        return None
    known = {t.value for t in EventType}
    bad = [name for name in names if name not in known]
    if bad:
        raise ConfigError(
            f"--type {', '.join(bad)}: not an event type; one of {', '.join(sorted(known))}"
        )
    return {EventType(name) for name in names}


def _line(logged: LoggedEvent) -> str:
    event = logged.event
    parts = [
        f"{logged.offset:>6}",
        event.time.strftime("%Y-%m-%d %H:%M:%S"),
        event.type.value,
    ]
    if event.task_id:
        parts.append(f"task={event.task_id}")
    if event.agent_id:
        parts.append(f"agent={event.agent_id}")
    parts += [f"{key}={value}" for key, value in event.payload.items()]
    return "  ".join(parts)


class _Printer:
    """Prints the events that pass the filters, as text lines or JSON lines."""

    def __init__(self, types: set[EventType] | None, task: str | None, as_json: bool) -> None:
        self.types, self.task, self.as_json = types, task, as_json
        self.console = stdout()

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
            self.console.print(_line(logged), markup=False, highlight=False, soft_wrap=True)


def _pages(log: EventLog, after: int) -> Iterator[LoggedEvent]:
    """Every event after ``after`` in the log now, oldest first."""
    while page := log.read(after, MAX_READ):
        yield from page
        after = page[-1].offset


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
        int,
        typer.Option(
            "--last", "-n", min=0, metavar="N", help="Without --after: the last N that match."
        ),
    ] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    type_names: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", metavar="TYPE", help="Only this type (repeatable)."),
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", metavar="ID", help="Only this task's events.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, with its offset.")
    ] = False,
) -> None:
    """Print the lifecycle events in the store's event log (offset, time, type, ids)."""
    printer = _Printer(_types(type_names), task, json_output)
    cfg = store_config(config_path, store)
    with existing(open_event_log, cfg.store_url) as log, interrupt_exits(0):
        position = after if after is not None else 0
        if after is None:
            # The last N that pass the filters: unfiltered, only the last N are read.
            if printer.types is None and printer.task is None:
                position = max(0, log.last_offset() - last)
            recent: deque[LoggedEvent] = deque(maxlen=last)
            for logged in _pages(log, position):
                position = logged.offset
                if printer.wanted(logged):
                    recent.append(logged)
            for logged in recent:
                printer.print(logged)
        while True:
            for logged in _pages(log, position):
                position = logged.offset
                if printer.wanted(logged):
                    printer.print(logged)
            if not follow:
                return
            time.sleep(_POLL)
