"""Recovery: replaying the spool after a Redis outage, and reconciling unfinished jobs.

Replay applies the spooled request lines in order through the same Lua script as live events,
so a line applied twice (after a crash in the middle of a replay) changes nothing the second
time. Spooled direct-dispatch records are applied as claimed and accepted dispatches, so the job
does not get a second dispatch for the same failure.

Reconciliation runs at start and after each gateway_start event of this daemon's gateway. It
puts every RETRYING job back in the outbox (arq refuses a dispatch it already holds, so a retry
is armed once), enqueues again the dispatch of every job left QUEUED by an interrupted dispatch,
and queries the gateway about the runs of ACTIVE jobs: a run the gateway reports as failed is
treated as an interrupted attempt and retried per policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from arq.connections import ArqRedis
from loguru import logger

from orchestrator.breaker import BreakerState, CircuitBreaker
from orchestrator.connection import REDIS_DOWN_ERRORS
from orchestrator.dispatch import DIRECT_DISPATCH_KEY, DirectDispatcher
from orchestrator.gateway import GatewayClient, GatewayError
from orchestrator.jobs import Effect, JobKind, JobStatus
from orchestrator.openclaw import map_event
from orchestrator.outbox import DISPATCH_TASK, dispatch_job_id
from orchestrator.protocol import ProtocolError, parse_request
from orchestrator.spool import Spool
from orchestrator.store import JobStore
from orchestrator.tracker import log_transitions, now_ms

# A spool line that records a dispatch made while Redis was unavailable starts with this.
DIRECT_DISPATCH_PREFIX = b'{"' + DIRECT_DISPATCH_KEY.encode() + b'":'
RECONCILE_PAGE = 1_000
RUN_CHECK_CONCURRENCY = 8
# Dispatches enqueued again at once; each is a few Redis round trips in arq's enqueue.
RESUME_CONCURRENCY = 100
RUN_CHECK_TIMEOUT_S = 5.0


@dataclass(slots=True)
class ReplayCounts:
    events: int = 0
    direct_dispatches: int = 0
    skipped: int = 0


class SpoolReplayer:
    """Applies the spool to Redis; one replay runs at a time."""

    def __init__(
        self,
        spool: Spool,
        store: JobStore,
        *,
        owner: str,
        task_max_chars: int,
        pause_relay: Callable[[bool], None] | None = None,
    ) -> None:
        self._spool = spool
        self._store = store
        self._owner = owner
        self._task_max_chars = task_max_chars
        self._pause_relay = pause_relay
        self._lock = asyncio.Lock()

    async def replay(self) -> ReplayCounts:
        counts = ReplayCounts()
        async with self._lock:
            if self._spool.pending_bytes() == 0:
                await self._spool.truncate_if_replayed()
                return counts
            logger.info("replaying the spool {} ({} bytes)", self._spool.path, self._spool.pending_bytes())
            if self._pause_relay is not None:
                self._pause_relay(True)
            try:
                async for lines in self._spool.replay_batches():
                    for line in lines:
                        await self._apply_line(line, counts)
                    await self._spool.commit()
                await self._spool.truncate_if_replayed()
            finally:
                if self._pause_relay is not None:
                    self._pause_relay(False)
        logger.info(
            "spool replay done: {} events, {} direct dispatches, {} lines skipped",
            counts.events,
            counts.direct_dispatches,
            counts.skipped,
        )
        return counts

    async def _apply_line(self, line: bytes, counts: ReplayCounts) -> None:
        if line.startswith(DIRECT_DISPATCH_PREFIX):
            record = orjson.loads(line)[DIRECT_DISPATCH_KEY]
            counts.direct_dispatches += await self._apply_direct_dispatch(record)
            return
        try:
            request = parse_request(line)
            effect = map_event(request, task_max_chars=self._task_max_chars, owner=self._owner)
        except ProtocolError as e:
            logger.error("skipped a spool line that no longer parses: {}", e.message)
            counts.skipped += 1
            return
        if effect is None:
            return
        result = await self._store.apply(request.id, effect, now_ms())
        log_transitions(result.transitions, event_id=request.id)
        counts.events += 1

    async def _apply_direct_dispatch(self, record: dict[str, Any]) -> int:
        job_id = await self._store.job_for_event(record["event_id"])
        if job_id is None:
            logger.warning(
                "direct dispatch after event {} matches no job; nothing recorded", record["event_id"]
            )
            return 0
        job = await self._store.get_job(job_id)
        if job.status is not JobStatus.RETRYING:
            logger.bind(job_id=job_id).info(
                "direct dispatch not recorded: job {} is {}", job_id, job.status.value
            )
            return 0
        number = job.dispatches + 1
        claim = await self._store.claim_dispatch(job_id, number, now_ms(), record["run_id"])
        log_transitions(claim.transitions, event_id=None)
        if claim.verdict != "claimed":
            return 0
        outcome = await self._store.finish_dispatch(
            job_id,
            number,
            now_ms(),
            result="accepted",
            reason=f"re-dispatched by {record['method']} while Redis was unavailable",
        )
        log_transitions(outcome.transitions, event_id=None)
        return 1


@dataclass(slots=True)
class ReconcileCounts:
    rearmed_retries: int = 0
    resumed_dispatches: int = 0
    runs_checked: int = 0
    runs_failed: int = 0


class Reconciler:
    """Re-arms the unfinished work of one gateway."""

    def __init__(
        self,
        store: JobStore,
        pool: ArqRedis,
        *,
        owner: str,
        gateway: GatewayClient | None,
        wake_relay: Callable[[], None],
    ) -> None:
        self._store = store
        self._pool = pool
        self._owner = owner
        self._gateway = gateway
        self._wake_relay = wake_relay

    async def reconcile(self, *, check_runs: bool, at_boot: bool = False) -> ReconcileCounts:
        """Re-arm retries, resume interrupted dispatches and, with ``check_runs``, check active runs.

        ``at_boot`` also releases arq's in-progress locks of this gateway's interrupted dispatches:
        they belong to a worker that died with the previous process, and arq would otherwise wait
        out the lock (the longest task timeout plus 10 s) before running them again.
        NOTE: this assumes one running daemon per gateway id, which the docs require.
        """
        counts = ReconcileCounts()
        retrying = await self._store.owned_jobs(JobStatus.RETRYING, self._owner)
        counts.rearmed_retries = await self._store.rearm_retries(self._owner, [job.id for job in retrying])
        interrupted = [
            job for job in await self._store.owned_jobs(JobStatus.QUEUED, self._owner) if job.dispatches > 0
        ]
        for start in range(0, len(interrupted), RESUME_CONCURRENCY):
            chunk = interrupted[start : start + RESUME_CONCURRENCY]
            resumed = await asyncio.gather(
                *(self._resume_dispatch(job.id, job.dispatches, at_boot) for job in chunk)
            )
            counts.resumed_dispatches += sum(resumed)
        if check_runs and self._gateway is not None:
            await self._check_active_runs(self._gateway, counts)
        self._wake_relay()
        logger.info(
            "reconciled gateway {}: {} retries re-armed, {} dispatches resumed, {} runs checked, {} found failed",
            self._owner,
            counts.rearmed_retries,
            counts.resumed_dispatches,
            counts.runs_checked,
            counts.runs_failed,
        )
        return counts

    async def _resume_dispatch(self, job_id: str, number: int, at_boot: bool) -> int:
        arq_job_id = dispatch_job_id(self._store.keys.prefix, job_id, number)
        if at_boot:
            await self._pool.delete(self._store.keys.arq_in_progress(arq_job_id))
        queued = await self._pool.enqueue_job(
            DISPATCH_TASK,
            job_id,
            number,
            _job_id=arq_job_id,
            _queue_name=self._store.keys.arq_queue(self._owner),
        )
        if queued is None:
            logger.bind(job_id=job_id).debug(
                "dispatch {} of job {} is still queued in arq; it resumes there", number, job_id
            )
            return 0
        logger.bind(job_id=job_id).debug("resuming interrupted dispatch {} of job {}", number, job_id)
        return 1

    async def _check_active_runs(self, gateway: GatewayClient, counts: ReconcileCounts) -> None:
        active = await self._store.owned_jobs(JobStatus.ACTIVE, self._owner)
        semaphore = asyncio.Semaphore(RUN_CHECK_CONCURRENCY)

        async def check(job_id: str, run_id: str, kind: JobKind) -> None:
            async with semaphore:
                failed = await self._run_failed(gateway, run_id)
            counts.runs_checked += 1
            if failed is not None:
                counts.runs_failed += 1
                await self._mark_interrupted(job_id, run_id, kind, failed)

        await asyncio.gather(*(check(job.id, job.run_id, job.kind) for job in active if job.run_id))

    async def _run_failed(self, gateway: GatewayClient, run_id: str) -> str | None:
        """Return the gateway's error when it reports the run failed, else None."""
        try:
            answer = await gateway.agent_wait(run_id, timeout_ms=1, timeout_s=RUN_CHECK_TIMEOUT_S)
        except GatewayError as e:
            logger.debug("cannot check run {} with the gateway: {}", run_id, e)
            return None
        if answer.get("status") == "error":
            return str(answer.get("error") or "the gateway reports the run failed")
        return None

    async def _mark_interrupted(self, job_id: str, run_id: str, kind: JobKind, error: str) -> None:
        effect = Effect(
            hook="reconcile",
            reason="reconciled: the gateway reports the run failed",
            lookup=(("run", run_id),),
            fields={"last_error": error},
            status_by_kind={kind: JobStatus.RETRYING},
            run_id=run_id,
        )
        result = await self._store.apply(f"reconcile-{job_id}-{run_id}", effect, now_ms())
        log_transitions(result.transitions, event_id=None)


# The gateway settles the children that a crash interrupted about 24 s after it is ready
# (OpenClaw 2026.9.6); runs are checked after that, so its own verdict arrives first.
GATEWAY_SETTLE_DELAY_S = 45.0
SPOOL_WATCH_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 5.0


class Recovery:
    """Runs the spool replay and reconciliation at the right moments, in the background."""

    def __init__(
        self,
        replayer: SpoolReplayer,
        reconciler: Reconciler,
        direct: DirectDispatcher,
        *,
        settle_delay_s: float = GATEWAY_SETTLE_DELAY_S,
    ) -> None:
        self.replayer = replayer
        self.reconciler = reconciler
        self.direct = direct
        self._settle_delay_s = settle_delay_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replay_task: asyncio.Task[Any] | None = None

    def boot(self) -> None:
        """Replay the spool, then reconcile every unfinished job of this gateway."""
        self._spawn(self._boot(), "boot recovery")

    def on_breaker_change(self, state: BreakerState) -> None:
        if state is BreakerState.CLOSED:
            self.request_replay()

    def request_replay(self) -> None:
        """Replay the spool now unless a replay is already running."""
        if self._replay_task is None or self._replay_task.done():
            self._replay_task = self._spawn(self.replayer.replay(), "spool replay")

    def watch_spool(
        self, breaker: CircuitBreaker, spool: Spool, probe: Callable[[], Awaitable[object]]
    ) -> None:
        """Replay the spool once Redis is back even when no new event arrives to find out.

        Every ``SPOOL_WATCH_INTERVAL_S``, while the spool holds data and the breaker lets an
        operation through, ``probe`` (a PING) checks Redis. Its result goes to the breaker, and its
        success requests a replay (a no-op while one runs).
        """
        self._spawn(self._watch_spool(breaker, spool, probe), "spool watch")

    async def _watch_spool(
        self, breaker: CircuitBreaker, spool: Spool, probe: Callable[[], Awaitable[object]]
    ) -> None:
        while True:
            await asyncio.sleep(SPOOL_WATCH_INTERVAL_S)
            if spool.size_bytes == 0 or not breaker.allow():
                continue
            try:
                await probe()
            except REDIS_DOWN_ERRORS as e:
                breaker.record_failure(e)
                continue
            breaker.record_success()  # closing an open breaker requests a replay too
            self.request_replay()

    def gateway_started(self) -> None:
        """Re-arm at once, and check the runs of active jobs once the gateway has settled."""
        self._spawn(self._after_gateway_start(), "reconciliation after gateway_start")

    async def stop(self) -> None:
        await self.direct.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded for the reason given in RetryComponents.stop.
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT_S)

    async def _boot(self) -> None:
        await self.replayer.replay()
        await self.reconciler.reconcile(check_runs=True, at_boot=True)

    async def _after_gateway_start(self) -> None:
        await self.reconciler.reconcile(check_runs=False)
        await asyncio.sleep(self._settle_delay_s)
        await self.reconciler.reconcile(check_runs=True)

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guard(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _guard(work: Coroutine[Any, Any, Any], name: str) -> None:
        try:
            await work
        except REDIS_DOWN_ERRORS as e:
            logger.warning("{} stopped, Redis is unavailable: {}; it runs again when Redis is back", name, e)
        except Exception:
            logger.exception("{} failed", name)
