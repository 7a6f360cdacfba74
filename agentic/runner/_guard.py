"""Run a task's command and end its whole process group if the agent dies.

``SubprocessHandler`` starts ``python -I _guard.py AGENT_PID KILL_GRACE STATUS_FD -- CMD
...`` in a new session instead of ``CMD`` itself. The guard runs ``CMD`` as its child,
in the guard's process group (stdin, stdout and stderr are inherited, so the agent
reads the command's output as before) and exits with its status: its code, or the
signal that ended it, raised again on the guard. On STATUS_FD (a pipe to the agent,
closed right after) it writes ``started``, or why the command could not start (an
exec format error, a bad interpreter line): the agent then tells a broken machine
from a failed task, which an exit code cannot (127 is also a script's own).

What it adds: when the agent process disappears (``kill -9``, out of memory) the guard
is re-parented, notices within ``_CHECK`` seconds, and ends the group (SIGTERM, then
SIGKILL after KILL_GRACE), so the task's command does not go on running next to the
copy another agent starts once the lease expires. A watchdog that polls its parent id
works everywhere; Linux's PR_SET_PDEATHSIG would need ``preexec_fn``, which is unsafe
in a threaded process such as the runner.

Run as a file (never imported through the package), it uses only the standard
library, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import NoReturn

_CHECK = 0.25  # seconds between looks at the parent


def _ignore(_signum: int, _frame: object) -> None:
    """The agent signals the whole group, the command included: the guard waits for the
    command to end. (A handler, not SIG_IGN, which the command would inherit.)"""


def _end_group(child: subprocess.Popen[bytes], grace: float) -> NoReturn:
    """SIGTERM the group; once the command ended (or after ``grace``) SIGKILL what is
    left of it, the guard included: its descendants get no more time than it took."""
    group = os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(grace)
    os.killpg(group, signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # not reached: the guard is in the group


def main(argv: list[str]) -> int:
    """``AGENT_PID KILL_GRACE STATUS_FD -- CMD ...``; the command's exit status."""
    if len(argv) < 5 or argv[3] != "--":
        print("usage: _guard.py AGENT_PID KILL_GRACE STATUS_FD -- CMD ...", file=sys.stderr)
        return 2
    agent, grace, command = int(argv[0]), float(argv[1]), argv[4:]
    with os.fdopen(int(argv[2]), "wb") as status:
        signal.signal(signal.SIGTERM, _ignore)
        if os.getppid() != agent:  # the agent died before the guard started
            return 128 + signal.SIGTERM
        try:
            child = subprocess.Popen(command)
        except OSError as exc:
            status.write(str(exc).encode("utf-8", "replace"))
            return 127
        status.write(b"started")
    while True:
        try:
            code = child.wait(_CHECK)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != agent:  # re-parented: the agent is gone
                _end_group(child, grace)
    if os.getppid() != agent:
        # The command ended because the agent died (SIGPIPE on its output, say):
        # what it started may still run in the group.
        _end_group(child, 0)
    if code < 0:  # ended by a signal: end the same way, so the agent sees it
        with contextlib.suppress(OSError, ValueError):  # SIGKILL/SIGSTOP have no handler
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
