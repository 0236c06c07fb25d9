"""sd_notify messages, read from a datagram socket the test creates in place of systemd's."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from orchestrator.systemd import Notifier

DEADLINE_S = 10.0


@pytest.fixture
def notify_socket(work_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket at a path, and the NOTIFY_SOCKET value that names it."""
    path = work_dir / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(DEADLINE_S)
    yield listener, str(path)
    listener.close()


def receive(listener: socket.socket) -> str:
    return listener.recv(4096).decode()


def test_ready_stopping_status_watchdog(notify_socket: tuple[socket.socket, str]) -> None:
    listener, address = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready()
    notifier.status("connected to Redis")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()
    assert receive(listener) == "READY=1"
    assert receive(listener) == "STATUS=connected to Redis"
    assert receive(listener) == "WATCHDOG=1"
    assert receive(listener) == "STOPPING=1"


def test_status_with_ready_and_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    listener, address = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.ready(status="serving on /run/o.sock")
    notifier.stopping(status="stopping: phase 1 of 4")
    notifier.close()
    assert receive(listener) == "READY=1\nSTATUS=serving on /run/o.sock"
    assert receive(listener) == "STOPPING=1\nSTATUS=stopping: phase 1 of 4"


def test_status_newlines_flattened(notify_socket: tuple[socket.socket, str]) -> None:
    listener, address = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.status("first line\nREADY=1")
    notifier.close()
    assert receive(listener) == "STATUS=first line READY=1"


def test_extend_timeout(notify_socket: tuple[socket.socket, str]) -> None:
    listener, address = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.extend_timeout(30)
    notifier.close()
    assert receive(listener) == "EXTEND_TIMEOUT_USEC=30000000"


def test_abstract_socket_address() -> None:
    name = f"orch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(DEADLINE_S)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.address == b"\0" + name.encode()
        notifier.ready()
        notifier.close()
        assert receive(listener) == "READY=1"


def test_unset_socket_is_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("nothing listens")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()


def test_unsupported_address_disables() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled


def test_send_failure_logged_once(work_dir: Path) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(work_dir / "nobody-listens.sock")})
        notifier.ready()
        notifier.ready()
        notifier.close()
    finally:
        logger.remove(sink)
    assert len(messages) == 1
    assert "systemd notification to" in messages[0]


@pytest.mark.parametrize(
    ("env", "expected_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_from_env(env: dict[str, str], expected_s: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval_s == expected_s


async def test_watchdog_loop_pings_until_stopped(notify_socket: tuple[socket.socket, str]) -> None:
    listener, address = notify_socket
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    # 20 ms interval: the loop pings every 10 ms, so three pings arrive well within the deadline.
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"})
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.watchdog_loop(stop))
    async with asyncio.timeout(DEADLINE_S):
        pings = [(await loop.sock_recv(listener, 4096)).decode() for _ in range(3)]
        stop.set()
        await task
    notifier.close()
    assert pings == ["WATCHDOG=1"] * 3


async def test_watchdog_loop_returns_without_watchdog(notify_socket: tuple[socket.socket, str]) -> None:
    _, address = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    async with asyncio.timeout(DEADLINE_S):
        await notifier.watchdog_loop(asyncio.Event())
