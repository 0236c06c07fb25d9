"""A stand-in for the orchestrator daemon: a Unix socket server that records wire protocol v1
frames from the gateway plugin and acknowledges each one.

It runs in background threads, so it works in synchronous and asynchronous tests alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Frame = dict[str, Any]


@dataclass(frozen=True)
class Received:
    """One request line and the response the sink wrote for it."""

    raw: str
    frame: Frame
    response: dict[str, Any]


def ack(frame: Frame) -> dict[str, Any]:
    """The success response the protocol defines for an event that belongs to no job yet."""
    return {"id": frame.get("id"), "ok": True, "job_id": None, "tracked": True}


class FrameSink:
    """Listens on ``socket_path`` and responds to every request line with ``respond(frame)``."""

    def __init__(self, socket_path: Path, respond: Callable[[Frame], dict[str, Any]] = ack) -> None:
        self.socket_path = socket_path
        self.respond = respond
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.connections_accepted = 0

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def frames(self) -> list[Frame]:
        return [item.frame for item in self.received]

    def start(self) -> FrameSink:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, name="frame-sink-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and remove the socket file."""
        self._stopping.set()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connection.close()
        for thread in self._threads:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def __enter__(self) -> FrameSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            with self._lock:
                self._connections.add(connection)
                self.connections_accepted += 1
            thread = threading.Thread(
                target=self._serve, args=(connection,), name="frame-sink-conn", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        try:
            while not self._stopping.is_set():
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    raw = line.decode("utf-8")
                    frame = json.loads(raw)
                    response = self.respond(frame)
                    with self._lock:
                        self._received.append(Received(raw, frame, response))
                    connection.sendall(json.dumps(response).encode() + b"\n")
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def find(self, predicate: Callable[[Frame], bool]) -> Frame | None:
        for frame in self.frames():
            if predicate(frame):
                return frame
        return None

    async def wait_for(
        self, predicate: Callable[[Frame], bool], description: str, timeout_s: float = 60.0
    ) -> Frame:
        """Return the first received frame that satisfies predicate, waiting up to timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.find(predicate)
            if frame is not None:
                return frame
            if time.monotonic() > deadline:
                hooks = [(f.get("type"), f.get("hook")) for f in self.frames()]
                raise TimeoutError(f"no frame for {description} within {timeout_s} s; received {hooks}")
            await asyncio.sleep(0.05)
