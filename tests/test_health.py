"""The /healthz, /readyz and /metrics listener, over real loopback TCP connections."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from orchestrator import health
from orchestrator.health import HealthServer
from orchestrator.metrics import CONTENT_TYPE, Metrics

DEADLINE_S = 10.0


@dataclass
class Probe:
    """Readiness and refresh callbacks whose behaviour a test can switch."""

    ready: bool = True
    details: dict[str, object] = field(default_factory=lambda: {"ready": True, "redis": "ok"})
    readiness_error: Exception | None = None
    refresh_error: Exception | None = None
    hang: asyncio.Event | None = None  # set: the callbacks wait on it
    refreshes: int = 0
    checking: asyncio.Event = field(default_factory=asyncio.Event)  # a readiness check began

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        self.checking.set()
        if self.hang is not None:
            await self.hang.wait()
        if self.readiness_error is not None:
            raise self.readiness_error
        return self.ready, self.details

    async def refresh(self) -> None:
        self.refreshes += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.refresh_error is not None:
            raise self.refresh_error


ServerFactory = Callable[..., Awaitable[HealthServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[HealthServer] = []

    async def make(probe: Probe, metrics: Metrics | None = None, **options: Any) -> HealthServer:
        server = HealthServer(
            "127.0.0.1", 0, probe.readiness, metrics or Metrics(process=False), probe.refresh, **options
        )
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(make_server: ServerFactory, probe: Probe) -> HealthServer:
    return await make_server(probe, check_timeout_s=0.2)


@pytest.fixture
async def http(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=DEADLINE_S) as client:
        yield client


async def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            return await reader.read()
    finally:
        writer.close()


def status_lines(response: bytes) -> list[str]:
    return re.findall(r"HTTP/1\.1 \d{3} [^\r]*", response.decode("latin-1"))


async def test_healthz_ok(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"


async def test_readyz_ready(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "redis": "ok"}


async def test_readyz_not_ready(http: httpx.AsyncClient, probe: Probe) -> None:
    probe.ready = False
    probe.details = {"ready": False, "redis": "unreachable", "breaker": "open"}
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == probe.details


async def test_readyz_check_error_is_503(http: httpx.AsyncClient, probe: Probe) -> None:
    probe.readiness_error = RuntimeError("boom")
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "RuntimeError('boom')" in response.json()["error"]


async def test_readyz_check_timeout_is_503(http: httpx.AsyncClient, probe: Probe) -> None:
    probe.hang = asyncio.Event()
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert "timed out after 0.2s" in response.json()["error"]


async def test_metrics_refreshes_then_renders(make_server: ServerFactory, probe: Probe) -> None:
    metrics = Metrics(process=False)
    metrics.event_received("spawn", "created")
    server = await make_server(probe, metrics)
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    assert 'orchestrator_events_received_total{outcome="created",type="spawn"} 1.0' in response.text
    assert probe.refreshes == 1


async def test_metrics_served_when_refresh_fails(http: httpx.AsyncClient, probe: Probe) -> None:
    probe.refresh_error = ConnectionError("Redis is down")
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert "orchestrator_spool_events" in response.text


async def test_metrics_served_when_refresh_hangs(http: httpx.AsyncClient, probe: Probe) -> None:
    probe.hang = asyncio.Event()
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert probe.refreshes == 1


async def test_unknown_path_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope")
    assert response.status_code == 404


async def test_query_string_ignored(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz?verbose=1")
    assert response.status_code == 200


async def test_other_method_405(http: httpx.AsyncClient) -> None:
    response = await http.delete("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_post_with_body_405_and_closed(server: HealthServer) -> None:
    response = await raw_exchange(
        server.port, b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert status_lines(response) == ["HTTP/1.1 405 Method Not Allowed"]
    assert b"Connection: close\r\n" in response


async def test_head_has_length_and_no_body(server: HealthServer) -> None:
    response = await raw_exchange(server.port, b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 15\r\n" in head + b"\r\n"
    assert body == b""


async def test_oversized_head_431(server: HealthServer) -> None:
    filler = b"X-Filler: " + b"a" * health.MAX_HEAD_BYTES + b"\r\n"
    response = await raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\n" + filler + b"\r\n")
    assert status_lines(response) == ["HTTP/1.1 431 Request Header Fields Too Large"]


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x",
    ],
)
async def test_malformed_request_400(server: HealthServer, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(payload)
        writer.write_eof()
        async with asyncio.timeout(DEADLINE_S):
            response = await reader.read()
    finally:
        writer.close()
    assert status_lines(response) == ["HTTP/1.1 400 Bad Request"]


async def test_keep_alive_serves_pipelined_requests(server: HealthServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    close = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(server.port, request * 2 + close)
    assert status_lines(response) == ["HTTP/1.1 200 OK"] * 3
    assert response.count(b"Connection: keep-alive\r\n") == 2


async def test_requests_per_connection_bounded(server: HealthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "MAX_REQUESTS_PER_CONNECTION", 3)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    response = await raw_exchange(server.port, request * 5)
    assert status_lines(response) == ["HTTP/1.1 200 OK"] * 3
    assert response.count(b"Connection: close\r\n") == 1


async def test_http_1_0_closes_by_default(server: HealthServer) -> None:
    response = await raw_exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_lines(response) == ["HTTP/1.1 200 OK"]
    assert b"Connection: close\r\n" in response


async def test_connections_bounded(make_server: ServerFactory, probe: Probe) -> None:
    server = await make_server(probe, max_connections=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(DEADLINE_S):
            first = await reader.readuntil(b'{"status":"ok"}')
        assert first.startswith(b"HTTP/1.1 200 OK")

        # The second connection sends nothing, so the server's close arrives as EOF, not a reset.
        rejected = await raw_exchange(server.port, b"")
        assert rejected == b""

        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(DEADLINE_S):
            second = await reader.readuntil(b'{"status":"ok"}')
        assert second.startswith(b"HTTP/1.1 200 OK")
    finally:
        writer.close()


async def test_idle_connection_closed(make_server: ServerFactory, probe: Probe) -> None:
    server = await make_server(probe, idle_timeout_s=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_stop_closes_idle_connections(make_server: ServerFactory, probe: Probe) -> None:
    server = await make_server(probe)
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(DEADLINE_S):
            await reader.readuntil(b'{"status":"ok"}')
            await server.stop()
            assert await reader.read() == b""
    finally:
        writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_stop_lets_running_request_finish(make_server: ServerFactory, probe: Probe) -> None:
    probe.hang = asyncio.Event()
    server = await make_server(probe, check_timeout_s=DEADLINE_S)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(DEADLINE_S):
            await probe.checking.wait()
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0)  # let stop() begin while the check is still waiting
            probe.hang.set()
            response = await reader.read()
            await stopping
    finally:
        writer.close()
    assert status_lines(response) == ["HTTP/1.1 200 OK"]
    assert b"Connection: close\r\n" in response


async def test_port_in_use_names_setting(make_server: ServerFactory, probe: Probe) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer("127.0.0.1", port, probe.readiness, Metrics(process=False))
        with pytest.raises(OSError, match="cannot listen for HTTP") as caught:
            await server.start()
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in str(caught.value)
    assert "ORCH_HTTP_PORT" in str(caught.value)


async def test_port_before_start_raises(probe: Probe) -> None:
    server = HealthServer("127.0.0.1", 0, probe.readiness, Metrics(process=False))
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


async def test_readyz_body_is_json_for_any_values(http: httpx.AsyncClient, probe: Probe) -> None:
    probe.details = {
        "ready": True,
        "since": 12.5,
        "agents": ["main"],
        "spool": "/var/lib/openclaw-orchestrator/spool.ndjson",
    }
    response = await http.get("/readyz")
    assert orjson.loads(response.content) == probe.details
