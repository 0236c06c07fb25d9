"""Mapping of OpenClaw hook payloads (2026.9.x) to job effects.

Each function reads one hook's ``event`` and ``ctx`` as the bridge plugin forwards them and returns
the ``Effect`` to apply. Payload shapes were observed on the real gateway 2026.9.6; the captured
samples in ``tests/fixtures/hook-events-2026.9.6.jsonl`` are the reference.

Rules that are not obvious from the payloads:
- ``after_tool_call`` carries the tool outcome in ``event.result.details``, not ``event.result``.
- ``agent_end.success`` stays true when the model provider failed; the failure is the last
  assistant message's ``stopReason == "error"``.
- ``subagent_ended`` fires after the result was announced to the parent, so it ends a spawn job.
- Events of one job arrive in any order (``subagent_spawned`` was seen before the
  ``after_tool_call`` that caused it), so every mapping links all the ids its payload contains.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestrator.jobs import Effect, JobKind, JobStatus
from orchestrator.protocol import ErrorCode, EventType, ProtocolError, Request

SPAWN_TOOL = "sessions_spawn"
SEND_TOOL = "sessions_send"
MAX_ERROR_CHARS = 2_000

SUBAGENT_OUTCOMES: dict[str, JobStatus] = {
    "ok": JobStatus.COMPLETED,
    "error": JobStatus.RETRYING,
    "timeout": JobStatus.RETRYING,
    "killed": JobStatus.CANCELLED,
    "reset": JobStatus.CANCELLED,
    "deleted": JobStatus.CANCELLED,
}

SPAWN_STATUSES: dict[str, JobStatus] = {
    "accepted": JobStatus.ACTIVE,
    "error": JobStatus.RETRYING,
    "forbidden": JobStatus.FAILED,
}

SEND_STATUSES: dict[str, JobStatus] = {
    "accepted": JobStatus.ACTIVE,
    "ok": JobStatus.COMPLETED,
    "error": JobStatus.RETRYING,
    "timeout": JobStatus.RETRYING,
    "forbidden": JobStatus.FAILED,
}


def map_event(request: Request, *, task_max_chars: int, owner: str | None = None) -> Effect | None:
    """Return the effect of one request, or None for a ping.

    ``owner`` is the gateway id of the daemon that received the event: its jobs are re-dispatched
    through that daemon's gateway. Without it the frame's ``source`` field is used.
    Raises ``ProtocolError`` with ``invalid_event`` when the payload lacks what its hook needs.
    """
    if request.type is EventType.PING:
        return None
    if owner is not None and owner != request.source:
        request = dataclasses.replace(request, source=owner)
    event, ctx = request.event, request.ctx
    match request.hook:
        case "after_tool_call":
            return _map_tool_call(request, task_max_chars)
        case "subagent_spawned":
            return _map_subagent_spawned(event, ctx, request.source)
        case "agent_end":
            return _map_agent_end(event, ctx)
        case "subagent_ended":
            return _map_subagent_ended(event, ctx)
        case "gateway_start" | "gateway_stop":
            return _map_gateway(request)
    raise ProtocolError(ErrorCode.INVALID_EVENT, f"hook {request.hook!r} is not handled")


def _map_tool_call(request: Request, task_max_chars: int) -> Effect:
    event, ctx = request.event, request.ctx
    tool = _text(event, "toolName") or _text(ctx, "toolName")
    expected = SPAWN_TOOL if request.type is EventType.SPAWN else SEND_TOOL
    if tool != expected:
        raise _invalid(f"after_tool_call of type {request.type.value!r} must be for {expected}, got {tool!r}")
    tool_call_id = _require(_text(event, "toolCallId") or _text(ctx, "toolCallId"), "event.toolCallId")
    details = _details(event)
    status = _text(details, "status")
    if status is None and event.get("error"):
        status = "error"
    if status is None:
        raise _invalid(f"{tool} result has no status in event.result.details")
    raw_params = event.get("params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    error = _error_text(details.get("error") or event.get("error"))
    fields = _drop_empty(
        agent_id=_text(ctx, "agentId"),
        source=request.source,
        tool_call_id=tool_call_id,
        parent_session_key=_text(ctx, "sessionKey"),
        parent_run_id=_text(event, "runId") or _text(ctx, "runId"),
        last_error=error,
    )
    if request.type is EventType.SPAWN:
        return _spawn_tool_effect(status, tool_call_id, details, params, fields, task_max_chars)
    return _send_tool_effect(status, tool_call_id, details, params, fields, task_max_chars)


def _spawn_tool_effect(
    status: str,
    tool_call_id: str,
    details: dict[str, Any],
    params: dict[str, Any],
    fields: dict[str, str],
    task_max_chars: int,
) -> Effect:
    child_session_key = _text(details, "childSessionKey")
    run_id = _text(details, "runId")
    fields.update(
        _drop_empty(
            task=_truncate(_text(params, "task"), task_max_chars),
            label=_text(params, "label"),
            target_agent_id=_text(params, "agentId") or _agent_of(child_session_key),
            child_session_key=child_session_key,
            run_id=run_id,
            mode=_text(details, "mode") or _text(params, "mode"),
        )
    )
    refs = [("tool_call", tool_call_id)]
    if child_session_key:
        refs.append(("child_session", child_session_key))
    if run_id:
        refs.append(("run", run_id))
    target = SPAWN_STATUSES.get(status)
    return Effect(
        hook="after_tool_call",
        reason=f"sessions_spawn {status}",
        create_kind=JobKind.SPAWN,
        lookup=tuple(refs),
        link=tuple(refs),
        fields=fields,
        status_by_kind={JobKind.SPAWN: target} if target else {},
        run_id=run_id,
    )


def _send_tool_effect(
    status: str,
    tool_call_id: str,
    details: dict[str, Any],
    params: dict[str, Any],
    fields: dict[str, str],
    task_max_chars: int,
) -> Effect:
    run_id = _text(details, "runId")
    target_session_key = _text(details, "sessionKey") or _text(params, "sessionKey")
    fields.update(
        _drop_empty(
            task=_truncate(_text(params, "message"), task_max_chars),
            label=_text(params, "label"),
            target_session_key=target_session_key,
            target_agent_id=_text(params, "agentId") or _agent_of(target_session_key),
            run_id=run_id,
        )
    )
    refs = [("tool_call", tool_call_id)]
    if run_id:
        refs.append(("run", run_id))
    target = SEND_STATUSES.get(status)
    return Effect(
        hook="after_tool_call",
        reason=f"sessions_send {status}",
        create_kind=JobKind.SEND,
        lookup=tuple(refs),
        link=tuple(refs),
        fields=fields,
        status_by_kind={JobKind.SEND: target} if target else {},
        run_id=run_id,
    )


def _map_subagent_spawned(event: dict[str, Any], ctx: dict[str, Any], source: str) -> Effect:
    child_session_key = _require(
        _text(event, "childSessionKey") or _text(ctx, "childSessionKey"), "event.childSessionKey"
    )
    run_id = _require(_text(event, "runId") or _text(ctx, "runId"), "event.runId")
    requester = _text(ctx, "requesterSessionKey")
    label = _text(event, "label")
    refs = (("child_session", child_session_key), ("run", run_id))
    # A spawn the daemon made again carries its dispatch key in the label, indexed beforehand.
    lookup = (*refs, ("label", label)) if label else refs
    fields = _drop_empty(
        agent_id=_agent_of(requester),
        source=source,
        parent_session_key=requester,
        child_session_key=child_session_key,
        run_id=run_id,
        target_agent_id=_text(event, "agentId") or _agent_of(child_session_key),
        label=_text(event, "label"),
        mode=_text(event, "mode"),
    )
    return Effect(
        hook="subagent_spawned",
        reason="subagent_spawned",
        create_kind=JobKind.SPAWN,
        lookup=lookup,
        link=refs,
        fields=fields,
        status_by_kind={JobKind.SPAWN: JobStatus.ACTIVE},
        run_id=run_id,
    )


def _map_agent_end(event: dict[str, Any], ctx: dict[str, Any]) -> Effect:
    run_id = _require(_text(event, "runId") or _text(ctx, "runId"), "event.runId")
    stop_reason, error_message = _last_assistant(event)
    failed = stop_reason == "error" or event.get("success") is False
    fields: dict[str, str] = {}
    if failed:
        fields["last_error"] = _error_text(error_message) or "the run ended with an error"
    reason = f"agent_end stopReason={stop_reason or 'unknown'}"
    return Effect(
        hook="agent_end",
        reason=reason,
        lookup=(("run", run_id),),
        fields=fields,
        status_by_kind={
            # The child run ended; subagent_ended brings the verdict after the announce.
            JobKind.SPAWN: JobStatus.ANNOUNCING,
            JobKind.SEND: JobStatus.RETRYING if failed else JobStatus.COMPLETED,
        },
        run_id=run_id,
    )


def _map_subagent_ended(event: dict[str, Any], ctx: dict[str, Any]) -> Effect:
    child_session_key = _require(
        _text(ctx, "childSessionKey") or _text(event, "targetSessionKey"), "ctx.childSessionKey"
    )
    run_id = _text(event, "runId") or _text(ctx, "runId")
    outcome = _require(_text(event, "outcome"), "event.outcome")
    target = SUBAGENT_OUTCOMES.get(outcome)
    if target is None:
        known = ", ".join(SUBAGENT_OUTCOMES)
        raise _invalid(f"subagent_ended outcome {outcome!r} is unknown; expected one of {known}")
    fields = _drop_empty(outcome=outcome)
    if target is JobStatus.RETRYING:
        fields["last_error"] = _error_text(event.get("error")) or f"subagent ended with outcome {outcome}"
    lookup: list[tuple[str, str]] = []
    if run_id:
        lookup.append(("run", run_id))
    lookup.append(("child_session", child_session_key))
    return Effect(
        hook="subagent_ended",
        reason=f"subagent_ended outcome={outcome}",
        lookup=tuple(lookup),
        fields=fields,
        status_by_kind={JobKind.SPAWN: target, JobKind.SEND: target},
        run_id=run_id,
    )


def _map_gateway(request: Request) -> Effect:
    event = request.event
    at = str(request.ts_ms)
    if request.hook == "gateway_start":
        port = event.get("port")
        gateway_fields = {"last_start_at": at, "port": str(port) if port is not None else ""}
    else:
        gateway_fields = {"last_stop_at": at, "last_stop_reason": _text(event, "reason") or ""}
    return Effect(
        hook=request.hook or "",
        reason=request.hook or "",
        fields={"source": request.source},
        gateway_fields=gateway_fields,
    )


def _details(event: dict[str, Any]) -> dict[str, Any]:
    result = event.get("result")
    if isinstance(result, dict) and isinstance(result.get("details"), dict):
        details: dict[str, Any] = result["details"]
        return details
    return {}


def _last_assistant(event: dict[str, Any]) -> tuple[str | None, Any]:
    """Return the last assistant message's stop reason and error, trimmed or untrimmed form."""
    last = event.get("lastAssistant")
    if last is None and isinstance(event.get("messages"), list):
        assistants = [m for m in event["messages"] if isinstance(m, dict) and m.get("role") == "assistant"]
        last = assistants[-1] if assistants else None
    if not isinstance(last, dict):
        return None, None
    return _text(last, "stopReason"), last.get("errorMessage")


def _agent_of(session_key: str | None) -> str | None:
    """Return the agent id of a session key such as ``agent:main:subagent:<uuid>``."""
    if not session_key:
        return None
    parts = session_key.split(":")
    if len(parts) >= 2 and parts[0] == "agent" and parts[1]:
        return parts[1]
    return None


def _text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _require(value: str | None, name: str) -> str:
    if value is None:
        raise _invalid(f"{name} is missing or not a non-empty string")
    return value


def _error_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else str(value)
    # One line: gateway errors can contain line breaks, which would split log lines and alerts.
    return _truncate(" ".join(text.split()), MAX_ERROR_CHARS)


def _truncate(text: str | None, max_chars: int) -> str | None:
    if text is None or len(text) <= max_chars:
        return text
    return text[: max_chars - 1] + "…"


def _drop_empty(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_EVENT, message)
