"""End-to-end scenarios: real gateway, bridge plugin, ``orchestrator serve`` and Redis.

Jobs are read with ``orchestrator queue list --json`` and ``orchestrator queue inspect --json``,
as an operator would. Each test has its own Redis key prefix, and picks its jobs out by the child
session keys that the gateway itself reports through ``sessions.list``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from .daemon import OrchestratorDaemon
from .gateway import GatewayClient
from .helpers import Job, child_sessions, jobs_for, poll, spawn_rule
from .mock_model import MockModel, tool_call

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


def _assert_spawn_completed(daemon: OrchestratorDaemon, job: Job, child_key: str) -> None:
    assert job["kind"] == "spawn"
    assert job["status"] == "completed", job
    assert job["child_session_key"] == child_key
    assert job["agent_id"] == "main"
    assert isinstance(job["run_id"], str), job
    assert job["run_id"], job
    assert job["last_error"] in (None, ""), job

    inspected = daemon.inspect(job["id"])
    assert inspected["id"] == job["id"]
    reached = [step["to"] for step in inspected["history"]]
    assert reached[-1] == "completed", inspected["history"]
    assert "active" in reached, inspected["history"]
    for step in inspected["history"]:
        assert {"at", "from", "to", "reason"} <= step.keys(), step


async def test_two_subagents_complete(
    orchestrator_daemon: OrchestratorDaemon, model: MockModel, gateway_client: GatewayClient
) -> None:
    orchestrator_daemon.start()
    tag = uuid.uuid4().hex[:8]
    session_key = f"agent:main:it-{tag}"
    spawn_rule(model, tag, [f"a-{tag}", f"b-{tag}"])

    result = await gateway_client.agent_turn(f"SPAWN {tag}", session_key=session_key)
    assert result.get("status") == "ok", result
    children = await child_sessions(gateway_client, session_key, 2)
    child_keys = {child["key"] for child in children}
    assert len(child_keys) == 2

    jobs = await poll(
        lambda: jobs_for(orchestrator_daemon, child_keys, "spawn"),
        lambda found: len(found) == 2 and all(job["status"] == "completed" for job in found),
        "two completed spawn jobs",
    )
    assert {job["child_session_key"] for job in jobs} == child_keys
    for job in jobs:
        _assert_spawn_completed(orchestrator_daemon, job, job["child_session_key"])
    assert len({job["id"] for job in jobs}) == 2


async def test_spawn_while_daemon_down_is_recorded(
    orchestrator_daemon: OrchestratorDaemon,
    model: MockModel,
    gateway_client: GatewayClient,
) -> None:
    assert not orchestrator_daemon.ping(), "something already listens on the plugin's socket"
    tag = uuid.uuid4().hex[:8]
    session_key = f"agent:main:it-{tag}"
    spawn_rule(model, tag, [f"down-{tag}"])

    await gateway_client.agent_turn(f"SPAWN {tag}", session_key=session_key)
    children = await child_sessions(gateway_client, session_key, 1)
    child_key = children[0]["key"]
    # The announce run in the parent comes after the child finished; subagent_ended follows it.
    await poll(
        lambda: [r for r in model.completions() if r.prompt and child_key in r.prompt.text],
        bool,
        "the announce of the child's result to the parent",
        timeout_s=60,
    )

    started_at = datetime.now(UTC)
    orchestrator_daemon.start()
    jobs = await poll(
        lambda: jobs_for(orchestrator_daemon, {child_key}, "spawn"),
        lambda found: len(found) == 1 and found[0]["status"] == "completed",
        "the buffered spawn recorded as completed",
    )
    _assert_spawn_completed(orchestrator_daemon, jobs[0], child_key)
    # The job was created from the plugin's buffer, so only after the daemon started.
    created_at = datetime.fromisoformat(jobs[0]["created_at"].replace("Z", "+00:00"))
    assert created_at >= started_at - timedelta(seconds=1), (created_at, started_at)


async def test_sessions_send_tracked_to_completion(
    orchestrator_daemon: OrchestratorDaemon, model: MockModel, gateway_client: GatewayClient
) -> None:
    orchestrator_daemon.start()
    tag = uuid.uuid4().hex[:8]
    session_key = f"agent:main:it-{tag}"
    spawn_rule(model, tag, [f"s-{tag}"])
    await gateway_client.agent_turn(f"SPAWN {tag}", session_key=session_key)
    children = await child_sessions(gateway_client, session_key, 1)
    child_key = children[0]["key"]
    await poll(
        lambda: jobs_for(orchestrator_daemon, {child_key}, "spawn"),
        lambda found: len(found) == 1 and found[0]["status"] == "completed",
        "the spawn job completed",
    )

    model.add_rule(
        tool_call(
            "sessions_send", {"sessionKey": child_key, "message": f"follow-up {tag}", "timeoutSeconds": 0}
        ),
        contains=f"SEND {tag}",
        subagent=False,
    )
    await gateway_client.agent_turn(f"SEND {tag}", session_key=session_key)
    await poll(
        lambda: [
            r
            for r in model.completions()
            if r.prompt and r.prompt.subagent and r.prompt.text == f"follow-up {tag}"
        ],
        bool,
        "the child's model call for the sent message",
        timeout_s=60,
    )

    def send_jobs() -> list[Job]:
        return [
            job
            for job in orchestrator_daemon.jobs()
            if job.get("kind") == "send" and _targets(orchestrator_daemon, job, child_key)
        ]

    jobs = await poll(
        send_jobs,
        lambda found: len(found) == 1 and found[0]["status"] == "completed",
        "the send job completed",
    )
    job = jobs[0]
    assert isinstance(job["run_id"], str), job
    assert job["run_id"], job
    assert job["last_error"] in (None, ""), job
    history = orchestrator_daemon.inspect(job["id"])["history"]
    assert history[-1]["to"] == "completed", history


def _targets(daemon: OrchestratorDaemon, job: Job, session_key: str) -> bool:
    """Whether a send job's target is session_key, read from the list entry or from inspect."""
    for source in (job, daemon.inspect(job["id"])):
        for field in ("target_session_key", "child_session_key"):
            if source.get(field) == session_key:
                return True
    return False
