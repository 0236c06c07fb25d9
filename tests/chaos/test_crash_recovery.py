"""kill -9 of the daemon in the middle of recovery work: a spool replay, and a retry dispatch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from orchestrator.jobs import JobStatus, dispatch_key
from orchestrator.keys import Keys
from tests.chaos.harness import (
    BridgeClient,
    Counts,
    LogWatcher,
    SpawnEvent,
    SpawnFrames,
    assert_all_recorded,
    check_store,
    daemon_env,
    deliver_all,
    job_store,
    keep_log,
    kill_daemon,
    spool_path,
    spool_size,
    start_daemon,
    stop_clients,
    stop_daemon_if_running,
    total_tally,
    wait_until,
)
from tests.daemon_process import DaemonProcess
from tests.events import spawn_lifecycle
from tests.gateway_standin import GatewayStandin, JsonObject, Payload, Reply
from tests.redis_process import RedisProcess
from tests.test_retry import TOKEN, child_ended, child_run_ended, wait_for_job
from tests.wire import WireClient

CLIENTS = 8
SPOOLED_PER_CLIENT = 2_500
MAX_TRIGGER_EVENTS = 600
TRIGGER_INTERVAL_S = 0.1
REPLAY_STARTED = "replaying the spool"
REPLAY_DONE = "spool replay done"
# Long enough to cover the kill. CLIENT UNPAUSE ends the pause right after it.
PAUSE_MS = 60_000


def read_checkpoint(work_dir: Path) -> int:
    offset_path = spool_path(work_dir).with_name("spool.ndjson.offset")
    try:
        return int(offset_path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


async def trigger_tracking(bridge: BridgeClient, frames: SpawnFrames, events: dict[str, SpawnEvent]) -> None:
    """Send one new event at a time until one is stored in Redis (acked with tracked:true).

    NOTE: the daemon starts a replay only after it stores an event, so without new events the
    spool is not replayed at all after Redis is back. This function keeps events coming until then.
    """
    for number in range(MAX_TRIGGER_EVENTS):
        event = frames.make(bridge.name, number)
        events[event.event_id] = event
        bridge.submit(event.event_id, event.line)
        ack = await bridge.wait_acked(event.event_id, timeout_s=30)
        if ack["tracked"]:
            return
        await asyncio.sleep(TRIGGER_INTERVAL_S)
    raise AssertionError(f"no tracked ack after {MAX_TRIGGER_EVENTS} events")


@pytest.mark.chaos
@pytest.mark.timeout(240)
async def test_daemon_kill_during_spool_replay(
    work_dir: Path, prefix: str, report_counts: Callable[[str], None]
) -> None:
    redis = RedisProcess(appendonly=True)
    redis.start()
    daemon = DaemonProcess(
        daemon_env(redis, work_dir, prefix, breaker_reset_timeout_s="1"), work_dir / "d.log"
    )
    log = LogWatcher(daemon.log_path)
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    admin = aioredis.Redis.from_url(redis.url, decode_responses=True)
    frames = SpawnFrames("replay")
    events: dict[str, SpawnEvent] = {}
    clients = [BridgeClient(daemon.socket_path, f"c{number}") for number in range(CLIENTS)]
    trigger = BridgeClient(daemon.socket_path, "trigger")
    tasks: list[asyncio.Task[None]] = []
    try:
        await start_daemon(daemon)
        await asyncio.to_thread(redis.stop)
        for bridge in clients:
            for number in range(SPOOLED_PER_CLIENT):
                event = frames.make(bridge.name, number)
                events[event.event_id] = event
                bridge.submit(event.event_id, event.line)
        tasks = [asyncio.create_task(bridge.run()) for bridge in clients]
        await deliver_all(clients, tasks, timeout_s=180)
        spooled = total_tally(clients)
        assert spooled.untracked == len(events), "events were stored while Redis was stopped"
        spooled_bytes = spool_size(work_dir)

        before_replay = log.mark()
        await asyncio.to_thread(redis.start)
        tasks.append(asyncio.create_task(trigger.run()))
        await trigger_tracking(trigger, frames, events)
        await log.wait_for(REPLAY_STARTED, start=before_replay, timeout_s=60)
        await wait_until(lambda: read_checkpoint(work_dir) > 0, timeout_s=120, what="a replay checkpoint")

        # Pause every write, so that the replay makes no progress while the daemon is killed.
        await admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        try:
            checkpoint_at_kill = read_checkpoint(work_dir)
            applied_at_kill = int(await client.hget(Keys(prefix).counters, "events") or 0)
            await kill_daemon(daemon)
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        assert log.count(REPLAY_DONE, before_replay) == 0, "the replay ended before the kill"

        restarted = log.mark()
        await start_daemon(daemon)
        await log.wait_for(REPLAY_DONE, start=restarted, timeout_s=180)
        await wait_until(lambda: spool_size(work_dir) == 0, timeout_s=60, what="an empty spool")
        trigger.close_input()
        await deliver_all([trigger], tasks[-1:], timeout_s=30)

        acks = {event_id: ack for bridge in [*clients, trigger] for event_id, ack in bridge.acks.items()}
        check = await check_store(client, prefix, events, acks)
        counts = Counts(
            "daemon kill -9 during spool replay",
            sent=len(events),
            acked=len(acks),
            recorded=check.recorded,
            lost=len(check.lost),
            duplicated=check.duplicated,
            details={
                "spooled": spooled.untracked,
                "spool_bytes": spooled_bytes,
                "applied_before_kill": applied_at_kill,
                "checkpoint_at_kill": checkpoint_at_kill,
                "reapplied_after_restart": check.events_deduplicated,
                "jobs": check.jobs,
            },
        )
        report_counts(counts.line())

        assert 0 < applied_at_kill < len(events), "the kill did not land in the middle of the replay"
        assert [item for bridge in [*clients, trigger] for item in bridge.rejected] == []
        assert_all_recorded(check, sent=len(events), acked=len(acks))
        assert check.jobs == len(events)
    finally:
        await stop_clients(tasks)
        await stop_daemon_if_running(daemon)
        keep_log(daemon, "replay-kill")
        await client.aclose()
        await admin.aclose()
        redis.cleanup()


class HeldSend:
    """A sessions.send handler that responds only after ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, params: JsonObject) -> Reply:
        await self.release.wait()
        return Payload({"runId": params.get("idempotencyKey"), "status": "started"})


# At start the daemon releases the killed task's arq in-progress lock, so the dispatch resumes at
# once; the bound leaves room for a slow machine.
RESUME_TIMEOUT_S = 60.0


@pytest.mark.chaos
@pytest.mark.timeout(300)
async def test_daemon_kill_during_retry_dispatch(
    work_dir: Path, prefix: str, report_counts: Callable[[str], None]
) -> None:
    redis = RedisProcess(appendonly=True)
    redis.start()
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    store = job_store(client, prefix)
    held_send = HeldSend()
    gateway = GatewayStandin(TOKEN)
    gateway.on("sessions.send", held_send)
    await gateway.start()
    env = daemon_env(
        redis,
        work_dir,
        prefix,
        gateway_url=gateway.url,
        gateway_token=TOKEN,
        retry_base_s="0.05",
        retry_cap_s="0.2",
        dispatch_timeout_s="10",
    )
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    log = LogWatcher(daemon.log_path)
    acks: list[dict[str, Any]] = []
    try:
        await start_daemon(daemon)
        wire = await WireClient.connect(daemon.socket_path)
        spawned, tool_call, _, _ = spawn_lifecycle()
        acks += [await wire.request(spawned), await wire.request(tool_call)]
        job_id = acks[0]["job_id"]
        first_run = (await store.get_job(job_id)).run_id or ""
        acks.append(await wire.request(child_ended("error", first_run, error="LLM request failed")))
        await wire.close()

        await gateway.wait_for_requests("sessions.send", 1, timeout_s=60)
        await kill_daemon(daemon)
        held_send.release.set()
        interrupted = await store.get_job(job_id)
        assert interrupted.status is JobStatus.QUEUED
        assert interrupted.dispatches == 1

        restarted = log.mark()
        await start_daemon(daemon)
        started_at = time.monotonic()
        await wait_for_job(store, job_id, JobStatus.ACTIVE, timeout_s=RESUME_TIMEOUT_S)
        resume_s = time.monotonic() - started_at

        key = dispatch_key(job_id, 1)
        wire = await WireClient.connect(daemon.socket_path)
        acks += [await wire.request(child_run_ended(key)), await wire.request(child_ended("ok", key))]
        await wire.close()
        job = await wait_for_job(store, job_id, JobStatus.COMPLETED)

        sent_keys = [request.params["idempotencyKey"] for request in gateway.requests_for("sessions.send")]
        keys = Keys(prefix)
        jobs = await client.zcard(keys.all_jobs)
        recorded = sum([bool(await client.exists(keys.event(ack["id"]))) for ack in acks])
        counts = Counts(
            "daemon kill -9 during retry dispatch",
            sent=len(acks),
            acked=sum(1 for ack in acks if ack["ok"]),
            recorded=recorded,
            lost=len(acks) - recorded,
            duplicated=jobs - 1,
            details={
                "dispatched": len(sent_keys),
                "double_dispatched": sum(1 for sent in sent_keys if sent != key),
                "resumed_after_s": f"{resume_s:.1f}",
            },
        )
        report_counts(counts.line())

        assert all(ack["ok"] and ack["tracked"] for ack in acks), acks
        assert recorded == len(acks)
        assert jobs == 1
        assert set(sent_keys) == {key}, f"the gateway saw other dispatch keys: {sent_keys}"
        assert len(sent_keys) <= 2
        assert log.count(f"re-dispatch 1 of job {job_id} was interrupted", restarted) == 1
        assert job.dispatches == 1
        assert job.attempts == 2
        history = (await store.get_job(job_id, with_history=True)).history
        assert [entry.to_status.value for entry in history] == [
            "queued",
            "active",
            "retrying",
            "queued",
            "active",
            "announcing",
            "completed",
        ]
    finally:
        await stop_daemon_if_running(daemon)
        keep_log(daemon, "dispatch-kill")
        await gateway.stop()
        await client.aclose()
        redis.cleanup()
