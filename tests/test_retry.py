"""Re-dispatch, dead letters and alerts: a daemon with a real Redis and a gateway stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from loguru import logger
from pydantic import SecretStr

from orchestrator.dispatch import Dispatcher
from orchestrator.errors import JobNotFound
from orchestrator.gateway import GatewayClient
from orchestrator.jobs import Job, JobStatus, dispatch_key
from orchestrator.keys import Keys
from orchestrator.service import Daemon
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from tests.conftest import start_daemon, stop_daemon
from tests.daemon_process import DaemonProcess
from tests.events import SPAWN_CHILD_SESSION, frame, sample, spawn_lifecycle
from tests.gateway_standin import Error, GatewayStandin, Payload
from tests.redis_process import RedisProcess
from tests.test_store import apply_frame
from tests.webhook_receiver import WebhookReceiver
from tests.wire import WireClient

TOKEN = "test-gateway-token"
WAIT_S = 30.0


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayStandin]:
    async with GatewayStandin(TOKEN) as standin:
        yield standin


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def retry_settings(settings: Settings, gateway: GatewayStandin, webhook: WebhookReceiver) -> Settings:
    return settings.model_copy(
        update={
            "gateway_url": gateway.url,
            "gateway_token": SecretStr(TOKEN),
            "retry_base_s": 0.05,
            "retry_cap_s": 0.2,
            "max_attempts": 3,
            "alert_webhook_url": webhook.url,
            "alert_session_key": "agent:ops:main",
            "alert_retry_base_s": 0.05,
            "dispatch_timeout_s": 5.0,
        }
    )


@pytest.fixture
async def running(retry_settings: Settings) -> AsyncIterator[Daemon]:
    daemon, task = await start_daemon(retry_settings)
    yield daemon
    await stop_daemon(daemon, task)


@pytest.fixture
async def wire(running: Daemon, retry_settings: Settings) -> AsyncIterator[WireClient]:
    client = await WireClient.connect(retry_settings.resolved_socket_path)
    yield client
    await client.close()


def store_of(daemon: Daemon) -> JobStore:
    assert daemon.tracker is not None
    return daemon.tracker.store


async def wait_for_job(store: JobStore, job_id: str, status: JobStatus, *, timeout_s: float = WAIT_S) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await store.get_job(job_id, with_history=True)
        if job.status is status:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} is {job.status.value}, expected {status.value}: {job.history}"
            )
        await asyncio.sleep(0.02)


async def start_spawn(wire: WireClient) -> str:
    """Send subagent_spawned and the accepted after_tool_call; return the job id."""
    spawned, tool_call, _, _ = spawn_lifecycle()
    acks = [await wire.request(spawned), await wire.request(tool_call)]
    job_id = acks[0]["job_id"]
    assert isinstance(job_id, str)
    return job_id


def child_ended(outcome: str, run_id: str, *, error: str | None = None) -> dict[str, Any]:
    data = frame(sample("spawn success: subagent_ended"))
    data["event"].update(outcome=outcome, runId=run_id)
    data["ctx"]["runId"] = run_id
    if error is not None:
        data["event"]["error"] = error
    return data


def child_run_ended(run_id: str) -> dict[str, Any]:
    data = frame(sample("spawn success: agent_end of child run"))
    data["event"]["runId"] = data["ctx"]["runId"] = run_id
    return data


async def test_failed_child_rerun_then_completes(
    wire: WireClient, running: Daemon, gateway: GatewayStandin, webhook: WebhookReceiver
) -> None:
    job_id = await start_spawn(wire)
    first_run = (await store_of(running).get_job(job_id)).run_id or ""
    await wire.request(child_ended("error", first_run, error="LLM request failed: HTTP 500"))

    await gateway.wait_for_requests("sessions.send", 1, timeout_s=WAIT_S)
    sent = gateway.requests_for("sessions.send")[0].params
    key = dispatch_key(job_id, 1)
    assert sent == {"key": SPAWN_CHILD_SESSION, "message": "write a haiku #0", "idempotencyKey": key}
    job = await wait_for_job(store_of(running), job_id, JobStatus.ACTIVE)
    assert job.run_id == key
    assert job.attempts == 2

    await wire.request(child_run_ended(key))
    await wire.request(child_ended("ok", key))
    job = await wait_for_job(store_of(running), job_id, JobStatus.COMPLETED)
    assert [entry.to_status.value for entry in job.history] == [
        "queued",
        "active",
        "retrying",
        "queued",
        "active",
        "announcing",
        "completed",
    ]
    assert job.dispatches == 1
    assert job.last_error == "LLM request failed: HTTP 500"
    assert webhook.attempts == []


async def test_exhausted_job_alerts_once_per_sink(
    wire: WireClient, running: Daemon, gateway: GatewayStandin, webhook: WebhookReceiver
) -> None:
    messages: list[str] = []
    sink_id = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    try:
        job_id = await start_spawn(wire)
        run_id = (await store_of(running).get_job(job_id)).run_id or ""
        for number in (1, 2):
            await wire.request(child_ended("error", run_id, error=f"model failed on run {number}"))
            await gateway.wait_for_requests("sessions.send", number, timeout_s=WAIT_S)
            run_id = dispatch_key(job_id, number)
            await wait_for_job(store_of(running), job_id, JobStatus.ACTIVE)
        await wire.request(child_ended("error", run_id, error="model failed on run 3"))

        job = await wait_for_job(store_of(running), job_id, JobStatus.FAILED)
        await webhook.wait_for_deliveries(1)
        await gateway.wait_for_requests("chat.send", 1, timeout_s=WAIT_S)
        keys = Keys(store_of(running).keys.prefix)
        await _wait_until_delivered(store_of(running), keys, job_id, ["webhook", "gateway"])
    finally:
        logger.remove(sink_id)

    assert job.attempts == 3
    assert job.last_error == "model failed on run 3"
    assert "dead-lettered" in job.history[-1].reason
    assert len(webhook.delivered) == 1
    alert = webhook.delivered[0]
    assert alert["job_id"] == job_id
    assert alert["attempts"] == 3
    assert alert["task"] == "write a haiku #0"
    assert alert["last_error"] == "model failed on run 3"
    chats = gateway.requests_for("chat.send")
    assert len(chats) == 1
    assert chats[0].params["sessionKey"] == "agent:ops:main"
    assert job_id in chats[0].params["message"]
    assert len([text for text in messages if "dead letter" in text and job_id in text]) == 1
    assert len(gateway.requests_for("sessions.send")) == 2
    dlq = await store_of(running).list_jobs(status=JobStatus.FAILED)
    assert [item.id for item in dlq] == [job_id]


async def _wait_until_delivered(store: JobStore, keys: Keys, job_id: str, sinks: list[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not all([await store.alert_delivered(job_id, 1, sink) for sink in sinks]):
        assert time.monotonic() < deadline, f"alerts of job {job_id} not all delivered"
        await asyncio.sleep(0.02)


async def test_forbidden_spawn_alerts_without_dispatch(
    wire: WireClient, running: Daemon, gateway: GatewayStandin, webhook: WebhookReceiver
) -> None:
    ack = await wire.request(frame(sample("failing spawn (agentId not allowed)")))
    job = await wait_for_job(store_of(running), ack["job_id"], JobStatus.FAILED)
    await webhook.wait_for_deliveries(1)
    assert webhook.delivered[0]["last_error"] == "agentId is not allowed for sessions_spawn (allowed: main)"
    assert job.dispatches == 0
    assert gateway.requests_for("sessions.send") == []
    assert gateway.requests_for("tools.invoke") == []


@pytest.mark.parametrize("outcome", ["killed", "reset", "deleted"])
async def test_cancelled_child_is_neither_retried_nor_alerted(
    wire: WireClient, running: Daemon, outcome: str
) -> None:
    job_id = await start_spawn(wire)
    run_id = (await store_of(running).get_job(job_id)).run_id or ""
    await wire.request(child_ended(outcome, run_id))
    job = await wait_for_job(store_of(running), job_id, JobStatus.CANCELLED)
    assert job.failures == 0
    assert await store_of(running).outbox_depth("default") == 0


async def test_failed_spawn_call_spawns_again_with_label(
    wire: WireClient, running: Daemon, gateway: GatewayStandin, retry_settings: Settings
) -> None:
    failing = frame(sample("failing spawn (agentId not allowed)"))
    failing["event"]["result"]["details"]["status"] = "error"
    failing["event"]["params"].pop("agentId")
    child_key = "agent:main:subagent:11111111-2222-3333-4444-555555555555"
    early_acks: list[dict[str, Any]] = []

    async def spawn_and_report_early(params: dict[str, Any]) -> Payload:
        # The new child's subagent_spawned reaches the daemon before the tool call returns.
        spawned = frame(sample("spawn success: subagent_spawned"))
        spawned["event"].update(childSessionKey=child_key, runId="r-new", label=params["args"]["label"])
        spawned["ctx"].update(childSessionKey=child_key, runId="r-new")
        other = await WireClient.connect(retry_settings.resolved_socket_path)
        early_acks.append(await other.request(spawned))
        await other.close()
        details = {"status": "accepted", "childSessionKey": child_key, "runId": "r-new"}
        return Payload({"ok": True, "result": {"details": details}})

    gateway.on("tools.invoke", spawn_and_report_early)
    ack = await wire.request(failing)
    job = await wait_for_job(store_of(running), ack["job_id"], JobStatus.ACTIVE)
    call = gateway.requests_for("tools.invoke")[0].params
    assert call["name"] == "sessions_spawn"
    assert call["args"]["task"] == "do something"
    assert call["args"]["label"] == f"w0 [{dispatch_key(job.id, 1)}]"
    assert call["sessionKey"] == "agent:main:main"
    assert job.child_session_key == child_key
    assert job.run_id == "r-new"
    # The early event found the job through its label, waited, and did not create a second job.
    assert early_acks[0]["ok"] is True
    assert len(await store_of(running).list_jobs()) == 1
    assert (await store_of(running).resolve(child_key)).id == job.id
    job = await wait_for_job(store_of(running), job.id, JobStatus.ACTIVE)
    assert job.events == 2


async def test_unreachable_gateway_retries_then_dead_letters(
    retry_settings: Settings, gateway: GatewayStandin, webhook: WebhookReceiver
) -> None:
    await gateway.stop()
    daemon, task = await start_daemon(retry_settings)
    try:
        wire = await WireClient.connect(retry_settings.resolved_socket_path)
        job_id = await start_spawn(wire)
        run_id = (await store_of(daemon).get_job(job_id)).run_id or ""
        await wire.request(child_ended("timeout", run_id))
        job = await wait_for_job(store_of(daemon), job_id, JobStatus.FAILED)
        await webhook.wait_for_deliveries(1)
        await wire.close()
    finally:
        await stop_daemon(daemon, task)
    assert job.attempts == 3
    assert job.dispatches == 2
    assert job.last_error is not None
    assert "gateway call sessions.send" in job.last_error
    reasons = [entry.reason for entry in job.history if entry.to_status is JobStatus.RETRYING]
    assert len(reasons) == 2
    assert len(webhook.delivered) == 1


async def test_rejected_dispatch_is_permanent(
    wire: WireClient, running: Daemon, gateway: GatewayStandin
) -> None:
    gateway.on("sessions.send", Error("session not found", code="NOT_FOUND", retryable=False))
    job_id = await start_spawn(wire)
    run_id = (await store_of(running).get_job(job_id)).run_id or ""
    await wire.request(child_ended("error", run_id))
    job = await wait_for_job(store_of(running), job_id, JobStatus.FAILED)
    assert job.attempts == 2
    assert job.last_error is not None
    assert "session not found" in job.last_error


async def test_webhook_down_then_up_delivers_once(
    retry_settings: Settings, webhook: WebhookReceiver, gateway: GatewayStandin
) -> None:
    webhook.fail_first = 2
    daemon, task = await start_daemon(retry_settings)
    try:
        wire = await WireClient.connect(retry_settings.resolved_socket_path)
        ack = await wire.request(frame(sample("failing spawn (agentId not allowed)")))
        await webhook.wait_for_deliveries(1)
        await _wait_until_delivered(store_of(daemon), store_of(daemon).keys, ack["job_id"], ["webhook"])
        await wire.close()
    finally:
        await stop_daemon(daemon, task)
    assert len(webhook.attempts) == 3
    assert len(webhook.delivered) == 1


async def test_send_job_is_sent_again(wire: WireClient, running: Daemon, gateway: GatewayStandin) -> None:
    send = frame(sample("sessions_send from main agent"))
    send["event"]["result"]["details"]["status"] = "timeout"
    ack = await wire.request(send)
    await gateway.wait_for_requests("sessions.send", 1, timeout_s=WAIT_S)
    params = gateway.requests_for("sessions.send")[0].params
    assert params["key"] == "agent:main:subagent:21546681-5e28-46e6-8f42-f80395036eca"
    assert params["message"] == "hello child from main"
    key = dispatch_key(ack["job_id"], 1)
    await wait_for_job(store_of(running), ack["job_id"], JobStatus.ACTIVE)
    await wire.request(child_run_ended(key))
    await wait_for_job(store_of(running), ack["job_id"], JobStatus.COMPLETED)


async def test_interrupted_dispatch_resumes_once(store: JobStore, gateway: GatewayStandin) -> None:
    spawned, tool_call, _, ended = spawn_lifecycle()
    job_id = (await apply_frame(store, spawned)).job_id or ""
    await apply_frame(store, tool_call)
    ended["event"]["outcome"] = "error"
    await apply_frame(store, ended)
    assert (await store.claim_dispatch(job_id, 2, 1, "out-of-order")).verdict == "skip"

    # A worker claimed dispatch 1 and died before calling the gateway.
    key = dispatch_key(job_id, 1)
    assert (await store.claim_dispatch(job_id, 1, 1, key)).verdict == "claimed"
    async with GatewayClient(gateway.url, TOKEN) as client:
        dispatcher = Dispatcher(store, client, timeout_s=5)
        assert await dispatcher.redispatch(job_id, 1) == "accepted"
        assert await dispatcher.redispatch(job_id, 1) == "skip"
    sends = gateway.requests_for("sessions.send")
    assert [request.params["idempotencyKey"] for request in sends] == [key]
    job = await store.get_job(job_id)
    assert job.status is JobStatus.ACTIVE
    assert job.attempts == 2


async def test_killed_daemon_runs_scheduled_retry_once(
    retry_settings: Settings, redis_server: RedisProcess, gateway: GatewayStandin, work_dir: Path
) -> None:
    env = {
        "ORCH_REDIS_URL": redis_server.url,
        "ORCH_KEY_PREFIX": retry_settings.key_prefix,
        "ORCH_STATE_DIR": str(work_dir / "state"),
        "ORCH_SOCKET_PATH": str(work_dir / "k.sock"),
        "ORCH_GATEWAY_URL": gateway.url,
        "ORCH_GATEWAY_TOKEN": TOKEN,
        # Long enough that the daemon dies before the retry is due, short enough for a test.
        "ORCH_RETRY_BASE_S": "3",
        "ORCH_RETRY_CAP_S": "3",
        "ORCH_HTTP_PORT": "0",
    }
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    daemon.start()
    wire = await WireClient.connect(daemon.socket_path)
    job_id = await start_spawn(wire)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    store = JobStore(client, Keys(retry_settings.key_prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=3)
    try:
        run_id = (await store.get_job(job_id)).run_id or ""
        await wire.request(child_ended("error", run_id))
        await wire.close()
        deadline = time.monotonic() + WAIT_S
        while (await store.get_job(job_id)).next_retry_at_ms is None:
            assert time.monotonic() < deadline, "the retry was never scheduled"
            await asyncio.sleep(0.02)
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        assert gateway.requests_for("sessions.send") == []

        daemon.start()
        job = await wait_for_job(store, job_id, JobStatus.ACTIVE, timeout_s=60)
        assert job.dispatches == 1
        sends = gateway.requests_for("sessions.send")
        assert [request.params["idempotencyKey"] for request in sends] == [dispatch_key(job_id, 1)]
    finally:
        daemon.stop()
        await client.aclose()


async def test_two_daemons_share_redis_and_keep_their_retries(settings: Settings, work_dir: Path) -> None:
    async with GatewayStandin(TOKEN) as gateway_a, GatewayStandin(TOKEN) as gateway_b:
        configs = {
            name: settings.model_copy(
                update={
                    "gateway_id": name,
                    "gateway_url": standin.url,
                    "gateway_token": SecretStr(TOKEN),
                    "state_dir": work_dir / name,
                    "socket_path": work_dir / f"{name}.sock",
                    "retry_base_s": 0.05,
                    "retry_cap_s": 0.1,
                }
            )
            for name, standin in (("gw-a", gateway_a), ("gw-b", gateway_b))
        }
        daemons = [await start_daemon(config) for config in configs.values()]
        try:
            job_ids = {}
            for name, config in configs.items():
                wire = await WireClient.connect(config.resolved_socket_path)
                spawned, tool_call, _, _ = spawn_lifecycle()
                child = f"agent:main:subagent:{name}"
                for data in (spawned, tool_call):
                    data["ctx"]["childSessionKey"] = child
                spawned["event"].update(childSessionKey=child, runId=f"run-{name}")
                spawned["ctx"]["runId"] = f"run-{name}"
                tool_call["event"]["result"]["details"].update(childSessionKey=child, runId=f"run-{name}")
                tool_call["event"]["toolCallId"] = tool_call["ctx"]["toolCallId"] = f"call-{name}"
                job_ids[name] = (await wire.request(spawned))["job_id"]
                await wire.request(tool_call)
                ended = child_ended("error", f"run-{name}")
                ended["ctx"]["childSessionKey"] = ended["event"]["targetSessionKey"] = child
                await wire.request(ended)
                await wire.close()
            store = store_of(daemons[0][0])
            for name in configs:
                await wait_for_job(store, job_ids[name], JobStatus.ACTIVE)
        finally:
            for daemon, task in daemons:
                await stop_daemon(daemon, task)
        keys_a = [request.params["key"] for request in gateway_a.requests_for("sessions.send")]
        keys_b = [request.params["key"] for request in gateway_b.requests_for("sessions.send")]
    assert keys_a == ["agent:main:subagent:gw-a"]
    assert keys_b == ["agent:main:subagent:gw-b"]
    stats = await store.stats()
    assert stats.by_gateway["gw-a"]["active"] == 1
    assert stats.by_gateway["gw-b"]["active"] == 1


async def test_worker_survives_redis_restart(
    settings: Settings, work_dir: Path, gateway: GatewayStandin
) -> None:
    server = RedisProcess(appendonly=True)
    server.start()
    config = settings.model_copy(
        update={
            "redis_url": server.url,
            "gateway_url": gateway.url,
            "gateway_token": SecretStr(TOKEN),
            "retry_base_s": 0.05,
            "retry_cap_s": 0.1,
            "redis_connect_timeout_s": 1.0,
        }
    )
    daemon, task = await start_daemon(config)
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    store = JobStore(client, Keys(config.key_prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=3)
    try:
        server.stop()
        server.start()
        # arq's worker exits when its connection drops; the supervisor must start a new one, or the
        # retry below is never dispatched.
        wire = await WireClient.connect(config.resolved_socket_path)
        job_id = await _start_spawn_until_stored(wire, store)
        run_id = (await store.get_job(job_id)).run_id or ""
        await wire.request(child_ended("error", run_id))
        await wire.close()
        await gateway.wait_for_requests("sessions.send", 1, timeout_s=60)
        job = await wait_for_job(store, job_id, JobStatus.ACTIVE, timeout_s=60)
    finally:
        await stop_daemon(daemon, task)
        await client.aclose()
        server.cleanup()
    assert job.dispatches == 1


async def _start_spawn_until_stored(wire: WireClient, store: JobStore) -> str:
    """Send the spawn events until Redis has them (the first tries may land in the spool)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        job_id = await start_spawn(wire)
        with contextlib.suppress(JobNotFound):
            await store.get_job(job_id)
            return job_id
        assert time.monotonic() < deadline, "the spawn never reached Redis"
        await asyncio.sleep(0.1)
