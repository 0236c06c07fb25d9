"""Sizes and time limits of the full run and of the smoke run.

Every phase is bounded twice: by a count of events or jobs built before it starts, and by a
duration after which its clients stop sending.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    # Closed-loop ingest: one phase per client count.
    client_counts: tuple[int, ...]
    window_lines: int  # request lines each client keeps unanswered
    ingest_lifecycles: int  # per phase, 4 events each
    ingest_duration_s: float
    warmup_lifecycles: int
    warmup_duration_s: float
    # Open-loop ingest at a fixed offered rate, on one connection.
    fixed_rate_per_s: float
    fixed_rate_duration_s: float
    # Baselines.
    arq_events: int
    arq_duration_s: float
    arq_concurrency: int
    pipeline_events: int
    pipeline_batch: int
    # Memory per job: steps of stored jobs, sent through the daemon in chunks by 32 clients.
    scale_jobs: tuple[int, ...]
    scale_chunk_jobs: int
    scale_stretch_jobs: int  # measured only if its estimated ingest time is within the next limit
    scale_stretch_max_s: float
    scale_step_timeout_s: float
    # Dispatch of retries: jobs failed at once and re-dispatched by a daemon of the phase.
    dispatch_jobs: int
    dispatch_timeout_s: float  # for the whole timed part, from the first error sent
    # Boot recovery: non-terminal jobs per step, each step with a new Redis and a new daemon.
    recovery_jobs: tuple[int, ...]
    recovery_with_gateway: bool  # also time each step with a gateway stand-in (runs checked)
    recovery_timeout_s: float  # per boot, until the reconciliation line
    drain_timeout_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(
    mode="full",
    client_counts=(1, 8, 32),
    window_lines=128,
    ingest_lifecycles=40_000,
    ingest_duration_s=10.0,
    warmup_lifecycles=5_000,
    warmup_duration_s=2.0,
    fixed_rate_per_s=2_000.0,
    fixed_rate_duration_s=10.0,
    arq_events=40_000,
    arq_duration_s=8.0,
    arq_concurrency=32,
    pipeline_events=100_000,
    pipeline_batch=500,
    scale_jobs=(10_000, 100_000),
    scale_chunk_jobs=25_000,
    scale_stretch_jobs=1_000_000,
    scale_stretch_max_s=120.0,
    scale_step_timeout_s=300.0,
    dispatch_jobs=5_000,
    dispatch_timeout_s=180.0,
    recovery_jobs=(10_000, 100_000),
    recovery_with_gateway=True,
    recovery_timeout_s=180.0,
    drain_timeout_s=30.0,
)

SMOKE = Plan(
    mode="smoke",
    client_counts=(1, 8, 32),
    window_lines=128,
    ingest_lifecycles=500,
    ingest_duration_s=0.5,
    warmup_lifecycles=100,
    warmup_duration_s=0.3,
    fixed_rate_per_s=2_000.0,
    fixed_rate_duration_s=0.5,
    arq_events=300,
    arq_duration_s=0.5,
    arq_concurrency=32,
    pipeline_events=2_000,
    pipeline_batch=500,
    scale_jobs=(1_000,),
    scale_chunk_jobs=1_000,
    scale_stretch_jobs=10_000,
    scale_stretch_max_s=0.0,
    scale_step_timeout_s=30.0,
    dispatch_jobs=300,
    dispatch_timeout_s=30.0,
    recovery_jobs=(2_000,),
    recovery_with_gateway=True,
    recovery_timeout_s=30.0,
    drain_timeout_s=15.0,
)
