"""A test client for the daemon's socket that speaks wire protocol v1."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson

RESPONSE_TIMEOUT_S = 20.0


class WireClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path) -> WireClient:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, *frames: dict[str, Any]) -> None:
        await self.send_raw(b"".join(orjson.dumps(frame) + b"\n" for frame in frames))

    async def response(self) -> dict[str, Any]:
        async with asyncio.timeout(RESPONSE_TIMEOUT_S):
            line = await self.reader.readline()
        assert line, "the daemon closed the connection instead of answering"
        decoded: dict[str, Any] = orjson.loads(line)
        return decoded

    async def responses(self, count: int) -> list[dict[str, Any]]:
        return [await self.response() for _ in range(count)]

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.send(frame)
        return await self.response()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
