"""Request bodies read as JSON that holds only valid Unicode, and field names checked.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``) and Python's parser gives it
back as a string no UTF-8 encoder takes: stored, such a task would fail every answer
that holds it (each list of the queue it sits in, for every dispatcher and runner).
Such a body is refused here as malformed JSON (400), before anything is stored.

Unknown fields are ignored, so that an older server still serves a newer client,
except two kinds that are surely mistakes, refused with 422 before anything is
stored: a name close to one of the body's fields (``priorty``: did you mean
``priority``?), and a field of a task sent to an update that cannot change it
(``PATCH {"priority": ...}``: only status, progress, notes and the retry fields may
change; the rest is set when the task is created).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Coroutine
from typing import Any, get_args

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope

from ..models import Task, TaskUpdate

__all__ = ["UnicodeRoute"]


class UnicodeRoute(APIRoute):
    """A route whose JSON body must hold valid Unicode only, with no mistaken field."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body = _model_of(self.body_field.field_info.annotation) if self.body_field else None

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
            if self._model is not None and isinstance(value, dict):
                _require_known_fields(self._model, value)
            self._json = value
        return self._json


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind.startswith("application/") and kind.endswith(("/json", "+json"))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of a body annotation (``Model`` or ``Model | None``)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _require_known_fields(model: type[BaseModel], body: dict[str, Any]) -> None:
    """HTTPException 422 for a field of ``body`` that is surely a mistake (see the
    module docstring); other unknown fields are left for the model to ignore."""
    known = set(model.model_fields)
    known |= {f.alias for f in model.model_fields.values() if f.alias}
    for name in body:
        if name in known:
            continue
        if model is TaskUpdate and name in Task.model_fields:
            raise HTTPException(
                422,
                f"field {name!r} cannot be changed by an update; an update may change"
                f" {', '.join(sorted(TaskUpdate.model_fields))}",
            )
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        if close:
            raise HTTPException(422, f"unknown field {name!r}: did you mean {close[0]!r}?")


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
