"""Request bodies read as JSON that holds only valid Unicode.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``) and Python's parser gives it
back as a string no UTF-8 encoder takes: stored, such a task would fail every answer
that holds it (each list of the queue it sits in, for every dispatcher and runner).
Such a body is refused here as malformed JSON (400), before anything is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["UnicodeRoute"]


class UnicodeRoute(APIRoute):
    """A route whose JSON body must hold valid Unicode only."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def unicode_only(request: Request) -> Response:
            return await handler(_UnicodeRequest(request.scope, request.receive))

        return unicode_only


class _UnicodeRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = json.loads(body)
            # Only an escape can make a lone surrogate (raw ones are invalid UTF-8,
            # refused by the parser): most bodies skip the walk.
            if b"\\ud" in body or b"\\uD" in body:
                _require_unicode(value, body)
            self._json = value
        return self._json


def _require_unicode(value: Any, body: bytes) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.end]
            raise json.JSONDecodeError(
                f"lone surrogate {bad!r} in a string is not valid Unicode: send UTF-8"
                " text (a character outside the BMP as a surrogate pair)",
                body.decode("utf-8", "replace"),
                0,
            ) from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _require_unicode(key, body)
            _require_unicode(item, body)
    elif isinstance(value, list):
        for item in value:
            _require_unicode(item, body)
