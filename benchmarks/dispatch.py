"""Dispatch of retries: how fast a daemon re-dispatches failed jobs through its gateway.

Setup, not timed: a gateway stand-in on loopback (``RecordingStandin``) and a daemon of the phase
(key prefix ``bench-dispatch``) that points at it, with ``ORCH_RETRY_BASE_S`` and
``ORCH_RETRY_CAP_S`` at 0.001, so that the backoff before each retry is at most 1 ms. Once its
boot reconciliation has run (and found nothing), the plan's jobs are written ``active`` straight
into Redis (``seed.py``).

Timed: one ``subagent_ended`` error per job through the daemon's socket, closed loop on one
connection. Each error moves its job to ``retrying``. The outbox relay hands the retry to arq, the
arq worker claims it, calls ``sessions.send`` on the stand-in and records the job ``active`` again.
The phase ends when the stand-in has every send and no job is left ``retrying`` or ``queued``, or
after ``Plan.dispatch_timeout_s``.

The rate counts the sends between the first and the last one the stand-in received. The stages of
each retry come from time stamps in milliseconds: the job's history (error applied, dispatch
claimed, job active again), arq's result record (retry enqueued by the relay, task started) and
the stand-in's receipt of the send. arq keeps a result for 60 s, so a retry whose result expired
before the phase ended is left out of the stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from benchmarks.ingest import BenchmarkError, LoadResult, closed_loop
from benchmarks.measure import Latency, client_gc_paused, load_average
from benchmarks.meter import PhaseMeter
from benchmarks.phase_daemon import ANY_LINE, PhaseDaemon, stopped_after
from benchmarks.redis_stats import command_stats, per_unit
from benchmarks.seed import JobSeeder, SeedPlan
from benchmarks.standin import RecordingStandin
from orchestrator.jobs import JobStatus, dispatch_key
from orchestrator.outbox import dispatch_job_id

if TYPE_CHECKING:
    from benchmarks.runner import Bench

RETRY_SETTING_S = "0.001"
DISPATCH_WINDOW_LINES = 128
POLL_S = 0.05
RECONCILED_MARKER = "reconciled gateway "
ARQ_RESULT_PREFIX = "arq:result:"  # arq 0.28's fixed prefix of result keys
READ_BATCH = 500

# Called with a daemon's PID; its context is entered around the timed part of a phase.
AroundTimed = Callable[[int], AbstractAsyncContextManager[object]]


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """Outcome of one dispatch phase."""

    retries: int
    # Seconds between the first and the last sessions.send the stand-in received.
    send_span_s: float
    # Seconds from the first error line written to the last job recorded active again.
    end_to_end_s: float
    errors: LoadResult
    stages: dict[str, Latency]
    cores: dict[str, float]
    evalsha_usec_per_retry: float
    commands_per_retry: dict[str, dict[str, float]]
    load_average: list[float]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def retries_per_s(self) -> float:
        """Sends per second between the first and the last one (``retries - 1`` intervals)."""
        return (self.retries - 1) / self.send_span_s if self.send_span_s > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "retries": self.retries,
            "retries_per_s": round(self.retries_per_s, 1),
            "send_span_s": round(self.send_span_s, 3),
            "end_to_end_s": round(self.end_to_end_s, 3),
            "end_to_end_retries_per_s": round(self.retries / self.end_to_end_s, 1),
            "error_events": {
                "events": self.errors.events,
                "seconds": round(self.errors.seconds, 3),
                "ack_latency": self.errors.latency.to_json(),
            },
            "stages_ms": {name: latency.to_json() for name, latency in self.stages.items()},
            "cores": self.cores,
            "evalsha_usec_per_retry": self.evalsha_usec_per_retry,
            "redis_commands_per_retry": self.commands_per_retry,
            "load_average": self.load_average,
            **self.details,
        }


async def measure_dispatch(bench: Bench, *, around_timed: AroundTimed | None = None) -> DispatchResult:
    """Run the dispatch phase with ``bench.plan.dispatch_jobs`` retries.

    ``around_timed``, if given, is called with the daemon's PID, and its context is entered around
    the timed part. ``--profile`` uses it to record the daemon with py-spy.
    """
    async with RecordingStandin() as standin:
        settings = {
            **standin.settings(),
            "ORCH_RETRY_BASE_S": RETRY_SETTING_S,
            "ORCH_RETRY_CAP_S": RETRY_SETTING_S,
        }
        daemon = PhaseDaemon.create(bench.services, "dispatch", settings)
        async with stopped_after(daemon):
            follower = daemon.follow((RECONCILED_MARKER,))
            daemon.start()
            await daemon.wait_ready()
            await daemon.wait_for(follower, RECONCILED_MARKER, bench.plan.dispatch_timeout_s)
            seeder = JobSeeder(bench.client, daemon.keys.prefix, daemon.gateway_id, bench.workload)
            seeded = await seeder.write(SeedPlan(active=bench.plan.dispatch_jobs), clear_outbox=False)
            around = around_timed(daemon.pid) if around_timed is not None else contextlib.nullcontext()
            async with around:
                result = await _timed(bench, daemon, standin, seeded.active, seeded.failure_lines)
    result.details["daemon_stop"] = daemon.stop_outcome
    return result


async def _timed(
    bench: Bench, daemon: PhaseDaemon, standin: RecordingStandin, job_ids: list[str], lines: list[bytes]
) -> DispatchResult:
    plan = bench.plan
    meter = PhaseMeter(daemon.meter_view(bench.services), bench.client)
    stats_before = await command_stats(bench.client)
    log = daemon.follow((ANY_LINE,))
    log.scan()
    log_lines_before = log.matches[ANY_LINE].count
    await meter.start()
    with client_gc_paused():
        first_line_at_s = time.time()
        errors = await closed_loop(
            daemon.socket_path,
            [lines],
            window=DISPATCH_WINDOW_LINES,
            duration_s=plan.dispatch_timeout_s,
            drain_timeout_s=plan.drain_timeout_s,
        )
        await _wait_until_dispatched(
            bench, daemon, standin, len(job_ids), first_line_at_s + plan.dispatch_timeout_s
        )
    usage = await meter.stop(events=len(job_ids), scripted=True)
    commands = per_unit(stats_before, await command_stats(bench.client), len(job_ids))
    log.scan()
    log_lines = log.matches[ANY_LINE].count - log_lines_before
    records = await _read_records(bench, daemon, job_ids)
    _check_dispatched(standin, job_ids, records)

    sends = sorted(standin.send_received_at_s.values())
    last_active_s = max(record.active_at_ms for record in records) / 1000
    return DispatchResult(
        retries=len(job_ids),
        send_span_s=sends[-1] - sends[0],
        end_to_end_s=last_active_s - first_line_at_s,
        errors=errors,
        stages=_stages(records, standin),
        cores=usage["cores"],
        evalsha_usec_per_retry=usage["redis_usec_per_event"],
        commands_per_retry=commands,
        load_average=load_average(),
        details={
            "redis_stalls": usage["redis_stalls"],
            "arq_results_found": sum(1 for record in records if record.enqueued_at_ms is not None),
            "relayed_per_s": _rate([record.enqueued_at_ms for record in records]),
            "arq_tasks_started_per_s": _rate([record.started_at_ms for record in records]),
            "retry_base_s": float(RETRY_SETTING_S),
            "daemon_log_lines_per_retry": round(log_lines / len(job_ids), 2),
        },
    )


async def _wait_until_dispatched(
    bench: Bench, daemon: PhaseDaemon, standin: RecordingStandin, count: int, deadline_s: float
) -> None:
    """Wait until the stand-in has ``count`` sends and no job is retrying or queued."""
    while True:
        async with bench.client.pipeline(transaction=False) as pipe:
            pipe.zcard(daemon.keys.status_index(JobStatus.RETRYING))
            pipe.zcard(daemon.keys.status_index(JobStatus.QUEUED))
            retrying, queued = await pipe.execute()
        sent = len(standin.send_received_at_s)
        if sent >= count and retrying == 0 and queued == 0:
            return
        if time.time() > deadline_s:
            raise BenchmarkError(
                f"after {bench.plan.dispatch_timeout_s:.0f}s the stand-in had {sent} of {count} sends, "
                f"and {retrying} jobs were retrying and {queued} queued"
            )
        await asyncio.sleep(POLL_S)


@dataclass(frozen=True, slots=True)
class _RetryRecord:
    """Time stamps (Unix ms) of one job's retry, from its history and arq's result record."""

    job_id: str
    status: str
    dispatches: int
    retrying_at_ms: int
    claimed_at_ms: int
    active_at_ms: int
    enqueued_at_ms: int | None
    started_at_ms: int | None


async def _read_records(bench: Bench, daemon: PhaseDaemon, job_ids: list[str]) -> list[_RetryRecord]:
    records = []
    for start in range(0, len(job_ids), READ_BATCH):
        batch = job_ids[start : start + READ_BATCH]
        async with bench.client.pipeline(transaction=False) as pipe:
            for job_id in batch:
                pipe.hmget(daemon.keys.job(job_id), ["status", "dispatches"])
                pipe.lrange(daemon.keys.history(job_id), 0, -1)
                pipe.get(ARQ_RESULT_PREFIX + dispatch_job_id(daemon.keys.prefix, job_id, 1))
            replies = await pipe.execute()
        for index, job_id in enumerate(batch):
            fields, history, result = replies[3 * index : 3 * index + 3]
            records.append(_record(job_id, fields, history, result))
    return records


def _record(job_id: str, fields: list[str | None], history: list[str], result: str | None) -> _RetryRecord:
    entered: dict[str, int] = {}
    for raw in history:
        entry = orjson.loads(raw)
        entered[entry["to"]] = int(entry["at"])  # the last time the job entered each status
    arq_result = orjson.loads(result) if result is not None else {}
    return _RetryRecord(
        job_id=job_id,
        status=fields[0] or "missing",
        dispatches=int(fields[1] or 0),
        retrying_at_ms=entered.get("retrying", 0),
        claimed_at_ms=entered.get("queued", 0),
        active_at_ms=entered.get("active", 0),
        enqueued_at_ms=arq_result.get("et"),
        started_at_ms=arq_result.get("st"),
    )


def _check_dispatched(standin: RecordingStandin, job_ids: list[str], records: list[_RetryRecord]) -> None:
    """Check that each job was sent once, with its dispatch-1 key, and is active after dispatch 1."""
    expected = {dispatch_key(job_id, 1) for job_id in job_ids}
    received = set(standin.send_received_at_s)
    if received != expected:
        raise BenchmarkError(
            f"the stand-in received {len(received - expected)} unexpected sends and missed "
            f"{len(expected - received)} of {len(expected)}"
        )
    if standin.send_repeats:
        raise BenchmarkError(
            f"{len(standin.send_repeats)} dispatches reached the stand-in more than once, "
            f"{sum(standin.send_repeats.values())} repeats in all"
        )
    wrong = [record for record in records if record.status != "active" or record.dispatches != 1]
    if wrong:
        first = wrong[0]
        raise BenchmarkError(
            f"{len(wrong)} jobs are not active after one dispatch; job {first.job_id} is "
            f"{first.status} after {first.dispatches} dispatches"
        )


def _rate(stamps_ms: list[int | None]) -> float | None:
    """Return events per second between the first and the last of ``stamps_ms``, None when unknown."""
    known = [stamp for stamp in stamps_ms if stamp is not None]
    if len(known) < 2 or max(known) == min(known):
        return None
    return round((len(known) - 1) / ((max(known) - min(known)) / 1000), 1)


def _stages(records: list[_RetryRecord], standin: RecordingStandin) -> dict[str, Latency]:
    """Return the latency of each stage of a retry, over the retries with an arq result."""
    stages: dict[str, list[float]] = {
        "error applied -> relayed to arq": [],
        "relayed -> arq task started": [],
        "task started -> sessions.send received": [],
        "sessions.send received -> job active": [],
        "relayed -> sessions.send received": [],
        "error applied -> job active": [],
    }
    for record in records:
        # Truncated to whole milliseconds, as the daemon's and arq's time stamps are.
        sent_ms = int(standin.send_received_at_s[dispatch_key(record.job_id, 1)] * 1000)
        stages["error applied -> job active"].append(record.active_at_ms - record.retrying_at_ms)
        stages["sessions.send received -> job active"].append(record.active_at_ms - sent_ms)
        if record.enqueued_at_ms is None or record.started_at_ms is None:
            continue
        stages["error applied -> relayed to arq"].append(record.enqueued_at_ms - record.retrying_at_ms)
        stages["relayed -> arq task started"].append(record.started_at_ms - record.enqueued_at_ms)
        stages["task started -> sessions.send received"].append(sent_ms - record.started_at_ms)
        stages["relayed -> sessions.send received"].append(sent_ms - record.enqueued_at_ms)
    return {name: Latency.from_seconds([value / 1000 for value in values]) for name, values in stages.items()}
