"""Events delivered to an HTTP endpoint, signed as Standard Webhooks.

:class:`WebhookEmitter` POSTs each event as a CloudEvent in structured JSON mode
(``Content-Type: application/cloudevents+json``, the body of
:meth:`~agentic.events.Event.to_cloudevent`) from one background thread, keeping the
rules of :mod:`agentic.events`: ``emit`` only puts the event in a bounded buffer (it
never blocks and never raises), events are sent in emit order, one at a time, and
what cannot be delivered is logged and counted, never lost silently.

Signing follows the Standard Webhooks specification, so receivers can verify with
any of its libraries (or :func:`verify`): the headers ``webhook-id`` (the event id,
the same on every attempt: the receiver's dedupe key), ``webhook-timestamp`` (Unix
seconds of the attempt) and ``webhook-signature`` = ``v1,`` + base64 of
HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``. The key is the secret's bytes; a
secret written ``whsec_<base64>`` (the specification's form) is base64-decoded first.
Without a secret the events are sent unsigned.

Delivery: a 2xx answer delivers the event. No answer, 408, 429 and 5xx are retried
with ``retry`` (exponential backoff with jitter, or what a ``Retry-After`` asks, up
to ``retry.max_retry_after``); when the retries are used up,
or on any other answer (a 4xx: the same request would be refused again), the event is
dropped: logged with the reason, counted in ``dropped`` and ``errors``. A failing
endpoint delays the events behind the one being retried; the buffer (``maxsize``)
bounds what waits, and an event emitted into a full buffer is dropped and counted.

``close()`` stops taking events, then gives what is buffered up to ``close_timeout``
seconds to be delivered (retries included); the rest is dropped and counted. It
returns within ``close_timeout`` plus one request's ``timeout``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httpx

from ._buffered import BufferedEmitter
from .errors import ConfigError
from .events import Event
from .retry import RetryPolicy, parse_retry_after

__all__ = ["SIGNATURE_TOLERANCE", "WebhookEmitter", "sign", "verify"]

log = logging.getLogger(__name__)

#: seconds a signature's timestamp may differ from the receiver's clock (the spec's 5 min)
SIGNATURE_TOLERANCE = 300
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_STAMP = re.compile(r"[0-9]{1,12}")
_DEFAULT_RETRY = RetryPolicy(max_retries=5, base=0.5, cap=30.0, max_retry_after=300.0)


def _shown(url: str) -> str:
    """``url`` for logs: no user info, query or fragment (where tokens hide)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _key(secret: str) -> bytes:
    if not secret:
        raise ConfigError("a webhook secret must not be empty")
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error as exc:
        raise ConfigError(
            f"a 'whsec_' webhook secret must be base64 after the prefix: {exc}"
        ) from exc


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``body`` with these request headers was signed with ``secret``.

    For receivers: pass the raw body as received (before any JSON parsing) and the
    headers (looked up case-insensitively). False when a header is missing, the
    timestamp is more than ``tolerance`` seconds from ``now`` (a replay), or no
    ``v1`` signature in the space-separated list matches (compared in constant time).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp", "")
    given = lowered.get("webhook-signature", "").split()
    # ASCII digits of a sane length only: str.isdigit() takes "²", which int() refuses.
    if not message_id or not _STAMP.fullmatch(stamp) or not given:
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        return False
    expected = sign(secret, message_id, int(stamp), body)
    return any(hmac.compare_digest(expected, candidate) for candidate in given)


class WebhookEmitter(BufferedEmitter):
    """POSTs events to ``url`` from a background thread (see the module docstring).

    ``delivered``, ``dropped`` and ``errors`` count what happened; ``flush`` waits
    until everything emitted so far has been delivered or dropped.
    """

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        *,
        maxsize: int = 1000,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        close_timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if urlsplit(url).scheme.lower() not in ("http", "https") or not urlsplit(url).netloc:
            raise ConfigError(f"webhook url must be http:// or https://, got {_shown(url)!r}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if secret is not None:
            _key(secret)  # a bad secret is refused here, not on the first event
        super().__init__(
            maxsize=maxsize,
            batch=1,
            close_timeout=close_timeout,
            request_timeout=timeout,
            sleep=sleep,
        )
        self.url = url
        self.retry = retry or _DEFAULT_RETRY
        self._secret = secret
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "agentic-webhook", **(headers or {})},
        )
        self._start("agentic-webhook")

    def __repr__(self) -> str:
        return f"WebhookEmitter({_shown(self.url)!r})"

    def _release(self) -> None:
        self._http.close()

    def _send(self, events: list[Event]) -> int:
        (event,) = events  # batch=1: one event per request
        delivered, why = self._deliver(event)
        if not delivered:
            log.warning("%r: event %s (%s) dropped: %s", self, event.id, event.type, why)
        return int(delivered)

    def _deliver(self, event: Event) -> tuple[bool, str]:
        """Send one event, retrying what may succeed later: (delivered, why not)."""
        body = json.dumps(event.to_cloudevent(), separators=(",", ":")).encode()
        attempt = 0
        while True:
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/cloudevents+json",
                "webhook-id": event.id,
                "webhook-timestamp": str(stamp),
            }
            if self._secret is not None:
                headers["webhook-signature"] = sign(self._secret, event.id, stamp, body)
            retry_after: float | None = None
            try:
                response = self._http.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"no answer ({exc!r})"
            else:
                if response.is_success:
                    return True, ""
                why = f"HTTP {response.status_code}"
                if response.is_redirect:
                    why += f" (a redirect to {_shown(response.headers.get('Location', '?'))}:"
                    why += " configure that URL; events are not re-posted to it)"
                if response.status_code not in _RETRY_STATUSES:
                    return False, why  # the same request would be refused again
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            attempt += 1
            if not self.retry.should_retry(attempt) or not self._wait(
                self.retry.delay(attempt, retry_after=retry_after)
            ):
                return False, f"{why} after {attempt} attempt(s)"
