"""DefaultRouter and AgentIndex: go-agentic's router cases, defect 13, and properties.

Every go-agentic case runs twice: over a plain list (the linear scan) and over an
AgentIndex, since the two must agree on every decision.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentic.errors import ConfigError, NoEligibleAgentError, NotFoundError
from agentic.models import AgentInfo, AgentStatus, Priority, Task
from agentic.router import AgentIndex, DefaultRouter, TaskRouter, free_ratio, has_room

AVAILABLE, BUSY, OFFLINE = AgentStatus.AVAILABLE, AgentStatus.BUSY, AgentStatus.OFFLINE

Wrap = Callable[[Sequence[AgentInfo]], AgentIndex | Sequence[AgentInfo]]


def agent(
    agent_id: str,
    status: AgentStatus = AVAILABLE,
    caps: Iterable[str] = (),
    load: int = 0,
    max_load: int = 5,
) -> AgentInfo:
    return AgentInfo(
        id=agent_id, status=status, capabilities=list(caps), current_load=load, max_load=max_load
    )


def task(labels: Iterable[str] = (), priority: Priority = Priority.MEDIUM) -> Task:
    return Task(id="t1", labels=list(labels), priority=priority)


@pytest.fixture(params=["list", "index"])
def wrap(request: pytest.FixtureRequest) -> Wrap:
    """Hands the agents to the router as a plain list or as an AgentIndex."""
    if request.param == "index":
        return AgentIndex
    return list


def route(wrap: Wrap, t: Task, agents: Sequence[AgentInfo]) -> str:
    return DefaultRouter().route(t, wrap(agents))


# --- go-agentic's cases, by name ---


def test_capability_match(wrap: Wrap) -> None:
    """An agent holding every label is chosen over one that does not."""
    agents = [agent("agent-a", caps=["go", "testing", "frontend"]), agent("agent-b", caps=["py"])]
    assert route(wrap, task(["go", "testing"]), agents) == "agent-a"


def test_no_labels(wrap: Wrap) -> None:
    """A task without labels matches any agent."""
    assert route(wrap, task(), [agent("agent-a", caps=["go"])]) == "agent-a"


def test_empty_labels(wrap: Wrap) -> None:
    """A task with an empty label list matches an agent without capabilities."""
    assert route(wrap, Task(id="t1", labels=[]), [agent("agent-a")]) == "agent-a"


def test_skips_offline(wrap: Wrap) -> None:
    """An offline agent is never chosen, even when it would score best."""
    agents = [agent("offline-1", OFFLINE), agent("online-1", load=1)]
    assert route(wrap, task(), agents) == "online-1"


def test_busy_with_capacity(wrap: Wrap) -> None:
    """A busy agent below max_load is eligible."""
    assert route(wrap, task(), [agent("busy-1", BUSY, load=2)]) == "busy-1"


def test_busy_unlimited(wrap: Wrap) -> None:
    """A busy agent with max_load 0 (unlimited) is eligible at any load."""
    assert route(wrap, task(), [agent("busy-unlimited", BUSY, load=10, max_load=0)]) == (
        "busy-unlimited"
    )


def test_busy_at_capacity(wrap: Wrap) -> None:
    """A busy agent at max_load is not eligible."""
    with pytest.raises(NoEligibleAgentError, match="at capacity"):
        route(wrap, task(), [agent("full-1", BUSY, load=5)])


def test_no_agents(wrap: Wrap) -> None:
    """An empty fleet raises NoEligibleAgentError saying no agents are registered."""
    with pytest.raises(NoEligibleAgentError, match="no agents are registered"):
        route(wrap, task(), [])


def test_no_capable_agent(wrap: Wrap) -> None:
    """Nobody holding the labels raises NoEligibleAgentError naming the labels."""
    agents = [agent("go-agent", caps=["go"]), agent("py-agent", caps=["python"])]
    with pytest.raises(NoEligibleAgentError, match=r"none of 2 agents has capabilities \[rust\]"):
        route(wrap, task(["rust"]), agents)


def test_all_offline(wrap: Wrap) -> None:
    """Only offline agents raises NoEligibleAgentError counting them as offline."""
    with pytest.raises(NoEligibleAgentError, match=r"offline \(2\) or at capacity \(0\)"):
        route(wrap, task(), [agent("off-1", OFFLINE), agent("off-2", OFFLINE)])


def test_least_loaded(wrap: Wrap) -> None:
    """A normal task goes to the highest free ratio."""
    agents = [
        agent("agent-a", load=3, max_load=10),
        agent("agent-b", load=1, max_load=10),
        agent("agent-c", load=5, max_load=10),
    ]
    assert route(wrap, task(), agents) == "agent-b"


def test_unlimited_gets_max_score(wrap: Wrap) -> None:
    """An unlimited agent scores 1.0 and beats any limited agent with load."""
    agents = [agent("limited", load=1, max_load=10), agent("unlimited", load=5, max_load=0)]
    assert route(wrap, task(priority=Priority.LOW), agents) == "unlimited"


def test_critical_picks_least_loaded(wrap: Wrap) -> None:
    """A critical task goes to the lowest absolute load, not the best ratio."""
    agents = [
        agent("agent-a", load=4, max_load=10),
        agent("agent-b", load=1, max_load=5),
        agent("agent-c", load=2, max_load=10),
    ]
    assert route(wrap, task(priority=Priority.CRITICAL), agents) == "agent-b"


@pytest.mark.parametrize("priority", [Priority.MEDIUM, Priority.CRITICAL])
def test_tie_break_by_id(wrap: Wrap, priority: Priority) -> None:
    """Equal scores go to the lowest id, for normal and critical tasks."""
    agents = [agent("charlie"), agent("alpha"), agent("bravo")]
    assert route(wrap, task(priority=priority), agents) == "alpha"


def test_mixed(wrap: Wrap) -> None:
    """Offline, incapable and full agents are skipped; the best of the rest wins."""
    agents = [
        agent("offline-go", OFFLINE, ["go"]),
        agent("busy-py", BUSY, ["python"], load=1),
        agent("busy-go-full", BUSY, ["go"], load=5),
        agent("busy-go-room", BUSY, ["go"], load=2),
        agent("avail-go", AVAILABLE, ["go"], load=1),
    ]
    assert route(wrap, task(["go"], Priority.HIGH), agents) == "avail-go"


# --- ours ---


@pytest.mark.parametrize("priority", list(Priority))
def test_available_agent_at_max_load_is_not_eligible(wrap: Wrap, priority: Priority) -> None:
    """Defect 13: an agent whose status says available but is at max_load is full."""
    agents = [
        agent("a-full", AVAILABLE, load=3, max_load=3),
        agent("b-room", BUSY, load=4, max_load=9),
    ]
    assert route(wrap, task(priority=priority), agents) == "b-room"
    with pytest.raises(NoEligibleAgentError, match="at capacity"):
        route(wrap, task(priority=priority), agents[:1])


def test_rank_orders_best_first_and_honours_limit(wrap: Wrap) -> None:
    """rank lists every eligible agent best first; limit keeps the first n."""
    agents = [agent("c", load=2), agent("a", load=4), agent("b", load=0), agent("d", load=5)]
    router = DefaultRouter()
    assert router.rank(task(), wrap(agents)) == ["b", "c", "a"]
    assert router.rank(task(), wrap(agents), limit=2) == ["b", "c"]


def test_rank_rejects_a_limit_below_one() -> None:
    """A limit of 0 is a caller error, not an empty answer."""
    with pytest.raises(ConfigError):
        DefaultRouter().rank(task(), [agent("a")], limit=0)


def test_error_names_the_task(wrap: Wrap) -> None:
    """The error message names the task so a log line is enough to act on."""
    with pytest.raises(NoEligibleAgentError, match="task 't1'"):
        route(wrap, task(["gpu"]), [agent("a")])


def test_duplicate_ids_keep_the_last_entry(wrap: Wrap) -> None:
    """A later entry for the same id replaces the earlier one."""
    agents = [agent("a", load=5), agent("a", load=0), agent("b", load=1)]
    assert DefaultRouter().rank(task(), wrap(agents)) == ["a", "b"]


def test_add_load_spreads_one_pass() -> None:
    """Counting new load after each dispatch sends successive tasks to different agents."""
    index = AgentIndex([agent("a", max_load=2), agent("b", max_load=2)])
    router = DefaultRouter()
    picks = []
    for _ in range(4):
        chosen = router.route(task(), index)
        index.add_load(chosen)
        picks.append(chosen)
    assert picks == ["a", "b", "a", "b"]
    with pytest.raises(NoEligibleAgentError, match=r"all 2 capable agents"):
        router.route(task(), index)


def test_add_load_updates_status_and_frees() -> None:
    """A full agent turns busy; a negative delta frees it again, never below zero."""
    index = AgentIndex([agent("a", caps=["go"], max_load=1)])
    assert index.add_load("a").status is BUSY
    with pytest.raises(NoEligibleAgentError):
        DefaultRouter().route(task(["go"]), index)
    freed = index.add_load("a", -5)
    assert (freed.current_load, freed.status) == (0, AVAILABLE)
    assert DefaultRouter().route(task(["go"]), index) == "a"


def test_add_load_keeps_offline_agents_out() -> None:
    """Changing an offline agent's load never makes it eligible."""
    index = AgentIndex([agent("a", OFFLINE, load=2)])
    assert index.add_load("a", -2).status is OFFLINE
    with pytest.raises(NoEligibleAgentError, match="offline"):
        DefaultRouter().route(task(), index)


def test_index_lookup() -> None:
    """The index answers len, membership, get and iteration with current loads."""
    index = AgentIndex([agent("a"), agent("b")])
    index.add_load("b", 2)
    assert len(index) == 2
    assert "a" in index
    assert "z" not in index
    assert index.get("b").current_load == 2
    assert {a.id: a.current_load for a in index} == {"a": 0, "b": 2}
    with pytest.raises(NotFoundError):
        index.add_load("z")


def test_score_helpers() -> None:
    """has_room and free_ratio follow the written formulas, 0 meaning unlimited."""
    assert has_room(4, 5)
    assert not has_room(5, 5)
    assert has_room(1000, 0)
    assert free_ratio(1, 4) == 0.75
    assert free_ratio(9, 0) == 1.0


def test_custom_router_gets_route_from_rank() -> None:
    """A TaskRouter subclass only implements rank; route is its first answer."""

    class Reverse(TaskRouter):
        def rank(
            self, task: Task, agents: AgentIndex | Iterable[AgentInfo], limit: int | None = None
        ) -> list[str]:
            return sorted((a.id for a in agents), reverse=True)[:limit]

    assert Reverse().route(task(), AgentIndex([agent("a"), agent("b")])) == "b"


# --- properties ---

CAPS = ["go", "py", "js", "gpu", "docs"]
IDS = [f"agent-{i:02d}" for i in range(12)]

agents_strategy = st.lists(
    st.builds(
        agent,
        st.sampled_from(IDS),
        st.sampled_from(list(AgentStatus)),
        st.lists(st.sampled_from(CAPS), max_size=4),
        st.integers(0, 6),
        st.integers(0, 5),
    ),
    max_size=12,
)
tasks_strategy = st.builds(
    task, st.lists(st.sampled_from(CAPS), max_size=2), st.sampled_from(list(Priority))
)


def eligible(t: Task, a: AgentInfo) -> bool:
    """The rules, restated independently of the implementation."""
    return (
        a.status is not OFFLINE
        and set(t.labels) <= set(a.capabilities)
        and (a.max_load == 0 or a.current_load < a.max_load)
    )


def rank_or_none(t: Task, agents: AgentIndex | Sequence[AgentInfo]) -> list[str] | None:
    try:
        return DefaultRouter().rank(t, agents)
    except NoEligibleAgentError:
        return None


def outcome(t: Task, agents: AgentIndex | Sequence[AgentInfo], limit: int | None) -> object:
    """The ranking, or the error message: both paths must agree on either."""
    try:
        return DefaultRouter().rank(t, agents, limit)
    except NoEligibleAgentError as exc:
        return str(exc)


# No deadline: a busy machine (a parallel run) may stall an example; speed is not checked.
@settings(max_examples=300, deadline=None)
@given(agents_strategy, tasks_strategy)
def test_property_never_picks_an_ineligible_agent(agents: list[AgentInfo], t: Task) -> None:
    """Every ranked agent is eligible, and an error means none is."""
    latest = {a.id: a for a in agents}
    ranked = rank_or_none(t, agents)
    if ranked is None:
        assert not any(eligible(t, a) for a in latest.values())
    else:
        assert all(eligible(t, latest[i]) for i in ranked)
        assert sorted(ranked) == sorted(i for i, a in latest.items() if eligible(t, a))


@settings(max_examples=300, deadline=None)
@given(agents_strategy, tasks_strategy, st.randoms(use_true_random=False))
def test_property_rank_is_deterministic(
    agents: list[AgentInfo], t: Task, rnd: random.Random
) -> None:
    """Shuffling the input (unique ids) never changes the ranking."""
    unique = list({a.id: a for a in agents}.values())
    shuffled = unique[:]
    rnd.shuffle(shuffled)
    assert rank_or_none(t, unique) == rank_or_none(t, shuffled)
    assert rank_or_none(t, AgentIndex(unique)) == rank_or_none(t, AgentIndex(shuffled))


@settings(max_examples=300, deadline=None)
@given(agents_strategy, tasks_strategy)
def test_property_first_of_rank_is_route(agents: list[AgentInfo], t: Task) -> None:
    """route answers rank's first id, with any limit."""
    ranked = rank_or_none(t, agents)
    if ranked is not None:
        router = DefaultRouter()
        assert router.route(t, agents) == ranked[0]
        assert router.rank(t, agents, limit=2) == ranked[:2]


@settings(max_examples=300, deadline=None)
@given(
    agents_strategy,
    st.lists(tasks_strategy, min_size=1, max_size=6),
    st.lists(st.tuples(st.sampled_from(IDS), st.integers(-3, 3)), max_size=8),
)
def test_property_index_matches_plain_list(
    agents: list[AgentInfo], tasks: list[Task], loads: list[tuple[str, int]]
) -> None:
    """After any add_load sequence the index ranks exactly like a list of its agents."""
    index = AgentIndex(agents)
    for agent_id, delta in loads:
        if agent_id in index:
            index.add_load(agent_id, delta)
    snapshot = list(index)
    for t in tasks:
        for limit in (None, 1, 3):
            assert outcome(t, index, limit) == outcome(t, snapshot, limit)
