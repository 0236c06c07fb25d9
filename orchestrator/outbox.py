"""The outbox relay: hands retries and dead-letter alerts from the job scripts to arq.

The Lua scripts add ``retry|<job>`` or ``alert|<job>|<n>`` to ``P:outbox:<gateway>`` in the same
atomic step that moves a job to RETRYING or FAILED, so no retry or alert is lost if the daemon
dies right after. The relay turns each entry into arq jobs with deterministic job ids and removes
it only after arq accepted them. After a crash the same entry is relayed again, and arq refuses
the duplicate job id.
"""

from __future__ import annotations

import asyncio
import contextlib

from arq.connections import ArqRedis
from loguru import logger

from orchestrator.alerts import build_alert, log_alert
from orchestrator.connection import REDIS_DOWN_ERRORS
from orchestrator.errors import JobNotFound
from orchestrator.jobs import JobStatus
from orchestrator.logs import Throttle
from orchestrator.metrics import Metrics
from orchestrator.retry import RetryPolicies, jitter_fraction
from orchestrator.store import JobStore
from orchestrator.tracker import now_ms

RELAY_BATCH = 100
IDLE_POLL_S = 1.0
DISPATCH_TASK = "dispatch_retry"
ALERT_TASK = "deliver_alert"


def dispatch_job_id(prefix: str, job_id: str, number: int) -> str:
    return f"{prefix}:dispatch:{job_id}:{number}"


def alert_job_id(prefix: str, job_id: str, failure: int, sink: str) -> str:
    return f"{prefix}:alert:{job_id}:{failure}:{sink}"


class OutboxRelay:
    """Moves one gateway's outbox entries into its arq queue."""

    def __init__(
        self,
        store: JobStore,
        pool: ArqRedis,
        *,
        source: str,
        policies: RetryPolicies,
        sink_names: list[str],
        alert_task_max_chars: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._pool = pool
        self._source = source
        self._policies = policies
        self._sink_names = sink_names
        self._alert_task_max_chars = alert_task_max_chars
        self._queue = store.keys.arq_queue(source)
        self._wake = asyncio.Event()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._stopping = False
        self._error_log = Throttle(interval_s=10.0)

    def wake(self) -> None:
        """Relay soon: a transition just added outbox entries."""
        self._wake.set()

    def stop(self) -> None:
        """Make ``run`` return at its next turn, also if a library swallowed its cancellation."""
        self._stopping = True
        self._wake.set()
        self._unpaused.set()

    def pause(self, paused: bool) -> None:
        """Hold relaying while the spool replays, so a replayed direct dispatch is recorded first."""
        if paused:
            self._unpaused.clear()
        else:
            self._unpaused.set()
            self._wake.set()

    async def run(self) -> None:
        logger.info("outbox relay started for gateway {}", self._source)
        try:
            while not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                self._wake.clear()
                await self._unpaused.wait()
                try:
                    while await self.relay_once() == RELAY_BATCH:
                        pass
                except REDIS_DOWN_ERRORS as e:
                    if (count := self._error_log.ready()) is not None:
                        logger.warning("outbox relay paused, Redis is unavailable ({} times): {}", count, e)
        finally:
            logger.info("outbox relay stopped")

    async def relay_once(self) -> int:
        """Relay up to one batch of entries, concurrently; return how many were read.

        Entries are independent (each names its own job and arq job id), so their order does
        not matter; each is removed only after its own relay succeeded.
        """
        members = await self._store.outbox_items(self._source, RELAY_BATCH)
        await asyncio.gather(*(self._relay_and_remove(member) for member in members))
        return len(members)

    async def _relay_and_remove(self, member: str) -> None:
        await self._relay(member)
        await self._store.remove_outbox_item(self._source, member)

    async def _relay(self, member: str) -> None:
        kind, _, rest = member.partition("|")
        try:
            if kind == "retry":
                await self._relay_retry(rest)
            elif kind == "alert":
                job_id, _, failure = rest.partition("|")
                await self._relay_alert(job_id, int(failure))
            else:
                logger.error("dropped unknown outbox entry {!r}", member)
        except JobNotFound:
            logger.info("dropped outbox entry {!r}: the job no longer exists", member)

    async def _relay_retry(self, job_id: str) -> None:
        job = await self._store.get_job(job_id)
        if job.status is not JobStatus.RETRYING:
            logger.bind(job_id=job_id).debug("no retry scheduled: job {} is {}", job_id, job.status.value)
            return
        number = job.dispatches + 1
        delay_s = self._policies.for_agent(job.agent_id).delay_s(
            job.attempts, jitter_fraction(job.id, number)
        )
        await self._store.set_next_retry(job.id, now_ms() + int(delay_s * 1000))
        await self._pool.enqueue_job(
            DISPATCH_TASK,
            job.id,
            number,
            _job_id=dispatch_job_id(self._store.keys.prefix, job.id, number),
            _queue_name=self._queue,
            _defer_by=delay_s,
        )
        if self._metrics is not None:
            self._metrics.retry_scheduled(job.agent_id)
        logger.bind(job_id=job.id, agent_id=job.agent_id).warning(
            "job {} will be re-dispatched in {:.1f}s (dispatch {}, after attempt {} of {}); last error: {}",
            job.id,
            delay_s,
            number,
            job.attempts,
            job.max_attempts,
            job.last_error,
        )

    async def _relay_alert(self, job_id: str, failure: int) -> None:
        job = await self._store.get_job(job_id)
        alert = build_alert(job, failure, task_max_chars=self._alert_task_max_chars)
        log_alert(alert)
        for sink in self._sink_names:
            await self._pool.enqueue_job(
                ALERT_TASK,
                job.id,
                failure,
                sink,
                _job_id=alert_job_id(self._store.keys.prefix, job.id, failure, sink),
                _queue_name=self._queue,
            )
