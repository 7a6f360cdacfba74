"""agentic: run a fleet of AI agents as one system.

Agents register with capabilities and load limits; a :class:`Dispatcher` routes each
pending task to the best capable agent, enforces token, job, rate and cost quotas
atomically (:class:`AllowanceService`), claims the task for that agent through the
HTTP task API (:class:`TaskClient`; :class:`AsyncTaskClient` for asyncio), retries
with backoff and dead-letters what keeps failing, and emits lifecycle events. State
lives in stores opened from URLs (``memory://``, ``sqlite:///path.db``,
``redis://host:6379/0``).

The reference task server lives in :mod:`agentic.server` (it needs the ``server``
extra); fakes for your own tests in :mod:`agentic.testing`.
"""

from ._async_client import AsyncTaskClient
from .allowance import AllowanceService
from .client import Claim, LogEvent, TaskClient
from .config import Config, load_config
from .dispatcher import ClaimUnknownError, Dispatcher, DispatchReport
from .errors import (
    AgenticError,
    APIError,
    ConfigError,
    ConflictError,
    NoEligibleAgentError,
    NotFoundError,
    QuotaExceededError,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
    TransportError,
)
from .eventlog import EventConsumer, EventLogEmitter
from .events import (
    CallbackEmitter,
    Event,
    EventEmitter,
    EventType,
    FanoutEmitter,
    LoggingEmitter,
    QueueEmitter,
)
from .logs import stream_logs
from .models import (
    AgentAllowance,
    AgentInfo,
    AgentStatus,
    AllowanceStatus,
    FailureCharge,
    ModelQuota,
    ModelUsage,
    Priority,
    QuotaCheckResult,
    QuotaEvent,
    Reservation,
    Settlement,
    StatusSummary,
    Task,
    TaskResult,
    TaskStatus,
    TaskUpdate,
    UsageRecord,
    UsageReport,
)
from .retry import RetryPolicy
from .router import AgentIndex, DefaultRouter, TaskRouter
from .runner import (
    AgentRunner,
    GitWorkspace,
    Handler,
    HandlerResult,
    InfrastructureError,
    SubprocessHandler,
    TaskCancelled,
    TaskContext,
    WorkspaceError,
)
from .status import format_status, get_status
from .stores import (
    AgentRegistry,
    AllowanceStore,
    EventLog,
    LoggedEvent,
    TaskStore,
    open_allowance_store,
    open_event_log,
    open_registry,
    open_task_store,
)
from .submit import submit_task
from .webhook import WebhookEmitter

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AgentAllowance",
    "AgentIndex",
    "AgentInfo",
    "AgentRegistry",
    "AgentRunner",
    "AgentStatus",
    "AgenticError",
    "AllowanceService",
    "AllowanceStatus",
    "AllowanceStore",
    "AsyncTaskClient",
    "CallbackEmitter",
    "Claim",
    "ClaimUnknownError",
    "Config",
    "ConfigError",
    "ConflictError",
    "DefaultRouter",
    "DispatchReport",
    "Dispatcher",
    "Event",
    "EventConsumer",
    "EventEmitter",
    "EventLog",
    "EventLogEmitter",
    "EventType",
    "FailureCharge",
    "FanoutEmitter",
    "GitWorkspace",
    "Handler",
    "HandlerResult",
    "InfrastructureError",
    "LogEvent",
    "LoggedEvent",
    "LoggingEmitter",
    "ModelQuota",
    "ModelUsage",
    "NoEligibleAgentError",
    "NotFoundError",
    "Priority",
    "QueueEmitter",
    "QuotaCheckResult",
    "QuotaEvent",
    "QuotaExceededError",
    "Reservation",
    "RetryPolicy",
    "Settlement",
    "StatusSummary",
    "StoreError",
    "StoreLostError",
    "StoreUnavailableError",
    "SubprocessHandler",
    "Task",
    "TaskCancelled",
    "TaskClient",
    "TaskContext",
    "TaskResult",
    "TaskRouter",
    "TaskStatus",
    "TaskStore",
    "TaskUpdate",
    "TransportError",
    "UsageRecord",
    "UsageReport",
    "WebhookEmitter",
    "WorkspaceError",
    "format_status",
    "get_status",
    "load_config",
    "open_allowance_store",
    "open_event_log",
    "open_registry",
    "open_task_store",
    "stream_logs",
    "submit_task",
]
