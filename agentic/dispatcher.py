"""The Dispatcher: route pending tasks to agents, within quota, exactly once.

One pass (:meth:`Dispatcher.run_once`):

1. List the registered agents once and build an :class:`~agentic.router.AgentIndex`.
2. List the ready pending tasks from the task API; order them by priority, then age.
3. For each task: skip it while its backoff has not elapsed (``next_attempt_at``);
   dead-letter it when it has used up its retries. Otherwise walk the router's ranking:
   ``reserve()`` quota for the candidate (over quota: try the next candidate), then
   claim the task *in that agent's name* with the reservation's job id. A claim that
   fails gives the reservation back whole (``unreserve``: the job is not counted, as
   the job never started), so nothing leaks (go-agentic's defect 6) and claims lost
   to another dispatcher cost no quota. A claim whose answer was lost is withdrawn
   before anything is given back: the server answers whether it was made, and if not
   refuses it for good, should it still be on its way (servers without
   ``claim_fencing``: the task is read back, which cannot see a claim still on its
   way). A dispatcher killed between reserve and claim leaks nothing either: the
   reservation expires. A reserve that failed with a store error (a timeout) may have
   been made: it is withdrawn at the start of each later pass until the store answers.
4. Count the new load in the index as soon as the quota is reserved, so one pass
   spreads work (defect 4); a claim that then fails gives it back.

Routing and reservations run in urgency order on the caller's thread. The claims go
in batches of up to ``claim_batch`` per request (``POST /api/tasks/claims``; each
claim is made on its own there, as if sent alone), sent on up to
``claim_concurrency`` threads as batches fill, and their outcomes are handled back
on the caller's thread. A task API without batch claims (404 or 405) is sent one
request per claim from then on.

Shortage is not failure: when no agent is eligible or every candidate is over quota,
the task *waits*, with no retry counted. Real failures (a claim refused by the server
for any reason but "already claimed", or an unreachable server) count a retry that is
stored on the task server (``retry_count``, ``last_attempt``, ``next_attempt_at``) so
backoff and the dead letter work across passes and across dispatchers (defect 5); it
is stored only onto the task as listed, not one claimed, failed or retried since.
Past ``max_retries`` the task becomes failed with the reason and ``task_dead_lettered``
is emitted. Several dispatchers may run against the same server and stores: the
claim is the server's compare-and-set and reservations are atomic in the store.

Every error is logged and counted (``Dispatcher.errors``); the loop backs off after a
failed pass instead of spinning (defect 18).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._bounds import require_seconds, require_up_to
from ._client_wire import same_source
from ._lost_claims import LostClaims, ServerFeatures, maybe_made
from ._lost_reserves import LostReserves
from ._signals import stop_on_signals
from .allowance import AllowanceService
from .client import MAX_CLAIM_BATCH, Claim, TaskClient
from .errors import (
    AgenticError,
    APIError,
    ConfigError,
    ConflictError,
    NoEligibleAgentError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
)
from .events import Event, EventEmitter, EventType, transition_id
from .models import Task, TaskStatus, TaskUpdate
from .quota import never_fits
from .retry import RetryPolicy, doubled, retry_after_of
from .router import AgentIndex, TaskRouter
from .stores._holders import hold_lease_or_take_over, new_lease_holder
from .stores.base import AgentRegistry, RunSeen

__all__ = ["LEASE", "ClaimUnknownError", "DispatchReport", "Dispatcher", "new_job_id"]

log = logging.getLogger(__name__)

#: previous attempts' job ids remembered as ended, at most
_REMEMBERED = 10_000
#: seconds of one long-poll for new work: how soon a stop is seen while waiting
_WATCH_CHUNK = 2.0
#: seconds between passes at least (at most the interval): changes coalesce
_MIN_GAP = 0.05
#: seconds before a second look after a woken pass left tasks waiting
_FOLLOW_UP = 0.25
#: answers to a batch of claims meaning "no such route here": claim one by one instead
_NO_BATCHES = frozenset({404, 405, 501})
#: quota refusals that no other task could pass either (the rules check the allowlist
#: and tokens first, so an agent refused for these refuses every task until a job ends)
_ANY_TASK_REFUSED = frozenset({"daily job limit", "concurrent job limit"})
#: the registry lease the exclusive dispatchers share: its holder is the active one
LEASE = "dispatcher"
#: seconds the lease lasts at least (else 3 intervals): how long a standby waits for
#: a dispatcher that died without giving it up
_LEASE_MIN_TTL = 15.0


def new_job_id(task: Task) -> str:
    """A reservation id for one dispatch attempt of ``task``, unique to this attempt.

    Unique rather than derived from the task alone: two dispatchers reserving for the
    same task must not share (and then cancel) each other's reservation.
    """
    return f"{task.id}/{task.retry_count}/{uuid.uuid4().hex[:12]}"


class ClaimUnknownError(AgenticError):
    """A claim got no usable answer and the server could not say whether it was made: it may have
    been made. Its reservation is kept; a later pass finds out and gives it back if
    the claim was not made."""


@dataclass
class DispatchReport:
    """What one pass did."""

    dispatched: dict[str, str] = field(default_factory=dict)  # task id -> agent id
    waiting: dict[str, str] = field(default_factory=dict)  # task id -> why
    failed: dict[str, str] = field(default_factory=dict)  # task id -> error
    dead_lettered: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"dispatched={len(self.dispatched)} waiting={len(self.waiting)}"
            f" failed={len(self.failed)} dead_lettered={len(self.dead_lettered)}"
        )


class Dispatcher:
    """Routes pending tasks to agents through quota and an atomic claim."""

    def __init__(
        self,
        registry: AgentRegistry,
        router: TaskRouter,
        allowance: AllowanceService,
        client: TaskClient,
        emitter: EventEmitter | None = None,
        retry: RetryPolicy | None = None,
        *,
        heartbeat_ttl: float | None = None,
        lease_seconds: float | None = None,
        claim_concurrency: int = 8,
        claim_batch: int = 50,
        page_size: int = 500,
        exclusive: bool = True,
        active_lease: float | None = None,
        name: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        require_up_to("claim_concurrency", claim_concurrency, 64)
        require_up_to("claim_batch", claim_batch, MAX_CLAIM_BATCH)
        require_up_to("page_size", page_size, 10_000)
        for said, seconds in (("heartbeat_ttl", heartbeat_ttl), ("lease_seconds", lease_seconds)):
            if seconds is not None:
                require_seconds(said, seconds)
        self.registry = registry
        self.router = router
        self.allowance = allowance
        self.client = client
        self.emitter = emitter
        self.retry = retry or RetryPolicy()
        self.heartbeat_ttl = heartbeat_ttl
        self.lease_seconds = lease_seconds
        #: claim requests in flight at once within a pass
        self.claim_concurrency = claim_concurrency
        #: claims sent in one request at most (1: one request per claim)
        self.claim_batch = claim_batch
        #: ready tasks listed per request; a pass lists the next page only while some
        #: agent still has room (servers without ``list_pages``: all at once)
        self.page_size = page_size
        #: in :meth:`run`, pass only while holding the registry's dispatcher lease:
        #: one dispatcher is active, the others stand by and take over when it stops
        #: (at once) or dies (when its lease runs out)
        self.exclusive = exclusive
        if active_lease is not None:
            require_seconds("active_lease", active_lease)
        #: seconds the lease lasts from each renewal (None: 3 intervals or 15 s,
        #: whichever is longer): how long a standby waits for a dispatcher that died
        self.active_lease = active_lease
        #: this dispatcher's name as the lease holder
        self.name = name or new_lease_holder()
        #: whether :meth:`run` holds the lease (always True when not exclusive)
        self.active = not exclusive
        #: who held the lease at the last ask ("" before one)
        self.lease_holder = ""
        self._lease_told = False
        # False once the task API answered a batch with 404/405 (it has no batches)
        self._batches = claim_batch > 1
        self._clock = clock
        #: errors seen (failed passes, failed claims, emitter failures), each logged
        self.errors = 0
        #: job ids of previous attempts already ended here (oldest first, bounded)
        self._ended: OrderedDict[str, None] = OrderedDict()
        #: task id -> why it waited when last told (oldest first, bounded)
        self._told: OrderedDict[str, tuple[EventType, frozenset[str]]] = OrderedDict()
        # The task API's features (claim_fencing, list_pages, ...), read at first need
        self._features = ServerFeatures()
        #: claims whose answer was lost and whose outcome is not known yet
        self._lost = LostClaims(self._features, self._unreserve)
        #: reserves that failed with a store error, so may have been made: withdrawn
        self._lost_reserves = LostReserves(allowance, self._count_error)

    # --- one task ---
    def dispatch(self, task: Task, agents: AgentIndex | None = None) -> str:
        """Reserve and claim ``task`` for the best agent that has quota; its id.

        Raises :class:`NoEligibleAgentError` or :class:`QuotaExceededError` when the
        task must wait, :class:`ConflictError` when another dispatcher claimed it, and
        the claim's error for a real failure; nothing stays reserved then. The
        exceptions: :class:`ClaimUnknownError`, the claim may have been made, so its
        reservation stays until a later :meth:`run_once` finds out (or it expires); and
        the :class:`ConflictError` of a claim whose answer was lost and whose task
        became final meanwhile under another claim or none (completed, or failed
        after that claim was made), whose reservation is left to expire.
        """
        self._lost_reserves.withdraw()
        self._forget_previous_attempt(task)
        index = agents if agents is not None else self._index()[0]
        agent_id, job_id = self._reserve(task, index)
        try:
            error = self._try_claim(task, agent_id, job_id)
        except BaseException:  # interrupted mid-claim: nothing may stay held
            self._unreserve(job_id)
            index.add_load(agent_id, -1)
            raise
        self._claimed(task, agent_id, job_id, error, index)
        return agent_id

    def _index(self) -> tuple[AgentIndex, frozenset[str]]:
        """The registered agents, each loaded with at least its reserved jobs; and the
        capabilities of those whose reservations outnumber what they report.

        An agent reports the tasks it has *started*; a task claimed for it by an
        earlier pass stays unseen there until the agent polls. Its reservation counts
        from the claim, so the larger of the two keeps a pass from routing past
        ``max_load`` on a stale load. A reservation may also be a dead attempt's (its
        task requeued after its lease ran out), freed only when the pass lists that
        task: the capabilities returned keep such tasks listed.
        """
        reserved = self.allowance.active_jobs()
        agents, held = [], set()
        for listed in self.registry.list():
            if reserved.get(listed.id, 0) > listed.current_load:
                agents.append(listed.model_copy(update={"current_load": reserved[listed.id]}))
                held.update(listed.capabilities)
            else:
                agents.append(listed)
        return AgentIndex(agents), frozenset(held)

    def _reserve(
        self, task: Task, index: AgentIndex, full: dict[str, QuotaExceededError] | None = None
    ) -> tuple[str, str]:
        """Rank, then reserve quota on the first candidate that has it: (agent, job id).

        The agent's load in ``index`` counts the task from here on, so the tasks after
        it in a pass are routed as if the claim had succeeded (defect 4). ``full``
        remembers, for one pass, the agents refused whatever the task (no slot or no
        job left today, no allowance): they are not asked again in that pass, so a
        backlog of thousands costs one refusal per agent, not one per task.
        """
        try:
            ranked = self.router.rank(task, index)
        except NoEligibleAgentError as exc:
            reason = str(exc)
            self._emit_waiting(
                EventType.DISPATCH_FAILED_NO_AGENT, task, {"reason": reason}, frozenset({reason})
            )
            raise
        refusals: list[tuple[str, QuotaExceededError]] = []
        for agent_id in ranked:
            known = full.get(agent_id) if full is not None else None
            if known is not None:
                refusals.append((agent_id, known))
                continue
            job_id = new_job_id(task)
            try:
                self.allowance.reserve(
                    agent_id, task.model, task.estimated_tokens, job_id, task_id=task.id
                )
            except QuotaExceededError as exc:
                refusals.append((agent_id, exc))
                if full is not None and exc.reason in _ANY_TASK_REFUSED:
                    full[agent_id] = exc
                continue
            except NotFoundError as exc:
                # No allowance: this agent may take no work (fail closed), the next may.
                refusal = QuotaExceededError(exc.message)
                refusals.append((agent_id, refusal))
                if full is not None:
                    full[agent_id] = refusal
                continue
            except StoreError as exc:  # a timeout, say: the reservation may be made
                self._lost_reserves.keep(job_id, agent_id, exc)
                raise
            index.add_load(agent_id)
            return agent_id, job_id
        each = [f"{agent}: {exc.reason}" for agent, exc in refusals]
        reasons = "; ".join(each)
        waits = [exc.retry_after for _a, exc in refusals if exc.retry_after is not None]
        payload = {"reasons": reasons}
        if self._told.get(task.id) != (EventType.DISPATCH_FAILED_QUOTA, frozenset(each)):
            never = self._never(task, [agent for agent, _exc in refusals])
            if never:
                payload["never"] = never
                log.warning(
                    "task %s can never be dispatched as the allowances stand (%s): raise a"
                    " limit (agentic allowance set) or lower the task's estimated_tokens",
                    task.id,
                    never,
                )
        self._emit_waiting(EventType.DISPATCH_FAILED_QUOTA, task, payload, frozenset(each))
        raise QuotaExceededError(
            f"no eligible agent has quota for it ({reasons})", min(waits) if waits else None
        )

    def _never(self, task: Task, agents: list[str]) -> str:
        """Why none of ``agents`` could take the task even on a day with nothing used
        (its size or its model, see ``quota.never_fits``), or "" when one could after
        a reset or a settle, or that cannot be told. Read only when a task's refusals
        change: a few store reads, told once."""
        store = self.allowance.store
        try:
            quota = store.get_model_quota(task.model) if task.model else None
        except NotFoundError:
            quota = None
        except AgenticError:
            return ""
        why = []
        for agent_id in agents:
            try:
                allowance = store.get_allowance(agent_id)
            except NotFoundError:
                why.append(f"{agent_id}: it has no allowance")
                continue
            except AgenticError:
                return ""
            never = never_fits(allowance, quota, task.model, task.estimated_tokens)
            if never is None:
                return ""
            why.append(f"{agent_id}: {never}")
        return "; ".join(why)

    def _emit_waiting(
        self, kind: EventType, task: Task, payload: dict[str, str], reasons: frozenset[str]
    ) -> None:
        """A dispatch_failed_* event, only when the set of ``reasons`` the task waits
        for changes: a task waiting pass after pass for the same ones is told once,
        not every pass, nor when only their order moved (agents ranked otherwise as
        their loads change)."""
        why = (kind, reasons)
        if self._told.get(task.id) == why:
            return
        self._told[task.id] = why
        self._told.move_to_end(task.id)
        while len(self._told) > _REMEMBERED:
            self._told.popitem(last=False)
        self._emit(kind, task, "", payload)

    def _try_claim(self, task: Task, agent_id: str, job_id: str) -> Exception | None:
        """The claim in ``agent_id``'s name; its error is returned, not raised.

        Returned so that a pass can run claims on worker threads and still handle
        every outcome (quota, counters, events) on its own thread.
        """
        try:
            self.client.claim_task(
                task.id, agent_id=agent_id, lease_seconds=self.lease_seconds, job_id=job_id
            )
        except Exception as exc:  # handed to _claimed, which raises it
            return exc
        return None

    def _try_claims(self, batch: list[tuple[Task, str, str]]) -> list[Exception | None]:
        """The claims of ``batch`` in one request; their errors returned, not raised.

        One claim, or a task API without batch claims: one request per claim.
        """
        if len(batch) == 1 or not self._batches:
            return [self._try_claim(*routed) for routed in batch]
        claims = [Claim(task.id, agent, job, self.lease_seconds) for task, agent, job in batch]
        try:
            answers = self.client.claim_tasks(claims)
        except APIError as exc:
            if exc.from_response and exc.code in _NO_BATCHES:
                # The route is missing (an older or go-agentic server); nothing was claimed.
                log.warning("the task API has no batch claims (%s): one request per claim", exc)
                self._batches = False
                with ThreadPoolExecutor(self.claim_concurrency, "agentic-claim-one") as pool:
                    return list(pool.map(lambda routed: self._try_claim(*routed), batch))
            return [exc] * len(batch)
        except Exception as exc:  # every claim of the batch shares its fate
            return [exc] * len(batch)
        return [None if isinstance(answer, Task) else answer for answer in answers]

    def _claimed(
        self, task: Task, agent_id: str, job_id: str, error: Exception | None, index: AgentIndex
    ) -> None:
        """Finish a claim attempt: events on success; else the error is raised.

        A definite refusal gives the reservation and the load back. An answer that
        may hide a claim made (none at all, a 5xx from a proxy, a body that does not
        parse) is settled by :meth:`LostClaims.made`: made -> dispatched; not made ->
        given back; no answer -> :class:`ClaimUnknownError`: the reservation stays
        (the job may be running) and a later pass settles the question.
        """
        made: bool | None = False
        try:
            if error is not None and maybe_made(error):
                made = self._lost.made(self.client, task.id, job_id)
        finally:
            if error is not None and made is False:
                self._unreserve(job_id)
                index.add_load(agent_id, -1)
        if error is not None and made and self._features.known("claim_fencing"):
            self._lost.require_carried(self.client, task.id, job_id)
        if error is None or made:
            self._told.pop(task.id, None)  # should it wait again, that is news
            self._emit(EventType.TASK_CLAIMED, task, agent_id, {"job_id": job_id})
            self._emit(EventType.TASK_DISPATCHED, task, agent_id, {"job_id": job_id})
            return
        if made is None:
            self._lost.keep(job_id, task.id)
            raise ClaimUnknownError(
                f"claim of task {task.id} for {agent_id} got no usable answer and the server"
                f" cannot tell yet whether it was made ({error}); its reservation is kept"
                " until that is known"
            ) from error
        raise error

    def _forget_previous_attempt(self, task: Task) -> None:
        """Free the slot of an attempt whose lease ran out (its runner died, or lost
        touch with the server) by expiring its reservation now.

        Expired, not cancelled: the job stays counted and nothing is recorded, so if
        that runner is alive after all its own settle still charges what it used. If
        it settled already this changes nothing. A store failure is raised: a pass
        stops at the first one, not one per task. Each job id is ended once: a task
        waiting out its backoff keeps it, and is listed again pass after pass.
        """
        if not task.job_id or task.job_id in self._ended:
            return
        try:
            self.allowance.expire(task.job_id)
        except NotFoundError:
            log.debug("reservation %s already gone (expired or settled)", task.job_id)
        self._ended[task.job_id] = None
        while len(self._ended) > _REMEMBERED:
            self._ended.popitem(last=False)

    def _count_error(self) -> None:
        self.errors += 1

    def _unreserve(self, job_id: str) -> None:
        """Give back a reservation whose claim failed: the job did not start (defect 6)."""
        try:
            self.allowance.unreserve(job_id)
        except NotFoundError:
            log.debug("reservation %s already gone (expired)", job_id)
        except AgenticError:
            self.errors += 1
            log.exception("could not give back reservation %s; it will expire", job_id)

    # --- one pass ---
    def run_once(self) -> DispatchReport:
        """One dispatch pass over every ready pending task (see the module docstring).

        Routing and reservations run in urgency order on this thread; the claims go in
        batches (``claim_batch``) on up to ``claim_concurrency`` threads as batches
        fill, and their outcomes are handled back here, so counters and events stay on
        one thread. Every task reserved is claimed and seen through, even when the pass
        stops on an error.
        """
        report = DispatchReport()
        self._lost_reserves.withdraw()  # first: a slot it frees counts in this pass
        if self.heartbeat_ttl:
            for agent_id in self.registry.reap(self.heartbeat_ttl):
                self._emit(EventType.AGENT_OFFLINE, None, agent_id, {})
        seen: set[str] = set()
        tasks = self._ready_page(None, seen)
        self._lost.settle(self.client, tasks)
        # A task with a claim still unsettled is not claimed again meanwhile: that
        # claim may be made, and would then hold it under a reservation of its own.
        unsettled = self._lost.task_ids()
        for task in tasks:
            # Before the index: a dead attempt's reservation must not count as load.
            self._forget_previous_attempt(task)
        index, held = self._index()
        now = self._clock()
        full: dict[str, QuotaExceededError] = {}  # refused whatever the task, this pass
        routed: list[tuple[Task, str, str]] = []  # reserved, their batch not sent yet
        sent: list[tuple[list[tuple[Task, str, str]], Future[list[Exception | None]]]] = []
        with ThreadPoolExecutor(self.claim_concurrency, "agentic-claim") as pool:
            try:
                for task in self._pass_tasks(tasks, seen, index, full, held):
                    if task.id in unsettled:
                        report.waiting[task.id] = "a claim of it has no known outcome yet"
                    elif task.retry_count > task.max_retries:
                        reason = task.fail_reason or "max retries exceeded"
                        self._dead_letter(task, reason, report)
                    elif task.next_attempt_at is not None and task.next_attempt_at > now:
                        until = task.next_attempt_at.isoformat()
                        report.waiting[task.id] = f"backoff until {until}"
                    else:
                        try:
                            agent_id, job_id = self._reserve(task, index, full)
                        except StoreError:
                            raise  # the quota store is down: the pass fails, not the task
                        except AgenticError as exc:
                            self._not_dispatched(task, exc, report)
                            continue
                        routed.append((task, agent_id, job_id))
                        if len(routed) >= (self.claim_batch if self._batches else 1):
                            sent.append((routed, pool.submit(self._try_claims, routed)))
                            routed = []
            finally:
                if routed:
                    sent.append((routed, pool.submit(self._try_claims, routed)))
                for batch, claims in sent:
                    for (task, agent_id, job_id), error in zip(
                        batch, _outcomes(claims, len(batch)), strict=True
                    ):
                        try:
                            self._see_through(task, agent_id, job_id, error, index, report)
                        except Exception:  # recording its failure failed: the others go on
                            self.errors += 1
                            log.exception("claim of task %s: its outcome was not recorded", task.id)
        return report

    def _ready_page(
        self, after: str | None, seen: set[str], within: frozenset[str] | None = None
    ) -> list[Task]:
        """The next page of ready pending tasks after task ``after`` (all of them from
        a server that does not page), most urgent first; their ids join ``seen``.
        ``within``: only tasks with no label outside it, from a server that filters."""
        if not self._features.has(self.client, "list_pages"):  # unknown: the list below reports why
            if after is not None:
                return []  # the first answer held everything
            tasks = self.client.list_tasks(status=TaskStatus.PENDING, ready=True)
        else:
            tasks = self.client.list_tasks(
                status=TaskStatus.PENDING,
                ready=True,
                limit=self.page_size,
                after=after,
                labels_within=sorted(within)
                if within is not None and self._features.has(self.client, "labels_within")
                else None,
            )
            if any(task.id in seen for task in tasks):  # the cursor was not honoured
                log.warning("the task API repeated a page: listing stops for this pass")
                self._features.forget()
                return []
        seen.update(task.id for task in tasks)
        tasks.sort(key=_urgency)
        return tasks

    def _pass_tasks(
        self,
        first: list[Task],
        seen: set[str],
        index: AgentIndex,
        full: dict[str, QuotaExceededError],
        held: frozenset[str],
    ) -> Iterator[Task]:
        """The tasks of a pass, page after page: the next page is listed only when the
        last was full and some agent may still take work (not full, not refused
        whatever the task), so a backlog of thousands costs a page while the fleet is
        busy, not the whole list. Pages after the first hold only tasks the router
        could route now (:meth:`TaskRouter.routable_labels`; for the default router,
        tasks whose labels are all capabilities of agents with room), and those of the
        ``held`` capabilities (agents whose reservations may be dead attempts, freed
        when their tasks are listed): a backlog of one capability whose agents are
        busy is not walked while another's agents are idle. The first page is whole:
        what waits at the head, and why, is seen."""
        page = first
        while True:
            yield from page
            if len(page) < self.page_size or not index.has_room(full):
                return
            within = self.router.routable_labels(index, full)
            if within is not None:
                # No label holds a comma (the list parameter's separator): a
                # capability with one can match no task, and is left out.
                within = frozenset(c for c in within | held if c and "," not in c)
            page = self._ready_page(page[-1].id, seen, within)
            for task in page:
                self._forget_previous_attempt(task)

    def _see_through(
        self,
        task: Task,
        agent_id: str,
        job_id: str,
        error: Exception | None,
        index: AgentIndex,
        report: DispatchReport,
    ) -> None:
        """Handle one claim's outcome; nothing it raises stops the others."""
        try:
            self._claimed(task, agent_id, job_id, error, index)
        except AgenticError as exc:
            self._not_dispatched(task, exc, report)
        except Exception as exc:  # a bug, not an answer: still one task's failure
            log.exception("claim of task %s failed unexpectedly", task.id)
            self._not_dispatched(task, AgenticError(f"unexpected error: {exc!r}"), report)
        else:
            report.dispatched[task.id] = agent_id

    def _not_dispatched(self, task: Task, exc: AgenticError, report: DispatchReport) -> None:
        """Sort a dispatch error: waiting (shortage, claimed elsewhere) or a failure."""
        if isinstance(exc, NoEligibleAgentError | QuotaExceededError):
            report.waiting[task.id] = str(exc)
        elif isinstance(exc, ClaimUnknownError):
            # Not a failure of the task (it may be running): nothing is recorded on it.
            self.errors += 1
            log.warning("%s", exc)
            report.waiting[task.id] = str(exc)
        elif isinstance(exc, ConflictError):
            # Another dispatcher (or a runner) got there first: not our failure.
            report.waiting[task.id] = f"claimed elsewhere: {exc.message}"
        elif isinstance(exc, APIError) and exc.code == 429:
            # Not attempted (a batch out of time, a rate limit): not the task's failure.
            report.waiting[task.id] = f"claim not attempted: {exc.message}"
        else:
            self.errors += 1
            log.warning("dispatch of task %s failed: %s", task.id, exc)
            report.failed[task.id] = str(exc)
            self._record_failure(task, exc, report)

    def _record_failure(self, task: Task, exc: AgenticError, report: DispatchReport) -> None:
        attempt = task.retry_count + 1
        now = self._clock()
        if not self.retry.should_retry(attempt, task.max_retries):
            self._dead_letter(task, f"max retries exceeded: {exc}", report, attempt)
            return
        update = TaskUpdate(
            retry_count=attempt,
            last_attempt=now,
            next_attempt_at=self.retry.next_attempt_at(now, attempt, retry_after_of(exc)),
            fail_reason=str(exc),
        )
        self._update(task, update)

    def _dead_letter(
        self, task: Task, reason: str, report: DispatchReport, attempts: int | None = None
    ) -> None:
        update = TaskUpdate(status=TaskStatus.FAILED, fail_reason=reason)
        if attempts is not None:
            update.retry_count, update.last_attempt = attempts, self._clock()
        if self._update(task, update):
            report.dead_lettered.append(task.id)
            self._emit(EventType.TASK_DEAD_LETTERED, task, "", {"reason": reason})

    def _update(self, task: Task, update: TaskUpdate) -> bool:
        # Computed from the task as listed: only onto that (update_fencing), not onto a
        # task claimed, failed or retried since; unconditioned only to a server known to
        # lack it (features unread: the client reads them, and refuses or fails first).
        fenced = self._features.has(self.client, "update_fencing") is not False
        seen = RunSeen.of(task) if fenced else None
        try:
            self.client.update_task(task.id, update, seen)
        except ConflictError as exc:  # it changed meanwhile (retried, say): nothing to record
            log.info("failure of task %s not recorded: %s", task.id, exc.message)
            return False
        except (APIError, ConfigError) as exc:  # ConfigError: no update_fencing there now
            self.errors += 1
            self._features.forget()  # the server behind the address may have changed
            log.error("could not record the failure of task %s: %s", task.id, exc)
            return False
        return True

    # --- the loop ---
    def run(self, stop: threading.Event | None = None, interval: float = 5.0) -> None:
        """Pass after pass until ``stop`` is set or SIGTERM/SIGINT arrives; first at once.

        The next pass comes ``interval`` seconds after the last began, or as soon as
        the task API reports new work (a long-poll: a task created, released, finished,
        updated or requeued). A pass that fails (task server or store unreachable) is
        logged and counted, and the next one waits longer (doubling up to 10
        intervals) instead of spinning.

        An ``exclusive`` dispatcher passes only while it holds the registry's lease
        (:data:`LEASE`, renewed before each pass for ``active_lease`` seconds, 15 by
        default, and 3 intervals at least; its waits, backoff included, last a third
        of that at most); otherwise it stands by, asking again every interval (1 s at
        least, a third of the lease at most), and gives the lease up when it stops.
        """
        interval = require_seconds("interval", interval)
        stop = stop or threading.Event()
        # A second signal has nothing to cut short: a dispatcher holds no tasks, and
        # the pass in flight must see its claims through (or reservations would leak).
        restore = stop_on_signals(
            stop,
            "stopping after this pass",
            hurry=threading.Event(),
            hurry_what="stopping as soon as the pass in flight has settled its claims"
            " (a dispatcher holds no tasks: nothing to give back)",
        )
        try:
            self._loop(stop, interval)
        finally:
            restore()
            if self.exclusive and self.active:
                self._give_up_lease()

    def run_turn(self, interval: float = 5.0) -> DispatchReport | None:
        """One pass as :meth:`run` makes one: an ``exclusive`` dispatcher passes only
        holding the lease (taken for the pass, given up after), so a one-off pass does
        not race the active dispatcher over the same tasks. None when another holds
        it (:attr:`lease_holder` names it): that one dispatches these tasks."""
        interval = require_seconds("interval", interval)
        if not self.exclusive:
            return self.run_once()
        if not self._hold_lease(interval):
            return None
        try:
            return self.run_once()
        finally:
            self._give_up_lease()

    def _lease_ttl(self, interval: float) -> float:
        """How long the lease lasts from a renewal: ``active_lease`` (15 s by default),
        and 3 intervals at least, since the holder renews it once a turn."""
        return max(self.active_lease or _LEASE_MIN_TTL, 3 * interval)

    def _hold_lease(self, interval: float) -> bool:
        """Take or renew the dispatcher lease; whether this dispatcher is active."""
        # A dispatcher of this machine that was killed is not waited for.
        ttl = self._lease_ttl(interval)
        holder = hold_lease_or_take_over(self.registry, LEASE, self.name, ttl, log)
        self.lease_holder = holder
        active = holder == self.name
        # Said on each change, and at the first answer: a dispatcher that starts as
        # the standby would otherwise print nothing until it takes over (looks hung).
        if active != self.active or not self._lease_told:
            self._lease_told = True
            if active:
                log.info("dispatcher %s holds the lease: active", self.name)
            else:
                log.info("dispatcher %s stands by: %s holds the lease", self.name, holder)
        self.active = active
        return active

    def _give_up_lease(self) -> None:
        """Let a standby take over at once instead of when the lease runs out."""
        try:
            self.registry.drop_lease(LEASE, self.name)
        except Exception as exc:  # it runs out by itself
            log.warning("could not give up the dispatcher lease (%s); it will expire", exc)
        self.active = False

    def _loop(self, stop: threading.Event, interval: float) -> None:
        failures = 0
        last = ""  # the previous pass's summary
        # The task API's change token: taken before each pass that follows no wait, so
        # a change made while the pass runs is one the next wait returns on at once.
        # None: the server does not watch (sleep instead); "": not known yet.
        token: str | None = ""
        woken = False  # this pass began because of a change, not the interval
        while not stop.is_set():
            started = time.monotonic()
            try:
                if self.exclusive and not self._hold_lease(interval):
                    failures = 0  # a standby that takes over starts afresh
                    stop.wait(min(max(interval, 1.0), self._lease_ttl(interval) / 3))
                    continue
            except AgenticError as exc:  # the registry is down: nobody can tell who is active
                failures += 1
                self.errors += 1
                log.error("dispatcher lease failed (%d in a row): %s", failures, exc)
                stop.wait(doubled(interval, failures, 10))
                continue
            if token == "":
                token = self._watch("", 0.0)
            waiting = False
            try:
                report = self.run_once()
            except AgenticError as exc:
                failures += 1
                self.errors += 1
                log.error("dispatch pass failed (%d in a row): %s", failures, exc)
            except Exception:  # a bug must not end the loop: logged, counted, backed off
                failures += 1
                self.errors += 1
                log.exception("dispatch pass failed unexpectedly (%d in a row)", failures)
            else:
                if failures:  # said, or the log would end on the last failure
                    log.info("dispatch passes work again after %d failure(s) in a row", failures)
                failures = 0
                waiting = bool(report.waiting)
                summary = report.summary()
                # An idle pass like the one before is not news: debug, not info.
                news = report.dispatched or report.failed or report.dead_lettered
                level = logging.INFO if news or summary != last else logging.DEBUG
                log.log(level, "dispatch pass: %s", summary)
                last = summary
            pause = doubled(interval, failures, 10)
            if woken and waiting and not failures:
                # Woken by a change (a task finished, say) with tasks left waiting:
                # agents publish their load a heartbeat later (0.1 s), so a freed
                # slot may not have shown yet. One more look, soon.
                pause = min(pause, _FOLLOW_UP)
            if self.exclusive:
                # The holder renews once a turn: a backoff longer than a third of the
                # lease would hand the lease to a standby while this one is alive.
                pause = min(pause, self._lease_ttl(interval) / 3)
            pause = max(0.0, pause - (time.monotonic() - started))
            if failures or token is None:
                stop.wait(pause)
                token, woken = "", False  # ask again whether the server watches
            else:
                token, woken = self._wait_for_work(token, pause, stop)
            # Never two passes closer than this: changes arriving faster (a busy
            # fleet, a claim and release ping-pong) coalesce instead of spinning.
            rest = min(_MIN_GAP, interval) - (time.monotonic() - started)
            if rest > 0:
                stop.wait(rest)

    def _wait_for_work(self, token: str, wait: float, stop: threading.Event) -> tuple[str, bool]:
        """Wait until the task API reports a change since ``token``, ``wait`` seconds
        pass or ``stop`` is set: the token to go on with, and whether it changed.

        Asked in long-polls of at most ``_WATCH_CHUNK`` seconds, so that ``stop`` is
        seen that soon. A token from another server process (behind a load balancer)
        says nothing of a change: the wait goes on with it. If the server cannot be
        asked, this waits as plain polling would (never a pass without a pause).
        """
        deadline = time.monotonic() + wait
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            new = self._watch(token, min(left, _WATCH_CHUNK))
            if not new:  # could not ask, or the server stopped watching
                stop.wait(left)
                return "", False
            if new != token and same_source(new, token):
                return new, True
            token = new
        return token, False

    def _watch(self, token: str, wait: float) -> str | None:
        """The task API's change token once it moved past ``token`` (or after ``wait``
        seconds); None when the server does not watch, "" when it cannot be asked."""
        try:
            _tasks, new = self.client.watch_tasks(
                token, wait, status=TaskStatus.PENDING, ready=True, limit=1
            )
        except AgenticError as exc:
            self.errors += 1
            log.warning("waiting for new work failed: %s", exc)
            return ""
        return new

    def _emit(
        self, kind: EventType, task: Task | None, agent_id: str, payload: dict[str, Any]
    ) -> None:
        if self.emitter is None:
            return
        # A task's transition gets the id the task store records it under, so the
        # event log keeps one of the two.
        extra = (
            {"id": transition_id(task.id, kind, payload.get("job_id", ""), task.reruns)}
            if task
            else {}
        )
        try:
            self.emitter.emit(
                Event(
                    type=kind,
                    task_id=task.id if task else "",
                    agent_id=agent_id,
                    payload=payload,
                    **extra,
                )
            )
        except Exception:
            self.errors += 1
            log.exception("event emitter failed on %s", kind.value)


def _outcomes(claims: Future[list[Exception | None]], size: int) -> list[Exception | None]:
    """A batch's ``size`` outcomes; if even that failed, every claim shares the error."""
    try:
        return claims.result()
    except Exception as exc:
        return [exc] * size


def _urgency(task: Task) -> tuple[int, datetime, str]:
    created = task.created_at or datetime.min.replace(tzinfo=UTC)
    return (task.priority.rank, created, task.id)
