"""``submit_task``: create a task through the task API (``agentic submit``)."""

from __future__ import annotations

from collections.abc import Iterable

from .client import TaskClient
from .errors import ConfigError
from .models import Priority, Task

__all__ = ["submit_task"]


def submit_task(
    client: TaskClient,
    title: str,
    description: str = "",
    labels: Iterable[str] = (),
    priority: Priority | str = Priority.MEDIUM,
    project: str = "",
    dependencies: Iterable[str] = (),
    model: str = "",
    estimated_tokens: int = 0,
    max_retries: int = 3,
    *,
    idempotency_key: str | None = None,
) -> Task:
    """Create a pending task and return it as the server stored it.

    A blank title is refused with :class:`ConfigError` before any request. Pass the
    same ``idempotency_key`` when re-running a submission that may have gone through
    (a script that crashed after sending it): the server returns the first task
    instead of creating another.
    """
    if not isinstance(title, str) or not title.strip():
        raise ConfigError("title must not be blank")
    for name, given in (("labels", labels), ("dependencies", dependencies)):
        if isinstance(given, str | bytes):
            # A string is an iterable of its letters: labels="py" would ask for "p" and
            # "y", which no agent holds, and the task would wait for ever.
            raise ConfigError(f"{name} must be a list of strings, got {given!r}: use [{given!r}]")
    try:
        task = Task(
            title=title.strip(),
            description=description,
            labels=list(labels),
            priority=Priority(priority),
            project=project,
            dependencies=list(dependencies),
            model=model,
            estimated_tokens=estimated_tokens,
            max_retries=max_retries,
        )
    except ValueError as exc:  # an unknown priority or a negative count
        raise ConfigError(f"invalid task: {exc}") from exc
    return client.create_task(task, idempotency_key=idempotency_key)
