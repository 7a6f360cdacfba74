"""Why a claim, renew, release or complete is refused: the wording every backend shares.

Kept apart from ``_tasks.py`` (which re-exports these) so that the transitions and
the refusals each stay a readable size.
"""

from __future__ import annotations

from ..errors import ConflictError
from ..models import Task, TaskStatus

#: statuses a task never leaves
FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})

__all__ = [
    "FINAL",
    "claim_conflict",
    "claim_repeat",
    "made_as_far_as_known",
    "require_fresh_job",
    "require_holder",
]


def claim_conflict(task: Task, unfinished: list[str]) -> ConflictError:
    """Why ``task`` cannot be claimed; ``unfinished`` are its dependencies not completed."""
    if task.status == TaskStatus.IN_PROGRESS:
        return ConflictError(f"task {task.id} is already claimed by {task.claimed_by!r}")
    if task.status == TaskStatus.BLOCKED:
        by = f" by failed task(s) {', '.join(task.blockers)}" if task.blockers else ""
        return ConflictError(f"task {task.id} is blocked{by}")
    if task.status == TaskStatus.PENDING and unfinished:
        return ConflictError(f"task {task.id} is waiting for dependencies: {', '.join(unfinished)}")
    return ConflictError(f"task {task.id} is {task.status}, not pending")


def claim_repeat(task: Task, agent_id: str, job_id: str) -> bool:
    """Whether a claim repeats the one that holds ``task`` (same agent, same job id).

    A repeat is answered with the task as it is: a claim retried by a proxy or a
    client whose answer was lost must not read as refused (409) when it was made.
    """
    return (
        bool(job_id)
        and task.status == TaskStatus.IN_PROGRESS
        and task.job_id == job_id
        and task.claimed_by == agent_id
    )


def made_as_far_as_known(task: Task, job_id: str) -> bool:
    """What ``TaskStore.withdraw_claim`` answers from the task alone: made when the task
    carries the job id, or when it is completed (no claim can land any more, its
    retired ids are dropped, and "made" lets the reservation expire instead of taking
    back one a job that ran may still settle). Otherwise the store's retired ids
    decide: a failed task keeps them, since an operator's retry makes it claimable
    again."""
    return task.job_id == job_id or task.status == TaskStatus.COMPLETED


def require_fresh_job(task: Task, job_id: str, retired: bool) -> None:
    """Raise ConflictError when ``job_id`` may no longer claim ``task``.

    A job id claims a task once: one whose attempt ended (the task still carries it
    after a failure or an expired lease; ``retired`` says the store remembers it as
    replaced by a later claim, released, or withdrawn) would otherwise claim again
    under a reservation already settled or given back, and run with no quota held.
    """
    if job_id and (job_id == task.job_id or retired):
        raise ConflictError(
            f"task {task.id} cannot be claimed under job {job_id!r}: that job id"
            " already had its attempt or was withdrawn; reserve a new one"
        )


def require_holder(
    task: Task, agent_id: str | None, action: str, job_id: str | None = None
) -> None:
    """Raise ConflictError unless ``task`` is in progress, held by ``agent_id`` and under
    ``job_id`` (each checked only when given).

    The job id fences attempts: an agent whose lease expired may have claimed the same
    task again, so "held by this agent" alone would let the old attempt's late report
    finish the new claim. ``None`` skips the check (go-agentic's client sends no job id).
    """
    if task.status != TaskStatus.IN_PROGRESS:
        raise ConflictError(f"cannot {action} task {task.id}: it is {task.status}, not claimed")
    if agent_id is not None and task.claimed_by != agent_id:
        raise ConflictError(
            f"cannot {action} task {task.id}: it is claimed by {task.claimed_by!r},"
            f" not {agent_id!r}"
        )
    if job_id is not None and task.job_id != job_id:
        raise ConflictError(
            f"cannot {action} task {task.id} for job {job_id!r}: a stale attempt: the task"
            f" was claimed again since (job {task.job_id!r})"
        )
