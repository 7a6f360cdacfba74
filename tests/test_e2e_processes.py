"""The whole system as real OS processes: ``agentic serve``, ``agentic dispatch`` and
``agentic agent run`` agents whose command is a tiny shell script.

Each task's command appends ``start`` and ``end`` lines (task id, agent id, pid, wall
time) to a marker file, so the tests see which agent ran what, when and how often,
independently of what the task server says.

Times that the CLI does not let a test shorten: an agent polls for its tasks every
second and heartbeats every 5 s (so a lease must exceed 10 s), and ``agentic serve``
requeues expired leases every 5 s.

In the fleet test every agent gets a concurrency allowance (or a token allowance that
acts as one) below its ``max_load``, so that quota, not capacity alone, limits what
runs. The kill test sets none: the dispatcher must not route past ``max_load`` on its
own, though an agent reports only the tasks it has *started* (claims of earlier passes
count through their reservations).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pytest

from agentic.client import TaskClient
from agentic.events import EventType
from agentic.models import AgentStatus, Priority, Task, TaskStatus
from agentic.stores import open_allowance_store, open_event_log, open_registry
from agentic.stores.base import AgentRegistry

from .conftest import RedisServer, free_port

# clean_environment is autouse in test_cli: imported here, it applies here too.
from .test_cli import AGENTIC, clean_environment, healthy, run, subprocess_env  # noqa: F401

pytestmark = pytest.mark.slow

MODEL = "e2e-model"
TOKENS = 100  # estimated tokens of every task
#: the dispatcher section of every fleet's config: quick passes, short backoff
FAST = {"interval": 0.2, "backoff_base": 0.5, "backoff_cap": 2}


# --- the fleet: processes, their output, the markers ---
@dataclass
class Proc:
    """One ``agentic`` process; its stdout and stderr go to files."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    #: ended on purpose by the test (its exit is not a failure of the fleet)
    ended: bool = False

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig``; the exit code (TimeoutExpired if it outlives ``timeout``)."""
        self.ended = True
        self.popen.send_signal(sig)
        return self.popen.wait(timeout)

    def stop_line(self) -> str:
        """An agent's last line: "agent X stopped: N completed, N failed, ..."."""
        lines = [line for line in self.output().splitlines() if " stopped: " in line]
        assert lines, self.output()
        return lines[-1]


@dataclass(frozen=True)
class Mark:
    """One line of the marker file."""

    kind: str  # "start" or "end"
    task_id: str
    agent_id: str
    pid: int
    at: float


@dataclass
class Fleet:
    """The processes of one test, the config file they share, and the marker file."""

    tmp: Path
    store_url: str
    port: int
    config: Path
    markers: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str) -> Proc:
        """``agentic ARGS`` as a process."""
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                [AGENTIC, *args], stdout=stdout, stderr=stderr, env=subprocess_env()
            )
        self.procs[name] = proc = Proc(name, popen, out, err)
        return proc

    def serve(self) -> Proc:
        """``agentic serve``, once it answers."""
        proc = self.spawn("serve", "serve", "--config", str(self.config))
        wait_until(lambda: healthy(self.base_url), "the server answers", self, timeout=20)
        return proc

    def dispatch(self, name: str = "dispatch") -> Proc:
        """The ``agentic dispatch`` loop."""
        return self.spawn(name, "dispatch", "--config", str(self.config))

    def agent(
        self, agent_id: str, capabilities: list[str], max_load: int, seconds: float | Path | None
    ) -> Proc:
        """``agentic agent run``; each task marks start, sleeps ``seconds`` (a path: until
        that file exists; None: for ever) and marks its end."""
        caps = [arg for cap in capabilities for arg in ("--capability", cap)]
        return self.spawn(
            agent_id,
            "agent", "run", "--config", str(self.config), "--id", agent_id, *caps,
            "--max-load", str(max_load), "--", *marker_command(self.markers, agent_id, seconds),
        )  # fmt: skip

    def cli(self, *args: str) -> None:
        """``agentic ARGS`` in-process against this fleet; it must succeed."""
        result = run(*args, "--config", str(self.config))
        assert result.exit_code == 0, result.output

    def marks(self) -> list[Mark]:
        if not self.markers.exists():
            return []
        found = []
        for line in self.markers.read_text().splitlines():
            kind, task_id, agent_id, pid, at = line.split()
            found.append(Mark(kind, task_id, agent_id, int(pid), float(at)))
        return found

    def check_alive(self) -> None:
        """Fail at once, with the output, when a process of the fleet has exited."""
        for proc in self.procs.values():
            code = proc.popen.poll()
            assert code is None or proc.ended, f"{proc.name} exited with {code}\n{self.dump()}"

    def dump(self) -> str:
        """The tail of every process's output, for failure messages."""
        parts = []
        for proc in self.procs.values():
            for path in (proc.out, proc.err):
                lines = path.read_text(errors="replace").splitlines() if path.exists() else []
                parts.append(f"--- {path.name} ({len(lines)} lines)\n" + "\n".join(lines[-30:]))
        return "\n".join(parts)


def marker_command(markers: Path, agent_id: str, seconds: float | Path | None) -> list[str]:
    """``sh -c``: append "start TASK AGENT PID TIME"; sleep ``seconds`` (a path: until
    that file exists; None: for ever); append "end ..."."""
    mark = f'"$AGENTIC_TASK_ID {agent_id} $$ $(date +%s.%N)" >> "$1"'
    if seconds is None:  # exec: the marked pid is the sleep's, so the test can end it
        return ["sh", "-c", f"echo start {mark}; exec sleep 600", "marker", str(markers)]
    if isinstance(seconds, Path):
        wait = 'while [ ! -e "$2" ]; do sleep 0.05; done'
    else:
        wait = f"sleep {seconds}"
    script = f"echo start {mark}; {wait}; echo end {mark}"
    return ["sh", "-c", script, "marker", str(markers), str(seconds)]


def wait_until(
    predicate: Callable[[], bool], what: str, fleet: Fleet, timeout: float = 30.0
) -> None:
    """Poll ``predicate()`` until true; fail naming ``what``, with the fleet's output,
    at the deadline or as soon as one of its processes exits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        fleet.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting until {what}\n{fleet.dump()}"
        time.sleep(0.1)


@contextlib.contextmanager
def fleet_on(tmp: Path, store_url: str, **dispatcher: float) -> Iterator[Fleet]:
    """A fleet over ``store_url``; every process it started is gone afterwards."""
    port = free_port()
    config = tmp / "agentic.yaml"
    section = "".join(f"  {key}: {value}\n" for key, value in dispatcher.items())
    config.write_text(
        f"base_url: http://127.0.0.1:{port}\nstore_url: '{store_url}'\n"
        f"server:\n  port: {port}\ndispatcher:\n{section}",
        encoding="utf-8",
    )
    fleet = Fleet(tmp, store_url, port, config, tmp / "markers.txt")
    try:
        yield fleet
    finally:
        for proc in fleet.procs.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(10)
        # A test that failed may leave a command of a killed agent: end it.
        marks = fleet.marks()
        ended = {(m.task_id, m.pid) for m in marks if m.kind == "end"}
        for mark in marks:
            if mark.kind == "start" and (mark.task_id, mark.pid) not in ended:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(mark.pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet on one SQLite file with the FAST dispatcher; nothing started yet."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    with fleet_on(tmp_path, url, **FAST) as made:
        yield made


def quota_day() -> date:
    """Today in UTC, the quota day: job counts start again at its end, so a test that
    runs across midnight checks them only when it began the same day."""
    return datetime.now(UTC).date()


def all_tasks(client: TaskClient) -> dict[str, Task]:
    return {task.id: task for task in client.list_tasks(limit=10_000)}


def count(client: TaskClient, status: TaskStatus) -> int:
    return len(client.list_tasks(status=status, limit=10_000))


def wait_completed(client: TaskClient, ids: set[str], fleet: Fleet, timeout: float) -> None:
    """Wait until every task of ``ids`` is completed; fail fast on failed or blocked."""

    def done() -> bool:
        tasks = [t for t in client.list_tasks(limit=10_000) if t.id in ids]
        stuck = [t for t in tasks if t.status in (TaskStatus.FAILED, TaskStatus.BLOCKED)]
        assert not stuck, f"tasks failed or blocked: {stuck}\n{fleet.dump()}"
        return sum(t.status is TaskStatus.COMPLETED for t in tasks) == len(ids)

    wait_until(done, f"{len(ids)} tasks completed", fleet, timeout)


def ran_once(marks: list[Mark], ids: set[str]) -> dict[str, Mark]:
    """Check that each task of ``ids`` (and no other) started and ended exactly once,
    on one agent; its start marks."""
    starts = Counter(m.task_id for m in marks if m.kind == "start")
    ends = Counter(m.task_id for m in marks if m.kind == "end")
    assert starts == ends == Counter(ids)
    return {m.task_id: m for m in marks if m.kind == "start"}


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def create(client: TaskClient, title: str, **fields: object) -> Task:
    return client.create_task(Task.model_validate({"title": title, **fields}))


# --- 1. the whole fleet, 200 tasks ---
AGENTS = {  # id: (capabilities, max_load)
    "a-py": (["py", "test"], 30),
    "a-go": (["go", "test"], 30),
    "a-docs": (["docs"], 24),
}
ALLOWANCES = {  # `agentic allowance set` options; each lets fewer run than max_load
    "a-py": ["--concurrent", "20", "--daily-jobs", "190", "--daily-tokens", "100000"],
    "a-go": ["--daily-tokens", str(20 * TOKENS), "--daily-jobs", "190"],  # 20 reserved at most
    "a-docs": ["--concurrent", "14", "--daily-jobs", "190"],
}
AT_ONCE = {"a-py": 20, "a-go": 20, "a-docs": 14}  # what those allowances let run at once
HOURLY_RATE = 1000
LABEL_SETS = [[], ["py"], ["go"], ["docs"], ["test"], ["py", "test"], ["go", "test"]]
PRIORITIES = list(Priority)
CHAINS, CHAIN_LENGTH, FAN_INS = 12, 4, 4


def create_fleet_tasks(client: TaskClient, total: int) -> dict[str, Task]:
    """``total`` tasks over every label set and priority: 12 chains of 4 (labels and
    priorities change along a chain) and 4 tasks each waiting for 3 chains' ends."""
    created: dict[str, Task] = {}

    def add(dependencies: list[str]) -> str:
        i = len(created)
        task = create(
            client,
            f"task {i}",
            priority=PRIORITIES[i % len(PRIORITIES)],
            labels=LABEL_SETS[i % len(LABEL_SETS)],
            dependencies=dependencies,
            model=MODEL,
            estimated_tokens=TOKENS,
        )
        created[task.id] = task
        return task.id

    ends = []
    for _ in range(CHAINS):
        previous: list[str] = []
        for _ in range(CHAIN_LENGTH):
            previous = [add(previous)]
        ends += previous
    per_fan_in = CHAINS // FAN_INS
    for n in range(FAN_INS):
        add(ends[n * per_fan_in : (n + 1) * per_fan_in])
    while len(created) < total:
        add([])
    return created


def test_fleet_runs_every_task_once_in_order_within_quota(shared_url: str, tmp_path: Path) -> None:
    """serve, 3 agents, dispatch: 200 tasks each run once, after their deps, within quota."""
    day = quota_day()
    with fleet_on(tmp_path, shared_url, **FAST) as fleet:
        fleet.serve()
        for agent_id, options in ALLOWANCES.items():
            fleet.cli("allowance", "set", agent_id, *options)
        fleet.cli("allowance", "model", MODEL, "--hourly-rate", str(HOURLY_RATE))
        agents = {
            agent_id: fleet.agent(agent_id, caps, max_load, seconds=0.2)
            for agent_id, (caps, max_load) in AGENTS.items()
        }
        with open_registry(shared_url) as registry:
            wait_until(lambda: len(registry.list()) == len(AGENTS), "agents registered", fleet)
        with TaskClient(fleet.base_url, "") as client:
            created = create_fleet_tasks(client, 200)
            dispatcher = fleet.dispatch()
            wait_completed(client, set(created), fleet, timeout=120)
            final = all_tasks(client)
        assert dispatcher.stop() == 0
        for proc in agents.values():
            assert proc.stop() == 0, fleet.dump()
        assert fleet.procs["serve"].stop() == 0

    # Every task completed, once, by an agent able to do it, never retried.
    assert set(final) == set(created)
    for task in final.values():
        assert (task.status, task.retry_count) == (TaskStatus.COMPLETED, 0), task
        assert set(task.labels) <= set(AGENTS[task.claimed_by][0]), task
    marks = fleet.marks()
    starts = ran_once(marks, set(final))
    ends = {m.task_id: m for m in marks if m.kind == "end"}
    for task in final.values():
        assert starts[task.id].agent_id == ends[task.id].agent_id == task.claimed_by
    reports = [proc.stop_line() for proc in agents.values()]
    assert sum(int(line.split(": ")[1].split()[0]) for line in reports) == len(final)
    assert all(line.endswith(" 0 failed, 0 released, 0 errors") for line in reports), reports

    # A dependent started after each of its dependencies ended (by both clocks).
    dependents = [t for t in final.values() if t.dependencies]
    assert len(dependents) == CHAINS * (CHAIN_LENGTH - 1) + FAN_INS
    for task in dependents:
        for dep in task.dependencies:
            assert starts[task.id].at >= ends[dep].at, (task.id, dep)
            claimed, finished = task.claimed_at, final[dep].updated_at
            assert claimed is not None and finished is not None and claimed >= finished

    # No quota exceeded: usage within every limit, nothing left reserved, and never
    # more tasks running at once on an agent than its allowance lets through.
    with open_allowance_store(shared_url) as quota:
        for agent_id in AGENTS:
            allowance, usage = quota.get_allowance(agent_id), quota.get_usage(agent_id)
            assert usage.jobs_started <= allowance.daily_job_limit, usage
            assert usage.tokens_used <= allowance.daily_token_limit, usage
            assert (usage.active_jobs, usage.tokens_reserved) == (0, 0), usage
        if quota_day() == day:
            assert sum(quota.get_usage(a).jobs_started for a in AGENTS) == len(final)
        model = quota.get_model_usage(MODEL)
        assert len(final) <= model.requests_last_hour <= HOURLY_RATE, model
        assert model.tokens_reserved == 0, model
    for agent_id, limit in AT_ONCE.items():
        spans = [(starts[t].at, ends[t].at) for t in starts if starts[t].agent_id == agent_id]
        assert spans and max_overlap(spans) <= limit, (agent_id, max_overlap(spans))

    # The event log tells each task's life once: claimed and completed, recorded by the
    # task store with each change (the dispatcher's and the agents' own reports of the
    # same transitions carry the same ids and add nothing), dispatched, and its usage.
    with open_event_log(shared_url) as log:
        logged = [e.event for e in log.read(0, 1000)]
        while page := log.read(len(logged), 1000):
            logged += [e.event for e in page]
    for kind in (EventType.TASK_CLAIMED, EventType.TASK_COMPLETED):
        of_kind = [e for e in logged if e.type == kind]
        assert sorted(e.task_id for e in of_kind) == sorted(final), kind
        assert {e.source for e in of_kind} == {"agentic.tasks"}, kind
    dispatched = [e.task_id for e in logged if e.type == EventType.TASK_DISPATCHED]
    assert sorted(dispatched) == sorted(final)
    # Each settle's usage once, recorded by the quota store with the charge: every
    # completed attempt's job among them.
    charges = [e for e in logged if e.type == EventType.USAGE_RECORDED]
    assert len({e.id for e in charges}) == len(charges)
    assert {e.source for e in charges} == {"agentic.quota"}
    charged = {e.payload["job_id"]: e.task_id for e in charges}
    assert all(charged[task.job_id] == task.id for task in final.values())
    # Thresholds crossed (a-go's token cap passes 80% with 16 tasks reserved at once)
    # are recorded by the quota store with the reserve or settle: the same ids.
    crossings = [e for e in logged if e.type.value.startswith("quota_")]
    assert {e.source for e in crossings} <= {"agentic.quota"}
    assert len({e.id for e in crossings}) == len(crossings)


# --- 2. an agent killed with SIGKILL ---
def test_two_servers_on_one_redis_run_one_fleet(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two ``agentic serve`` processes on one Redis, as behind a load balancer: the
    dispatcher claims through server A, two agents long-poll server B (woken by A's
    change notices), both servers requeue: 60 tasks each run once, and every process
    exits cleanly."""
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    with fleet_on(tmp_path, url, **FAST) as fleet:
        port_b = free_port()
        config_b = tmp_path / "server-b.yaml"
        config_b.write_text(
            fleet.config.read_text(encoding="utf-8").replace(str(fleet.port), str(port_b)),
            encoding="utf-8",
        )
        fleet.serve()
        serve_b = fleet.spawn("serve-b", "serve", "--config", str(config_b))
        wait_until(lambda: healthy(f"http://127.0.0.1:{port_b}"), "server B answers", fleet)
        agents = {}
        for agent_id in ("b-1", "b-2"):
            fleet.cli("allowance", "set", agent_id, "--daily-jobs", "1000")
            agents[agent_id] = fleet.spawn(
                agent_id,
                "agent", "run", "--config", str(config_b), "--id", agent_id,
                "--capability", "x", "--max-load", "4",
                "--", *marker_command(fleet.markers, agent_id, 0.1),
            )  # fmt: skip
        with open_registry(url) as registry:
            wait_until(lambda: len(registry.list()) == 2, "agents registered", fleet)
        with TaskClient(fleet.base_url, "") as client:
            created = {create(client, f"t{i}").id for i in range(60)}
            dispatcher = fleet.dispatch()
            wait_completed(client, created, fleet, timeout=120)
            final = all_tasks(client)
        metrics = httpx.get(f"http://127.0.0.1:{port_b}/metrics").text
        assert dispatcher.stop() == 0
        for proc in agents.values():
            assert proc.stop() == 0, fleet.dump()
        assert serve_b.stop() == 0 and fleet.procs["serve"].stop() == 0
    # B heard of A's claims: what woke its runners' long-polls at once.
    received = next(
        line for line in metrics.splitlines() if line.startswith("agentic_notices_received_total ")
    )
    assert int(received.split()[1]) > 0, received
    assert {t.id for t in final.values() if t.status is TaskStatus.COMPLETED} == created
    assert all(t.retry_count == 0 for t in final.values())
    starts = ran_once(fleet.marks(), created)
    assert {mark.agent_id for mark in starts.values()} <= set(agents)


def test_killed_agents_task_is_requeued_and_run_by_another(tmp_path: Path) -> None:
    """kill -9 of an agent mid-task: its lease expires, another agent completes it, once."""
    day = quota_day()
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    # The shortest lease agents accept (> 2 heartbeats of 5 s); reaped after 7 s silent.
    with (
        fleet_on(tmp_path, url, **FAST, lease_seconds=10.5, heartbeat_ttl=7) as fleet,
        open_registry(url) as registry,
        TaskClient(fleet.base_url, "") as client,
    ):
        fleet.serve()
        # No concurrency allowances: max_load alone must bound what each agent gets.
        fleet.cli("allowance", "set", "a-victim", "--daily-jobs", "10")
        fleet.cli("allowance", "set", "b-survivor", "--daily-jobs", "10")
        # Ties go to the lowest id: the critical task goes to a-victim, whose command
        # never ends; the others go to b-survivor.
        victim = fleet.agent("a-victim", ["x"], 1, seconds=None)
        survivor = fleet.agent("b-survivor", ["x"], 4, seconds=0.2)
        wait_until(lambda: registered(registry, "a-victim"), "a-victim registered", fleet)
        doomed = create(client, "doomed", labels=["x"], priority=Priority.CRITICAL)
        others = {create(client, f"t{i}", labels=["x"]).id for i in range(5)}
        dispatcher = fleet.dispatch()

        def victim_runs_it() -> bool:
            started = any(m.task_id == doomed.id for m in fleet.marks())
            return started and registry.get("a-victim").current_load == 1

        wait_until(victim_runs_it, "a-victim runs the doomed task", fleet)
        assert client.get_task(doomed.id).claimed_by == "a-victim"
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        # Its command does not run on beside the copy b-survivor will start.
        [command] = [m.pid for m in fleet.marks() if m.task_id == doomed.id]
        wait_until(lambda: not running(command), "the dead agent's command ended", fleet)
        wait_completed(client, {doomed.id, *others}, fleet, timeout=40)
        final = all_tasks(client)
        assert dispatcher.stop() == 0
        assert survivor.stop() == 0
        assert fleet.procs["serve"].stop() == 0
        # The dead agent was reaped (its heartbeat stopped); the survivor left cleanly.
        assert registry.get("a-victim").status is AgentStatus.OFFLINE
        assert [a.id for a in registry.list()] == ["a-victim"]

    # The doomed task: one retry counted (the expired lease), completed by b-survivor.
    task = final[doomed.id]
    assert (task.status, task.claimed_by, task.retry_count) == (
        TaskStatus.COMPLETED,
        "b-survivor",
        1,
    )
    assert task.last_attempt is not None and task.claimed_at is not None
    assert task.claimed_at > task.last_attempt  # claimed again after the requeue
    marks = fleet.marks()
    assert [(m.kind, m.agent_id) for m in marks if m.task_id == doomed.id] == [
        ("start", "a-victim"),
        ("start", "b-survivor"),
        ("end", "b-survivor"),
    ]
    # Every other task: completed once by b-survivor, never retried.
    starts = ran_once([m for m in marks if m.task_id != doomed.id], others)
    for task_id in others:
        assert (final[task_id].retry_count, starts[task_id].agent_id) == (0, "b-survivor")
    assert survivor.stop_line().endswith(": 6 completed, 0 failed, 0 released, 0 errors")
    # The dead attempt's reservation was cancelled, not left to hold a slot.
    with open_allowance_store(url) as quota:
        dead, alive = quota.get_usage("a-victim"), quota.get_usage("b-survivor")
    assert (dead.active_jobs, dead.tokens_reserved, alive.active_jobs) == (0, 0, 0)
    if quota_day() == day:
        assert (dead.jobs_started, alive.jobs_started) == (1, 6)


def registered(registry: AgentRegistry, agent_id: str) -> bool:
    return any(agent.id == agent_id for agent in registry.list())


# --- 3. SIGTERM (an idle agent and an idle dispatcher: see test_cli.py) ---
def test_sigterm_agent_drains_deregisters_and_gives_back_late_claims(fleet: Fleet) -> None:
    """SIGTERM mid-task: the agent finishes its tasks, releases a late claim, exits 0."""
    gate = fleet.tmp / "gate"
    fleet.serve()
    for agent_id in ("a", "b"):
        fleet.cli("allowance", "set", agent_id, "--concurrent", "2")
    with open_registry(fleet.store_url) as registry, TaskClient(fleet.base_url, "") as client:
        agent = fleet.agent("a", ["x"], 2, seconds=gate)  # its tasks wait for the gate
        running = {create(client, f"t{i}", labels=["x"]).id for i in range(2)}
        dispatcher = fleet.dispatch()
        wait_until(lambda: len(fleet.marks()) == 2, "a runs both tasks", fleet)

        agent.popen.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        agent.ended = True
        wait_until(lambda: "finishing held tasks" in agent.err.read_text(), "a draining", fleet)
        full = registry.get("a")  # still listed while it drains, full: routed nothing
        wait_until(lambda: registry.get("a").current_load == full.max_load, "a listed full", fleet)
        # A dispatcher whose pass began before that claims one more for a.
        late = create(client, "late", labels=["x"])
        client.claim_task(late.id, agent_id="a")
        gate.touch()
        assert agent.popen.wait(30) == 0  # 30 s: the runner's grace period
        assert time.monotonic() - stopped < 15
        assert agent.stop_line().endswith(": 2 completed, 0 failed, 1 released, 0 errors")
        assert not registered(registry, "a")  # deregistered once drained

        # Nothing is left claimed by the agent that is gone, nor reserved for it.
        assert client.list_tasks(status=TaskStatus.IN_PROGRESS) == []
        tasks = all_tasks(client)
        assert all(tasks[t].status is TaskStatus.COMPLETED for t in running)
        assert (tasks[late.id].status, tasks[late.id].claimed_by) == (TaskStatus.PENDING, "")
        assert tasks[late.id].retry_count == 0  # given back: no retry counted
        with open_allowance_store(fleet.store_url) as quota:
            assert quota.get_usage("a").active_jobs == 0

        # The work goes on without it: another agent takes the late task.
        other = fleet.agent("b", ["x"], 1, seconds=0.1)
        wait_completed(client, {late.id}, fleet, timeout=20)
        assert client.get_task(late.id).claimed_by == "b"
        assert dispatcher.stop() == 0
        assert other.stop() == 0
    assert fleet.procs["serve"].stop() == 0
    starts = ran_once(fleet.marks(), {*running, late.id})
    assert {t: m.agent_id for t, m in starts.items()} == {
        **{t: "a" for t in running},
        late.id: "b",
    }


def test_second_sigterm_gives_a_long_task_back_at_once_and_deregisters(fleet: Fleet) -> None:
    """A second SIGTERM skips the 30 s grace: the running task is cancelled and given
    back (pending, no retry), the agent deregistered, exit 0 within seconds."""
    fleet.serve()
    fleet.cli("allowance", "set", "a", "--concurrent", "1")
    with open_registry(fleet.store_url) as registry, TaskClient(fleet.base_url, "") as client:
        agent = fleet.agent("a", ["x"], 1, seconds=None)  # its task never ends by itself
        task = create(client, "long", labels=["x"])
        dispatcher = fleet.dispatch()
        wait_until(lambda: len(fleet.marks()) == 1, "a runs the task", fleet)
        (started,) = fleet.marks()

        agent.ended = True
        agent.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: "finishing held tasks" in agent.err.read_text(), "a draining", fleet)
        assert registered(registry, "a")  # still listed while it drains (full)
        assert agent.popen.poll() is None  # the first one waits for the task (30 s grace)
        time.sleep(0.3)  # later than an echo of the first (see agentic._signals)
        agent.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert agent.popen.wait(30) == 0
        assert time.monotonic() - signalled < 10  # not the grace period
        assert agent.stop_line().endswith(": 0 completed, 0 failed, 1 released, 0 errors")
        assert "grace period skipped" in agent.err.read_text()
        wait_until(lambda: not running(started.pid), "the task's command ended", fleet)

        stored = client.get_task(task.id)  # no agent left: nobody claims it again
        assert (stored.status, stored.claimed_by, stored.retry_count) == (TaskStatus.PENDING, "", 0)
        assert not registered(registry, "a")
        with open_allowance_store(fleet.store_url) as quota:
            assert quota.get_usage("a").active_jobs == 0
        assert dispatcher.stop() == 0
    assert fleet.procs["serve"].stop() == 0


def test_second_sigterm_stops_the_dispatcher_cleanly_and_says_so(tmp_path: Path) -> None:
    """dispatch given SIGTERM twice logs that the second has nothing to cut short
    (it holds no tasks) and exits 0."""
    url = "sqlite:///" + (tmp_path / "fleet.db").as_posix().lstrip("/")
    # The default interval: an idle dispatcher sees a stop at its long-poll's end (2 s
    # at most), which leaves the second signal time to arrive while it stops.
    with fleet_on(tmp_path, url) as fleet:
        fleet.serve()
        dispatcher = fleet.dispatch()
        said = dispatcher.err.read_text
        wait_until(lambda: "holds the lease" in said(), "dispatch active", fleet)
        dispatcher.ended = True
        dispatcher.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping after this pass" in said(), "the first signal seen", fleet)
        time.sleep(0.3)  # later than an echo of the first (see agentic._signals)
        alive = dispatcher.popen.poll() is None
        dispatcher.popen.send_signal(signal.SIGTERM)
        assert dispatcher.popen.wait(10) == 0
        if alive:  # else it had stopped already: nothing left to say
            assert "signal 15 again: " in said()
        assert fleet.procs["serve"].stop() == 0


def test_sigterm_dispatcher_mid_work_leaks_nothing_and_a_new_one_finishes(fleet: Fleet) -> None:
    """SIGTERM mid-work: dispatch exits 0; no claim or reservation leaks; a restart ends it."""
    day = quota_day()
    fleet.serve()
    fleet.cli("allowance", "set", "a", "--concurrent", "4")
    with TaskClient(fleet.base_url, "") as client:
        agent = fleet.agent("a", ["x"], 6, seconds=0.3)
        ids = {create(client, f"t{i}", labels=["x"]).id for i in range(16)}
        dispatcher = fleet.dispatch()
        wait_until(lambda: count(client, TaskStatus.COMPLETED) >= 4, "4 tasks completed", fleet)
        assert dispatcher.stop(timeout=5) == 0

        # The agent finishes what was claimed; nothing new is claimed, nothing leaks.
        wait_until(lambda: count(client, TaskStatus.IN_PROGRESS) == 0, "the agent idle", fleet)
        done = count(client, TaskStatus.COMPLETED)
        assert done < len(ids), "the dispatcher finished everything before SIGTERM"
        pending = client.list_tasks(status=TaskStatus.PENDING)
        assert len(pending) == len(ids) - done
        assert all(t.claimed_by == "" and t.retry_count == 0 for t in pending)
        with open_allowance_store(fleet.store_url) as quota:
            usage = quota.get_usage("a")
        assert usage.active_jobs == 0
        if quota_day() == day:
            assert usage.jobs_started == done

        restarted = fleet.dispatch("dispatch-2")
        wait_completed(client, ids, fleet, timeout=30)
        assert all(t.retry_count == 0 for t in all_tasks(client).values())
        assert restarted.stop() == 0
        assert agent.stop() == 0
    assert fleet.procs["serve"].stop() == 0
    ran_once(fleet.marks(), ids)
    assert agent.stop_line().endswith(": 16 completed, 0 failed, 0 released, 0 errors")
