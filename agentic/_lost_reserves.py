"""The dispatcher's side of a reserve whose answer was lost.

A reserve that fails with a store error (a timeout above all) may still have been
carried out: a Redis that stalled runs the command already in its socket buffer when
it resumes, after the client gave up. Nothing else would give that reservation
back: no claim is sent under its job id, so no runner settles it, and it would hold
its agent's slot, a daily job and its tokens until it expires (an hour by default).
Giving it back with ``unreserve`` is not enough: if the reservation has not landed
yet, there is nothing to undo, and it lands afterwards.

So the job id is kept here, and withdrawn (:meth:`AllowanceStore.withdraw`) at the
start of each later pass until the store answers. A withdraw undoes the reservation
if it landed, and marks the job id so that a reserve of it still on its way is
refused and holds nothing.

Private: :class:`agentic.dispatcher.Dispatcher` is the public face.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from .allowance import AllowanceService
from .errors import AgenticError, StoreError

__all__ = ["LostReserves"]

# Logged as the dispatcher's own lines: operators filter on that logger.
log = logging.getLogger("agentic.dispatcher")

#: job ids kept at most; past it the oldest is dropped (its reservation, if made,
#: expires with its lifetime, as before withdrawals existed)
_KEPT = 10_000


class LostReserves:
    """Job ids whose reserve failed with a store error: withdrawn once per pass, oldest
    first, until the store answers.

    ``failed`` is called once for each withdrawal that failed (the dispatcher counts
    it as an error).
    """

    def __init__(self, allowance: AllowanceService, failed: Callable[[], None]) -> None:
        self._allowance = allowance
        self._failed = failed
        #: job id -> agent id of reserves whose outcome is not known, oldest first
        self.unsure: OrderedDict[str, str] = OrderedDict()
        # Whether the last withdrawal failed: warned once per run of failures.
        self._failing = False

    def keep(self, job_id: str, agent_id: str, error: StoreError) -> None:
        """Remember a reserve that failed with ``error``: it may have been made."""
        log.warning(
            "reserve of job %s for %s failed (%s); it may have been made, and is withdrawn"
            " at the next pass the quota store answers",
            job_id,
            agent_id,
            error,
        )
        self.unsure[job_id] = agent_id
        while len(self.unsure) > _KEPT:
            dropped, owner = self.unsure.popitem(last=False)
            log.warning("reserve of job %s for %s forgotten unwithdrawn: too many", dropped, owner)

    def withdraw(self) -> None:
        """Withdraw the kept job ids. The first store failure ends the round (the store
        is down: the others would fail too), so a pass makes one failing call at most."""
        for job_id, agent_id in list(self.unsure.items()):
            error: StoreError | None = None
            try:
                done = self._allowance.withdraw(job_id)
            except StoreError as exc:
                done, error = None, exc
            except AgenticError as exc:  # a refusal no repeat changes: given up
                self._failed()
                log.error("reserve of job %s for %s not withdrawn: %s", job_id, agent_id, exc)
                del self.unsure[job_id]
                continue
            if done is None:  # raised, or None from a service failing open
                self._failed()
                level = logging.DEBUG if self._failing else logging.WARNING
                self._failing = True
                log.log(
                    level,
                    "could not withdraw the reserve of job %s for %s (%s); asked again next pass",
                    job_id,
                    agent_id,
                    error or "quota store unreachable",
                )
                return
            self._failing = False
            del self.unsure[job_id]
            if done.duplicate:
                log.info("reserve of job %s for %s: withdrawn already", job_id, agent_id)
            elif done.agent_id:
                log.info("reserve of job %s for %s had been made: given back", job_id, agent_id)
            else:
                log.info("reserve of job %s for %s not made: it never will be", job_id, agent_id)
