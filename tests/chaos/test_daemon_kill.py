"""kill -9 of the daemon while 8 clients stream 5,000 events, and the clients resend what was not acked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.chaos.harness import (
    BridgeClient,
    Counts,
    SpawnEvent,
    SpawnFrames,
    assert_all_recorded,
    check_store,
    daemon_env,
    deliver_all,
    keep_log,
    kill_daemon,
    spool_size,
    start_daemon,
    stop_clients,
    stop_daemon_if_running,
    total_tally,
    wait_until,
)
from tests.daemon_process import DaemonProcess
from tests.redis_process import RedisProcess

CLIENTS = 8
EVENTS_PER_CLIENT = 625
# The kill comes once this share of the events is acked, so the rest is in flight or not sent.
KILL_AFTER_ACKED = 0.4


@pytest.mark.chaos
@pytest.mark.timeout(240)
async def test_daemon_kill_during_stream(
    work_dir: Path, prefix: str, report_counts: Callable[[str], None]
) -> None:
    redis = RedisProcess(appendonly=True)
    redis.start()
    daemon = DaemonProcess(daemon_env(redis, work_dir, prefix), work_dir / "daemon.log")
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    tasks: list[asyncio.Task[None]] = []
    try:
        await start_daemon(daemon)
        frames = SpawnFrames("kill9")
        events: dict[str, SpawnEvent] = {}
        clients = [BridgeClient(daemon.socket_path, f"c{number}") for number in range(CLIENTS)]
        for bridge in clients:
            for number in range(EVENTS_PER_CLIENT):
                event = frames.make(bridge.name, number)
                events[event.event_id] = event
                bridge.submit(event.event_id, event.line)
        tasks = [asyncio.create_task(bridge.run()) for bridge in clients]

        kill_at = int(len(events) * KILL_AFTER_ACKED)
        await wait_until(lambda: total_tally(clients).total >= kill_at, timeout_s=120, what=f"{kill_at} acks")
        await kill_daemon(daemon)
        acked_at_kill = total_tally(clients).total
        unacked_at_kill = sum(len(bridge.unacked) for bridge in clients)
        assert unacked_at_kill > 0, "every event was acked before the kill"

        await start_daemon(daemon)
        await deliver_all(clients, tasks, timeout_s=180)
        # Redis stays up, so nothing should be spooled. Anything that was must be replayed first.
        await wait_until(lambda: spool_size(work_dir) == 0, timeout_s=60, what="an empty spool")

        acks = {event_id: ack for bridge in clients for event_id, ack in bridge.acks.items()}
        check = await check_store(client, prefix, events, acks)
        written = sum(bridge.lines_written for bridge in clients)
        counts = Counts(
            "daemon kill -9 during stream",
            sent=len(events),
            acked=len(acks),
            recorded=check.recorded,
            lost=len(check.lost),
            duplicated=check.duplicated,
            details={
                "acked_before_kill": acked_at_kill,
                "unacked_at_kill": unacked_at_kill,
                "lines_written": written,
                "resent": written - len(events),
                "resends_already_stored": check.events_deduplicated,
                "tracked_false": total_tally(clients).untracked,
                "jobs": check.jobs,
            },
        )
        report_counts(counts.line())

        assert [item for bridge in clients for item in bridge.rejected] == []
        assert_all_recorded(check, sent=len(events), acked=len(acks))
        assert check.jobs == len(events)
    finally:
        await stop_clients(tasks)
        await stop_daemon_if_running(daemon)
        keep_log(daemon, "daemon-kill")
        await client.aclose()
        redis.cleanup()
