"""Asyncio client for the OpenClaw gateway: WebSocket RPC (protocol 4) and HTTP ``/tools/invoke``.

One long-lived WebSocket is shared by all concurrent callers. Each request gets a fresh id and
waits on a future that the reader task resolves when the matching response frame arrives. The
connection opens lazily on the first call and again on the first call after it drops, with
exponential backoff and full jitter between failed connect attempts.

Wire format, as observed against OpenClaw 2026.9.6:

- The server opens with ``{type:"event", event:"connect.challenge", payload:{nonce, ts}}``.
- The client sends a ``connect`` request carrying the token and receives a ``hello-ok`` payload.
- A request is ``{type:"req", id, method, params}`` and its response is
  ``{type:"res", id, ok, payload | error}``; ``error`` has ``message`` and may have ``code``,
  ``retryable`` and ``retryAfterMs``.
- ``agent`` responds twice with the same id: first ``status:"accepted"``, then the final result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from orchestrator import __version__
from orchestrator.errors import OrchestratorError

PROTOCOL_VERSION: Final = 4
CLIENT_ID: Final = "gateway-client"
OPERATOR_SCOPES: Final = ("operator.read", "operator.write", "operator.admin")

# Largest WebSocket message accepted from the gateway, in bytes. sessions.list and tasks.list
# responses grow with the number of sessions.
# NOTE: 32 MiB is an estimate with headroom, not a limit read from the gateway.
MAX_MESSAGE_BYTES: Final = 32 * 1024 * 1024

# WebSocket close code the gateway uses when it rejects a handshake (e.g. a token mismatch).
POLICY_VIOLATION_CLOSE_CODE: Final = 1008

TOOLS_INVOKE_PATH: Final = "/tools/invoke"

JsonObject = dict[str, Any]
EventCallback = Callable[[str, JsonObject], None]


# --- errors -------------------------------------------------------------------------------------


class GatewayError(OrchestratorError):
    """A gateway call failed. ``retryable`` is true when the same call may succeed later."""

    def __init__(
        self,
        *,
        method: str,
        url: str,
        reason: str,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(f"gateway call {method} to {url} failed: {reason}")


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached, the connection dropped, or no response came in time."""

    def __init__(self, *, method: str, url: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(method=method, url=url, reason=reason, retryable=True, retry_after_s=retry_after_s)


class GatewayAuthError(GatewayError):
    """The gateway rejected the token or the handshake, so retrying with the same token fails."""

    def __init__(self, *, method: str, url: str, reason: str) -> None:
        super().__init__(method=method, url=url, reason=reason, retryable=False)


class GatewayCallError(GatewayError):
    """The gateway returned an error for the call (``ok:false`` or an HTTP error status)."""

    def __init__(
        self,
        *,
        method: str,
        url: str,
        reason: str,
        retryable: bool,
        retry_after_s: float | None = None,
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.code = code
        self.status_code = status_code
        super().__init__(
            method=method,
            url=url,
            reason=reason,
            retryable=retryable,
            retry_after_s=retry_after_s,
        )


def call_error_from_shape(method: str, url: str, error: object) -> GatewayCallError:
    """Build a GatewayCallError from a response's ``error`` object ``{message, code?, ...}``."""
    shape: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
    message = str(shape.get("message") or "no error message")
    raw_code = shape.get("code", shape.get("type"))  # HTTP error bodies name it "type"
    code = str(raw_code) if raw_code is not None else None
    retryable = shape.get("retryable") is True
    retry_after_ms = shape.get("retryAfterMs")
    retry_after_s: float | None = None
    if isinstance(retry_after_ms, int | float) and not isinstance(retry_after_ms, bool):
        retry_after_s = max(float(retry_after_ms), 0.0) / 1000.0

    reason = f"the gateway returned {code or 'an error'}: {message}"
    if retryable and retry_after_s is not None:
        reason += f"; retrying is safe after {retry_after_s:g} s"
    elif retryable:
        reason += "; retrying is safe"
    return GatewayCallError(
        method=method,
        url=url,
        reason=reason,
        retryable=retryable,
        retry_after_s=retry_after_s,
        code=code,
    )


# --- URLs, backoff, secrets ---------------------------------------------------------------------


def display_url(url: str) -> str:
    """Return ``url`` without user info, query or fragment, so that it is safe to log."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _check_ws_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(
            f"gateway URL {display_url(url)!r} is invalid; expected ws://HOST:PORT or wss://HOST"
        )


def http_url_for(ws_url: str) -> str:
    """Derive the gateway's HTTP base URL from its WebSocket URL (ws -> http, wss -> https).

    The gateway serves WebSocket and HTTP on one port, so only the scheme changes.
    """
    parts = urlsplit(display_url(ws_url))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"gateway URL {display_url(ws_url)!r} must start with ws:// or wss://")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def reconnect_delay_s(failures: int, *, base_s: float, cap_s: float) -> float:
    """Return the wait before the next connect attempt after ``failures`` failed ones.

    Full jitter: uniform in [0, min(cap_s, base_s * 2 ** (failures - 1))].
    """
    exponent = min(max(failures - 1, 0), 30)
    return random.uniform(0.0, min(cap_s, base_s * 2.0**exponent))


class _Secret:
    """A string that reprs as a placeholder, so tracebacks with variable values do not show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def _quiet_websockets_logger() -> logging.Logger:
    """Return the stdlib logger handed to websockets, with its DEBUG records dropped.

    At DEBUG level websockets logs the start and the end of every frame, and the connect request
    carries the token, so frame dumps must never reach a handler.
    """
    ws_logger = logging.getLogger("orchestrator.gateway.websockets")
    ws_logger.addFilter(lambda record: record.levelno > logging.DEBUG)
    return ws_logger


_WEBSOCKETS_LOGGER: Final = _quiet_websockets_logger()


# --- one connection -----------------------------------------------------------------------------


@dataclass(eq=False)
class _PendingCall:
    method: str
    expect_final: bool
    future: asyncio.Future[JsonObject]


class _Connection:
    """One open WebSocket after hello-ok, with the calls that wait for responses on it."""

    def __init__(self, ws: ClientConnection, *, url: str, on_event: EventCallback | None) -> None:
        self._ws = ws
        self._url = url
        self._on_event = on_event
        self._pending: dict[str, _PendingCall] = {}
        self._closing_reason: str | None = None
        self._reader = asyncio.create_task(self._read_frames(), name=f"gateway reader {url}")

    @property
    def is_open(self) -> bool:
        return self._closing_reason is None and not self._reader.done()

    async def request(self, method: str, params: JsonObject, *, expect_final: bool) -> JsonObject:
        """Send one request and wait for its response. The caller bounds the wait."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _PendingCall(method, expect_final, future)
        try:
            frame = {"type": "req", "id": request_id, "method": method, "params": params}
            try:
                await self._ws.send(json.dumps(frame))
            except ConnectionClosed as exc:
                raise GatewayUnavailable(
                    method=method,
                    url=self._url,
                    reason=f"the connection closed before the request was sent ({exc}); retrying is safe",
                ) from exc
            return await future
        finally:
            self._pending.pop(request_id, None)
            _consume(future)

    async def close(self, reason: str) -> None:
        """Close the WebSocket and fail the calls still waiting with ``reason``."""
        self._closing_reason = reason
        await self._ws.close()
        await self._reader

    async def _read_frames(self) -> None:
        try:
            async for message in self._ws:
                self._handle_message(message)
        except ConnectionClosed:
            pass  # An abnormal close; _fail_pending below reports its code.
        finally:
            self._fail_pending()

    def _handle_message(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            logger.warning("ignored a gateway frame from {} that is not JSON", self._url)
            return
        if not isinstance(frame, dict):
            logger.warning("ignored a gateway frame from {} that is not an object", self._url)
            return

        frame_type = frame.get("type")
        if frame_type == "res":
            self._handle_response(frame)
        elif frame_type == "event":
            self._handle_event(frame)
        else:
            logger.debug("ignored a gateway frame of type {!r} from {}", frame_type, self._url)

    def _handle_response(self, frame: JsonObject) -> None:
        request_id = frame.get("id")
        call = self._pending.get(request_id) if isinstance(request_id, str) else None
        if call is None or call.future.done():
            # A second `agent` response after an expect_final=False call, or a call that timed out.
            logger.debug("ignored a gateway response for request {!r}, which no call waits for", request_id)
            return

        if frame.get("ok") is not True:
            call.future.set_exception(call_error_from_shape(call.method, self._url, frame.get("error")))
            return

        payload = frame.get("payload")
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            call.future.set_exception(
                GatewayCallError(
                    method=call.method,
                    url=self._url,
                    reason=f"the payload is a {type(payload).__name__}, not a JSON object",
                    retryable=False,
                )
            )
            return
        # NOTE: the interim response is recognised by status "accepted"; only the two-response
        # order was observed on 2026.9.6, not the exact field of the first payload.
        if call.expect_final and payload.get("status") == "accepted":
            logger.debug(
                "gateway accepted {} run {}; waiting for the final response",
                call.method,
                payload.get("runId"),
            )
            return
        call.future.set_result(payload)

    def _handle_event(self, frame: JsonObject) -> None:
        event = frame.get("event")
        if self._on_event is None or not isinstance(event, str):
            return
        payload = frame.get("payload")
        try:
            self._on_event(event, payload if isinstance(payload, dict) else {})
        except Exception:
            logger.opt(exception=True).error("gateway event callback failed on event {}", event)

    def _fail_pending(self) -> None:
        reason = self._closing_reason or self._drop_reason()
        waiting = [call for call in self._pending.values() if not call.future.done()]
        if self._closing_reason is None:
            logger.warning(
                "gateway connection to {} dropped: {} ({} calls were waiting)",
                self._url,
                reason,
                len(waiting),
            )
        for call in waiting:
            call.future.set_exception(GatewayUnavailable(method=call.method, url=self._url, reason=reason))

    def _drop_reason(self) -> str:
        code = self._ws.close_code
        detail = f"close code {code}" if code is not None else "no close code"
        if self._ws.close_reason:
            detail += f": {self._ws.close_reason}"
        return (
            f"the connection closed before the gateway answered ({detail}); the call may have "
            "run, so retry it with the same idempotency key"
        )


# --- the client ---------------------------------------------------------------------------------


class GatewayClient:
    """Client for one OpenClaw gateway, shared by concurrent callers.

    Use it as ``async with GatewayClient(url, token) as gateway:`` or call ``close()``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        http_url: str | None = None,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float = 30.0,
        reconnect_base_s: float = 0.5,
        reconnect_cap_s: float = 30.0,
        connect_attempts: int = 3,
        on_event: EventCallback | None = None,
    ) -> None:
        """Configure the client; nothing connects until the first call.

        ``http_url`` overrides the HTTP base URL, which is otherwise derived from ``url``.
        ``connect_attempts`` bounds the connect attempts one call makes before it fails.
        ``on_event`` receives every event frame after the handshake, on the reader task.
        """
        _check_ws_url(url)
        if not token:
            raise ValueError("gateway token is empty; set it in the settings or the token file")
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("call_timeout_s", call_timeout_s),
            ("reconnect_base_s", reconnect_base_s),
            ("reconnect_cap_s", reconnect_cap_s),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if connect_attempts < 1:
            raise ValueError(f"connect_attempts must be at least 1, got {connect_attempts}")

        self._connect_url = url
        self.url = display_url(url)
        self.http_url = display_url(http_url).rstrip("/") if http_url else http_url_for(url)
        self._token = _Secret(token)
        self._connect_timeout_s = connect_timeout_s
        self._call_timeout_s = call_timeout_s
        self._reconnect_base_s = reconnect_base_s
        self._reconnect_cap_s = reconnect_cap_s
        self._connect_attempts = connect_attempts
        self._on_event = on_event

        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._connect_failures = 0
        self._next_connect_at = 0.0  # loop.time() before which no connect is attempted
        self._last_connect_reason = ""
        self._closed = False
        self._http = httpx.AsyncClient(base_url=self.http_url, headers=self._auth_headers())

    def __repr__(self) -> str:
        return f"GatewayClient(url={self.url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket and the HTTP client; waiting calls fail with GatewayUnavailable."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close("the client was closed before the gateway answered")
        await self._http.aclose()
        logger.info("gateway client for {} closed", self.url)

    # --- generic call ---------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        params: JsonObject | None = None,
        *,
        timeout_s: float | None = None,
        expect_final: bool = False,
    ) -> JsonObject:
        """Call ``method`` and return its response payload.

        ``timeout_s`` (default ``call_timeout_s``) bounds the whole call, connecting included.
        With ``expect_final``, a first response with ``status:"accepted"`` is skipped and the
        call waits for the final one, as ``agent`` sends both.

        Raises GatewayUnavailable, GatewayAuthError or GatewayCallError.
        """
        if self._closed:
            raise GatewayError(method=method, url=self.url, reason="the client is closed", retryable=False)
        limit_s = self._call_timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        connected = False
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._ensure_connected(method, deadline)
                connected = True
                return await conn.request(method, params or {}, expect_final=expect_final)
        except TimeoutError as exc:
            raise GatewayUnavailable(
                method=method, url=self.url, reason=self._timeout_reason(limit_s, connected)
            ) from exc

    @staticmethod
    def _timeout_reason(limit_s: float, connected: bool) -> str:
        if connected:
            return (
                f"no response within {limit_s:g} s; the gateway may be busy, and the call may "
                "have run, so retry it with the same idempotency key"
            )
        return f"timed out after {limit_s:g} s while connecting; retrying is safe"

    # --- typed methods --------------------------------------------------------------------------

    async def agent(
        self,
        message: str,
        *,
        idempotency_key: str,
        agent_id: str | None = None,
        session_key: str | None = None,
        expect_final: bool = False,
        timeout_s: float | None = None,
    ) -> JsonObject:
        """Start an agent run; its runId equals ``idempotency_key``.

        Returns the ``accepted`` payload, or with ``expect_final`` the final one.
        """
        params: JsonObject = {"message": message, "idempotencyKey": idempotency_key}
        if agent_id is not None:
            params["agentId"] = agent_id
        if session_key is not None:
            params["sessionKey"] = session_key
        return await self.call("agent", params, timeout_s=timeout_s, expect_final=expect_final)

    async def agent_wait(self, run_id: str, *, timeout_ms: int, timeout_s: float | None = None) -> JsonObject:
        """Wait on the gateway for a run to end; the payload's status is ok, error or timeout.

        The call's own timeout defaults to ``timeout_ms`` plus ``call_timeout_s``.
        """
        if timeout_s is None:
            timeout_s = timeout_ms / 1000.0 + self._call_timeout_s
        params: JsonObject = {"runId": run_id, "timeoutMs": timeout_ms}
        return await self.call("agent.wait", params, timeout_s=timeout_s)

    async def chat_send(
        self,
        session_key: str,
        message: str,
        *,
        idempotency_key: str,
        timeout_s: float | None = None,
    ) -> JsonObject:
        """Send a chat message into a session."""
        params: JsonObject = {
            "sessionKey": session_key,
            "message": message,
            "idempotencyKey": idempotency_key,
        }
        return await self.call("chat.send", params, timeout_s=timeout_s)

    async def sessions_send(
        self, key: str, message: str, *, idempotency_key: str, timeout_s: float | None = None
    ) -> JsonObject:
        """Send a message into a session; into a sub-agent session this re-runs the child."""
        params: JsonObject = {"key": key, "message": message, "idempotencyKey": idempotency_key}
        return await self.call("sessions.send", params, timeout_s=timeout_s)

    async def tools_invoke(
        self,
        name: str,
        args: JsonObject | None = None,
        *,
        session_key: str | None = None,
        timeout_s: float | None = None,
    ) -> JsonObject:
        """Invoke a tool over the WebSocket (``tools.invoke``)."""
        params: JsonObject = {"name": name, "args": args or {}}
        if session_key is not None:
            params["sessionKey"] = session_key
        return await self.call("tools.invoke", params, timeout_s=timeout_s)

    async def sessions_list(self, *, limit: int | None = None, timeout_s: float | None = None) -> JsonObject:
        """List sessions (status, endedAt, lastRunId, spawnedBy)."""
        params: JsonObject = {} if limit is None else {"limit": limit}
        return await self.call("sessions.list", params, timeout_s=timeout_s)

    async def tasks_list(self, *, timeout_s: float | None = None) -> JsonObject:
        """List the gateway's background tasks."""
        return await self.call("tasks.list", {}, timeout_s=timeout_s)

    # --- HTTP -----------------------------------------------------------------------------------

    async def tools_invoke_http(
        self,
        tool: str,
        args: JsonObject | None = None,
        *,
        session_key: str | None = None,
        timeout_s: float | None = None,
    ) -> JsonObject:
        """Invoke a tool through ``POST /tools/invoke`` and return the response's ``result``.

        The gateway returns 404 for a tool that ``gateway.tools.allow`` does not list.
        """
        if self._closed:
            raise GatewayError(
                method=f"{TOOLS_INVOKE_PATH} {tool}",
                url=self.http_url,
                reason="the client is closed",
                retryable=False,
            )
        body: JsonObject = {"tool": tool, "args": args or {}}
        if session_key is not None:
            body["sessionKey"] = session_key
        limit_s = self._call_timeout_s if timeout_s is None else timeout_s
        try:
            response = await self._http.post(TOOLS_INVOKE_PATH, json=body, timeout=limit_s)
        except httpx.TimeoutException as exc:
            raise self._http_unavailable(
                tool, f"no response within {limit_s:g} s; the tool call may have run"
            ) from exc
        except httpx.ConnectError as exc:
            raise self._http_unavailable(
                tool, f"connection failed ({exc}); the gateway may be down, retrying is safe"
            ) from exc
        except httpx.TransportError as exc:
            raise self._http_unavailable(tool, f"{type(exc).__name__}: {exc}") from exc
        return self._tools_invoke_result(tool, response)

    def _http_unavailable(self, tool: str, reason: str) -> GatewayUnavailable:
        return GatewayUnavailable(method=f"{TOOLS_INVOKE_PATH} {tool}", url=self.http_url, reason=reason)

    def _tools_invoke_result(self, tool: str, response: httpx.Response) -> JsonObject:
        method = f"{TOOLS_INVOKE_PATH} {tool}"
        status = response.status_code
        body = _json_object_or_empty(response)

        if status in (401, 403):
            raise GatewayAuthError(
                method=method,
                url=self.http_url,
                reason=f"HTTP {status}: the gateway rejected the token; check the gateway token",
            )
        if status == 404:
            raise GatewayCallError(
                method=method,
                url=self.http_url,
                reason=f"HTTP 404: tool {tool} is not available over HTTP; the gateway returns "
                f"404 for a tool that gateway.tools.allow does not list, so add {tool} there",
                retryable=False,
                status_code=status,
            )
        if status == 200 and body.get("ok") is not False:
            result = body.get("result")
            return result if isinstance(result, dict) else {"result": result}

        # 400 is an invalid request or a tool error; 429 (rate limit) and 5xx may pass.
        retryable = status == 429 or status >= 500
        error = body.get("error")
        shape: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
        code = shape.get("type") or shape.get("code")
        message = shape.get("message") or response.reason_phrase or "no error message"
        reason = f"HTTP {status}: {message}"
        if retryable:
            reason += "; retrying is safe"
        raise GatewayCallError(
            method=method,
            url=self.http_url,
            reason=reason,
            retryable=retryable,
            retry_after_s=_retry_after_header_s(response) if retryable else None,
            code=str(code) if code is not None else None,
            status_code=status,
        )

    def _auth_headers(self) -> httpx.Headers:
        # httpx.Headers masks Authorization in its repr, unlike a plain dict.
        return httpx.Headers({"Authorization": f"Bearer {self._token.reveal()}"})

    # --- connecting -----------------------------------------------------------------------------

    async def _ensure_connected(self, method: str, deadline: float) -> _Connection:
        conn = self._conn
        if conn is not None and conn.is_open:
            return conn
        async with self._connect_lock:
            for attempt in range(1, self._connect_attempts + 1):
                conn = self._conn
                if conn is not None and conn.is_open:
                    return conn
                await self._wait_for_backoff(method, deadline)
                try:
                    conn = await self._open(method)
                except GatewayUnavailable as exc:
                    self._record_connect_failure(exc, attempt)
                    if attempt == self._connect_attempts:
                        raise
                    continue
                self._connect_failures = 0
                if self._closed:
                    # close() ran while this connect was under way and found no connection to close.
                    await conn.close("the client was closed while connecting")
                    raise GatewayError(
                        method=method, url=self.url, reason="the client is closed", retryable=False
                    )
                self._conn = conn
                return conn
        raise AssertionError("unreachable: the last connect attempt returns or raises")

    async def _wait_for_backoff(self, method: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay_s = self._next_connect_at - loop.time()
        if delay_s <= 0:
            return
        if loop.time() + delay_s >= deadline:
            raise GatewayUnavailable(
                method=method,
                url=self.url,
                reason=f"{self._last_connect_reason}; the next connect attempt is due in "
                f"{delay_s:.1f} s, after this call's deadline",
                retry_after_s=delay_s,
            )
        await asyncio.sleep(delay_s)

    def _record_connect_failure(self, exc: GatewayUnavailable, attempt: int) -> None:
        self._connect_failures += 1
        delay_s = reconnect_delay_s(
            self._connect_failures, base_s=self._reconnect_base_s, cap_s=self._reconnect_cap_s
        )
        self._next_connect_at = asyncio.get_running_loop().time() + delay_s
        self._last_connect_reason = exc.reason
        exc.retry_after_s = delay_s
        logger.warning(
            "connect to gateway {} failed (attempt {}/{}, {} in a row): {}; next attempt allowed in {:.2f} s",
            self.url,
            attempt,
            self._connect_attempts,
            self._connect_failures,
            exc.reason,
            delay_s,
        )

    async def _open(self, method: str) -> _Connection:
        """Open a WebSocket and complete the handshake within ``connect_timeout_s``."""
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                ws = await connect(
                    self._connect_url,
                    open_timeout=None,
                    close_timeout=self._connect_timeout_s,
                    max_size=MAX_MESSAGE_BYTES,
                    logger=_WEBSOCKETS_LOGGER,
                    user_agent_header=f"openclaw-orchestrator/{__version__}",
                )
                try:
                    hello = await self._handshake(ws, method)
                except BaseException:
                    ws.transport.abort()
                    raise
        except TimeoutError as exc:
            raise self._unavailable(
                method,
                f"connect timed out after {self._connect_timeout_s:g} s; the gateway "
                "may be down or overloaded, retrying is safe",
            ) from exc
        except ConnectionRefusedError as exc:
            raise self._unavailable(
                method, "connection refused; the gateway may be down, retrying is safe"
            ) from exc
        except InvalidStatus as exc:
            raise self._rejected_upgrade(method, exc) from exc
        except (OSError, InvalidHandshake) as exc:
            raise self._unavailable(
                method, f"connect failed ({type(exc).__name__}: {exc}); retrying is safe"
            ) from exc

        server = hello.get("server")
        version = server.get("version") if isinstance(server, dict) else None
        logger.info(
            "connected to gateway {} (protocol {}, server version {})",
            self.url,
            PROTOCOL_VERSION,
            version or "unknown",
        )
        return _Connection(ws, url=self.url, on_event=self._on_event)

    def _unavailable(self, method: str, reason: str) -> GatewayUnavailable:
        return GatewayUnavailable(method=method, url=self.url, reason=reason)

    def _rejected_upgrade(self, method: str, exc: InvalidStatus) -> GatewayError:
        status = exc.response.status_code
        if status in (401, 403):
            return GatewayAuthError(
                method=method,
                url=self.url,
                reason=f"the gateway rejected the WebSocket upgrade with HTTP {status}; "
                "check the gateway token",
            )
        return self._unavailable(method, f"the gateway rejected the WebSocket upgrade with HTTP {status}")

    async def _handshake(self, ws: ClientConnection, method: str) -> JsonObject:
        """Read the connect.challenge, send the connect request and return the hello-ok payload."""
        try:
            await self._receive_challenge(ws, method)
            request_id = uuid.uuid4().hex
            # Built inline so that no local variable of this frame contains the token.
            await ws.send(self._connect_frame(request_id))
            response = await self._receive_response(ws, request_id, method)
        except ConnectionClosed as exc:
            # `from None`: the traceback of ws.send() would show the connect frame with the token.
            raise self._handshake_closed(method, exc) from None
        return self._hello_payload(response, method)

    def _connect_frame(self, request_id: str) -> str:
        params: JsonObject = {
            "minProtocol": PROTOCOL_VERSION,
            "maxProtocol": PROTOCOL_VERSION,
            "client": {
                "id": CLIENT_ID,
                "version": __version__,
                "platform": "linux",
                "mode": "backend",
            },
            "role": "operator",
            "scopes": list(OPERATOR_SCOPES),
            "caps": [],
            "auth": {"token": self._token.reveal()},
        }
        return json.dumps({"type": "req", "id": request_id, "method": "connect", "params": params})

    async def _receive_challenge(self, ws: ClientConnection, method: str) -> None:
        frame = await self._receive_frame(ws, method)
        if frame.get("type") != "event" or frame.get("event") != "connect.challenge":
            raise self._unavailable(
                method,
                f"expected a connect.challenge event first, got a {frame.get('type')!r} "
                "frame; is this an OpenClaw gateway?",
            )

    async def _receive_response(self, ws: ClientConnection, request_id: str, method: str) -> JsonObject:
        # The caller's connect timeout bounds this loop; event frames before hello-ok are skipped.
        while True:
            frame = await self._receive_frame(ws, method)
            if frame.get("type") == "res" and frame.get("id") == request_id:
                return frame

    async def _receive_frame(self, ws: ClientConnection, method: str) -> JsonObject:
        message = await ws.recv()
        try:
            frame = json.loads(message)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            raise self._unavailable(method, "the gateway sent a handshake frame that is not a JSON object")
        return frame

    def _hello_payload(self, response: JsonObject, method: str) -> JsonObject:
        if response.get("ok") is not True:
            raise self._handshake_rejected(method, response.get("error"))
        payload = response.get("payload")
        if not isinstance(payload, dict) or payload.get("type", "hello-ok") != "hello-ok":
            raise self._unavailable(method, "the connect response is not a hello-ok payload")
        protocol = payload.get("protocol", PROTOCOL_VERSION)
        if protocol != PROTOCOL_VERSION:
            raise GatewayError(
                method=method,
                url=self.url,
                reason=f"the gateway speaks protocol {protocol}, this client speaks "
                f"{PROTOCOL_VERSION}; upgrade the client or pin a matching gateway version",
                retryable=False,
            )
        return payload

    def _handshake_rejected(self, method: str, error: object) -> GatewayError:
        shaped = call_error_from_shape(method, self.url, error)
        if _looks_like_auth_failure(error):
            return GatewayAuthError(
                method=method,
                url=self.url,
                reason=f"the gateway rejected the connect handshake ({shaped.reason}); "
                "check the gateway token",
            )
        return GatewayCallError(
            method=method,
            url=self.url,
            reason=f"the gateway rejected the connect handshake ({shaped.reason})",
            retryable=shaped.retryable,
            retry_after_s=shaped.retry_after_s,
            code=shaped.code,
        )

    def _handshake_closed(self, method: str, exc: ConnectionClosed) -> GatewayError:
        close = exc.rcvd
        if close is not None and close.code == POLICY_VIOLATION_CLOSE_CODE:
            return GatewayAuthError(
                method=method,
                url=self.url,
                reason=f"the gateway closed the connection during the handshake (close code "
                f"{close.code}: {close.reason or 'no reason'}); check the gateway token",
            )
        return self._unavailable(
            method, f"the connection closed during the handshake ({exc}); retrying is safe"
        )


def _consume(future: asyncio.Future[JsonObject]) -> None:
    """Cancel ``future`` or mark its exception retrieved, so asyncio does not warn about it.

    The reader may fail a call's future just before ws.send() raises for the same drop.
    """
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def _looks_like_auth_failure(error: object) -> bool:
    """Tell whether a rejected connect's error object is about credentials."""
    if not isinstance(error, Mapping):
        return False
    details = error.get("details")
    detail_code = details.get("code") if isinstance(details, Mapping) else None
    if isinstance(detail_code, str) and detail_code.upper().startswith("AUTH"):
        return True
    text = f"{error.get('code', '')} {error.get('message', '')}".lower()
    return any(word in text for word in ("unauthorized", "auth", "token", "forbidden"))


def _json_object_or_empty(response: httpx.Response) -> JsonObject:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after_header_s(response: httpx.Response) -> float | None:
    """Read a Retry-After header given in seconds; an HTTP-date form is ignored."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
