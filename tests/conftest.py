"""Shared fixtures: a real redis-server per session, a key prefix per test, an in-process daemon."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from orchestrator.keys import Keys
from orchestrator.service import Daemon
from orchestrator.settings import Settings, load_settings
from orchestrator.store import JobStore
from tests.redis_process import RedisProcess, short_temp_dir
from tests.wire import WireClient

DAEMON_START_TIMEOUT_S = 30.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ORCH_* variables of the developer's shell out of the tests."""
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own for each test, so tests never flush or share keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def work_dir() -> Iterator[Path]:
    path = short_temp_dir("orch-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(redis_server: RedisProcess, prefix: str, work_dir: Path) -> Settings:
    return load_settings(
        redis_url=redis_server.url,
        key_prefix=prefix,
        state_dir=work_dir,
        socket_path=work_dir / "orch.sock",
        shutdown_grace_s=5,
        http_port=0,
    )


@pytest.fixture
async def redis_client(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: aioredis.Redis, prefix: str) -> JobStore:
    job_store = JobStore(redis_client, Keys(prefix), event_ttl_s=3600, orphan_ttl_s=3600, max_attempts=3)
    await job_store.load_scripts()
    return job_store


async def start_daemon(settings: Settings) -> tuple[Daemon, asyncio.Task[None]]:
    """Run a daemon in this event loop and wait until its socket is open."""
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=DAEMON_START_TIMEOUT_S, return_when="FIRST_COMPLETED")
    if task in done:
        ready.cancel()
        task.result()
        raise AssertionError("daemon stopped before it was ready")
    if ready not in done:
        raise AssertionError(f"daemon was not ready within {DAEMON_START_TIMEOUT_S}s")
    return daemon, task


async def stop_daemon(daemon: Daemon, task: asyncio.Task[None]) -> None:
    daemon.stop_event.set()
    async with asyncio.timeout(DAEMON_START_TIMEOUT_S):
        await task


@pytest.fixture
async def daemon(settings: Settings) -> AsyncIterator[Daemon]:
    running, task = await start_daemon(settings)
    yield running
    await stop_daemon(running, task)


@pytest.fixture
async def client(daemon: Daemon, settings: Settings) -> AsyncIterator[WireClient]:
    connection = await WireClient.connect(settings.resolved_socket_path)
    yield connection
    await connection.close()
