"""The tracker: turns request lines into stored job effects and response lines.

Parsing and mapping happen as a line arrives. Storage uses group commit: the committer task takes
every event waiting from all connections, sends them to Redis in one pipeline, and resolves each
event's future with its ack only after Redis has replied. One round trip then serves many events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from redis.exceptions import NoScriptError

from orchestrator.breaker import CircuitBreaker
from orchestrator.connection import REDIS_DOWN_ERRORS
from orchestrator.jobs import Effect, JobStatus
from orchestrator.logs import Throttle
from orchestrator.metrics import Metrics
from orchestrator.openclaw import map_event
from orchestrator.protocol import (
    ErrorCode,
    EventType,
    ProtocolError,
    Request,
    encode_ack,
    encode_error,
    parse_request,
)
from orchestrator.spool import Spool, SpoolFull
from orchestrator.store import ApplyResult, JobStore, Transition

# Entering these statuses adds work to the outbox (a re-dispatch or an alert).
OUTBOX_STATUSES = frozenset({JobStatus.RETRYING, JobStatus.FAILED})


# Pipelines sent to Redis at once; see Tracker.run.
MAX_BATCHES_IN_FLIGHT = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Pending:
    line: bytes
    request: Request
    effect: Effect
    response: asyncio.Future[bytes]
    received_s: float


class Tracker:
    """Validates, maps and stores events; one instance per daemon."""

    def __init__(
        self,
        store: JobStore,
        *,
        max_pending_events: int,
        batch_max: int,
        task_max_chars: int,
        owner: str | None = None,
        on_outbox: Callable[[], None] | None = None,
        breaker: CircuitBreaker | None = None,
        spool: Spool | None = None,
        on_spooled: Callable[[list[tuple[Request, Effect]]], None] | None = None,
        on_gateway_start: Callable[[], None] | None = None,
        on_spool_waiting: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._on_spool_waiting = on_spool_waiting
        self._on_gateway_start = on_gateway_start
        self._store = store
        self._breaker = breaker
        self._spool = spool
        self._on_spooled = on_spooled
        self._owner = owner
        self._foreign_sources: set[str] = set()
        self._on_outbox = on_outbox
        self._max_pending = max_pending_events
        self._batch_max = batch_max
        self._task_max_chars = task_max_chars
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._in_flight = 0
        self._redis_down_log = Throttle(interval_s=10.0)

    @property
    def store(self) -> JobStore:
        return self._store

    @property
    def pending(self) -> int:
        """Events waiting for the committer."""
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        """Events sent to Redis whose reply has not arrived yet."""
        return self._in_flight

    def handle_line(self, line: bytes) -> asyncio.Future[bytes]:
        """Return a future that resolves to the response line for one request line."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        request: Request | None = None
        try:
            request = parse_request(line)
            self._check_source(request)
            effect = map_event(request, task_max_chars=self._task_max_chars, owner=self._owner)
        except ProtocolError as e:
            if e.event_id is None and request is not None:
                e.event_id = request.id  # the payload was invalid, but the frame carried its id
            self._count(_type_label(line), "rejected")
            logger.bind(event_id=e.event_id, code=e.code.value).info("rejected event: {}", e.message)
            future.set_result(encode_error(e.event_id, e.code, e.message))
            return future
        if effect is None:
            self._count(request.type.value, "ignored")
            future.set_result(encode_ack(request.id, None, tracked=True))
            return future
        if self._queue.qsize() >= self._max_pending:
            message = (
                f"{self._queue.qsize()} events are waiting for storage (limit {self._max_pending}); "
                "resend this event later"
            )
            logger.bind(event_id=request.id).warning("rejected event: {}", message)
            self._count(request.type.value, "error")
            future.set_result(encode_error(request.id, ErrorCode.OVERLOADED, message))
            return future
        self._queue.put_nowait(_Pending(line, request, effect, future, time.monotonic()))
        return future

    def _check_source(self, request: Request) -> None:
        """Warn once per plugin gateway id that differs from this daemon's own."""
        if self._owner is None or request.source == self._owner or request.source in self._foreign_sources:
            return
        self._foreign_sources.add(request.source)
        logger.warning(
            "events arrive from gateway {!r}, but this daemon's ORCH_GATEWAY_ID is {!r}: their jobs are "
            "recorded and retried as {!r}; set ORCH_GATEWAY_ID={} (or the plugin's gatewayId) so the "
            "names match",
            request.source,
            self._owner,
            self._owner,
            request.source,
        )

    def _count(self, event_type: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.event_received(event_type, outcome)

    def _observe_latency(self, item: _Pending) -> None:
        if self._metrics is not None:
            self._metrics.observe_ack_latency(time.monotonic() - item.received_s)

    def reject_line(self, code: ErrorCode, message: str) -> asyncio.Future[bytes]:
        """Return a resolved future with an error response for a line that was never parsed."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.set_result(encode_error(None, code, message))
        return future

    async def run(self) -> None:
        """Commit waiting events to Redis until cancelled.

        Up to ``MAX_BATCHES_IN_FLIGHT`` pipelines run at once, each on its own connection, so the
        daemon prepares and resolves one batch while Redis executes another. Batches may then
        apply in any order, which the job model allows: events commute, and each event's
        deduplication and transition are atomic. Responses still go out in request order.
        """
        logger.info("tracker started")
        slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        commits: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                batch = [await self._queue.get()]
                while len(batch) < self._batch_max and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                task = asyncio.create_task(self._commit_batch(batch, slots))
                commits.add(task)
                task.add_done_callback(commits.discard)
        finally:
            for task in commits:
                task.cancel()
            await asyncio.gather(*commits, return_exceptions=True)
            logger.info("tracker stopped")

    async def _commit_batch(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        self._in_flight += len(batch)
        try:
            await self._commit(batch)
        except Exception:
            logger.exception("storing a batch of {} events failed", len(batch))
            _fail_unanswered(batch, "the daemon failed to store the event; resend it")
        finally:
            self._in_flight -= len(batch)
            slots.release()
            for _ in batch:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every event accepted so far has its response."""
        await self._queue.join()

    async def _commit(self, batch: list[_Pending]) -> None:
        if self._breaker is not None and not self._breaker.allow():
            await self._spool_batch(batch)
            return
        replies = await self._execute(batch)
        if replies is None:
            return
        if self._breaker is not None:
            self._breaker.record_success()
        if self._spool is not None and self._spool.size_bytes > 0 and self._on_spool_waiting is not None:
            self._on_spool_waiting()
        retry = [item for item, reply in zip(batch, replies, strict=True) if isinstance(reply, NoScriptError)]
        if retry:
            # Redis restarted and lost its script cache: load the script and run those events again.
            logger.warning("Redis lost the Lua script cache; loading it again for {} events", len(retry))
            await self._store.load_scripts()
            await self._commit(retry)
        for item, reply in zip(batch, replies, strict=True):
            if not isinstance(reply, NoScriptError):
                self._resolve(item, reply)

    async def _execute(self, batch: list[_Pending]) -> list[object] | None:
        at_ms = now_ms()
        try:
            async with self._store.client.pipeline(transaction=False) as pipe:
                for item in batch:
                    self._store.queue_apply(pipe, item.request.id, item.effect, at_ms)
                replies: list[object] = await pipe.execute(raise_on_error=False)
                return replies
        except REDIS_DOWN_ERRORS as e:
            if (count := self._redis_down_log.ready()) is not None:
                logger.error("cannot store events, Redis is unavailable ({} batches failed): {}", count, e)
            if self._breaker is not None:
                self._breaker.record_failure(e)
            if self._spool is not None:
                await self._spool_batch(batch)
            else:
                message = f"Redis is unavailable ({e}); the event was not recorded, resend it"
                _fail_unanswered(batch, message)
            return None

    async def _spool_batch(self, batch: list[_Pending]) -> None:
        """Write the batch to the local spool and ack it with ``tracked: false``."""
        if self._spool is None:
            _fail_unanswered(batch, "Redis is unavailable and no spool is configured; resend the event")
            return
        try:
            await self._spool.append([item.line for item in batch])
        except SpoolFull as e:
            logger.error("rejected {} events: {}", len(batch), e)
            for item in batch:
                item.response.set_result(encode_error(item.request.id, ErrorCode.OVERLOADED, str(e)))
            return
        except OSError as e:
            logger.error("cannot write {} events to the spool {}: {}", len(batch), self._spool.path, e)
            _fail_unanswered(batch, f"writing the local spool failed ({e.strerror}); resend the event")
            return
        for item in batch:
            logger.bind(event_id=item.request.id).debug(
                "spooled event {} ({})", item.request.id, item.request.hook
            )
            self._count(item.request.type.value, "spooled")
            self._observe_latency(item)
            item.response.set_result(encode_ack(item.request.id, None, tracked=False))
        if self._on_spooled is not None:
            self._on_spooled([(item.request, item.effect) for item in batch])

    def _resolve(self, item: _Pending, reply: object) -> None:
        event_id = item.request.id
        if isinstance(reply, Exception):
            logger.bind(event_id=event_id).error("storing event failed: {!r}", reply)
            message = f"storing the event failed ({reply}); it was not recorded, resend it"
            self._count(item.request.type.value, "error")
            item.response.set_result(encode_error(event_id, ErrorCode.INTERNAL, message))
            return
        result = ApplyResult.from_reply(reply)  # type: ignore[arg-type]
        _log_result(item.request, result)
        self._count(item.request.type.value, result.outcome)
        self._observe_latency(item)
        if self._on_outbox is not None and any(
            change.to_status in OUTBOX_STATUSES for change in result.transitions
        ):
            self._on_outbox()
        if (
            self._on_gateway_start is not None
            and item.request.hook == "gateway_start"
            and result.outcome == "recorded"
        ):
            self._on_gateway_start()
        item.response.set_result(encode_ack(event_id, result.job_id, tracked=True))


def _type_label(line: bytes) -> str:
    """Return the event type of a rejected line for the metrics, or ``invalid``."""
    compact = line.replace(b" ", b"")
    for event_type in EventType:
        if b'"type":"' + event_type.value.encode() + b'"' in compact:
            return event_type.value
    return "invalid"


def _fail_unanswered(batch: list[_Pending], message: str) -> None:
    for item in batch:
        if not item.response.done():
            item.response.set_result(encode_error(item.request.id, ErrorCode.INTERNAL, message))


def log_transitions(transitions: tuple[Transition, ...], *, event_id: str | None) -> None:
    """Log one INFO line per status change, with the job, agent and event ids bound."""
    for change in transitions:
        logger.bind(job_id=change.job_id, agent_id=change.agent_id, event_id=event_id).info(
            "job {} {} -> {} (attempt {}): {}",
            change.job_id,
            change.from_status.value if change.from_status else "new",
            change.to_status.value,
            change.attempt,
            change.reason,
        )


def _log_result(request: Request, result: ApplyResult) -> None:
    log_transitions(result.transitions, event_id=request.id)
    if not result.transitions:
        logger.bind(job_id=result.job_id, event_id=request.id).debug(
            "event {} from {} {}: no status change", request.hook, request.source, result.outcome
        )
