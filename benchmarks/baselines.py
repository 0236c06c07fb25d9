"""Baselines on the same Redis as the daemon: raw arq enqueues and pipelined redis-py writes.

- ``arq_enqueue``: one ``ArqRedis.enqueue_job`` per event, the event frame as the job argument,
  JSON-serialized like the daemon's own arq jobs. arq 0.28 spends three round trips per enqueue
  (WATCH, EXISTS, then MULTI/PSETEX/ZADD/EXEC). No worker consumes the queue.
- ``pipelined_writes``: per event one HSET of the job's mapped fields and one ZADD into an index,
  sent in non-transactional pipelines of ``batch`` events on one connection. It does the least
  work that could store such a record, so it stands for the practical ceiling of a Python client.
- ``direct_apply``: the daemon's own apply script, called through ``JobStore.apply`` at a fixed
  rate without the daemon. Its latency is the part of the daemon's ack latency that Redis, the
  script and a Python client cost anyway.

Their keys live under ``BASELINE_PREFIX``, apart from the daemon's.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool

from benchmarks.ingest import SENDER_TICK_S, BenchmarkError
from benchmarks.measure import Latency
from orchestrator.jobs import Effect
from orchestrator.keys import Keys
from orchestrator.openclaw import map_event
from orchestrator.protocol import parse_request
from orchestrator.settings import Settings
from orchestrator.store import JobStore

BASELINE_PREFIX = "bench-baseline"
ARQ_QUEUE = f"{BASELINE_PREFIX}:arq:queue"
ARQ_FUNCTION = "record_event"
TASK_MAX_CHARS = Settings.model_fields["task_max_chars"].default
DIRECT_CONNECTIONS = 16


@dataclass(frozen=True, slots=True)
class BaselineResult:
    """Outcome of one baseline. Latency is per enqueue call, or per pipeline for pipelined writes."""

    key: str  # short name for JSON keys
    name: str
    concurrency: int
    events: int
    seconds: float
    latency: Latency

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan


async def arq_enqueue(
    redis_url: str, frames: list[dict[str, Any]], *, concurrency: int, duration_s: float
) -> BaselineResult:
    """Enqueue one arq job per frame from ``concurrency`` tasks sharing one pool.

    Stops when the frames run out or ``duration_s`` has passed.
    """
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        default_queue_name=ARQ_QUEUE,
    )
    latencies_s: list[float] = []
    next_index = 0
    started_at = time.perf_counter()
    deadline = started_at + duration_s

    async def enqueue_until_done() -> None:
        nonlocal next_index
        while next_index < len(frames) and time.perf_counter() < deadline:
            frame = frames[next_index]
            next_index += 1
            sent_at = time.perf_counter()
            job = await pool.enqueue_job(ARQ_FUNCTION, frame)
            latencies_s.append(time.perf_counter() - sent_at)
            if job is None:
                raise BenchmarkError(
                    f"arq enqueue_job returned None, a duplicate job id, for event {frame['id']}"
                )

    try:
        await asyncio.gather(*(enqueue_until_done() for _ in range(concurrency)))
        seconds = time.perf_counter() - started_at
    finally:
        await pool.aclose()
    sequential = concurrency == 1
    return BaselineResult(
        key="arq_sequential" if sequential else f"arq_{concurrency}_concurrent",
        name="arq enqueue_job, sequential" if sequential else f"arq enqueue_job, {concurrency} concurrent",
        concurrency=concurrency,
        events=len(latencies_s),
        seconds=seconds,
        latency=Latency.from_seconds(latencies_s),
    )


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The hash fields one event writes, and the key and job id they belong to."""

    key: str
    fields: dict[str, str]
    job_id: str


def job_records(frames: list[dict[str, Any]], events_per_job: int) -> list[JobRecord]:
    """Map each frame as the daemon does, and return the hash fields one event would write."""
    records = []
    for index, frame in enumerate(frames):
        effect = map_event(parse_request(orjson.dumps(frame)), task_max_chars=TASK_MAX_CHARS)
        assert effect is not None
        job_id = f"{index // events_per_job:016x}"
        statuses = [status.value for status in effect.status_by_kind.values()]
        fields = {
            **effect.fields,
            "id": job_id,
            "status": statuses[0] if statuses else "queued",
            "last_event_id": str(frame["id"]),
            "updated_at": str(frame["ts"]),
        }
        records.append(JobRecord(key=f"{BASELINE_PREFIX}:job:{job_id}", fields=fields, job_id=job_id))
    return records


async def pipelined_writes(redis_url: str, records: list[JobRecord], *, batch: int) -> BaselineResult:
    """Write HSET + ZADD per record in pipelines of ``batch`` records, one pipeline at a time."""
    client: aioredis.Redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    index_key = f"{BASELINE_PREFIX}:jobs"
    latencies_s: list[float] = []
    try:
        started_at = time.perf_counter()
        for first in range(0, len(records), batch):
            sent_at = time.perf_counter()
            async with client.pipeline(transaction=False) as pipe:
                for record in records[first : first + batch]:
                    pipe.hset(record.key, mapping=record.fields)
                    pipe.zadd(index_key, {record.job_id: sent_at})
                await pipe.execute()
            latencies_s.append(time.perf_counter() - sent_at)
        seconds = time.perf_counter() - started_at
    finally:
        await client.aclose()
    return BaselineResult(
        key="pipelined_ceiling",
        name=f"redis-py pipeline, HSET + ZADD, {batch} events per pipeline",
        concurrency=1,
        events=len(records),
        seconds=seconds,
        latency=Latency.from_seconds(latencies_s),
    )


def effects(lines: list[bytes]) -> list[tuple[str, Effect]]:
    """Parse and map request lines as the daemon does; return each event id with its effect."""
    mapped = []
    for item in lines:
        request = parse_request(item)
        effect = map_event(request, task_max_chars=TASK_MAX_CHARS)
        assert effect is not None
        mapped.append((request.id, effect))
    return mapped


async def direct_apply(
    redis_url: str, events: list[tuple[str, Effect]], *, rate_per_s: float, drain_timeout_s: float
) -> BaselineResult:
    """Call the apply script once per event at ``rate_per_s``, open loop, without the daemon.

    Each call runs in its own task, so a slow call does not hold back the schedule. The pacing is
    that of ``ingest.open_loop``. The calls share ``DIRECT_CONNECTIONS`` connections, opened
    before the clock starts: with an unbounded pool, one slow reply made redis-py open a burst of
    new connections, each with its own handshake, and stalled every call for 60 to 90 ms.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=DIRECT_CONNECTIONS, timeout=None, decode_responses=True
    )
    client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
    store = JobStore(
        client,
        Keys(f"{BASELINE_PREFIX}-direct"),
        event_ttl_s=Settings.model_fields["event_ttl_s"].default,
        orphan_ttl_s=Settings.model_fields["orphan_ttl_s"].default,
        max_attempts=Settings.model_fields["max_attempts"].default,
    )
    latencies_s: list[float] = []

    async def apply_one(event_id: str, effect: Effect) -> None:
        sent_at = time.perf_counter()
        await store.apply(event_id, effect, time.time_ns() // 1_000_000)
        latencies_s.append(time.perf_counter() - sent_at)

    tasks: list[asyncio.Task[None]] = []
    try:
        await store.load_scripts()
        await asyncio.gather(*(client.ping() for _ in range(DIRECT_CONNECTIONS)))
        started_at = time.perf_counter()
        while len(tasks) < len(events):
            now = time.perf_counter()
            due = min(len(events), int((now - started_at) * rate_per_s) + 1)
            tasks.extend(asyncio.create_task(apply_one(*events[index])) for index in range(len(tasks), due))
            await asyncio.sleep(
                max(SENDER_TICK_S, started_at + len(tasks) / rate_per_s - time.perf_counter())
            )
        async with asyncio.timeout(drain_timeout_s):
            await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started_at
    finally:
        for task in tasks:
            task.cancel()
        await client.aclose()
        await pool.aclose()
    return BaselineResult(
        key="direct_apply",
        name=f"apply script called directly, {rate_per_s:,.0f} events/s offered, no daemon",
        concurrency=1,
        events=len(latencies_s),
        seconds=seconds,
        latency=Latency.from_seconds(latencies_s),
    )
