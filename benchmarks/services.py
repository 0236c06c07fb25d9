"""The processes under test: a redis-server with AOF and an ``orchestrator serve`` daemon.

Both are children of this process, in a new temporary directory under /tmp. Redis listens only
on a Unix socket there (never a TCP port), and both are stopped by PID when the run ends.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon_process import DaemonProcess
from tests.redis_process import RedisProcess, free_port, short_temp_dir

KEY_PREFIX = "bench"
LOG_TAIL_LINES = 30
# Redis records in its latency monitor every event (a slow command, a fork, a slow AOF write or
# fsync) that takes at least this long.
LATENCY_MONITOR_THRESHOLD_MS = 5


class BenchRedis(RedisProcess):
    """The tests' redis-server with AOF, plus the latency monitor turned on."""

    def __init__(self) -> None:
        super().__init__(appendonly=True)

    def command(self) -> list[str]:
        return [*super().command(), "--latency-monitor-threshold", str(LATENCY_MONITOR_THRESHOLD_MS)]


@dataclass(frozen=True, slots=True)
class Services:
    redis: BenchRedis
    daemon: DaemonProcess
    work_dir: Path
    # The --daemon-env settings of the run, which the daemons of single phases get as well.
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def redis_pid(self) -> int:
        assert self.redis.process is not None
        return self.redis.process.pid

    @property
    def daemon_pid(self) -> int:
        assert self.daemon.process is not None
        return self.daemon.process.pid

    @property
    def socket_path(self) -> Path:
        return self.daemon.socket_path

    @property
    def metrics_url(self) -> str:
        """URL of the daemon's Prometheus metrics, or "" when its listener is off."""
        port = self.daemon.env.get("ORCH_HTTP_PORT", "0")
        return "" if port == "0" else f"http://127.0.0.1:{port}/metrics"


def daemon_env(redis_url: str, work_dir: Path, http_port: int, extra: dict[str, str]) -> dict[str, str]:
    """Return the daemon's ``ORCH_*`` settings: defaults except the Redis URL, paths and ``extra``.

    The metrics listener gets a free loopback port instead of the default one, which a daemon of
    the test suite may hold at the same time.
    """
    return {
        "ORCH_REDIS_URL": redis_url,
        "ORCH_STATE_DIR": str(work_dir / "state"),
        "ORCH_SOCKET_PATH": str(work_dir / "orch.sock"),
        "ORCH_KEY_PREFIX": KEY_PREFIX,
        "ORCH_HTTP_HOST": "127.0.0.1",
        "ORCH_HTTP_PORT": str(http_port),
        **extra,
    }


@contextlib.contextmanager
def running_services(extra_env: dict[str, str]) -> Iterator[Services]:
    """Start Redis (``appendonly yes``, ``appendfsync everysec``) and the daemon, and stop both after.

    On an error inside the block, the end of the daemon's log goes to stderr before cleanup.
    """
    redis = BenchRedis()
    work_dir = short_temp_dir("orch-bench-")
    env = daemon_env(redis.url, work_dir, free_port(), extra_env)
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    try:
        redis.start()
        daemon.start()
        yield Services(redis=redis, daemon=daemon, work_dir=work_dir, extra_env=extra_env)
    except BaseException:
        print_log_tail(daemon)
        raise
    finally:
        stop_daemon(daemon)
        redis.cleanup()
        shutil.rmtree(work_dir, ignore_errors=True)


def stop_daemon(daemon: DaemonProcess) -> None:
    if daemon.process is None:
        return
    try:
        daemon.stop(signal.SIGTERM)
    except subprocess.TimeoutExpired:
        print(
            f"the daemon (pid {daemon.process.pid}) did not stop on SIGTERM; sending SIGKILL", file=sys.stderr
        )
        daemon.stop(signal.SIGKILL)


def print_log_tail(daemon: DaemonProcess) -> None:
    lines = daemon.log().splitlines()[-LOG_TAIL_LINES:]
    if lines:
        print(f"last {len(lines)} lines of the daemon log {daemon.log_path}:", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
