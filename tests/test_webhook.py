"""WebhookEmitter: signed delivery of events over HTTP, retries, drops and close."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from agentic.errors import ConfigError
from agentic.events import Event, EventType
from agentic.retry import RetryPolicy
from agentic.testing import webhook_receiver
from agentic.webhook import WebhookEmitter, sign, verify

URL = "http://hooks.test/agentic"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def event(n: int = 0) -> Event:
    return Event(type=EventType.TASK_COMPLETED, task_id=f"t{n}", payload={"n": n})


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    """respx router; every request must match a route."""
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def sleeps() -> list[float]:
    """The retry waits asked for (none really slept)."""
    return []


def emitter(sleeps: list[float], **options: Any) -> WebhookEmitter:
    retry = options.pop("retry", RetryPolicy(max_retries=2, base=1, cap=4))
    return WebhookEmitter(URL, SECRET, retry=retry, sleep=sleeps.append, **options)


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    """sign() gives the Standard Webhooks specification's published test vector."""
    body = b'{"test": 2432232314}'
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_the_signed_body_and_refuses_tampering_and_replays() -> None:
    """verify() takes a good signature among several; refuses another body, another
    secret, a missing header and a timestamp outside the tolerance."""
    body, stamp = b'{"a":1}', 1_700_000_000
    good = sign(SECRET, "m1", stamp, body)
    headers = {"Webhook-Id": "m1", "Webhook-Timestamp": str(stamp)}
    assert verify(SECRET, {**headers, "webhook-signature": f"v1,bogus= {good}"}, body, now=stamp)
    signed = {**headers, "webhook-signature": good}
    assert not verify(SECRET, signed, b'{"a":2}', now=stamp)
    assert not verify("another-secret", signed, body, now=stamp)
    assert not verify(SECRET, headers, body, now=stamp)
    assert not verify(SECRET, signed, body, now=stamp + 301)
    assert verify(SECRET, signed, body, now=stamp - 299)


@pytest.mark.parametrize("stamp", ["\u00b2", "1" * 5000, "-5", "1.5", ""])
def test_verify_refuses_hostile_timestamps_without_raising(stamp: str) -> None:
    """A timestamp that is not a few ASCII digits is refused (False), never an error."""
    headers = {"webhook-id": "m", "webhook-timestamp": stamp, "webhook-signature": "v1,x"}
    assert verify(SECRET, headers, b"{}") is False


def test_events_are_posted_as_signed_cloudevents_in_order(
    mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """Each event is one POST of its CloudEvent, signed, with its id as webhook-id,
    in emit order."""
    route = mock.post(URL).respond(204)
    hook = emitter(sleeps)
    for n in range(3):
        hook.emit(event(n))
    assert hook.flush(5)
    hook.close()
    bodies = [json.loads(call.request.content) for call in route.calls]
    assert [body["data"]["task_id"] for body in bodies] == ["t0", "t1", "t2"]
    request = route.calls[0].request
    assert request.headers["Content-Type"] == "application/cloudevents+json"
    assert request.headers["webhook-id"] == bodies[0]["id"]
    assert verify(SECRET, dict(request.headers), request.content)
    assert (hook.delivered, hook.dropped, hook.errors) == (3, 0, 0)


def test_unsigned_without_a_secret(mock: respx.MockRouter) -> None:
    """Without a secret no signature header is sent."""
    route = mock.post(URL).respond(200)
    with WebhookEmitter(URL) as hook:
        hook.emit(event())
        assert hook.flush(5)
    assert "webhook-signature" not in route.calls[0].request.headers


def test_failures_that_may_pass_are_retried_with_backoff(
    mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """No answer, 503 and 429 are retried (waiting what Retry-After asks); then 200."""
    route = mock.post(URL)
    route.side_effect = [
        httpx.ConnectError("refused"),
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(200),
    ]
    hook = emitter(sleeps, retry=RetryPolicy(max_retries=3, base=1, cap=4))
    hook.emit(event())
    assert hook.flush(5)
    hook.close()
    assert route.call_count == 4
    assert len(sleeps) == 3 and sleeps[2] == 7
    assert (hook.delivered, hook.dropped) == (1, 0)


def test_an_event_is_dropped_after_its_retries_and_the_next_goes_on(
    mock: respx.MockRouter, sleeps: list[float]
) -> None:
    """Retries used up: the event is dropped (logged, counted) and the next is sent."""
    route = mock.post(URL)
    route.side_effect = [httpx.Response(500)] * 3 + [httpx.Response(200)]
    hook = emitter(sleeps)
    hook.emit(event(0))
    hook.emit(event(1))
    assert hook.flush(5)
    hook.close()
    assert route.call_count == 4
    assert (hook.delivered, hook.dropped, hook.errors) == (1, 1, 1)


def test_a_refusal_is_not_retried(mock: respx.MockRouter, sleeps: list[float]) -> None:
    """A 4xx other than 408/429 drops the event at once: the same request would fail."""
    route = mock.post(URL).respond(400)
    hook = emitter(sleeps)
    hook.emit(event())
    assert hook.flush(5)
    hook.close()
    assert (route.call_count, sleeps, hook.dropped) == (1, [], 1)


def test_a_full_buffer_drops_new_events_without_blocking(mock: respx.MockRouter) -> None:
    """While the endpoint hangs, emit still returns at once; past maxsize it drops."""
    release = threading.Event()

    def hang(request: httpx.Request) -> httpx.Response:
        release.wait(5)
        return httpx.Response(200)

    mock.post(URL).mock(side_effect=hang)
    hook = WebhookEmitter(URL, maxsize=2)
    for n in range(6):  # one in flight, two buffered, the rest dropped
        hook.emit(event(n))
    dropped = hook.dropped
    release.set()
    assert hook.flush(5)
    hook.close()
    assert dropped >= 3 and hook.delivered + hook.dropped == 6


def test_close_delivers_what_is_buffered_then_drops_after(mock: respx.MockRouter) -> None:
    """close() sends what was emitted before it; emits after close are dropped."""
    route = mock.post(URL).respond(200)
    hook = WebhookEmitter(URL)
    for n in range(5):
        hook.emit(event(n))
    hook.close()
    hook.close()  # idempotent
    hook.emit(event(9))
    assert route.call_count == 5
    assert (hook.delivered, hook.dropped) == (5, 1)


def test_close_gives_up_on_a_dead_endpoint_at_its_timeout(mock: respx.MockRouter) -> None:
    """An endpoint that keeps failing cannot hold close() past close_timeout: the
    event being retried and those behind it are dropped and counted."""
    mock.post(URL).respond(503)
    hook = WebhookEmitter(URL, retry=RetryPolicy(max_retries=50, base=5, cap=5), close_timeout=0.2)
    for n in range(3):
        hook.emit(event(n))
    hook.close()
    assert (hook.delivered, hook.dropped) == (0, 3)


def test_a_redirect_is_not_followed_and_the_log_says_where(
    mock: respx.MockRouter, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """A 3xx drops the event (no retry) with the new location in the warning."""
    mock.post(URL).respond(301, headers={"Location": "https://hooks.test/new"})
    hook = emitter(sleeps)
    with caplog.at_level(logging.WARNING, logger="agentic"):
        hook.emit(event())
        assert hook.flush(5)
        hook.close()
    assert (hook.dropped, sleeps) == (1, [])
    assert "redirect to https://hooks.test/new" in caplog.text


def test_logs_never_show_credentials_of_the_url(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """User info and query (where tokens live) stay out of repr() and warnings; an
    upper-case scheme is accepted."""
    url = "HTTPS://user:pw@hooks.test/in?token=s3cret"
    mock.post(url).respond(400)
    hook = WebhookEmitter(url)
    with caplog.at_level(logging.WARNING, logger="agentic"):
        hook.emit(event())
        assert hook.flush(5)
        hook.close()
    assert "hooks.test/in" in caplog.text  # the warning was written, without secrets
    shown = repr(hook) + caplog.text
    assert "s3cret" not in shown and "pw" not in shown
    assert "hooks.test/in" in repr(hook)


@pytest.mark.parametrize(
    ("url", "secret"),
    [("ftp://x", None), ("hooks.test", None), (URL, ""), (URL, "whsec_not*base64")],
)
def test_bad_url_or_secret_is_a_config_error(url: str, secret: str | None) -> None:
    """A URL that is not http(s) or an unusable secret is refused at construction."""
    with pytest.raises(ConfigError):
        WebhookEmitter(url, secret)


def test_a_real_receiver_verifies_every_delivery() -> None:
    """Against a real HTTP server on loopback, every event arrives once, verifiable."""
    with webhook_receiver() as (url, received), WebhookEmitter(url, SECRET) as hook:
        for n in range(20):
            hook.emit(event(n))
        assert hook.flush(10)
    assert len(received) == 20
    assert all(verify(SECRET, delivery.headers, delivery.body) for delivery in received)
    ids = [json.loads(delivery.body)["data"]["task_id"] for delivery in received]
    assert ids == [f"t{n}" for n in range(20)]
