"""Settling the job usage files of agent ids no runner runs (``agentic admin
settle-usage``): a runner settles what its predecessor left only when it starts with
the same agent id, so the files of an id never started again on a machine would wait
for ever. Each id's files are settled under its id lease, taken as a runner takes it
(at once from a holder of this machine that is gone), so the files of a live runner
are never touched; then as a runner's recovery would, for a runner that runs nothing
(:meth:`Recovery.settle_idle`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..allowance import AllowanceService
from ..client import TaskClient
from ..errors import AgenticError, NotFoundError
from ..retry import RetryPolicy
from ..stores.base import AgentRegistry
from ._idlease import IdLease
from ._journal import UsageJournal
from ._recovery import Recovery, Settled
from ._reporting import Reporter

__all__ = ["AgentSettled", "settle_usage"]

# A give-back's release and settle, retried briefly: someone waits for the answer,
# and what still fails keeps its file for the next run of the command.
_RETRY = RetryPolicy(max_retries=2, base=0.5, cap=2.0)


@dataclass(frozen=True)
class AgentSettled:
    """What became of one agent id's usage files."""

    agent_id: str
    #: the id lease's holder when a live runner runs the agent (its files untouched)
    run_by: str | None
    jobs: list[Settled]


def settle_usage(
    state_dir: Path,
    agent_ids: list[str],
    registry: AgentRegistry,
    client: TaskClient,
    allowance: AllowanceService,
    *,
    id_lease: float,
    dry_run: bool,
    on_error: Callable[[str, Exception], None],
) -> list[AgentSettled]:
    """Settle (``dry_run``: only read) the job usage files ``agent_ids`` left in
    ``state_dir``, each under the agent's id lease (``id_lease`` seconds, renewed
    before each job); an id a live runner holds is skipped. A dry run takes the
    lease too, so that what it lists is what a run would find."""
    found = []
    for agent_id in agent_ids:
        lease = IdLease(registry, agent_id, id_lease)
        holder = lease.try_acquire()
        if holder != lease.holder:
            found.append(AgentSettled(agent_id, holder, []))
            continue
        try:
            if not dry_run:
                _deregister(registry, agent_id, on_error)
            journal = UsageJournal(state_dir, agent_id, on_error)
            reporter = Reporter(agent_id, client, allowance, _RETRY, time.sleep, on_error, journal)
            recovery = Recovery(journal, agent_id, client, reporter, on_error)
            recovery.find(tidy=not dry_run)
            jobs = recovery.settle_idle(dry_run, lease.renew)
        finally:
            lease.release()
        found.append(AgentSettled(agent_id, None, jobs))
    return found


def _deregister(
    registry: AgentRegistry, agent_id: str, on_error: Callable[[str, Exception], None]
) -> None:
    """No runner runs the agent (its id lease is ours): the registration its killed
    runner left would have a dispatcher claim the tasks given back here for the dead
    agent again, until the registry reaps it (found in a new-user trial)."""
    try:
        registry.deregister(agent_id)
    except NotFoundError:
        pass
    except AgenticError as exc:
        on_error(
            f"agent {agent_id}: deregistering it failed; dispatchers may claim tasks for it"
            " until it is reaped",
            exc,
        )
