"""The agent-id lease running out unrenewed: a runner stops its work before another
runner could take its id.

The id lease (``_idlease``) lasts ``ttl`` seconds from each renewal that lands. A
runner that cannot reach the registry holds it no longer than that: then a second
runner with the same id may take the id and take up the same claims (same job ids),
and a task would run in both places. So once no renewal has landed for ``ttl -
margin`` seconds (on this process's monotonic clock, from when the last renewal that
landed was sent: the registry set the lease's end after that), the runner **lapses**:
it takes no work and cancels its running attempts, neither reporting nor settling
them, as a displaced runner does (their claims may be another runner's before a
report could land). ``margin`` covers the cancel grace (what a cancelled handler is
given to stop) and a safety: 1 s, or a tenth of the lease when that is longer (a
clock that drifts or steps, a thread that wakes late). The lease a runner asks for
is lengthened when needed so that the time before a lapse still spans three
heartbeats (one renewal that fails never lapses it).

A watch that wakes late (more than ``_LATE`` past its due time: the process was
frozen or starved, no renewal was even tried) asks the registry before lapsing: the
id still this runner's, nothing is cancelled (the runs that ended meanwhile are
reported, not run again).

A renewal that lands again ends the lapse (nobody took the id meanwhile): the runner
takes work again, and the claims still held for its agent id are taken up again by
its poll, as a restarted runner takes them. A renewal that finds another holder
displaces it, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import AgenticError, StoreUnavailableError
from ._attempt import Stop
from ._idlease import IdLease, id_lease_ttl

__all__ = ["IdWatch", "lapse_margin", "runner_id_lease"]

log = logging.getLogger("agentic.runner")

#: seconds of the margin beyond the cancel grace, at least ...
_SAFETY = 1.0
#: ... and this share of the lease when that is more
_SAFETY_SHARE = 0.1
#: heartbeats (renewals) the time before a lapse spans at least
_BEATS_BEFORE_LAPSE = 3
#: seconds past its due time after which the watch woke late: it asks the registry
#: before lapsing (see IdWatch.renewed_since)
_LATE = 1.0


def lapse_margin(ttl: float, cancel_grace: float) -> float:
    """Seconds of the id lease left when a runner that could not renew it lapses:
    its handlers' cancel grace, and a safety."""
    return cancel_grace + max(_SAFETY, _SAFETY_SHARE * ttl)


def runner_id_lease(heartbeat_interval: float, ttl: float | None, cancel_grace: float) -> float:
    """The id lease a runner holds: :func:`id_lease_ttl`, lengthened when the time
    before a lapse (the lease less its margin) would span fewer than three
    heartbeats. The margin is that of the lease held (its safety grows with it):
    ``lease - grace - max(SAFETY, SHARE * lease) >= 3 beats``."""
    base = id_lease_ttl(heartbeat_interval, ttl)
    before = cancel_grace + _BEATS_BEFORE_LAPSE * heartbeat_interval
    return max(base, before + _SAFETY, before / (1 - _SAFETY_SHARE))


class IdWatch:
    """Renews a runner's id lease and lapses it when it ran out unrenewed but for
    the margin (:meth:`run`, on a thread of its own: a renewal that hangs must not
    delay the lapse).

    ``cancel(kind, reason)`` asks the runner's running attempts to stop and says how
    many; ``resume()`` is called when a lapse ends; ``displaced()`` when a renewal
    finds another holder (it stops the runner and says how many attempts it
    cancelled). ``lapsed`` is set and cleared holding ``lock`` (the
    runner's), so no attempt starts once it is set.
    """

    def __init__(
        self,
        lease: IdLease,
        cancel_grace: float,
        lock: threading.Lock,
        *,
        on_error: Callable[[str, Exception], None],
        cancel: Callable[[Stop, str], int],
        resume: Callable[[], None],
        displaced: Callable[[], int],
    ) -> None:
        self.lease = lease
        self.margin = lapse_margin(lease.ttl, cancel_grace)
        #: set while the lease is lapsed: no work is taken
        self.lapsed = threading.Event()
        #: how many times the lease lapsed
        self.lapses = 0
        self._lock = lock
        self._error = on_error
        self._cancel = cancel
        self._resume = resume
        self._displaced = displaced
        self._changed = threading.Condition()
        self._closed = False
        self._lapsed_at = 0.0
        self._last_error: Exception | None = None

    def lapsing(self) -> bool:
        """Whether the lease lapsed, or is due to (the watch about to say so: no
        work may start meanwhile)."""
        renewed = self.lease.renewed_at
        if self.lapsed.is_set():
            return True
        return renewed is not None and time.monotonic() >= renewed + self.lease.ttl - self.margin

    def renew(self) -> bool:
        """Renew the lease (on the heartbeat thread: a hanging task API cannot delay
        it); False once another runner holds it. A registry that fails is logged and
        counted: the lease holds ``ttl`` from the last renewal, the watch lapses it
        before then, and a later renewal tells whether another runner took it."""
        what = f"renewing agent {self.lease.agent_id}'s id lease failed"
        try:
            ours = self.lease.renew()
        except AgenticError as exc:
            self._last_error = exc
            self._error(what, exc)
            return True
        except Exception as exc:  # a bug must not end heartbeats
            self._last_error = exc
            self._error(f"{what} unexpectedly", exc)
            log.exception("id lease renewal failed")
            return True
        if not ours:
            self.close()  # lapsed or not, the displacement decides now
            cancelled = self._displaced()
            log.error(
                "agent %s is now run by %s, which took its id lease (another runner with the"
                " same --id; this one's lease ran out unrenewed, e.g. the registry was out of"
                " reach for over %g s): stopping, %d running task(s) cancelled and not"
                " reported",
                self.lease.agent_id,
                self.lease.displaced_by,
                self.lease.ttl,
                cancelled,
            )
            return False
        if not self.lapsed.is_set():
            return True
        with self._lock:
            self.lapsed.clear()
        with self._changed:
            self._changed.notify_all()  # the watch waits for this renewal
        log.info(
            "agent %s: its id lease was renewed again after %.1f s lapsed (nobody took the"
            " id): taking work again; the tasks still claimed for it are taken up again",
            self.lease.agent_id,
            time.monotonic() - self._lapsed_at,
        )
        self._resume()
        return True

    def run(self) -> None:
        """Lapse the lease once it has less than the margin left unrenewed; then wait
        for a renewal that lands (which ends the lapse) and watch again."""
        while True:
            with self._changed:
                while True:
                    if self._closed:
                        return
                    renewed = self.lease.renewed_at
                    due = None if renewed is None else renewed + self.lease.ttl - self.margin
                    now = time.monotonic()
                    if due is not None and now >= due and not self.lapsed.is_set():
                        break
                    wait = None if due is None or self.lapsed.is_set() else due - now
                    self._changed.wait(wait)
            assert renewed is not None and due is not None  # a due time was found
            if now - due > _LATE and self.renewed_since(renewed):
                continue  # woke late (the process frozen or starved): the id is still ours
            self._lapse(renewed, now)

    def renewed_since(self, renewed: float | None) -> bool:
        """Ask the registry once whether the id is still this runner's (a renewal):
        True when a renewal landed since ``renewed``, or the runner was displaced (the
        displacement decided). For a runner that was frozen (SIGSTOP, a suspended
        machine) past the lapse: no renewal was even tried, nothing shows the registry
        out of reach, and a lapse on waking would come too late to keep a twin from
        running its tasks anyway; it would only throw away the runs that ended
        meanwhile and run them again."""
        if not self._closed:
            self.renew()
        return self._closed or self.lease.renewed_at != renewed

    def close(self) -> None:
        """Stop watching (the runner stops, or was displaced)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _lapse(self, renewed: float, now: float) -> None:
        with self._lock:
            if self.lease.renewed_at != renewed:
                return  # a renewal landed meanwhile
            self.lapses += 1
            self._lapsed_at = now
            self.lapsed.set()
        agent, ttl, unrenewed = self.lease.agent_id, self.lease.ttl, now - renewed
        cancelled = self._cancel(
            Stop.LAPSED,
            f"agent {agent}'s id lease ran out unrenewed (the registry out of reach): another"
            " runner with the same id may take the task over",
        )
        self._error(
            f"agent {agent}: its id lease lapsed (not renewed for {unrenewed:.1f} s of its"
            f" {ttl:g} s: another runner with the same --id may take the id and the tasks"
            f" claimed for it in {max(0.0, ttl - unrenewed):.1f} s): {cancelled} running"
            " task(s) cancelled, neither reported nor settled, and no work taken until the"
            " lease is renewed; last renewal error",
            self._last_error or StoreUnavailableError("no renewal answered"),
        )
