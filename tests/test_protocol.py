"""Wire protocol v1 parsing: every rule of docs/protocol.md that a single line can break."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from orchestrator.protocol import (
    MAX_EVENT_ID_CHARS,
    ErrorCode,
    EventType,
    ProtocolError,
    encode_ack,
    encode_error,
    parse_request,
)


def valid_frame(**changes: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "v": 1,
        "id": "evt-1",
        "type": "end",
        "ts": 1_796_412_840_000,
        "source": "gw-1",
        "hook": "subagent_ended",
        "event": {"outcome": "ok"},
        "ctx": {"childSessionKey": "agent:main:subagent:x"},
    }
    frame.update(changes)
    return frame


def parse(frame: Any) -> Any:
    return parse_request(orjson.dumps(frame))


def test_valid_frame_parses() -> None:
    request = parse(valid_frame())
    assert request.id == "evt-1"
    assert request.type is EventType.END
    assert request.ts_ms == 1_796_412_840_000
    assert request.source == "gw-1"
    assert request.hook == "subagent_ended"
    assert request.event == {"outcome": "ok"}


def test_missing_source_and_ctx_get_defaults() -> None:
    frame = valid_frame()
    del frame["source"], frame["ctx"]
    request = parse(frame)
    assert request.source == "default"
    assert request.ctx == {}


def test_ping_needs_no_hook_or_event() -> None:
    request = parse({"v": 1, "id": "p1", "type": "ping", "ts": 0})
    assert request.type is EventType.PING
    assert request.hook is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", ErrorCode.BAD_JSON),
        (b"\xff\xfe", ErrorCode.BAD_JSON),
        (b'"just a string"', ErrorCode.BAD_FRAME),
        (b"[1, 2]", ErrorCode.BAD_FRAME),
        (b"null", ErrorCode.BAD_FRAME),
        (b"42", ErrorCode.BAD_FRAME),
    ],
)
def test_non_object_lines_rejected(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(raw)
    assert caught.value.code is code
    assert caught.value.event_id is None


@pytest.mark.parametrize(
    ("changes", "code", "fragment"),
    [
        ({"v": 2}, ErrorCode.UNSUPPORTED_VERSION, "version 2"),
        ({"v": 0}, ErrorCode.UNSUPPORTED_VERSION, "version 0"),
        ({"v": "1"}, ErrorCode.BAD_FRAME, "'v'"),
        ({"v": True}, ErrorCode.BAD_FRAME, "'v'"),
        ({"type": "explode"}, ErrorCode.UNKNOWN_TYPE, "explode"),
        ({"type": 3}, ErrorCode.BAD_FRAME, "'type'"),
        ({"ts": -1}, ErrorCode.BAD_FRAME, "'ts'"),
        ({"ts": 1.5}, ErrorCode.BAD_FRAME, "'ts'"),
        ({"ts": "now"}, ErrorCode.BAD_FRAME, "'ts'"),
        ({"source": ""}, ErrorCode.BAD_FRAME, "'source'"),
        ({"source": "s" * 129}, ErrorCode.BAD_FRAME, "'source'"),
        ({"hook": None}, ErrorCode.BAD_FRAME, "'hook'"),
        ({"hook": "agent_end", "type": "spawn"}, ErrorCode.INVALID_EVENT, "does not fit"),
        ({"hook": "session_start"}, ErrorCode.INVALID_EVENT, "session_start"),
        ({"event": [1]}, ErrorCode.BAD_FRAME, "'event'"),
        ({"event": None}, ErrorCode.BAD_FRAME, "'event'"),
        ({"ctx": "x"}, ErrorCode.BAD_FRAME, "'ctx'"),
    ],
)
def test_bad_fields_rejected_with_event_id(changes: dict[str, Any], code: ErrorCode, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(valid_frame(**changes))
    assert caught.value.code is code
    assert fragment in caught.value.message
    assert caught.value.event_id == "evt-1"


@pytest.mark.parametrize("event_id", [None, "", 7, "x" * (MAX_EVENT_ID_CHARS + 1)])
def test_bad_event_id_rejected(event_id: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(valid_frame(id=event_id))
    assert caught.value.code is ErrorCode.BAD_FRAME
    assert caught.value.event_id is None


def test_longest_event_id_accepted() -> None:
    assert parse(valid_frame(id="x" * MAX_EVENT_ID_CHARS)).id == "x" * MAX_EVENT_ID_CHARS


def test_missing_version_is_bad_frame() -> None:
    frame = valid_frame()
    del frame["v"]
    with pytest.raises(ProtocolError) as caught:
        parse(frame)
    assert caught.value.code is ErrorCode.BAD_FRAME


def test_ack_and_error_encoding() -> None:
    assert orjson.loads(encode_ack("e", "j", tracked=True)) == {
        "id": "e",
        "ok": True,
        "job_id": "j",
        "tracked": True,
    }
    error = orjson.loads(encode_error(None, ErrorCode.BAD_JSON, "broken"))
    assert error == {"id": None, "ok": False, "error": {"code": "bad_json", "message": "broken"}}
    assert encode_ack("e", None, tracked=False).endswith(b"\n")
