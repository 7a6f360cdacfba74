"""How the task API calls its store: on the event loop, or in a worker thread."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from anyio import to_thread

from ..stores.base import TaskStore

__all__ = ["StoreCalls"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StoreCalls:
    """``await calls(store.get, task_id)`` runs a store method where it belongs.

    A store that may wait on another process's lock (``TaskStore.blocking``, SQLite)
    is called in a worker thread so one slow call cannot stall every other request.
    Any other store is called inline: the hand-off to a thread and back costs more
    CPU than its whole call.
    """

    def __init__(self, store: TaskStore) -> None:
        self.inline = not store.blocking

    async def __call__(
        self, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if self.inline:
            return function(*args, **kwargs)
        return await to_thread.run_sync(functools.partial(function, *args, **kwargs))
