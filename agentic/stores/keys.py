"""Every Redis key agentic writes, in one place.

Keys live under a prefix (``?prefix=`` of the store URL, default ``agentic``) and
then a namespace per store, so stores sharing one Redis never collide::

    {prefix}:reg:...     AgentRegistry
    {prefix}:quota:...   AllowanceStore
    {prefix}:task:...    TaskStore
    {prefix}:log:...     EventLog
    {prefix}:rate:...    the task API's rate-limit buckets

Inside a namespace, a key naming one thing is ``{kind}:{id}`` and a key of a
collection has a different word (``agent:{id}`` vs ``agents``): no id, whatever it
contains, can turn one kind of key into another.

The quota scripts find some keys only while they run (the agents and models of the
reservations a sweep releases), so they cannot declare every key in ``KEYS``; they
receive the key *heads* below (:meth:`QuotaKeys.heads`) and append ids. This is why
the stores target one Redis server, not a Redis Cluster.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

__all__ = [
    "EventLogKeys",
    "QuotaKeys",
    "RegistryKeys",
    "TaskKeys",
    "notices_channel",
    "rate_bucket_key",
    "store_count_key",
    "store_id_key",
]


def store_id_key(prefix: str) -> str:
    """``{prefix}:store_id``: a string, the random id of the stores under ``prefix``
    (written by the first to ask, never changed)."""
    return f"{prefix}:store_id"


def store_count_key(prefix: str, store_id: str) -> str:
    """``{prefix}:store_count:{store_id}``: an integer, the writes made to the store of
    that id (each writing script adds one; never goes down). Named by the id, so one
    key says both that the store is still the one a process opened and how far it
    has come. Beside it, ``...:{store_id}:went_back`` (a string, the count found and
    the count a process had seen) once a process found the count gone back (a
    failover to a replica that lagged, a restored backup): until an operator accepts
    the store as it is (``agentic admin accept-store``), every process refuses it."""
    return f"{prefix}:store_count:{store_id}"


def notices_channel(prefix: str, database: int) -> str:
    """``{prefix}:task:notices:{database}``: not a key but a pub/sub channel, on which
    the task API servers sharing the stores under ``prefix`` in that database tell each
    other their changes (pub/sub ignores databases: the number keeps stores of the same
    prefix in two databases apart)."""
    return f"{prefix}:task:notices:{database}"


def rate_bucket_key(prefix: str, caller: str) -> str:
    """``{prefix}:rate:bucket:{caller}``: a hash, one caller's rate-limit bucket
    (``tokens``, ``at``: epoch seconds), expiring once it would be full again."""
    return f"{prefix}:rate:bucket:{caller}"


# --- AgentRegistry: {prefix}:reg:* ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    """The registry's keys under one prefix."""

    #: hash per agent: ``doc`` (JSON of the descriptive fields), ``current_load``,
    #: ``max_load``, ``status``, ``last_heartbeat``, ``registered_at`` (epoch seconds)
    agent_head: str
    #: set of every registered agent id (what ``list`` reads)
    ids: str
    #: sorted set of ONLINE agent ids scored by last heartbeat (what ``reap`` reads)
    beats: str
    #: hash per named lease: ``holder``, ``until`` (epoch seconds)
    lease_head: str

    @classmethod
    def under(cls, prefix: str) -> RegistryKeys:
        return cls(
            f"{prefix}:reg:agent:",
            f"{prefix}:reg:ids",
            f"{prefix}:reg:beats",
            f"{prefix}:reg:lease:",
        )

    def agent(self, agent_id: str) -> str:
        return self.agent_head + agent_id


# --- AllowanceStore: {prefix}:quota:* ------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaKeys:
    """The allowance store's keys under one prefix.

    Field order is the order ``stores/redis/lua/quota_lib.lua`` reads them from
    ``ARGV``: change both together. Fields ending in ``_head`` get an id appended.
    """

    #: string per agent: AgentAllowance JSON
    allowance_head: str
    #: set of agent ids that have an allowance
    allowances: str
    #: string per model: ModelQuota JSON
    limits_head: str
    #: hash per agent: period_start, tokens_used, jobs_started, tokens_reserved, active_jobs
    agent_head: str
    #: set of agent ids that have counters
    agents: str
    #: hash per model: period_start, tokens_used, cost_used, tokens_reserved, cost_reserved
    model_head: str
    #: sorted set per model: one member per admitted request, scored by its time
    requests_head: str
    #: hash per live reservation: agent, model, tokens, cost, created_at, expires_at
    held_head: str
    #: sorted set of live reservation job ids scored by expiry (sweeps are O(expired))
    expiry: str
    #: hash per settled job: agent, model, outcome, charged, cost, previous, status
    settled_head: str
    #: sorted set of settled job ids scored by settle time (pruned after the retention)
    settled_at: str

    @classmethod
    def under(cls, prefix: str) -> QuotaKeys:
        q = f"{prefix}:quota:"
        return cls(
            allowance_head=q + "allowance:",
            allowances=q + "allowances",
            limits_head=q + "limits:",
            agent_head=q + "agent:",
            agents=q + "agents",
            model_head=q + "model:",
            requests_head=q + "requests:",
            held_head=q + "held:",
            expiry=q + "expiry",
            settled_head=q + "settled:",
            settled_at=q + "settled_at",
        )

    def heads(self) -> tuple[str, ...]:
        """Every field, in declaration order (the scripts' ARGV layout)."""
        return astuple(self)

    def allowance(self, agent_id: str) -> str:
        return self.allowance_head + agent_id

    def limits(self, model: str) -> str:
        return self.limits_head + model


# --- TaskStore: {prefix}:task:* (added with the Redis task store) --------------------


@dataclass(frozen=True, slots=True)
class TaskKeys:
    """The task store's keys under one prefix.

    Field order is the order ``stores/redis/lua/task_lib.lua`` reads them from
    ``ARGV``: change both together. Fields ending in ``_head`` get an id (or, for
    the indexes, ``{rank}`` / ``{status}:{rank}``) appended.
    """

    #: hash per task: every Task field as text (times epoch seconds, lists JSON)
    data_head: str
    #: set per task: ids of the tasks that depend on it (the dead-letter cascade)
    dependents_head: str
    #: list per task: its log lines, in order (the offset is the list index)
    logs_head: str
    #: hash: idempotency key -> id of the task it created
    idempotency: str
    #: sorted set of in-progress task ids scored by lease expiry (requeue is O(expired))
    leases: str
    #: sorted set per priority rank: every task id scored by created_at (list order)
    order_head: str
    #: sorted set per status and priority rank: task ids scored by created_at
    status_head: str
    #: hash per task: job ids that may no longer claim it -> "1" if that job's claim
    #: was made (its attempt ended), "0" if it was withdrawn before it was made
    retired_head: str
    #: sorted set per priority rank and agent (``{rank}:{agent id}``): the ids of the
    #: tasks in progress claimed for that agent, scored by created_at (a runner's poll
    #: reads its own claims, not every task in progress)
    claims_head: str
    #: set: the agent ids that have had such an index (so it can be rebuilt)
    claimers: str
    #: string: how many ids those indexes hold; when it differs from the tasks in
    #: progress (a writer that keeps no index: an older version), they are rebuilt
    claimed: str
    #: sorted set per priority rank: the pending tasks whose dependencies are all
    #: completed (ready to claim), scored by created_at
    ready_head: str
    #: sorted set per priority rank: the other pending tasks (a dependency not
    #: completed yet). With ready_head, the pending status index split in two: a
    #: dispatcher's listing of ready tasks reads only those, not a chain of thousands
    #: waiting for one task. When the two do not add up to the pending tasks of the
    #: rank (a writer that keeps no split: an older version), the rank is split again.
    waiting_head: str
    #: strings per index (``claims:{rank}``, ``ready:{rank}``): where the audit of
    #: it goes on (an offset in the tasks it indexes), and with ``:due`` appended a
    #: mark expiring after a second: each listing that reads an index audits the
    #: next chunk of it against the tasks, at most once a second, since a writer
    #: without the indexes (an older version sharing the store) can change tasks in
    #: ways their counts do not show (a dependency completed, two changes that
    #: cancel out).
    checked_head: str

    @classmethod
    def under(cls, prefix: str) -> TaskKeys:
        t = f"{prefix}:task:"
        return cls(
            data_head=t + "data:",
            dependents_head=t + "dependents:",
            logs_head=t + "logs:",
            idempotency=t + "idempotency",
            leases=t + "leases",
            order_head=t + "order:",
            status_head=t + "status:",
            retired_head=t + "retired:",
            claims_head=t + "claims:",
            claimers=t + "claimers",
            claimed=t + "claimed",
            ready_head=t + "ready:",
            waiting_head=t + "waiting:",
            checked_head=t + "checked:",
        )

    def heads(self) -> tuple[str, ...]:
        """Every field, in declaration order (the scripts' ARGV layout)."""
        return astuple(self)

    def data(self, task_id: str) -> str:
        return self.data_head + task_id

    def logs(self, task_id: str) -> str:
        return self.logs_head + task_id


# --- EventLog: {prefix}:log:* --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventLogKeys:
    """The event log's keys under one prefix (passed to its scripts as ``KEYS``)."""

    #: string: the last offset handed out (INCR); never goes back, trims included
    seq: str
    #: stream of the events kept: entry id ``{offset}-0``, fields ``id`` and ``body``
    #: (the Event as JSON)
    stream: str
    #: hash: event id -> offset, for the events kept (append's dedupe)
    ids: str
    #: hash: consumer name -> committed offset
    consumers: str

    @classmethod
    def under(cls, prefix: str) -> EventLogKeys:
        e = f"{prefix}:log:"
        return cls(seq=e + "seq", stream=e + "events", ids=e + "ids", consumers=e + "consumers")
