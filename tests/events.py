"""The captured OpenClaw 2026.9.6 hook payloads, and wire frames built from them as the plugin would."""

from __future__ import annotations

import copy
import itertools
from functools import cache
from pathlib import Path
from typing import Any

import orjson

FIXTURES = Path(__file__).parent / "fixtures" / "hook-events-2026.9.6.jsonl"
_ids = itertools.count(1)

TYPE_BY_HOOK = {
    "subagent_spawned": "spawn",
    "agent_end": "end",
    "subagent_ended": "end",
    "gateway_start": "gateway",
    "gateway_stop": "gateway",
}


@cache
def _samples() -> tuple[dict[str, Any], ...]:
    return tuple(orjson.loads(line) for line in FIXTURES.read_bytes().splitlines() if line.strip())


def samples() -> list[dict[str, Any]]:
    """Return deep copies of every captured sample."""
    return copy.deepcopy(list(_samples()))


def sample(scenario_start: str) -> dict[str, Any]:
    """Return the one sample whose scenario starts with ``scenario_start``."""
    found = [item for item in samples() if item["scenario"].startswith(scenario_start)]
    assert len(found) == 1, f"{len(found)} samples match {scenario_start!r}"
    return found[0]


def trim(
    hook: str, event: dict[str, Any], ctx: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trim a payload the way the bridge plugin does before sending it."""
    event = copy.deepcopy(event)
    ctx = copy.deepcopy(ctx or {})
    ctx.pop("config", None)
    if hook == "after_tool_call" and isinstance(event.get("result"), dict):
        event["result"].pop("content", None)
    if hook == "agent_end" and "messages" in event:
        assistants = [m for m in event.pop("messages") if m.get("role") == "assistant"]
        last = assistants[-1] if assistants else None
        event["lastAssistant"] = (
            {"stopReason": last.get("stopReason"), "errorMessage": last.get("errorMessage")} if last else None
        )
    return event, ctx


def frame(item: dict[str, Any], *, event_id: str | None = None, source: str = "gw-test") -> dict[str, Any]:
    """Build a v1 request frame from a captured sample."""
    hook = item["hook"]
    if hook == "after_tool_call":
        event_type = "spawn" if item["event"]["toolName"] == "sessions_spawn" else "send"
    else:
        event_type = TYPE_BY_HOOK[hook]
    event, ctx = trim(hook, item["event"], item["ctx"])
    return {
        "v": 1,
        "id": event_id or f"evt-{next(_ids)}",
        "type": event_type,
        "ts": 1_796_412_840_000,
        "source": source,
        "hook": hook,
        "event": event,
        "ctx": ctx,
    }


def line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data) + b"\n"


def spawn_lifecycle() -> list[dict[str, Any]]:
    """Frames of the captured successful spawn, in the order the gateway emitted them.

    subagent_spawned, after_tool_call (accepted), the child's agent_end, subagent_ended (ok). The
    parent's own agent_end events are left out: they belong to no job.
    """
    wanted = [
        "spawn success: subagent_spawned",
        "spawn success: after_tool_call",
        "spawn success: agent_end of child run",
        "spawn success: subagent_ended",
    ]
    return [frame(sample(name)) for name in wanted]


SPAWN_CHILD_SESSION = "agent:main:subagent:e89f9fd3-7125-470d-a029-420cc5133c9c"
SPAWN_CHILD_RUN = "cea07673-cf3c-4a40-9d75-03609649ac2d"
SPAWN_TOOL_CALL = "call_882005e018"
