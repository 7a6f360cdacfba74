"""The demo: the whole system in one process, on a temporary SQLite file.

:func:`run_demo` starts the task API on a free loopback port (with an admin token and
one token per agent), three :class:`~agentic.runner.AgentRunner` s with Python
handlers, and the :class:`~agentic.dispatcher.Dispatcher`; it submits the tasks of
:func:`scenario` and returns a :class:`DemoSummary` once every task is final (or
time is up). What the scenario shows:

* routing by capability and load: "coder" (python, git; 2 at a time), "writer"
  (docs; small model only), "reviewer" (python, review; 3 jobs a day);
* priorities: the reviews are high priority, so the reviewer takes them first, then
  one plain python task, and stops at its daily job limit; later python tasks it
  ranks first for are refused by the quota and go to the coder;
* a dependency chain of four tasks, each claimable only when the previous completed;
* a flaky task that fails once and completes on its retry (short server backoff);
* a poison task that always fails and is dead-lettered after its one retry;
* usage and cost per agent and per model, from prices set on the two models.

The handlers only sleep, log, report progress and report token usage.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .allowance import AllowanceService
from .client import TaskClient
from .dispatcher import Dispatcher
from .events import CallbackEmitter, Event, EventType
from .logs import FINISHED
from .models import AgentAllowance, AgentInfo, ModelQuota, Priority, Task, TaskStatus
from .retry import RetryPolicy
from .router import DefaultRouter
from .runner import AgentRunner, Handler, TaskCancelled, TaskContext
from .stores import open_allowance_store, open_registry, open_task_store
from .stores.base import AgentRegistry, AllowanceStore, TaskStore
from .testing import running_server

__all__ = [
    "AGENTS",
    "LIMITED",
    "MODELS",
    "AgentSpec",
    "DemoSummary",
    "Progress",
    "TaskSpec",
    "run_demo",
    "scenario",
]

LARGE, SMALL = "model-large", "model-small"
#: prices in cents per million input / output tokens
MODELS = (
    ModelQuota(model=LARGE, daily_token_budget=2_000_000, input_price=300, output_price=1500),
    ModelQuota(model=SMALL, daily_token_budget=2_000_000, input_price=25, output_price=125),
)


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the demo and its allowance (0: unlimited)."""

    id: str
    capabilities: tuple[str, ...]
    max_load: int
    daily_job_limit: int = 0
    daily_token_limit: int = 0
    models: tuple[str, ...] = ()

    @property
    def allowance(self) -> AgentAllowance:
        return AgentAllowance(
            agent_id=self.id,
            daily_token_limit=self.daily_token_limit,
            daily_job_limit=self.daily_job_limit,
            # = max_load: the store refuses a job the runner would have to give back
            concurrent_jobs=self.max_load,
            model_allowlist=list(self.models),
        )


AGENTS = (
    AgentSpec("coder", ("python", "git"), 2, daily_token_limit=400_000),
    AgentSpec("writer", ("docs",), 1, daily_token_limit=150_000, models=(SMALL,)),
    AgentSpec("reviewer", ("python", "review"), 1, daily_job_limit=3),
)
LIMITED = "reviewer"
_FAST_RETRY = RetryPolicy(max_retries=3, base=0.5, cap=1.0)


@dataclass(frozen=True)
class TaskSpec:
    """One task of the scenario and how its handler behaves."""

    key: str
    title: str
    labels: tuple[str, ...]
    priority: Priority
    model: str
    seconds: float
    tokens: tuple[int, int]
    after: str = ""  # key of the task it depends on
    fail_first: bool = False
    always_fail: bool = False

    @property
    def expected(self) -> TaskStatus:
        return TaskStatus.FAILED if self.always_fail else TaskStatus.COMPLETED


# key: "flaky" fails its first attempt, "poison" every attempt; "<" names the task it
# depends on. Reviews are high priority and plain python tasks medium or low, so the
# reviewer always takes its reviews before any python task (it can do both).
_SCENARIO = """
chain-1   python,git     high      large  -        design the storage schema
chain-2   python,git     high      large  chain-1  write the migration
chain-3   python,git     high      large  chain-2  backfill existing rows
chain-4   docs           high      small  chain-3  document the new schema
flaky     python,git     high      large  -        call the flaky payments sandbox
poison    python,git     low       small  -        parse the corrupt fixture
review-1  python,review  high      large  -        review PR #101
review-2  python,review  high      large  -        review PR #102
hotfix-1  python,git     critical  large  -        hotfix the login timeout
hotfix-2  python,git     critical  large  -        hotfix the broken CSV export
git-1     python,git     medium    large  -        refactor the router
git-2     python,git     medium    large  -        refactor config loading
git-3     python,git     low       large  -        refactor the retry loop
git-4     python,git     medium    large  -        refactor logging
docs-1    docs           critical  small  -        fix the install steps in the README
docs-2    docs           medium    small  -        update the changelog
docs-3    docs           low       small  -        update the API guide
docs-4    docs           critical  small  -        fix the broken tutorial
docs-5    docs           medium    small  -        extend the FAQ
docs-6    docs           low       small  -        draft the release notes
py-1      python         medium    small  -        fix lint
py-2      python         low       large  -        add type hints
py-3      python         medium    small  -        speed up a slow test
py-4      python         low       large  -        rename a helper
py-5      python         medium    small  -        tidy imports
py-6      python         low       large  -        bump a dependency
py-7      python         medium    small  -        remove dead code
py-8      python         low       large  -        add a unit test
py-9      python         medium    small  -        fix a typo
py-10     python         low       large  -        cache the parsed config
"""


def scenario() -> list[TaskSpec]:
    """The demo's 30 tasks, in submission order (dependencies before dependents)."""
    specs = []
    for index, row in enumerate(_SCENARIO.strip().splitlines()):
        key, labels, priority, model, after, title = row.split(maxsplit=5)
        specs.append(
            TaskSpec(
                key=key,
                title=title,
                labels=tuple(labels.split(",")),
                priority=Priority(priority),
                model=f"model-{model}",
                seconds=0.25 + (index % 4) * 0.1,
                tokens=(800 + (index * 397) % 2400, 300 + (index * 211) % 900),
                after="" if after == "-" else after,
                fail_first=key == "flaky",
                always_fail=key == "poison",
            )
        )
    return specs


@dataclass(frozen=True)
class Attempt:
    """One run of a handler."""

    agent_id: str
    started: float  # seconds since the demo started
    ended: float
    ok: bool


@dataclass(frozen=True)
class AgentState:
    """An agent as the live view shows it."""

    spec: AgentSpec
    status: str
    load: int
    jobs_started: int
    tokens_used: int
    cost_cents: float

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True)
class Progress:
    """The state of the demo at one moment (for the live view)."""

    elapsed: float
    agents: list[AgentState]
    by_status: dict[str, int]
    recent: list[str]


@dataclass(frozen=True)
class TaskOutcome:
    """How one task ended."""

    spec: TaskSpec
    id: str
    status: TaskStatus | None
    retries: int
    attempts: list[Attempt]


@dataclass
class DemoSummary:
    """What happened; ``problems`` lists every departure from the design."""

    elapsed: float
    tasks: list[TaskOutcome]
    agents: list[AgentState]
    models: dict[str, tuple[int, float]]  # model -> (tokens, cents)
    limit_reached_at: float | None
    problems: list[str] = field(default_factory=list)

    def count(self, *statuses: TaskStatus) -> int:
        return sum(1 for task in self.tasks if task.status in statuses)

    @property
    def retried(self) -> int:
        return sum(1 for t in self.tasks if t.retries and t.status == TaskStatus.COMPLETED)

    @property
    def waiting(self) -> int:
        return sum(1 for task in self.tasks if task.status not in FINISHED)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Demo:
    """One run: its stores, what happened (from every thread), and its steps."""

    def __init__(self, registry: AgentRegistry, quota: AllowanceStore, tasks: TaskStore) -> None:
        self.registry, self.quota, self.tasks = registry, quota, tasks
        self.specs = scenario()
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.ids: dict[str, str] = {}  # key -> task id
        self.by_id: dict[str, TaskSpec] = {}
        self.attempts: dict[str, list[Attempt]] = {}
        self.costs: dict[str, int] = {}  # agent -> micro-cents
        self.recent: list[str] = []
        self.limit_reached_at: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    def configure(self) -> None:
        for model in MODELS:
            self.quota.set_model_quota(model)
        for agent in AGENTS:
            self.quota.set_allowance(agent.allowance)

    def submit(self, client: TaskClient) -> None:
        """Create every task, dependencies first."""
        for spec in self.specs:
            task = client.create_task(
                Task(
                    title=spec.title,
                    labels=list(spec.labels),
                    priority=spec.priority,
                    model=spec.model,
                    estimated_tokens=sum(spec.tokens),
                    dependencies=[self.ids[spec.after]] if spec.after else [],
                    max_retries=1 if spec.always_fail else 3,
                )
            )
            self.ids[spec.key] = task.id
            self.by_id[task.id] = spec

    def on_event(self, event: Event) -> None:
        key = self.by_id[event.task_id].key if event.task_id in self.by_id else ""
        line = {
            EventType.TASK_DISPATCHED: f"{key} -> {event.agent_id}",
            EventType.TASK_COMPLETED: f"{key} completed by {event.agent_id}",
            EventType.TASK_FAILED: f"{key} failed on {event.agent_id}: "
            + str(event.payload.get("reason", "")),
            EventType.QUOTA_EXCEEDED: f"{event.agent_id} reached its daily limit",
        }.get(event.type)
        with self.lock:
            if event.type is EventType.USAGE_RECORDED:
                cost = int(event.payload.get("cost_charged", 0))
                self.costs[event.agent_id] = self.costs.get(event.agent_id, 0) + cost
            if event.type is EventType.QUOTA_EXCEEDED and event.agent_id == LIMITED:
                self.limit_reached_at = self.limit_reached_at or self.now()
            if line:
                self.recent = [*self.recent[-7:], f"{self.now():5.1f}s  {line}"]

    def handler(self, agent_id: str) -> Handler:
        def handle(task: Task, ctx: TaskContext) -> str:
            spec = self.by_id[task.id]
            started = self.now()
            ctx.log(f"{agent_id}: attempt {task.retry_count + 1} of {spec.title!r}")
            for step in (1, 2):
                if ctx.cancel_event.wait(spec.seconds / 3):
                    raise TaskCancelled(ctx.cancel_reason)
                ctx.progress(step * 33, notes=f"step {step} of 3")
            time.sleep(spec.seconds / 3)
            ctx.usage(task.model, *spec.tokens)
            failing = spec.always_fail or (spec.fail_first and task.retry_count == 0)
            with self.lock:
                attempt = Attempt(agent_id, started, self.now(), not failing)
                self.attempts.setdefault(task.id, []).append(attempt)
            if failing:
                reason = "the sandbox answered 503" if spec.fail_first else "corrupt input file"
                ctx.log(f"failed: {reason}")
                raise RuntimeError(reason)
            ctx.log("done")
            return f"{spec.title}: done by {agent_id}"

        return handle

    def snapshot(self) -> Progress:
        infos = {agent.id: agent for agent in self.registry.list()}
        states = []
        for spec in AGENTS:
            info = infos.get(spec.id)
            usage = self.quota.get_usage(spec.id)
            with self.lock:
                cost = self.costs.get(spec.id, 0) / 1e6
            status, load = (info.status.value, info.current_load) if info else ("offline", 0)
            states.append(
                AgentState(spec, status, load, usage.jobs_started, usage.tokens_used, cost)
            )
        by_status: dict[str, int] = {}
        for task in self.tasks.list():
            by_status[str(task.status)] = by_status.get(str(task.status), 0) + 1
        with self.lock:
            recent = list(self.recent)
        return Progress(self.now(), states, by_status, recent)

    def summary(self) -> DemoSummary:
        outcomes = []
        for spec in self.specs:
            task = self.tasks.get(self.ids[spec.key])
            attempts = self.attempts.get(task.id, [])
            outcomes.append(TaskOutcome(spec, task.id, task.status, task.retry_count, attempts))
        models = {}
        for model in MODELS:
            usage = self.quota.get_model_usage(model.model)
            models[model.model] = (usage.tokens_used, usage.cost_used / 1e6)
        final = self.snapshot()
        summary = DemoSummary(final.elapsed, outcomes, final.agents, models, self.limit_reached_at)
        summary.problems = _problems(summary)
        return summary


@contextlib.contextmanager
def _stores(directory: str) -> Iterator[tuple[AgentRegistry, AllowanceStore, TaskStore]]:
    url = "sqlite:///" + Path(directory, "demo.db").as_posix().lstrip("/")
    with (
        open_registry(url) as registry,
        open_allowance_store(url) as quota,
        open_task_store(url) as tasks,
    ):
        yield registry, quota, tasks


def run_demo(
    seconds: float = 30.0,
    on_progress: Callable[[Progress], None] | None = None,
    refresh: float = 0.25,
) -> DemoSummary:
    """Run the scenario until every task is final or ``seconds`` have passed.

    ``on_progress`` gets a :class:`Progress` every ``refresh`` seconds (the live view).
    """
    with tempfile.TemporaryDirectory(prefix="agentic-demo-") as tmp, _stores(tmp) as stores:
        demo = _Demo(*stores)
        demo.configure()
        admin = secrets.token_urlsafe(16)
        tokens = {agent.id: secrets.token_urlsafe(16) for agent in AGENTS}
        server = running_server(
            demo.tasks,
            admin_tokens=[admin],
            agent_tokens={token: agent_id for agent_id, token in tokens.items()},
            lease_seconds=30,
            requeue_interval=1.0,
            # Seconds, not minutes: the flaky task's retry must happen during the demo.
            retry_policy=_FAST_RETRY,
        )
        with server as base_url, contextlib.ExitStack() as stack:
            emitter = stack.enter_context(CallbackEmitter(demo.on_event))
            allowance = AllowanceService(demo.quota, emitter)
            admin_client = stack.enter_context(TaskClient(base_url, admin))
            demo.submit(admin_client)
            for spec in AGENTS:
                client = stack.enter_context(TaskClient(base_url, tokens[spec.id], spec.id))
                info = AgentInfo(
                    id=spec.id, capabilities=list(spec.capabilities), max_load=spec.max_load
                )
                runner = AgentRunner(
                    info,
                    client,
                    demo.registry,
                    demo.handler(spec.id),
                    allowance,
                    heartbeat_interval=1.0,
                    poll_interval=0.1,
                    cancel_grace=1.0,
                    emitter=emitter,
                )
                runner.start()
                stack.callback(runner.stop)
            dispatcher = Dispatcher(
                demo.registry, DefaultRouter(), allowance, admin_client, emitter, _FAST_RETRY
            )
            stop = threading.Event()
            loop = threading.Thread(target=dispatcher.run, args=(stop, 0.1), daemon=True)
            loop.start()
            stack.callback(loop.join)
            stack.callback(stop.set)
            deadline = time.monotonic() + seconds
            while True:
                progress = demo.snapshot()
                if on_progress is not None:
                    on_progress(progress)
                done = sum(n for s, n in progress.by_status.items() if TaskStatus(s) in FINISHED)
                if done == len(demo.specs) or time.monotonic() >= deadline:
                    break
                time.sleep(refresh)
            # Stop the dispatcher and the runners before counting, so nothing moves.
            stack.close()
            return demo.summary()


def _problems(summary: DemoSummary) -> list[str]:
    """Every way the run departed from the design (empty: as designed)."""
    problems = []
    if summary.waiting:
        problems.append(f"{summary.waiting} tasks were not final after {summary.elapsed:.0f} s")
    by_key = {task.spec.key: task for task in summary.tasks}
    for task in summary.tasks:
        if task.status in FINISHED and task.status != task.spec.expected:
            problems.append(f"{task.spec.key} is {task.status}, expected {task.spec.expected}")
    if by_key["flaky"].retries != 1:
        problems.append(f"flaky was retried {by_key['flaky'].retries} times, expected once")
    for link in ("chain-2", "chain-3", "chain-4"):
        before = by_key[by_key[link].spec.after].attempts
        after = by_key[link].attempts
        if before and after and min(a.started for a in after) < max(a.ended for a in before):
            problems.append(f"{link} started before {by_key[link].spec.after} finished")
    for agent in summary.agents:
        spec = agent.spec
        if spec.daily_job_limit and agent.jobs_started > spec.daily_job_limit:
            problems.append(f"{agent.id} started {agent.jobs_started} jobs, over its limit")
        if spec.daily_token_limit and agent.tokens_used > spec.daily_token_limit:
            problems.append(f"{agent.id} used {agent.tokens_used} tokens, over its limit")
        if agent.id == LIMITED and agent.jobs_started != spec.daily_job_limit:
            problems.append(f"{agent.id} never reached its daily job limit")
    return problems
