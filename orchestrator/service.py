"""Daemon lifecycle: start in order, serve until a stop signal, stop in visible phases.

Start: lock the state directory, start the embedded Redis when no URL is set, connect to Redis,
load the Lua scripts, start the tracker and the arq worker, then open the socket.
Stop (SIGTERM, SIGINT, or the injectable ``stop`` event): stop accepting and respond to the lines
already read, store what is pending, stop the worker, close the Redis pool, remove the socket,
and stop the embedded Redis last.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis.asyncio as aioredis
import uvloop
from arq.connections import ArqRedis, create_pool
from loguru import logger

from orchestrator import __version__
from orchestrator.alerts import build_sinks
from orchestrator.breaker import BreakerState, CircuitBreaker
from orchestrator.connection import (
    REDIS_DOWN_ERRORS,
    arq_redis_settings,
    create_client,
    describe_address,
    redact_redis_url,
    unreachable_message,
)
from orchestrator.dispatch import DirectDispatcher, Dispatcher
from orchestrator.embedded import EmbeddedRedis, find_redis_server
from orchestrator.errors import ConfigError, RedisUnavailable, StateDirLocked
from orchestrator.gateway import GatewayClient
from orchestrator.health import HealthServer
from orchestrator.keys import Keys
from orchestrator.metrics import Metrics
from orchestrator.outbox import OutboxRelay
from orchestrator.recovery import Reconciler, Recovery, SpoolReplayer
from orchestrator.retry import RetryPolicies
from orchestrator.server import SocketServer
from orchestrator.settings import Settings
from orchestrator.spool import Spool
from orchestrator.store import JobStore
from orchestrator.systemd import Notifier
from orchestrator.tracker import Tracker
from orchestrator.worker import WorkerSupervisor

REDIS_RETRY_INTERVAL_S = 0.25
# How long the shutdown waits for each group of background tasks after cancelling them.
STOP_TASKS_TIMEOUT_S = 5.0
# Gateway calls of one direct re-dispatch made while Redis is unavailable.
DIRECT_DISPATCH_TRIES = 3
STATE_DIR_MODE = 0o750


class Daemon:
    """One orchestrator process. ``run()`` returns after a clean stop."""

    def __init__(self, settings: Settings, *, stop: asyncio.Event | None = None) -> None:
        self.settings = settings
        self.stop_event = stop or asyncio.Event()
        self.ready = asyncio.Event()
        self.embedded: EmbeddedRedis | None = None
        self.server: SocketServer | None = None
        self.tracker: Tracker | None = None
        self.breaker: CircuitBreaker | None = None
        self.recovery: Recovery | None = None
        self.spool: Spool | None = None
        self.store: JobStore | None = None
        self.metrics = Metrics()
        self.notifier = Notifier.from_env()

    async def run(self) -> None:
        settings = self.settings
        logger.info("openclaw-orchestrator {} starting (pid {})", __version__, os.getpid())
        with _state_dir_lock(settings.state_dir):
            await self._run_locked()
        logger.info("openclaw-orchestrator stopped")

    async def _run_locked(self) -> None:
        settings = self.settings
        health = await self._start_health()
        watchdog_stop = asyncio.Event()
        watchdog = asyncio.create_task(self.notifier.watchdog_loop(watchdog_stop), name="systemd-watchdog")
        try:
            async with self._redis_server() as url:
                client = create_client(settings)
                try:
                    await self._serve(client, url)
                finally:
                    await client.aclose()
                    logger.info("closed the Redis connection pool")
        finally:
            watchdog_stop.set()
            await asyncio.gather(watchdog, return_exceptions=True)
            if health is not None:
                await health.stop()
            self.notifier.close()

    async def _start_health(self) -> HealthServer | None:
        """Serve /healthz, /readyz and /metrics from the start, so start-up itself is visible."""
        settings = self.settings
        if settings.http_port == 0:
            return None
        health = HealthServer(
            settings.http_host, settings.http_port, self.readiness, self.metrics, self.refresh_metrics
        )
        try:
            await health.start()
        except OSError as e:
            raise ConfigError(str(e)) from e
        return health

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        """Report ready while the socket is open and events can be made durable (Redis or spool)."""
        tracker, breaker, spool = self.tracker, self.breaker, self.spool
        if tracker is None or breaker is None or spool is None or not self.ready.is_set():
            return False, {"ready": False, "phase": "starting"}
        if self.stop_event.is_set():
            return False, {"ready": False, "phase": "stopping"}
        spool_room = spool.size_bytes < self.settings.spool_max_bytes
        ready = breaker.is_closed or spool_room
        detail: dict[str, object] = {
            "ready": ready,
            "breaker": breaker.state.value,
            "redis": "ok" if breaker.is_closed else "degraded: events go to the spool",
            "pending_events": tracker.pending,
            "spool_bytes": spool.pending_bytes(),
        }
        return ready, detail

    async def refresh_metrics(self) -> None:
        """Update the gauges that are read from Redis and the spool when /metrics is scraped."""
        if self.spool is not None:
            self.metrics.set_spool_bytes(self.spool.pending_bytes())
            self.metrics.set_spool_depth(self.spool.pending_lines)
        if self.store is not None and self.breaker is not None and self.breaker.is_closed:
            self.metrics.update_job_counts(await self.store.stats())

    async def _serve(self, client: aioredis.Redis, url: str) -> None:
        settings = self.settings
        self.notifier.status(f"waiting for Redis at {describe_address(url)}")
        store = self.store = await _open_store(client, settings, url)
        spool = self.spool = Spool(
            settings.resolved_spool_path, max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync
        )
        recovery: Recovery | None = None

        def on_breaker_change(state: BreakerState) -> None:
            self.metrics.set_breaker_state(state.value)
            if recovery is not None:
                recovery.on_breaker_change(state)

        self.breaker = CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout_s=settings.breaker_reset_timeout_s,
            on_change=on_breaker_change,
        )
        self.metrics.set_breaker_state(self.breaker.state.value)
        retries = await RetryComponents.start(settings, store, self.metrics)
        recovery = self.recovery = _build_recovery(settings, store, spool, retries)
        tracker = self.tracker = Tracker(
            store,
            max_pending_events=settings.max_pending_events,
            batch_max=settings.commit_batch_max,
            task_max_chars=settings.task_max_chars,
            owner=settings.gateway_id,
            on_outbox=retries.relay.wake,
            breaker=self.breaker,
            spool=spool,
            on_spooled=recovery.direct.submit,
            on_gateway_start=recovery.gateway_started,
            on_spool_waiting=recovery.request_replay,
            metrics=self.metrics,
        )
        tracker_task = asyncio.create_task(tracker.run(), name="tracker")
        self.server = SocketServer(
            tracker,
            path=settings.resolved_socket_path,
            mode=settings.socket_mode,
            max_connections=settings.max_connections,
            max_line_bytes=settings.max_line_bytes,
        )
        try:
            await self.server.start()
            recovery.boot()
            recovery.watch_spool(self.breaker, spool, client.ping)
            self.ready.set()
            logger.info("ready")
            self.notifier.ready(status=f"serving on {settings.resolved_socket_path}")
            await self.stop_event.wait()
            self.notifier.stopping("stopping: phase 1 of 4")
            logger.info("stopping: phase 1 of 4, closing the socket and responding to lines already read")
            await self.server.stop(settings.shutdown_grace_s)
            self.notifier.status("stopping: phase 2 of 4")
            logger.info("stopping: phase 2 of 4, storing {} pending events", tracker.pending)
            await _wait_bounded(tracker.drain(), settings.shutdown_grace_s, "pending events")
        finally:
            self.notifier.status("stopping: phase 3 of 4")
            logger.info(
                "stopping: phase 3 of 4, stopping the tracker, recovery, the outbox relay and the arq worker"
            )
            tracker_task.cancel()
            await asyncio.wait([tracker_task], timeout=STOP_TASKS_TIMEOUT_S)
            await recovery.stop()
            await retries.stop()
            self.notifier.status("stopping: phase 4 of 4")
            logger.info("stopping: phase 4 of 4, closing Redis connections")

    @contextlib.asynccontextmanager
    async def _redis_server(self) -> AsyncIterator[str]:
        """Yield the Redis URL, running the embedded server around the block when none is set."""
        settings = self.settings
        if settings.redis_url is not None:
            yield settings.redis_url
            return
        self.embedded = EmbeddedRedis(
            binary=find_redis_server(settings.redis_server_path),
            data_dir=settings.embedded_redis_dir,
            socket_path=settings.embedded_redis_socket,
        )
        await self.embedded.start(settings.redis_startup_timeout_s)
        try:
            yield self.embedded.url
        finally:
            await self.embedded.stop()


async def _wait_for_redis(client: aioredis.Redis, settings: Settings) -> None:
    """Send PING until Redis responds or ``redis_startup_timeout_s`` passes."""
    url = settings.effective_redis_url
    last_error: BaseException | None = None
    logged = False
    try:
        async with asyncio.timeout(settings.redis_startup_timeout_s):
            while True:
                try:
                    await client.ping()
                    return
                except REDIS_DOWN_ERRORS as e:
                    last_error = e
                    if not logged:
                        logger.warning("waiting for Redis at {}: {}", describe_address(url), e)
                        logged = True
                await asyncio.sleep(REDIS_RETRY_INTERVAL_S)
    except TimeoutError:
        assert last_error is not None
        raise RedisUnavailable(unreachable_message(settings, last_error)) from last_error


async def _wait_bounded(awaitable: Awaitable[None], timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s or None):
            await awaitable
    except TimeoutError:
        logger.warning("gave up waiting for {} after {}s", what, timeout_s)


@contextlib.contextmanager
def _state_dir_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state directory so two daemons never share it."""
    if not state_dir.exists():
        state_dir.mkdir(parents=True, mode=STATE_DIR_MODE)
    lock_path = state_dir / "daemon.lock"
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateDirLocked(
            f"another orchestrator is running with state directory {state_dir} (it has locked {lock_path}); "
            "stop it first or set ORCH_STATE_DIR to another directory"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


async def _open_store(client: aioredis.Redis, settings: Settings, url: str) -> JobStore:
    await _wait_for_redis(client, settings)
    store = JobStore(
        client,
        Keys(settings.key_prefix),
        event_ttl_s=settings.event_ttl_s,
        orphan_ttl_s=settings.orphan_ttl_s,
        max_attempts=settings.max_attempts,
        agent_max_attempts=_agent_max_attempts(settings),
    )
    await store.load_scripts()
    logger.info("connected to Redis at {} with key prefix {!r}", redact_redis_url(url), settings.key_prefix)
    return store


def _build_recovery(settings: Settings, store: JobStore, spool: Spool, retries: RetryComponents) -> Recovery:
    replayer = SpoolReplayer(
        spool,
        store,
        owner=settings.gateway_id,
        task_max_chars=settings.task_max_chars,
        pause_relay=retries.relay.pause,
    )
    reconciler = Reconciler(
        store, retries.pool, owner=settings.gateway_id, gateway=retries.gateway, wake_relay=retries.relay.wake
    )
    direct = DirectDispatcher(
        retries.gateway,
        spool,
        max_per_session=max(1, settings.max_attempts - 1),
        tries=DIRECT_DISPATCH_TRIES,
        base_s=settings.retry_base_s,
        timeout_s=settings.dispatch_timeout_s,
    )
    return Recovery(replayer, reconciler, direct)


def _agent_max_attempts(settings: Settings) -> dict[str, int]:
    policies = RetryPolicies(settings)
    return {agent: policies.for_agent(agent).max_attempts for agent in settings.agent_policies}


@dataclass(slots=True)
class RetryComponents:
    """The gateway client, the arq worker and the outbox relay: everything that re-runs work."""

    gateway: GatewayClient | None
    pool: ArqRedis
    relay: OutboxRelay
    supervisor: WorkerSupervisor
    tasks: list[asyncio.Task[None]]

    @classmethod
    async def start(cls, settings: Settings, store: JobStore, metrics: Metrics) -> RetryComponents:
        token = settings.read_gateway_token()
        gateway = None
        if token is None:
            logger.warning(
                "no gateway token is configured (ORCH_GATEWAY_TOKEN or ORCH_GATEWAY_TOKEN_FILE): failed "
                "work cannot be re-dispatched and will be dead-lettered"
            )
        else:
            gateway = GatewayClient(settings.gateway_url, token, call_timeout_s=settings.dispatch_timeout_s)
        sinks = build_sinks(settings, gateway)
        logger.info("dead-letter alerts go to the log{}", "".join(f" and {name}" for name in sinks))
        queue = store.keys.arq_queue(settings.gateway_id)
        pool = await create_pool(
            arq_redis_settings(settings),
            job_serializer=orjson.dumps,
            job_deserializer=orjson.loads,
            default_queue_name=queue,
        )
        relay = OutboxRelay(
            store,
            pool,
            source=settings.gateway_id,
            policies=RetryPolicies(settings),
            sink_names=list(sinks),
            alert_task_max_chars=settings.alert_task_max_chars,
            metrics=metrics,
        )
        dispatcher = Dispatcher(store, gateway, timeout_s=settings.dispatch_timeout_s, metrics=metrics)
        context = {"dispatcher": dispatcher, "alert_sinks": sinks, "metrics": metrics}
        supervisor = WorkerSupervisor(settings, store, context)
        tasks = [
            asyncio.create_task(supervisor.run(), name="arq-worker"),
            asyncio.create_task(relay.run(), name="outbox-relay"),
        ]
        return cls(gateway=gateway, pool=pool, relay=relay, supervisor=supervisor, tasks=tasks)

    async def stop(self) -> None:
        self.relay.stop()
        await self.supervisor.stop()
        for task in self.tasks:
            task.cancel()
        # NOTE: redis-py's asyncio.wait_for can swallow a cancellation on Python 3.11 (CPython
        # gh-86296), so the wait is bounded. A task still running after it is logged and left.
        _, late = await asyncio.wait(self.tasks, timeout=STOP_TASKS_TIMEOUT_S)
        for task in late:
            logger.warning(
                "task {} did not stop within {}s; leaving it", task.get_name(), STOP_TASKS_TIMEOUT_S
            )
        await self.pool.aclose()
        if self.gateway is not None:
            await self.gateway.close()


def run_daemon(settings: Settings) -> None:
    """Run the daemon on uvloop until SIGTERM or SIGINT."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run_with_signals(settings))


async def _run_with_signals(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    await Daemon(settings, stop=stop).run()


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    logger.info("received {}; shutting down", signal.Signals(signum).name)
    stop.set()
