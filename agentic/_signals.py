"""Turning SIGTERM / SIGINT into a stop event (and a second one into a hurry)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["StopFirst", "late_signals_logged", "stop_on_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: seconds within which the same signal again is one delivery, not a second signal:
#: supervisors such as GNU `timeout` (and a terminal's Ctrl-C) signal both a process
#: and its group, so one request can arrive twice at once; a person sends a second
#: one far later than this
_ECHO = 0.2

log = logging.getLogger("agentic")


class _Requests:
    """A signal handler counting stop requests: the first sets ``stop``, a second
    (either signal; the same one within ``_ECHO`` seconds is the first one delivered
    twice) sets ``hurry``, later ones are logged and change nothing."""

    def __init__(
        self, stop: threading.Event, what: str, hurry: threading.Event | None, hurry_what: str
    ) -> None:
        self.stop, self.what, self.hurry, self.hurry_what = stop, what, hurry, hurry_what
        self.received = 0
        self.first: tuple[int, float] = (0, -math.inf)  # the first signal and when it came

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Only sets events and logs: it runs between two bytecodes of the main thread,
        # which may hold any lock of ours at that moment.
        now = time.monotonic()
        if self.received == 1 and self.first[0] == signum and now - self.first[1] < _ECHO:
            log.debug("signal %d again at once: the same request, delivered twice", signum)
            return
        self.received += 1
        if self.received == 1:
            self.first = (signum, now)
        if self.received == 1 or not self.stop.is_set():
            log.info("signal %d: %s", signum, self.what)
            self.stop.set()
        elif self.hurry is not None and not self.hurry.is_set():
            log.warning("signal %d again: %s", signum, self.hurry_what or "stopping now")
            self.hurry.set()
        else:
            log.info("signal %d again: already stopping", signum)


def stop_on_signals(
    stop: threading.Event,
    what: str,
    *,
    hurry: threading.Event | None = None,
    hurry_what: str = "",
) -> Callable[[], None]:
    """Make SIGTERM/SIGINT set ``stop``; returns how to put the old handlers back.

    ``what`` says in the log what happens next (e.g. "stopping after this pass").
    A second signal sets ``hurry`` when given, and logs ``hurry_what`` (what is cut
    short); later ones are logged and change nothing (see ``_Requests``).

    Signal handlers can only be installed from the main thread; elsewhere the
    caller's ``stop`` event is the only way to end the loop.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    handler = _Requests(stop, what, hurry, hurry_what)
    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


class StopFirst:
    """SIGTERM/SIGINT for a loop in a background thread of a program that left them
    at their defaults: they stop the loop first (as ``stop_on_signals``), and once it
    has ended, the signal that stopped it takes its usual effect (the process ends;
    Ctrl-C raises KeyboardInterrupt in the main thread). Without this, SIGTERM ends
    such a program at once, its loop's shutdown never run.

    ``install`` from the main thread (elsewhere it does nothing), and only where the
    program set no handler of its own; ``ended`` from any thread when the loop is
    done; ``restore`` (main thread) puts the defaults back once no loop installed
    is left. Loops installed together (two runners started in one program) share
    one handler: a signal stops each, and acts once the last of them has ended.
    """

    def __init__(
        self,
        stop: threading.Event,
        what: str,
        *,
        hurry: threading.Event | None = None,
        hurry_what: str = "",
    ) -> None:
        self._requests = _Requests(stop, what, hurry, hurry_what)
        self._signals: set[int] = set()  # the signals handled here
        self._ended = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with _SHARED:
            for sig in _SIGNALS:
                current = signal.getsignal(sig)
                if current is _relay:  # another loop's: shared
                    self._signals.add(sig)
                elif current in (signal.SIG_DFL, signal.default_int_handler):
                    _DEFAULTS[sig] = signal.signal(sig, _relay)
                    self._signals.add(sig)
            if self._signals:
                _INSTALLED.append(self)

    def ended(self) -> None:
        """The loop is done: the signal that stopped it, if one did, acts now (once
        no other loop it stopped is still shutting down: the last one's end acts)."""
        with _SHARED:  # a signal handled meanwhile either stops this loop or acts
            self._ended = True
            if not self._requests.received:
                return
            signum = self._requests.first[0]
            if any(not other._ended and other._requests.received for other in _INSTALLED):
                return
        os.kill(os.getpid(), signum)  # handled in the main thread

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with _SHARED:
            if self in _INSTALLED:
                _INSTALLED.remove(self)
            for sig in self._signals:
                if any(sig in other._signals for other in _INSTALLED):
                    continue
                default = _DEFAULTS.pop(sig, None)
                if default is not None and signal.getsignal(sig) is _relay:
                    signal.signal(sig, default)  # not replaced since


#: held while the loops installed change, and while a signal is handled (an RLock:
#: the handler runs in the main thread, which may be installing or restoring)
_SHARED = threading.RLock()
#: the StopFirst loops installed and not restored, in order
_INSTALLED: list[StopFirst] = []
#: signal -> the default ``_relay`` replaced
_DEFAULTS: dict[int, Any] = {}


def _relay(signum: int, frame: FrameType | None) -> None:
    """The StopFirst handler: the signal stops each loop not ended; with none left,
    it takes the default's effect."""
    with _SHARED:
        running = [one for one in _INSTALLED if signum in one._signals and not one._ended]
        for one in running:
            one._requests(signum, frame)
        if running:
            return
        default = _DEFAULTS.get(signum, signal.SIG_DFL)
    signal.signal(signum, default)
    if default is signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action: the process ends
    elif callable(default):
        default(signum, frame)  # default_int_handler: KeyboardInterrupt


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
