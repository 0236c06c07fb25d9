"""Shared parts of the chaos tests: a client that resends like the bridge plugin, frames, checks.

Every wait here ends on an event (an ack, a log line, a file change) or on a deadline. Nothing
assumes how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from orchestrator.jobs import JobStatus
from orchestrator.keys import Keys
from orchestrator.store import JobStore
from tests.daemon_process import DaemonProcess
from tests.events import frame, sample
from tests.redis_process import RedisProcess

# Error codes after which the bridge plugin keeps the event and sends it again later.
RETRYABLE_CODES = frozenset({"overloaded", "internal"})
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 0.5
RESEND_DELAY_S = 0.1
POLL_S = 0.02
CHECK_CHUNK = 1_000
# Set this to a directory to keep a copy of each test's daemon log, because the work directory is deleted.
CHAOS_LOG_DIR_VARIABLE = "CHAOS_LOG_DIR"


# --- frames ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnEvent:
    """One subagent_spawned frame that creates one job, with the ids to find that job by."""

    event_id: str
    child_session_key: str
    run_id: str
    line: bytes


class SpawnFrames:
    """Builds subagent_spawned frames from the captured sample, each with a new child and run."""

    def __init__(self, test_name: str) -> None:
        self._test_name = test_name
        self._template = frame(sample("spawn success: subagent_spawned"))
        self._ended_template = frame(sample("spawn success: subagent_ended"))

    def make(self, client_name: str, number: int) -> SpawnEvent:
        event_id = f"{self._test_name}-{client_name}-{number}"
        child = f"agent:main:subagent:{uuid.uuid4()}"
        run_id = str(uuid.uuid4())
        data = {
            **self._template,
            "id": event_id,
            "event": {**self._template["event"], "childSessionKey": child, "runId": run_id},
            "ctx": {**self._template["ctx"], "childSessionKey": child, "runId": run_id},
        }
        return SpawnEvent(event_id, child, run_id, orjson.dumps(data) + b"\n")

    def ended(self, spawned: SpawnEvent, outcome: str, *, error: str) -> dict[str, Any]:
        """Return the subagent_ended frame of the child that ``spawned`` started."""
        template = self._ended_template
        event = {
            **template["event"],
            "targetSessionKey": spawned.child_session_key,
            "runId": spawned.run_id,
            "outcome": outcome,
            "error": error,
        }
        ctx = {**template["ctx"], "childSessionKey": spawned.child_session_key, "runId": spawned.run_id}
        return {**template, "id": f"{spawned.event_id}-ended", "event": event, "ctx": ctx}


# --- the resending client -------------------------------------------------------------------------


@dataclass(slots=True)
class AckTally:
    tracked: int = 0
    untracked: int = 0

    @property
    def total(self) -> int:
        return self.tracked + self.untracked


class BridgeClient:
    """Sends events to the daemon socket the way the bridge plugin does.

    Every event stays in ``unacked`` until an ``ok`` response for it arrives. After a connection is
    lost the client reconnects with a backoff and sends every unacked event again, in order and
    with the same event id. ``overloaded`` and ``internal`` errors are sent again after a short
    delay. Any other error drops the event and is kept in ``rejected``. At most ``window`` lines
    wait for a response at once on a connection.
    """

    def __init__(self, socket_path: Path, name: str, *, window: int = 64) -> None:
        self.socket_path = socket_path
        self.name = name
        self.window = window
        self.unacked: dict[str, bytes] = {}
        self.acks: dict[str, dict[str, Any]] = {}
        self.rejected: list[dict[str, Any]] = []
        self.retryable_errors = 0
        self.lines_written = 0
        self.connections = 0
        self.submitted = 0
        self._to_send: deque[str] = deque()
        self._session = 0
        self._wake = asyncio.Event()
        self._input_closed = False

    @property
    def done(self) -> bool:
        return self._input_closed and not self.unacked

    def submit(self, event_id: str, line: bytes) -> None:
        """Queue one event. ``line`` is its request line, newline included."""
        self.unacked[event_id] = line
        self._to_send.append(event_id)
        self.submitted += 1
        self._wake.set()

    def close_input(self) -> None:
        """Declare that no more events will be submitted, so ``run`` returns once all are acked."""
        self._input_closed = True
        self._wake.set()

    def tally(self) -> AckTally:
        result = AckTally()
        for ack in self.acks.values():
            if ack["tracked"]:
                result.tracked += 1
            else:
                result.untracked += 1
        return result

    async def wait_acked(self, event_id: str, *, timeout_s: float) -> dict[str, Any]:
        """Wait until ``run`` has delivered one submitted event, and return its ack."""
        await wait_until(lambda: event_id in self.acks, timeout_s=timeout_s, what=f"the ack of {event_id}")
        return self.acks[event_id]

    async def run(self) -> None:
        """Deliver every submitted event. The caller bounds this with a timeout."""
        backoff_s = RECONNECT_MIN_S
        while not self.done:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
                continue
            backoff_s = RECONNECT_MIN_S
            self.connections += 1
            self._session += 1
            self._to_send = deque(self.unacked)
            try:
                await self._send_until_closed(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

    async def _send_until_closed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        window = asyncio.Semaphore(self.window)
        closed = asyncio.Event()

        async def read_responses() -> None:
            try:
                while line := await reader.readline():
                    window.release()
                    self._handle(orjson.loads(line))
            except (ConnectionError, OSError):
                pass
            finally:
                closed.set()
                for _ in range(self.window):
                    window.release()  # unblock a writer waiting for room
                self._wake.set()

        reading = asyncio.create_task(read_responses())
        try:
            while not self.done and not closed.is_set():
                if not self._to_send:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                event_id = self._to_send.popleft()
                line = self.unacked.get(event_id)
                if line is None:
                    continue  # acked since it was queued
                await window.acquire()
                if closed.is_set():
                    break
                writer.write(line)
                self.lines_written += 1
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # The daemon went away, and run() reconnects.
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    def _handle(self, response: dict[str, Any]) -> None:
        event_id = response.get("id")
        if not isinstance(event_id, str):
            self.rejected.append(response)  # the daemon could not read the line's id
            return
        if response["ok"]:
            if self.unacked.pop(event_id, None) is not None:
                self.acks[event_id] = response
        elif response["error"]["code"] in RETRYABLE_CODES:
            self.retryable_errors += 1
            session = self._session
            asyncio.get_running_loop().call_later(RESEND_DELAY_S, self._resend, session, event_id)
        else:
            self.rejected.append(response)
            self.unacked.pop(event_id, None)
        self._wake.set()

    def _resend(self, session: int, event_id: str) -> None:
        # A new connection sends every unacked event anyway.
        if session == self._session and event_id in self.unacked:
            self._to_send.append(event_id)
            self._wake.set()


def total_tally(clients: Iterable[BridgeClient]) -> AckTally:
    result = AckTally()
    for client in clients:
        part = client.tally()
        result.tracked += part.tracked
        result.untracked += part.untracked
    return result


async def deliver_all(clients: list[BridgeClient], tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Close every client's input and wait until each has all its events acked."""
    for client in clients:
        client.close_input()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*tasks)
    except TimeoutError:
        unacked = sum(len(client.unacked) for client in clients)
        raise AssertionError(f"{unacked} events still unacked after {timeout_s}s") from None


async def stop_clients(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- waiting --------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def wait_until_true(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    """Like ``wait_until``, for a condition that has to query something."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(POLL_S * 5)


class LogWatcher:
    """Reader of a daemon log file as it grows. Positions are offsets into the text read so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = ""
        self._offset = 0

    def refresh(self) -> str:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.text
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        self.text += complete.decode(errors="replace")
        return self.text

    def mark(self) -> int:
        """Return the current end of the log, to look only at lines written after it."""
        return len(self.refresh())

    def count(self, needle: str, start: int = 0) -> int:
        return self.refresh().count(needle, start)

    async def wait_for(self, needle: str, *, start: int = 0, timeout_s: float) -> int:
        """Wait until ``needle`` appears after ``start``, and return the position just after it."""
        deadline = time.monotonic() + timeout_s
        while (found := self.refresh().find(needle, start)) < 0:
            if time.monotonic() > deadline:
                tail = "\n".join(self.text.splitlines()[-40:])
                raise AssertionError(f"{needle!r} not logged within {timeout_s}s; log tail:\n{tail}")
            await asyncio.sleep(POLL_S * 2)
        return found + len(needle)


# --- processes ------------------------------------------------------------------------------------


def daemon_env(redis: RedisProcess, work_dir: Path, prefix: str, **settings: str) -> dict[str, str]:
    """Return the environment of a daemon on ``redis``. ``settings`` are ORCH_ names without the prefix."""
    env = {
        "ORCH_REDIS_URL": redis.url,
        "ORCH_KEY_PREFIX": prefix,
        "ORCH_STATE_DIR": str(work_dir / "state"),
        "ORCH_SOCKET_PATH": str(work_dir / "orch.sock"),
        "ORCH_HTTP_PORT": "0",
    }
    env.update({f"ORCH_{name.upper()}": value for name, value in settings.items()})
    return env


async def start_daemon(daemon: DaemonProcess) -> None:
    # DaemonProcess waits with time.sleep. Waiting in a thread keeps this event loop, and any
    # stand-in that runs on it, responding meanwhile.
    await asyncio.to_thread(daemon.start)


async def kill_daemon(daemon: DaemonProcess) -> None:
    code = await asyncio.to_thread(daemon.stop, signal.SIGKILL)
    assert code == -signal.SIGKILL, f"daemon exited with {code} before it was killed"


async def stop_daemon_if_running(daemon: DaemonProcess) -> None:
    if daemon.process is not None and daemon.process.poll() is None:
        await asyncio.to_thread(daemon.stop)


def keep_log(daemon: DaemonProcess, name: str) -> None:
    """Copy the daemon log to ``$CHAOS_LOG_DIR/<name>.log`` when that variable is set."""
    target = os.environ.get(CHAOS_LOG_DIR_VARIABLE)
    if target and daemon.log_path.exists():
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(daemon.log_path, Path(target) / f"{name}.log")


def job_store(client: aioredis.Redis, prefix: str) -> JobStore:
    return JobStore(client, Keys(prefix), event_ttl_s=3600, orphan_ttl_s=3600, max_attempts=3)


def spool_path(work_dir: Path) -> Path:
    return work_dir / "state" / "spool.ndjson"


def spool_size(work_dir: Path) -> int:
    try:
        return spool_path(work_dir).stat().st_size
    except FileNotFoundError:
        return 0


# --- checking Redis -------------------------------------------------------------------------------


@dataclass(slots=True)
class StoreCheck:
    """Counts of what Redis contains for a set of acked spawn events."""

    recorded: int = 0
    lost: list[str] = field(default_factory=list)
    wrong_job: list[str] = field(default_factory=list)
    jobs: int = 0
    distinct_children: int = 0
    events_applied: int = 0
    events_deduplicated: int = 0
    active: int = 0

    @property
    def duplicated(self) -> int:
        """Return the jobs beyond one per child session plus the event applications beyond one per
        event. Events stored but never acked would count too, so check only after every event is acked.
        """
        return max(0, self.jobs - self.distinct_children) + max(0, self.events_applied - self.recorded)


async def check_store(
    client: aioredis.Redis, prefix: str, events: dict[str, SpawnEvent], acks: dict[str, dict[str, Any]]
) -> StoreCheck:
    """Check that each acked event has its stored ack and its job, found by child session key.

    ``events`` contains every event sent, and ``acks`` the first ack of each acked one. An event
    counts as recorded when its ack key exists and its child session resolves to a job. A tracked
    ack must also name that job.
    """
    keys = Keys(prefix)
    check = StoreCheck()
    acked = [events[event_id] for event_id in acks]
    children: set[str] = set()
    for start in range(0, len(acked), CHECK_CHUNK):
        chunk = acked[start : start + CHECK_CHUNK]
        async with client.pipeline(transaction=False) as pipe:
            for event in chunk:
                pipe.exists(keys.event(event.event_id))
                pipe.hget(keys.ref("child_session"), event.child_session_key)
            replies = await pipe.execute()
        for index, event in enumerate(chunk):
            stored, job_id = replies[2 * index], replies[2 * index + 1]
            if not stored or not job_id:
                check.lost.append(event.event_id)
                continue
            check.recorded += 1
            children.add(event.child_session_key)
            ack = acks[event.event_id]
            if ack["tracked"] and ack["job_id"] != job_id:
                check.wrong_job.append(event.event_id)
    check.distinct_children = len(children)
    check.jobs = await client.zcard(keys.all_jobs)
    check.active = await client.zcard(keys.status_index(JobStatus.ACTIVE.value))
    counters: dict[str, str] = await client.hgetall(keys.counters)  # type: ignore[misc]
    check.events_applied = int(counters.get("events", 0))
    check.events_deduplicated = int(counters.get("events_duplicate", 0))
    return check


@dataclass(slots=True)
class Counts:
    """The line of counts a chaos test prints."""

    scenario: str
    sent: int
    acked: int
    recorded: int
    lost: int
    duplicated: int
    details: dict[str, int | str] = field(default_factory=dict)

    def line(self) -> str:
        main = (
            f"{self.scenario}: sent={self.sent} acked={self.acked} recorded={self.recorded} "
            f"lost={self.lost} duplicated={self.duplicated}"
        )
        extra = " ".join(f"{name}={value}" for name, value in self.details.items())
        return f"{main} ({extra})" if extra else main


def assert_all_recorded(check: StoreCheck, *, sent: int, acked: int) -> None:
    assert acked == sent, f"{sent - acked} events were never acked"
    assert check.lost == [], f"{len(check.lost)} acked events are missing, such as {check.lost[:5]}"
    assert check.wrong_job == [], f"acks name other jobs than Redis holds: {check.wrong_job[:5]}"
    assert check.recorded == acked
    assert check.jobs == check.distinct_children, f"{check.jobs} jobs for {check.distinct_children} children"
    assert check.events_applied == check.recorded, (
        f"{check.events_applied} event applications for {check.recorded} events"
    )
    assert check.active == check.jobs, f"{check.jobs - check.active} jobs are not active"
