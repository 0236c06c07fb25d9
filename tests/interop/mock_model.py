"""Scripted OpenAI-compatible model server for running the real OpenClaw gateway offline.

The gateway is configured with this server as its only model provider
(``api: "openai-completions"``). It serves ``GET /v1/models`` and ``POST /v1/chat/completions``,
streaming responses as server-sent events the way OpenAI does: ``chat.completion.chunk`` objects
with ``delta.content`` or ``delta.tool_calls``, a last chunk with ``finish_reason``, then
``data: [DONE]``.

A rule table decides the response. Each request is reduced to a ``Prompt``:

- ``text``: the last real user message, without the timestamp prefix and the runtime footer.
  OpenClaw 2026.9.6 starts a user message with a timestamp such as ``[Fri 2026-12-04 19:34 UTC] ``
  and ends it with a ``Runtime: agent=...`` line. It also appends an internal context block
  (``<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>``) as a last user message, which is skipped. In a
  sub-agent's run the text is the task that follows ``[Subagent Task]`` in the child's first
  message.
- ``subagent``: whether the request comes from a sub-agent run.
- ``after_tool``: whether the conversation ends with a tool result, that is, the model is called
  again after one of its tool calls ran.

The first matching rule decides the response. With no match the server responds ``ok: <text>``,
or ``done`` after a tool result. A rule with ``times=N`` serves N requests and is then skipped,
which gives "fail N times, then succeed" when a later rule (or the default) matches the same
prompt.

The server runs its own asyncio loop in a background thread, so synchronous and asynchronous
tests can both use it. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODEL_ID = "m1"

# "[Fri 2026-12-04 19:34 UTC] " and similar: a bracketed weekday, date and time at line start.
TIMESTAMP_PREFIX = re.compile(
    r"^\[[A-Z][a-z]{2} \d{4}-\d{2}-\d{2} \d{2}:\d{2}(?::\d{2})?(?: [A-Za-z+\-0-9:]+)?\]\s*"
)
# A child's first message has a "[Subagent Context] ..." paragraph that mentions "[Subagent Task]",
# then the heading "[Subagent Task]" alone on a line, then the task text.
SUBAGENT_TASK_HEADING = re.compile(r"^\[Subagent Task\][ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Prompt:
    """A chat completion request, reduced to the fields that rules match on."""

    text: str
    subagent: bool
    after_tool: bool


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """One scripted response: text, tool calls, or an HTTP error status."""

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    status: int = 200
    error_message: str = "mock failure"
    # Seconds to wait before the first byte, to keep a run busy.
    delay_s: float = 0.0


def text(content: str, *, delay_s: float = 0.0) -> Reply:
    return Reply(text=content, delay_s=delay_s)


def tool_call(name: str, arguments: dict[str, Any], *, delay_s: float = 0.0) -> Reply:
    return Reply(tool_calls=(ToolCall(name, arguments),), delay_s=delay_s)


def tool_calls(*calls: ToolCall, delay_s: float = 0.0) -> Reply:
    return Reply(tool_calls=tuple(calls), delay_s=delay_s)


def http_error(status: int, message: str = "mock failure") -> Reply:
    return Reply(status=status, error_message=message)


ReplyFactory = Callable[[Prompt], Reply]


@dataclass
class Rule:
    """Answers prompts whose text contains ``contains`` (and that fit the other filters)."""

    reply: Reply | ReplyFactory
    contains: str | None = None
    subagent: bool | None = None
    after_tool: bool = False
    times: int | None = None
    used: int = 0

    def matches(self, prompt: Prompt) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if prompt.after_tool != self.after_tool:
            return False
        if self.subagent is not None and prompt.subagent != self.subagent:
            return False
        return self.contains is None or self.contains in prompt.text


@dataclass
class RequestRecord:
    """One request the server received, for tests to assert on."""

    at: float
    method: str
    path: str
    body: dict[str, Any] | None
    prompt: Prompt | None
    status: int
    reply: Reply | None
    rule_index: int | None = None
    tool_call_ids: list[str] = field(default_factory=list)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        ]
        return "\n".join(parts)
    return ""


INTERNAL_CONTEXT_BEGIN = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"
# The gateway ends the user's message with a "Runtime: agent=main | session=... | shell=bash" line.
RUNTIME_FOOTER = re.compile(r"\n\s*Runtime: agent=[^\n]*\s*$")


def _is_internal_context(message_text: str) -> bool:
    return message_text.lstrip().startswith(INTERNAL_CONTEXT_BEGIN)


def _clean_user_text(message_text: str) -> str:
    """Remove the timestamp prefix and the runtime footer from one user message."""
    cleaned = TIMESTAMP_PREFIX.sub("", message_text.strip())
    return RUNTIME_FOOTER.sub("", cleaned).strip()


def parse_prompt(body: dict[str, Any]) -> Prompt:
    """Reduce a chat completion request body to the Prompt that rules match on."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    conversation = [
        m
        for m in messages
        if not (m.get("role") == "user" and _is_internal_context(_content_text(m.get("content"))))
    ]
    user_texts = [_content_text(m.get("content")) for m in conversation if m.get("role") == "user"]
    after_tool = bool(conversation) and conversation[-1].get("role") == "tool"
    task_heading = SUBAGENT_TASK_HEADING.search(user_texts[0]) if user_texts else None

    if task_heading is not None:
        task = user_texts[0][task_heading.end() :].strip()
        # The task is followed by a blank line and a fixed "Begin. ..." instruction.
        task = task.split("\n\nBegin.", 1)[0].strip()
        later = user_texts[1:]
        prompt_text = _clean_user_text(later[-1]) if later else task
        return Prompt(text=prompt_text, subagent=True, after_tool=after_tool)

    prompt_text = _clean_user_text(user_texts[-1]) if user_texts else ""
    return Prompt(text=prompt_text, subagent=False, after_tool=after_tool)


class MockModel:
    """The scripted model server. Use ``start()``/``stop()`` or the context manager."""

    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ids = itertools.count(1)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # Script

    def add_rule(
        self,
        reply: Reply | ReplyFactory,
        *,
        contains: str | None = None,
        subagent: bool | None = None,
        after_tool: bool = False,
        times: int | None = None,
    ) -> Rule:
        rule = Rule(reply=reply, contains=contains, subagent=subagent, after_tool=after_tool, times=times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def reset(self) -> None:
        """Remove every rule and forget the request log."""
        with self._lock:
            self._rules.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def completions(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _choose(self, prompt: Prompt) -> tuple[Reply, int | None]:
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.matches(prompt):
                    rule.used += 1
                    reply = rule.reply if isinstance(rule.reply, Reply) else rule.reply(prompt)
                    return reply, index
        if prompt.after_tool:
            return text("done"), None
        return text(f"ok: {prompt.text}"), None

    # Lifecycle

    def start(self) -> MockModel:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle_connection, host="127.0.0.1", port=0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="mock-model", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the mock model server did not start within 10 s")
        if failure:
            raise RuntimeError("the mock model server failed to start") from failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> MockModel:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # HTTP

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                keep_alive = headers.get("connection", "").lower() != "close"
                await self._dispatch(method, path, body, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _dispatch(self, method: str, path: str, raw_body: bytes, writer: asyncio.StreamWriter) -> None:
        route = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and route.endswith("/models"):
            self._record(method, path, None, None, 200, None)
            payload = {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "mock"}]}
            await _write_json(writer, 200, payload)
            return
        if method != "POST" or not route.endswith("/chat/completions"):
            self._record(method, path, None, None, 404, None)
            await _write_json(
                writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}
            )
            return

        try:
            body = json.loads(raw_body or b"{}")
        except json.JSONDecodeError:
            self._record(method, path, None, None, 400, None)
            await _write_json(
                writer, 400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}}
            )
            return

        prompt = parse_prompt(body)
        reply, rule_index = self._choose(prompt)
        record = self._record(method, path, body, prompt, reply.status, reply, rule_index)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)

        if reply.status != 200:
            error = {
                "error": {"message": reply.error_message, "type": "server_error", "code": str(reply.status)}
            }
            await _write_json(writer, reply.status, error)
            return

        completion_id = f"chatcmpl-mock{next(self._ids):06d}"
        calls = [(f"call_{uuid.uuid4().hex[:10]}", call) for call in reply.tool_calls]
        record.tool_call_ids = [call_id for call_id, _ in calls]
        if body.get("stream"):
            await _write_stream(writer, completion_id, reply, calls)
        else:
            await _write_json(writer, 200, _completion_object(completion_id, reply, calls))

    def _record(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        prompt: Prompt | None,
        status: int,
        reply: Reply | None,
        rule_index: int | None = None,
    ) -> RequestRecord:
        record = RequestRecord(time.time(), method, path, body, prompt, status, reply, rule_index)
        with self._lock:
            self._requests.append(record)
        return record


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()

    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return method, path, headers, b"".join(chunks)
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


async def _write_json(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        429: "Too Many Requests",
        500: "Internal Server Error",
    }
    writer.write(
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n".encode()
        + data
    )
    await writer.drain()


def _chunk(completion_id: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


async def _write_stream(
    writer: asyncio.StreamWriter, completion_id: str, reply: Reply, calls: list[tuple[str, ToolCall]]
) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )

    async def send_event(data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        await writer.drain()

    await send_event(json.dumps(_chunk(completion_id, {"role": "assistant", "content": ""}, None)))
    if calls:
        for index, (call_id, call) in enumerate(calls):
            start = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            await send_event(json.dumps(_chunk(completion_id, {"tool_calls": [start]}, None)))
            arguments = json.dumps(call.arguments)
            # Split the arguments in two chunks, as real providers stream them in pieces.
            middle = len(arguments) // 2
            for piece in (arguments[:middle], arguments[middle:]):
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                await send_event(json.dumps(_chunk(completion_id, delta, None)))
        finish = "tool_calls"
    else:
        await send_event(json.dumps(_chunk(completion_id, {"content": reply.text or ""}, None)))
        finish = "stop"
    last = _chunk(completion_id, {}, finish)
    last["usage"] = _usage()
    await send_event(json.dumps(last))
    await send_event("[DONE]")
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _completion_object(completion_id: str, reply: Reply, calls: list[tuple[str, ToolCall]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text if not calls else None}
    if calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for call_id, c in calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": _usage(),
    }
