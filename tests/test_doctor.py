"""orchestrator doctor: each check's verdict and fix, against real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.doctor import Check, Verdict, run_checks
from orchestrator.settings import Settings
from tests.conftest import start_daemon, stop_daemon
from tests.gateway_standin import GatewayStandin
from tests.redis_process import RedisProcess

TOKEN = "doctor-token"


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayStandin]:
    async with GatewayStandin(TOKEN) as standin:
        yield standin


@pytest.fixture
def durable_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(appendonly=True)
    server.start()
    yield server
    server.cleanup()


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


async def test_healthy_deployment_passes(
    durable_redis: RedisProcess, gateway: GatewayStandin, settings: Settings
) -> None:
    config = settings.model_copy(
        update={"redis_url": durable_redis.url, "gateway_url": gateway.url, "gateway_token": SecretStr(TOKEN)}
    )
    running, task = await start_daemon(config)
    try:
        checks = by_name(await run_checks(config))
    finally:
        await stop_daemon(running, task)
    assert {name: check.verdict for name, check in checks.items()} == {
        "Redis": Verdict.OK,
        "Redis appendonly": Verdict.OK,
        "Redis maxmemory-policy": Verdict.OK,
        "socket": Verdict.OK,
        "spool": Verdict.OK,
        "gateway": Verdict.OK,
    }
    assert "mode 0660" in checks["socket"].detail
    assert "the daemon answers" in checks["socket"].detail


async def test_problems_are_reported_with_fixes(settings: Settings, work_dir: Path) -> None:
    # The session's test Redis keeps no AOF; no daemon runs; a spool waits; the gateway is down.
    settings.resolved_spool_path.write_bytes(b'{"v":1}\n')
    config = settings.model_copy(
        update={"gateway_url": "ws://127.0.0.1:9", "gateway_token": SecretStr(TOKEN)}
    )
    checks = by_name(await run_checks(config))
    assert checks["Redis"].verdict is Verdict.OK
    assert checks["Redis appendonly"].verdict is Verdict.FAIL
    assert "CONFIG SET appendonly yes" in checks["Redis appendonly"].fix
    assert checks["socket"].verdict is Verdict.FAIL
    assert checks["socket"].fix == "orchestrator serve"
    assert checks["spool"].verdict is Verdict.WARN
    assert "8 bytes" in checks["spool"].detail
    assert checks["gateway"].verdict is Verdict.FAIL
    assert "ws://127.0.0.1:9" in checks["gateway"].detail


async def test_unreachable_redis_fails(work_dir: Path) -> None:
    config = Settings(redis_url=f"unix://{work_dir}/none.sock", state_dir=work_dir, http_port=0)
    checks = by_name(await run_checks(config))
    assert checks["Redis"].verdict is Verdict.FAIL
    assert "Redis unreachable at" in checks["Redis"].detail
    assert checks["gateway"].verdict is Verdict.WARN


def test_doctor_cli_exit_code_and_json(work_dir: Path) -> None:
    runner = CliRunner()
    args = ["doctor", "--state-dir", str(work_dir), "--redis-url", f"unix://{work_dir}/none.sock"]
    text = runner.invoke(app, args)
    assert text.exit_code == 1
    assert "fail Redis:" in text.stdout
    assert "fix: " in text.stdout
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 1
    results = orjson.loads(as_json.stdout)
    assert {"name", "verdict", "detail", "fix"} <= set(results[0])
