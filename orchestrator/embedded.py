"""A managed redis-server child for the embedded default (no Redis URL configured).

The child listens only on a Unix socket in the state directory (no TCP port), keeps an
append-only file (``appendfsync everysec``) and never evicts keys. It is started before the
daemon serves and stopped after the daemon has finished writing. On Linux the child gets
``PR_SET_PDEATHSIG`` so that it stops with SIGTERM, flushing its AOF, if the daemon is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
from pathlib import Path

import redis.asyncio as aioredis
from loguru import logger

from orchestrator.connection import REDIS_DOWN_ERRORS
from orchestrator.errors import EmbeddedRedisError

POLL_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1
INSTALL_HINT = (
    "install it (Debian/Ubuntu: `sudo apt-get install redis-server`), point ORCH_REDIS_SERVER_PATH "
    "at the binary, or set ORCH_REDIS_URL to use an existing Redis"
)


def find_redis_server(configured: Path | None) -> Path:
    """Return the redis-server binary to run, or raise ``EmbeddedRedisError`` with the fix."""
    if configured is not None:
        if configured.is_file() and os.access(configured, os.X_OK):
            return configured
        raise EmbeddedRedisError(
            f"redis-server binary {configured} is missing or not executable; {INSTALL_HINT}"
        )
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError(f"no redis-server found on PATH; {INSTALL_HINT}")
    return Path(found)


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when its parent exits (runs in the child)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EmbeddedRedis:
    """Start, health-check and stop one redis-server child."""

    def __init__(self, *, binary: Path, data_dir: Path, socket_path: Path) -> None:
        self._binary = binary
        self._data_dir = data_dir
        self._socket_path = socket_path
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{self._socket_path}"

    @property
    def log_path(self) -> Path:
        return self._data_dir / "redis.log"

    @property
    def stderr_path(self) -> Path:
        return self._data_dir / "redis.stderr"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        return [
            str(self._binary),
            "--port", "0",
            "--unixsocket", str(self._socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self._data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip

    async def start(self, timeout_s: float) -> None:
        """Start the child and wait until it responds to PING, or raise ``EmbeddedRedisError``."""
        self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._stop_leftover()
        preexec = _die_with_parent if sys.platform == "linux" else None
        try:
            with self.stderr_path.open("ab") as stderr:
                self._process = await asyncio.create_subprocess_exec(
                    *self.command(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                    preexec_fn=preexec,
                )
        except OSError as e:
            raise EmbeddedRedisError(f"cannot start {self._binary}: {e}; {INSTALL_HINT}") from e
        logger.info("started embedded redis-server pid {} on {}", self._process.pid, self._socket_path)
        await self._wait_ready(timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
        client = aioredis.Redis(unix_socket_path=str(self._socket_path), socket_connect_timeout=1.0)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self._process.returncode is not None:
                        raise EmbeddedRedisError(await self._exit_message())
                    with contextlib.suppress(*REDIS_DOWN_ERRORS):
                        if await client.ping():
                            logger.info("embedded redis-server is ready; data in {}", self._data_dir)
                            return
                    await asyncio.sleep(POLL_INTERVAL_S)
        except TimeoutError:
            await self.stop()
            raise EmbeddedRedisError(
                f"embedded redis-server did not respond on {self._socket_path} within {timeout_s}s; "
                f"see {self.log_path}"
            ) from None
        finally:
            await client.aclose()

    async def _exit_message(self) -> str:
        assert self._process is not None
        detail = _tail(self.stderr_path) or _tail(self.log_path) or "no output"
        return f"embedded redis-server exited with code {self._process.returncode} at start: {detail}"

    async def _stop_leftover(self) -> None:
        """Shut down a redis-server left on our socket by a daemon that was killed."""
        if not self._socket_path.exists():
            return
        client = aioredis.Redis(unix_socket_path=str(self._socket_path), socket_connect_timeout=1.0)
        try:
            await client.ping()
        except REDIS_DOWN_ERRORS:
            logger.info("removing stale Redis socket file {}", self._socket_path)
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
            return
        finally:
            await client.aclose()
        logger.warning(
            "a redis-server from an earlier run still serves {}; shutting it down",
            self._socket_path,
        )
        client = aioredis.Redis(unix_socket_path=str(self._socket_path), socket_connect_timeout=1.0)
        with contextlib.suppress(*REDIS_DOWN_ERRORS):
            await client.shutdown(nosave=False)
        await client.aclose()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            while self._socket_path.exists():  # noqa: ASYNC110 - the other process's exit has no event
                await asyncio.sleep(POLL_INTERVAL_S)

    async def stop(self) -> None:
        """Stop the child with SIGTERM (Redis flushes the AOF on it); kill it if it hangs."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            logger.error(
                "embedded redis-server pid {} ignored SIGTERM for {}s; killing it",
                process.pid,
                STOP_TIMEOUT_S,
            )
            process.kill()
            await process.wait()
        logger.info("stopped embedded redis-server pid {} (exit code {})", process.pid, process.returncode)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])
