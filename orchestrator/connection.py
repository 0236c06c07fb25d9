"""Redis connections built from ``Settings``, with errors that name the address."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.errors import RedisUnavailable
from orchestrator.settings import Settings, redact_url

# Errors that mean "Redis did not answer", as opposed to a bug in a command.
REDIS_DOWN_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def describe_address(url: str) -> str:
    """Return ``host:port`` or the socket path of a Redis URL, for messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def create_client(settings: Settings) -> aioredis.Redis:
    """Create a client with string replies. It connects lazily, on the first command."""
    url = settings.effective_redis_url
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        password=settings.read_redis_password(),
        decode_responses=True,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_connect_timeout_s,
        health_check_interval=30,
    )
    return client


async def ping(client: aioredis.Redis, settings: Settings) -> None:
    """Check that Redis answers; raise ``RedisUnavailable`` that names the address if not."""
    url = settings.effective_redis_url
    try:
        await client.ping()
    except AuthenticationError as e:
        raise RedisUnavailable(
            f"Redis at {describe_address(url)} rejected the credentials: {e}; "
            "check ORCH_REDIS_PASSWORD or the user and password in ORCH_REDIS_URL"
        ) from e
    except ResponseError as e:
        raise RedisUnavailable(f"Redis at {describe_address(url)} refused PING: {e}") from e
    except REDIS_DOWN_ERRORS as e:
        raise RedisUnavailable(unreachable_message(settings, e)) from e


def unreachable_message(settings: Settings, error: BaseException) -> str:
    url = settings.effective_redis_url
    if settings.redis_url is None:
        hint = (
            "no ORCH_REDIS_URL is set, so this is the embedded Redis of `orchestrator serve`; "
            "start the daemon with the same ORCH_STATE_DIR, or set ORCH_REDIS_URL"
        )
    else:
        hint = "check that Redis is running there, or correct ORCH_REDIS_URL"
    where = describe_address(url)
    if not url.startswith("unix://"):
        where = f"{where} ({redact_url(url)})"
    detail = str(error).rstrip(". ")
    return f"Redis unreachable at {where}: {detail}; {hint}"
