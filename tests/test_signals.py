"""SIGTERM / SIGINT as a stop event, and a second one as a hurry (``agentic._signals``)."""

from __future__ import annotations

import os
import signal
import threading
import time

from agentic._signals import _ECHO, stop_on_signals


def test_one_signal_delivered_twice_at_once_is_not_a_second_signal() -> None:
    """The same signal again within a moment (a supervisor signalling the process and
    its group) only stops; one that comes later hurries."""
    stop, hurry = threading.Event(), threading.Event()
    restore = stop_on_signals(stop, "stopping", hurry=hurry, hurry_what="now")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handlers run in this thread, between bytecodes
        assert stop.is_set() and not hurry.is_set()
        time.sleep(_ECHO)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert hurry.is_set()
    finally:
        restore()


def test_another_signal_at_once_is_a_second_signal() -> None:
    """SIGINT right after SIGTERM is a second request, not an echo: it hurries."""
    stop, hurry = threading.Event(), threading.Event()
    restore = stop_on_signals(stop, "stopping", hurry=hurry, hurry_what="now")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.is_set() and hurry.is_set()
    finally:
        restore()
