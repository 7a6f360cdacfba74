"""Every error answer as ``{"code", "message", "details"}`` with the HTTP status in code.

FastAPI's own handlers answer ``{"detail": ...}``; they are replaced so that clients
(ours and go-agentic's) read one shape. ``details`` is a string because go-agentic's
client decodes it into one (anything else would hide the message from it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..errors import APIError, ConfigError, StoreError
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
        return 503, "the task store is unavailable", str(exc)
    return None


def _validation(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return error_response(400, "malformed JSON body", reason or None)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
        for error in errors
    )
    return error_response(422, "invalid request", problems)


def _allowed_methods(app: FastAPI, request: Request) -> str:
    # Starlette names only the methods of the first route matching the path; one
    # path here has several routes (GET and POST /api/tasks), so gather them all.
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map every exception an endpoint can raise to the error body."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError):
            return _validation(exc)
        if isinstance(exc, HTTPException):
            headers: dict[str, str] = dict(exc.headers or {})
            if exc.status_code == 405:
                headers["Allow"] = _allowed_methods(app, request)
            return error_response(exc.status_code, str(exc.detail), headers=headers or None)
        described = describe(exc, metrics)
        if described is not None:
            status, message, details = described
            if isinstance(exc, StoreError):
                log.error("%s %s: store failed: %s", request.method, request.url.path, exc)
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
