"""The bridge plugin inside the real gateway: which v1 frames a sub-agent spawn produces.

No daemon runs here; a FrameSink on the plugin's socket records and acknowledges the frames.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import GATEWAY_ID
from .gateway import GatewayClient, GatewayProcess
from .mock_model import MockModel, text, tool_call
from .sink import Frame, FrameSink, Received

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

ACK_FIELDS = {"ok": True, "job_id": None, "tracked": True}


def _details(frame: Frame) -> dict[str, Any]:
    details: dict[str, Any] = frame["event"]["result"]["details"]
    return details


def _is_spawn_call(label: str) -> Callable[[Frame], bool]:
    return lambda f: (
        f.get("hook") == "after_tool_call"
        and f["event"].get("toolName") == "sessions_spawn"
        and f["event"].get("params", {}).get("label") == label
    )


async def _spawn_child(
    model: MockModel, client: GatewayClient, sink: FrameSink, tag: str
) -> tuple[Frame, str, str]:
    """Run a main turn whose model response is a sessions_spawn call; return its frame, child key and run id."""
    label = f"label-{tag}"
    model.add_rule(
        tool_call("sessions_spawn", {"task": f"child task {tag}", "label": label}),
        contains=f"SPAWN {tag}",
        subagent=False,
    )
    model.add_rule(text(f"child result {tag}"), contains=f"child task {tag}", subagent=True)

    result = await client.agent_turn(f"SPAWN {tag}", session_key=f"agent:main:it-{tag}")
    assert result.get("status") == "ok", f"main turn did not finish: {json.dumps(result)[:500]}"

    spawn = await sink.wait_for(_is_spawn_call(label), f"after_tool_call sessions_spawn {label}")
    details = _details(spawn)
    assert details["status"] == "accepted", details
    return spawn, details["childSessionKey"], details["runId"]


async def test_spawn_lifecycle_frames(
    gateway: GatewayProcess, model: MockModel, sink: FrameSink, gateway_client: GatewayClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    spawn, child_key, child_run = await _spawn_child(model, gateway_client, sink, tag)

    spawned = await sink.wait_for(
        lambda f: f.get("hook") == "subagent_spawned" and f["event"].get("childSessionKey") == child_key,
        "subagent_spawned",
    )
    child_end = await sink.wait_for(
        lambda f: f.get("hook") == "agent_end" and f.get("ctx", {}).get("sessionKey") == child_key,
        "agent_end of the child run",
    )
    ended = await sink.wait_for(
        lambda f: f.get("hook") == "subagent_ended" and f["event"].get("targetSessionKey") == child_key,
        "subagent_ended",
        timeout_s=90,
    )

    assert spawn["type"] == "spawn"
    assert spawn["event"]["params"] == {"task": f"child task {tag}", "label": f"label-{tag}"}
    assert "content" not in spawn["event"]["result"], "after_tool_call result.content must be trimmed"
    assert spawn["ctx"]["sessionKey"] == f"agent:main:it-{tag}"

    assert spawned["type"] == "spawn"
    assert spawned["event"]["runId"] == child_run
    assert spawned["ctx"]["requesterSessionKey"] == f"agent:main:it-{tag}"

    assert child_end["type"] == "end"
    assert child_end["event"]["runId"] == child_run
    assert "messages" not in child_end["event"], "agent_end messages must be replaced by lastAssistant"
    assert child_end["event"]["lastAssistant"] == {"stopReason": "stop", "errorMessage": None}

    assert ended["type"] == "end"
    assert ended["event"]["outcome"] == "ok"
    assert ended["event"]["runId"] == child_run

    child_prompts = [r.prompt for r in model.completions() if r.prompt is not None and r.prompt.subagent]
    assert any(p.text == f"child task {tag}" for p in child_prompts), child_prompts


async def test_frames_are_v1_and_acked(
    gateway: GatewayProcess, model: MockModel, sink: FrameSink, gateway_client: GatewayClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    _, child_key, _ = await _spawn_child(model, gateway_client, sink, tag)
    await sink.wait_for(
        lambda f: f.get("hook") == "subagent_ended" and f["event"].get("targetSessionKey") == child_key,
        "subagent_ended",
        timeout_s=90,
    )

    received = sink.received
    assert received, "the sink received nothing"
    ids = [item.frame["id"] for item in received]
    assert len(ids) == len(set(ids)), "event ids must be unique"
    for item in received:
        frame = item.frame
        assert frame["v"] == 1
        assert frame["source"] == GATEWAY_ID
        assert isinstance(frame["ts"], int)
        assert frame["type"] in {"spawn", "send", "end", "gateway"}
        assert isinstance(frame["event"], dict)
        assert 1 <= len(frame["id"]) <= 128
        assert "\n" not in item.raw
        assert item.response == {"id": frame["id"], **ACK_FIELDS}


async def test_rejected_spawn_frame(
    gateway: GatewayProcess, model: MockModel, sink: FrameSink, gateway_client: GatewayClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    label = f"label-{tag}"
    model.add_rule(
        tool_call(
            "sessions_spawn", {"task": f"forbidden task {tag}", "label": label, "agentId": "nosuchagent"}
        ),
        contains=f"BADSPAWN {tag}",
        subagent=False,
    )
    await gateway_client.agent_turn(f"BADSPAWN {tag}", session_key=f"agent:main:it-{tag}")

    spawn = await sink.wait_for(_is_spawn_call(label), "after_tool_call of the rejected spawn")
    assert spawn["type"] == "spawn"
    assert _details(spawn)["status"] == "forbidden"
    assert "not allowed" in spawn["event"]["error"]
    assert not any(r.prompt and r.prompt.text == f"forbidden task {tag}" for r in model.completions())


async def test_sessions_send_frame(
    gateway: GatewayProcess, model: MockModel, sink: FrameSink, gateway_client: GatewayClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    _, child_key, _ = await _spawn_child(model, gateway_client, sink, tag)
    await sink.wait_for(
        lambda f: f.get("hook") == "subagent_ended" and f["event"].get("targetSessionKey") == child_key,
        "subagent_ended of the spawn",
        timeout_s=90,
    )

    model.add_rule(
        tool_call(
            "sessions_send", {"sessionKey": child_key, "message": f"follow-up {tag}", "timeoutSeconds": 0}
        ),
        contains=f"SEND {tag}",
        subagent=False,
    )
    await gateway_client.agent_turn(f"SEND {tag}", session_key=f"agent:main:it-{tag}")

    send = await sink.wait_for(
        lambda f: (
            f.get("hook") == "after_tool_call"
            and f["event"].get("toolName") == "sessions_send"
            and f["event"]["params"].get("sessionKey") == child_key
        ),
        "after_tool_call sessions_send",
    )
    assert send["type"] == "send"
    details = _details(send)
    assert details["status"] in {"accepted", "ok"}, details
    assert isinstance(details.get("runId"), str)
    assert "content" not in send["event"]["result"]


async def test_no_secret_in_any_frame(
    gateway: GatewayProcess, sink: FrameSink, frame_log: list[Received]
) -> None:
    """gateway_start's ctx carries the whole config with the token; the plugin must drop it."""
    received = frame_log + sink.received

    starts = [item for item in received if item.frame.get("hook") == "gateway_start"]
    assert starts, "no gateway_start frame was collected after the gateway started"
    assert starts[0].frame["type"] == "gateway"
    assert starts[0].frame["event"] == {"port": gateway.config.port}
    assert "config" not in starts[0].frame["ctx"]
    assert starts[0].response["ok"] is True
    for item in received:
        assert gateway.config.token not in item.raw, (
            f"the gateway token leaked in a {item.frame.get('hook')} frame"
        )
