"""Redis connections built from ``Settings``, with errors that name the address.

Supported URLs:

- ``redis://[user:password@]host[:port][/db]``, port 6379 by default
- ``rediss://...`` the same over TLS, verified against ``redis_tls_ca_file`` (or the system CA
  store), with an optional client certificate (``redis_tls_cert_file``, ``redis_tls_key_file``)
- ``unix://[user:password@]/path/to/redis.sock[?db=N]``
- ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/master_name[?db=N]``: the
  Sentinels to ask for the current primary of ``master_name``, port 26379 by default

``redis_username`` replaces the URL's user name, and ``redis_password`` (or
``redis_password_file``) replaces the URL's password. With Sentinel, that user and password are
for the primary. The Sentinels themselves are asked without credentials and without TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from arq.connections import RedisSettings
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.errors import ConfigError, RedisUnavailable
from orchestrator.settings import Settings

# Errors that mean "Redis did not answer", as opposed to a bug in a command. redis-py's
# MasterNotFoundError (no Sentinel reports a healthy primary) is a ConnectionError.
REDIS_DOWN_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
HEALTH_CHECK_INTERVAL_S = 30


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Address, database and credentials parsed from a Redis URL."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()  # one server, or the Sentinels; empty for unix://
    socket_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    master_name: str | None = None  # the Sentinel service name

    @property
    def sentinel(self) -> bool:
        return self.scheme == "redis+sentinel"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis URL of a supported scheme; raise ``ConfigError`` naming what is wrong."""
    try:
        parts = urlsplit(url)
    except ValueError as e:  # unbalanced brackets around an IPv6 address
        raise ConfigError(f"redis_url {redact_redis_url(url)} is invalid: {e}") from e
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"redis_url scheme {parts.scheme!r} is not supported; "
            "use redis://, rediss://, unix:// or redis+sentinel://"
        )
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    username, password = _parse_userinfo(userinfo)
    db = _parse_db(parts.query, parts.path if scheme in {"redis", "rediss"} else "")
    if scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise ConfigError(
                f"redis_url {redact_redis_url(url)} has no socket path, as in unix:///run/redis.sock"
            )
        return RedisTarget(scheme, socket_path=path, db=db, username=username, password=password)
    if scheme == "redis+sentinel":
        return RedisTarget(
            scheme,
            hosts=_parse_sentinel_hosts(hostinfo, url),
            db=db,
            username=username,
            password=password,
            master_name=_parse_master_name(parts.path, url),
        )
    host, port = _parse_host(hostinfo or "localhost", DEFAULT_PORT, url)
    return RedisTarget(scheme, hosts=((host, port),), db=db, username=username, password=password)


def _parse_userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _parse_db(query: str, path: str) -> int:
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - {"db"})
    if unknown:
        raise ConfigError(f"redis_url query parameters {unknown} are not supported; only db is")
    text = params["db"][-1] if "db" in params else path.strip("/") or "0"
    if not text.isdigit():
        raise ConfigError(f"redis_url database {text!r} is invalid; expected a number such as 0")
    return int(text)


def _parse_sentinel_hosts(hostinfo: str, url: str) -> tuple[tuple[str, int], ...]:
    items = [item.strip() for item in hostinfo.split(",")]
    if not any(items):
        raise ConfigError(
            f"redis_url {redact_redis_url(url)} names no Sentinel; "
            "write redis+sentinel://host:26379,host:26379/master_name"
        )
    if not all(items):
        raise ConfigError(f"redis_url {redact_redis_url(url)} has an empty Sentinel address")
    return tuple(_parse_host(item, DEFAULT_SENTINEL_PORT, url) for item in items)


def _parse_master_name(path: str, url: str) -> str:
    name = unquote(path.strip("/"))
    if not name or "/" in name:
        raise ConfigError(
            f"redis_url {redact_redis_url(url)} needs the Sentinel master name as its path, "
            "as in redis+sentinel://host:26379/mymaster"
        )
    return name


def _parse_host(text: str, default_port: int, url: str) -> tuple[str, int]:
    """Split ``host``, ``host:port`` or ``[ipv6]:port``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"redis_url {redact_redis_url(url)} has an invalid address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"redis_url {redact_redis_url(url)} has an address without a host: {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65_536:
        raise ConfigError(f"redis_url {redact_redis_url(url)} has an invalid port {port_text!r}")
    return host, int(port_text)


def redact_redis_url(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``; works for every scheme."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostinfo = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostinfo}{slash}{tail}"


def describe_address(url: str) -> str:
    """Return ``host:port``, the socket path, or the Sentinel master and its Sentinels, for messages."""
    try:
        target = parse_redis_url(url)
    except ConfigError:
        return redact_redis_url(url)
    if target.socket_path is not None:
        return target.socket_path
    addresses = ",".join(_format_address(host, port) for host, port in target.hosts)
    if target.sentinel:
        return f"master {target.master_name} via Sentinel {addresses}"
    return addresses


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_client(settings: Settings) -> aioredis.Redis:
    """Create a client with string replies. It connects lazily, on the first command.

    With Sentinel, the client asks the Sentinels for the primary on each new connection, and
    drops its connections to a primary that Sentinel replaced. Raises ``ConfigError`` for
    TLS settings that do not fit the URL.
    """
    target = parse_redis_url(settings.effective_redis_url)
    timeout_s = settings.redis_connect_timeout_s
    options: dict[str, Any] = {
        "db": target.db,
        "username": settings.redis_username or target.username,
        "password": _password(settings, target),
        "decode_responses": True,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    tls = _tls_options(settings, target)
    if target.sentinel:
        assert target.master_name is not None
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs={"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s},
            **options,
        )
        master: aioredis.Redis = sentinel.master_for(target.master_name, redis_class=_SentinelMasterRedis)
        return master
    if target.socket_path is not None:
        return aioredis.Redis(unix_socket_path=target.socket_path, **options)
    host, port = target.hosts[0]
    if tls is not None:
        return aioredis.Redis(
            host=host,
            port=port,
            ssl=True,
            ssl_ca_certs=tls.ca_file,
            ssl_certfile=tls.cert_file,
            ssl_keyfile=tls.key_file,
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            **options,
        )
    return aioredis.Redis(host=host, port=port, **options)


class _SentinelMasterRedis(aioredis.Redis):
    """A client of the Sentinel-managed primary that also closes its Sentinel connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager: Any = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


@dataclass(frozen=True, slots=True)
class _TlsFiles:
    ca_file: str | None
    cert_file: str | None
    key_file: str | None


def _tls_options(settings: Settings, target: RedisTarget) -> _TlsFiles | None:
    """Return the TLS files for a rediss:// URL, checking that they exist and fit the URL."""
    files = {
        "redis_tls_ca_file": settings.redis_tls_ca_file,
        "redis_tls_cert_file": settings.redis_tls_cert_file,
        "redis_tls_key_file": settings.redis_tls_key_file,
    }
    configured = [name for name, path in files.items() if path is not None]
    if not target.tls:
        if configured:
            raise ConfigError(
                f"{', '.join(configured)} set, but redis_url is {target.scheme}://, which does not use TLS; "
                + (
                    "TLS through Sentinel is not supported"
                    if target.sentinel
                    else "use a rediss:// URL or unset them"
                )
            )
        return None
    for name in configured:
        path = files[name]
        assert path is not None
        if not path.is_file():
            raise ConfigError(f"{name} {path} does not exist or is not a file")
    if settings.redis_tls_key_file is not None and settings.redis_tls_cert_file is None:
        raise ConfigError("redis_tls_key_file is set without redis_tls_cert_file; set both or neither")
    return _TlsFiles(
        ca_file=_path_text(settings.redis_tls_ca_file),
        cert_file=_path_text(settings.redis_tls_cert_file),
        key_file=_path_text(settings.redis_tls_key_file),
    )


def _path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _password(settings: Settings, target: RedisTarget) -> str | None:
    password = settings.read_redis_password()
    return target.password if password is None else password


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """Build arq's connection settings from the same URL, credentials and TLS files as ``create_client``.

    The worker connects once per start and ``WorkerSupervisor`` restarts it, so arq's own
    connection retries are off.
    """
    # NOTE: arq 0.28 passes no timeouts to its Sentinel connections, so a Sentinel that accepts a
    # connection and never replies stalls the worker's start. arq also leaves those connections
    # open when its pool closes, one per Sentinel and worker start, until garbage collection.
    target = parse_redis_url(settings.effective_redis_url)
    tls = _tls_options(settings, target)
    redis_settings = RedisSettings(
        database=target.db,
        username=settings.redis_username or target.username,
        password=_password(settings, target),
        conn_timeout=int(max(1, settings.redis_connect_timeout_s)),
        conn_retries=0,
    )
    if target.sentinel:
        assert target.master_name is not None
        redis_settings.host = list(target.hosts)
        redis_settings.sentinel = True
        redis_settings.sentinel_master = target.master_name
    elif target.socket_path is not None:
        redis_settings.unix_socket_path = target.socket_path
    else:
        redis_settings.host, redis_settings.port = target.hosts[0]
    if tls is not None:
        redis_settings.ssl = True
        redis_settings.ssl_ca_certs = tls.ca_file
        redis_settings.ssl_certfile = tls.cert_file
        redis_settings.ssl_keyfile = tls.key_file
        redis_settings.ssl_cert_reqs = "required"
        redis_settings.ssl_check_hostname = True
    return redis_settings


async def ping(client: aioredis.Redis, settings: Settings) -> None:
    """Check that Redis responds; raise ``RedisUnavailable`` that names the address if not."""
    url = settings.effective_redis_url
    try:
        await client.ping()
    except AuthenticationError as e:
        raise RedisUnavailable(
            f"Redis at {describe_address(url)} rejected the credentials: {e}; check ORCH_REDIS_USERNAME, "
            "ORCH_REDIS_PASSWORD (or ORCH_REDIS_PASSWORD_FILE), or the user and password in ORCH_REDIS_URL"
        ) from e
    except ResponseError as e:
        raise RedisUnavailable(f"Redis at {describe_address(url)} rejected PING: {e}") from e
    except REDIS_DOWN_ERRORS as e:
        raise RedisUnavailable(unreachable_message(settings, e)) from e


def unreachable_message(settings: Settings, error: BaseException) -> str:
    """Describe a failed connection: the address, the error, and what to check."""
    url = settings.effective_redis_url
    if settings.redis_url is None:
        hint = (
            "no ORCH_REDIS_URL is set, so this is the embedded Redis of `orchestrator serve`; "
            "start the daemon with the same ORCH_STATE_DIR, or set ORCH_REDIS_URL"
        )
    elif url.startswith("redis+sentinel://"):
        hint = "check that the Sentinels are running and monitor that master, or correct ORCH_REDIS_URL"
    else:
        hint = "check that Redis is running there, or correct ORCH_REDIS_URL"
    where = describe_address(url)
    if not url.startswith("unix://"):
        where = f"{where} ({redact_redis_url(url)})"
    detail = str(error).rstrip(". ")
    return f"Redis unreachable at {where}: {detail}; {hint}"
