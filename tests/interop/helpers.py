"""Waiting and lookup helpers shared by the daemon scenarios."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .daemon import OrchestratorDaemon
from .gateway import GatewayClient
from .mock_model import MockModel, RequestRecord, ToolCall, tool_calls

Job = dict[str, Any]


async def poll(
    read: Callable[[], Any], accept: Callable[[Any], bool], description: str, timeout_s: float = 90.0
) -> Any:
    """Call read() in a thread every 0.5 s until accept(value) holds; return that value."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(read)
        if accept(value):
            return value
        await asyncio.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {description}; last value: {value!r}")


async def child_sessions(
    client: GatewayClient, requester: str, count: int, *, finished: bool = True, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Wait until the gateway lists count sub-agent sessions spawned by requester; return them.

    With ``finished`` the sessions must also have the status ``done``.
    """
    deadline = time.monotonic() + timeout_s
    children: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        sessions = await client.sessions()
        children = [s for s in sessions if s.get("spawnedBy") == requester]
        if len(children) >= count and (not finished or all(s.get("status") == "done" for s in children)):
            return children
        await asyncio.sleep(0.5)
    state = "finished " if finished else ""
    raise TimeoutError(
        f"the gateway lists {len(children)} of {count} {state}children of {requester}: {children}"
    )


def jobs_for(daemon: OrchestratorDaemon, child_keys: set[str], kind: str) -> list[Job]:
    """Return the daemon's jobs of ``kind`` whose child session is one of child_keys."""
    return [
        job for job in daemon.jobs() if job.get("kind") == kind and job.get("child_session_key") in child_keys
    ]


def child_task(tag: str, label: str) -> str:
    """Return the task text that spawn_rule gives the child with this label."""
    return f"child task {tag} {label}"


def spawn_rule(model: MockModel, tag: str, labels: list[str]) -> list[str]:
    """Make the parent's turn "SPAWN <tag>" spawn one child per label; return the task texts."""
    tasks = [child_task(tag, label) for label in labels]
    calls = [
        ToolCall("sessions_spawn", {"task": task, "label": label})
        for task, label in zip(tasks, labels, strict=True)
    ]
    model.add_rule(tool_calls(*calls), contains=f"SPAWN {tag}", subagent=False)
    return tasks


def child_model_calls(model: MockModel, task: str) -> list[RequestRecord]:
    """Return the model requests of sub-agent runs whose prompt contains ``task``, oldest first."""
    return [
        record
        for record in model.completions()
        if record.prompt is not None and record.prompt.subagent and task in record.prompt.text
    ]


def statuses(job: Job) -> list[str]:
    """Return the statuses an inspected job went through, oldest first."""
    return [step["to"] for step in job["history"]]
