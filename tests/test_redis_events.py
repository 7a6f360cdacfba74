"""RedisStreamEmitter and read_events, on a real redis-server and on fakeredis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from agentic._cli._common import event_emitter
from agentic.config import load_config
from agentic.errors import ConfigError, StoreUnavailableError
from agentic.events import Event, EventType, LoggingEmitter
from agentic.retry import RetryPolicy
from agentic.stores.redis import RedisStreamEmitter, read_events
from agentic.stores.redis._conn import sync
from agentic.testing import webhook_receiver

from .conftest import RedisServer, free_port


@pytest.fixture(params=["redis", "fakeredis"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A client of a real redis-server or of a fakeredis server."""
    if request.param == "fakeredis":
        made: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = redis.Redis.from_url(server.url)
    yield made
    made.close()


def event(n: int, kind: EventType = EventType.TASK_COMPLETED) -> Event:
    return Event(type=kind, task_id=f"t{n}", agent_id="a", payload={"n": n})


def stream_name() -> str:
    return f"test:{uuid.uuid4().hex}:events"


def test_events_are_appended_in_order_and_read_back(client: redis.Redis) -> None:
    """Every event becomes one entry, in emit order, and reads back equal; read_events
    pages with the last entry id."""
    stream = stream_name()
    sent = [event(n, EventType.TASK_DISPATCHED if n % 2 else EventType.TASK_COMPLETED)
            for n in range(250)]  # fmt: skip
    with RedisStreamEmitter(client=client, stream=stream) as emitter:
        for item in sent:
            emitter.emit(item)
        assert emitter.flush(10)
        assert (emitter.delivered, emitter.dropped) == (250, 0)
    read: list[Event] = []
    after = "0"
    while page := read_events(client, stream, after, count=100):
        read += [item for _entry, item in page]
        after = page[-1][0]
    assert read == sent
    first = sync(client.xrange(stream, count=1))[0][1]
    assert first[b"id"].decode() == sent[0].id and first[b"type"] == b"task_completed"


def test_a_consumer_group_gets_every_entry(client: redis.Redis) -> None:
    """Entries are plain stream entries: a consumer group created at 0 reads them all."""
    stream = stream_name()
    with RedisStreamEmitter(client=client, stream=stream) as emitter:
        for n in range(5):
            emitter.emit(event(n))
        assert emitter.flush(10)
    client.xgroup_create(stream, "workers", id="0")
    batch = sync(client.xreadgroup("workers", "w1", {stream: ">"}, count=10))
    assert [fields[b"type"] for _id, fields in batch[0][1]] == [b"task_completed"] * 5


def test_the_stream_is_trimmed_to_about_maxlen(client: redis.Redis) -> None:
    """MAXLEN ~ bounds the stream: at most maxlen plus one node of entries remain."""
    stream = stream_name()
    with RedisStreamEmitter(client=client, stream=stream, maxlen=10) as emitter:
        for n in range(500):
            emitter.emit(event(n))
        assert emitter.flush(10)
    assert 10 <= sync(client.xlen(stream)) <= 110


def test_an_unreachable_redis_is_retried_then_the_batch_dropped() -> None:
    """Redis down: emit still returns at once; the batch is retried with backoff, then
    dropped, logged and counted."""
    sleeps: list[float] = []
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    emitter = RedisStreamEmitter(
        client=dead, retry=RetryPolicy(max_retries=2, base=1, cap=2), sleep=sleeps.append
    )
    for n in range(3):
        emitter.emit(event(n))
    assert emitter.flush(10)
    emitter.close()
    assert len(sleeps) >= 2  # every batch waited between its attempts
    assert (emitter.delivered, emitter.dropped) == (0, 3) and emitter.errors >= 1


def test_a_refusal_drops_the_batch_without_retrying(client: redis.Redis) -> None:
    """A reply that cannot pass later (the key holds another type) is not retried."""
    stream = stream_name()
    client.set(stream, "not a stream")
    sleeps: list[float] = []
    with RedisStreamEmitter(client=client, stream=stream, sleep=sleeps.append) as emitter:
        emitter.emit(event(0))
        assert emitter.flush(10)
        assert (emitter.dropped, sleeps) == (1, [])


def test_a_url_names_the_stream_after_its_prefix(redis_server: RedisServer) -> None:
    """From a store URL the stream is <prefix>:events; Redis is pinged at start-up."""
    with RedisStreamEmitter(f"{redis_server.url}?prefix=team-a") as emitter:
        assert emitter.stream == "team-a:events"
        emitter.emit(event(1))
        assert emitter.flush(10)
    with redis.Redis.from_url(redis_server.url) as check:
        assert [e.task_id for _id, e in read_events(check, "team-a:events")][-1] == "t1"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"url": "sqlite:///x.db"}, ConfigError),
        ({}, ConfigError),
        ({"url": f"redis://127.0.0.1:{free_port()}/0?timeout=0.2"}, StoreUnavailableError),
    ],
    ids=["not redis", "neither url nor client", "unreachable"],
)
def test_bad_urls_fail_at_start_up(args: dict[str, Any], error: type[Exception]) -> None:
    """A URL that is not redis://, no URL at all, or a Redis that does not answer is
    refused when the emitter is made."""
    with pytest.raises(error):
        RedisStreamEmitter(**args)


def test_entries_that_are_not_events_are_skipped(client: redis.Redis) -> None:
    """read_events skips entries another writer put in the stream."""
    stream = stream_name()
    client.xadd(stream, {"hello": "world"})
    with RedisStreamEmitter(client=client, stream=stream) as emitter:
        emitter.emit(event(7))
        assert emitter.flush(10)
    assert [e.task_id for _id, e in read_events(client, stream)] == ["t7"]


def test_configured_stream_and_webhook_both_get_the_events(redis_server: RedisServer) -> None:
    """events.stream_url and events.webhook_url in the configuration: the CLI's emitter
    sends every event to both (and to the log first, when asked); with nothing
    configured and the event log off there is no emitter."""
    with webhook_receiver() as (hook, received):
        cfg = load_config(
            env={
                "AGENTIC_EVENTS__STREAM_URL": f"{redis_server.url}?prefix=cfg-test",
                "AGENTIC_EVENTS__WEBHOOK_URL": hook,
                "AGENTIC_EVENTS__LOG": "false",
            }
        )
        emitter = event_emitter(cfg, LoggingEmitter())
        with emitter:
            emitter.emit(event(42))
    with redis.Redis.from_url(redis_server.url) as check:
        assert [e.task_id for _id, e in read_events(check, "cfg-test:events")] == ["t42"]
    assert len(received) == 1
    assert event_emitter(load_config(env={"AGENTIC_EVENTS__LOG": "false"})) is None


def test_a_type_a_newer_version_added_is_read_from_the_stream(client: redis.Redis) -> None:
    """read_events gives an entry of a type this version does not know (a newer
    emitter's, mid-upgrade) with its type as written, not skipped as "not an agentic
    event"; a foreign type is still skipped."""
    stream = stream_name()
    newer = {**event(1).to_cloudevent(), "type": "io.agentic.task_paused", "id": "e-new"}
    foreign = {**event(2).to_cloudevent(), "type": "com.example.thing", "id": "e-foreign"}
    for entry in (newer, foreign):
        client.xadd(stream, {"id": entry["id"], "type": "x", "event": json.dumps(entry)})
    read = [item for _entry, item in read_events(client, stream)]
    assert [(item.id, item.type) for item in read] == [("e-new", "task_paused")]
    assert read[0].type not in set(EventType)
