"""The gateway unreachable for longer than the backoff cap: retries go on, then dead letters."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from orchestrator.jobs import JobStatus
from orchestrator.keys import Keys
from tests.chaos.harness import (
    Counts,
    LogWatcher,
    SpawnFrames,
    daemon_env,
    job_store,
    keep_log,
    start_daemon,
    stop_daemon_if_running,
    wait_until_true,
)
from tests.daemon_process import DaemonProcess
from tests.gateway_standin import GatewayStandin
from tests.redis_process import RedisProcess
from tests.test_retry import TOKEN
from tests.webhook_receiver import WebhookReceiver
from tests.wire import WireClient

JOBS = 10
MAX_ATTEMPTS = 3
RETRY_BASE_S = 0.2
RETRY_CAP_S = 0.5
WAIT_S = 120.0
UNFINISHED = (JobStatus.QUEUED, JobStatus.RETRYING)


@pytest.mark.chaos
@pytest.mark.timeout(240)
async def test_gateway_unreachable_dead_letters_once(
    work_dir: Path, prefix: str, report_counts: Callable[[str], None]
) -> None:
    # A stand-in that is started and stopped again leaves a loopback port where nothing listens.
    gateway = GatewayStandin(TOKEN)
    await gateway.start()
    await gateway.stop()
    webhook = WebhookReceiver()
    await webhook.start()
    redis = RedisProcess(appendonly=True)
    redis.start()
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    store = job_store(client, prefix)
    keys = Keys(prefix)
    env = daemon_env(
        redis,
        work_dir,
        prefix,
        gateway_url=gateway.url,
        gateway_token=TOKEN,
        max_attempts=str(MAX_ATTEMPTS),
        retry_base_s=str(RETRY_BASE_S),
        retry_cap_s=str(RETRY_CAP_S),
        dispatch_timeout_s="2",
        alert_webhook_url=webhook.url,
        alert_retry_base_s="0.1",
    )
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    log = LogWatcher(daemon.log_path)
    try:
        await start_daemon(daemon)
        frames = SpawnFrames("gwdown")
        wire = await WireClient.connect(daemon.socket_path)
        acks = []
        job_ids = []
        for number in range(JOBS):
            spawned = frames.make("c0", number)
            await wire.send_raw(spawned.line)
            ack = await wire.response()
            acks.append(ack)
            job_ids.append(ack["job_id"])
            acks.append(await wire.request(frames.ended(spawned, "error", error="model provider failed")))
        await wire.close()
        first_failure_at = time.monotonic()

        await webhook.wait_for_deliveries(JOBS, timeout_s=WAIT_S)
        dead_lettered_s = time.monotonic() - first_failure_at

        async def alerts_recorded() -> bool:
            delivered = [await store.alert_delivered(job_id, 1, "webhook") for job_id in job_ids]
            return all(delivered) and await store.outbox_depth("default") == 0

        await wait_until_true(
            alerts_recorded, timeout_s=WAIT_S, what="every alert recorded, the outbox empty"
        )
        jobs = [await store.get_job(job_id, with_history=True) for job_id in job_ids]
        stuck = sum([await client.zcard(keys.status_index(status.value)) for status in UNFINISHED])
        failed = await client.zcard(keys.status_index(JobStatus.FAILED.value))
        recorded = sum([bool(await client.exists(keys.event(ack["id"]))) for ack in acks])
        alerted_jobs = [alert["job_id"] for alert in webhook.delivered]
        counts = Counts(
            "gateway unreachable",
            sent=len(acks),
            acked=sum(1 for ack in acks if ack["ok"]),
            recorded=recorded,
            lost=len(acks) - recorded,
            duplicated=await client.zcard(keys.all_jobs) - JOBS,
            details={
                "dispatched": sum(job.dispatches for job in jobs),
                "double_dispatched": sum(max(0, job.dispatches - (MAX_ATTEMPTS - 1)) for job in jobs),
                "dead_lettered": failed,
                "alerts": len(webhook.delivered),
                "stuck_queued_or_retrying": stuck,
                "seconds_to_last_alert": f"{dead_lettered_s:.1f}",
            },
        )
        report_counts(counts.line())

        assert all(ack["ok"] and ack["tracked"] for ack in acks), acks
        assert recorded == len(acks)
        assert failed == JOBS
        assert stuck == 0
        assert len(webhook.attempts) == JOBS
        assert sorted(alerted_jobs) == sorted(job_ids), "each job must raise exactly one alert"
        for job in jobs:
            assert job.status is JobStatus.FAILED
            assert job.attempts == MAX_ATTEMPTS
            assert job.dispatches == MAX_ATTEMPTS - 1
            assert job.last_error is not None
            assert "gateway call sessions.send" in job.last_error
            retried = [entry for entry in job.history if entry.to_status is JobStatus.RETRYING]
            assert len(retried) == MAX_ATTEMPTS - 1
        transient = log.count("failed (transient)")
        assert transient == JOBS * (MAX_ATTEMPTS - 1), f"{transient} failed dispatches logged"
    finally:
        await stop_daemon_if_running(daemon)
        keep_log(daemon, "gateway-down")
        await client.aclose()
        await webhook.stop()
        redis.cleanup()
