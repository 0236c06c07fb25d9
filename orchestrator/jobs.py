"""The job model: kinds, statuses and the transition table.

A job is one unit of delegated work: a ``sessions_spawn`` call and the child run it started, or a
``sessions_send`` call. This module is the only place that defines which status may follow which, and
``store`` renders both transition tables into the Lua scripts that apply them atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobKind(StrEnum):
    SPAWN = "spawn"
    SEND = "send"


class JobStatus(StrEnum):
    QUEUED = "queued"  # recorded, waiting to be dispatched (new, or a retry about to run)
    ACTIVE = "active"  # the gateway accepted the work and it is running
    ANNOUNCING = "announcing"  # the child run ended and its result is being announced to the parent
    RETRYING = "retrying"  # the attempt failed and another attempt is due
    COMPLETED = "completed"
    FAILED = "failed"  # dead-lettered: attempts spent or a permanent error
    CANCELLED = "cancelled"  # killed, reset or deleted on purpose: terminal, no alert


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# Transitions a gateway event may cause. Events only ever move a job forward within one attempt,
# so applying the events of one attempt in any order ends in the same status.
EVENT_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {
            JobStatus.ACTIVE,
            JobStatus.ANNOUNCING,
            JobStatus.RETRYING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.ACTIVE: frozenset(
        {
            JobStatus.ANNOUNCING,
            JobStatus.RETRYING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.ANNOUNCING: frozenset(
        {JobStatus.RETRYING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RETRYING: frozenset({JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# Transitions only the daemon makes: a re-dispatch claims a RETRYING job (QUEUED), the gateway
# accepts it (ACTIVE) or the call fails (RETRYING, or FAILED when attempts are spent), and an
# operator re-drives a FAILED job, or with --force a stuck QUEUED, ACTIVE or ANNOUNCING one
# (RETRYING, attempts reset).
DAEMON_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.ACTIVE, JobStatus.RETRYING, JobStatus.FAILED}),
    JobStatus.ACTIVE: frozenset({JobStatus.RETRYING}),
    JobStatus.ANNOUNCING: frozenset({JobStatus.RETRYING}),
    JobStatus.RETRYING: frozenset({JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.RETRYING}),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(old: JobStatus, new: JobStatus, *, by_daemon: bool = False) -> bool:
    table = DAEMON_TRANSITIONS if by_daemon else EVENT_TRANSITIONS
    return new in table[old]


# Job fields an event may fill in. Status, attempts and timestamps belong to the store.
EVENT_FIELDS = frozenset(
    {
        "agent_id",
        "target_agent_id",
        "source",
        "tool_call_id",
        "parent_session_key",
        "parent_run_id",
        "child_session_key",
        "target_session_key",
        "run_id",
        "label",
        "mode",
        "task",
        "last_error",
        "outcome",
    }
)

# Prefix of the run ids (and gateway idempotency keys) of re-dispatches; the full key is
# ``orch-<job id>-<dispatch number>``, so a repeated call for the same dispatch reuses it.
DISPATCH_KEY_PREFIX = "orch"


def dispatch_key(job_id: str, dispatch_number: int) -> str:
    """Return the idempotency key, and so the run id, of one re-dispatch of a job."""
    return f"{DISPATCH_KEY_PREFIX}-{job_id}-{dispatch_number}"


def ms_to_iso(ms: int | None) -> str | None:
    """Format Unix milliseconds as an ISO 8601 UTC timestamp with millisecond precision."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One status change of a job."""

    at_ms: int
    from_status: JobStatus | None
    to_status: JobStatus
    reason: str
    attempt: int
    event_id: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> HistoryEntry:
        from_status = record.get("from")
        return cls(
            at_ms=int(record["at"]),
            from_status=JobStatus(from_status) if from_status else None,
            to_status=JobStatus(record["to"]),
            reason=str(record.get("reason", "")),
            attempt=int(record.get("attempt", 1)),
            event_id=record.get("event_id") or None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "at": ms_to_iso(self.at_ms),
            "from": self.from_status.value if self.from_status else None,
            "to": self.to_status.value,
            "reason": self.reason,
            "attempt": self.attempt,
            "event_id": self.event_id,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """A job record as stored in Redis."""

    id: str
    kind: JobKind
    status: JobStatus
    agent_id: str
    attempts: int
    max_attempts: int
    created_at_ms: int
    updated_at_ms: int
    source: str = "default"
    target_agent_id: str | None = None
    tool_call_id: str | None = None
    parent_session_key: str | None = None
    parent_run_id: str | None = None
    child_session_key: str | None = None
    target_session_key: str | None = None
    run_id: str | None = None
    label: str | None = None
    mode: str | None = None
    task: str | None = None
    last_error: str | None = None
    outcome: str | None = None
    next_retry_at_ms: int | None = None
    dispatches: int = 0
    failures: int = 0
    events: int = 0
    history: tuple[HistoryEntry, ...] = field(default=())

    @classmethod
    def from_hash(cls, data: dict[str, str], history: tuple[HistoryEntry, ...] = ()) -> Job:
        """Build a job from the Redis hash fields (all strings; empty means unset)."""

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if value else None

        def number(name: str) -> int | None:
            value = data.get(name)
            return int(value) if value else None

        return cls(
            id=data["id"],
            kind=JobKind(data["kind"]),
            status=JobStatus(data["status"]),
            agent_id=data.get("agent_id") or "unknown",
            attempts=_or_default(number("attempts"), 1),
            max_attempts=number("max_attempts") or 1,
            created_at_ms=number("created_at") or 0,
            updated_at_ms=number("updated_at") or 0,
            source=data.get("source") or "default",
            target_agent_id=text("target_agent_id"),
            tool_call_id=text("tool_call_id"),
            parent_session_key=text("parent_session_key"),
            parent_run_id=text("parent_run_id"),
            child_session_key=text("child_session_key"),
            target_session_key=text("target_session_key"),
            run_id=text("run_id"),
            label=text("label"),
            mode=text("mode"),
            task=text("task"),
            last_error=text("last_error"),
            outcome=text("outcome"),
            next_retry_at_ms=number("next_retry_at"),
            dispatches=number("dispatches") or 0,
            failures=number("failures") or 0,
            events=number("events") or 0,
            history=history,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_json(self, *, with_history: bool = False) -> dict[str, Any]:
        """Return the machine-readable form used by ``--json`` output."""
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "agent_id": self.agent_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": ms_to_iso(self.created_at_ms),
            "updated_at": ms_to_iso(self.updated_at_ms),
            "next_retry_at": ms_to_iso(self.next_retry_at_ms),
            "source": self.source,
            "target_agent_id": self.target_agent_id,
            "tool_call_id": self.tool_call_id,
            "parent_session_key": self.parent_session_key,
            "parent_run_id": self.parent_run_id,
            "child_session_key": self.child_session_key,
            "target_session_key": self.target_session_key,
            "run_id": self.run_id,
            "label": self.label,
            "mode": self.mode,
            "task": self.task,
            "last_error": self.last_error,
            "outcome": self.outcome,
            "dispatches": self.dispatches,
            "events": self.events,
        }
        if with_history:
            data["history"] = [entry.to_json() for entry in self.history]
        return data


@dataclass(frozen=True, slots=True)
class Effect:
    """The change one gateway event requests on the job it belongs to.

    ``openclaw.map_event`` builds it from a hook payload; the store's Lua script applies it. The
    status to move to may depend on the kind of the job the event lands on, because the end of a
    run completes a ``send`` job but only starts the announce step of a ``spawn`` job.
    """

    hook: str
    reason: str
    # Job kind to create when no job matches ``lookup``; None parks the event until one does.
    create_kind: JobKind | None = None
    # (identifier kind, identifier) pairs tried in order to find the job.
    lookup: tuple[tuple[str, str], ...] = ()
    # Identifiers to index on the job the event lands on.
    link: tuple[tuple[str, str], ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    status_by_kind: dict[JobKind, JobStatus] = field(default_factory=dict)
    # The run this event reports on. An event about another run of the job is stale and ignored.
    run_id: str | None = None
    # Fields of the gateway record, for gateway_start and gateway_stop.
    gateway_fields: dict[str, str] | None = None

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready form the Lua script decodes."""
        wire: dict[str, Any] = {
            "hook": self.hook,
            "reason": self.reason,
            "lookup": [list(pair) for pair in self.lookup],
            "link": [list(pair) for pair in self.link],
            "fields": self.fields,
            "status": {kind.value: status.value for kind, status in self.status_by_kind.items()},
        }
        if self.create_kind is not None:
            wire["create_kind"] = self.create_kind.value
        if self.run_id is not None:
            wire["run_id"] = self.run_id
        if self.gateway_fields is not None:
            wire["gateway"] = self.gateway_fields
        return wire


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value
