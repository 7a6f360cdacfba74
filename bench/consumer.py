"""Event consumption: EventConsumer committing each event vs every 100, against a Redis
Streams consumer group written by hand with redis-py, in one run.

Run: ``python bench/consumer.py [--events N]``. A redis-server is started here on a
free loopback port (and a SQLite file made in a temporary directory); each contender
consumes the same N events (already in the log) with a no-op handler, three
interleaved rounds. The peer is what a Redis user writes without agentic:
``XREADGROUP COUNT 100`` and one ``XACK`` per batch. Compare the ratios.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import redis
from _common import print_ratios, private_redis

from agentic.eventlog import EventConsumer
from agentic.events import Event, EventType
from agentic.stores import open_event_log

BATCH = 100
PEER = "redis-py streams group (XREADGROUP+XACK)"


def _events(count: int) -> list[Event]:
    return [
        Event(type=EventType.USAGE_RECORDED, agent_id="a", payload={"n": n}) for n in range(count)
    ]


def _ours(url: str, count: int, commit_every: int) -> Callable[[], float]:
    log = open_event_log(url)
    for start in range(0, count, 1000):
        log.append(_events(min(1000, count - start)))

    def run() -> float:
        consumer = EventConsumer(
            log, uuid.uuid4().hex, lambda e: None, batch=BATCH, commit_every=commit_every
        )
        started = time.perf_counter()
        while consumer.poll():
            pass
        elapsed = time.perf_counter() - started
        assert consumer.handled == count, consumer.handled
        return elapsed

    return run


def _streams(url: str, count: int) -> Callable[[], float]:
    client = redis.Redis.from_url(url)
    stream = f"bench:{uuid.uuid4().hex}"
    pipe = client.pipeline(transaction=False)
    for event in _events(count):
        pipe.xadd(stream, {"id": event.id, "body": event.model_dump_json()})
    pipe.execute()

    def run() -> float:
        group = uuid.uuid4().hex
        client.xgroup_create(stream, group, id="0")
        handled = 0
        started = time.perf_counter()
        while True:
            reply = cast(list[Any], client.xreadgroup(group, "c", {stream: ">"}, count=BATCH))
            if not reply:
                break
            entries = reply[0][1]
            for _entry_id, fields in entries:
                Event.model_validate_json(fields[b"body"])  # as EventLog.read parses
                handled += 1
            client.xack(stream, group, *[entry_id for entry_id, _ in entries])
        elapsed = time.perf_counter() - started
        assert handled == count, handled
        return elapsed

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events consumed per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as tmp:

        def sqlite_url(name: str) -> str:
            return "sqlite:///" + (Path(tmp) / name).as_posix().lstrip("/")

        contenders = {
            PEER: _streams(redis_url, args.events),
            "agentic redis, commit each": _ours(redis_url + "?prefix=b1", args.events, 1),
            "agentic redis, commit_every=100": _ours(redis_url + "?prefix=b2", args.events, 100),
            "agentic sqlite, commit each": _ours(sqlite_url("a.db"), args.events, 1),
            "agentic sqlite, commit_every=100": _ours(sqlite_url("b.db"), args.events, 100),
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, run in contenders.items():
                samples[name].append(args.events / run())
    print(
        f"python {platform.python_version()}, {platform.system().lower()}; {args.events} events"
        f" a round, batches of {BATCH}, no-op handler; median of {args.rounds} round(s)"
    )
    print_ratios(samples, PEER, ("consumer", "events/s", "vs peer"), ",.0f")


if __name__ == "__main__":
    main()
