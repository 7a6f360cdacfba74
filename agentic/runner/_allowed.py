"""What the agent's allowance says about running a job: how long it may run and which
models it may use, read from the quota store and refreshed by the poll loop."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from ..allowance import AllowanceService
from ..errors import AgenticError, NotFoundError

__all__ = ["Allowed"]

log = logging.getLogger("agentic.runner")


class Allowed:
    """The allowance's ``max_job_duration`` and model allowlist, as last read.

    The runner enforces the allowance's ``max_job_duration`` as its own (the smaller
    of the two wins): the allowance's reservations expire then, freeing the
    concurrency slot, so a job must end by then too. A failed read keeps what was
    known.
    """

    def __init__(
        self, allowance: AllowanceService | None, agent_id: str, max_job_duration: float | None
    ) -> None:
        self.allowance = allowance
        self.agent_id = agent_id
        #: the runner's own limit (None: none)
        self.max_job_duration = max_job_duration
        self._duration: float | None = None
        self._models: frozenset[str] = frozenset()  # empty: any model
        self._read_at = -math.inf  # monotonic time of the last read

    def read(self, warn: bool = False) -> None:
        """Read the allowance now. ``warn``: say so when there is none (quotas fail
        closed, so a dispatcher gives the agent no work, and nothing on the agent's
        side would say why)."""
        if self.allowance is None:
            return
        self._read_at = time.monotonic()
        try:
            allowance = self.allowance.store.get_allowance(self.agent_id)
        except NotFoundError:
            self._duration, self._models = None, frozenset()
            if warn:
                log.warning(
                    "agent %s has no allowance, so no dispatcher will give it work: set"
                    " one, e.g. `agentic allowance set %s --daily-jobs 100`",
                    self.agent_id,
                    self.agent_id,
                )
        except AgenticError as exc:  # the quota store's own failures show on first use
            log.debug("could not read agent %s's allowance: %s", self.agent_id, exc)
        else:
            self._duration = allowance.max_job_duration or None
            self._models = frozenset(allowance.model_allowlist)

    def refresh(self, every: float) -> None:
        """Read again when the last read is ``every`` seconds old."""
        if time.monotonic() - self._read_at >= every:
            self.read()

    def job_limit(self) -> float | None:
        """Seconds an attempt may run: the runner's max_job_duration or the
        allowance's, whichever is smaller; None for no limit."""
        limits = [d for d in (self.max_job_duration, self._duration) if d is not None]
        return min(limits) if limits else None

    def warn_unlisted(self, task_id: str, models: Iterable[str]) -> None:
        """Say when a job used a model outside the allowlist. Only a task naming no
        model can (the reserve checks the one a task names): its tokens are charged
        all the same, since they were spent."""
        allowed = self._models
        unlisted = [m for m in models if allowed and m not in allowed]
        if unlisted:
            log.warning(
                "task %s used %s, not in agent %s's model allowlist (%s): charged all the"
                " same; the task names no model, so none was checked before it ran:"
                " give tasks a model to have the allowlist enforced",
                task_id,
                ", ".join(repr(m) for m in unlisted),
                self.agent_id,
                ", ".join(sorted(allowed)),
            )
