"""The in-process arq worker: task functions, their settings, and a supervisor that restarts it.

arq's worker exits when its Redis connection drops, so ``WorkerSupervisor`` runs it in a loop and
starts it again after an exponential backoff. arq jobs are serialized as JSON, never pickled.

Task functions stay short and catch their own errors: arq treats an ordinary exception as final
and has no hook for it, so each task logs what failed and leaves the next run to pick it up.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from arq.cron import cron
from arq.worker import Retry, Worker, func
from loguru import logger

from orchestrator.alerts import AlertDeliveryError, AlertSink, build_alert
from orchestrator.connection import REDIS_DOWN_ERRORS, arq_redis_settings
from orchestrator.dispatch import Dispatcher
from orchestrator.errors import JobNotFound
from orchestrator.gateway import GatewayError
from orchestrator.jobs import JobStatus
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from orchestrator.tracker import now_ms

PURGE_BATCH = 500
PURGE_TIMEOUT_S = 60
# arq retries a task only when it raises Retry; these bound how often, for Redis outages (dispatch)
# and for a failing sink (alerts, where Settings.alert_max_tries is the real limit).
DISPATCH_MAX_TRIES = 1_000
RETRY_DEFER_CAP_S = 60.0
ALERT_DEFER_CAP_S = 300.0
# arq's in-progress lock lasts the slowest function's timeout plus 10 s: keep these explicit.
TASK_TIMEOUT_MARGIN_S = 15.0
WORKER_POLL_DELAY_S = 0.2
ALERT_RETRY_ERRORS: tuple[type[Exception], ...] = (AlertDeliveryError, GatewayError, *REDIS_DOWN_ERRORS)
RESTART_BACKOFF_BASE_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0


async def purge_expired(ctx: dict[str, Any]) -> int:
    """Delete terminal jobs older than their retention; return how many were deleted."""
    store: JobStore = ctx["store"]
    settings: Settings = ctx["settings"]
    retention_s = {
        JobStatus.COMPLETED: settings.completed_ttl_s,
        JobStatus.CANCELLED: settings.completed_ttl_s,
        JobStatus.FAILED: settings.failed_ttl_s,
    }
    deleted = 0
    try:
        for status, ttl_s in retention_s.items():
            deleted += await _purge_status(store, status, now_ms() - ttl_s * 1000)
    except REDIS_DOWN_ERRORS as e:
        logger.warning("retention purge stopped after {} jobs, Redis is unavailable: {}", deleted, e)
        return deleted
    if deleted:
        logger.info("retention purge deleted {} expired jobs", deleted)
    return deleted


async def dispatch_retry(ctx: dict[str, Any], job_id: str, number: int) -> str:
    """Re-dispatch a retrying job through the gateway (see ``Dispatcher``).

    Gateway failures are recorded on the job by the dispatcher. A Redis failure leaves the dispatch
    claimed or unclaimed; arq then runs this task again, and the claim resumes it with the same key.
    """
    dispatcher: Dispatcher = ctx["dispatcher"]
    try:
        return await dispatcher.redispatch(job_id, number)
    except REDIS_DOWN_ERRORS as e:
        defer_s = min(RETRY_DEFER_CAP_S, 2.0 ** ctx["job_try"])
        logger.bind(job_id=job_id, dispatch=number).warning(
            "re-dispatch {} of job {} interrupted, Redis is unavailable: {}; trying again in {:.0f}s",
            number,
            job_id,
            e,
            defer_s,
        )
        raise Retry(defer=defer_s) from e


async def deliver_alert(ctx: dict[str, Any], job_id: str, failure: int, sink_name: str) -> str:
    """Deliver one dead-letter alert to one sink, at most ``alert_max_tries`` times."""
    store: JobStore = ctx["store"]
    settings: Settings = ctx["settings"]
    sinks: dict[str, AlertSink] = ctx["alert_sinks"]
    log = logger.bind(job_id=job_id, sink=sink_name)
    sink = sinks.get(sink_name)
    if sink is None:
        log.warning("alert for job {} not sent: sink {} is no longer configured", job_id, sink_name)
        return "unconfigured"
    try:
        if await store.alert_delivered(job_id, failure, sink_name):
            return "already delivered"
        job = await store.get_job(job_id)
        await sink.send(build_alert(job, failure, task_max_chars=settings.alert_task_max_chars))
        await store.mark_alert_delivered(job_id, failure, sink_name, ttl_s=settings.failed_ttl_s)
    except JobNotFound:
        log.info("alert for job {} not sent: the job was purged", job_id)
        return "job gone"
    except ALERT_RETRY_ERRORS as e:
        tries = int(ctx["job_try"])
        _count_alert(ctx, sink_name, ok=False)
        if tries >= settings.alert_max_tries:
            log.error("gave up the {} alert for job {} after {} tries: {}", sink_name, job_id, tries, e)
            return "gave up"
        defer_s = min(ALERT_DEFER_CAP_S, settings.alert_retry_base_s * 2.0 ** (tries - 1))
        log.warning(
            "{} alert for job {} failed (try {}): {}; trying again in {:.0f}s",
            sink_name,
            job_id,
            tries,
            e,
            defer_s,
        )
        raise Retry(defer=defer_s) from e
    _count_alert(ctx, sink_name, ok=True)
    log.info("alert for job {} delivered to {}", job_id, sink_name)
    return "delivered"


def _count_alert(ctx: dict[str, Any], sink_name: str, *, ok: bool) -> None:
    metrics: Metrics | None = ctx.get("metrics")
    if metrics is not None:
        metrics.alert_sent(sink_name, ok)


async def _purge_status(store: JobStore, status: JobStatus, before_ms: int) -> int:
    deleted = 0
    while job_ids := await store.job_ids_in_status_before(status, before_ms, PURGE_BATCH):
        for job_id in job_ids:
            deleted += int(await store.purge_job(job_id))
    return deleted


def build_worker(settings: Settings, store: JobStore, context: dict[str, Any]) -> Worker:
    """Build the worker for this daemon's gateway queue; ``context`` adds the task dependencies."""
    return Worker(
        functions=[
            func(
                dispatch_retry,
                name="dispatch_retry",
                timeout=settings.dispatch_timeout_s + TASK_TIMEOUT_MARGIN_S,
                max_tries=DISPATCH_MAX_TRIES,
            ),
            func(
                deliver_alert,
                name="deliver_alert",
                timeout=max(settings.alert_webhook_timeout_s, settings.dispatch_timeout_s)
                + TASK_TIMEOUT_MARGIN_S,
                max_tries=settings.alert_max_tries,
            ),
        ],
        cron_jobs=[
            cron(
                purge_expired,
                name="purge_expired",
                minute=set(range(0, 60, 10)),
                second=0,
                timeout=PURGE_TIMEOUT_S,
                run_at_startup=True,
            ),
        ],
        queue_name=store.keys.arq_queue(settings.gateway_id),
        health_check_key=store.keys.arq_health_check(settings.gateway_id),
        redis_settings=arq_redis_settings(settings),
        handle_signals=False,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        ctx={"store": store, "settings": settings, **context},
        poll_delay=WORKER_POLL_DELAY_S,
        max_jobs=32,
        keep_result=60,
        log_results=False,
    )


class WorkerSupervisor:
    """Runs the arq worker and restarts it when it exits with an error."""

    def __init__(self, settings: Settings, store: JobStore, context: dict[str, Any]) -> None:
        self._settings = settings
        self._store = store
        self._context = context
        self._worker: Worker | None = None
        self._stopping = asyncio.Event()
        self.restarts = 0

    async def run(self) -> None:
        backoff_s = RESTART_BACKOFF_BASE_S
        while not self._stopping.is_set():
            self._worker = build_worker(self._settings, self._store, self._context)
            logger.info(
                "arq worker started on queue {}", self._store.keys.arq_queue(self._settings.gateway_id)
            )
            try:
                await self._worker.async_run()
                backoff_s = RESTART_BACKOFF_BASE_S
            except asyncio.CancelledError:
                if self._stopping.is_set():
                    break
                raise
            except Exception as e:
                self.restarts += 1
                logger.warning("arq worker stopped with {!r}; restarting it in {:.1f}s", e, backoff_s)
                await self._close_worker()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff_s)
                backoff_s = min(backoff_s * 2, RESTART_BACKOFF_CAP_S)
        logger.info("arq worker stopped")

    async def stop(self) -> None:
        """Cancel running tasks and close the worker's Redis pool."""
        self._stopping.set()
        await self._close_worker()

    async def _close_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(asyncio.CancelledError, *REDIS_DOWN_ERRORS):
            await worker.close()
