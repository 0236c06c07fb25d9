"""Prometheus metrics of the daemon, in a registry of their own.

Every metric is named ``orchestrator_*`` with its unit in the name. Label values come from fixed
sets (event types, outcomes, job statuses, breaker states), from the gateway methods and alert
sinks the daemon itself calls, or from agent ids. Agent ids come from the gateway's events, so
their number is set by the agents the operator configured in OpenClaw. As a guard against a
misbehaving gateway, at most ``max_agent_labels`` distinct agents get a label of their own, and
the rest are counted under ``agent="_other"``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from orchestrator import __version__
from orchestrator.jobs import JobStatus
from orchestrator.protocol import EventType
from orchestrator.store import Stats

# The Prometheus text exposition format 0.0.4, which generate_latest() writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_MAX_AGENT_LABELS = 200
OTHER_LABEL = "_other"

EVENT_OUTCOMES = frozenset(
    {
        "created",
        "applied",
        "stale",
        "parked",
        "recorded",
        "ignored",
        "duplicate",
        "spooled",
        "rejected",
        "error",
    }
)
# Events whose type is not a protocol event type (a rejected line) are counted as this type.
INVALID_EVENT_TYPE = "invalid"
EVENT_TYPES = frozenset({*(event_type.value for event_type in EventType), INVALID_EVENT_TYPE})

# The values of orchestrator.breaker.BreakerState.
BREAKER_STATES = ("closed", "open", "half_open")

# Ack latency: from reading a line to writing its ack, normally a few milliseconds.
ACK_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Gateway calls: a WebSocket RPC or an HTTP tool call, which may wait for an agent run to start.
GATEWAY_CALL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The daemon's metrics.

    Unknown event types and outcomes are counted under fixed fallback values instead of raising,
    so the calls on the event path cannot fail on a label.
    """

    def __init__(self, *, max_agent_labels: int = DEFAULT_MAX_AGENT_LABELS, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_agent_labels = max_agent_labels
        self._agents: set[str] = set()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._define_metrics()
        self._build_info.info({"version": __version__})
        self.set_breaker_state("closed")
        self.set_spool_depth(0)
        self.set_spool_bytes(0)

    def _define_metrics(self) -> None:
        registry = self.registry
        self._build_info = Info("orchestrator_build", "Version of the running daemon.", registry=registry)

        self._events = Counter(
            "orchestrator_events_received_total",
            "Events read from the gateway plugin, by event type and outcome.",
            ["type", "outcome"],
            registry=registry,
        )

        self._ack_latency = Histogram(
            "orchestrator_ack_latency_seconds",
            "Time from reading an event line to writing its ack.",
            buckets=ACK_LATENCY_BUCKETS_S,
            registry=registry,
        )

        self._retries = Counter(
            "orchestrator_retries_scheduled_total",
            "Retries of failed jobs scheduled, by agent.",
            ["agent"],
            registry=registry,
        )

        self._dispatches = Counter(
            "orchestrator_dispatches_total",
            "Re-dispatches of jobs to the gateway, by gateway method and result (ok or error).",
            ["method", "result"],
            registry=registry,
        )

        self._gateway_calls = Histogram(
            "orchestrator_gateway_call_duration_seconds",
            "Duration of calls to the gateway, by method, failed calls included.",
            ["method"],
            buckets=GATEWAY_CALL_BUCKETS_S,
            registry=registry,
        )

        self._gateway_errors = Counter(
            "orchestrator_gateway_call_errors_total",
            "Failed calls to the gateway, by method and error kind.",
            ["method", "kind"],
            registry=registry,
        )

        self._alerts = Counter(
            "orchestrator_alerts_sent_total",
            "Dead-letter alert deliveries, by sink and result (ok or error).",
            ["sink", "result"],
            registry=registry,
        )

        self._breaker = Gauge(
            "orchestrator_redis_breaker_state",
            "State of the Redis circuit breaker: 1 for the current state, 0 for the others.",
            ["state"],
            registry=registry,
        )

        self._spool_depth = Gauge(
            "orchestrator_spool_events",
            "Events in the local disk spool, waiting to be written to Redis.",
            registry=registry,
        )

        self._spool_bytes = Gauge(
            "orchestrator_spool_bytes",
            "Bytes of the local disk spool not yet replayed into Redis.",
            registry=registry,
        )

        self._jobs = Gauge(
            "orchestrator_jobs",
            "Jobs in Redis by status and agent, as of the last refresh.",
            ["status", "agent"],
            registry=registry,
        )

        self._dlq_size = Gauge(
            "orchestrator_dlq_size",
            "Jobs in the dead-letter queue (status failed), as of the last refresh.",
            registry=registry,
        )

    def event_received(self, type: str, outcome: str) -> None:
        """Count one event line by its protocol type and what became of it."""
        event_type = type if type in EVENT_TYPES else INVALID_EVENT_TYPE
        event_outcome = outcome if outcome in EVENT_OUTCOMES else "error"
        self._events.labels(type=event_type, outcome=event_outcome).inc()

    def observe_ack_latency(self, seconds: float) -> None:
        self._ack_latency.observe(seconds)

    def retry_scheduled(self, agent: str) -> None:
        self._retries.labels(agent=self._agent_label(agent)).inc()

    def dispatch_result(self, method: str, ok: bool) -> None:
        self._dispatches.labels(method=method, result=_result(ok)).inc()

    def observe_gateway_call(self, method: str, seconds: float, error_kind: str | None) -> None:
        """Record one gateway call; ``error_kind`` is None for a call that succeeded."""
        self._gateway_calls.labels(method=method).observe(seconds)
        if error_kind is not None:
            self._gateway_errors.labels(method=method, kind=error_kind).inc()

    def alert_sent(self, sink: str, ok: bool) -> None:
        self._alerts.labels(sink=sink, result=_result(ok)).inc()

    def set_breaker_state(self, state: str) -> None:
        """Set the breaker gauge; ``state`` is ``closed``, ``open`` or ``half_open``."""
        if state not in BREAKER_STATES:
            raise ValueError(f"breaker state {state!r} is invalid; expected one of {BREAKER_STATES}")
        for name in BREAKER_STATES:
            self._breaker.labels(state=name).set(1 if name == state else 0)

    def set_spool_depth(self, events: int) -> None:
        self._spool_depth.set(events)

    def set_spool_bytes(self, size: int) -> None:
        """Set the size of the spool not yet replayed into Redis, in bytes."""
        self._spool_bytes.set(size)

    def update_job_counts(self, stats: Stats) -> None:
        """Replace the job gauges with the counts of ``stats``.

        Every status of every agent gets a sample, zero included, and agents no longer in
        ``stats`` (their jobs were purged) lose theirs.
        """
        counts: dict[tuple[str, str], int] = {}
        for agent, by_status in stats.by_agent.items():
            label = self._agent_label(agent)
            for job_status in JobStatus:
                key = (job_status.value, label)
                counts[key] = counts.get(key, 0) + by_status.get(job_status.value, 0)
        self._jobs.clear()
        for (status, agent), count in sorted(counts.items()):
            self._jobs.labels(status=status, agent=agent).set(count)
        self._dlq_size.set(stats.by_status.get(JobStatus.FAILED.value, 0))

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def _agent_label(self, agent: str) -> str:
        if agent in self._agents:
            return agent
        if len(self._agents) < self._max_agent_labels:
            self._agents.add(agent)
            return agent
        return OTHER_LABEL


def _result(ok: bool) -> str:
    return "ok" if ok else "error"
