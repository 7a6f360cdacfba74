"""The demo scenario runs the whole system in one process and ends as designed."""

from __future__ import annotations

import itertools
import time

import pytest
from typer.testing import CliRunner

from agentic.cli import app
from agentic.demo import AGENTS, LIMITED, DemoSummary, Progress, run_demo, scenario
from agentic.models import TaskStatus

# One worker of a parallel run for the module: the shared demo run happens once.
pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="module")
def summary() -> DemoSummary:
    """One run of the scenario, shared by the checks below (it takes a few seconds)."""
    started = time.monotonic()
    seen: list[Progress] = []
    result = run_demo(seconds=30, on_progress=seen.append)
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"
    assert seen, "no progress was reported"
    return result


def test_scenario_shape() -> None:
    """About 30 tasks, a 4-link chain, one flaky and one poison task, mixed priorities."""
    specs = scenario()
    assert len(specs) == 30
    assert len({spec.key for spec in specs}) == 30
    assert [s.key for s in specs if s.after or s.key == "chain-1"] == [
        "chain-1",
        "chain-2",
        "chain-3",
        "chain-4",
    ]
    assert len({spec.priority for spec in specs}) == 4
    capabilities = {cap for agent in AGENTS for cap in agent.capabilities}
    assert all(set(spec.labels) <= capabilities for spec in specs)


def test_every_task_reached_its_designed_final_state(summary: DemoSummary) -> None:
    """All final: 29 completed, the poison task dead-lettered, nothing waiting."""
    assert summary.problems == []
    assert summary.ok
    assert summary.waiting == 0
    assert summary.count(TaskStatus.COMPLETED) == 29
    assert [t.spec.key for t in summary.tasks if t.status == TaskStatus.FAILED] == ["poison"]
    poison = next(t for t in summary.tasks if t.spec.key == "poison")
    assert len(poison.attempts) == 2  # max_retries=1: the first try and one retry


def test_the_flaky_task_completed_after_one_retry(summary: DemoSummary) -> None:
    """The flaky task failed once, then completed on its retry."""
    flaky = next(t for t in summary.tasks if t.spec.key == "flaky")
    assert flaky.status == TaskStatus.COMPLETED
    assert flaky.retries == 1
    assert [a.ok for a in flaky.attempts] == [False, True]
    assert summary.retried == 1


def test_the_dependency_chain_ran_in_order(summary: DemoSummary) -> None:
    """Each link started only after the previous link had finished."""
    chain = [next(t for t in summary.tasks if t.spec.key == f"chain-{n}") for n in range(1, 5)]
    assert all(t.status == TaskStatus.COMPLETED for t in chain)
    for before, after in itertools.pairwise(chain):
        assert min(a.started for a in after.attempts) >= max(a.ended for a in before.attempts)


def test_the_limited_agent_stopped_at_its_job_limit(summary: DemoSummary) -> None:
    """The reviewer used exactly its daily jobs; work it could do went on elsewhere."""
    limit = next(agent.daily_job_limit for agent in AGENTS if agent.id == LIMITED)
    reviewer = next(agent for agent in summary.agents if agent.id == LIMITED)
    assert reviewer.jobs_started == limit
    assert summary.limit_reached_at is not None
    ran_there = [t for t in summary.tasks if any(a.agent_id == LIMITED for a in t.attempts)]
    assert len(ran_there) == limit
    assert {"review-1", "review-2"} <= {t.spec.key for t in ran_there}
    # Once the limit was reached, tasks the reviewer could do kept running elsewhere.
    elsewhere = [
        a
        for t in summary.tasks
        for a in t.attempts
        if set(t.spec.labels) <= {"python", "review"} and a.started > summary.limit_reached_at
        if a.agent_id != LIMITED
    ]
    assert elsewhere


def test_no_quota_was_exceeded(summary: DemoSummary) -> None:
    """No agent went past its job or token limit; usage and cost were recorded."""
    assert [agent.spec for agent in summary.agents] == list(AGENTS)
    for agent in summary.agents:
        spec = agent.spec
        assert not spec.daily_job_limit or agent.jobs_started <= spec.daily_job_limit
        assert not spec.daily_token_limit or agent.tokens_used <= spec.daily_token_limit
        assert agent.tokens_used > 0 and agent.cost_cents > 0
    assert sum(tokens for tokens, _ in summary.models.values()) == sum(
        agent.tokens_used for agent in summary.agents
    )
    writer = next(t for t in summary.tasks if t.spec.key == "docs-1")
    assert {a.agent_id for a in writer.attempts} == {"writer"}


def test_demo_command_exits_0() -> None:
    """`agentic demo --no-live` prints progress and the summary and exits 0."""
    result = CliRunner().invoke(app, ["demo", "--no-live"])
    assert result.exit_code == 0, result.output
    assert "Every task ended as designed." in result.stdout
    assert "Usage per model" in result.stdout and "model-large" in result.stdout


def test_running_out_of_time_is_reported() -> None:
    """A run stopped before every task is final lists the unfinished work as a problem."""
    started = time.monotonic()
    short = run_demo(seconds=0.5)
    assert time.monotonic() - started < 20  # shutdown does not wait for the whole scenario
    assert not short.ok
    assert short.waiting > 0
    assert any("not final" in problem for problem in short.problems)
