"""Dead-letter alerts: the alert payload and text, and the sinks that deliver them.

The log sink always runs, in the outbox relay, at WARNING. The other sinks run as arq jobs, one
per sink and alert, so a slow or failing sink never blocks the tracker or another sink. A sink
that fails is retried with exponential backoff up to ``alert_max_tries``; a delivery is recorded
under ``P:alert_sent:...`` so that running the same arq job again sends nothing twice.
NOTE: a crash between a successful send and that record can still deliver one alert twice.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
from loguru import logger

from orchestrator.gateway import GatewayClient
from orchestrator.jobs import Job, ms_to_iso
from orchestrator.settings import Settings


class AlertDeliveryError(Exception):
    """A sink did not accept an alert; the arq job retries it."""


def build_alert(job: Job, failure: int, *, task_max_chars: int) -> dict[str, Any]:
    """Return the alert payload of one dead letter (the webhook's JSON body)."""
    task = job.task or ""
    if len(task) > task_max_chars:
        task = task[: task_max_chars - 1] + "…"
    return {
        "type": "dead_letter",
        "job_id": job.id,
        "failure": failure,
        "agent_id": job.agent_id,
        "kind": job.kind.value,
        "status": job.status.value,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "last_error": job.last_error,
        "task": task,
        "label": job.label,
        "gateway": job.source,
        "child_session_key": job.child_session_key,
        "target_session_key": job.target_session_key,
        "parent_session_key": job.parent_session_key,
        "run_id": job.run_id,
        "failed_at": ms_to_iso(job.updated_at_ms),
    }


def alert_text(alert: dict[str, Any]) -> str:
    """Return the alert as one message for a person or an agent to read."""
    task = f' Task: "{alert["task"]}".' if alert["task"] else ""
    return (
        f"Delegated work failed and was dead-lettered: job {alert['job_id']} ({alert['kind']}) of agent "
        f"{alert['agent_id']} after {alert['attempts']} of {alert['max_attempts']} attempts. "
        f"Last error: {(alert['last_error'] or 'none recorded').rstrip('.')}.{task} "
        f"See `orchestrator queue inspect {alert['job_id']}`; re-drive it with "
        f"`orchestrator queue retry {alert['job_id']}`."
    )


def log_alert(alert: dict[str, Any]) -> None:
    """Log one WARNING line per dead letter (the log sink)."""
    logger.bind(job_id=alert["job_id"], agent_id=alert["agent_id"]).warning(
        "dead letter: {}", alert_text(alert)
    )


class AlertSink(Protocol):
    name: str

    async def send(self, alert: dict[str, Any]) -> None: ...


class WebhookSink:
    """POSTs the alert as JSON; any status other than 2xx is a failed delivery."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s

    async def send(self, alert: dict[str, Any]) -> None:
        try:
            async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                response = await client.post(self._url, json=alert)
        except httpx.HTTPError as e:
            raise AlertDeliveryError(f"webhook {self._url} failed: {type(e).__name__}: {e}") from e
        if not response.is_success:
            raise AlertDeliveryError(f"webhook {self._url} responded with HTTP {response.status_code}")


class GatewaySink:
    """Sends the alert text with ``chat.send`` into the configured sessions through the gateway."""

    name = "gateway"

    def __init__(
        self, gateway: GatewayClient, *, session_key: str | None, to_requester: bool, timeout_s: float
    ) -> None:
        self._gateway = gateway
        self._session_key = session_key
        self._to_requester = to_requester
        self._timeout_s = timeout_s

    def sessions_for(self, alert: dict[str, Any]) -> list[str]:
        sessions = [self._session_key] if self._session_key else []
        requester = alert.get("parent_session_key")
        if self._to_requester and requester and requester not in sessions:
            sessions.append(requester)
        return sessions

    async def send(self, alert: dict[str, Any]) -> None:
        text = alert_text(alert)
        for session_key in self.sessions_for(alert):
            # The key makes a repeated delivery a duplicate the gateway drops (within one process).
            key = f"orch-alert-{alert['job_id']}-{alert['failure']}-{session_key}"
            await self._gateway.chat_send(session_key, text, idempotency_key=key, timeout_s=self._timeout_s)


def build_sinks(settings: Settings, gateway: GatewayClient | None) -> dict[str, AlertSink]:
    """Return the configured sinks other than the log, by name."""
    sinks: dict[str, AlertSink] = {}
    if settings.alert_webhook_url:
        sinks[WebhookSink.name] = WebhookSink(
            settings.alert_webhook_url, timeout_s=settings.alert_webhook_timeout_s
        )
    if gateway is not None and (settings.alert_session_key or settings.alert_to_requester):
        sinks[GatewaySink.name] = GatewaySink(
            gateway,
            session_key=settings.alert_session_key,
            to_requester=settings.alert_to_requester,
            timeout_s=settings.dispatch_timeout_s,
        )
    return sinks
