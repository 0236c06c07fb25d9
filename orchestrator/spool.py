"""The local spool: an append-only file of request lines acked while Redis was unavailable.

Each line of the file is one request line exactly as the plugin sent it. Writes happen in the
committer's batches: one ``write`` and, by ``spool_fsync``, one ``fsync`` per batch, off the event
loop thread. Replay reads from a checkpoint offset (``<spool>.offset``, written after each replayed
batch), so a replay that crashes resumes where it stopped; applying an event twice is harmless
because events are deduplicated by id. The file is truncated when a replay reaches its end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Literal

from loguru import logger

SpoolFsync = Literal["always", "interval", "never"]
FSYNC_INTERVAL_S = 1.0
REPLAY_BATCH_LINES = 256


class SpoolFull(Exception):
    """The spool reached ``spool_max_bytes``; the event was not written."""


class Spool:
    """One spool file with its replay checkpoint."""

    def __init__(self, path: Path, *, max_bytes: int, fsync: SpoolFsync) -> None:
        self.path = path
        self.offset_path = path.with_name(path.name + ".offset")
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._last_fsync_s = 0.0
        self._lock = asyncio.Lock()
        self._pending_offset = 0
        self._pending_batch_lines = 0
        self._size = _repair(path)
        self._pending_lines = _count_lines(path, self._read_offset())

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def pending_lines(self) -> int:
        """Spooled lines not yet replayed (events and direct-dispatch records)."""
        return self._pending_lines

    def pending_bytes(self) -> int:
        """Bytes not yet replayed."""
        return max(0, self._size - self._read_offset())

    async def append(self, lines: list[bytes]) -> None:
        """Append request lines durably (per the fsync policy); raise ``SpoolFull`` when full."""
        data = b"".join(line + b"\n" for line in lines)
        async with self._lock:
            if self._size + len(data) > self._max_bytes:
                raise SpoolFull(
                    f"the spool {self.path} contains {self._size} bytes and the limit is {self._max_bytes} "
                    "(ORCH_SPOOL_MAX_BYTES); restore Redis so it can be replayed"
                )
            sync = self._fsync == "always" or (
                self._fsync == "interval" and time.monotonic() - self._last_fsync_s >= FSYNC_INTERVAL_S
            )
            await asyncio.to_thread(_append, self.path, data, sync)
            if sync:
                self._last_fsync_s = time.monotonic()
            self._size += len(data)
            self._pending_lines += len(lines)

    async def replay_batches(self) -> AsyncGenerator[list[bytes]]:
        """Yield the lines after the checkpoint in batches; call ``commit`` after applying each."""
        offset = self._read_offset()
        while True:
            lines, next_offset = await asyncio.to_thread(_read_lines, self.path, offset, REPLAY_BATCH_LINES)
            if not lines:
                return
            self._pending_offset = next_offset
            self._pending_batch_lines = len(lines)
            yield lines
            offset = next_offset

    async def commit(self) -> None:
        """Record that the last yielded batch was applied."""
        await asyncio.to_thread(_write_offset, self.offset_path, self._pending_offset)
        self._pending_lines = max(0, self._pending_lines - self._pending_batch_lines)
        self._pending_batch_lines = 0

    async def truncate_if_replayed(self) -> bool:
        """Empty the spool if every line was replayed and nothing was appended meanwhile."""
        async with self._lock:
            if self._read_offset() < self._size:
                return False
            await asyncio.to_thread(_truncate, self.path, self.offset_path)
            self._size = 0
            self._pending_lines = 0
            logger.info("spool {} replayed and truncated", self.path)
            return True

    def _read_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            logger.error(
                "spool checkpoint {} is unreadable; replaying the spool from its start", self.offset_path
            )
            return 0


def _count_lines(path: Path, offset: int) -> int:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _repair(path: Path) -> int:
    """Cut a last line that a crash left without its newline; return the file size.

    Such a line was never acked (the ack follows the completed write), so nothing is lost.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with path.open("r+b") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return size
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        os.fsync(handle.fileno())
    logger.warning("cut an unfinished last line of {} bytes from the spool {}", size - keep, path)
    return keep


def _append(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path, offset: int, max_lines: int) -> tuple[list[bytes], int]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            lines: list[bytes] = []
            position = offset
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a line still being written, or cut by a crash: left for later
                position += len(raw)
                lines.append(raw.rstrip(b"\n"))
                if len(lines) >= max_lines:
                    break
            return lines, position
    except FileNotFoundError:
        return [], offset


def _write_offset(path: Path, offset: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{offset}\n")
    os.replace(temporary, path)


def _truncate(path: Path, offset_path: Path) -> None:
    with path.open("wb") as handle:
        handle.truncate(0)
        os.fsync(handle.fileno())
    offset_path.unlink(missing_ok=True)
