"""Run a private redis-server and the ``orchestrator serve`` daemon for the interop tests.

Both bind Unix sockets inside a temporary directory and nothing else. The daemon is configured
only through ``ORCH_*`` environment variables, and the ``orchestrator queue`` commands run with
the same variables so that they read the same Redis keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis


def orchestrator_executable() -> Path | None:
    """Return the ``orchestrator`` console script beside this Python, or on PATH."""
    candidate = Path(sys.executable).parent / "orchestrator"
    if candidate.exists():
        return candidate
    found = shutil.which("orchestrator")
    return Path(found) if found else None


def _stop_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class RedisServer:
    """A redis-server listening only on a Unix socket, without persistence."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.socket_path = work_dir / "redis.sock"
        self.log_path = work_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server not found on PATH; install Redis 7 (Debian package redis-server)"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    "0",
                    "--unixsocket",
                    str(self.socket_path),
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.work_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with status {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(redis.RedisError, OSError):
                client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            time.sleep(0.05)
        raise TimeoutError(f"redis-server did not respond to PING within {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process, 10)
            self.process = None


class OrchestratorDaemon:
    """``orchestrator serve`` with its own key prefix and state directory."""

    def __init__(
        self,
        *,
        executable: Path,
        work_dir: Path,
        socket_path: Path,
        redis_url: str,
        key_prefix: str,
        gateway_url: str,
        gateway_token: str,
        gateway_id: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.executable = executable
        self.work_dir = work_dir
        self.socket_path = socket_path
        self.log_path = work_dir / "daemon.log"
        self.env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("ORCH_")},
            "ORCH_REDIS_URL": redis_url,
            "ORCH_SOCKET_PATH": str(socket_path),
            "ORCH_STATE_DIR": str(work_dir / "state"),
            "ORCH_KEY_PREFIX": key_prefix,
            "ORCH_GATEWAY_URL": gateway_url,
            "ORCH_GATEWAY_TOKEN": gateway_token,
            "ORCH_GATEWAY_ID": gateway_id,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, values: dict[str, str]) -> None:
        """Add ``ORCH_*`` settings to the daemon's and the CLI's environment, before start()."""
        if self.process is not None:
            raise RuntimeError("configure() must run before start(); the daemon reads its settings once")
        self.env.update(values)

    def start(self, timeout_s: float = 30.0) -> OrchestratorDaemon:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.executable), "serve"],
                env=self.env,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"orchestrator serve exited with status {self.process.returncode} before it responded to a ping; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.ping():
                return self
            time.sleep(0.1)
        raise TimeoutError(
            f"orchestrator serve did not respond to a ping within {timeout_s} s; log tail:\n{self.log_tail()}"
        )

    def ping(self) -> bool:
        """Send one v1 ping frame over the socket; return whether the daemon responded ok."""
        frame = {
            "v": 1,
            "id": f"interop-ping-{time.monotonic_ns()}",
            "type": "ping",
            "ts": int(time.time() * 1000),
        }
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(2)
                client.connect(str(self.socket_path))
                client.sendall(json.dumps(frame).encode() + b"\n")
                data = b""
                while b"\n" not in data:
                    chunk = client.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
            return bool(json.loads(data.split(b"\n", 1)[0]).get("ok"))
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process, 20)
            self.process = None

    def log_lines(self) -> list[str]:
        """Return every line the daemon wrote to stdout and stderr so far."""
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def cli_json(self, *args: str) -> Any:
        """Run ``orchestrator <args> --json`` with the daemon's environment and parse its output."""
        result = subprocess.run(
            [str(self.executable), *args, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"orchestrator {' '.join(args)} --json exited with status {result.returncode}: {result.stderr.strip()}"
            )
        return json.loads(result.stdout)

    def jobs(self) -> list[dict[str, Any]]:
        jobs = self.cli_json("queue", "list", "--limit", "1000")
        if not isinstance(jobs, list):
            raise TypeError(
                f"orchestrator queue list --json printed {type(jobs).__name__}, expected a JSON array"
            )
        return jobs

    def dead_letters(self) -> list[dict[str, Any]]:
        """Return the dead-letter queue: ``orchestrator queue list --status failed``."""
        jobs = self.cli_json("queue", "list", "--status", "failed", "--limit", "1000")
        if not isinstance(jobs, list):
            raise TypeError(
                f"orchestrator queue list --status failed --json printed {type(jobs).__name__}, expected a JSON array"
            )
        return jobs

    def inspect(self, job_id: str) -> dict[str, Any]:
        job = self.cli_json("queue", "inspect", job_id)
        if not isinstance(job, dict):
            raise TypeError(
                f"orchestrator queue inspect --json printed {type(job).__name__}, expected a JSON object"
            )
        return job
