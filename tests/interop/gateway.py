"""Start, drive and stop a real OpenClaw gateway for the interop tests.

Facts about openclaw 2026.9.6 that this module relies on:
- ``node openclaw.mjs gateway --port P --bind loopback`` starts it. Its state, config and home
  come from ``OPENCLAW_STATE_DIR``, ``OPENCLAW_CONFIG_PATH`` and ``HOME``, all inside a temporary
  directory here. It is ready when its log has a line ending in ``[gateway] ready`` (7 to 12 s).
- It starts child worker processes, so it runs in its own session and is stopped by signalling
  the whole process group.
- The WebSocket protocol is version 4. The server sends a ``connect.challenge`` event, the client
  sends a ``connect`` request carrying the token, and the server responds ``hello-ok``.
  Responses are ``{type:"res", id, ok, payload|error}``. The ``agent`` method responds twice with
  the same id, first ``accepted`` and then the final result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

PLUGIN_ID = "openclaw-orchestrator"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
READY_LINE = re.compile(r"\[gateway\] ready\s*$")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class GatewayPaths:
    node_bin: Path
    openclaw_mjs: Path
    plugin_dir: Path


@dataclass
class GatewayConfig:
    """The parts of the gateway config the tests vary."""

    port: int
    token: str
    model_base_url: str
    plugin_config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self, plugin_dir: Path, log_file: Path) -> dict[str, Any]:
        config: dict[str, Any] = {
            "gateway": {
                "mode": "local",
                "bind": "loopback",
                "port": self.port,
                "auth": {"mode": "token", "token": self.token},
                "tools": {"allow": ["sessions_spawn", "sessions_send"]},
            },
            "models": {
                "mode": "replace",
                "providers": {
                    "mock": {
                        "baseUrl": self.model_base_url,
                        "apiKey": "x",
                        "api": "openai-completions",
                        "models": [{"id": "m1", "name": "m1"}],
                    }
                },
            },
            "agents": {
                "defaults": {
                    "model": {"primary": "mock/m1"},
                    "thinkingDefault": "off",
                    "heartbeat": {"every": "0m"},
                }
            },
            # Without these, sessions_spawn is hidden behind tool search.
            "tools": {"toolSearch": False, "codeMode": False},
            "logging": {"file": str(log_file)},
            "plugins": {
                "load": {"paths": [str(plugin_dir)]},
                "entries": {
                    PLUGIN_ID: {
                        "enabled": True,
                        # agent_end is withheld from plugins without conversation access.
                        "hooks": {"allowConversationAccess": True},
                        "config": self.plugin_config,
                    }
                },
            },
        }
        _deep_merge(config, self.extra)
        return config


def _deep_merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value


class GatewayProcess:
    """One gateway process with its own temporary state directory."""

    def __init__(self, paths: GatewayPaths, config: GatewayConfig, work_dir: Path) -> None:
        self.paths = paths
        self.config = config
        self.work_dir = work_dir
        self.state_dir = work_dir / "state"
        self.home_dir = work_dir / "home"
        self.config_path = work_dir / "openclaw.json"
        self.log_file = work_dir / "gateway-file.log"
        self.stdout_path = work_dir / "gateway-stdout.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Unix time (s) when the last start printed its ready line, comparable with job timestamps
        self.ready_at: float | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.config.port}"

    def write_config(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.home_dir.mkdir(parents=True, exist_ok=True)
        rendered = self.config.render(self.paths.plugin_dir, self.log_file)
        self.config_path.write_text(json.dumps(rendered, indent=2))

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OPENCLAW_", "OPENAI_", "ANTHROPIC_", "NODE_OPTIONS"))
        }
        env.update(
            {
                "HOME": str(self.home_dir),
                "OPENCLAW_STATE_DIR": str(self.state_dir),
                "OPENCLAW_CONFIG_PATH": str(self.config_path),
                "OPENCLAW_GATEWAY_TOKEN": self.config.token,
                "OPENCLAW_SKIP_CHANNELS": "1",
                "OPENCLAW_DISABLE_BONJOUR": "1",
                "OPENCLAW_NO_RESPAWN": "1",
                "OPENCLAW_OFFLINE": "1",
                "OPENCLAW_EXEC_SHELL_SNAPSHOT": "0",
                "NO_COLOR": "1",
            }
        )
        return env

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the gateway and wait for its ready line; raise with the log tail on failure."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"gateway already running as PID {self.process.pid}")
        self.write_config()
        self.starts += 1
        offset = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        with self.stdout_path.open("ab") as output:
            output.write(f"\n=== gateway start {self.starts} ===\n".encode())
            offset += len(f"\n=== gateway start {self.starts} ===\n".encode())
            self.process = subprocess.Popen(
                [
                    str(self.paths.node_bin),
                    str(self.paths.openclaw_mjs),
                    "gateway",
                    "--port",
                    str(self.config.port),
                    "--bind",
                    "loopback",
                ],
                cwd=self.work_dir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(offset, timeout_s)

    def restart(self, *, kill: bool = False, timeout_s: float = 90.0) -> None:
        """Stop the gateway and start it again on the same port, state directory and config.

        With ``kill`` it is stopped with SIGKILL, so no stop hook runs and runs in progress are
        left for the next start to settle, as after a crash. Without it, SIGTERM lets the gateway
        drain its active runs first, which can take minutes.
        """
        self.stop(sig=signal.SIGKILL if kill else signal.SIGTERM)
        self.start(timeout_s)

    def _wait_ready(self, offset: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with status {self.process.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            for line in self.log_lines(offset):
                if READY_LINE.search(line):
                    self.ready_at = time.time()
                    return
            time.sleep(0.2)
        raise TimeoutError(f"gateway not ready after {timeout_s} s; log tail:\n{self.log_tail()}")

    def log_lines(self, offset: int = 0) -> list[str]:
        """Return the gateway's stdout and stderr lines from byte offset on, colour codes removed."""
        if not self.stdout_path.exists():
            return []
        with self.stdout_path.open("rb") as log:
            log.seek(offset)
            data = log.read().decode("utf-8", "replace")
        return [ANSI_ESCAPE.sub("", line) for line in data.splitlines()]

    def log_text(self) -> str:
        return "\n".join(self.log_lines())

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Signal the gateway's process group, wait, and kill the group if it does not exit.

        Descendants that moved to a process group of their own (the gateway's spawn broker does)
        are killed by PID once the gateway has exited.
        """
        process = self.process
        if process is None:
            return None
        descendants = _descendants(process.pid)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # Child workers may outlive the leader; the group id is the leader's PID.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        _kill_survivors(descendants, str(self.paths.node_bin), grace_s=5.0)
        self.process = None
        return process.returncode


def _descendants(root_pid: int) -> list[tuple[int, str]]:
    """Return (pid, command line) of every live descendant of root_pid, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            # The command name in brackets may contain spaces; the parent PID follows it.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return [(pid, _command_line(pid)) for pid in found]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_survivors(processes: list[tuple[int, str]], node_bin: str, grace_s: float) -> None:
    """SIGKILL the listed processes still alive after grace_s, if they still run node_bin."""
    deadline = time.monotonic() + grace_s
    remaining = list(processes)
    while remaining and time.monotonic() < deadline:
        remaining = [
            (pid, command) for pid, command in remaining if _command_line(pid) == command and command
        ]
        if remaining:
            time.sleep(0.1)
    for pid, command in remaining:
        # The command line check guards against a PID reused by an unrelated process.
        if node_bin in command and _command_line(pid) == command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class GatewayRpcError(RuntimeError):
    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"gateway method {method} failed: {error}")
        self.method = method
        self.error = error


class GatewayClient:
    """Operator WebSocket client for the gateway's RPC protocol version 4."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, timeout_s: float = 15.0) -> dict[str, Any]:
        self._ws = await websockets.connect(self.url, max_size=32 * 1024 * 1024, open_timeout=timeout_s)
        challenge = json.loads(await asyncio.wait_for(self._ws.recv(), timeout_s))
        if challenge.get("event") != "connect.challenge":
            raise RuntimeError(f"expected a connect.challenge event first, got {challenge}")
        self._reader = asyncio.create_task(self._read_loop())
        hello = await self.request(
            "connect",
            {
                "minProtocol": 4,
                "maxProtocol": 4,
                "client": {
                    "id": "gateway-client",
                    "version": "0.1.0",
                    "platform": "linux",
                    "mode": "backend",
                },
                "role": "operator",
                "scopes": ["operator.read", "operator.write", "operator.admin"],
                "caps": [],
                "auth": {"token": self.token},
            },
            timeout_s=timeout_s,
        )
        if hello.get("type") != "hello-ok":
            raise RuntimeError(f"connect did not return hello-ok: {hello}")
        return hello

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def _read_loop(self) -> None:
        async for raw in self._ws:
            frame = json.loads(raw)
            if frame.get("type") == "res":
                queue = self._waiters.get(str(frame.get("id")))
                if queue is not None:
                    queue.put_nowait(frame)
            elif frame.get("type") == "event":
                self.events.append(frame)

    async def request(
        self, method: str, params: dict[str, Any], *, final: bool = False, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Send one request and return its payload. With final=True, skip the "accepted" response."""
        request_id = uuid.uuid4().hex
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[request_id] = queue
        try:
            await self._ws.send(
                json.dumps({"type": "req", "id": request_id, "method": method, "params": params})
            )
            deadline = time.monotonic() + timeout_s
            while True:
                remaining = deadline - time.monotonic()
                frame = await asyncio.wait_for(queue.get(), max(remaining, 0.01))
                if not frame.get("ok"):
                    raise GatewayRpcError(method, frame.get("error"))
                payload = frame.get("payload") or {}
                if final and isinstance(payload, dict) and payload.get("status") == "accepted":
                    continue
                return payload if isinstance(payload, dict) else {"value": payload}
        finally:
            self._waiters.pop(request_id, None)

    async def agent_turn(
        self, message: str, *, session_key: str, run_id: str | None = None, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Run one agent turn in the session and return the final response of the agent method."""
        run_id = run_id or f"t-{uuid.uuid4().hex[:12]}"
        return await self.request(
            "agent",
            {"message": message, "sessionKey": session_key, "idempotencyKey": run_id},
            final=True,
            timeout_s=timeout_s,
        )

    async def sessions(self, limit: int = 200) -> list[dict[str, Any]]:
        payload = await self.request("sessions.list", {"limit": limit})
        sessions = payload.get("sessions", [])
        return sessions if isinstance(sessions, list) else []


@contextlib.contextmanager
def running_gateway(paths: GatewayPaths, config: GatewayConfig, work_dir: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(paths, config, work_dir)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()
