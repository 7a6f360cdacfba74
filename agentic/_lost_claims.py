"""The dispatcher's side of claim fencing: what became of a claim whose answer was lost.

A claim that got no usable answer (none at all, a 5xx from a proxy, a 2xx body that
does not parse) may have been made. Its reservation must not be given back while the
job may run, nor kept for an hour when it was not made. A task API with
``claim_fencing`` is asked to *withdraw* the claim: its answer is final, since a claim
still on its way is refused once withdrawn. Older servers are read back, which cannot
see a claim still on its way. Claims no server could answer for are kept here by job
id and asked about on later passes, for at most a reservation's lifetime.

Private: :class:`agentic.dispatcher.Dispatcher` is the public face. Every method
takes the task client as its first argument rather than keeping one, so that the
dispatcher's ``client`` stays the one client used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .client import TaskClient
from .errors import APIError, ConflictError, NotFoundError, TransportError
from .models import Task, TaskStatus
from .quota import DEFAULT_RESERVATION_TTL

__all__ = ["LostClaims", "ServerFeatures", "maybe_made"]

# Logged as the dispatcher's own lines: operators filter on that logger.
log = logging.getLogger("agentic.dispatcher")

_FATE = {True: "it was made", False: "withdrawn, its reservation goes back"}

# The fencing a dispatcher relies on and what a task API without it leaves open (an
# older agentic server mid-upgrade, or go-agentic's), said when the features are read.
_FENCING = {
    "claim_fencing": "a claim whose answer was lost is settled by reading the task back,"
    " which cannot see a claim still on its way",
    "update_fencing": "a failure recorded may land on a task failed and retried since it"
    " was listed (taking the previous run's retry count)",
}


def maybe_made(error: Exception) -> bool:
    """Whether a claim that failed with ``error`` may still have been made."""
    if isinstance(error, TransportError):
        return True  # sent, maybe, with no answer
    # A 5xx may come from a proxy after the server acted; a 2xx that did not parse
    # is an answer we cannot read. Other refusals (4xx, 409 above all) are definite.
    return isinstance(error, APIError) and (error.code >= 500 or 200 <= error.code < 300)


class ServerFeatures:
    """The task API's features (``claim_fencing``, ``list_pages``, ...), read from its
    health check at first need and kept until :meth:`forget` (an answer showed that
    the server behind the address may have changed)."""

    def __init__(self) -> None:
        self._known: frozenset[str] | None = None
        self._unfenced: list[str] = []  # the fencing last said missing

    def has(self, client: TaskClient, feature: str) -> bool | None:
        """Whether the task API lists ``feature``, asked when not known; None when
        it cannot be asked (each caller says what not knowing means for it)."""
        if self._known is None:
            try:
                self._known = client.server_features()
            except Exception as exc:
                log.debug("could not read the task API's features: %s", exc)
                return None
            self._say_unfenced(client.base_url, self._known)
        return feature in self._known

    def _say_unfenced(self, where: str, known: frozenset[str]) -> None:
        """Warn of the fencing the task API lacks, once for each change of it."""
        missing = [feature for feature in _FENCING if feature not in known]
        if missing and missing != self._unfenced:
            log.warning(
                "the task API at %s does not list %s (an older agentic server, or"
                " go-agentic's): %s. Upgrade the server.",
                where,
                " or ".join(missing),
                "; ".join(_FENCING[feature] for feature in missing),
            )
        self._unfenced = missing

    def known(self, feature: str) -> bool | None:
        """Whether the task API lists ``feature``, without asking; None while not known."""
        return None if self._known is None else feature in self._known

    def forget(self) -> None:
        """Ask again at the next need."""
        self._known = None


class LostClaims:
    """Claims whose answer was lost: decided now when the server can tell, else kept
    (by job id, each settled on its own) and decided on a later pass.

    ``unreserve`` gives a reservation back; it is called for every claim found not
    made, and must not raise (it logs and counts its own failures).
    """

    def __init__(self, features: ServerFeatures, unreserve: Callable[[str], None]) -> None:
        self.features = features
        self._unreserve = unreserve
        #: job id -> (task id, monotonic time) of claims whose outcome is not known yet
        self.unsure: dict[str, tuple[str, float]] = {}

    def keep(self, job_id: str, task_id: str) -> None:
        """Remember a claim no server could answer for, to decide it later."""
        self.unsure[job_id] = (task_id, time.monotonic())

    def task_ids(self) -> set[str]:
        """The tasks with a claim still undecided: none of them may be claimed again
        meanwhile (that claim may be made, and would hold the task)."""
        return {task_id for task_id, _since in self.unsure.values()}

    def made(self, client: TaskClient, task_id: str, job_id: str) -> bool | None:
        """Whether a claim whose answer was lost or garbled was made: the task carries
        the job id of the claim that took it, whatever happened to it since. ``None``
        when the server cannot tell.

        A task API with ``claim_fencing`` is asked to withdraw the claim: its answer
        is final, since a claim still on its way (a slow server, a proxy's retry) is
        refused once withdrawn. Reading the task back, against older servers, cannot
        see such a claim, which may land after its reservation was given back.
        """
        withdraws = self.features.has(client, "claim_fencing")
        if withdraws is None:  # a read back could be wrong: ask again next pass
            log.warning("claim of task %s: no usable answer; task API unreachable", task_id)
            return None
        if withdraws:
            try:
                made = client.withdraw_claim(task_id, job_id)
            except NotFoundError:
                return self._withdraw_missing(client, task_id)
            except Exception as exc:  # the question stays open
                log.warning("claim of task %s: no usable answer, not withdrawn (%s)", task_id, exc)
                return None
            log.info("claim of task %s got no usable answer: %s", task_id, _FATE[made])
            return made
        try:
            current = client.get_task(task_id)
        except NotFoundError:
            return False  # the task is gone: no claim of it runs
        except Exception as exc:  # any other failure to read back leaves the question open
            log.warning("claim of task %s: no usable answer and no read-back (%s)", task_id, exc)
            return None
        if current.job_id == job_id:
            log.info("claim of task %s got no usable answer but was made", task_id)
            return True
        return False

    def require_carried(self, client: TaskClient, task_id: str, job_id: str) -> None:
        """Raise ConflictError when the task became final under another claim or none:
        a claim whose answer was lost is then not announced (task_claimed,
        task_dispatched). Only for servers that withdraw (a read back checked it
        otherwise).

        Withdraw answers "made" for a task completed meanwhile whatever that claim's
        fate (its reservation is then left to expire rather than taken back from a
        job that may have run), and for a failed one when the claim was made and
        replaced or given back since: no claim is made up for it. A task still open
        that no longer carries the job id was claimed under it and given back or
        claimed again since (withdraw knows: the job id is retired as made), so it is
        announced. A task that cannot be read back is taken at the server's word.
        """
        try:
            current = client.get_task(task_id)
        except Exception as exc:  # the server said made: trust it
            log.debug("claim of task %s: made; not read back (%s)", task_id, exc)
            return
        if current.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) and current.job_id != job_id:
            raise ConflictError(
                f"task {task_id} became {current.status} under another claim or none; the"
                f" lost claim {job_id} is not announced and its reservation is left to expire"
            )

    def _withdraw_missing(self, client: TaskClient, task_id: str) -> bool | None:
        """A 404 from withdraw: the task is gone (False), or the server that answered
        has no withdraw route (an older replica behind the same address during an
        upgrade): then nothing is known, and the features are asked for again."""
        try:
            client.get_task(task_id)
        except NotFoundError:
            return False  # the task is gone: no claim of it runs
        except Exception as exc:
            log.warning("claim of task %s: withdraw answered 404; no read-back (%s)", task_id, exc)
            return None
        log.warning(
            "claim of task %s: the task exists but withdraw answered 404 (a server without"
            " claim fencing?); its reservation is kept and the question asked again",
            task_id,
        )
        self.features.forget()
        return None

    def settle(self, client: TaskClient, pending: list[Task]) -> None:
        """Decide the claims kept by earlier passes.

        Withdrawn, or (servers without claim fencing) pending again under another
        job id or none: that claim was not made, its reservation goes back. Made, in
        any status: the runner settles.
        """
        listed = {task.id: task for task in pending}
        for job_id, (task_id, since) in list(self.unsure.items()):
            # the listing is a read-back: only for servers known not to withdraw
            known_not = self.features.known("claim_fencing") is False
            task = listed.get(task_id) if known_not else None
            made = self.made(client, task_id, job_id) if task is None else task.job_id == job_id
            if made is None and time.monotonic() - since < DEFAULT_RESERVATION_TTL:
                continue  # still unreadable: ask again next pass
            # Known, or asked for longer than a reservation lives: it has expired anyway.
            del self.unsure[job_id]
            if made is False:
                self._unreserve(job_id)
