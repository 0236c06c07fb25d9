"""The systemd notification protocol (sd_notify), without libsystemd.

systemd passes a datagram socket in ``NOTIFY_SOCKET`` to services of ``Type=notify``: a path, or
an abstract socket name written with a leading ``@``. Each message is a datagram of
newline-separated ``KEY=VALUE`` lines (``READY=1``, ``STOPPING=1``, ``STATUS=...``,
``WATCHDOG=1``), as described in sd_notify(3). With ``WatchdogSec=`` set, systemd also passes
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and restarts the service when no ``WATCHDOG=1`` arrives
within that interval.

Without ``NOTIFY_SOCKET`` every method does nothing, so the daemon runs the same outside systemd.
A send that fails with an ``OSError`` is logged, not raised, so notifications cannot stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping

from loguru import logger

from orchestrator.logs import Throttle

SEND_ERROR_LOG_INTERVAL_S = 60.0


class Notifier:
    """Sends sd_notify messages to the socket systemd named, or does nothing if it named none."""

    def __init__(self, address: str | bytes | None, *, watchdog_interval_s: float | None = None) -> None:
        """``address`` is a socket path, or an abstract name as bytes starting with a NUL byte."""
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s
        self._socket: socket.socket | None = None
        self._send_errors = Throttle(SEND_ERROR_LOG_INTERVAL_S)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from the environment."""
        env = os.environ if environ is None else environ
        return cls(
            _notify_address(env.get("NOTIFY_SOCKET", "")), watchdog_interval_s=_watchdog_interval_s(env)
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str | None = None) -> None:
        """Tell systemd that start-up finished; ``Type=notify`` units count as started from here."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(_status_line(status))
        self.notify(*lines)

    def stopping(self, status: str | None = None) -> None:
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(_status_line(status))
        self.notify(*lines)

    def status(self, text: str) -> None:
        """Set the one-line status that ``systemctl status`` shows."""
        self.notify(_status_line(text))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask systemd for ``seconds`` more before the current start or stop times out."""
        self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def notify(self, *lines: str) -> None:
        """Send ``lines`` as one datagram; log an ``OSError`` from the send instead of raising it."""
        if self.address is None:
            return
        message = "\n".join(lines).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            if count := self._send_errors.ready():
                logger.warning(
                    "systemd notification to {!r} failed ({} times since the last message): {}",
                    self.address,
                    count,
                    e,
                )

    async def watchdog_loop(self, stop: asyncio.Event) -> None:
        """Send ``WATCHDOG=1`` at half the watchdog interval until ``stop`` is set.

        Returns at once when systemd set no watchdog for this process. A ping shows only that
        the event loop runs: a loop blocked longer than the interval gets the service restarted.
        """
        if self.address is None or self.watchdog_interval_s is None:
            return
        period_s = self.watchdog_interval_s / 2
        logger.info("systemd watchdog: pinging every {:.3g}s", period_s)
        while not stop.is_set():
            self.watchdog()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await stop.wait()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _notify_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    logger.warning(
        "NOTIFY_SOCKET {!r} is neither a path nor an abstract socket name; not notifying systemd", value
    )
    return None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """Return the watchdog interval in seconds when it is meant for this process, else None."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        interval_us = int(usec)
    except ValueError:
        logger.warning("WATCHDOG_USEC {!r} is not an integer; the systemd watchdog is not served", usec)
        return None
    if interval_us <= 0:
        return None
    return interval_us / 1_000_000


def _status_line(text: str) -> str:
    # A newline would start a new KEY=VALUE line in the datagram.
    return "STATUS=" + " ".join(text.splitlines())
