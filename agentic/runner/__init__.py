"""The agent side: AgentRunner, TaskContext and handlers (callable, subprocess, git).

:class:`AgentRunner` registers the agent (capabilities, ``max_load``) and then:

* **Runs its agent id alone**: before registering it takes the registry lease
  ``agent:<id>``; while another runner holds it, it waits (warning once, naming the
  holder, asking again every ``heartbeat_interval``). It renews the lease with each
  heartbeat (it lasts ``id_lease`` seconds, by default the 30 s heartbeat TTL) and
  drops it when it stops. Not renewed until less than a margin of it is left (the
  ``cancel_grace`` and a safety: 22 s of 30 by default; the registry out of
  reach), it **lapses**: it takes no work and cancels its running tasks without
  reporting or settling them, before a second runner with the same id could take
  the id and the same claims (``lapsed``; see ``_idwatch``); a renewal that lands
  again ends that, the claims still held for it taken up again as by a restart. A
  renewal that finds another holder (a registry split longer than the lease)
  displaces it: it cancels its tasks without reporting or settling them (they are
  the other runner's now), sets ``displaced_by`` and stops.

* **Takes work** claimed for it by a dispatcher: it long-polls the task API for
  tasks in progress and claimed by its agent id (answered as soon as a claim is made
  for it; every ``poll_interval`` against a server that does not long-poll), and
  starts those not running yet, at most
  ``max_load`` at a time (``max_workers`` when ``max_load`` is 0, unlimited). A task
  claimed beyond that is released at once (pending again, no retry counted, its
  reservation cancelled) rather than left to wait while its lease runs out.
* **Stays visible**: a background thread heartbeats with the current load (within
  0.1 s of a change, else every ``heartbeat_interval``), renews the lease of
  every task it holds, and flushes log lines. A renewal always says its length:
  ``lease_seconds``, else the length the claim was made with (three heartbeat
  intervals, 15 s, when that is two or less: warned once). A lease that cannot be renewed
  because the task is no longer ours cancels the handler; nothing is reported for it.
* **Runs each task** in its own thread with a :class:`TaskContext`. After
  ``max_job_duration`` (the runner's, or the agent allowance's when smaller;
  re-read every ``heartbeat_interval``) the context is cancelled; a handler still
  running ``cancel_grace`` later is abandoned (Python cannot kill a thread) and the
  task is failed as "timed out after N s". :class:`SubprocessHandler` kills its
  process group on cancellation, so it does stop.
* **Keeps its jobs' reservations.** A reservation expires after the lifetime it was
  reserved with (the allowance's ``max_job_duration``, else the quota store's
  ``reservation_ttl``, an hour by default), so that a crashed runner cannot hold a
  concurrency slot for ever. While a job runs, the runner extends its reservation
  (one heartbeat after it started, then every third of that lifetime), so a job
  running longer keeps its slot. A reservation found gone meanwhile (a dispatcher
  expired it after a lost lease) is warned about once: the slot was freed while the
  job runs, and its usage is still charged when it settles (see ``_keepalive``).
* **Settles, then reports.** Usage reported through ``ctx.usage`` is settled under
  the claim's ``job_id`` first (completed: all, failed: the store's 50% rule,
  released: nothing), because once the task is pending again a dispatcher cancels
  that reservation. Each ``ctx.usage`` is also written to the job's usage file
  under ``state_dir`` at once, so a runner killed mid-task has its tokens charged
  when it starts again with the same agent id (see ``_journal``). Then: a returned
  result is ``complete(success=True)``; an exception or a failed result is
  ``complete(success=False)`` (the server counts a retry); an
  :class:`InfrastructureError` (dirty workspace, missing binary) is a release,
  since the task is not at fault, except the third in a row on one task here, which
  fails it (a retry counted): an error only that task triggers must not loop
  forever between give-back and claim.
* **Tells its own failures apart from the task's.** A report or settle that fails
  for a reason that may pass (no answer, 5xx, a store outage) is retried with
  backoff (``report_retry``); before resending a report it reads the task, so a
  report whose answer was lost is not applied twice. Past those retries a report is
  still tried (every ``report_retry.cap`` seconds) for as long as the task's lease
  holds (renewed meanwhile), so an outage shorter than the lease loses no finished
  work; once the lease ran out unrenewed the task is left to the server, which
  requeues it. Every such error is logged and counted
  in ``runner.errors``; ``completed`` / ``failed`` / ``released`` count reports the
  server accepted.
* **Stops cleanly** on ``stop`` / SIGTERM / SIGINT: it deregisters first (so nothing
  new is routed to it), waits up to ``grace_period`` for running tasks, cancels the
  rest and waits ``cancel_grace``, releases what still runs (settled as cancelled),
  and releases any task claimed for it meanwhile. A second SIGTERM / SIGINT (or
  ``stop(now=True)``) skips the grace period: running tasks are cancelled and given
  back at once.

A handler is a callable ``(task, ctx) -> str | TaskResult | None``; ``None`` and a
string mean success. Coroutine functions are run with ``asyncio.run`` in the task's
thread, and cancelled (their asyncio task) when the context is.
"""

from __future__ import annotations

from ._context import Handler, HandlerResult, InfrastructureError, TaskCancelled, TaskContext
from ._runner import AgentRunner
from ._subprocess import SubprocessHandler
from ._workspace import GitWorkspace, WorkspaceError

__all__ = [
    "AgentRunner",
    "GitWorkspace",
    "Handler",
    "HandlerResult",
    "InfrastructureError",
    "SubprocessHandler",
    "TaskCancelled",
    "TaskContext",
    "WorkspaceError",
]
