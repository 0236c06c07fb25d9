"""Memory per job: Redis memory and daemon RSS after storing growing numbers of jobs.

Jobs go through the daemon, as whole lifecycles from 32 connections, in chunks built just before
they are sent. The step beyond the plan's list (1,000,000 jobs in the full plan) is measured only
when at the rate so far it would take under ``Plan.scale_stretch_max_s``, and extrapolated
linearly otherwise.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.ingest import BenchmarkError
from benchmarks.measure import load_average, memory_kib
from benchmarks.plan import Plan
from benchmarks.workload import EVENTS_PER_LIFECYCLE, split_lines

if TYPE_CHECKING:
    from benchmarks.runner import Bench, RunResults

SCALE_CLIENTS = 32
# Time for Redis to fsync its AOF and free client buffers before memory is read.
SETTLE_S = 1.5


@dataclass(frozen=True, slots=True)
class ScaleStep:
    """Redis memory and daemon RSS with ``jobs`` jobs stored by this phase."""

    jobs: int
    bytes_per_job: float
    extrapolated: bool
    used_memory_delta_bytes: int | None = None
    daemon_rss_kib: int | None = None
    daemon_peak_rss_kib: int | None = None
    ingest_events_per_s: float | None = None
    load_average: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_job": round(self.bytes_per_job, 1)}


async def measure_scale(bench: Bench, results: RunResults) -> None:
    """Store jobs through the daemon up to each step and read Redis memory and daemon RSS."""
    plan = bench.plan
    await asyncio.sleep(SETTLE_S)
    base_bytes = await _used_memory(bench)
    first_index = bench.workload.next_index

    stored = 0
    ingest_s = 0.0
    for target in plan.scale_jobs:
        ingest_s += await _store_jobs(bench, target - stored)
        stored = target
        results.scale.append(await _scale_step(bench, stored, base_bytes, ingest_s))
    results.job_memory_breakdown = await _job_memory(bench, first_index)

    events_per_s = stored * EVENTS_PER_LIFECYCLE / ingest_s
    estimate_s = (plan.scale_stretch_jobs - stored) * EVENTS_PER_LIFECYCLE / events_per_s
    if estimate_s > plan.scale_stretch_max_s:
        _extrapolate(plan, results, estimate_s, events_per_s)
        return
    ingest_s += await _store_jobs(bench, plan.scale_stretch_jobs - stored)
    results.scale.append(await _scale_step(bench, plan.scale_stretch_jobs, base_bytes, ingest_s))
    results.scale_note = f"{plan.scale_stretch_jobs:,} jobs measured"


def _extrapolate(plan: Plan, results: RunResults, estimate_s: float, events_per_s: float) -> None:
    last = results.scale[-1]
    results.scale.append(
        ScaleStep(jobs=plan.scale_stretch_jobs, bytes_per_job=last.bytes_per_job, extrapolated=True)
    )
    results.scale_note = (
        f"{plan.scale_stretch_jobs:,} jobs not measured: storing them would take about {estimate_s:.0f} s "
        f"at {events_per_s:,.0f} events/s (limit {plan.scale_stretch_max_s:.0f} s), so the memory "
        f"figure is the {last.jobs:,}-job bytes per job times {plan.scale_stretch_jobs:,}"
    )


async def _store_jobs(bench: Bench, count: int) -> float:
    """Send ``count`` whole lifecycles through the daemon with 32 clients, and return the seconds spent."""
    seconds = 0.0
    while count > 0:
        chunk = min(count, bench.plan.scale_chunk_jobs)
        per_client = split_lines(bench.workload.lifecycles(chunk), SCALE_CLIENTS)
        result = await bench.run_closed_loop(per_client, bench.plan.scale_step_timeout_s)
        if result.events != chunk * EVENTS_PER_LIFECYCLE:
            raise BenchmarkError(
                f"storing {chunk} jobs took longer than {bench.plan.scale_step_timeout_s:.0f}s "
                f"({result.events} of {chunk * EVENTS_PER_LIFECYCLE} events acked)"
            )
        seconds += result.seconds
        count -= chunk
    return seconds


async def _scale_step(bench: Bench, jobs: int, base_bytes: int, ingest_s: float) -> ScaleStep:
    """Measure memory with ``jobs`` jobs stored, which took ``ingest_s`` seconds of ingest."""
    await asyncio.sleep(SETTLE_S)
    delta = await _used_memory(bench) - base_bytes
    rss = memory_kib(bench.services.daemon_pid)
    return ScaleStep(
        jobs=jobs,
        bytes_per_job=delta / jobs,
        extrapolated=False,
        used_memory_delta_bytes=delta,
        daemon_rss_kib=rss["VmRSS"],
        daemon_peak_rss_kib=rss["VmHWM"],
        ingest_events_per_s=round(jobs * EVENTS_PER_LIFECYCLE / ingest_s, 1),
        load_average=load_average(),
    )


async def _used_memory(bench: Bench) -> int:
    info = await bench.client.info("memory")
    return int(info["used_memory"])


async def _job_memory(bench: Bench, index: int) -> dict[str, int]:
    """Return MEMORY USAGE of the keys of one job stored by the scale phase, by role."""
    run_id = bench.workload.ids(index).run
    job_id = await bench.client.hget(bench.keys.ref("run"), run_id)  # type: ignore[misc]
    if job_id is None:
        raise BenchmarkError(f"no job is indexed under run id {run_id}")
    event_keys = [bench.keys.event(bench.workload.event_id(index, position)) for position in range(4)]
    usage = {
        "job_hash": await bench.client.memory_usage(bench.keys.job(job_id), samples=0),
        "history_list": await bench.client.memory_usage(bench.keys.history(job_id), samples=0),
        "event_acks": sum([await bench.client.memory_usage(key, samples=0) or 0 for key in event_keys]),
    }
    return {name: int(value or 0) for name, value in usage.items()}
