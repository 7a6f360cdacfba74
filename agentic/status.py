"""``get_status`` / ``format_status``: the fleet at a glance (``agentic status``).

The output keeps go-agentic's three parts::

    Agents: 3 (1 available, 1 busy, 1 offline)
    Tasks:  4 pending, 1 in progress
    Agent           Status      Load    Remaining
    a1              available   0/2     1500 tokens
    a2              busy        2/2     unlimited
    a3              offline     0/-     unknown
"""

from __future__ import annotations

from typing import Protocol

from .client import TaskClient
from .errors import NotFoundError
from .models import AgentStatus, QuotaCheckResult, StatusSummary, TaskStatus
from .stores.base import AgentRegistry

__all__ = ["format_status", "get_status"]


class AllowanceChecker(Protocol):
    """``AllowanceService`` or an ``AllowanceStore``: anything with ``check(agent_id)``."""

    def check(self, agent_id: str) -> QuotaCheckResult: ...


def get_status(
    registry: AgentRegistry | None = None,
    client: TaskClient | None = None,
    allowance: AllowanceChecker | None = None,
) -> StatusSummary:
    """Agents from the registry, task counts from the API, remaining tokens per agent.

    Any part may be ``None`` and is then left empty. An agent without an allowance is
    left out of ``allowance_remaining`` (shown as "unknown"); ``-1`` means unlimited.
    Errors reaching the registry, the API or the quota store are raised: a status
    that silently shows zeros would be worse than none.
    """
    summary = StatusSummary()
    if registry is not None:
        summary.agents = registry.list()
    if client is not None:
        counts = client.count_tasks()  # counted by the server, not listed
        summary.pending_tasks = counts[TaskStatus.PENDING]
        summary.in_progress_tasks = counts[TaskStatus.IN_PROGRESS]
    if allowance is not None:
        for agent in summary.agents:
            try:
                result = allowance.check(agent.id)
            except NotFoundError:
                continue
            summary.allowance_remaining[agent.id] = result.remaining_tokens
    return summary


def _remaining(summary: StatusSummary, agent_id: str) -> str:
    tokens = summary.allowance_remaining.get(agent_id)
    if tokens is None:
        return "unknown"
    return "unlimited" if tokens < 0 else f"{tokens} tokens"


def format_status(summary: StatusSummary) -> str:
    """The summary as go-agentic's text: agent counts, task counts, one row per agent."""
    counts = {status: 0 for status in AgentStatus}
    for agent in summary.agents:
        counts[agent.status] += 1
    parts = [f"{counts[s]} {s}" for s in AgentStatus if counts[s]]
    total = len(summary.agents)
    lines = [f"Agents: {total} ({', '.join(parts)})" if parts else f"Agents: {total}"]
    lines.append(
        f"Tasks:  {summary.pending_tasks} pending, {summary.in_progress_tasks} in progress"
    )
    if summary.agents:
        lines.append(f"{'Agent':<16}{'Status':<12}{'Load':<8}Remaining")
        for agent in sorted(summary.agents, key=lambda a: a.id):
            limit = str(agent.max_load) if agent.max_load else "-"
            load = f"{agent.current_load}/{limit}"
            lines.append(
                f"{agent.id:<16}{agent.status!s:<12}{load:<8}{_remaining(summary, agent.id)}"
            )
    return "\n".join(lines) + "\n"
