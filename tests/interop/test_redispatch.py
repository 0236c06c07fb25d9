"""Re-dispatch of failed work through the real gateway: retries, dead letters and their alerts.

The daemon re-runs a failed child with ``sessions.send`` into the child's own session, with the
idempotency key ``orch-<job id>-<dispatch number>``, which the gateway 2026.9.6 uses as the run id
of the new run. A spawn that failed before any child existed is spawned again with
``tools.invoke sessions_spawn``. Each scenario makes the child's task fail in a different way and
checks the job with ``orchestrator queue inspect --json`` and the mock model's request log.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import pytest

from .conftest import GATEWAY_ID
from .daemon import OrchestratorDaemon
from .gateway import GatewayClient, GatewayProcess
from .helpers import (
    Job,
    child_model_calls,
    child_sessions,
    child_task,
    jobs_for,
    poll,
    spawn_rule,
    statuses,
)
from .mock_model import MockModel, http_error, text, tool_call
from .webhook import WebhookReceiver

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

MAX_ATTEMPTS = 3
# Short backoff, so that a retry runs within a second of the failure.
RETRY_SETTINGS = {
    "ORCH_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "ORCH_RETRY_BASE_S": "0.2",
    "ORCH_RETRY_CAP_S": "1",
    "ORCH_DISPATCH_TIMEOUT_S": "20",
}
ALERT_SESSION_KEY = "agent:main:main"
# Time allowed after the last alert for a duplicate delivery to show up before counting.
DUPLICATE_WINDOW_S = 3.0


def _dispatch_key(job_id: str, number: int) -> str:
    return f"orch-{job_id}-{number}"


def _follows(sequence: list[str], expected: list[str]) -> bool:
    """Tell whether expected occurs in sequence in this order, not necessarily adjacent."""
    remaining = iter(sequence)
    return all(item in remaining for item in expected)


def _unix_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _spawn_one_child(model: MockModel, client: GatewayClient, tag: str) -> str:
    """Run a parent turn that spawns the child ``c-<tag>``; return the child's session key."""
    spawn_rule(model, tag, [f"c-{tag}"])
    session_key = f"agent:main:it-{tag}"
    result = await client.agent_turn(f"SPAWN {tag}", session_key=session_key)
    assert result.get("status") == "ok", result
    [child] = await child_sessions(client, session_key, 1, finished=False)
    return str(child["key"])


async def _wait_for_status(
    daemon: OrchestratorDaemon, child_key: str, status: str, timeout_s: float = 120.0
) -> Job:
    """Wait until the spawn job of child_key has ``status``; return it inspected, with its history."""
    jobs = await poll(
        lambda: jobs_for(daemon, {child_key}, "spawn"),
        lambda found: len(found) == 1 and found[0]["status"] == status,
        f"the spawn job of {child_key} to be {status}",
        timeout_s=timeout_s,
    )
    return daemon.inspect(jobs[0]["id"])


def _alert_prompts(model: MockModel, job_id: str) -> list[str]:
    """Return the main-session prompts that mention job_id: the gateway sink's messages."""
    return [
        record.prompt.text
        for record in model.completions()
        if record.prompt is not None and not record.prompt.subagent and f"job {job_id}" in record.prompt.text
    ]


def _log_lines_with(daemon: OrchestratorDaemon, *parts: str) -> list[str]:
    return [line for line in daemon.log_lines() if all(part in line for part in parts)]


def _user_messages(history: dict[str, Any]) -> list[str]:
    texts = []
    for message in history.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        texts.append(str(content))
    return texts


async def test_failing_child_dead_lettered_with_alerts(
    orchestrator_daemon: OrchestratorDaemon, model: MockModel, gateway_client: GatewayClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    with WebhookReceiver() as webhook:
        orchestrator_daemon.configure(
            {
                **RETRY_SETTINGS,
                "ORCH_ALERT_WEBHOOK_URL": webhook.url,
                "ORCH_ALERT_SESSION_KEY": ALERT_SESSION_KEY,
            }
        )
        orchestrator_daemon.start()
        task = child_task(tag, f"c-{tag}")
        # Every model call of this child's runs fails at once with HTTP 400.
        model.add_rule(http_error(400, f"mock rejects {tag}"), contains=task, subagent=True)
        child_key = await _spawn_one_child(model, gateway_client, tag)

        job = await _wait_for_status(orchestrator_daemon, child_key, "failed")
        job_id = job["id"]

        # Both sinks deliver in arq jobs after the status change; wait for them, then for strays.
        await poll(lambda: webhook.bodies_for(job_id), bool, "the webhook alert", timeout_s=30)
        await poll(
            lambda: _alert_prompts(model, job_id), bool, "the gateway alert at the model", timeout_s=60
        )
        await asyncio.sleep(DUPLICATE_WINDOW_S)

        assert job["attempts"] == MAX_ATTEMPTS, job
        assert job["max_attempts"] == MAX_ATTEMPTS, job
        assert job["dispatches"] == MAX_ATTEMPTS - 1, job
        assert job["run_id"] == _dispatch_key(job_id, MAX_ATTEMPTS - 1), job
        assert job["next_retry_at"] is None, job
        assert job["last_error"], job

        reached = statuses(job)
        assert reached.count("retrying") == MAX_ATTEMPTS - 1, job["history"]
        assert _follows(reached, ["retrying", "queued", "retrying", "queued", "failed"]), job["history"]
        assert reached[-1] == "failed", job["history"]
        assert "dead-lettered" in job["history"][-1]["reason"], job["history"]

        calls = child_model_calls(model, task)
        assert len(calls) == MAX_ATTEMPTS, [(c.status, c.prompt) for c in calls]
        assert all(call.status == 400 for call in calls), [c.status for c in calls]

        assert job_id in [dead["id"] for dead in orchestrator_daemon.dead_letters()]

        [alert] = webhook.bodies_for(job_id)
        assert alert["type"] == "dead_letter", alert
        assert alert["failure"] == 1, alert
        assert alert["status"] == "failed", alert
        assert alert["kind"] == "spawn", alert
        assert alert["attempts"] == MAX_ATTEMPTS, alert
        assert alert["max_attempts"] == MAX_ATTEMPTS, alert
        assert alert["task"] == task, alert
        assert alert["child_session_key"] == child_key, alert
        assert alert["gateway"] == GATEWAY_ID, alert
        assert alert["last_error"], alert

        [prompt] = _alert_prompts(model, job_id)
        assert "dead-lettered" in prompt, prompt
        history = await gateway_client.request("chat.history", {"sessionKey": ALERT_SESSION_KEY, "limit": 50})
        in_session = [m for m in _user_messages(history) if f"job {job_id}" in m]
        assert len(in_session) == 1, in_session

        dead_letter_lines = _log_lines_with(orchestrator_daemon, "dead letter:", job_id)
        assert len(dead_letter_lines) == 1, dead_letter_lines
        assert "WARNING" in dead_letter_lines[0], dead_letter_lines[0]
        for sink in ("webhook", "gateway"):
            delivered = _log_lines_with(orchestrator_daemon, f"alert for job {job_id} delivered to {sink}")
            assert len(delivered) == 1, (sink, delivered)


async def test_child_failing_once_completes(
    orchestrator_daemon: OrchestratorDaemon, model: MockModel, gateway_client: GatewayClient
) -> None:
    orchestrator_daemon.configure(RETRY_SETTINGS)
    orchestrator_daemon.start()
    tag = uuid.uuid4().hex[:8]
    task = child_task(tag, f"c-{tag}")
    # The first model call of the child fails, and the mock's default reply serves the next one.
    model.add_rule(http_error(400, f"mock rejects {tag} once"), contains=task, subagent=True, times=1)
    child_key = await _spawn_one_child(model, gateway_client, tag)

    job = await _wait_for_status(orchestrator_daemon, child_key, "completed")
    job_id = job["id"]

    assert job["attempts"] == 2, job
    assert job["dispatches"] == 1, job
    assert job["run_id"] == _dispatch_key(job_id, 1), job
    assert job["next_retry_at"] is None, job

    reached = statuses(job)
    assert reached.count("retrying") == 1, job["history"]
    retry_at = reached.index("retrying")
    assert reached[retry_at : retry_at + 3] == ["retrying", "queued", "active"], job["history"]
    assert reached[-1] == "completed", job["history"]
    assert "outcome=error" in job["history"][retry_at]["reason"], job["history"]

    calls = child_model_calls(model, task)
    assert [call.status for call in calls] == [400, 200], [(c.status, c.prompt) for c in calls]

    assert job_id not in [dead["id"] for dead in orchestrator_daemon.dead_letters()]
    assert _log_lines_with(orchestrator_daemon, "dead letter:", job_id) == []


@pytest.mark.timeout(420)
async def test_child_interrupted_by_gateway_kill_rerun(
    orchestrator_daemon: OrchestratorDaemon,
    model: MockModel,
    gateway: GatewayProcess,
    gateway_client: GatewayClient,
) -> None:
    orchestrator_daemon.configure(RETRY_SETTINGS)
    orchestrator_daemon.start()
    tag = uuid.uuid4().hex[:8]
    task = child_task(tag, f"c-{tag}")
    # The first model call hangs past the kill, and the mock's default reply serves the re-run.
    model.add_rule(text(f"too late {tag}", delay_s=120), contains=task, subagent=True, times=1)
    child_key = await _spawn_one_child(model, gateway_client, tag)
    await poll(lambda: child_model_calls(model, task), bool, "the child's first model call", timeout_s=60)
    await _wait_for_status(orchestrator_daemon, child_key, "active", timeout_s=60)

    await asyncio.to_thread(gateway.restart, kill=True)
    assert gateway.ready_at is not None
    ready_at = gateway.ready_at

    # The gateway settles the interrupted child about 24 s after ready (openclaw 2026.9.6).
    job = await _wait_for_status(orchestrator_daemon, child_key, "completed", timeout_s=180)
    job_id = job["id"]

    assert job["attempts"] == 2, job
    assert job["dispatches"] == 1, job
    assert job["run_id"] == _dispatch_key(job_id, 1), job

    reached = statuses(job)
    assert reached.count("retrying") == 1, job["history"]
    retry_at = reached.index("retrying")
    assert reached[retry_at : retry_at + 3] == ["retrying", "queued", "active"], job["history"]
    assert reached[-1] == "completed", job["history"]
    retrying = job["history"][retry_at]
    assert "outcome=error" in retrying["reason"], job["history"]
    settled_after_s = _unix_s(retrying["at"]) - ready_at
    assert 0 < settled_after_s < 90, (settled_after_s, job["history"])

    calls = child_model_calls(model, task)
    assert len(calls) == 2, [(c.status, c.prompt) for c in calls]
    assert calls[1].at > ready_at, (calls[1].at, ready_at)
    assert calls[1].status == 200, calls[1]


async def test_rejected_spawn_spawned_again(
    orchestrator_daemon: OrchestratorDaemon, model: MockModel, gateway_client: GatewayClient
) -> None:
    orchestrator_daemon.configure(RETRY_SETTINGS)
    orchestrator_daemon.start()
    tag = uuid.uuid4().hex[:8]
    label = f"s-{tag}"
    task = child_task(tag, label)
    parent_key = f"agent:main:it-{tag}"
    # 2026.9.6 rejects sessions_spawn with mode "session" and no thread as an error, so the
    # spawn fails before any child exists. The daemon spawns again with task and label only.
    model.add_rule(
        tool_call("sessions_spawn", {"task": task, "label": label, "mode": "session"}),
        contains=f"SPAWN {tag}",
        subagent=False,
    )
    result = await gateway_client.agent_turn(f"SPAWN {tag}", session_key=parent_key)
    assert result.get("status") == "ok", result

    def parent_jobs() -> list[Job]:
        return [job for job in orchestrator_daemon.jobs() if job.get("parent_session_key") == parent_key]

    # The gateway announces a child spawned through tools.invoke only on the parent's next turn
    # ("operator tool invocation authority expired"), so the job waits in announcing until then.
    [listed] = await poll(
        parent_jobs,
        lambda found: len(found) == 1 and found[0]["status"] == "announcing",
        "the spawned-again job to reach announcing",
    )
    job_id = listed["id"]
    key = _dispatch_key(job_id, 1)
    [child] = await child_sessions(gateway_client, parent_key, 1)
    assert child["label"] == f"{label} [{key}]", child
    assert listed["child_session_key"] == child["key"], listed

    await gateway_client.agent_turn(f"NUDGE {tag}", session_key=parent_key)
    [done] = await poll(
        parent_jobs,
        lambda found: len(found) == 1 and found[0]["status"] == "completed",
        "the spawned-again job to complete after the parent's next turn",
        timeout_s=60,
    )
    job = orchestrator_daemon.inspect(done["id"])

    assert job["kind"] == "spawn", job
    assert job["attempts"] == 2, job
    assert job["dispatches"] == 1, job
    assert job["task"] == task, job
    reached = statuses(job)
    assert _follows(reached, ["retrying", "queued", "active", "announcing", "completed"]), job["history"]
    assert reached.count("retrying") == 1, job["history"]
    assert "sessions_spawn error" in job["history"][reached.index("retrying")]["reason"], job["history"]

    calls = child_model_calls(model, task)
    assert len(calls) == 1, [(c.status, c.prompt) for c in calls]
    nudges = [
        record.prompt.text
        for record in model.completions()
        if record.prompt is not None and not record.prompt.subagent and f"NUDGE {tag}" in record.prompt.text
    ]
    assert any(key in text for text in nudges), nudges
