"""SIGTERM / SIGINT as a stop event, and a second one as a hurry; for a loop in a
background thread, a stop first and then their usual effect (``agentic._signals``)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from agentic._signals import _ECHO, StopFirst, stop_on_signals


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


def test_stop_first_stops_the_loop_then_lets_the_signal_act() -> None:
    """Under StopFirst a signal only stops the loop; once the loop has ended, that
    signal takes its default effect (SIGINT: KeyboardInterrupt in the main thread)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    relay = StopFirst(stop, "stopping the loop first")
    try:
        relay.install()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.is_set()  # and no KeyboardInterrupt yet
        with pytest.raises(KeyboardInterrupt):
            relay.ended()
            time.sleep(0.5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        relay.restore()  # SIGTERM's
        signal.signal(signal.SIGINT, previous)


def test_stop_first_leaves_a_programs_own_handler_alone() -> None:
    """A signal the program handles itself is not taken over; restore() puts back the
    defaults it replaced, and ended() without a signal does nothing."""
    stop, seen = threading.Event(), []

    def own(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, own)
    relay = StopFirst(stop, "stopping")
    try:
        relay.install()
        assert signal.getsignal(signal.SIGINT) is own
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert seen == [signal.SIGINT] and not stop.is_set()
        relay.ended()
        relay.restore()
        assert signal.getsignal(signal.SIGINT) is own
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_two_stop_firsts_both_stop_before_the_signal_acts() -> None:
    """Two loops started in one program (two runners): one SIGINT stops both, and it
    takes its default effect only once both have ended."""
    stops = [threading.Event(), threading.Event()]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    relays = [StopFirst(stop, "stopping") for stop in stops]
    try:
        for relay in relays:
            relay.install()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert all(stop.is_set() for stop in stops)
        relays[0].ended()
        time.sleep(0.3)  # no KeyboardInterrupt: the second loop is still shutting down
        with pytest.raises(KeyboardInterrupt):
            relays[1].ended()
            time.sleep(0.5)
    finally:
        for relay in relays:
            relay.restore()
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_stop_firsts_restored_in_any_order_put_the_defaults_back() -> None:
    """The handler stays while any loop installed is not restored; the last restore
    puts the defaults back; one that ended on its own sends no signal."""
    relays = [StopFirst(threading.Event(), "stopping") for _ in range(2)]
    for relay in relays:
        relay.install()
    relays[0].ended()  # ended with no signal: nothing is sent
    time.sleep(0.05)
    relays[0].restore()
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    relays[1].restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_the_program_sets_after_install_is_left_alone() -> None:
    """A program setting its own SIGTERM handler after start(): restore keeps it, and
    the SIGINT default comes back."""
    relay = StopFirst(threading.Event(), "stopping")
    relay.install()

    def own(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGTERM, own)
    try:
        relay.restore()
        assert signal.getsignal(signal.SIGTERM) is own
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
