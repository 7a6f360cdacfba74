"""Connections, Lua scripts and error translation shared by the Redis stores."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
from redis.exceptions import (
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from ...errors import ConfigError, StoreError, StoreLostError, StoreUnavailableError
from .._url import StoreURL
from ..keys import store_count_key, store_id_key

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "PASSING",
    "Connection",
    "Identity",
    "Script",
    "accept_store",
    "checked_read",
    "connect",
    "guarded_write",
    "now_arg",
    "open_identity",
    "refuses_functions",
    "sync",
    "text",
    "translate_errors",
]

DEFAULT_PREFIX = "agentic"
#: seconds allowed to connect and for each reply; bounds how long a dead Redis stalls us
DEFAULT_TIMEOUT = 2.0

OPTIONS = {
    "prefix": f"namespace of every key, e.g. prefix=prod (default {DEFAULT_PREFIX})",
    "timeout": f"connect and socket timeout in seconds (default {DEFAULT_TIMEOUT:g})",
}

log = logging.getLogger("agentic.stores.redis")

Clock = Callable[[], float]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Connection:
    """A pinged client and the key prefix its stores use."""

    client: redis.Redis
    prefix: str


def _address(url: StoreURL) -> str:
    parts = urlsplit(url.raw)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def connect(url: StoreURL) -> Connection:
    """A client with its own connection pool, checked with a PING.

    Only the scheme, host, credentials and database of ``url`` reach redis-py; our
    options (``prefix``, ``timeout``, ``tz``, ``reservation_ttl``) are ours.
    """
    options = url.take(OPTIONS)
    timeout = url.number("timeout", DEFAULT_TIMEOUT, minimum=0.001)
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if not prefix:
        raise ConfigError(f"store URL {url.redacted()!r}: prefix= must not be empty")
    database = urlsplit(url.raw).path.strip("/")
    if database and not database.isdigit():
        raise ConfigError(
            f"store URL {url.redacted()!r}: the database is a number"
            f" (redis://host:6379/0), got {database!r}"
        )
    plain = urlsplit(url.raw)._replace(query="", fragment="").geturl()
    try:
        # from_url gives the client its own pool, which client.close() disconnects.
        client = redis.Redis.from_url(plain, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError as exc:
        raise ConfigError(f"store URL {url.redacted()!r}: {exc}") from exc
    _ping(client, _address(url), timeout)
    return Connection(client, prefix)


def _ping(client: redis.Redis, address: str, timeout: float) -> None:
    """Fail fast, with what to check, when Redis cannot be reached."""
    try:
        client.ping()
    except redis.ResponseError as exc:
        # Reached, and refused: a database past the server's `databases`, an ACL.
        client.close()
        raise ConfigError(
            f"Redis at {address} refused this connection: {exc}. Check the database"
            " number in the store URL (the server has `databases` of them, 16 by"
            " default) and the user's permissions"
        ) from exc
    except redis.RedisError as exc:
        client.close()
        raise StoreUnavailableError(
            f"cannot reach Redis at {address} within {timeout:g}s ({exc}). Check that"
            " redis-server is running and listening there, the host, port, password and"
            " database in the store URL, and any firewall; a slow network may need a"
            " larger ?timeout="
        ) from exc


# Refusals that pass by themselves: a replica not yet promoted (READONLY, MASTERDOWN),
# memory full until keys expire or are trimmed (OOM), a slot moving (TRYAGAIN). The
# same call may succeed later, so callers retry them as they retry a lost connection.
PASSING = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    MasterDownError,
    TryAgainError,
)


def _store_error(
    exc: redis.RedisError, action: str, identity: Identity | None = None
) -> StoreError:
    """The error to raise for a redis-py exception during ``action`` (a guarded
    script's refusal says what became of the store ``identity`` opened)."""
    if isinstance(exc, ResponseError) and identity and str(exc).startswith(_LOST):
        found, _, back = str(exc)[len(_LOST) :].partition(" ")
        return identity.lost(found or None, back)
    if isinstance(exc, PASSING):
        return StoreUnavailableError(f"Redis unavailable during {action}: {exc}")
    return StoreError(f"Redis failed during {action}: {exc}")


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn redis-py exceptions into StoreError / StoreUnavailableError."""
    try:
        yield
    except redis.RedisError as exc:
        raise _store_error(exc, action) from exc


def sync(value: Awaitable[_T] | _T) -> _T:
    """A reply of the synchronous client (redis-py types commands for both kinds)."""
    return cast(_T, value)


def text(value: object) -> str:
    """A reply item as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def now_arg(clock: Clock | None) -> tuple[str, float]:
    """The ``now`` argument of a script and this machine's idea of it.

    Without a clock the script reads the server's TIME, so every machine agrees on
    "now"; the local time only says which days' starts to send the quota scripts
    (they pick among them by the server's time).
    """
    if clock is None:
        return "", time.time()
    now = float(clock())
    # repr() is the shortest string that parses back to the same float (Lua too).
    return repr(now), now


# A library file's lines that depend on the call (its arguments, the time), between
# these two comment lines; everything else in a library is defined once per load.
_PER_CALL = re.compile(r"^-- per call \{\n(.*?)^-- \} per call\n", re.MULTILINE | re.DOTALL)
# Clients (by connection pool) whose server has no Redis Functions (before 7.0), or
# whose user may not use them: they run every script with EVALSHA.
_NO_FUNCTIONS: weakref.WeakSet[redis.ConnectionPool] = weakref.WeakSet()


class Script:
    """A Lua script built from files of ``lua/``: shared libraries, then its body.

    On Redis 7 and later it runs as a Redis Function (``FCALL``): the libraries'
    functions are defined once, when the library is loaded, instead of on every call
    as a script's are (about 25 us of server time per call for the quota and task
    libraries, a fifth of a reserve). The library and function are named after the
    source's SHA1, so two versions of agentic on one Redis never run each other's
    code. Older servers, and users whose ACL forbids functions, run the same source
    with ``EVALSHA``. Either way a call is one command; when the server does not
    know the code (restart without persistence, ``SCRIPT FLUSH``, ``FUNCTION
    FLUSH``) it is loaded and the call repeated.

    A guarded script (every store's; not the rate limiter's buckets) starts with
    ``guard.lua``: its first keys are the store id key and the store's write count
    (named by the id the store saw at open, :class:`Identity`), its last argument
    the highest count this process has seen, and it fails with
    :class:`~agentic.errors.StoreLostError`, writing nothing, when the count is gone
    (the store emptied or replaced) or below that mark (the store went back in time).
    That is one command inside the call (``INCR`` for a call that writes, ``GET`` for
    one that only reads), no round trip; its reply carries the count, which the
    process remembers.

    The two forms differ only where a library reads its call's arguments: its lines
    between ``-- per call {`` and ``-- } per call`` run at the top of the script
    (``EVALSHA``) or at the top of each function call (``FCALL``), assigning names
    the library declared above them.
    """

    def __init__(self, *files: str, guarded: bool = True) -> None:
        folder = resources.files(__package__).joinpath("lua")
        texts = [folder.joinpath(name).read_text("utf-8") for name in files]
        guard = [folder.joinpath("guard.lua").read_text("utf-8")] if guarded else []
        self.name = files[-1]
        self.guarded = guarded
        *libraries, body = texts
        # The body is a function of its own, so that a guarded script's reply can
        # carry the store's write count beside the body's (guard.lua).
        ends = [
            "local function agentic_body()",
            body,
            "end",
            "return {count, agentic_body()}" if guarded else "return agentic_body()",
        ]
        self.source = "\n".join([*guard, *libraries, *ends])
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        self.function = f"agentic_{self.sha}"
        per_call = [part for text in libraries for part in _PER_CALL.findall(text)]
        self.library = "\n".join(
            [
                f"#!lua name={self.function}",
                "local KEYS, ARGV",
                *(_PER_CALL.sub("", text) for text in libraries),
                *ends[:3],
                f"redis.register_function('{self.function}', function(keys, args)",
                "KEYS, ARGV = keys, args",
                *guard,
                *per_call,
                ends[3],
                "end)",
            ]
        )

    def __call__(
        self,
        client: redis.Redis,
        args: Sequence[str],
        keys: Sequence[str] = (),
        identity: Identity | None = None,
        reads: bool = False,
    ) -> Any:
        """Run the script; a guarded one is given the ``identity`` its store opened
        (the script checks that the store is still that one, and has not gone back,
        before anything else; a call that ``reads`` only is not counted)."""
        if identity is not None and self.guarded:
            identity.review(client)
            keys = (identity.key, identity.count_key, *keys)
            args = (*args, identity.argument(reads))
        elif self.guarded or identity is not None:
            raise TypeError(f"{self.name}: an identity goes with a guarded script, and only")
        # Every store operation comes through here: a plain try costs nothing on
        # success, where translate_errors (a generator) costs about 2 us per call.
        try:
            reply = self._run(client, args, keys)
        except redis.RedisError as exc:
            raise _store_error(exc, f"script {self.name}", identity) from exc
        if identity is None:
            return reply
        count, *rest = reply
        identity.saw(int(count))
        result = rest[0] if rest else None
        if isinstance(result, ResponseError):  # the body's own error_reply
            raise _store_error(result, f"script {self.name}", identity)
        return result

    def _run(self, client: redis.Redis, args: Sequence[str], keys: Sequence[str]) -> Any:
        if client.connection_pool not in _NO_FUNCTIONS:
            try:
                return self._fcall(client, args, keys)
            except OutOfMemoryError:
                pass  # see _evalsha
            except ResponseError as exc:
                if self._load(client, exc):
                    try:
                        return self._fcall(client, args, keys)
                    except OutOfMemoryError:
                        pass
        return self._evalsha(client, args, keys)

    def _fcall(self, client: redis.Redis, args: Sequence[str], keys: Sequence[str]) -> Any:
        # redis-py types fcall's varargs as lists; they are keys, then arguments.
        return cast(Any, client).fcall(self.function, len(keys), *keys, *args)

    def _evalsha(self, client: redis.Redis, args: Sequence[str], keys: Sequence[str]) -> Any:
        """The call as a script: on servers without functions, and at ``maxmemory``
        (Redis refuses a function that may write before it runs, and the library's
        load, where a script is refused only at its first write: a read, a listing,
        goes on)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def _load(self, client: redis.Redis, refusal: ResponseError) -> bool:
        """Load the library after ``refusal`` of an FCALL: whether it is loaded (call
        again); False to run this call as a script: the server has no functions or
        may not use them (remembered: every later call is a script), or it is full."""
        if not refuses_functions(refusal):
            if not str(refusal).startswith("Function not found"):
                raise refusal
            try:
                client.function_load(self.library, replace=True)
            except OutOfMemoryError:
                return False
            except ResponseError as exc:
                if not refuses_functions(exc):
                    raise
                refusal = exc
            else:
                return True
        log.info("Redis runs agentic's Lua as scripts, not functions (%s)", refusal)
        _NO_FUNCTIONS.add(client.connection_pool)
        return False


def refuses_functions(exc: ResponseError) -> bool:
    """Whether a refusal says that Redis Functions cannot be used here (a server
    before 7.0, an ACL that does not allow them)."""
    return isinstance(exc, NoPermissionError) or str(exc).lower().startswith("unknown command")


# How guard.lua's refusal begins (then the id found or "", and the mark of a store
# gone back: its count found or "", and the count a process had seen).
_LOST = "AGENTIC_STORE_LOST "
#: seconds between two looks at Redis's maxmemory settings by one open store
POLICY_REVIEW_EVERY = 30.0
# The highest write count this process has seen of each store (by store id), shared
# by every store it opened on it: a call finding a lower count refuses.
_MARKS: dict[str, int] = {}


class Identity:
    """The store id key under a prefix, the id a store found there when it opened and
    the key of that store's write count: what every write (guard.lua, which counts it)
    and every read that could answer "nothing" (:func:`checked_read`) checks is still
    there, and not below the highest count this process has seen."""

    __slots__ = ("_address", "_due", "count_key", "key", "value")

    def __init__(self, client: redis.Redis, prefix: str, value: str) -> None:
        self.key = store_id_key(prefix)
        self.value = value
        self.count_key = store_count_key(prefix, value)
        self._address = _client_address(client)
        self._due = time.monotonic() + POLICY_REVIEW_EVERY

    def argument(self, reads: bool) -> str:
        """guard.lua's last argument: the mark, negated for a call that only reads."""
        mark = _MARKS[self.value]
        return str(-mark if reads else mark)

    def saw(self, count: int) -> None:
        """Remember ``count`` when it is the highest this process has seen."""
        if count > _MARKS.get(self.value, 0):
            _MARKS[self.value] = count

    def check(self, client: redis.Redis) -> str:
        """The id, after checking that the store still has it and has not gone back
        (one ``MGET``)."""
        self.review(client)
        mark = self.mark()
        with translate_errors("reading the store id"):
            found, count = sync(client.mget(self.key, self.count_key))
        self.confirm(client, found, count, mark)
        return self.value

    def mark(self) -> int:
        """The highest count this process has seen of the store, taken before a read's
        round trip: the count a read finds may only be compared with a mark from before
        it was read (another thread's write, made after the read and answered first,
        raises the mark past the count the read found, on a store that went nowhere)."""
        return _MARKS[self.value]

    def confirm(self, client: redis.Redis, found: object, count: object, mark: int) -> None:
        """Check what the caller read in its own round trip, the id key's value
        ``found`` and the write ``count``, against the ``mark`` (:meth:`mark`) taken
        before it: StoreLostError when the store was emptied or replaced, or went back
        (marked so by :data:`_NOTICE` first)."""
        if found is None or text(found) != self.value:
            raise _lost_store(self.value, None if found is None else text(found))
        if count is None or int(text(count)) < mark:
            _NOTICE(client, (), identity=self, reads=True)  # refuses, in the usual case
            raise self.lost(self.value, f"{'' if count is None else text(count)} {mark}")
        self.saw(int(text(count)))

    def lost(self, found: str | None, back: str) -> StoreLostError:
        """The error for this store found with id ``found`` (None: no id): emptied or
        replaced, or, when it is this store, gone back as ``back`` ("count mark")
        says."""
        if found != self.value:
            return _lost_store(self.value, found)
        count, _, seen = back.partition(" ")
        return _went_back(self.value, count, seen or str(_MARKS[self.value]))

    def review(self, client: redis.Redis) -> None:
        """Look at Redis's maxmemory settings again when it is time (every
        :data:`POLICY_REVIEW_EVERY` seconds; at every call while they evict keys):
        StoreError, the call refused, when the policy now evicts keys."""
        now = time.monotonic()
        if now < self._due:
            return
        try:
            config = sync(client.config_get("maxmemory*"))
        except ResponseError as exc:  # refused (managed Redis): nothing to check
            log.debug("cannot read Redis's maxmemory settings (%s); not checked", exc)
            config = {}
        except redis.RedisError as exc:
            raise _store_error(exc, "reading Redis's maxmemory settings") from exc
        refusal = _eviction(config, self._address)
        if refusal:
            self._due = now
            raise StoreError(
                f"{refusal}. The setting changed after this process opened the store;"
                " it refuses every call until the policy is noeviction again"
            )
        self._due = now + POLICY_REVIEW_EVERY


def _lost_store(seen: str, found: str | None) -> StoreLostError:
    """The error for a store whose id ``seen`` at open is gone (``found`` None) or was
    replaced by ``found``."""
    now = "the store id key is gone" if found is None else f"it now holds id {found}"
    return StoreLostError(
        f"the Redis store was emptied or replaced under this process (store id {seen}"
        f" is gone: {now}): the tasks, usage and reservations it held are lost, and"
        " nothing was written into the empty store. Restore the Redis data (a backup,"
        " the replica that has it) and the processes go on; or restart every agentic"
        " process on this store to start over on an empty one (set the allowances"
        " again; the day's usage starts at zero). To keep Redis from losing data:"
        " persistence on (appendonly yes), maxmemory-policy noeviction"
    )


def _went_back(store_id: str, found: str, seen: str) -> StoreLostError:
    """The error for the store ``store_id`` gone back: its write count was ``found``
    ("" when gone) where a process had seen ``seen``."""
    count = f"its write count was {found}" if found else "its write count was gone"
    return StoreLostError(
        f"the Redis store went back in time (store id {store_id}: {count} where a"
        f" process had seen {seen}): a failover to a replica that had not caught up,"
        " or a restore of an older backup (RDB or AOF), or a crash of Redis's machine"
        " that lost the writes not yet on disk (appendfsync everysec: up to the last"
        " second or two). The writes made since are"
        " lost: tasks completed since may be pending or in progress again and run"
        " twice, usage charged since is forgotten, so a quota could be over-spent."
        " Nothing was written, and every agentic process on this store refuses it"
        " from now on. Put back the data that has those writes (the replica or backup"
        " that has them, the old primary) and the processes go on; or check the tasks"
        " and the usage, then accept the store as it is now with `agentic admin"
        " accept-store`, and the running processes go on from it"
    )


def open_identity(client: redis.Redis, prefix: str, owned: bool, create: bool = True) -> Identity:
    """What a Redis store does when it opens: refuse a server that evicts keys when
    full (:func:`_eviction`), and read the store id and its write count, which the
    store's writes and the reads that would answer "nothing" then check. When there
    is no id it is written first (a new store), unless ``create`` is false (a
    command that only reads): StoreError then, writing nothing (:func:`_no_store`).
    Two round trips. A client the store ``owned`` is closed when this fails."""
    try:
        return _open_identity(client, prefix, create)
    except BaseException:
        if owned:
            client.close()
        raise


def _no_store(client: redis.Redis, prefix: str) -> StoreError:
    """The error of a read-only open that finds no store id under ``prefix``: nothing
    can tell a store never used from one emptied while no process had it open (the
    task server, when one runs on it, says which), and a read must not start one."""
    return StoreError(
        f"no agentic store under prefix {prefix!r} in the Redis at"
        f" {_client_address(client)} (its store id key {store_id_key(prefix)} is"
        " missing): either nothing has used it yet (a wrong prefix or database in the"
        " store URL?), or it was emptied (FLUSHDB, a restart without persistence, an"
        " evicting maxmemory-policy) and its agents, tasks, allowances, usage and"
        " events are lost. A command that only reads writes nothing; one that writes"
        " (agentic serve, a runner, agentic allowance set) starts a new store there"
    )


def _open_identity(client: redis.Redis, prefix: str, create: bool) -> Identity:
    with translate_errors("opening the store"):
        try:
            config = sync(client.config_get("maxmemory*"))
        except ResponseError as exc:  # managed Redis often refuses CONFIG
            log.debug("cannot read Redis's maxmemory settings (%s); not checked", exc)
            config = {}
    refusal = _eviction(config, _client_address(client))
    if refusal:
        raise ConfigError(refusal)
    new_id = uuid.uuid4().hex if create else ""
    marks = _MARKS.copy()  # before the read (Identity.mark)
    found, count, back = _OPEN(
        client, [new_id, store_count_key(prefix, "")], (store_id_key(prefix),)
    )
    if found is None:
        raise _no_store(client, prefix)
    identity = Identity(client, prefix, text(found))
    if back is not None:
        raise identity.lost(identity.value, text(back))
    if count is None:
        raise StoreError(
            f"the agentic store under prefix {prefix!r} in the Redis at"
            f" {_client_address(client)} has no write count: it was last written by an"
            " older agentic, which kept none (a command that only reads does not start"
            " one; any that writes does, as agentic serve or a runner), or it went"
            " back to a backup from before this agentic ran on it"
        )
    _MARKS.setdefault(identity.value, int(text(count)))
    identity.confirm(client, found, count, marks.get(identity.value, int(text(count))))
    return identity


def _eviction(config: dict[str, str], address: str) -> str | None:
    """Why Redis may drop keys to make room, or None: with ``maxmemory`` set, any
    ``maxmemory-policy`` but ``noeviction`` may silently drop a reservation, a day's
    usage or a task (``volatile-*`` drops the keys with a TTL: reservations, leases)."""
    limit = text(config.get("maxmemory", "0"))
    policy = text(config.get("maxmemory-policy", "noeviction"))
    if limit in ("", "0") or policy == "noeviction":
        return None
    return (
        f"Redis at {address} evicts keys when full (maxmemory {limit} bytes,"
        f" maxmemory-policy {policy}): it would silently drop tasks, reservations and"
        " the day's usage, so quotas could be over-spent and tasks lost. Set"
        " `maxmemory-policy noeviction` (CONFIG SET maxmemory-policy noeviction, and"
        " in redis.conf), or give agentic a Redis of its own that has it; when full,"
        " Redis then refuses writes with an error instead of dropping data"
    )


def accept_store(client: redis.Redis, prefix: str) -> str | None:
    """Accept the store under ``prefix``, marked as gone back (a failover to a replica
    that lagged, a restored backup), as it now is: its write count is set past any a
    running process can have seen and the mark removed, so every process goes on
    from it. What the mark said ("count mark"), or None when the store was not marked
    (nothing changed). StoreError when there is no store there."""
    found, back = _ACCEPT(client, [store_count_key(prefix, "")], (store_id_key(prefix),))
    if found is None:
        raise _no_store(client, prefix)
    return None if back is None else text(back)


def persistence_warning(url: StoreURL) -> str | None:
    """Why the Redis of ``url`` may go back in time, or None: without an append-only
    file (``appendonly no``) a crashed Redis comes back with its last snapshot, an
    older store with the same id, which no process can tell from the one it wrote
    to. A user refused ``CONFIG`` (managed Redis) is not asked."""
    client = connect(url).client
    try:
        setting = text(sync(client.config_get("appendonly")).get("appendonly", "yes"))
    except redis.RedisError:
        return None
    finally:
        client.close()
    if setting != "no":
        return None
    return (
        f"Redis at {_address(url)} keeps no append-only file (appendonly no): after a"
        " crash it comes back with its last snapshot, if any, and the processes cannot"
        " tell that from the store they wrote to (tasks finished since then run again, the usage"
        " charged since then is forgotten); without a snapshot the empty store is"
        " refused. Turn it on: CONFIG SET appendonly yes, and appendonly yes in"
        " redis.conf"
    )


def _client_address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    path = kwargs.get("path")  # a unix socket
    return str(path) if path else f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def guarded_write(client: redis.Redis, identity: Identity, *commands: Sequence[str]) -> list[Any]:
    """The plain writes that are no script of their own (setting an allowance, a
    model's quota, a consumer's position): each of ``commands`` (a Redis command's
    words) run in one guarded script (:data:`_WRITE`), so only while the store is
    still ``identity``'s and has not gone back, and counted. Their replies."""
    words = [part for command in commands for part in (str(len(command)), *command)]
    return list(_WRITE(client, words, identity=identity))


def checked_read(
    client: redis.Redis,
    identity: Identity,
    action: str,
    read: Callable[[Any], object],
    transaction: bool = False,
) -> list[Any]:
    """The replies of the commands ``read(pipeline)`` queues, sent with an ``MGET`` of
    the store id and its write count in the same round trip (one ``MULTI`` with
    ``transaction``, for reads that must see one instant), after checking that the
    store still has ``identity``'s id and has not gone back: StoreLostError when it
    was emptied, replaced or went back. For the reads that would otherwise answer
    "nothing" or "unknown" from an emptied store, or an old state from one gone back."""
    identity.review(client)
    mark = identity.mark()
    with translate_errors(action):
        pipe = client.pipeline(transaction=transaction)
        read(pipe)
        pipe.mget(identity.key, identity.count_key)
        *replies, (found, count) = pipe.execute()
    identity.confirm(client, found, count, mark)
    return replies


_OPEN = Script("store_open.lua", guarded=False)
_ACCEPT = Script("store_accept.lua", guarded=False)
_WRITE = Script("store_write.lua")
_NOTICE = Script("store_notice.lua")
