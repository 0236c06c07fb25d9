"""A daemon of its own for one phase: ``orchestrator serve`` on the benchmark's Redis, under its own key prefix.

The dispatch and recovery phases need settings that the main daemon does not have (a gateway,
a tiny backoff), and a daemon that starts after its jobs are written. Each such daemon gets its
own key prefix, gateway id, state directory and socket under the run's directory, no metrics
listener, and text logs, because the phases read time stamps from its log. It is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from benchmarks.ingest import BenchmarkError
from benchmarks.services import Services, daemon_env, print_log_tail
from orchestrator.keys import Keys
from tests.daemon_process import DaemonProcess

PHASE_GATEWAY_ID = "bench-gw"
# A phase daemon has no client left when it is stopped, so it should exit within a second. This
# limit is shorter than the main daemon's 30 s because a daemon sometimes never exits after
# SIGTERM (its outbox relay loses its cancellation), and each such stop would cost the full wait.
STOP_TIMEOUT_S = 5.0
KILL_TIMEOUT_S = 30.0
LOG_POLL_S = 0.01
# loguru's text format starts each line with "YYYY-MM-DD HH:mm:ss.SSS" in local time.
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
LOG_TIME_CHARS = 23
LOG_FIELD_SEPARATOR = " | "
# Every message starts with the empty string, so this marker counts all log records.
ANY_LINE = ""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the daemon's log, with the Unix time of its own time stamp."""

    at_s: float
    message: str


@dataclass(slots=True)
class MarkerMatches:
    """The first and last log line whose message starts with one marker, and how many did."""

    count: int = 0
    first: LogLine | None = None
    last: LogLine | None = None


def parse_log_line(text: str) -> LogLine | None:
    """Return the time stamp and message of a loguru text line, or None for another line."""
    parts = text.split(LOG_FIELD_SEPARATOR, 3)
    if len(parts) != 4 or len(parts[0]) != LOG_TIME_CHARS:
        return None
    try:
        moment = datetime.strptime(parts[0], LOG_TIME_FORMAT)
    except ValueError:
        return None
    return LogLine(at_s=moment.timestamp(), message=parts[3])


class LogFollower:
    """Reads a growing log file from where it stopped, and tracks the lines of chosen markers."""

    def __init__(self, path: Path, markers: tuple[str, ...]) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self.matches: dict[str, MarkerMatches] = {marker: MarkerMatches() for marker in markers}

    def scan(self) -> None:
        """Read the lines appended since the last scan and record those that match a marker."""
        if not self._path.exists():
            return
        with self._path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        complete, self._partial = data[:cut], data[cut:]
        for raw in complete.decode(errors="replace").splitlines():
            self._match(raw)

    def _match(self, raw: str) -> None:
        line = parse_log_line(raw)
        if line is None:
            return
        for marker, found in self.matches.items():
            if line.message.startswith(marker):
                found.count += 1
                found.first = found.first or line
                found.last = line


@dataclass(slots=True)
class PhaseDaemon:
    """One ``orchestrator serve`` process with settings of its own, started by a phase."""

    process: DaemonProcess
    keys: Keys
    gateway_id: str = PHASE_GATEWAY_ID
    started_at_s: float = 0.0  # Unix time just before the process was created
    followers: list[LogFollower] = field(default_factory=list)
    # How the process ended: "exited on SIGTERM", or "killed" when it outlived STOP_TIMEOUT_S.
    stop_outcome: str = "not stopped"

    @classmethod
    def create(
        cls, services: Services, name: str, settings: dict[str, str], *, redis_url: str | None = None
    ) -> PhaseDaemon:
        """Prepare a daemon in ``services.work_dir / name`` with the key prefix ``bench-NAME``.

        ``settings`` are ``ORCH_*`` variables, applied after the run's ``--daemon-env`` settings.
        The daemon uses the run's Redis unless ``redis_url`` names another.
        """
        work_dir = services.work_dir / name
        work_dir.mkdir()
        prefix = f"bench-{name}"
        overrides = {
            **services.extra_env,
            "ORCH_KEY_PREFIX": prefix,
            "ORCH_GATEWAY_ID": PHASE_GATEWAY_ID,
            "ORCH_LOG_FORMAT": "text",
            **settings,
        }
        env = daemon_env(redis_url or services.redis.url, work_dir, 0, overrides)
        return cls(process=DaemonProcess(env, work_dir / "daemon.log"), keys=Keys(prefix))

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    @property
    def socket_path(self) -> Path:
        return self.process.socket_path

    def start(self) -> None:
        """Create the process and return at once; ``started_at_s`` is the time just before."""
        self.started_at_s = time.time()
        self.process.start(wait=False)

    async def wait_ready(self) -> None:
        """Wait until the daemon responds to a ping, in a thread, so that the event loop keeps serving."""
        try:
            await asyncio.to_thread(self.process.wait_ready)
        except AssertionError as e:
            raise BenchmarkError(f"the {self.keys.prefix} daemon did not start: {e}") from None

    def follow(self, markers: tuple[str, ...]) -> LogFollower:
        follower = LogFollower(self.process.log_path, markers)
        self.followers.append(follower)
        return follower

    async def wait_for(self, follower: LogFollower, marker: str, timeout_s: float) -> LogLine:
        """Wait until a line starting with ``marker`` is in the log, and return the first such line.

        Raises ``BenchmarkError`` when the daemon exits first or ``timeout_s`` passes.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            follower.scan()
            line = follower.matches[marker].first
            if line is not None:
                return line
            process = self.process.process
            if process is not None and process.poll() is not None:
                raise BenchmarkError(f"the {self.keys.prefix} daemon exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"the {self.keys.prefix} daemon logged no {marker!r} within {timeout_s:.0f}s"
                )
            await asyncio.sleep(LOG_POLL_S)

    async def stop(self) -> None:
        """Send SIGTERM, and SIGKILL if the daemon is still running ``STOP_TIMEOUT_S`` later.

        Waits in a thread, so that the event loop (and a gateway stand-in on it) keeps serving.
        """
        process = self.process.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
            self.stop_outcome = "exited on SIGTERM"
            return
        except subprocess.TimeoutExpired:
            print(
                f"the {self.keys.prefix} daemon (pid {process.pid}) did not exit within "
                f"{STOP_TIMEOUT_S:g} s of SIGTERM; sending SIGKILL",
                file=sys.stderr,
            )
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, KILL_TIMEOUT_S)
        self.stop_outcome = f"killed: still running {STOP_TIMEOUT_S:g} s after SIGTERM"

    def print_log_tail(self) -> None:
        print_log_tail(self.process)

    def meter_view(self, services: Services) -> Services:
        """Return ``services`` with this daemon in place of the main one, for a ``PhaseMeter``."""
        return dataclasses.replace(services, daemon=self.process)


@contextlib.asynccontextmanager
async def stopped_after(daemon: PhaseDaemon) -> AsyncIterator[PhaseDaemon]:
    """Stop ``daemon`` when the block ends, and print the end of its log if the block failed."""
    try:
        yield daemon
    except BaseException:
        daemon.print_log_tail()
        raise
    finally:
        await daemon.stop()
