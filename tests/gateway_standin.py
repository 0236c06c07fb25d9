"""Stand-in for the OpenClaw gateway (protocol 4) on loopback, for the gateway client tests.

It speaks the real wire protocol over a real WebSocket: the connect.challenge event, the token
check, hello-ok, then request/response frames handled by per-method handlers that a test scripts.

``POST /tools/invoke`` is served by a small HTTP server on a second loopback port, because the
websockets server rejects requests with a body. The real gateway serves both on one port.

Every request received is recorded, so tests can assert on what the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

JsonObject = dict[str, Any]

PROTOCOL_VERSION = 4

# The stand-in's WebSocket server logs frames at DEBUG, including connect requests and their
# token. Tests that inspect captured logs leave out the records of this logger.
STANDIN_WEBSOCKETS_LOGGER = logging.getLogger("gateway_standin.websockets")
AUTH_FAILURE_REASON = "unauthorized: gateway token mismatch"

# Bounds on what the HTTP server reads, so a broken request cannot make it loop or buffer much.
MAX_HTTP_HEADER_LINES = 100
MAX_HTTP_BODY_BYTES = 2 * 1024 * 1024


# --- scripted replies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """Respond ``ok:true`` with this payload."""

    value: JsonObject


@dataclass(frozen=True)
class Error:
    """Respond ``ok:false`` with an error object."""

    message: str
    code: str = "UNAVAILABLE"
    retryable: bool | None = None
    retry_after_ms: int | None = None

    def shape(self) -> JsonObject:
        error: JsonObject = {"code": self.code, "message": self.message}
        if self.retryable is not None:
            error["retryable"] = self.retryable
        if self.retry_after_ms is not None:
            error["retryAfterMs"] = self.retry_after_ms
        return error


@dataclass(frozen=True)
class AcceptedThenFinal:
    """Respond twice with the same id, as ``agent`` does: ``accepted`` at once, then ``final``.

    With ``release`` set, the final response waits until the test sets that event;
    ``final_sent`` is set once the final response is written.
    """

    accepted: JsonObject
    final: Payload | Error
    release: asyncio.Event | None = None
    final_sent: asyncio.Event | None = None


@dataclass(frozen=True)
class NoReply:
    """Never respond to the request."""


@dataclass(frozen=True)
class DropConnection:
    """Abort the TCP connection without a close frame, as a crashed gateway does."""


Reply = Payload | Error | AcceptedThenFinal | NoReply | DropConnection
Handler = Reply | Callable[[JsonObject], Reply | Awaitable[Reply]]


@dataclass(frozen=True)
class HttpReply:
    """A scripted HTTP response for one tool on ``/tools/invoke``."""

    status: int
    body: JsonObject
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceivedRequest:
    """A request frame received after the handshake."""

    connection: int
    id: str
    method: str
    params: JsonObject


@dataclass(frozen=True)
class ReceivedHttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: JsonObject


def _default_handlers() -> dict[str, Handler]:
    def agent(params: JsonObject) -> Reply:
        run_id = params.get("idempotencyKey", "run-1")
        return AcceptedThenFinal(
            accepted={"runId": run_id, "status": "accepted", "acceptedAt": _now_ms()},
            final=Payload({"runId": run_id, "status": "ok", "summary": "completed"}),
        )

    def agent_wait(params: JsonObject) -> Reply:
        return Payload({"runId": params.get("runId"), "status": "ok"})

    def run_started(params: JsonObject) -> Reply:
        return Payload({"runId": params.get("idempotencyKey"), "status": "started"})

    return {
        "agent": agent,
        "agent.wait": agent_wait,
        "chat.send": run_started,
        "sessions.send": run_started,
        "tools.invoke": Payload({"ok": True, "result": {"content": [], "details": {}}}),
        "sessions.list": Payload({"sessions": []}),
        "tasks.list": Payload({"tasks": []}),
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the stand-in -------------------------------------------------------------------------------


class GatewayStandin:
    """A scriptable fake gateway on 127.0.0.1; use as ``async with GatewayStandin(token) as gw``."""

    def __init__(self, token: str, *, respond_before_auth_close: bool = True) -> None:
        """``respond_before_auth_close`` sends an ``ok:false`` response to a connect with a
        wrong token before closing with code 1008; without it the close comes alone.
        """
        self.token = token
        self.respond_before_auth_close = respond_before_auth_close
        self.handlers: dict[str, Handler] = _default_handlers()
        self.requests: list[ReceivedRequest] = []
        self.connect_params: list[JsonObject] = []
        # Set when a connect request arrives. With hello_release set, hello-ok waits for that event.
        self.connect_received = asyncio.Event()
        self.hello_release: asyncio.Event | None = None
        self.connections_opened = 0
        self.http_requests: list[ReceivedHttpRequest] = []
        self.http_allowed_tools: set[str] = {"sessions_spawn", "sessions_send"}
        self.http_replies: dict[str, HttpReply] = {}

        # Loopback URLs of the WebSocket and HTTP servers, set by start().
        self.url = ""
        self.http_url = ""

        self._changed = asyncio.Condition()
        self._connections: set[ServerConnection] = set()
        self._ws_server: Server | None = None
        self._http_server: asyncio.Server | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._ws_server = await serve(
            self._serve_connection, "127.0.0.1", 0, logger=STANDIN_WEBSOCKETS_LOGGER
        )
        self._http_server = await asyncio.start_server(self._serve_http, "127.0.0.1", 0)
        ws_port = self._ws_server.sockets[0].getsockname()[1]
        http_port = self._http_server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{ws_port}"
        self.http_url = f"http://127.0.0.1:{http_port}"

    async def stop(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._http_server is not None:
            self._http_server.close()
            await self._http_server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- scripting and inspection ---------------------------------------------------------------

    def on(self, method: str, handler: Handler) -> None:
        """Set how the stand-in responds to ``method``."""
        self.handlers[method] = handler

    def requests_for(self, method: str) -> list[ReceivedRequest]:
        return [request for request in self.requests if request.method == method]

    async def wait_for_requests(
        self, method: str, count: int = 1, *, timeout_s: float = 5.0
    ) -> list[ReceivedRequest]:
        """Wait until ``count`` requests for ``method`` have arrived and return them."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.requests_for(method)) >= count)
        return self.requests_for(method)

    async def send_event(self, event: str, payload: JsonObject) -> None:
        """Send an event frame to every connection that completed the handshake."""
        frame = json.dumps({"type": "event", "event": event, "payload": payload})
        for ws in list(self._connections):
            await ws.send(frame)

    def drop_connections(self) -> None:
        """Abort every open connection without a close frame, as a crashed gateway does."""
        for ws in list(self._connections):
            ws.transport.abort()

    # --- WebSocket ------------------------------------------------------------------------------

    async def _serve_connection(self, ws: ServerConnection) -> None:
        self.connections_opened += 1
        number = self.connections_opened
        replies: set[asyncio.Task[None]] = set()
        try:
            if not await self._handshake(ws):
                return
            self._connections.add(ws)
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") != "req":
                    continue
                request = ReceivedRequest(number, frame["id"], frame["method"], frame.get("params") or {})
                await self._record(request)
                task = asyncio.create_task(self._reply(ws, request))
                replies.add(task)
                task.add_done_callback(replies.discard)
        except ConnectionClosed:
            pass  # The client went away; nothing is left to respond to.
        finally:
            self._connections.discard(ws)
            for task in list(replies):
                task.cancel()

    async def _record(self, request: ReceivedRequest) -> None:
        async with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    async def _handshake(self, ws: ServerConnection) -> bool:
        challenge = {"nonce": uuid.uuid4().hex, "ts": _now_ms()}
        await ws.send(json.dumps({"type": "event", "event": "connect.challenge", "payload": challenge}))
        frame = json.loads(await ws.recv())
        if frame.get("type") != "req" or frame.get("method") != "connect":
            await ws.close(1008, "first request must be connect")
            return False

        params = frame.get("params") or {}
        self.connect_params.append(params)
        self.connect_received.set()
        # NOTE: the rejection (this message, then close code 1008) follows the gateway's
        # documented "unauthorized: gateway token mismatch" error, not a captured 2026.9.6 frame.
        if params.get("auth", {}).get("token") != self.token:
            if self.respond_before_auth_close:
                error = {"code": "INVALID_REQUEST", "message": AUTH_FAILURE_REASON}
                await ws.send(json.dumps({"type": "res", "id": frame["id"], "ok": False, "error": error}))
            await ws.close(1008, AUTH_FAILURE_REASON)
            return False
        if not params.get("minProtocol", 0) <= PROTOCOL_VERSION <= params.get("maxProtocol", 0):
            error = {"code": "INVALID_REQUEST", "message": "protocol mismatch"}
            await ws.send(json.dumps({"type": "res", "id": frame["id"], "ok": False, "error": error}))
            await ws.close(1002, "protocol mismatch")
            return False

        if self.hello_release is not None:
            await self.hello_release.wait()
        await ws.send(json.dumps({"type": "res", "id": frame["id"], "ok": True, "payload": self._hello_ok()}))
        return True

    def _hello_ok(self) -> JsonObject:
        return {
            "type": "hello-ok",
            "protocol": PROTOCOL_VERSION,
            "server": {"version": "standin", "connId": uuid.uuid4().hex},
            "features": {"methods": sorted(self.handlers), "events": []},
            "snapshot": {},
            "policy": {
                "maxPayload": 26214400,
                "maxBufferedBytes": 52428800,
                "tickIntervalMs": 30000,
            },
        }

    async def _reply(self, ws: ServerConnection, request: ReceivedRequest) -> None:
        reply = await self._resolve(request)
        # The client may disconnect before the reply; the test observes that on its side.
        with contextlib.suppress(ConnectionClosed):
            await self._send_reply(ws, request.id, reply)

    async def _resolve(self, request: ReceivedRequest) -> Reply:
        handler = self.handlers.get(request.method)
        if handler is None:
            return Error(f"unknown method: {request.method}", code="INVALID_REQUEST")
        if not callable(handler):
            return handler
        reply = handler(request.params)
        if inspect.isawaitable(reply):
            return await reply
        return reply

    async def _send_reply(self, ws: ServerConnection, request_id: str, reply: Reply) -> None:
        if isinstance(reply, NoReply):
            return
        if isinstance(reply, DropConnection):
            ws.transport.abort()
            return
        if isinstance(reply, AcceptedThenFinal):
            await ws.send(_response(request_id, Payload(reply.accepted)))
            if reply.release is not None:
                await reply.release.wait()
            await ws.send(_response(request_id, reply.final))
            if reply.final_sent is not None:
                reply.final_sent.set()
            return
        await ws.send(_response(request_id, reply))

    # --- HTTP -----------------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_http_request(reader)
            if request is None:
                reply = HttpReply(
                    400,
                    {"ok": False, "error": {"type": "invalid_request", "message": "bad request"}},
                )
            else:
                self.http_requests.append(request)
                reply = self._route_http(request)
            writer.write(_http_response_bytes(reply))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # The client went away mid-request; there is no one to respond to.
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route_http(self, request: ReceivedHttpRequest) -> HttpReply:
        if request.path != "/tools/invoke":
            return HttpReply(404, {"ok": False, "error": {"type": "not_found", "message": "Not Found"}})
        if request.method != "POST":
            return HttpReply(
                405,
                {
                    "ok": False,
                    "error": {"type": "method_not_allowed", "message": "Method Not Allowed"},
                },
            )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return HttpReply(401, {"ok": False, "error": {"type": "unauthorized", "message": "Unauthorized"}})
        tool = str(request.body.get("tool", ""))
        if tool not in self.http_allowed_tools:
            return HttpReply(
                404,
                {
                    "ok": False,
                    "error": {"type": "not_found", "message": f"Tool not available: {tool}"},
                },
            )
        if tool in self.http_replies:
            return self.http_replies[tool]
        result = {
            "content": [{"type": "text", "text": "{}"}],
            "details": {"status": "accepted", "args": request.body.get("args", {})},
        }
        return HttpReply(200, {"ok": True, "result": result})


def _response(request_id: str, reply: Payload | Error) -> str:
    if isinstance(reply, Payload):
        return json.dumps({"type": "res", "id": request_id, "ok": True, "payload": reply.value})
    return json.dumps({"type": "res", "id": request_id, "ok": False, "error": reply.shape()})


async def _read_http_request(reader: asyncio.StreamReader) -> ReceivedHttpRequest | None:
    request_line = (await reader.readline()).decode("latin-1").strip()
    parts = request_line.split(" ")
    if len(parts) != 3:
        return None
    method, path, _version = parts

    headers: dict[str, str] = {}
    for _ in range(MAX_HTTP_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    else:
        return None

    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return None
    if not 0 <= length <= MAX_HTTP_BODY_BYTES:
        return None
    raw_body = await reader.readexactly(length) if length else b""
    try:
        body = json.loads(raw_body) if raw_body else {}
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return ReceivedHttpRequest(method, path, headers, body)


def _http_response_bytes(reply: HttpReply) -> bytes:
    body = json.dumps(reply.body).encode()
    reason = {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        405: "Method Not Allowed",
        429: "Too Many Requests",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }.get(reply.status, "Status")
    lines = [
        f"HTTP/1.1 {reply.status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in reply.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
