"""The benchmark phases, run in order against one Redis and one daemon.

1. Warm-up (not recorded), then closed-loop ingest with each client count of the plan.
2. Open-loop ingest at a fixed offered rate on one connection.
3. Baselines on the same Redis: arq enqueues (sequential and concurrent) and pipelined writes.
4. Memory per stored job and daemon RSS at growing job counts.
5. Dispatch of retries through the arq worker to a gateway stand-in, by a daemon of the phase.
6. Boot recovery of non-terminal jobs, each step with a new Redis and a new daemon.

Every daemon phase is checked against Redis afterwards: each lifecycle sent made one job, and each
lifecycle sent whole ended ``completed``. A phase that fails a check raises ``BenchmarkError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from benchmarks.baselines import (
    ARQ_QUEUE,
    BASELINE_PREFIX,
    BaselineResult,
    arq_enqueue,
    direct_apply,
    effects,
    job_records,
    pipelined_writes,
)
from benchmarks.daemon_metrics import ack_latency_buckets, shares_within
from benchmarks.dispatch import DispatchResult, measure_dispatch
from benchmarks.ingest import BenchmarkError, LoadResult, closed_loop, open_loop
from benchmarks.measure import Latency, client_gc_paused, load_average, machine
from benchmarks.meter import PhaseMeter
from benchmarks.plan import Plan
from benchmarks.recovery import RecoveryStep, measure_recovery
from benchmarks.scale import ScaleStep, measure_scale
from benchmarks.services import KEY_PREFIX, Services
from benchmarks.workload import EVENTS_PER_LIFECYCLE, Workload, split_lines
from orchestrator.jobs import JobStatus
from orchestrator.keys import Keys


@dataclass(frozen=True, slots=True)
class Measured:
    """One throughput measurement, of the daemon or of a baseline."""

    label: str
    events: int
    seconds: float
    latency: Latency
    # CPU seconds per wall-clock second of each process: 1.0 is one core busy all the time.
    cores: dict[str, float]
    redis_usec_per_event: float  # see PhaseMeter
    load_average: list[float]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "latency": self.latency.to_json(),
            "cores": self.cores,
            "redis_usec_per_event": self.redis_usec_per_event,
            "load_average": self.load_average,
            **self.details,
        }


@dataclass(slots=True)
class RunResults:
    plan: Plan
    started_at: str
    machine: dict[str, Any]
    redis_config: dict[str, str]
    load_average_start: list[float]
    load_average_end: list[float] = field(default_factory=list)
    daemon_env: dict[str, str] = field(default_factory=dict)
    phases: tuple[str, ...] = ()
    ingest: list[Measured] = field(default_factory=list)
    fixed_rate: Measured | None = None
    fixed_rate_direct: Measured | None = None
    baselines: list[Measured] = field(default_factory=list)
    scale: list[ScaleStep] = field(default_factory=list)
    scale_note: str = ""
    job_memory_breakdown: dict[str, int] = field(default_factory=dict)
    dispatch: DispatchResult | None = None
    recovery: list[RecoveryStep] = field(default_factory=list)


class Bench:
    """Runner of the phases of one plan against running services."""

    def __init__(self, plan: Plan, services: Services, client: aioredis.Redis) -> None:
        self.plan = plan
        self.services = services
        self.client = client
        self.keys = Keys(KEY_PREFIX)
        self.workload = Workload()

    async def _meter(self) -> PhaseMeter:
        meter = PhaseMeter(self.services, self.client)
        await meter.start()
        return meter

    async def start_results(self, daemon_env: dict[str, str]) -> RunResults:
        config: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "maxmemory-policy", "save", "latency-monitor-threshold"):
            config.update(await self.client.config_get(name))
        return RunResults(
            plan=self.plan,
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=machine(),
            redis_config=config,
            load_average_start=load_average(),
            daemon_env=daemon_env,
        )

    async def warm_up(self) -> None:
        """Send a short unrecorded load, so that imports, caches and pools are warm."""
        per_client = split_lines(self.workload.lifecycles(self.plan.warmup_lifecycles), 8)
        await self.run_closed_loop(per_client, self.plan.warmup_duration_s)

    async def ingest(self, clients: int) -> Measured:
        per_client = split_lines(self.workload.lifecycles(self.plan.ingest_lifecycles), clients)
        meter = await self._meter()
        result = await self.run_closed_loop(per_client, self.plan.ingest_duration_s)
        usage = await meter.stop(events=result.events, scripted=True)
        label = f"daemon, {clients} client{'s' if clients > 1 else ''}, closed loop"
        details = {"clients": clients, "window_lines": self.plan.window_lines}
        return self._measured(label, result, usage, details)

    async def fixed_rate(self) -> Measured:
        plan = self.plan
        count = math.ceil(plan.fixed_rate_per_s * plan.fixed_rate_duration_s / EVENTS_PER_LIFECYCLE)
        lines = [item for lifecycle in self.workload.lifecycles(count) for item in lifecycle]
        before = await self._job_counts()
        buckets_before = await self._daemon_buckets()
        meter = await self._meter()
        with client_gc_paused():
            result = await open_loop(
                self.services.socket_path,
                lines,
                rate_per_s=plan.fixed_rate_per_s,
                drain_timeout_s=plan.drain_timeout_s,
            )
        usage = await meter.stop(events=result.events, scripted=True)
        await self._check_jobs(before, result)
        label = f"daemon, {plan.fixed_rate_per_s:,.0f} events/s offered, 1 client, open loop"
        details = {
            "offered_events_per_s": plan.fixed_rate_per_s,
            "max_send_lag_ms": result.max_send_lag_ms,
            "late_sends_at_s": list(result.late_sends_at_s),
            "daemon_ack_latency_within": shares_within(buckets_before, await self._daemon_buckets()),
        }
        return self._measured(label, result, usage, details)

    async def _daemon_buckets(self) -> dict[str, float]:
        """Return the daemon's ack latency histogram, or an empty one when its listener is off."""
        if not self.services.metrics_url:
            return {}
        return await ack_latency_buckets(self.services.metrics_url)

    async def fixed_rate_direct(self) -> Measured:
        """Call the apply script at the fixed rate without the daemon, as a control for its latency."""
        plan = self.plan
        count = math.ceil(plan.fixed_rate_per_s * plan.fixed_rate_duration_s / EVENTS_PER_LIFECYCLE)
        events = effects([item for lifecycle in self.workload.lifecycles(count) for item in lifecycle])
        meter = await self._meter()
        with client_gc_paused():
            result = await direct_apply(
                self.services.redis.url,
                events,
                rate_per_s=plan.fixed_rate_per_s,
                drain_timeout_s=plan.drain_timeout_s,
            )
        return await self._baseline(result, meter)

    def _measured(
        self, label: str, result: LoadResult, usage: dict[str, Any], details: dict[str, Any]
    ) -> Measured:
        return Measured(
            label=label,
            events=result.events,
            seconds=result.seconds,
            latency=result.latency,
            cores=usage["cores"],
            redis_usec_per_event=usage["redis_usec_per_event"],
            load_average=load_average(),
            details={**details, "redis_stalls": usage["redis_stalls"]},
        )

    async def run_closed_loop(self, per_client: list[list[bytes]], duration_s: float) -> LoadResult:
        """Send each client's lines through the daemon, closed loop, and check the jobs they made."""
        before = await self._job_counts()
        with client_gc_paused():
            result = await closed_loop(
                self.services.socket_path,
                per_client,
                window=self.plan.window_lines,
                duration_s=duration_s,
                drain_timeout_s=self.plan.drain_timeout_s,
            )
        await self._check_jobs(before, result)
        return result

    async def _job_counts(self) -> tuple[int, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.all_jobs)
            pipe.zcard(self.keys.status_index(JobStatus.COMPLETED))
            jobs, completed = await pipe.execute()
        return int(jobs), int(completed)

    async def _check_jobs(self, before: tuple[int, int], result: LoadResult) -> None:
        """Check that each lifecycle begun made one job and each one sent whole is completed."""
        begun = sum(math.ceil(sent / EVENTS_PER_LIFECYCLE) for sent in result.sent_per_client)
        whole = sum(sent // EVENTS_PER_LIFECYCLE for sent in result.sent_per_client)
        jobs, completed = await self._job_counts()
        if (jobs - before[0], completed - before[1]) != (begun, whole):
            raise BenchmarkError(
                f"expected {begun} new jobs of which {whole} completed, but Redis has "
                f"{jobs - before[0]} new jobs of which {completed - before[1]} completed"
            )

    async def baselines(self) -> list[Measured]:
        plan = self.plan
        results = []
        for concurrency in (1, plan.arq_concurrency):
            frames = self.workload.frames(math.ceil(plan.arq_events / EVENTS_PER_LIFECYCLE))
            queued_before = await self.client.zcard(ARQ_QUEUE)
            meter = await self._meter()
            with client_gc_paused():
                result = await arq_enqueue(
                    self.services.redis.url, frames, concurrency=concurrency, duration_s=plan.arq_duration_s
                )
            results.append(await self._baseline(result, meter))
            queued = await self.client.zcard(ARQ_QUEUE) - queued_before
            if queued != result.events:
                raise BenchmarkError(f"arq reported {result.events} enqueues but its queue grew by {queued}")
        frames = self.workload.frames(math.ceil(plan.pipeline_events / EVENTS_PER_LIFECYCLE))
        records = job_records(frames, EVENTS_PER_LIFECYCLE)
        meter = await self._meter()
        with client_gc_paused():
            result = await pipelined_writes(self.services.redis.url, records, batch=plan.pipeline_batch)
        results.append(await self._baseline(result, meter))
        return results

    async def _baseline(self, result: BaselineResult, meter: PhaseMeter) -> Measured:
        usage = await meter.stop(events=result.events, scripted=result.key == "direct_apply")
        return Measured(
            label=result.name,
            events=result.events,
            seconds=result.seconds,
            latency=result.latency,
            cores=usage["cores"],
            redis_usec_per_event=usage["redis_usec_per_event"],
            load_average=load_average(),
            details={
                "key": result.key,
                "concurrency": result.concurrency,
                "baseline_prefix": BASELINE_PREFIX,
                "redis_stalls": usage["redis_stalls"],
            },
        )


PHASES = ("ingest", "fixed-rate", "baselines", "scale", "dispatch", "recovery")


async def run_all(
    bench: Bench, results: RunResults, log: Callable[[str], None], phases: tuple[str, ...] = PHASES
) -> None:
    """Run the chosen phases of the plan, in the order of ``PHASES``, and record into ``results``.

    ``log`` prints progress lines.
    """
    started = time.monotonic()
    results.phases = phases
    log("warm-up")
    await bench.warm_up()
    if "ingest" in phases:
        for clients in bench.plan.client_counts:
            log(f"ingest with {clients} client connections")
            results.ingest.append(await bench.ingest(clients))
    if "fixed-rate" in phases:
        log(f"ingest at {bench.plan.fixed_rate_per_s:,.0f} events/s")
        results.fixed_rate = await bench.fixed_rate()
        results.fixed_rate_direct = await bench.fixed_rate_direct()
    if "baselines" in phases:
        log("baselines")
        results.baselines = await bench.baselines()
    if "scale" in phases:
        log("memory per job")
        await measure_scale(bench, results)
    if "dispatch" in phases:
        log(f"dispatch of {bench.plan.dispatch_jobs:,} retries")
        results.dispatch = await measure_dispatch(bench)
    if "recovery" in phases:
        results.recovery = await measure_recovery(bench, log)
    results.load_average_end = load_average()
    log(f"done in {time.monotonic() - started:.0f} s")
