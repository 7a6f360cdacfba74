"""Every error answer as ``{"code", "message", "details"}`` with the HTTP status in code.

FastAPI's own handlers answer ``{"detail": ...}``; they are replaced so that clients
(ours and go-agentic's) read one shape. ``details`` is a string because go-agentic's
client decodes it into one (anything else would hide the message from it).

A field a request body does not accept (every body forbids unknown fields, nested
objects included) is a 422 whose message names the field's path (``body.priorty``,
``body.claims.0.agent``), the accepted field it most likely meant, and every
accepted field of that object; one formatter for every endpoint.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .._client_wire import STORE_LOST
from ..errors import APIError, ConfigError, StoreError, StoreLostError
from ..models import Task, TaskUpdate
from ._json import body_model, model_at
from ._limits import RateLimited
from ._metrics import Metrics

__all__ = ["describe", "details_text", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


def details_text(details: object) -> str | None:
    """``details`` as the string go-agentic's client expects (or None)."""
    if details is None or isinstance(details, str):
        return details
    return json.dumps(details, default=str)


def error_response(
    status: int, message: str, details: object = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error body for ``status``."""
    body = {"code": status, "message": message, "details": details_text(details)}
    return JSONResponse(body, status_code=status, headers=headers)


def describe(exc: Exception, metrics: Metrics) -> tuple[int, str, object] | None:
    """Status, message and details of an SDK error (counted in ``metrics``); None for
    any other exception. One mapping for whole answers and for each claim of a batch."""
    if isinstance(exc, APIError):
        if exc.code == 409:
            metrics.inc("task_conflicts")
        return exc.code or 500, exc.message, exc.details
    if isinstance(exc, ConfigError):
        return 422, str(exc), None
    if isinstance(exc, StoreError):
        metrics.inc("store_errors")
        if isinstance(exc, StoreLostError):  # the fix is the operator's: said in full
            return 503, f"{STORE_LOST}: {exc}", None
        return 503, "the task store is unavailable", str(exc)
    return None


def _validation(exc: RequestValidationError, request: Request) -> JSONResponse:
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return error_response(400, "malformed JSON body", reason or None)
    body = body_model(request.scope.get("route"))
    unknown = [
        _unknown_field(error, body) for error in errors if error.get("type") == "extra_forbidden"
    ]
    problems = "; ".join(
        f"{_path(error.get('loc', ()))}: {error.get('msg', '')}" for error in errors
    )
    message = "; ".join(unknown) if unknown else f"invalid request: {problems}"
    return error_response(422, message, problems)


def _path(loc: Any) -> str:
    return ".".join(str(part) for part in loc)


def _unknown_field(error: Mapping[str, Any], body: type[BaseModel] | None) -> str:
    """What to say of a field the body does not accept: its path, the field meant
    (when one is close) and the fields accepted there."""
    loc = tuple(error.get("loc", ()))
    name = str(loc[-1]) if loc else ""
    inside = loc[1:-1] if loc[:1] == ("body",) else None
    model = model_at(body, inside) if body is not None and inside is not None else None
    if model is None:
        return f"unknown field {_path(loc)}"
    accepted = sorted(model.model_fields)
    if issubclass(model, TaskUpdate) and name in Task.model_fields:
        return (
            f"field {_path(loc)} cannot be changed by an update; an update may change"
            f" {', '.join(sorted(TaskUpdate.model_fields))}"
        )
    close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.7)
    meant = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {_path(loc)}{meant}; accepted fields: {', '.join(accepted)}"


def _allowed_methods(app: FastAPI, request: Request) -> str:
    # Starlette names only the methods of the first route matching the path; one
    # path here has several routes (GET and POST /api/tasks), so gather them all.
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


class StoreFailures:
    """Requests the store failed, logged at most once per ``window`` seconds with how
    many were not: during an outage every request fails, and a line per request (60
    in 7 s with four agents polling) buried everything else. Each is still counted
    (``store_errors``) and answered 503."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._quiet_until = -math.inf
        self._unsaid = 0

    def __call__(self, what: str, exc: StoreError) -> None:
        now = self._clock()
        if now < self._quiet_until:
            self._unsaid += 1
            return
        more = (
            f" ({self._unsaid} more request(s) failed since the last one logged)"
            if self._unsaid
            else ""
        )
        log.error("%s: store failed: %s%s", what, exc, more)
        self._unsaid, self._quiet_until = 0, now + self.window


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map every exception an endpoint can raise to the error body."""
    store_failed = StoreFailures()

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError):
            return _validation(exc, request)
        if isinstance(exc, HTTPException):
            headers: dict[str, str] = dict(exc.headers or {})
            if exc.status_code == 405:
                headers["Allow"] = _allowed_methods(app, request)
            return error_response(exc.status_code, str(exc.detail), headers=headers or None)
        described = describe(exc, metrics)
        if described is not None:
            status, message, details = described
            if isinstance(exc, StoreError):
                store_failed(f"{request.method} {request.url.path}", exc)
            answer_headers: dict[str, str] | None = None
            if status == 401:
                answer_headers = {"WWW-Authenticate": "Bearer"}
            elif isinstance(exc, RateLimited):
                answer_headers = exc.headers
            return error_response(status, message, details, answer_headers)
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error")

    for kind in (RequestValidationError, HTTPException, APIError, ConfigError, StoreError):
        app.add_exception_handler(kind, handle)
    app.add_exception_handler(Exception, handle)
