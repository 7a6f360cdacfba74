"""Request bodies read as JSON that holds only valid Unicode.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``) and Python's parser gives it
back as a string no UTF-8 encoder takes: stored, such a task would fail every answer
that holds it (each list of the queue it sits in, for every dispatcher and runner).
Such a body is refused here as malformed JSON (400), before anything is stored.

Field names are checked by the body models themselves (``_schemas.RequestBody``:
``extra="forbid"``); :func:`body_model` gives the error formatter the model a
route's body is read into, to say which fields it accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, get_args

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope

__all__ = ["UnicodeRoute", "body_model", "model_at"]


class UnicodeRoute(APIRoute):
    """A route whose JSON body must hold valid Unicode only."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body = body_model(self)

        async def checked(request: Request) -> Response:
            return await handler(_CheckedRequest(request.scope, request.receive, body))

        return checked


class _CheckedRequest(Request):
    def __init__(self, scope: Scope, receive: Receive, body: type[BaseModel] | None) -> None:
        super().__init__(scope, receive)
        self._model = body

    async def body(self) -> bytes:
        raw = await super().body()
        kind = self.headers.get("content-type", "")
        # A JSON body sent as something else (curl --data sends form encoding) would
        # otherwise be judged as a string: "input should be a valid dictionary".
        if raw and self._model is not None and kind and not _is_json(kind):
            raise HTTPException(
                415,
                f"the body is sent as {kind.partition(';')[0]!r}: send it as JSON, with"
                " Content-Type: application/json",
            )
        return raw

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            # Decoded here, strictly: json.loads(bytes) would guess UTF-16 or UTF-32 and
            # let encoded surrogates through ('surrogatepass').
            try:
                text = body.decode("utf-8-sig")  # a leading BOM is allowed, as before
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(
                    f"the body is not UTF-8 ({exc.reason} at byte {exc.start}): send JSON as UTF-8",
                    body.decode("utf-8", "replace"),
                    0,
                ) from exc
            value = json.loads(text)
            # Valid UTF-8 holds no surrogate: only an escape can make one, so most
            # bodies skip the walk.
            if "\\ud" in text or "\\uD" in text:
                _require_unicode(value, body)
            self._json = value
        return self._json


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind.startswith("application/") and kind.endswith(("/json", "+json"))


def body_model(route: object) -> type[BaseModel] | None:
    """The pydantic model a route's JSON body is read into (None: no body)."""
    field = getattr(route, "body_field", None)
    return _model_of(field.field_info.annotation) if field is not None else None


def model_at(model: type[BaseModel], path: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model of the object at ``path`` inside a body of ``model`` (field names and
    list indexes, as a validation error's ``loc`` after ``"body"``); None when the
    path leads elsewhere than to a model."""
    current: type[BaseModel] | None = model
    for part in path:
        if isinstance(part, int):
            continue  # an element of the list the previous field holds
        field = current.model_fields.get(part) if current is not None else None
        if field is None:
            return None
        current = _model_of(field.annotation)
    return current


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of an annotation (``Model``, ``Model | None``, ``list[Model]``)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


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
