"""Real redis-server processes for tests, on Unix sockets or free loopback ports in temp dirs.

Nothing here touches port 6379 or any server the tests did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def short_temp_dir(prefix: str) -> Path:
    """Return a new directory under /tmp, short enough for Unix socket paths."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class RedisProcess:
    """One redis-server child listening on a Unix socket, or on a loopback TCP port."""

    def __init__(self, *, tcp: bool = False, appendonly: bool = False) -> None:
        self.dir = short_temp_dir("orch-redis-")
        self.socket_path = self.dir / "redis.sock"
        self.port = free_port() if tcp else 0
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; .ci/run installs it"
        return [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.dir}")
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {READY_TIMEOUT_S}s")

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(1.0)
                client.connect(str(self.socket_path))
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by PID and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        self.process.wait(timeout=30)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
