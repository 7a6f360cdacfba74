"""The runner's reused threads: each call on a thread of its own, threads kept between calls."""

from __future__ import annotations

import contextvars
import gc
import logging
import threading
import weakref
from collections.abc import Callable

import pytest

from agentic.runner._threads import Threads

_WAIT = 5.0


def _until(check: Callable[[], bool], timeout: float = _WAIT) -> None:
    """Wait until ``check()`` is true, or fail."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")


def test_a_call_that_never_returns_does_not_keep_the_next_from_running() -> None:
    """A blocked call holds only its own thread: later calls still run at once."""
    threads = Threads("t")
    release = threading.Event()
    ran = threading.Event()
    threads.run("blocked", lambda: release.wait(_WAIT))
    threads.run("next", ran.set)
    assert ran.wait(_WAIT)
    release.set()


def test_an_ended_calls_thread_runs_the_next_call() -> None:
    """A thread whose call ended waits and is given the next call (no new thread)."""
    threads = Threads("t")
    seen: list[int] = []
    first = threading.Event()
    threads.run("one", _steps(lambda: seen.append(threading.get_ident()), first.set))
    assert first.wait(_WAIT)
    _until(lambda: threads.waiting == 1)
    second = threading.Event()
    threads.run("two", _steps(lambda: seen.append(threading.get_ident()), second.set))
    assert second.wait(_WAIT)
    assert seen[0] == seen[1]


def test_each_call_runs_under_its_own_thread_name() -> None:
    """The thread is named after the call it runs, as a thread per call was."""
    threads = Threads("t")
    names: list[str] = []
    for name in ("agentic-task-a", "agentic-task-b"):
        done = threading.Event()
        threads.run(name, _steps(lambda: names.append(threading.current_thread().name), done.set))
        assert done.wait(_WAIT)
        _until(lambda: threads.waiting == 1)
    assert names == ["agentic-task-a", "agentic-task-b"]


def test_context_variables_set_by_a_call_do_not_reach_the_next() -> None:
    """Each call starts in a fresh context, as a new thread does."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    threads = Threads("t")
    seen: list[str] = []
    done = threading.Event()
    threads.run("set", _steps(lambda: var.set("task-1"), done.set))
    assert done.wait(_WAIT)
    _until(lambda: threads.waiting == 1)
    done.clear()
    threads.run("read", _steps(lambda: seen.append(var.get()), done.set))
    assert done.wait(_WAIT)
    assert seen == ["unset"]


def test_a_thread_idle_past_linger_ends() -> None:
    """A thread left waiting longer than ``linger`` ends; none stays behind."""
    threads = Threads("linger", linger=0.05)
    done = threading.Event()
    threads.run("one", done.set)
    assert done.wait(_WAIT)
    _until(lambda: threads.waiting == 0 and not _alive("linger-idle"))


def test_no_more_than_keep_threads_wait() -> None:
    """Threads beyond ``keep`` end when their call does instead of waiting."""
    threads = Threads("keep", keep=2)
    release = threading.Event()
    started = threading.Barrier(5)
    for i in range(4):
        threads.run(f"c{i}", _steps(lambda: started.wait(_WAIT), lambda: release.wait(_WAIT)))
    started.wait(_WAIT)
    release.set()
    _until(lambda: threads.waiting == 2)
    _until(lambda: _count("keep-idle") == 2)


def test_an_error_escaping_a_call_is_logged_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An uncaught error is logged with the call's name; the thread serves the next call."""
    threads = Threads("t")

    def boom() -> None:
        raise RuntimeError("bug")

    with caplog.at_level(logging.ERROR, logger="agentic.runner"):
        threads.run("agentic-task-x", boom)
        _until(lambda: threads.waiting == 1)
    assert "agentic-task-x: uncaught error" in caplog.text
    done = threading.Event()
    threads.run("next", done.set)
    assert done.wait(_WAIT)


class _Call:
    """A call that stands for a finished attempt (what an idle thread must not keep)."""

    def __call__(self) -> None:
        pass


def test_a_waiting_thread_keeps_nothing_of_the_calls_it_ran() -> None:
    """Neither the last call (idle) nor the thread's first (reused) stays referenced:
    a finished attempt, with its result, is freed."""
    threads = Threads("memory")
    first, last = _Call(), _Call()
    refs = [weakref.ref(first), weakref.ref(last)]
    threads.run("first", first)
    _until(lambda: threads.waiting == 1)
    threads.run("last", last)
    _until(lambda: threads.waiting == 1)
    del first, last
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def _steps(*steps: Callable[[], object]) -> Callable[[], None]:
    """One call that runs ``steps`` in turn."""

    def run() -> None:
        for step in steps:
            step()

    return run


def _count(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def _alive(name: str) -> bool:
    return _count(name) > 0
