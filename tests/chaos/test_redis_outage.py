"""Redis stopped, or restarted, while events stream in: the breaker opens, the spool takes the
events (acked with tracked:false), and after Redis is back the spool is replayed into job records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.chaos.harness import (
    AckTally,
    BridgeClient,
    Counts,
    LogWatcher,
    SpawnEvent,
    SpawnFrames,
    assert_all_recorded,
    check_store,
    daemon_env,
    deliver_all,
    keep_log,
    spool_size,
    start_daemon,
    stop_clients,
    stop_daemon_if_running,
    total_tally,
    wait_until,
)
from tests.daemon_process import DaemonProcess
from tests.redis_process import RedisProcess

CLIENTS = 4
# Each client gets one new event per tick: a steady stream, as from many busy sub-agents.
TICK_S = 0.05
MAX_EVENTS_PER_CLIENT = 2_000
ACKED_BEFORE_OUTAGE = 200
OUTAGE_S = 30.0
BREAKER_OPENED = "Redis circuit breaker closed -> open"
BREAKER_CLOSED = "Redis circuit breaker half_open -> closed"
REPLAY_DONE = "spool replay done"


class Stream:
    """A producer that submits one new spawn event per client per tick, until stopped or the
    count bound is reached."""

    def __init__(self, clients: list[BridgeClient], test_name: str) -> None:
        self.clients = clients
        self.events: dict[str, SpawnEvent] = {}
        self._frames = SpawnFrames(test_name)
        self._stop = asyncio.Event()

    async def feed(self) -> None:
        for number in range(MAX_EVENTS_PER_CLIENT):
            if self._stop.is_set():
                return
            for bridge in self.clients:
                event = self._frames.make(bridge.name, number)
                self.events[event.event_id] = event
                bridge.submit(event.event_id, event.line)
            await asyncio.sleep(TICK_S)

    def stop(self) -> None:
        self._stop.set()


@dataclass(slots=True)
class OutageResult:
    counts: Counts
    during_outage: AckTally


async def run_outage(
    work_dir: Path, prefix: str, *, scenario: str, outage_s: float, breaker_threshold: int
) -> OutageResult:
    """Stream, stop Redis with SIGTERM for ``outage_s`` after the breaker opened, start it, check.

    With ``outage_s`` 0 Redis starts again as soon as the breaker has opened: a restart.
    """
    redis = RedisProcess(appendonly=True)
    redis.start()
    env = daemon_env(
        redis,
        work_dir,
        prefix,
        breaker_reset_timeout_s="2",
        breaker_failure_threshold=str(breaker_threshold),
    )
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    log = LogWatcher(daemon.log_path)
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    clients = [BridgeClient(daemon.socket_path, f"c{number}") for number in range(CLIENTS)]
    stream = Stream(clients, scenario.split()[0])
    tasks: list[asyncio.Task[None]] = []
    try:
        await start_daemon(daemon)
        tasks = [asyncio.create_task(bridge.run()) for bridge in clients]
        tasks.append(asyncio.create_task(stream.feed()))
        await wait_until(
            lambda: total_tally(clients).tracked >= ACKED_BEFORE_OUTAGE,
            timeout_s=60,
            what=f"{ACKED_BEFORE_OUTAGE} tracked acks before the outage",
        )

        before = log.mark()
        await asyncio.to_thread(redis.stop)
        stopped_at = time.monotonic()
        acked_before_stop = total_tally(clients)
        await log.wait_for(BREAKER_OPENED, start=before, timeout_s=60)
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - stopped_at)))
        at_restart = total_tally(clients)
        await asyncio.to_thread(redis.start)

        closed = await log.wait_for(BREAKER_CLOSED, start=before, timeout_s=60)
        await wait_until(
            lambda: total_tally(clients).tracked > at_restart.tracked,
            timeout_s=60,
            what="a tracked ack after Redis came back",
        )
        stream.stop()
        await deliver_all(clients, tasks[:CLIENTS], timeout_s=120)
        await log.wait_for(REPLAY_DONE, start=closed, timeout_s=120)
        await wait_until(lambda: spool_size(work_dir) == 0, timeout_s=120, what="an empty spool")

        acks = {event_id: ack for bridge in clients for event_id, ack in bridge.acks.items()}
        check = await check_store(client, prefix, stream.events, acks)
        final = total_tally(clients)
        during = AckTally(
            tracked=at_restart.tracked - acked_before_stop.tracked,
            untracked=at_restart.untracked - acked_before_stop.untracked,
        )
        counts = Counts(
            scenario,
            sent=len(stream.events),
            acked=len(acks),
            recorded=check.recorded,
            lost=len(check.lost),
            duplicated=check.duplicated,
            details={
                "acked_before_stop": acked_before_stop.total,
                "acked_while_down": during.total,
                "tracked_false": final.untracked,
                "replayed_already_stored": check.events_deduplicated,
                "breaker_opened": log.count(BREAKER_OPENED, before),
                "breaker_closed": log.count(BREAKER_CLOSED, before),
            },
        )

        assert [item for bridge in clients for item in bridge.rejected] == []
        assert sum(bridge.retryable_errors for bridge in clients) == 0, "events were refused, not spooled"
        assert final.untracked > 0
        assert all(ack["job_id"] is None for ack in acks.values() if not ack["tracked"])
        assert_all_recorded(check, sent=len(stream.events), acked=len(acks))
        return OutageResult(counts, during)
    finally:
        stream.stop()
        await stop_clients(tasks)
        await stop_daemon_if_running(daemon)
        keep_log(daemon, scenario.split()[0])
        await client.aclose()
        redis.cleanup()


@pytest.mark.chaos
@pytest.mark.timeout(180)
async def test_redis_stopped_for_30s(
    work_dir: Path, prefix: str, report_counts: Callable[[str], None]
) -> None:
    result = await run_outage(
        work_dir, prefix, scenario="redis-stop 30s outage", outage_s=OUTAGE_S, breaker_threshold=5
    )
    report_counts(result.counts.line())
    assert result.during_outage.total > 0, "no event was acked while Redis was down"
    assert result.during_outage.untracked > 0


@pytest.mark.chaos
@pytest.mark.timeout(180)
async def test_redis_restart_during_stream(
    work_dir: Path, prefix: str, report_counts: Callable[[str], None]
) -> None:
    # One failed write opens the breaker, so the restart lands inside the stream every time.
    result = await run_outage(
        work_dir, prefix, scenario="redis-restart AOF everysec", outage_s=0.0, breaker_threshold=1
    )
    report_counts(result.counts.line())
