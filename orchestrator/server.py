"""The Unix socket server: line framing, connection limits, and responses in request order.

Each connection has a reader that turns lines into response futures (see ``Tracker``) and a
writer that awaits those futures in order and writes each response. The reader waits when a
connection has ``MAX_INFLIGHT_PER_CONNECTION`` responses outstanding, so a fast client cannot make
the daemon buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from loguru import logger

from orchestrator.errors import SocketInUse
from orchestrator.logs import Throttle
from orchestrator.protocol import ErrorCode, encode_error
from orchestrator.tracker import Tracker

READ_CHUNK_BYTES = 64 * 1024
MAX_INFLIGHT_PER_CONNECTION = 1024
SOCKET_DIR_MODE = 0o750
# Connections the kernel queues before accept(); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
REFUSE_LINGER_S = 2.0
_REFUSAL_LOG = Throttle(interval_s=10.0)


class LineTooLong:
    """Marker yielded by ``read_lines`` in place of a line over the size limit."""

    def __init__(self, size: int) -> None:
        self.size = size


async def read_lines(reader: asyncio.StreamReader, max_line_bytes: int) -> AsyncIterator[bytes | LineTooLong]:
    """Yield each complete line without its newline; skip and flag lines over ``max_line_bytes``.

    A partial line at end of stream is dropped: it was never acknowledged, so the client still
    owns it.
    """
    buffer = bytearray()
    skipping = False
    while True:
        chunk = await reader.read(READ_CHUNK_BYTES)
        if not chunk:
            if buffer and not skipping:
                logger.info(
                    "client closed the connection in the middle of a line; dropped {} bytes",
                    len(buffer),
                )
            return
        start = 0
        while start <= len(chunk):
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline
            if not skipping:
                buffer += chunk[start:end]
                if len(buffer) > max_line_bytes:
                    yield LineTooLong(len(buffer))
                    buffer.clear()
                    skipping = True
            if newline < 0:
                break
            if skipping:
                skipping = False
            else:
                line = bytes(buffer).rstrip(b"\r")
                buffer.clear()
                if line.strip():
                    yield line
            start = newline + 1


class SocketServer:
    """Unix socket server that responds to every line of the plugin's connections."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        path: Path,
        mode: int,
        max_connections: int,
        max_line_bytes: int,
    ) -> None:
        self._tracker = tracker
        self._path = path
        self._mode = mode
        self._max_connections = max_connections
        self._max_line_bytes = max_line_bytes
        self._server: asyncio.Server | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._next_connection_id = 0

    @property
    def path(self) -> Path:
        return self._path

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        """Bind the socket, replacing a stale file but never a live daemon's socket."""
        prepare_socket_path(self._path)
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self._path), limit=READ_CHUNK_BYTES, backlog=LISTEN_BACKLOG
        )
        os.chmod(self._path, self._mode)
        logger.info("listening on {} (mode {:04o})", self._path, self._mode)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, respond to the lines already read, then close every connection."""
        if self._server is not None:
            self._server.close()
            logger.info("stopped accepting connections on {}", self._path)
        for reader in list(self._readers):
            reader.cancel()
        if self._connections:
            logger.info(
                "waiting up to {}s for {} connections to finish their acks",
                grace_s,
                len(self._connections),
            )
            _, late = await asyncio.wait(list(self._connections), timeout=grace_s or None)
            for task in late:
                task.cancel()
            if late:
                logger.warning("{} connections did not finish within {}s and were closed", len(late), grace_s)
                await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        logger.info("removed socket {}", self._path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next_connection_id += 1
        connection_id = self._next_connection_id
        if len(self._connections) >= self._max_connections:
            await _refuse(reader, writer, connection_id, self._max_connections)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer, connection_id)
        finally:
            self._connections.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection_id: int
    ) -> None:
        log = logger.bind(connection=connection_id)
        log.debug("connection opened")
        responses: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue(MAX_INFLIGHT_PER_CONNECTION)
        writer_task = asyncio.create_task(_write_responses(writer, responses, connection_id))
        reader_task = asyncio.create_task(self._read_requests(reader, responses))
        self._readers.add(reader_task)
        try:
            await reader_task
        except asyncio.CancelledError:
            if not reader_task.cancelled():
                raise
        except (ConnectionError, OSError) as e:
            log.info("connection read failed: {}", e)
        finally:
            self._readers.discard(reader_task)
            await responses.put(None)
            await writer_task
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            log.debug("connection closed")

    async def _read_requests(
        self, reader: asyncio.StreamReader, responses: asyncio.Queue[asyncio.Future[bytes] | None]
    ) -> None:
        async for line in read_lines(reader, self._max_line_bytes):
            if isinstance(line, LineTooLong):
                message = f"line exceeds {self._max_line_bytes} bytes; it was skipped up to its newline"
                logger.warning("rejected a line of more than {} bytes", self._max_line_bytes)
                await responses.put(self._tracker.reject_line(ErrorCode.FRAME_TOO_LARGE, message))
            else:
                await responses.put(self._tracker.handle_line(line))


async def _write_responses(
    writer: asyncio.StreamWriter,
    responses: asyncio.Queue[asyncio.Future[bytes] | None],
    connection_id: int,
) -> None:
    """Write each response in request order. After the peer is gone, keep awaiting (events still
    get stored) but stop writing."""
    peer_gone = False
    while (future := await responses.get()) is not None:
        data = await future
        if peer_gone:
            continue
        try:
            writer.write(data)
            if responses.empty():
                await writer.drain()
        except (ConnectionError, OSError) as e:
            peer_gone = True
            logger.bind(connection=connection_id).info("client went away before its acks were written: {}", e)


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection_id: int, limit: int
) -> None:
    if (count := _REFUSAL_LOG.ready()) is not None:
        logger.bind(connection=connection_id).warning(
            "refused {} connections: {} are open, the limit (ORCH_MAX_CONNECTIONS)", count, limit
        )
    message = f"too many connections ({limit} open, the limit); retry later or raise ORCH_MAX_CONNECTIONS"
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        writer.write(encode_error(None, ErrorCode.OVERLOADED, message))
        writer.write_eof()
        await writer.drain()
        # Closing a socket with unread input makes the kernel reset the connection, which would
        # discard the error frame. So read what the client already sent, for a bounded time.
        async with asyncio.timeout(REFUSE_LINGER_S):
            while await reader.read(READ_CHUNK_BYTES):
                pass
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory and remove a stale socket file left by a dead process.

    Raises ``SocketInUse`` when a live process accepts connections on ``path``, or when ``path``
    is something other than a socket.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=SOCKET_DIR_MODE)
        os.chmod(path.parent, SOCKET_DIR_MODE)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(
            f"{path} exists and is not a socket; remove it or set ORCH_SOCKET_PATH to another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("removed stale socket file {} left by a process that is gone", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError as e:
        raise SocketInUse(f"cannot probe existing socket {path}: {e}") from e
    finally:
        probe.close()
    raise SocketInUse(
        f"another process is already listening on {path}; stop that daemon first "
        "or set ORCH_SOCKET_PATH to another path"
    )
