"""Recovery: direct dispatch while Redis is down, spool replay, and reconciliation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings, create_pool
from pydantic import SecretStr

from orchestrator.dispatch import FOLLOW_UP_MESSAGE
from orchestrator.gateway import GatewayClient
from orchestrator.jobs import JobStatus
from orchestrator.keys import Keys
from orchestrator.recovery import Reconciler
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from tests.conftest import start_daemon, stop_daemon
from tests.events import SPAWN_CHILD_SESSION, frame, sample, spawn_lifecycle
from tests.gateway_standin import GatewayStandin, Payload
from tests.redis_process import RedisProcess
from tests.test_retry import TOKEN, child_ended, wait_for_job
from tests.test_store import apply_frame
from tests.wire import WireClient

WAIT_S = 30.0


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayStandin]:
    async with GatewayStandin(TOKEN) as standin:
        yield standin


@pytest.fixture
async def arq_pool(redis_server: RedisProcess) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings(unix_socket_path=str(redis_server.socket_path)))
    yield pool
    await pool.aclose()


async def until(check: object, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_outage_failure_is_dispatched_directly_once(
    work_dir: Path, prefix: str, gateway: GatewayStandin
) -> None:
    server = RedisProcess(appendonly=True)  # the job must survive the Redis restart
    server.start()
    config = Settings(
        redis_url=server.url,
        key_prefix=prefix,
        state_dir=work_dir,
        socket_path=work_dir / "o.sock",
        redis_connect_timeout_s=1,
        gateway_url=gateway.url,
        gateway_token=SecretStr(TOKEN),
        retry_base_s=0.05,
        retry_cap_s=0.1,
        http_port=0,
    )
    running, task = await start_daemon(config)
    wire = await WireClient.connect(config.resolved_socket_path)
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    store = JobStore(client, Keys(prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=3)
    try:
        spawned, tool_call, _, _ = spawn_lifecycle()
        job_id = (await wire.request(spawned))["job_id"]
        await wire.request(tool_call)
        run_id = (await store.get_job(job_id)).run_id or ""

        server.stop()
        failure = child_ended("error", run_id, error="interrupted by a Gateway restart")
        assert (await wire.request(failure))["tracked"] is False
        await gateway.wait_for_requests("sessions.send", 1, timeout_s=WAIT_S)
        direct = gateway.requests_for("sessions.send")[0].params
        assert direct == {
            "key": SPAWN_CHILD_SESSION,
            "message": FOLLOW_UP_MESSAGE,
            "idempotencyKey": f"orch-direct-{failure['id']}",
        }

        server.start()

        async def replayed() -> bool:
            reply = await wire.request(
                {
                    "v": 1,
                    "id": f"probe-{time.monotonic_ns()}",
                    "type": "gateway",
                    "ts": 0,
                    "hook": "gateway_stop",
                    "event": {"reason": "probe"},
                }
            )
            return bool(reply["tracked"]) and config.resolved_spool_path.stat().st_size == 0

        await until(replayed, "the spool replay")
        job = await wait_for_job(store, job_id, JobStatus.ACTIVE)
        await until(lambda: _outbox_empty(store), "the outbox to drain")
    finally:
        await wire.close()
        await stop_daemon(running, task)
        await client.aclose()
        server.cleanup()
    assert job.run_id == f"orch-direct-{failure['id']}"
    assert job.dispatches == 1
    assert job.attempts == 2
    assert [entry.to_status.value for entry in job.history][-3:] == ["retrying", "queued", "active"]
    assert len(gateway.requests_for("sessions.send")) == 1


async def _outbox_empty(store: JobStore) -> bool:
    return await store.outbox_depth("default") == 0


async def test_reconcile_rearms_lost_retry(
    store: JobStore, arq_pool: ArqRedis, redis_client: aioredis.Redis
) -> None:
    spawned, _, _, ended = spawn_lifecycle()
    job_id = (await apply_frame(store, owner="default", data=spawned)).job_id or ""
    ended["event"]["outcome"] = "error"
    await apply_frame(store, owner="default", data=ended)
    await redis_client.delete(store.keys.outbox("default"))

    woken: list[bool] = []
    reconciler = Reconciler(
        store, arq_pool, owner="default", gateway=None, wake_relay=lambda: woken.append(True)
    )
    counts = await reconciler.reconcile(check_runs=False)
    assert counts.rearmed_retries == 1
    assert await store.outbox_items("default", 10) == [f"retry|{job_id}"]
    assert woken == [True]
    again = await reconciler.reconcile(check_runs=False)
    assert again.rearmed_retries == 0
    assert await store.outbox_items("other", 10) == []


async def test_reconcile_resumes_claimed_dispatch(store: JobStore, arq_pool: ArqRedis) -> None:
    spawned, _, _, ended = spawn_lifecycle()
    job_id = (await apply_frame(store, owner="default", data=spawned)).job_id or ""
    ended["event"]["outcome"] = "error"
    await apply_frame(store, owner="default", data=ended)
    await store.claim_dispatch(job_id, 1, 1, f"orch-{job_id}-1")

    reconciler = Reconciler(store, arq_pool, owner="default", gateway=None, wake_relay=lambda: None)
    counts = await reconciler.reconcile(check_runs=False)
    assert counts.resumed_dispatches == 1
    queued = await arq_pool.zrange(store.keys.arq_queue("default"), 0, -1)
    assert [item.decode() for item in queued] == [f"{store.keys.prefix}:dispatch:{job_id}:1"]


async def test_reconcile_retries_runs_the_gateway_lost(
    store: JobStore, arq_pool: ArqRedis, gateway: GatewayStandin
) -> None:
    job_id = ""
    for data in spawn_lifecycle()[:2]:
        job_id = (await apply_frame(store, owner="default", data=data)).job_id or job_id
    gateway.on("agent.wait", Payload({"status": "error", "error": "run not found after restart"}))
    async with GatewayClient(gateway.url, TOKEN) as client:
        reconciler = Reconciler(store, arq_pool, owner="default", gateway=client, wake_relay=lambda: None)
        counts = await reconciler.reconcile(check_runs=True)
    assert counts.runs_checked == 1
    assert counts.runs_failed == 1
    job = await store.get_job(job_id, with_history=True)
    assert job.status is JobStatus.RETRYING
    assert job.last_error == "run not found after restart"
    assert job.history[-1].reason == "reconciled: the gateway reports the run failed"
    assert await store.outbox_items("default", 10) == [f"retry|{job_id}"]


async def test_reconcile_leaves_running_runs(
    store: JobStore, arq_pool: ArqRedis, gateway: GatewayStandin
) -> None:
    job_id = (
        await apply_frame(store, owner="default", data=frame(sample("spawn success: subagent_spawned")))
    ).job_id or ""
    gateway.on("agent.wait", Payload({"status": "timeout"}))
    async with GatewayClient(gateway.url, TOKEN) as client:
        reconciler = Reconciler(store, arq_pool, owner="default", gateway=client, wake_relay=lambda: None)
        counts = await reconciler.reconcile(check_runs=True)
    assert counts.runs_failed == 0
    assert (await store.get_job(job_id)).status is JobStatus.ACTIVE
    params = gateway.requests_for("agent.wait")[0].params
    assert params["runId"] == "cea07673-cf3c-4a40-9d75-03609649ac2d"


async def test_gateway_start_rearms_retries(
    settings: Settings, gateway: GatewayStandin, redis_client: aioredis.Redis
) -> None:
    config = settings.model_copy(
        update={
            "gateway_url": gateway.url,
            "gateway_token": SecretStr(TOKEN),
            "retry_base_s": 0.05,
            "retry_cap_s": 0.1,
        }
    )
    store = JobStore(redis_client, Keys(config.key_prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=3)
    await store.load_scripts()
    # A retry whose outbox entry was lost before this daemon started.
    spawned, tool_call, _, ended = spawn_lifecycle()
    job_id = (await apply_frame(store, owner="default", data=spawned)).job_id or ""
    await apply_frame(store, owner="default", data=tool_call)
    ended["event"]["outcome"] = "error"
    await apply_frame(store, owner="default", data=ended)
    await redis_client.delete(store.keys.outbox("default"))

    running, task = await start_daemon(config)
    try:
        # Boot recovery re-arms it; a gateway_start later re-arms nothing twice.
        await gateway.wait_for_requests("sessions.send", 1, timeout_s=WAIT_S)
        wire = await WireClient.connect(config.resolved_socket_path)
        await wire.request(frame(sample("gateway_start")))
        await wire.close()
        await wait_for_job(store, job_id, JobStatus.ACTIVE)
    finally:
        await stop_daemon(running, task)
    sends = gateway.requests_for("sessions.send")
    assert [request.params["idempotencyKey"] for request in sends] == [f"orch-{job_id}-1"]
    assert orjson.loads(orjson.dumps(sends[0].params))["message"] == "write a haiku #0"
