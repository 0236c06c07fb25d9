"""Boot recovery: how long a new daemon takes to reconcile the unfinished jobs of its gateway.

Each step of the plan gets a new redis-server of its own (configured as the run's), so that no
AOF rewrite of earlier data and no other daemon runs during it. Into it go the step's jobs,
straight through the store's scripts (``seed.py``), for the gateway ``bench-gw``: a third each
``active``, ``retrying``, and ``queued`` with dispatch 1 claimed. The outbox is then emptied, as a
daemon leaves it when its relay had handed every retry to arq before it stopped. An AOF rewrite
follows, so that none falls due during the boot. Then a new ``orchestrator serve`` starts.

The boot time runs from just before the process is created to the time stamp of the log line
``reconciled gateway ...``, which the boot reconciliation writes when it ends (``Recovery._boot``:
spool replay, then ``reconcile(check_runs=True, at_boot=True)``). The reconciliation loads every
retrying job and adds it to the outbox. It loads every queued job, and for each with a claimed
dispatch it releases arq's in-progress lock and enqueues the dispatch again. With a gateway token
only, it loads every active job and calls ``agent.wait`` for its run, 8 at a time. The outbox
relay and the arq worker start with the daemon and work at the same time: they relay the re-armed
retries and run the resumed dispatches.

Each job count is measured without a gateway token, and, when the plan says so, again on new jobs
with a gateway stand-in that responds to ``agent.wait`` with ``status: "timeout"``. The time stamps
of the daemon's log lines split the boot into steps, and the daemon's VmRSS and VmHWM are read as
soon as the line appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from benchmarks.ingest import BenchmarkError
from benchmarks.measure import load_average, machine_cpu_s, memory_kib, own_cpu_s, process_cpu_s
from benchmarks.phase_daemon import ANY_LINE, LogFollower, LogLine, PhaseDaemon, stopped_after
from benchmarks.seed import JobSeeder, SeedPlan
from benchmarks.services import BenchRedis
from benchmarks.standin import RecordingStandin

if TYPE_CHECKING:
    from benchmarks.runner import Bench

STARTING_MARKER = "openclaw-orchestrator "
READY_MARKER = "ready"
# NOTE: daemons that resume dispatches 100 at a time log this line at DEBUG, so at the default
# log level it is missing and the parts of the boot after "ready" come out None.
RESUMING_MARKER = "resuming interrupted dispatch "
RECONCILED_MARKER = "reconciled gateway "
# Recovery._guard logs "boot recovery failed" or "boot recovery stopped, Redis is unavailable".
BOOT_FAILED_MARKER = "boot recovery "
MARKERS = (STARTING_MARKER, READY_MARKER, RESUMING_MARKER, RECONCILED_MARKER, BOOT_FAILED_MARKER, ANY_LINE)
RECONCILED_PATTERN = re.compile(
    r"reconciled gateway (?P<gateway>\S+): (?P<rearmed_retries>\d+) retries re-armed, "
    r"(?P<resumed_dispatches>\d+) dispatches resumed, (?P<runs_checked>\d+) runs checked, "
    r"(?P<runs_failed>\d+) found failed"
)
AOF_POLL_S = 0.1
AOF_REWRITE_TIMEOUT_S = 120.0

# Called with the daemon's PID and a name for the step once the daemon has logged its first line.
# Its context stays open until the reconciliation line.
AroundBoot = Callable[[int, str], AbstractAsyncContextManager[object]]


@dataclass(frozen=True, slots=True)
class RecoveryStep:
    """One timed boot: the jobs it found, how long each part took, and the daemon's memory after."""

    jobs: int
    gateway: str  # "none" (no token, runs not checked) or "stand-in"
    seeded: dict[str, int]
    seed_s: float
    boot_s: float  # process created -> "reconciled gateway" line
    # Parts of the boot from log time stamps, in seconds; a part whose lines are missing is None.
    parts_s: dict[str, float | None]
    reconciled: dict[str, int]
    daemon_rss_kib: int
    daemon_peak_rss_kib: int
    # CPU seconds from the process's creation to the line: daemon (all of it), Redis, this client,
    # and all other processes of the machine.
    cpu_s: dict[str, float]
    agent_waits: int
    resume_lines: int
    log_lines: int  # log records up to the reconciliation line, read shortly after it
    redis_forks: int
    load_average: list[float]
    daemon_stop: str  # PhaseDaemon.stop_outcome, after the measurement

    @property
    def name(self) -> str:
        return f"{self.jobs:,} jobs, gateway {self.gateway}"

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seed_s": round(self.seed_s, 3),
            "boot_s": round(self.boot_s, 3),
            "parts_s": {
                name: None if value is None else round(value, 3) for name, value in self.parts_s.items()
            },
        }


async def measure_recovery(
    bench: Bench, log: Callable[[str], None], *, around_boot: AroundBoot | None = None
) -> list[RecoveryStep]:
    """Time the boot reconciliation for each job count of the plan, without and with a gateway.

    ``log`` prints progress lines.
    """
    steps = []
    gateways = ("none", "stand-in") if bench.plan.recovery_with_gateway else ("none",)
    for jobs in bench.plan.recovery_jobs:
        for gateway in gateways:
            log(f"boot recovery of {jobs:,} jobs, gateway {gateway}")
            step = await _step(bench, jobs, gateway, around_boot)
            log(
                f"boot recovery of {step.name}: seeded in {step.seed_s:.1f} s, reconciled {step.boot_s:.2f} s after start"
            )
            steps.append(step)
    return steps


async def _step(bench: Bench, jobs: int, gateway: str, around_boot: AroundBoot | None) -> RecoveryStep:
    name = f"recovery-{jobs}-{gateway}"
    plan = SeedPlan.thirds(jobs)
    async with _own_redis() as (redis, client), contextlib.AsyncExitStack() as stack:
        settings: dict[str, str] = {}
        standin: RecordingStandin | None = None
        if gateway == "stand-in":
            standin = await stack.enter_async_context(RecordingStandin())
            settings = standin.settings()
        daemon = PhaseDaemon.create(bench.services, name, settings, redis_url=redis.url)
        seeder = JobSeeder(client, daemon.keys.prefix, daemon.gateway_id, bench.workload)
        seeded = await seeder.write(plan, clear_outbox=True)
        await _rewrite_aof(client)
        await stack.enter_async_context(stopped_after(daemon))
        step = await _timed_boot(bench, daemon, redis, client, standin, around_boot, name)
    return _checked(
        RecoveryStep(
            jobs=jobs,
            gateway=gateway,
            seeded={"active": plan.active, "retrying": plan.retrying, "queued": plan.queued},
            seed_s=seeded.seconds,
            daemon_stop=daemon.stop_outcome,
            **step,
        )
    )


@contextlib.asynccontextmanager
async def _own_redis() -> AsyncIterator[tuple[BenchRedis, aioredis.Redis]]:
    """Start a redis-server for one step, and stop it and delete its files after."""
    redis = BenchRedis()
    try:
        await asyncio.to_thread(redis.start)
        client: aioredis.Redis = aioredis.Redis.from_url(redis.url, decode_responses=True)
        try:
            yield redis, client
        finally:
            await client.aclose()
    finally:
        await asyncio.to_thread(redis.cleanup)


async def _rewrite_aof(client: aioredis.Redis) -> None:
    """Rewrite the AOF and wait until it is done, so that no rewrite falls due during the boot."""
    await _wait_aof_idle(client)
    await client.bgrewriteaof()  # type: ignore[no-untyped-call]
    await _wait_aof_idle(client)


async def _wait_aof_idle(client: aioredis.Redis) -> None:
    deadline = time.monotonic() + AOF_REWRITE_TIMEOUT_S
    while True:
        info = await client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        if time.monotonic() > deadline:
            raise BenchmarkError(f"Redis did not finish an AOF rewrite within {AOF_REWRITE_TIMEOUT_S:.0f}s")
        await asyncio.sleep(AOF_POLL_S)


async def _timed_boot(
    bench: Bench,
    daemon: PhaseDaemon,
    redis: BenchRedis,
    client: aioredis.Redis,
    standin: RecordingStandin | None,
    around_boot: AroundBoot | None,
    name: str,
) -> dict[str, Any]:
    timeout_s = bench.plan.recovery_timeout_s
    follower = daemon.follow(MARKERS)
    assert redis.process is not None
    forks_before = await _forks(client)
    redis_cpu_before = process_cpu_s(redis.process.pid)
    client_cpu_before = own_cpu_s()
    machine_before = machine_cpu_s()["busy"]

    daemon.start()
    await daemon.wait_for(follower, STARTING_MARKER, timeout_s)
    around = around_boot(daemon.pid, name) if around_boot is not None else contextlib.nullcontext()
    async with around:
        reconciled = await daemon.wait_for(follower, RECONCILED_MARKER, timeout_s)
        memory = memory_kib(daemon.pid)
        cpu_s = {
            "daemon": process_cpu_s(daemon.pid),
            "redis": process_cpu_s(redis.process.pid) - redis_cpu_before,
            "client": own_cpu_s() - client_cpu_before,
        }
        busy = machine_cpu_s()["busy"] - machine_before
    cpu_s["other"] = max(0.0, busy - sum(cpu_s.values()))
    follower.scan()
    failed = follower.matches[BOOT_FAILED_MARKER].first
    if failed is not None:
        raise BenchmarkError(f"the daemon's boot recovery did not finish: {failed.message}")
    return {
        "boot_s": reconciled.at_s - daemon.started_at_s,
        "parts_s": _parts(follower, daemon.started_at_s, reconciled),
        "reconciled": _reconciled_counts(reconciled),
        "daemon_rss_kib": memory["VmRSS"],
        "daemon_peak_rss_kib": memory["VmHWM"],
        "cpu_s": {name: round(value, 2) for name, value in cpu_s.items()},
        "agent_waits": standin.agent_waits if standin is not None else 0,
        "resume_lines": follower.matches[RESUMING_MARKER].count,
        "log_lines": follower.matches[ANY_LINE].count,
        "redis_forks": await _forks(client) - forks_before,
        "load_average": load_average(),
    }


async def _forks(client: aioredis.Redis) -> int:
    stats = await client.info("stats")
    return int(stats["total_forks"])


def _parts(follower: LogFollower, started_at_s: float, reconciled: LogLine) -> dict[str, float | None]:
    """Split the boot at the time stamps of its log lines."""
    matches = follower.matches
    starting = matches[STARTING_MARKER].first
    ready = matches[READY_MARKER].first
    first_resume = matches[RESUMING_MARKER].first
    last_resume = matches[RESUMING_MARKER].last

    def between(start: LogLine | None, end: LogLine | None) -> float | None:
        return None if start is None or end is None else end.at_s - start.at_s

    return {
        "process created -> first log line (interpreter, imports)": (
            None if starting is None else starting.at_s - started_at_s
        ),
        "first log line -> ready (Redis, scripts, worker, socket)": between(starting, ready),
        "ready -> first dispatch resumed (retries re-armed, queued jobs loaded)": between(
            ready, first_resume
        ),
        "first -> last dispatch resumed": between(first_resume, last_resume),
        "last dispatch resumed -> reconciled (active runs checked)": between(last_resume, reconciled),
        "ready -> reconciled": between(ready, reconciled),
    }


def _reconciled_counts(line: LogLine) -> dict[str, int]:
    found = RECONCILED_PATTERN.search(line.message)
    if found is None:
        raise BenchmarkError(f"cannot read the counts of the reconciliation line {line.message!r}")
    return {name: int(value) for name, value in found.groupdict().items() if name != "gateway"}


def _checked(step: RecoveryStep) -> RecoveryStep:
    """Check that the reconciliation handled every seeded job, and return the step."""
    counts = step.reconciled
    problems = []
    if counts["rearmed_retries"] != step.seeded["retrying"]:
        problems.append(f"{counts['rearmed_retries']} retries re-armed of {step.seeded['retrying']}")
    if counts["resumed_dispatches"] != step.seeded["queued"]:
        problems.append(f"{counts['resumed_dispatches']} dispatches resumed of {step.seeded['queued']}")
    if step.gateway == "none" and counts["runs_checked"] != 0:
        problems.append(f"{counts['runs_checked']} runs checked without a gateway token")
    # With a gateway, resumed dispatches and relayed retries that ran before the active jobs were
    # loaded are active too, so more runs than seeded may be checked.
    if step.gateway != "none" and counts["runs_checked"] < step.seeded["active"]:
        problems.append(f"{counts['runs_checked']} runs checked of {step.seeded['active']} active jobs")
    if counts["runs_failed"] != 0:
        problems.append(f"{counts['runs_failed']} runs found failed, though the gateway reported none")
    if problems:
        raise BenchmarkError(f"boot recovery of {step.name}: " + "; ".join(problems))
    return step
