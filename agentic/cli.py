"""The ``agentic`` command (needs the ``cli`` extra: ``pip install 'agentic[cli]'``).

Every command takes ``--config FILE`` (else ./agentic.yaml, then
~/.config/agentic/config.yaml; see :func:`agentic.load_config`), and ``--json`` where
its output is data. Exit codes: 0 ok, 1 runtime error, 2 usage or configuration
error. The commands live in ``agentic/_cli/``, one module per group.
"""

from __future__ import annotations

from ._cli._help import App
from ._cli.admin import admin_app
from ._cli.agent import agent_app
from ._cli.demo import demo
from ._cli.dispatch import dispatch
from ._cli.events import events
from ._cli.fleet import agents_app, allowance_app
from ._cli.serve import serve
from ._cli.status import status
from ._cli.tasks import cancel, logs, retry, submit, tasks

__all__ = ["app", "main"]

app = App(
    name="agentic",
    help="Run a fleet of AI agents as one system: task API, dispatcher, agents, quotas.",
    no_args_is_help=True,
    # SDK errors are turned into one line and an exit code; anything else is a bug,
    # and its plain traceback is what a bug report needs.
    pretty_exceptions_enable=False,
)
app.command()(serve)
app.command()(dispatch)
app.add_typer(agent_app, name="agent")
app.command()(submit)
app.command()(cancel)
app.command()(retry)
app.command()(status)
app.command()(logs)
app.command()(events)
app.command()(tasks)
app.add_typer(agents_app, name="agents")
app.add_typer(allowance_app, name="allowance")
app.command()(demo)
app.add_typer(admin_app, name="admin")


def main() -> None:
    """Entry point of the ``agentic`` script."""
    app()
