"""The store against a real Redis: transitions, order independence, deduplication, parking, purge."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import JobNotFound
from orchestrator.jobs import Job, JobKind, JobStatus
from orchestrator.keys import Keys
from orchestrator.openclaw import map_event
from orchestrator.protocol import parse_request
from orchestrator.store import ApplyResult, JobStore
from tests.events import (
    SPAWN_CHILD_RUN,
    SPAWN_CHILD_SESSION,
    SPAWN_TOOL_CALL,
    frame,
    sample,
    spawn_lifecycle,
)
from tests.redis_process import RedisProcess

# Fields that legitimately differ between two runs of the same events.
VOLATILE_FIELDS = {"id", "created_at", "updated_at", "events"}


async def apply_frame(
    store: JobStore, data: dict[str, Any], now_ms: int = 1_000, *, owner: str | None = None
) -> ApplyResult:
    request = parse_request(orjson.dumps(data))
    effect = map_event(request, task_max_chars=65_536, owner=owner)
    assert effect is not None
    return await store.apply(request.id, effect, now_ms)


def stable_record(job: Job) -> dict[str, Any]:
    return {key: value for key, value in job.to_json().items() if key not in VOLATILE_FIELDS}


async def test_spawn_lifecycle_in_order(store: JobStore) -> None:
    results = [await apply_frame(store, data) for data in spawn_lifecycle()]
    job_id = results[0].job_id
    assert job_id is not None
    assert [result.outcome for result in results] == ["created", "applied", "applied", "applied"]
    job = await store.get_job(job_id, with_history=True)
    assert job.status is JobStatus.COMPLETED
    assert job.child_session_key == SPAWN_CHILD_SESSION
    assert job.run_id == SPAWN_CHILD_RUN
    assert job.tool_call_id == SPAWN_TOOL_CALL
    assert job.task == "write a haiku #0"
    assert [(entry.from_status, entry.to_status) for entry in job.history] == [
        (None, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.ACTIVE),
        (JobStatus.ACTIVE, JobStatus.ANNOUNCING),
        (JobStatus.ANNOUNCING, JobStatus.COMPLETED),
    ]


async def test_replayed_event_id_changes_nothing(store: JobStore, redis_client: aioredis.Redis) -> None:
    frames = spawn_lifecycle()
    first = [await apply_frame(store, data) for data in frames]
    before = await store.get_job(first[0].job_id or "", with_history=True)
    again = [await apply_frame(store, data, now_ms=9_999) for data in frames]
    after = await store.get_job(first[0].job_id or "", with_history=True)
    assert [result.outcome for result in again] == ["duplicate"] * 4
    assert [result.job_id for result in again] == [result.job_id for result in first]
    assert after == before
    counters = await redis_client.hgetall(store.keys.counters)  # type: ignore[misc]
    assert counters["events_duplicate"] == "4"


def _run_shuffled(redis_url: str, frames: list[dict[str, Any]]) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            store = JobStore(
                client, Keys(f"h{uuid.uuid4().hex[:10]}"), event_ttl_s=600, orphan_ttl_s=600, max_attempts=3
            )
            job_ids = {(await apply_frame(store, data)).job_id for data in frames}
            jobs = await store.list_jobs()
            assert len(jobs) == 1, f"expected one job, got {len(jobs)} from ids {job_ids}"
            return stable_record(jobs[0])
        finally:
            await client.aclose()

    return asyncio.run(scenario())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(range(4)),
    copies=st.lists(st.integers(1, 3), min_size=4, max_size=4),
    data=st.data(),
)
def test_any_order_and_duplicates_give_same_record(
    redis_server: RedisProcess, order: list[int], copies: list[int], data: st.DataObject
) -> None:
    base = spawn_lifecycle()
    expected = _run_shuffled(redis_server.url, base)
    shuffled: list[dict[str, Any]] = []
    for index in order:
        for copy_number in range(copies[index]):
            item = dict(base[index])
            # A copy is either a replay of the same event id or the same hook delivered twice.
            if copy_number and data.draw(st.booleans()):
                item["id"] = f"{item['id']}-again-{copy_number}"
            shuffled.append(item)
    assert _run_shuffled(redis_server.url, shuffled) == expected
    assert expected["status"] == "completed"


async def test_end_before_spawn_is_parked_then_applied(store: JobStore) -> None:
    spawned, tool_call, child_end, ended = spawn_lifecycle()
    parked = await apply_frame(store, ended)
    assert parked.outcome == "parked"
    assert parked.job_id is None
    assert (await apply_frame(store, child_end)).outcome == "parked"
    created = await apply_frame(store, tool_call)
    assert created.outcome == "created"
    job = await store.get_job(created.job_id or "", with_history=True)
    assert job.status is JobStatus.COMPLETED
    assert job.outcome == "ok"
    assert (await apply_frame(store, spawned)).job_id == job.id


async def test_forbidden_spawn_is_dead_lettered(store: JobStore) -> None:
    result = await apply_frame(store, frame(sample("failing spawn (agentId not allowed)")))
    job = await store.get_job(result.job_id or "")
    assert job.status is JobStatus.FAILED
    assert job.last_error == "agentId is not allowed for sessions_spawn (allowed: main)"
    assert [job.id for job in await store.list_jobs(status=JobStatus.FAILED)] == [job.id]


async def test_interrupted_child_is_retrying(store: JobStore) -> None:
    ended = frame(sample("after kill -9 + restart: subagent_ended"))
    spawned = frame(sample("spawn success: subagent_spawned"))
    spawned["event"]["childSessionKey"] = ended["ctx"]["childSessionKey"]
    spawned["ctx"]["childSessionKey"] = ended["ctx"]["childSessionKey"]
    spawned["event"]["runId"] = spawned["ctx"]["runId"] = ended["event"]["runId"]
    job_id = (await apply_frame(store, spawned)).job_id
    await apply_frame(store, ended)
    job = await store.get_job(job_id or "")
    assert job.status is JobStatus.RETRYING
    assert job.last_error is not None
    assert "interrupted by a Gateway restart" in job.last_error


async def test_last_attempt_failure_dead_letters(redis_client: aioredis.Redis, prefix: str) -> None:
    store = JobStore(redis_client, Keys(prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=1)
    spawned, _, child_end, ended = spawn_lifecycle()
    ended["event"]["outcome"] = "error"
    ended["event"]["error"] = "LLM request failed"
    job_id = (await apply_frame(store, spawned)).job_id
    await apply_frame(store, child_end)
    await apply_frame(store, ended)
    job = await store.get_job(job_id or "", with_history=True)
    assert job.status is JobStatus.FAILED
    assert job.last_error == "LLM request failed"
    assert "dead-lettered" in job.history[-1].reason


async def test_failing_event_error_outranks_earlier_error(store: JobStore) -> None:
    spawned, _, child_end, ended = spawn_lifecycle()
    child_end["event"]["lastAssistant"] = {"stopReason": "error", "errorMessage": "400 mock failure"}
    ended["event"].update(outcome="error", error="LLM request failed: provider rejected the request")
    job_id = (await apply_frame(store, spawned)).job_id
    await apply_frame(store, child_end)
    await apply_frame(store, ended)
    job = await store.get_job(job_id or "")
    assert job.status is JobStatus.RETRYING
    assert job.last_error == "LLM request failed: provider rejected the request"


@pytest.mark.parametrize("outcome", ["killed", "reset", "deleted"])
async def test_killed_child_is_cancelled(store: JobStore, outcome: str) -> None:
    spawned, _, _, ended = spawn_lifecycle()
    ended["event"]["outcome"] = outcome
    job_id = (await apply_frame(store, spawned)).job_id
    await apply_frame(store, ended)
    assert (await store.get_job(job_id or "")).status is JobStatus.CANCELLED


async def test_terminal_job_ignores_later_events(store: JobStore) -> None:
    spawned, _, _, ended = spawn_lifecycle()
    for data in (spawned, ended):
        await apply_frame(store, data)
    late = dict(ended, id="late-error")
    late["event"] = dict(ended["event"], outcome="error", error="late")
    await apply_frame(store, late)
    job = await store.resolve(SPAWN_CHILD_SESSION)
    assert job.status is JobStatus.COMPLETED
    assert job.last_error is None


async def test_event_about_another_run_is_stale(store: JobStore) -> None:
    spawned, _, child_end, _ = spawn_lifecycle()
    job_id = (await apply_frame(store, spawned)).job_id
    other_run = dict(child_end, id="other")
    other_run["event"] = dict(child_end["event"], runId="some-other-run")
    other_run["ctx"] = dict(child_end["ctx"], runId="some-other-run")
    # Not indexed: parked until a job with that run appears.
    assert (await apply_frame(store, other_run)).outcome == "parked"
    assert (await store.get_job(job_id or "")).status is JobStatus.ACTIVE


async def test_send_run_end_waits_for_send_job(store: JobStore) -> None:
    # A sessions_send into a child session ends with subagent_ended carrying the send's run id.
    spawned, _, _, _ = spawn_lifecycle()
    spawn_id = (await apply_frame(store, spawned)).job_id
    send_end = frame(sample("sessions.send (WS) into a subagent session: subagent_ended"))
    send_end["ctx"]["childSessionKey"] = SPAWN_CHILD_SESSION
    send_end["event"]["targetSessionKey"] = SPAWN_CHILD_SESSION
    assert (await apply_frame(store, send_end)).outcome == "parked"
    assert (await store.get_job(spawn_id or "")).status is JobStatus.ACTIVE

    send = frame(sample("sessions_send from main agent"))
    send["event"]["result"]["details"]["runId"] = send_end["event"]["runId"]
    send_id = (await apply_frame(store, send)).job_id
    send_job = await store.get_job(send_id or "")
    assert send_job.kind is JobKind.SEND
    assert send_job.status is JobStatus.COMPLETED


async def test_send_completes_when_its_run_ends(store: JobStore) -> None:
    send = frame(sample("sessions_send from main agent"))
    run_id = send["event"]["result"]["details"]["runId"]
    job_id = (await apply_frame(store, send)).job_id
    assert (await store.get_job(job_id or "")).status is JobStatus.ACTIVE
    run_end = frame(sample("spawn success: agent_end of child run"))
    run_end["event"]["runId"] = run_end["ctx"]["runId"] = run_id
    await apply_frame(store, run_end)
    assert (await store.get_job(job_id or "")).status is JobStatus.COMPLETED


async def test_send_run_failure_is_retrying(store: JobStore) -> None:
    send = frame(sample("sessions_send from main agent"))
    run_id = send["event"]["result"]["details"]["runId"]
    run_end = frame(sample("provider failure (HTTP 500): agent_end"))
    run_end["event"]["runId"] = run_end["ctx"]["runId"] = run_id
    await apply_frame(store, run_end)
    job_id = (await apply_frame(store, send)).job_id
    job = await store.get_job(job_id or "")
    assert job.status is JobStatus.RETRYING
    assert job.last_error == "500 mock failure"


async def test_gateway_events_recorded(store: JobStore, redis_client: aioredis.Redis) -> None:
    result = await apply_frame(store, frame(sample("gateway_start"), source="gw-a"), now_ms=5)
    assert result.outcome == "recorded"
    assert result.job_id is None
    record = await redis_client.hgetall(store.keys.gateway("gw-a"))  # type: ignore[misc]
    assert record["port"] == "18790"


async def test_resolve_by_every_identifier(store: JobStore) -> None:
    job_id = None
    for data in spawn_lifecycle():
        job_id = (await apply_frame(store, data)).job_id or job_id
    for identifier in (job_id, SPAWN_TOOL_CALL, SPAWN_CHILD_SESSION, SPAWN_CHILD_RUN):
        assert (await store.resolve(identifier or "")).id == job_id
    with pytest.raises(JobNotFound, match="nope not found"):
        await store.resolve("nope")


async def test_stats_and_list_filters(store: JobStore) -> None:
    for data in spawn_lifecycle():
        await apply_frame(store, data)
    forbidden = frame(sample("failing spawn (agentId not allowed)"))
    forbidden["ctx"]["agentId"] = "ops"
    await apply_frame(store, forbidden)
    stats = await store.stats()
    assert stats.by_status["completed"] == 1
    assert stats.by_status["failed"] == 1
    assert stats.total == 2
    assert stats.by_agent["main"]["completed"] == 1
    assert stats.by_agent["ops"]["failed"] == 1
    assert (await store.stats(agent="ops")).by_status["failed"] == 1
    assert [job.agent_id for job in await store.list_jobs(agent="ops")] == ["ops"]
    assert await store.list_jobs(agent="ops", status=JobStatus.COMPLETED) == []
    assert len(await store.list_jobs(agent="main", status=JobStatus.COMPLETED)) == 1
    assert len(await store.list_jobs(limit=1)) == 1


async def test_purge_removes_job_and_links(store: JobStore, redis_client: aioredis.Redis) -> None:
    job_id = None
    for data in spawn_lifecycle():
        job_id = (await apply_frame(store, data, now_ms=1_000)).job_id or job_id
    assert await store.job_ids_in_status_before(JobStatus.COMPLETED, 2_000, 10) == [job_id]
    assert await store.job_ids_in_status_before(JobStatus.COMPLETED, 500, 10) == []
    assert await store.purge_job(job_id or "")
    assert not await store.purge_job(job_id or "")
    with pytest.raises(JobNotFound):
        await store.resolve(SPAWN_CHILD_SESSION)
    assert (await store.stats()).total == 0
    assert (await store.stats()).by_agent["main"]["completed"] == 0
    assert not await redis_client.exists(store.keys.history(job_id or ""))
