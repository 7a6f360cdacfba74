"""Events appended to a Redis Stream: durable, replayable, shared by every machine.

:class:`RedisStreamEmitter` appends each event as one stream entry (``XADD``, with an
id Redis assigns) whose fields are ``id`` (the event id: the dedupe key), ``type``
and ``event`` (the CloudEvent JSON of :meth:`~agentic.events.Event.to_cloudevent`).
``MAXLEN ~ maxlen`` keeps the stream bounded (approximate trimming, which Redis does
cheaply a node at a time). Consumers read it with ``XREAD`` from any entry id (a
replay), or with a consumer group (``XREADGROUP`` + ``XACK``) to share the work and
resume after a restart; :func:`read_events` is the replay in Python.

It keeps the rules of :mod:`agentic.events` (``emit`` never blocks nor raises): one
background thread appends up to 100 buffered events per round trip, in emit order.
Redis unreachable: the batch is retried with backoff; when the retries are used up
(or on a reply that cannot pass later, such as a key of another type) it is dropped,
logged and counted. Events still buffered when the process dies are lost: what is in
the stream is what is durable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import redis
from redis.typing import EncodableT, FieldT

from ..._buffered import BufferedEmitter
from ...errors import ConfigError
from ...events import Event
from ...retry import RetryPolicy
from .._url import parse_store_url
from ._conn import DEFAULT_TIMEOUT, PASSING, connect, sync, text

__all__ = ["DEFAULT_STREAM_MAXLEN", "RedisStreamEmitter", "read_events"]

log = logging.getLogger(__name__)

#: entries a stream keeps, about (MAXLEN ~)
DEFAULT_STREAM_MAXLEN = 100_000
_BATCH = 100
_DEFAULT_RETRY = RetryPolicy(max_retries=8, base=0.5, cap=30.0)


class RedisStreamEmitter(BufferedEmitter):
    """Appends events to the stream ``stream`` on the Redis of ``url`` (or ``client``).

    ``url`` is a store URL (``redis://host:6379/0?prefix=team-a``); the stream is then
    ``<prefix>:events`` unless ``stream`` names it. Redis is pinged at construction, so
    a wrong URL fails at start-up rather than on the first event.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        stream: str | None = None,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        maxsize: int = 10_000,
        retry: RetryPolicy | None = None,
        close_timeout: float = 5.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigError("give a redis:// url or a client, not both")
        if maxlen < 1:
            raise ConfigError(f"maxlen must be >= 1, got {maxlen}")
        prefix = "agentic"
        owned = client is None
        if client is None:
            parsed = parse_store_url(str(url))
            if parsed.scheme not in ("redis", "rediss"):
                raise ConfigError(f"an event stream needs a redis:// URL, got {url!r}")
            conn = connect(parsed)
            client, prefix = conn.client, conn.prefix
        super().__init__(
            maxsize=maxsize,
            batch=_BATCH,
            close_timeout=close_timeout,
            request_timeout=DEFAULT_TIMEOUT,
            sleep=sleep,
        )
        self.stream = stream or f"{prefix}:events"
        self.maxlen = maxlen
        self.retry = retry or _DEFAULT_RETRY
        self._client = client
        self._owned = owned
        self._start("agentic-stream")

    def __repr__(self) -> str:
        return f"RedisStreamEmitter({self.stream!r})"

    def _release(self) -> None:
        if self._owned:
            self._client.close()

    def _send(self, events: list[Event]) -> int:
        def append() -> None:
            # One round trip; transaction=False: entries are independent, and a
            # pipeline still sends them in order.
            with self._client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(self.stream, _fields(event), maxlen=self.maxlen, approximate=True)
                pipe.execute()

        # A lost connection or a passing refusal (a failover, memory full) is retried;
        # any other refusal (a key of another type) would come again.
        return self._with_retries(len(events), append, PASSING, (redis.RedisError,))


def _fields(event: Event) -> dict[FieldT, EncodableT]:
    return {
        "id": event.id,
        "type": event.type.value,
        "event": json.dumps(event.to_cloudevent(), separators=(",", ":")),
    }


def read_events(
    client: redis.Redis, stream: str, after: str = "0", count: int = 100
) -> list[tuple[str, Event]]:
    """Up to ``count`` events of ``stream`` after the entry id ``after`` ("0": from the
    start), oldest first, as (entry id, Event): pass the last entry id back as
    ``after`` for the next page. Entries that are not agentic events are skipped."""
    low = "-" if after in ("0", "0-0", "-") else f"({after}"
    out: list[tuple[str, Event]] = []
    for entry_id, fields in sync(client.xrange(stream, min=low, max="+", count=count)):
        values = {text(key): text(value) for key, value in fields.items()}
        try:
            event = Event.from_cloudevent(json.loads(values["event"]), stored=True)
        except (KeyError, ValueError, ConfigError):
            log.warning("stream %s: entry %s is not an agentic event", stream, text(entry_id))
            continue
        out.append((text(entry_id), event))
    return out
