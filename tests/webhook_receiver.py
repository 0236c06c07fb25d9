"""A loopback HTTP receiver for alert webhooks: records each POST, can fail the first few."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

MAX_BODY_BYTES = 1024 * 1024


class WebhookReceiver:
    def __init__(self, *, fail_first: int = 0, fail_status: int = 500) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.attempts: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/alerts"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for_deliveries(self, count: int, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.delivered) >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            request_line = await reader.readline()
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = min(int(value.strip()), MAX_BODY_BYTES)
            body = orjson.loads(await reader.readexactly(length)) if length else {}
            assert request_line.startswith(b"POST ")
            status = await self._record(body)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    async def _record(self, body: dict[str, Any]) -> int:
        async with self._changed:
            self.attempts.append(body)
            if len(self.attempts) <= self.fail_first:
                status = self.fail_status
            else:
                self.delivered.append(body)
                status = 200
            self._changed.notify_all()
        return status
