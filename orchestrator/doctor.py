"""Checks of a deployment, each with the command or setting that fixes a failure."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from orchestrator.connection import REDIS_DOWN_ERRORS, create_client, describe_address, unreachable_message
from orchestrator.embedded import find_redis_server
from orchestrator.errors import EmbeddedRedisError
from orchestrator.gateway import GatewayClient, GatewayError
from orchestrator.settings import Settings
from orchestrator.spool import Spool

MIN_REDIS_VERSION = (6, 2)
SOCKET_PROBE_TIMEOUT_S = 3.0
GATEWAY_PROBE_TIMEOUT_S = 10.0


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}


async def run_checks(settings: Settings) -> list[Check]:
    checks = [_check_redis_binary(settings)] if settings.redis_url is None else []
    checks += await _check_redis(settings)
    checks.append(await asyncio.to_thread(_check_socket, settings))
    checks.append(_check_spool(settings))
    checks.append(await _check_gateway(settings))
    return checks


def _check_redis_binary(settings: Settings) -> Check:
    try:
        binary = find_redis_server(settings.redis_server_path)
    except EmbeddedRedisError as e:
        return Check("embedded redis-server", Verdict.FAIL, str(e), "sudo apt-get install redis-server")
    return Check("embedded redis-server", Verdict.OK, f"{binary}")


async def _check_redis(settings: Settings) -> list[Check]:
    client = create_client(settings)
    where = describe_address(settings.effective_redis_url)
    try:
        info = await client.info("server")
    except REDIS_DOWN_ERRORS as e:
        fix = (
            "orchestrator serve"
            if settings.redis_url is None
            else f"start Redis at {where} or correct ORCH_REDIS_URL"
        )
        return [Check("Redis", Verdict.FAIL, unreachable_message(settings, e), fix)]
    except RedisError as e:
        return [
            Check(
                "Redis",
                Verdict.FAIL,
                f"Redis at {where} rejected INFO: {e}",
                "check ORCH_REDIS_PASSWORD and the ACL user",
            )
        ]
    try:
        return [_version_check(where, str(info.get("redis_version", "0"))), *await _config_checks(client)]
    finally:
        await client.aclose()


def _version_check(where: str, version: str) -> Check:
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if parts < MIN_REDIS_VERSION:
        return Check(
            "Redis",
            Verdict.FAIL,
            f"Redis {version} at {where} is older than 6.2",
            "upgrade Redis to 6.2 or newer (7 recommended)",
        )
    return Check("Redis", Verdict.OK, f"Redis {version} at {where}")


async def _config_checks(client: aioredis.Redis) -> list[Check]:
    wanted = {
        "appendonly": ("yes", "redis-cli CONFIG SET appendonly yes && redis-cli CONFIG REWRITE"),
        "maxmemory-policy": (
            "noeviction",
            "redis-cli CONFIG SET maxmemory-policy noeviction && redis-cli CONFIG REWRITE",
        ),
    }
    checks = []
    for name, (expected, fix) in wanted.items():
        try:
            value = (await client.config_get(name)).get(name)
        except ResponseError as e:
            checks.append(
                Check(
                    f"Redis {name}", Verdict.WARN, f"cannot read it ({e})", f"make sure {name} is {expected}"
                )
            )
            continue
        if value == expected:
            checks.append(Check(f"Redis {name}", Verdict.OK, value))
        else:
            checks.append(Check(f"Redis {name}", Verdict.FAIL, f"is {value}, must be {expected}", fix))
    return checks


def _check_socket(settings: Settings) -> Check:
    path = settings.resolved_socket_path
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return Check(
            "socket", Verdict.FAIL, f"{path} does not exist: the daemon is not running", "orchestrator serve"
        )
    if not stat.S_ISSOCK(mode):
        return Check(
            "socket", Verdict.FAIL, f"{path} is not a socket", f"remove {path}, then run orchestrator serve"
        )
    detail = (
        f"{path} mode {stat.S_IMODE(mode):04o}, directory mode {stat.S_IMODE(path.parent.stat().st_mode):04o}"
    )
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(
            "socket",
            Verdict.FAIL,
            f"{detail}: this user cannot open it",
            f"add this user to the group of {path}",
        )
    if not _socket_answers(path):
        return Check(
            "socket",
            Verdict.FAIL,
            f"{detail}: nothing answers a ping",
            "restart the daemon: orchestrator serve",
        )
    return Check("socket", Verdict.OK, f"{detail}; the daemon answers")


def _socket_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(SOCKET_PROBE_TIMEOUT_S)
            client.connect(str(path))
            client.sendall(b'{"v":1,"id":"doctor-ping","type":"ping","ts":0}\n')
            reply = client.makefile("rb").readline()
    except OSError:
        return False
    return bool(reply) and orjson.loads(reply).get("ok") is True


def _check_spool(settings: Settings) -> Check:
    path = settings.resolved_spool_path
    if not path.exists():
        return Check("spool", Verdict.OK, f"{path} is empty")
    pending = Spool(path, max_bytes=settings.spool_max_bytes, fsync="never").pending_bytes()
    if pending == 0:
        return Check("spool", Verdict.OK, f"{path} holds nothing to replay")
    share = pending / settings.spool_max_bytes
    return Check(
        "spool",
        Verdict.WARN,
        f"{pending} bytes of events wait for replay ({share:.0%} of ORCH_SPOOL_MAX_BYTES)",
        "restore Redis; the daemon replays the spool as soon as a write to Redis succeeds",
    )


async def _check_gateway(settings: Settings) -> Check:
    try:
        token = settings.read_gateway_token()
    except Exception as e:
        return Check("gateway", Verdict.FAIL, str(e), "fix ORCH_GATEWAY_TOKEN_FILE")
    if token is None:
        return Check(
            "gateway",
            Verdict.WARN,
            "no token configured: failed work is dead-lettered instead of re-run",
            "set ORCH_GATEWAY_TOKEN or ORCH_GATEWAY_TOKEN_FILE",
        )
    try:
        async with GatewayClient(
            settings.gateway_url, token, call_timeout_s=GATEWAY_PROBE_TIMEOUT_S
        ) as client:
            await client.sessions_list(limit=1)
    except GatewayError as e:
        return Check(
            "gateway", Verdict.FAIL, str(e), "start the gateway, or correct ORCH_GATEWAY_URL and the token"
        )
    return Check("gateway", Verdict.OK, f"{settings.gateway_url} answers sessions.list")
