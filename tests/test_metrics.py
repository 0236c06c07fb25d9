"""The Prometheus metrics: names, labels, bounded agent labels, and the text exposition."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import __version__
from orchestrator.breaker import BreakerState
from orchestrator.metrics import CONTENT_TYPE, OTHER_LABEL, Metrics
from orchestrator.store import Stats


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def stats(by_agent: dict[str, dict[str, int]]) -> Stats:
    by_status: dict[str, int] = {}
    for counts in by_agent.values():
        for status, count in counts.items():
            by_status[status] = by_status.get(status, 0) + count
    return Stats(by_status=by_status, by_agent=by_agent, counters={})


def test_events_counted_by_type_and_outcome() -> None:
    metrics = Metrics(process=False)
    metrics.event_received("spawn", "created")
    metrics.event_received("spawn", "created")
    metrics.event_received("end", "parked")
    metrics.event_received("send", "spooled")
    assert sample(metrics, "orchestrator_events_received_total", type="spawn", outcome="created") == 2
    assert sample(metrics, "orchestrator_events_received_total", type="end", outcome="parked") == 1
    assert sample(metrics, "orchestrator_events_received_total", type="send", outcome="spooled") == 1


def test_unknown_event_labels_are_bounded() -> None:
    metrics = Metrics(process=False)
    metrics.event_received("no-such-type", "applied")
    metrics.event_received("send", "no-such-outcome")
    assert sample(metrics, "orchestrator_events_received_total", type="invalid", outcome="applied") == 1
    assert sample(metrics, "orchestrator_events_received_total", type="send", outcome="error") == 1


def test_latency_histograms() -> None:
    metrics = Metrics(process=False)
    metrics.observe_ack_latency(0.003)
    metrics.observe_ack_latency(0.2)
    assert sample(metrics, "orchestrator_ack_latency_seconds_count") == 2
    assert sample(metrics, "orchestrator_ack_latency_seconds_bucket", le="0.005") == 1
    assert sample(metrics, "orchestrator_ack_latency_seconds_sum") == pytest.approx(0.203)


def test_gateway_calls_and_errors() -> None:
    metrics = Metrics(process=False)
    metrics.observe_gateway_call("sessions_spawn", 0.5, None)
    metrics.observe_gateway_call("sessions_spawn", 2.0, "timeout")
    name = "orchestrator_gateway_call_duration_seconds_count"
    assert sample(metrics, name, method="sessions_spawn") == 2
    errors = "orchestrator_gateway_call_errors_total"
    assert sample(metrics, errors, method="sessions_spawn", kind="timeout") == 1


def test_dispatch_retry_and_alert_counters() -> None:
    metrics = Metrics(process=False)
    metrics.dispatch_result("sessions_spawn", True)
    metrics.dispatch_result("sessions_spawn", False)
    metrics.retry_scheduled("main")
    metrics.alert_sent("webhook", False)
    assert sample(metrics, "orchestrator_dispatches_total", method="sessions_spawn", result="ok") == 1
    assert sample(metrics, "orchestrator_dispatches_total", method="sessions_spawn", result="error") == 1
    assert sample(metrics, "orchestrator_retries_scheduled_total", agent="main") == 1
    assert sample(metrics, "orchestrator_alerts_sent_total", sink="webhook", result="error") == 1


def test_breaker_state_is_one_hot() -> None:
    metrics = Metrics(process=False)
    assert sample(metrics, "orchestrator_redis_breaker_state", state="closed") == 1
    metrics.set_breaker_state("half_open")
    assert sample(metrics, "orchestrator_redis_breaker_state", state="closed") == 0
    assert sample(metrics, "orchestrator_redis_breaker_state", state="open") == 0
    assert sample(metrics, "orchestrator_redis_breaker_state", state="half_open") == 1


def test_breaker_state_rejects_unknown() -> None:
    metrics = Metrics(process=False)
    with pytest.raises(ValueError, match="breaker state 'broken' is invalid"):
        metrics.set_breaker_state("broken")


def test_spool_gauges() -> None:
    metrics = Metrics(process=False)
    assert sample(metrics, "orchestrator_spool_events") == 0
    assert sample(metrics, "orchestrator_spool_bytes") == 0
    metrics.set_spool_depth(42)
    metrics.set_spool_bytes(4096)
    assert sample(metrics, "orchestrator_spool_events") == 42
    assert sample(metrics, "orchestrator_spool_bytes") == 4096


def test_breaker_state_accepts_str_enum() -> None:
    metrics = Metrics(process=False)
    metrics.set_breaker_state(BreakerState.OPEN)
    assert sample(metrics, "orchestrator_redis_breaker_state", state="open") == 1
    assert sample(metrics, "orchestrator_redis_breaker_state", state="closed") == 0


def test_job_counts_and_dlq_size() -> None:
    metrics = Metrics(process=False)
    metrics.update_job_counts(stats({"main": {"active": 2, "failed": 1}, "coder": {"completed": 5}}))
    assert sample(metrics, "orchestrator_jobs", status="active", agent="main") == 2
    assert sample(metrics, "orchestrator_jobs", status="failed", agent="main") == 1
    assert sample(metrics, "orchestrator_jobs", status="queued", agent="main") == 0
    assert sample(metrics, "orchestrator_jobs", status="completed", agent="coder") == 5
    assert sample(metrics, "orchestrator_dlq_size") == 1


def test_job_counts_drop_purged_agents() -> None:
    metrics = Metrics(process=False)
    metrics.update_job_counts(stats({"main": {"active": 1}, "gone": {"completed": 3}}))
    metrics.update_job_counts(stats({"main": {"completed": 1}}))
    assert sample(metrics, "orchestrator_jobs", status="completed", agent="gone") is None
    assert sample(metrics, "orchestrator_jobs", status="active", agent="main") == 0
    assert sample(metrics, "orchestrator_jobs", status="completed", agent="main") == 1
    assert sample(metrics, "orchestrator_dlq_size") == 0


def test_agent_labels_capped() -> None:
    metrics = Metrics(process=False, max_agent_labels=2)
    metrics.update_job_counts(
        stats({"a": {"active": 1}, "b": {"active": 2}, "c": {"active": 3}, "d": {"active": 4}})
    )
    metrics.retry_scheduled("e")
    metrics.retry_scheduled("a")
    assert sample(metrics, "orchestrator_jobs", status="active", agent="a") == 1
    assert sample(metrics, "orchestrator_jobs", status="active", agent="b") == 2
    assert sample(metrics, "orchestrator_jobs", status="active", agent=OTHER_LABEL) == 7
    assert sample(metrics, "orchestrator_jobs", status="active", agent="c") is None
    assert sample(metrics, "orchestrator_retries_scheduled_total", agent=OTHER_LABEL) == 1
    assert sample(metrics, "orchestrator_retries_scheduled_total", agent="a") == 1


def test_render_parses_as_prometheus_text() -> None:
    metrics = Metrics()
    metrics.event_received("ping", "recorded")
    families = {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}
    assert "orchestrator_events_received" in families
    assert "orchestrator_ack_latency_seconds" in families
    assert "process_resident_memory_bytes" in families
    build = families["orchestrator_build_info"].samples[0]
    assert build.labels == {"version": __version__}
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_registry_is_not_global() -> None:
    Metrics(process=False).event_received("spawn", "created")
    assert (
        REGISTRY.get_sample_value(
            "orchestrator_events_received_total", {"type": "spawn", "outcome": "created"}
        )
        is None
    )


def test_two_instances_are_independent() -> None:
    first = Metrics(process=False)
    second = Metrics(process=False)
    first.set_spool_depth(3)
    assert sample(second, "orchestrator_spool_events") == 0
