"""Change notices between the task API servers that share one Redis: pub/sub.

One channel per prefix and database (:func:`agentic.stores.keys.notices_channel`). Pub/sub keeps
nothing: a server that is not subscribed when a notice is published never sees it,
which is what notices are for (a waiter that misses one answers at its timeout).
"""

from __future__ import annotations

import redis
import redis.client

from ..keys import notices_channel
from ._conn import sync, text, translate_errors

__all__ = ["RedisNotices"]


class _Subscription:
    """One subscription, on a connection of its own (redis-py's ``PubSub``)."""

    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self._pubsub = pubsub

    def receive(self, timeout: float) -> str | None:
        with translate_errors("receiving a change notice"):
            message = self._pubsub.get_message(timeout=timeout)
        return None if message is None else text(message["data"])

    def close(self) -> None:
        self._pubsub.close()


class RedisNotices:
    """:class:`agentic.stores.base.Notices` on the Redis of a task store."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        database = int(client.connection_pool.connection_kwargs.get("db") or 0)
        self._channel = notices_channel(prefix, database)

    def publish(self, message: str) -> None:
        with translate_errors("sending a change notice"):
            self._client.publish(self._channel, message)

    def listeners(self) -> int:
        with translate_errors("counting the servers that hear change notices"):
            reply = sync(self._client.pubsub_numsub(self._channel))
        return sum(int(count) for _, count in reply)

    def subscribe(self) -> _Subscription:
        # Subscribe confirmations are not notices: redis-py drops them for us.
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            with translate_errors("subscribing to change notices"):
                pubsub.subscribe(self._channel)
        except BaseException:
            pubsub.close()
            raise
        return _Subscription(pubsub)
