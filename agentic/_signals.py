"""Turning SIGTERM / SIGINT into a stop event (and a second one into a hurry)."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["late_signals_logged", "stop_on_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: seconds within which the same signal again is one delivery, not a second signal:
#: supervisors such as GNU `timeout` (and a terminal's Ctrl-C) signal both a process
#: and its group, so one request can arrive twice at once; a person sends a second
#: one far later than this
_ECHO = 0.2

log = logging.getLogger("agentic")


def stop_on_signals(
    stop: threading.Event,
    what: str,
    *,
    hurry: threading.Event | None = None,
    hurry_what: str = "",
) -> Callable[[], None]:
    """Make SIGTERM/SIGINT set ``stop``; returns how to put the old handlers back.

    ``what`` says in the log what happens next (e.g. "stopping after this pass").
    A second signal (either of the two; the same one within ``_ECHO`` seconds is the
    first one delivered twice) sets ``hurry`` when given, and logs ``hurry_what``
    (what is cut short); later ones are logged and change nothing.

    Signal handlers can only be installed from the main thread; elsewhere the
    caller's ``stop`` event is the only way to end the loop.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    received = 0
    first: tuple[int, float] = (0, -math.inf)  # the first signal and when it came

    def handler(signum: int, frame: FrameType | None) -> None:
        # Only sets events and logs: it runs between two bytecodes of the main thread,
        # which may hold any lock of ours at that moment.
        nonlocal received, first
        now = time.monotonic()
        if received == 1 and first[0] == signum and now - first[1] < _ECHO:
            log.debug("signal %d again at once: the same request, delivered twice", signum)
            return
        received += 1
        if received == 1:
            first = (signum, now)
        if received == 1 or not stop.is_set():
            log.info("signal %d: %s", signum, what)
            stop.set()
        elif hurry is not None and not hurry.is_set():
            log.warning("signal %d again: %s", signum, hurry_what or "stopping now")
            hurry.set()
        else:
            log.info("signal %d again: already stopping", signum)

    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


@contextlib.contextmanager
def late_signals_logged() -> Iterator[Callable[[], None]]:
    """For a command's last steps once its loop has stopped (closing emitters and
    stores): calling the function yielded makes SIGTERM/SIGINT logged instead of
    ending the process halfway (a second Ctrl-C just after the loop returned, when
    its own handlers are gone); the handlers in place on entry come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}

    def late(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d again: already stopping", signum)

    def arm() -> None:
        for sig in _SIGNALS:
            signal.signal(sig, late)

    try:
        yield arm
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, old)
