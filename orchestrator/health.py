"""A small HTTP/1.1 listener for liveness, readiness and Prometheus metrics.

``GET /healthz`` returns 200 while the process runs, ``GET /readyz`` returns 200 or 503 with the
readiness details as JSON, and ``GET /metrics`` returns the Prometheus text exposition. ``HEAD``
works on the same paths. The listener serves only these three fixed paths, so it is built on
asyncio streams instead of a web framework. It reads no request bodies, and it limits the
request head size, the connections open at once, the requests per connection and the time a
connection may stay idle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import orjson
from loguru import logger

from orchestrator.logs import Throttle
from orchestrator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from orchestrator.metrics import Metrics

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]
Refresh = Callable[[], Awaitable[None]]

MAX_HEAD_BYTES = 8192  # request line and headers together
MAX_REQUESTS_PER_CONNECTION = 100
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 10.0
DEFAULT_CHECK_TIMEOUT_S = 2.0
STOP_GRACE_S = 2.0
ERROR_LOG_INTERVAL_S = 60.0

PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    keep_alive: bool


@dataclass(slots=True)
class Response:
    status: HTTPStatus
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class BadRequest(Exception):
    """A request head that is malformed or too large; the connection closes after the response."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HealthServer:
    """The /healthz, /readyz and /metrics listener on one TCP address.

    ``readiness`` returns whether the daemon is ready and details for the response body.
    ``refresh`` runs before each /metrics response to update gauges read from Redis. Both are
    bounded by ``check_timeout_s``. A readiness check that fails or times out makes /readyz
    return 503, and a refresh that fails or times out is logged and the last values are served.
    """

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        metrics: Metrics,
        refresh: Refresh | None = None,
        *,
        check_timeout_s: float = DEFAULT_CHECK_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._metrics = metrics
        self._refresh = refresh
        self._check_timeout_s = check_timeout_s
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._busy: set[asyncio.Task[None]] = set()  # connections between a request and its response
        self._refresh_errors = Throttle(ERROR_LOG_INTERVAL_S)
        self._readiness_errors = Throttle(ERROR_LOG_INTERVAL_S)
        self._rejected_connections = Throttle(ERROR_LOG_INTERVAL_S)

    @property
    def port(self) -> int:
        """The bound port, which differs from the requested one when that was 0."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the health listener is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen on the address; raise ``OSError`` naming it and ORCH_HTTP_PORT when that fails."""
        try:
            self._server = await asyncio.start_server(
                self._on_connection, self._host, self._port, limit=MAX_HEAD_BYTES
            )
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot listen for HTTP on {_format_host(self._host)}:{self._port}: {e.strerror}; "
                "set ORCH_HTTP_PORT to a free port, or to 0 to turn the listener off",
            ) from e
        logger.info("health and metrics listener on http://{}:{}", _format_host(self._host), self.port)

    async def stop(self) -> None:
        """Stop accepting, close idle connections, and give requests in progress ``STOP_GRACE_S``.

        Connections are closed rather than their tasks cancelled: asyncio 3.11 logs a cancelled
        connection handler as an error. A request still running after the grace period has its
        connection aborted and ends when its check times out (``check_timeout_s``).
        """
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for task, writer in list(self._connections.items()):
            if task not in self._busy:
                writer.close()
        late: set[asyncio.Task[None]] = set()
        if self._connections:
            _, late = await asyncio.wait(list(self._connections), timeout=STOP_GRACE_S)
        for task in late:
            late_writer = self._connections.get(task)
            if late_writer is not None:
                late_writer.transport.abort()
        if late:
            await asyncio.wait(late, timeout=self._check_timeout_s + STOP_GRACE_S)
        await self._server.wait_closed()
        self._server = None
        logger.info("health and metrics listener stopped")

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self._max_connections:
            if count := self._rejected_connections.ready():
                logger.warning(
                    "health listener rejected {} connections because {} were open, the limit",
                    count,
                    self._max_connections,
                )
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._serve(reader, writer, task)
        except (ConnectionError, TimeoutError):
            pass  # The client went away or stayed idle too long; no response is owed.
        finally:
            await _close(writer)
            self._connections.pop(task, None)
            self._busy.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        for served in range(1, MAX_REQUESTS_PER_CONNECTION + 1):
            try:
                async with asyncio.timeout(self._idle_timeout_s):
                    request = await _read_head(reader)
            except BadRequest as e:
                response = Response(e.status, TEXT_CONTENT_TYPE, f"{e.message}\n".encode())
                await _write(writer, response, keep_alive=False, send_body=True)
                return
            if request is None:
                return
            self._busy.add(task)
            response = await self._respond_safely(request)
            keep_alive = request.keep_alive and served < MAX_REQUESTS_PER_CONNECTION and not self._stopping
            await _write(writer, response, keep_alive=keep_alive, send_body=request.method != "HEAD")
            self._busy.discard(task)
            if not keep_alive:
                return

    async def _respond_safely(self, request: Request) -> Response:
        try:
            return await self._respond(request)
        except Exception:
            logger.exception("health listener failed to respond to {} {}", request.method, request.path)
            return Response(
                HTTPStatus.INTERNAL_SERVER_ERROR, TEXT_CONTENT_TYPE, b"internal error; see the daemon log\n"
            )

    async def _respond(self, request: Request) -> Response:
        if request.path not in PATHS:
            return Response(
                HTTPStatus.NOT_FOUND,
                TEXT_CONTENT_TYPE,
                b"not found; the paths are /healthz, /readyz, /metrics\n",
            )
        if request.method not in {"GET", "HEAD"}:
            body = f"method {request.method} is not allowed; use GET or HEAD\n".encode()
            return Response(HTTPStatus.METHOD_NOT_ALLOWED, TEXT_CONTENT_TYPE, body, {"Allow": "GET, HEAD"})
        if request.path == "/healthz":
            return Response(HTTPStatus.OK, JSON_CONTENT_TYPE, b'{"status":"ok"}')
        if request.path == "/readyz":
            ready, details = await self._check_readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return Response(status, JSON_CONTENT_TYPE, orjson.dumps(details, default=str))
        await self._refresh_metrics()
        return Response(HTTPStatus.OK, METRICS_CONTENT_TYPE, self._metrics.render())

    async def _check_readiness(self) -> tuple[bool, dict[str, object]]:
        try:
            async with asyncio.timeout(self._check_timeout_s):
                return await self._readiness()
        except TimeoutError:
            error = f"the readiness check timed out after {self._check_timeout_s}s"
        except Exception as e:
            error = f"the readiness check failed: {e!r}"
        if count := self._readiness_errors.ready():
            logger.warning("{} ({} times since the last message)", error, count)
        return False, {"ready": False, "error": error}

    async def _refresh_metrics(self) -> None:
        if self._refresh is None:
            return
        try:
            async with asyncio.timeout(self._check_timeout_s):
                await self._refresh()
            return
        except TimeoutError:
            error = f"timed out after {self._check_timeout_s}s"
        except Exception as e:
            error = repr(e)
        if count := self._refresh_errors.ready():
            logger.warning(
                "metrics refresh failed ({} times since the last message), serving the last values: {}",
                count,
                error,
            )


async def _read_head(reader: asyncio.StreamReader) -> Request | None:
    """Read one request head; return None when the client closed the connection between requests.

    Raises ``BadRequest`` for a head that is malformed or larger than ``MAX_HEAD_BYTES``. A request
    that announces a body is answered, but its connection is then closed because the body is
    never read.
    """
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head is larger than {MAX_HEAD_BYTES} bytes"
        ) from None
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest(HTTPStatus.BAD_REQUEST, "request head ended before its blank line") from None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in {"HTTP/1.0", "HTTP/1.1"}:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "invalid request line; expected METHOD PATH HTTP/1.1")
    method, target, version = parts
    headers = _parse_headers(lines[1:])
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
    return Request(method=method, path=target.split("?", 1)[0], keep_alive=keep_alive and not has_body)


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"invalid header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return headers


async def _write(
    writer: asyncio.StreamWriter, response: Response, *, keep_alive: bool, send_body: bool
) -> None:
    """Write one response; a HEAD response has the GET headers and no body."""
    headers = {
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Cache-Control": "no-store",
        "Connection": "keep-alive" if keep_alive else "close",
        **response.headers,
    }
    head = f"HTTP/1.1 {response.status.value} {response.status.phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(head.encode("latin-1") + b"\r\n" + (response.body if send_body else b""))
    await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
