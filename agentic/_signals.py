"""Turning SIGTERM / SIGINT into a stop event."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["stop_on_signals"]

log = logging.getLogger("agentic")


def stop_on_signals(stop: threading.Event, what: str) -> Callable[[], None]:
    """Make SIGTERM/SIGINT set ``stop``; returns how to put the old handlers back.

    ``what`` says in the log what happens next (e.g. "stopping after this pass").

    Signal handlers can only be installed from the main thread; elsewhere the
    caller's ``stop`` event is the only way to end the loop.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: %s", signum, what)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
