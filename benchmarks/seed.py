"""Jobs written straight into Redis with the daemon's own Lua scripts, for the dispatch and recovery phases.

Each job is one unique lifecycle of the workload, and gets its state from the script calls the
daemon itself makes:

- ``active``: ``apply_event.lua`` with the captured ``subagent_spawned`` and the accepted
  ``after_tool_call``. The job has a run id, a child session key and its task text.
- ``retrying``: the same, then a ``subagent_ended`` with outcome ``error``. The script also adds
  ``retry|JOB`` to the gateway's outbox.
- ``queued`` with dispatch 1 claimed: the same as ``retrying``, then ``claim_dispatch.lua`` for
  dispatch 1, which a daemon that died during the gateway call leaves behind.

The calls go in non-transactional pipelines from a few connections at once. The calls of one job
stay in one pipeline, in order, and the claims go in a second round, because they need the job
ids that the apply script drew.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis

from benchmarks.ingest import BenchmarkError
from benchmarks.workload import Workload
from orchestrator.jobs import Effect, dispatch_key
from orchestrator.keys import Keys
from orchestrator.openclaw import map_event
from orchestrator.protocol import parse_request
from orchestrator.settings import Settings
from orchestrator.store import ApplyResult, JobStore, render_script

SEED_CONNECTIONS = 4
JOBS_PER_PIPELINE = 200
TASK_MAX_CHARS = Settings.model_fields["task_max_chars"].default
SEED_ERROR = "benchmark: the child run failed"
# Seeded jobs keep their stored acks and parked events this long; no phase runs for a day.
SEED_TTL_S = 86_400


def failed_end_line(ended: bytes) -> bytes:
    """Return a ``subagent_ended`` request line with outcome ``error`` in place of ``ok``."""
    frame = orjson.loads(ended)
    if frame.get("hook") != "subagent_ended":
        raise BenchmarkError(f"expected a subagent_ended line, got hook {frame.get('hook')!r}")
    frame["event"]["outcome"] = "error"
    frame["event"]["error"] = SEED_ERROR
    return orjson.dumps(frame) + b"\n"


@dataclass(frozen=True, slots=True)
class SeedPlan:
    """How many jobs to write in each state."""

    active: int = 0
    retrying: int = 0
    queued: int = 0

    @property
    def total(self) -> int:
        return self.active + self.retrying + self.queued

    @classmethod
    def thirds(cls, jobs: int) -> SeedPlan:
        """Split ``jobs`` into active, retrying and queued jobs, as evenly as possible."""
        third = jobs // 3
        return cls(active=jobs - 2 * third, retrying=third, queued=third)


@dataclass(slots=True)
class Seeded:
    """Ids of the jobs written, by state, and the seconds the writes took."""

    active: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    # Request lines of a subagent_ended error for each active job, in the order of ``active``.
    failure_lines: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _JobCalls:
    state: str  # active, retrying or queued
    events: list[tuple[str, Effect]]
    failure_line: bytes


class JobSeeder:
    """Writes jobs of one gateway under one key prefix, through the store's scripts."""

    def __init__(self, client: aioredis.Redis, prefix: str, owner: str, workload: Workload) -> None:
        self._client = client
        self._owner = owner
        self._workload = workload
        self.keys = Keys(prefix)
        self.store = JobStore(
            client,
            self.keys,
            event_ttl_s=SEED_TTL_S,
            orphan_ttl_s=SEED_TTL_S,
            max_attempts=Settings.model_fields["max_attempts"].default,
        )
        self._claim_script = render_script("claim_dispatch.lua")
        self._claim_sha = ""

    async def write(self, plan: SeedPlan, *, clear_outbox: bool) -> Seeded:
        """Write the jobs of ``plan``; with ``clear_outbox``, delete the retries' outbox entries after.

        A cleared outbox is the state of a daemon whose relay had handed every retry to arq before
        it stopped, so only the reconciliation can arm the retries again.
        """
        await self.store.load_scripts()
        self._claim_sha = await self._client.script_load(self._claim_script)
        states = ["active"] * plan.active + ["retrying"] * plan.retrying + ["queued"] * plan.queued
        seeded = Seeded()
        started_at = time.perf_counter()
        chunks = [
            states[start : start + JOBS_PER_PIPELINE] for start in range(0, len(states), JOBS_PER_PIPELINE)
        ]
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for chunk in chunks:
            queue.put_nowait(chunk)
        await asyncio.gather(*(self._write_chunks(queue, seeded) for _ in range(SEED_CONNECTIONS)))
        if clear_outbox:
            await self._client.delete(self.keys.outbox(self._owner))
        seeded.seconds = time.perf_counter() - started_at
        await self._check(plan, seeded)
        return seeded

    async def _write_chunks(self, queue: asyncio.Queue[list[str]], seeded: Seeded) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            # Building the calls here, per chunk, overlaps this work with the other connections' waits.
            jobs = [self._job_calls(state) for state in chunk]
            job_ids = await self._apply(jobs)
            claims = [job_id for job, job_id in zip(jobs, job_ids, strict=True) if job.state == "queued"]
            await self._claim(claims)
            for job, job_id in zip(jobs, job_ids, strict=True):
                getattr(seeded, job.state).append(job_id)
                if job.state == "active":
                    seeded.failure_lines.append(job.failure_line)

    def _job_calls(self, state: str) -> _JobCalls:
        spawned, tool_call, _agent_end, ended = self._workload.lifecycles(1)[0]
        failure = failed_end_line(ended)
        lines = [spawned, tool_call] if state == "active" else [spawned, tool_call, failure]
        events = []
        for line in lines:
            request = parse_request(line)
            effect = map_event(request, task_max_chars=TASK_MAX_CHARS, owner=self._owner)
            if effect is None:
                raise BenchmarkError(f"event {request.id} ({request.hook}) maps to no job change")
            events.append((request.id, effect))
        return _JobCalls(state=state, events=events, failure_line=failure)

    async def _apply(self, jobs: list[_JobCalls]) -> list[str]:
        """Apply the events of ``jobs`` in one pipeline and return the job id of each."""
        now_ms = time.time_ns() // 1_000_000
        async with self._client.pipeline(transaction=False) as pipe:
            for job in jobs:
                for event_id, effect in job.events:
                    self.store.queue_apply(pipe, event_id, effect, now_ms)
            replies = await pipe.execute()
        job_ids = []
        position = 0
        for job in jobs:
            first = ApplyResult.from_reply(replies[position])
            if first.outcome != "created" or first.job_id is None:
                raise BenchmarkError(f"the first event of a seeded job was {first.outcome}, not created")
            job_ids.append(first.job_id)
            position += len(job.events)
        return job_ids

    async def _claim(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        now_ms = time.time_ns() // 1_000_000
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.evalsha(
                    self._claim_sha, 0, self.keys.prefix, job_id, "1", str(now_ms), dispatch_key(job_id, 1)
                )
            replies = await pipe.execute()
        verdicts = {reply[0] for reply in replies}
        if verdicts != {"claimed"}:
            raise BenchmarkError(f"claiming dispatch 1 of seeded jobs returned {sorted(verdicts)}")

    async def _check(self, plan: SeedPlan, seeded: Seeded) -> None:
        """Check the job count of each state in Redis, so that a phase starts from what it reports."""
        async with self._client.pipeline(transaction=False) as pipe:
            for state in ("active", "retrying", "queued"):
                pipe.zcard(self.keys.status_index(state))
            counts = await pipe.execute()
        expected = [plan.active, plan.retrying, plan.queued]
        written = [len(seeded.active), len(seeded.retrying), len(seeded.queued)]
        if counts != expected or written != expected:
            raise BenchmarkError(
                f"expected {expected} active, retrying and queued jobs under {self.keys.prefix}, "
                f"but Redis has {counts} and the seeder wrote {written}"
            )
