"""Wire protocol v1: request frames from the gateway plugin and the response frames to them.

One UTF-8 JSON object per line. docs/protocol.md is the human-readable contract; this module is
the code that enforces it. Parsing never raises anything but ``ProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

PROTOCOL_VERSION = 1
MAX_EVENT_ID_CHARS = 128
MAX_SOURCE_CHARS = 128
DEFAULT_SOURCE = "default"


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNSUPPORTED_VERSION = "unsupported_version"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_EVENT = "invalid_event"
    OVERLOADED = "overloaded"
    INTERNAL = "internal"


class EventType(StrEnum):
    SPAWN = "spawn"
    SEND = "send"
    END = "end"
    GATEWAY = "gateway"
    PING = "ping"


# The OpenClaw hooks each event type may carry.
HOOKS_BY_TYPE: dict[EventType, frozenset[str]] = {
    EventType.SPAWN: frozenset({"after_tool_call", "subagent_spawned"}),
    EventType.SEND: frozenset({"after_tool_call"}),
    EventType.END: frozenset({"agent_end", "subagent_ended"}),
    EventType.GATEWAY: frozenset({"gateway_start", "gateway_stop"}),
    EventType.PING: frozenset(),
}


class ProtocolError(Exception):
    """A request line that cannot be accepted, with the error code of its response."""

    def __init__(self, code: ErrorCode, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed and validated request frame."""

    id: str
    type: EventType
    ts_ms: int
    source: str
    hook: str | None
    event: dict[str, Any]
    ctx: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """Parse one line (without its newline) into a ``Request``.

    Raises ``ProtocolError`` naming the first problem found.
    """
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(ErrorCode.BAD_JSON, f"line is not valid UTF-8 JSON: {e}") from e
    if not isinstance(frame, dict):
        kind = type(frame).__name__
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame must be a JSON object, got {kind}")

    event_id = _read_event_id(frame)
    try:
        return _parse_fields(frame, event_id)
    except ProtocolError as e:
        e.event_id = event_id
        raise


def _read_event_id(frame: dict[str, Any]) -> str:
    event_id = frame.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'id' must be a non-empty string")
    if len(event_id) > MAX_EVENT_ID_CHARS:
        raise ProtocolError(
            ErrorCode.BAD_FRAME,
            f"field 'id' is {len(event_id)} characters long; the limit is {MAX_EVENT_ID_CHARS}",
        )
    return event_id


def _parse_fields(frame: dict[str, Any], event_id: str) -> Request:
    version = frame.get("v")
    if not _is_int(version):
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'v' must be an integer protocol version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; this daemon speaks v{PROTOCOL_VERSION}",
        )

    raw_type = frame.get("type")
    if not isinstance(raw_type, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'type' must be a string")
    try:
        event_type = EventType(raw_type)
    except ValueError:
        known = ", ".join(t.value for t in EventType)
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown type {raw_type!r}; expected one of {known}"
        ) from None

    ts_ms = frame.get("ts")
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or ts_ms < 0:
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'ts' must be a non-negative integer (Unix ms)")

    source = frame.get("source", DEFAULT_SOURCE)
    if source is None:
        source = DEFAULT_SOURCE
    if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_CHARS:
        raise ProtocolError(
            ErrorCode.BAD_FRAME,
            f"field 'source' must be a non-empty string of at most {MAX_SOURCE_CHARS} characters",
        )

    hook, event, ctx = _parse_payload(frame, event_type)
    return Request(id=event_id, type=event_type, ts_ms=ts_ms, source=source, hook=hook, event=event, ctx=ctx)


def _parse_payload(
    frame: dict[str, Any], event_type: EventType
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    ctx = frame.get("ctx")
    if ctx is None:
        ctx = {}
    if not isinstance(ctx, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'ctx' must be an object when present")
    if event_type is EventType.PING:
        return None, {}, ctx

    hook = frame.get("hook")
    if not isinstance(hook, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'hook' must be a string")
    allowed = HOOKS_BY_TYPE[event_type]
    if hook not in allowed:
        expected = ", ".join(sorted(allowed))
        raise ProtocolError(
            ErrorCode.INVALID_EVENT,
            f"hook {hook!r} does not fit type {event_type.value!r}; expected {expected}",
        )
    event = frame.get("event")
    if not isinstance(event, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "field 'event' must be an object")
    return hook, event, ctx


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_ack(event_id: str, job_id: str | None, *, tracked: bool) -> bytes:
    return orjson.dumps({"id": event_id, "ok": True, "job_id": job_id, "tracked": tracked}) + b"\n"


def encode_error(event_id: str | None, code: ErrorCode, message: str) -> bytes:
    frame = {"id": event_id, "ok": False, "error": {"code": code.value, "message": message}}
    return orjson.dumps(frame) + b"\n"
