"""Tests of the gateway client against a loopback stand-in that speaks the real protocol."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from orchestrator import gateway
from orchestrator.gateway import (
    GatewayAuthError,
    GatewayCallError,
    GatewayClient,
    GatewayError,
    GatewayUnavailable,
    JsonObject,
    display_url,
    http_url_for,
    reconnect_delay_s,
)
from tests.gateway_standin import (
    STANDIN_WEBSOCKETS_LOGGER,
    AcceptedThenFinal,
    DropConnection,
    Error,
    GatewayStandin,
    HttpReply,
    NoReply,
    Payload,
    Reply,
)

TOKEN = "standin-token-5e0c1b7a9d"
WRONG_TOKEN = "wrong-token-8f2d4c6e1a"


def make_client(standin: GatewayStandin, *, token: str = TOKEN, **options: Any) -> GatewayClient:
    settings: dict[str, Any] = {
        "http_url": standin.http_url,
        "connect_timeout_s": 5.0,
        "call_timeout_s": 5.0,
        "reconnect_base_s": 0.01,
        "reconnect_cap_s": 0.05,
    }
    settings.update(options)
    return GatewayClient(standin.url, token, **settings)


def unused_loopback_port() -> int:
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def standin() -> AsyncIterator[GatewayStandin]:
    async with GatewayStandin(TOKEN) as running:
        yield running


@pytest.fixture
async def client(standin: GatewayStandin) -> AsyncIterator[GatewayClient]:
    async with make_client(standin) as connected:
        yield connected


# --- connecting and calling ---------------------------------------------------------------------


async def test_call_returns_payload(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on("sessions.list", Payload({"sessions": [{"key": "agent:main:main"}]}))

    result = await client.sessions_list(limit=5)

    assert result == {"sessions": [{"key": "agent:main:main"}]}
    [request] = standin.requests_for("sessions.list")
    assert request.params == {"limit": 5}


async def test_connect_sends_operator_handshake(standin: GatewayStandin, client: GatewayClient) -> None:
    await client.tasks_list()

    [params] = standin.connect_params
    assert params["minProtocol"] == 4
    assert params["maxProtocol"] == 4
    assert params["client"]["id"] == "gateway-client"
    assert params["client"]["mode"] == "backend"
    assert params["client"]["platform"] == "linux"
    assert params["role"] == "operator"
    assert params["scopes"] == ["operator.read", "operator.write", "operator.admin"]
    assert params["caps"] == []
    assert params["auth"] == {"token": TOKEN}


async def test_connect_is_lazy(standin: GatewayStandin) -> None:
    async with make_client(standin):
        pass

    assert standin.connections_opened == 0


@pytest.mark.parametrize("respond_first", [True, False], ids=["error-response", "close-only"])
async def test_wrong_token_raises_auth_error(respond_first: bool) -> None:
    async with (
        GatewayStandin(TOKEN, respond_before_auth_close=respond_first) as standin,
        make_client(standin, token=WRONG_TOKEN) as client,
    ):
        with pytest.raises(GatewayAuthError) as caught:
            await client.sessions_list()

    error = caught.value
    assert error.retryable is False
    assert error.method == "sessions.list"
    assert error.url == standin.url
    assert "token" in str(error)
    assert standin.connections_opened == 1


async def test_agent_expect_final_returns_final(standin: GatewayStandin, client: GatewayClient) -> None:
    result = await client.agent(
        "summarise the log", idempotency_key="run-7", agent_id="main", expect_final=True
    )

    assert result["status"] == "ok"
    assert result["runId"] == "run-7"
    [request] = standin.requests_for("agent")
    assert request.params == {
        "message": "summarise the log",
        "idempotencyKey": "run-7",
        "agentId": "main",
    }


async def test_agent_returns_accepted_first(standin: GatewayStandin, client: GatewayClient) -> None:
    release = asyncio.Event()
    final_sent = asyncio.Event()
    standin.on(
        "agent",
        AcceptedThenFinal(
            accepted={"runId": "run-8", "status": "accepted"},
            final=Payload({"runId": "run-8", "status": "ok"}),
            release=release,
            final_sent=final_sent,
        ),
    )

    result = await client.agent("hello", idempotency_key="run-8")
    assert result == {"runId": "run-8", "status": "accepted"}

    # The final response arrives for a call that already returned: it is dropped, and the
    # connection goes on serving calls.
    release.set()
    async with asyncio.timeout(5):
        await final_sent.wait()
    assert await client.tasks_list() == {"tasks": []}
    assert standin.connections_opened == 1


async def test_agent_final_error_raises_call_error(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on(
        "agent",
        AcceptedThenFinal(
            accepted={"runId": "run-9", "status": "accepted"},
            final=Error("model provider failed", code="AGENT_ERROR"),
        ),
    )

    with pytest.raises(GatewayCallError) as caught:
        await client.agent("hello", idempotency_key="run-9", expect_final=True)

    assert caught.value.code == "AGENT_ERROR"
    assert caught.value.retryable is False
    assert "model provider failed" in str(caught.value)


async def test_concurrent_calls_share_connection(standin: GatewayStandin, client: GatewayClient) -> None:
    count = 20
    all_arrived = asyncio.Event()

    async def respond_when_all_arrived(params: JsonObject) -> Reply:
        if len(standin.requests_for("sessions.send")) >= count:
            all_arrived.set()
        await all_arrived.wait()
        return Payload({"echo": params["message"]})

    standin.on("sessions.send", respond_when_all_arrived)

    async with asyncio.timeout(10):
        results = await asyncio.gather(
            *(
                client.sessions_send("agent:main:main", f"message {i}", idempotency_key=f"key-{i}")
                for i in range(count)
            )
        )

    assert results == [{"echo": f"message {i}"} for i in range(count)]
    assert standin.connections_opened == 1
    request_ids = {request.id for request in standin.requests_for("sessions.send")}
    assert len(request_ids) == count


Invoke = Callable[[GatewayClient], Awaitable[JsonObject]]

CONVENIENCE_CASES: list[tuple[str, Invoke, JsonObject]] = [
    (
        "agent",
        lambda c: c.agent("hi", idempotency_key="k1", agent_id="main", session_key="s1"),
        {"message": "hi", "idempotencyKey": "k1", "agentId": "main", "sessionKey": "s1"},
    ),
    (
        "agent.wait",
        lambda c: c.agent_wait("run-1", timeout_ms=2000),
        {"runId": "run-1", "timeoutMs": 2000},
    ),
    (
        "chat.send",
        lambda c: c.chat_send("agent:main:main", "hi", idempotency_key="k2"),
        {"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "k2"},
    ),
    (
        "sessions.send",
        lambda c: c.sessions_send("agent:main:subagent:1", "again", idempotency_key="k3"),
        {"key": "agent:main:subagent:1", "message": "again", "idempotencyKey": "k3"},
    ),
    (
        "tools.invoke",
        lambda c: c.tools_invoke("sessions_spawn", {"task": "t"}, session_key="s2"),
        {"name": "sessions_spawn", "args": {"task": "t"}, "sessionKey": "s2"},
    ),
    ("sessions.list", lambda c: c.sessions_list(limit=3), {"limit": 3}),
    ("tasks.list", lambda c: c.tasks_list(), {}),
]


@pytest.mark.parametrize(
    ("method", "invoke", "expected_params"),
    CONVENIENCE_CASES,
    ids=[case[0] for case in CONVENIENCE_CASES],
)
async def test_typed_method_sends_params(
    standin: GatewayStandin,
    client: GatewayClient,
    method: str,
    invoke: Invoke,
    expected_params: JsonObject,
) -> None:
    await invoke(client)

    [request] = standin.requests_for(method)
    assert request.params == expected_params


async def test_event_callback_receives_events(standin: GatewayStandin) -> None:
    received: list[tuple[str, JsonObject]] = []
    arrived = asyncio.Event()

    def on_event(event: str, payload: JsonObject) -> None:
        received.append((event, payload))
        arrived.set()

    async with make_client(standin, on_event=on_event) as client:
        await client.tasks_list()
        await standin.send_event("agent", {"runId": "run-1", "stream": "lifecycle"})
        async with asyncio.timeout(5):
            await arrived.wait()

    assert received == [("agent", {"runId": "run-1", "stream": "lifecycle"})]


# --- failures -----------------------------------------------------------------------------------


async def test_call_timeout_raises_unavailable(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on("sessions.list", NoReply())

    with pytest.raises(GatewayUnavailable) as caught:
        await client.sessions_list(timeout_s=0.2)

    assert caught.value.retryable is True
    assert "no response within 0.2 s" in str(caught.value)
    assert "sessions.list" in str(caught.value)

    standin.on("sessions.list", Payload({"sessions": []}))
    assert await client.sessions_list() == {"sessions": []}
    assert standin.connections_opened == 1


async def test_drop_mid_call_then_reconnects(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on("sessions.send", DropConnection())

    with pytest.raises(GatewayUnavailable) as caught:
        await client.sessions_send("agent:main:subagent:1", "task", idempotency_key="k1")

    assert caught.value.retryable is True
    assert "closed before the gateway answered" in str(caught.value)
    assert "same idempotency key" in str(caught.value)

    standin.on("sessions.send", Payload({"runId": "k1", "status": "accepted"}))
    result = await client.sessions_send("agent:main:subagent:1", "task", idempotency_key="k1")
    assert result == {"runId": "k1", "status": "accepted"}
    assert standin.connections_opened == 2


async def test_drop_fails_every_waiting_call(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on("sessions.list", NoReply())
    calls = [asyncio.create_task(client.sessions_list()) for _ in range(3)]
    await standin.wait_for_requests("sessions.list", 3)

    standin.drop_connections()
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(outcome, GatewayUnavailable) for outcome in outcomes), outcomes


async def test_gateway_down_raises_unavailable_with_url() -> None:
    url = f"ws://127.0.0.1:{unused_loopback_port()}"

    async with GatewayClient(
        url, TOKEN, connect_attempts=2, reconnect_base_s=0.01, reconnect_cap_s=0.02
    ) as client:
        with pytest.raises(GatewayUnavailable) as caught:
            await client.sessions_send("agent:main:main", "hi", idempotency_key="k1")

    message = str(caught.value)
    assert message.startswith(f"gateway call sessions.send to {url} failed: ")
    assert "connection refused" in message
    assert caught.value.retryable is True
    assert caught.value.retry_after_s is not None


async def test_backoff_fails_call_due_before_next_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fixed_delay_s(failures: int, *, base_s: float, cap_s: float) -> float:
        return 30.0

    monkeypatch.setattr(gateway, "reconnect_delay_s", fixed_delay_s)
    url = f"ws://127.0.0.1:{unused_loopback_port()}"

    async with GatewayClient(url, TOKEN, connect_attempts=1) as client:
        with pytest.raises(GatewayUnavailable) as first:
            await client.tasks_list()
        with pytest.raises(GatewayUnavailable) as second:
            await client.tasks_list(timeout_s=1.0)

    assert first.value.retry_after_s == 30.0
    assert "next connect attempt is due in" in str(second.value)
    assert second.value.retry_after_s is not None
    assert 0 < second.value.retry_after_s <= 30.0


async def test_retryable_error_carries_retry_after(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on("chat.send", Error("gateway busy", retryable=True, retry_after_ms=1500))

    with pytest.raises(GatewayCallError) as caught:
        await client.chat_send("agent:main:main", "hi", idempotency_key="c1")

    error = caught.value
    assert error.retryable is True
    assert error.retry_after_s == 1.5
    assert error.code == "UNAVAILABLE"
    assert "gateway busy" in str(error)
    assert "chat.send" in str(error)
    assert "after 1.5 s" in str(error)


async def test_error_without_retryable_is_final(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.on("sessions.send", Error("session not found", code="NOT_FOUND"))

    with pytest.raises(GatewayCallError) as caught:
        await client.sessions_send("agent:main:gone", "hi", idempotency_key="k1")

    assert caught.value.retryable is False
    assert caught.value.retry_after_s is None
    assert caught.value.code == "NOT_FOUND"


async def test_unknown_method_raises_call_error(client: GatewayClient) -> None:
    with pytest.raises(GatewayCallError, match=r"unknown method: no\.such\.method"):
        await client.call("no.such.method")


async def test_close_fails_waiting_calls(standin: GatewayStandin) -> None:
    client = make_client(standin)
    standin.on("sessions.list", NoReply())
    waiting = asyncio.create_task(client.sessions_list())
    await standin.wait_for_requests("sessions.list")

    await client.close()

    with pytest.raises(GatewayUnavailable, match="client was closed"):
        await waiting
    with pytest.raises(GatewayError, match="client is closed") as caught:
        await client.tasks_list()
    assert caught.value.retryable is False


async def test_close_during_connect_leaves_no_connection(standin: GatewayStandin) -> None:
    standin.hello_release = asyncio.Event()
    client = make_client(standin)
    connecting = asyncio.create_task(client.tasks_list())
    async with asyncio.timeout(5):
        await standin.connect_received.wait()

    await client.close()
    standin.hello_release.set()

    with pytest.raises(GatewayError, match="client is closed") as caught:
        await connecting
    assert caught.value.retryable is False
    assert standin.requests_for("tasks.list") == []


# --- HTTP /tools/invoke -------------------------------------------------------------------------


async def test_tools_invoke_http_returns_result(standin: GatewayStandin, client: GatewayClient) -> None:
    result = await client.tools_invoke_http(
        "sessions_spawn", {"task": "write tests"}, session_key="agent:main:main"
    )

    assert result["details"]["status"] == "accepted"
    [request] = standin.http_requests
    assert request.method == "POST"
    assert request.path == "/tools/invoke"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.body == {
        "tool": "sessions_spawn",
        "args": {"task": "write tests"},
        "sessionKey": "agent:main:main",
    }


async def test_tools_invoke_http_404_names_allow_list(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.http_allowed_tools = set()

    with pytest.raises(GatewayCallError) as caught:
        await client.tools_invoke_http("sessions_spawn", {"task": "t"})

    assert caught.value.status_code == 404
    assert caught.value.retryable is False
    assert "gateway.tools.allow" in str(caught.value)
    assert "sessions_spawn" in str(caught.value)


async def test_tools_invoke_http_401_raises_auth_error(standin: GatewayStandin) -> None:
    async with make_client(standin, token=WRONG_TOKEN) as client:
        with pytest.raises(GatewayAuthError) as caught:
            await client.tools_invoke_http("sessions_spawn", {"task": "t"})

    assert caught.value.retryable is False
    assert "HTTP 401" in str(caught.value)
    assert standin.http_url in str(caught.value)


async def test_tools_invoke_http_429_is_retryable(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.http_replies["sessions_spawn"] = HttpReply(
        429,
        {"ok": False, "error": {"type": "rate_limited", "message": "too many requests"}},
        {"Retry-After": "3"},
    )

    with pytest.raises(GatewayCallError) as caught:
        await client.tools_invoke_http("sessions_spawn", {"task": "t"})

    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 3.0
    assert caught.value.code == "rate_limited"


async def test_tools_invoke_http_tool_error_is_final(standin: GatewayStandin, client: GatewayClient) -> None:
    standin.http_replies["sessions_spawn"] = HttpReply(
        400, {"ok": False, "error": {"type": "tool_error", "message": "task is required"}}
    )

    with pytest.raises(GatewayCallError, match="task is required") as caught:
        await client.tools_invoke_http("sessions_spawn", {})

    assert caught.value.retryable is False
    assert caught.value.status_code == 400


async def test_tools_invoke_http_gateway_down(standin: GatewayStandin) -> None:
    http_url = f"http://127.0.0.1:{unused_loopback_port()}"

    async with make_client(standin, http_url=http_url) as client:
        with pytest.raises(GatewayUnavailable) as caught:
            await client.tools_invoke_http("sessions_spawn", {"task": "t"})

    assert caught.value.retryable is True
    assert http_url in str(caught.value)


# --- secrets ------------------------------------------------------------------------------------


async def test_token_never_in_logs_or_errors(
    standin: GatewayStandin, caplog: pytest.LogCaptureFixture
) -> None:
    lines: list[str] = []
    # diagnose=True prints variable values in tracebacks, the strictest setting a caller may use.
    sink_id = logger.add(lines.append, level="TRACE", backtrace=True, diagnose=True)
    caplog.set_level(logging.DEBUG)
    errors: list[GatewayError] = []

    async def record_failure(call: Awaitable[JsonObject]) -> None:
        try:
            await call
        except GatewayError as exc:
            errors.append(exc)
            logger.opt(exception=exc).error("gateway call failed")

    try:
        async with make_client(standin) as client:
            await client.tasks_list()
            standin.on("sessions.list", NoReply())
            await record_failure(client.sessions_list(timeout_s=0.1))
            standin.on("sessions.send", DropConnection())
            await record_failure(client.sessions_send("s", "m", idempotency_key="k"))
            standin.http_allowed_tools = set()
            await record_failure(client.tools_invoke_http("sessions_spawn"))
            client_repr = repr(client)
        async with make_client(standin, token=WRONG_TOKEN) as client:
            await record_failure(client.tasks_list())
            await record_failure(client.tools_invoke_http("sessions_spawn"))
    finally:
        logger.remove(sink_id)

    assert len(errors) == 5
    assert any("gateway call failed" in line for line in lines)
    client_records = [
        record.getMessage() for record in caplog.records if record.name != STANDIN_WEBSOCKETS_LOGGER.name
    ]
    texts = [*lines, *client_records, client_repr, *map(str, errors), *map(repr, errors)]
    # websockets shows the start and the end of a frame in DEBUG logs, so look for fragments.
    fragments = [TOKEN[:10], TOKEN[-10:], WRONG_TOKEN[:10], WRONG_TOKEN[-10:]]
    for text in texts:
        for fragment in fragments:
            assert fragment not in text


# --- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ws_url", "http_url"),
    [
        ("ws://127.0.0.1:18789", "http://127.0.0.1:18789"),
        ("wss://gateway.example:443/", "https://gateway.example:443"),
        ("ws://user:secret@127.0.0.1:18789/?token=x", "http://127.0.0.1:18789"),
        ("ws://[::1]:18789", "http://[::1]:18789"),
    ],
)
def test_http_url_derived_from_ws_url(ws_url: str, http_url: str) -> None:
    assert http_url_for(ws_url) == http_url


def test_display_url_drops_credentials() -> None:
    assert display_url("ws://user:secret@127.0.0.1:18789/gw?token=x#f") == "ws://127.0.0.1:18789/gw"


@pytest.mark.parametrize("url", ["http://127.0.0.1:18789", "127.0.0.1:18789", "ws://"])
def test_client_rejects_invalid_url(url: str) -> None:
    with pytest.raises(ValueError, match="gateway URL"):
        GatewayClient(url, TOKEN)


def test_client_rejects_empty_token() -> None:
    with pytest.raises(ValueError, match="token is empty"):
        GatewayClient("ws://127.0.0.1:18789", "")


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    base_s=st.floats(min_value=0.001, max_value=10.0),
    cap_s=st.floats(min_value=0.001, max_value=600.0),
)
def test_reconnect_delay_within_bounds(failures: int, base_s: float, cap_s: float) -> None:
    delay_s = reconnect_delay_s(failures, base_s=base_s, cap_s=cap_s)

    assert 0.0 <= delay_s <= min(cap_s, base_s * 2.0 ** min(failures - 1, 30))
