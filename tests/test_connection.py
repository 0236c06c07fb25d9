"""Redis URLs, credentials and TLS options, and real connections: TCP with an ACL user, TLS, Sentinel.

Every server here is a redis-server child started by the test on a free loopback port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import create_pool
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

from orchestrator.connection import (
    RedisTarget,
    arq_redis_settings,
    create_client,
    describe_address,
    parse_redis_url,
    ping,
    redact_redis_url,
    unreachable_message,
)
from orchestrator.errors import ConfigError, RedisUnavailable
from orchestrator.settings import Settings, load_settings
from tests.redis_process import RedisProcess, free_port, short_temp_dir

ACL_USER = "orch"
ACL_PASSWORD = "acl-pass-7f3e"
MASTER_NAME = "orchmaster"
READY_TIMEOUT_S = 20.0


def make_settings(work_dir: Path, **overrides: Any) -> Settings:
    return load_settings(state_dir=work_dir, socket_path=work_dir / "o.sock", **overrides)


# --- URL parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", RedisTarget("redis", hosts=(("127.0.0.1", 6380),), db=2)),
        ("redis://redis", RedisTarget("redis", hosts=(("redis", 6379),))),
        ("redis://[::1]:6390", RedisTarget("redis", hosts=(("::1", 6390),))),
        ("redis://:only-pass@h/0", RedisTarget("redis", hosts=(("h", 6379),), password="only-pass")),
        (
            "rediss://orch:p%40ss%3Aword@cache.example:6390/1",
            RedisTarget(
                "rediss", hosts=(("cache.example", 6390),), db=1, username="orch", password="p@ss:word"
            ),
        ),
        ("redis://h:6379?db=5", RedisTarget("redis", hosts=(("h", 6379),), db=5)),
        ("unix:///run/redis/redis.sock?db=3", RedisTarget("unix", socket_path="/run/redis/redis.sock", db=3)),
        ("unix://:pw@/run/redis.sock", RedisTarget("unix", socket_path="/run/redis.sock", password="pw")),
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/mymaster?db=4",
            RedisTarget(
                "redis+sentinel",
                hosts=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
                db=4,
                master_name="mymaster",
            ),
        ),
        (
            "redis+sentinel://orch:secret@s1,s2/main",
            RedisTarget(
                "redis+sentinel",
                hosts=(("s1", 26379), ("s2", 26379)),
                username="orch",
                password="secret",
                master_name="main",
            ),
        ),
    ],
)
def test_parse_redis_url(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "scheme 'http' is not supported"),
        ("redis+sentinel:///mymaster", "names no Sentinel"),
        ("redis+sentinel://s1:26379", "needs the Sentinel master name"),
        ("redis+sentinel://s1:26379/a/b", "needs the Sentinel master name"),
        ("redis+sentinel://s1,,s2/m", "empty Sentinel address"),
        ("redis://h:99999", "invalid port '99999'"),
        ("redis://h:port", "invalid port 'port'"),
        ("redis://[::1/0", "Invalid IPv6 URL"),
        ("redis+sentinel://s1,[::1]x/m", "invalid address"),
        ("redis://h/abc", "database 'abc' is invalid"),
        ("redis://h?socket_timeout=1", "query parameters ['socket_timeout'] are not supported"),
        ("unix://", "has no socket path"),
    ],
)
def test_parse_redis_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url)
    assert message in str(caught.value)


def test_settings_accept_sentinel_url(work_dir: Path) -> None:
    url = "redis+sentinel://s1:26379,s2:26379/mymaster?db=1"
    settings = make_settings(work_dir, redis_url=url)
    assert settings.redis_url == url


def test_settings_reject_invalid_url_in_one_line(work_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(work_dir, redis_url="redis+sentinel://s1:26379")
    message = str(caught.value)
    assert "ORCH_REDIS_URL" in message
    assert "master name" in message
    assert "\n" not in message


# --- redaction and messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://u:secret@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:secret@h", "redis://:***@h"),
        (
            "redis+sentinel://u:secret@s1:26379,s2:26379/m?db=1",
            "redis+sentinel://u:***@s1:26379,s2:26379/m?db=1",
        ),
        ("unix://:secret@/run/r.sock", "unix://:***@/run/r.sock"),
        ("redis://u@h", "redis://u@h"),
        ("redis://h:6379", "redis://h:6379"),
    ],
)
def test_redact_redis_url(url: str, expected: str) -> None:
    assert redact_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6380/0", "h:6380"),
        ("rediss://[::1]", "[::1]:6379"),
        ("unix:///run/r.sock", "/run/r.sock"),
        ("redis+sentinel://u:pw@s1,s2:26380/main", "master main via Sentinel s1:26379,s2:26380"),
    ],
)
def test_describe_address(url: str, expected: str) -> None:
    assert describe_address(url) == expected


def test_unreachable_message_hides_sentinel_password(work_dir: Path) -> None:
    settings = make_settings(work_dir, redis_url="redis+sentinel://orch:hunter2@s1,s2/main")
    message = unreachable_message(settings, ConnectionError("No master found for 'main'"))
    assert "hunter2" not in message
    assert "master main via Sentinel s1:26379,s2:26379" in message
    assert "check that the Sentinels are running" in message


# --- client options --------------------------------------------------------------------------------


async def test_settings_credentials_replace_url_credentials(work_dir: Path) -> None:
    password_file = work_dir / "redis.pass"
    password_file.write_text("from-file\n")
    settings = make_settings(
        work_dir,
        redis_url="redis://url-user:url-pass@h:6390/3",
        redis_username="settings-user",
        redis_password_file=password_file,
    )
    client = create_client(settings)
    kwargs = client.connection_pool.connection_kwargs
    await client.aclose()
    assert kwargs["username"] == "settings-user"
    assert kwargs["password"] == "from-file"
    assert kwargs["db"] == 3
    assert (kwargs["host"], kwargs["port"]) == ("h", 6390)

    arq_settings = arq_redis_settings(settings)
    assert arq_settings.username == "settings-user"
    assert arq_settings.password == "from-file"
    assert arq_settings.database == 3
    assert (arq_settings.host, arq_settings.port) == ("h", 6390)
    assert arq_settings.conn_retries == 0


async def test_url_credentials_used_without_settings(work_dir: Path) -> None:
    settings = make_settings(work_dir, redis_url="redis://url-user:url-pass@h/0")
    client = create_client(settings)
    kwargs = client.connection_pool.connection_kwargs
    await client.aclose()
    assert kwargs["username"] == "url-user"
    assert kwargs["password"] == "url-pass"


async def test_unix_url_options(work_dir: Path) -> None:
    settings = make_settings(work_dir, redis_url="unix:///run/redis/redis.sock?db=2")
    client = create_client(settings)
    pool = client.connection_pool
    await client.aclose()
    assert pool.connection_class is UnixDomainSocketConnection
    assert pool.connection_kwargs["path"] == "/run/redis/redis.sock"
    assert pool.connection_kwargs["db"] == 2

    arq_settings = arq_redis_settings(settings)
    assert arq_settings.unix_socket_path == "/run/redis/redis.sock"
    assert arq_settings.database == 2


def write_placeholder_tls_files(work_dir: Path) -> dict[str, Path]:
    files = {name: work_dir / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("placeholder\n")
    return files


async def test_tls_options_for_rediss(work_dir: Path) -> None:
    files = write_placeholder_tls_files(work_dir)
    settings = make_settings(
        work_dir,
        redis_url="rediss://cache.example:6390/0",
        redis_tls_ca_file=files["ca"],
        redis_tls_cert_file=files["cert"],
        redis_tls_key_file=files["key"],
    )
    client = create_client(settings)
    pool = client.connection_pool
    await client.aclose()
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(files["ca"])
    assert kwargs["ssl_certfile"] == str(files["cert"])
    assert kwargs["ssl_keyfile"] == str(files["key"])
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True

    arq_settings = arq_redis_settings(settings)
    assert arq_settings.ssl is True
    assert arq_settings.ssl_ca_certs == str(files["ca"])
    assert arq_settings.ssl_certfile == str(files["cert"])
    assert arq_settings.ssl_keyfile == str(files["key"])
    assert arq_settings.ssl_check_hostname is True


@pytest.mark.parametrize(
    ("url", "setting", "message"),
    [
        ("redis://h:6379", "redis_tls_ca_file", "use a rediss:// URL or unset them"),
        ("unix:///run/r.sock", "redis_tls_cert_file", "use a rediss:// URL or unset them"),
        ("redis+sentinel://s1/m", "redis_tls_ca_file", "TLS through Sentinel is not supported"),
    ],
)
def test_tls_files_rejected_without_rediss(work_dir: Path, url: str, setting: str, message: str) -> None:
    files = write_placeholder_tls_files(work_dir)
    settings = make_settings(work_dir, redis_url=url, **{setting: files["ca"]})
    with pytest.raises(ConfigError) as caught:
        create_client(settings)
    assert setting in str(caught.value)
    assert message in str(caught.value)
    with pytest.raises(ConfigError):
        arq_redis_settings(settings)


def test_tls_missing_file_rejected(work_dir: Path) -> None:
    settings = make_settings(
        work_dir, redis_url="rediss://h:6379", redis_tls_ca_file=work_dir / "missing-ca.pem"
    )
    with pytest.raises(ConfigError) as caught:
        create_client(settings)
    assert "redis_tls_ca_file" in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_tls_key_without_certificate_rejected(work_dir: Path) -> None:
    files = write_placeholder_tls_files(work_dir)
    settings = make_settings(work_dir, redis_url="rediss://h:6379", redis_tls_key_file=files["key"])
    with pytest.raises(ConfigError) as caught:
        create_client(settings)
    assert "without redis_tls_cert_file" in str(caught.value)


def test_sentinel_arq_settings(work_dir: Path) -> None:
    settings = make_settings(
        work_dir, redis_url="redis+sentinel://orch:pw@s1:26380,s2/main?db=1", redis_connect_timeout_s=3
    )
    arq_settings = arq_redis_settings(settings)
    assert arq_settings.sentinel is True
    assert arq_settings.host == [("s1", 26380), ("s2", 26379)]
    assert arq_settings.sentinel_master == "main"
    assert arq_settings.database == 1
    assert arq_settings.username == "orch"
    assert arq_settings.password == "pw"
    assert arq_settings.conn_timeout == 3


# --- a real server over TCP with an ACL user -------------------------------------------------------


class AclRedisProcess(RedisProcess):
    """A TCP redis-server with the ACL user ``orch``; the default user stays open for Sentinel."""

    def __init__(self) -> None:
        super().__init__(tcp=True)

    def command(self) -> list[str]:
        return [*super().command(), "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"]


@pytest.fixture(scope="module")
def acl_server() -> Iterator[AclRedisProcess]:
    server = AclRedisProcess()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def acl_client(acl_server: AclRedisProcess, work_dir: Path) -> AsyncIterator[aioredis.Redis]:
    settings = make_settings(
        work_dir, redis_url=f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{acl_server.port}/0"
    )
    client = create_client(settings)
    yield client
    await client.aclose()


async def test_acl_user_from_url(acl_client: aioredis.Redis) -> None:
    assert await acl_client.acl_whoami() == ACL_USER


async def test_acl_user_from_settings(acl_server: AclRedisProcess, work_dir: Path) -> None:
    password_file = work_dir / "redis.pass"
    password_file.write_text(f"{ACL_PASSWORD}\n")
    settings = make_settings(
        work_dir,
        redis_url=f"redis://127.0.0.1:{acl_server.port}/0",
        redis_username=ACL_USER,
        redis_password_file=password_file,
    )
    client = create_client(settings)
    try:
        await ping(client, settings)
        assert await client.acl_whoami() == ACL_USER
    finally:
        await client.aclose()


async def test_acl_wrong_password_rejected(acl_server: AclRedisProcess, work_dir: Path) -> None:
    wrong = "not-the-password"
    settings = make_settings(work_dir, redis_url=f"redis://{ACL_USER}:{wrong}@127.0.0.1:{acl_server.port}/0")
    client = create_client(settings)
    try:
        with pytest.raises(RedisUnavailable) as caught:
            await ping(client, settings)
    finally:
        await client.aclose()
    message = str(caught.value)
    assert f"Redis at 127.0.0.1:{acl_server.port} rejected the credentials" in message
    assert wrong not in message


async def test_arq_pool_uses_acl_user(acl_server: AclRedisProcess, work_dir: Path) -> None:
    settings = make_settings(
        work_dir,
        redis_url=f"redis://127.0.0.1:{acl_server.port}/0",
        redis_username=ACL_USER,
        redis_password=ACL_PASSWORD,
    )
    pool = await create_pool(arq_redis_settings(settings))
    try:
        assert await pool.acl_whoami() == ACL_USER
    finally:
        await pool.aclose()


async def test_unreachable_port_message(work_dir: Path) -> None:
    port = free_port()
    settings = make_settings(work_dir, redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    client = create_client(settings)
    try:
        with pytest.raises(RedisUnavailable) as caught:
            await ping(client, settings)
    finally:
        await client.aclose()
    message = str(caught.value)
    assert message.startswith(f"Redis unreachable at 127.0.0.1:{port} (redis://:***@127.0.0.1:{port}/0)")
    assert "hunter2" not in message


# --- a real server over TLS --------------------------------------------------------------------------


def run_openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> None:
    """Write a test CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run_openssl(
        "req", "-x509", *ec_key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=orchestrator test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    (directory / "client.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    for name in ("server", "client"):
        run_openssl(
            "req",
            *ec_key,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=directory,
        )
        run_openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip


class TlsRedisProcess(RedisProcess):
    """A redis-server with TLS on a loopback port that requires client certificates.

    The plain Unix socket of ``RedisProcess`` stays on, for its readiness check.
    """

    def __init__(self, certificates: Path) -> None:
        super().__init__()
        self.certificates = certificates
        self.tls_port = free_port()

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", str(self.certificates / "server.crt"),
            "--tls-key-file", str(self.certificates / "server.key"),
            "--tls-ca-cert-file", str(self.certificates / "ca.crt"),
            "--tls-auth-clients", "yes",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsRedisProcess]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certificates = short_temp_dir("orch-tls-")
    make_certificates(certificates)
    server = TlsRedisProcess(certificates)
    server.start()
    yield server
    server.cleanup()
    shutil.rmtree(certificates, ignore_errors=True)


def tls_settings(server: TlsRedisProcess, work_dir: Path, *, client_certificate: bool) -> Settings:
    certificates = server.certificates
    client_files: dict[str, Path] = {}
    if client_certificate:
        client_files = {
            "redis_tls_cert_file": certificates / "client.crt",
            "redis_tls_key_file": certificates / "client.key",
        }
    return make_settings(
        work_dir,
        redis_url=f"rediss://127.0.0.1:{server.tls_port}/0",
        redis_tls_ca_file=certificates / "ca.crt",
        **client_files,
    )


async def test_tls_connection_with_client_certificate(tls_server: TlsRedisProcess, work_dir: Path) -> None:
    settings = tls_settings(tls_server, work_dir, client_certificate=True)
    client = create_client(settings)
    try:
        await ping(client, settings)
        assert await client.set("tls-check", "1") is True
        await client.delete("tls-check")
    finally:
        await client.aclose()

    pool = await create_pool(arq_redis_settings(settings))
    try:
        assert await pool.ping() is True
    finally:
        await pool.aclose()


async def test_tls_without_client_certificate_fails(tls_server: TlsRedisProcess, work_dir: Path) -> None:
    settings = tls_settings(tls_server, work_dir, client_certificate=False)
    client = create_client(settings)
    try:
        with pytest.raises(RedisUnavailable) as caught:
            await ping(client, settings)
    finally:
        await client.aclose()
    assert f"127.0.0.1:{tls_server.tls_port}" in str(caught.value)


# --- a real Sentinel -------------------------------------------------------------------------------


class SentinelProcess:
    """``redis-server --sentinel`` on a loopback port, monitoring one primary."""

    def __init__(self, master_port: int) -> None:
        self.dir = short_temp_dir("orch-sentinel-")
        self.port = free_port()
        self.master_port = master_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        config = self.dir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 1\n"
        )
        self.process = subprocess.Popen(
            [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis sentinel exited with {self.process.returncode}; see {self.dir}")
            if self._knows_master():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis sentinel did not report {MASTER_NAME} within {READY_TIMEOUT_S}s")

    def _knows_master(self) -> bool:
        request = f"SENTINEL get-master-addr-by-name {MASTER_NAME}\r\n".encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as client:
                client.sendall(request)
                return str(self.master_port).encode() in client.recv(256)
        except OSError:
            return False

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sentinel(acl_server: AclRedisProcess) -> Iterator[SentinelProcess]:
    process = SentinelProcess(acl_server.port)
    process.start()
    yield process
    process.cleanup()


def sentinel_url(sentinel: SentinelProcess, master: str = MASTER_NAME) -> str:
    # The first Sentinel address has nothing listening, so the client must go on to the next.
    return (
        f"redis+sentinel://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{free_port()},"
        f"127.0.0.1:{sentinel.port}/{master}"
    )


async def test_sentinel_client_reaches_master(sentinel: SentinelProcess, work_dir: Path) -> None:
    settings = make_settings(work_dir, redis_url=sentinel_url(sentinel))
    client = create_client(settings)
    try:
        await ping(client, settings)
        assert await client.acl_whoami() == ACL_USER
    finally:
        await client.aclose()


async def test_sentinel_arq_pool_reaches_master(sentinel: SentinelProcess, work_dir: Path) -> None:
    settings = make_settings(work_dir, redis_url=sentinel_url(sentinel))
    pool = await create_pool(arq_redis_settings(settings))
    try:
        assert await pool.acl_whoami() == ACL_USER
    finally:
        await pool.aclose()
        # arq 0.28 leaves the connections to the Sentinels open when its pool closes.
        for sentinel_client in pool.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel_client.aclose()


async def test_sentinel_unknown_master(sentinel: SentinelProcess, work_dir: Path) -> None:
    settings = make_settings(work_dir, redis_url=sentinel_url(sentinel, master="nosuchmaster"))
    client = create_client(settings)
    try:
        with pytest.raises(RedisUnavailable) as caught:
            await ping(client, settings)
    finally:
        await client.aclose()
    message = str(caught.value)
    assert "master nosuchmaster via Sentinel" in message
    assert ACL_PASSWORD not in message
    assert "check that the Sentinels are running" in message
