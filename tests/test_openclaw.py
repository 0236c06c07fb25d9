"""Mapping of the captured OpenClaw 2026.9.6 hook payloads to job effects."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from orchestrator.jobs import JobKind, JobStatus
from orchestrator.openclaw import map_event
from orchestrator.protocol import ErrorCode, ProtocolError, parse_request
from tests.events import (
    SPAWN_CHILD_RUN,
    SPAWN_CHILD_SESSION,
    SPAWN_TOOL_CALL,
    frame,
    sample,
)


def effect_of(item: dict[str, Any], **changes: Any) -> Any:
    data = frame(item)
    data.update(changes)
    return map_event(parse_request(orjson.dumps(data)), task_max_chars=1000)


def test_spawn_accepted_links_all_ids() -> None:
    effect = effect_of(sample("spawn success: after_tool_call"))
    assert effect.create_kind is JobKind.SPAWN
    assert effect.status_by_kind == {JobKind.SPAWN: JobStatus.ACTIVE}
    assert ("tool_call", SPAWN_TOOL_CALL) in effect.link
    assert ("child_session", SPAWN_CHILD_SESSION) in effect.link
    assert ("run", SPAWN_CHILD_RUN) in effect.link
    assert effect.fields["task"] == "write a haiku #0"
    assert effect.fields["label"] == "w0"
    assert effect.fields["agent_id"] == "main"
    assert effect.run_id == SPAWN_CHILD_RUN


def test_subagent_spawned_creates_active_spawn() -> None:
    effect = effect_of(sample("spawn success: subagent_spawned"))
    assert effect.create_kind is JobKind.SPAWN
    assert effect.status_by_kind == {JobKind.SPAWN: JobStatus.ACTIVE}
    assert effect.fields["child_session_key"] == SPAWN_CHILD_SESSION
    assert effect.fields["agent_id"] == "main"
    assert effect.fields["parent_session_key"] == "agent:main:main"


def test_child_agent_end_announces_spawn() -> None:
    effect = effect_of(sample("spawn success: agent_end of child run"))
    assert effect.create_kind is None
    assert effect.lookup == (("run", SPAWN_CHILD_RUN),)
    assert effect.status_by_kind[JobKind.SPAWN] is JobStatus.ANNOUNCING
    assert effect.status_by_kind[JobKind.SEND] is JobStatus.COMPLETED
    assert "last_error" not in effect.fields


def test_provider_error_in_agent_end_is_a_failure() -> None:
    # success stays true on provider errors; the last assistant stopReason is "error".
    effect = effect_of(sample("provider failure (HTTP 500): agent_end"))
    assert effect.fields["last_error"] == "500 mock failure"
    assert effect.status_by_kind[JobKind.SEND] is JobStatus.RETRYING


def test_untrimmed_agent_end_is_read_too() -> None:
    item = sample("provider failure HTTP 400: agent_end")
    data = frame(item)
    data["event"] = item["event"]  # with the whole messages array
    effect = map_event(parse_request(orjson.dumps(data)), task_max_chars=1000)
    assert effect is not None
    assert effect.fields["last_error"] == "400 mock failure"


def test_subagent_ended_ok_completes() -> None:
    effect = effect_of(sample("spawn success: subagent_ended"))
    assert effect.status_by_kind[JobKind.SPAWN] is JobStatus.COMPLETED
    assert effect.lookup == (("run", SPAWN_CHILD_RUN), ("child_session", SPAWN_CHILD_SESSION))
    assert effect.fields["outcome"] == "ok"


def test_multiline_error_becomes_one_line() -> None:
    item = sample("spawn success: subagent_ended")
    item["event"].update(
        outcome="error", error="Agent failed before reply: bad schema.\nTo view logs, run it."
    )
    effect = effect_of(item)
    assert effect.fields["last_error"] == "Agent failed before reply: bad schema. To view logs, run it."


def test_interrupted_by_restart_is_retryable() -> None:
    effect = effect_of(sample("after kill -9 + restart: subagent_ended"))
    assert effect.status_by_kind[JobKind.SPAWN] is JobStatus.RETRYING
    assert "interrupted by a Gateway restart" in effect.fields["last_error"]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("ok", JobStatus.COMPLETED),
        ("error", JobStatus.RETRYING),
        ("timeout", JobStatus.RETRYING),
        ("killed", JobStatus.CANCELLED),
        ("reset", JobStatus.CANCELLED),
        ("deleted", JobStatus.CANCELLED),
    ],
)
def test_subagent_outcomes(outcome: str, status: JobStatus) -> None:
    item = sample("spawn success: subagent_ended")
    item["event"]["outcome"] = outcome
    assert effect_of(item).status_by_kind[JobKind.SPAWN] is status


def test_unknown_outcome_is_invalid_event() -> None:
    item = sample("spawn success: subagent_ended")
    item["event"]["outcome"] = "exploded"
    with pytest.raises(ProtocolError) as caught:
        effect_of(item)
    assert caught.value.code is ErrorCode.INVALID_EVENT
    assert "exploded" in caught.value.message


def test_forbidden_spawn_fails_at_once() -> None:
    effect = effect_of(sample("failing spawn (agentId not allowed)"))
    assert effect.status_by_kind == {JobKind.SPAWN: JobStatus.FAILED}
    assert effect.link == (("tool_call", "call_7ea1a241ec"),)
    assert "not allowed" in effect.fields["last_error"]
    assert effect.fields["target_agent_id"] == "nosuchagent"


def test_spawn_error_status_is_retryable() -> None:
    item = sample("failing spawn (agentId not allowed)")
    item["event"]["result"]["details"]["status"] = "error"
    assert effect_of(item).status_by_kind == {JobKind.SPAWN: JobStatus.RETRYING}


def test_send_accepted_waits_for_its_run() -> None:
    effect = effect_of(sample("sessions_send from main agent"))
    assert effect.create_kind is JobKind.SEND
    assert effect.status_by_kind == {JobKind.SEND: JobStatus.ACTIVE}
    assert ("run", "90c6d6f1-24c5-4c7c-a75f-84633ee6c506") in effect.link
    assert effect.fields["task"] == "hello child from main"
    assert effect.fields["target_session_key"] == "agent:main:subagent:21546681-5e28-46e6-8f42-f80395036eca"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("ok", JobStatus.COMPLETED),
        ("error", JobStatus.RETRYING),
        ("timeout", JobStatus.RETRYING),
        ("forbidden", JobStatus.FAILED),
    ],
)
def test_send_statuses(status: str, expected: JobStatus) -> None:
    item = sample("sessions_send from main agent")
    item["event"]["result"]["details"]["status"] = status
    assert effect_of(item).status_by_kind == {JobKind.SEND: expected}


def test_tool_name_must_match_type() -> None:
    item = sample("sessions_send from main agent")
    with pytest.raises(ProtocolError) as caught:
        effect_of(item, type="spawn")
    assert caught.value.code is ErrorCode.INVALID_EVENT
    assert "sessions_spawn" in caught.value.message


@pytest.mark.parametrize(
    ("scenario", "remove"),
    [
        ("spawn success: subagent_spawned", ("childSessionKey",)),
        ("spawn success: subagent_spawned", ("runId",)),
        ("spawn success: after_tool_call", ("toolCallId",)),
        ("spawn success: agent_end of child run", ("runId",)),
        ("spawn success: subagent_ended", ("outcome",)),
    ],
)
def test_missing_ids_are_invalid_events(scenario: str, remove: tuple[str, ...]) -> None:
    item = sample(scenario)
    for name in remove:
        item["event"].pop(name, None)
        (item["ctx"] or {}).pop(name, None)
    with pytest.raises(ProtocolError) as caught:
        effect_of(item)
    assert caught.value.code is ErrorCode.INVALID_EVENT


def test_long_task_is_truncated() -> None:
    item = sample("spawn success: after_tool_call")
    item["event"]["params"]["task"] = "x" * 5000
    effect = effect_of(item)
    assert len(effect.fields["task"]) == 1000
    assert effect.fields["task"].endswith("…")


def test_gateway_events_record_gateway() -> None:
    start = effect_of(sample("gateway_start"))
    assert start.gateway_fields["port"] == "18790"
    assert start.fields == {"source": "gw-test"}
    stop = effect_of(sample("SIGTERM: gateway_stop"))
    assert stop.gateway_fields["last_stop_reason"] == "gateway stopping"
