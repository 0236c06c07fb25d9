"""Re-dispatch of failed work through the gateway: which call re-runs a job, and its result.

Mechanisms, chosen per job (tried against OpenClaw 2026.9.6; docs/architecture.md gives the reasons):
- a spawn whose child session exists: ``sessions.send`` into the child's own session. The child
  runs again with its history, the parent is informed, and ``subagent_ended`` fires again with
  the run id we chose, so the job's later events land on it.
- a spawn that never got a child (the spawn call itself failed): ``tools.invoke sessions_spawn``
  from the parent's session, with a label that carries the dispatch key so that the
  ``subagent_spawned`` event of the new child finds this job.
- a send: ``sessions.send`` of the same message to the same session.

Every call carries an idempotency key fixed per dispatch (``orch-<job id>-<n>``), which the
gateway also uses as the run id. A dispatch repeated after a crash reuses the key, and the
gateway deduplicates it while the same gateway process runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from loguru import logger

from orchestrator.gateway import GatewayClient, GatewayError
from orchestrator.jobs import Effect, Job, JobKind, JobStatus, dispatch_key
from orchestrator.metrics import Metrics
from orchestrator.protocol import Request
from orchestrator.spool import Spool, SpoolFull
from orchestrator.store import JobStore
from orchestrator.tracker import log_transitions, now_ms

SESSIONS_SEND = "sessions.send"
SPAWN_TOOL = "tools.invoke sessions_spawn"

# Sent into a child session when the original task text was never received (the job was created
# from subagent_spawned alone); the child's own history still contains the task.
FOLLOW_UP_MESSAGE = (
    "Your previous run did not finish: it failed or the gateway restarted. "
    "Carry out your original task again from the start."
)


class NotDispatchable(Exception):
    """The job lacks what any re-dispatch call needs (a session key or the task text)."""


@dataclass(slots=True)
class CallResult:
    """Job fields and identifiers of the new run, from a successful gateway call."""

    method: str
    fields: dict[str, str] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)


def spawn_label(job: Job, key: str) -> str:
    """Return the label of a fresh spawn: the original label with the dispatch key appended."""
    return f"{job.label} [{key}]" if job.label else key


class Dispatcher:
    """Claims a retrying job, calls the gateway once, and records the outcome."""

    def __init__(
        self,
        store: JobStore,
        gateway: GatewayClient | None,
        *,
        timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._timeout_s = timeout_s
        self._metrics = metrics

    async def redispatch(self, job_id: str, number: int) -> str:
        """Run re-dispatch ``number`` of a job; return accepted, transient, permanent or skip."""
        key = dispatch_key(job_id, number)
        log = logger.bind(job_id=job_id, dispatch=number)
        claim = await self._store.claim_dispatch(job_id, number, now_ms(), key)
        log_transitions(claim.transitions, event_id=None)
        if claim.job is None:
            log.info("re-dispatch {} of job {} skipped: the job is {}", number, job_id, claim.status)
            return "skip"
        if claim.verdict == "resume":
            log.warning(
                "re-dispatch {} of job {} was interrupted; sending it again with key {}", number, job_id, key
            )
        return await self._call_and_record(claim.job, number, key)

    async def _call_and_record(self, job: Job, number: int, key: str) -> str:
        method = self._method_for(job)
        started_s = time.monotonic()
        try:
            result = await self._call(job, key)
        except NotDispatchable as e:
            self._observe(method, started_s, "not_dispatchable")
            return await self._record_failure(job, number, method, "permanent", str(e))
        except GatewayError as e:
            self._observe(method, started_s, type(e).__name__)
            result_kind = "transient" if e.retryable else "permanent"
            return await self._record_failure(job, number, method, result_kind, str(e))
        self._observe(method, started_s, None)
        outcome = await self._store.finish_dispatch(
            job.id,
            number,
            now_ms(),
            result="accepted",
            reason=f"re-dispatch {number} accepted by {result.method}",
            fields=result.fields,
            links=tuple(result.links),
        )
        log_transitions(outcome.transitions, event_id=None)
        return "accepted"

    async def _record_failure(self, job: Job, number: int, method: str, result: str, error: str) -> str:
        logger.bind(job_id=job.id, agent_id=job.agent_id, dispatch=number).warning(
            "re-dispatch {} of job {} via {} failed ({}): {}", number, job.id, method, result, error
        )
        outcome = await self._store.finish_dispatch(
            job.id,
            number,
            now_ms(),
            result=result,
            reason=f"re-dispatch {number} via {method} failed",
            error=error,
        )
        log_transitions(outcome.transitions, event_id=None)
        return result

    def _observe(self, method: str, started_s: float, error_kind: str | None) -> None:
        if self._metrics is None:
            return
        self._metrics.dispatch_result(method, error_kind is None)
        self._metrics.observe_gateway_call(method, time.monotonic() - started_s, error_kind)

    @staticmethod
    def _method_for(job: Job) -> str:
        if job.kind is JobKind.SPAWN and not job.child_session_key:
            return SPAWN_TOOL
        return SESSIONS_SEND

    async def _call(self, job: Job, key: str) -> CallResult:
        if self._gateway is None:
            raise NotDispatchable(
                "no gateway token is configured; set ORCH_GATEWAY_TOKEN or ORCH_GATEWAY_TOKEN_FILE"
            )
        if job.kind is JobKind.SEND:
            return await self._resend(self._gateway, job, key)
        if job.child_session_key:
            return await self._rerun_child(self._gateway, job, key)
        return await self._spawn_again(self._gateway, job, key)

    async def _resend(self, gateway: GatewayClient, job: Job, key: str) -> CallResult:
        if not job.target_session_key or not job.task:
            raise NotDispatchable(
                "cannot re-send: the target session or the message text is unknown "
                "(the sessions_send after_tool_call event was never received)"
            )
        payload = await gateway.sessions_send(
            job.target_session_key, job.task, idempotency_key=key, timeout_s=self._timeout_s
        )
        return _with_run_link(CallResult(SESSIONS_SEND), payload, key)

    async def _rerun_child(self, gateway: GatewayClient, job: Job, key: str) -> CallResult:
        assert job.child_session_key is not None
        message = job.task or FOLLOW_UP_MESSAGE
        payload = await gateway.sessions_send(
            job.child_session_key, message, idempotency_key=key, timeout_s=self._timeout_s
        )
        return _with_run_link(CallResult(SESSIONS_SEND), payload, key)

    async def _spawn_again(self, gateway: GatewayClient, job: Job, key: str) -> CallResult:
        if not job.task or not job.parent_session_key:
            raise NotDispatchable("cannot spawn again: the task text or the parent session is unknown")
        label = spawn_label(job, key)
        await self._store.link_ref(job.id, "label", label)
        args: dict[str, Any] = {"task": job.task, "label": label}
        if job.target_agent_id and job.target_agent_id != job.agent_id:
            args["agentId"] = job.target_agent_id
        payload = await gateway.tools_invoke(
            "sessions_spawn", args, session_key=job.parent_session_key, timeout_s=self._timeout_s
        )
        return _spawn_result(payload, gateway.url)


def _with_run_link(result: CallResult, payload: dict[str, Any], key: str) -> CallResult:
    run_id = payload.get("runId")
    if isinstance(run_id, str) and run_id and run_id != key:
        # NOTE: 2026.9.6 used the idempotency key as the run id; a different one is linked too.
        result.links.append(("run", run_id))
        result.fields["run_id"] = run_id
    return result


def _spawn_result(payload: dict[str, Any], url: str) -> CallResult:
    if payload.get("ok") is False:
        # 2026.9.6 reports a tool that is not available or rejects its arguments in a successful
        # response: {ok: false, toolName, error: {code, message}}. The same call fails again.
        error = payload.get("error")
        shape: dict[str, Any] = error if isinstance(error, dict) else {"message": error}
        raise GatewayError(
            method=SPAWN_TOOL,
            url=url,
            reason=f"the tool returned {shape.get('code') or 'an error'}: {shape.get('message')}",
            retryable=False,
        )
    details = _find_spawn_details(payload) or {}
    status = details.get("status")
    if status == "forbidden":
        raise GatewayError(
            method=SPAWN_TOOL, url=url, reason=f"spawn forbidden: {details.get('error')}", retryable=False
        )
    if status != "accepted":
        error = details.get("error")
        raise GatewayError(
            method=SPAWN_TOOL,
            url=url,
            reason=f"spawn not accepted (status {status!r}): {error}",
            retryable=True,
        )
    result = CallResult(SPAWN_TOOL)
    child_session_key = details.get("childSessionKey")
    run_id = details.get("runId")
    if isinstance(child_session_key, str) and child_session_key:
        result.fields["child_session_key"] = child_session_key
        result.links.append(("child_session", child_session_key))
    if isinstance(run_id, str) and run_id:
        result.fields["run_id"] = run_id
        result.links.append(("run", run_id))
    return result


def _find_spawn_details(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """Find the sessions_spawn result object inside a tools.invoke payload of unknown nesting."""
    if depth > 6:
        return None
    if isinstance(value, dict):
        if "childSessionKey" in value or value.get("status") in {"accepted", "forbidden", "error"}:
            return value
        for item in value.values():
            found = _find_spawn_details(item, depth + 1)
            if found is not None:
                return found
    if isinstance(value, list):
        for item in value:
            found = _find_spawn_details(item, depth + 1)
            if found is not None:
                return found
    return None


class DirectDispatcher:
    """Re-dispatches failures seen while Redis is unavailable, straight through the gateway.

    Only failures whose event names the session to send to are handled here: a child that ended
    with an error or a timeout (re-run in its own session with a follow-up message) and a failed
    ``sessions_send`` (sent again). A failed ``sessions_spawn`` waits for Redis, because a new
    child spawned now could not be tied to its job. Each dispatch is written to the spool after the
    event, so the replay records it on the job instead of dispatching again. At most
    ``max_per_session`` direct dispatches go to one session during the daemon's life.
    """

    def __init__(
        self,
        gateway: GatewayClient | None,
        spool: Spool,
        *,
        max_per_session: int,
        tries: int,
        base_s: float,
        timeout_s: float,
    ) -> None:
        self._gateway = gateway
        self._spool = spool
        self._max_per_session = max_per_session
        self._tries = tries
        self._base_s = base_s
        self._timeout_s = timeout_s
        self._per_session: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, events: list[tuple[Request, Effect]]) -> None:
        for request, effect in events:
            target = direct_target(effect)
            if target is None:
                continue
            if self._gateway is None:
                logger.warning(
                    "cannot re-dispatch after event {} while Redis is down: no gateway token", request.id
                )
                continue
            session_key, message = target
            sent = self._per_session.get(session_key, 0)
            if sent >= self._max_per_session:
                logger.warning(
                    "no direct re-dispatch into {} after event {}: {} already sent during this outage",
                    session_key,
                    request.id,
                    sent,
                )
                continue
            self._per_session[session_key] = sent + 1
            task = asyncio.create_task(self._dispatch(self._gateway, request.id, session_key, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _dispatch(self, gateway: GatewayClient, event_id: str, session_key: str, message: str) -> None:
        key = f"orch-direct-{event_id}"
        for attempt in range(1, self._tries + 1):
            try:
                await gateway.sessions_send(
                    session_key, message, idempotency_key=key, timeout_s=self._timeout_s
                )
            except GatewayError as e:
                logger.warning(
                    "direct re-dispatch into {} after event {} failed (try {} of {}): {}",
                    session_key,
                    event_id,
                    attempt,
                    self._tries,
                    e,
                )
                if not e.retryable or attempt == self._tries:
                    return
                await asyncio.sleep(self._base_s * 2 ** (attempt - 1))
                continue
            logger.warning(
                "re-dispatched into {} directly after event {}: tracking is degraded", session_key, event_id
            )
            await self._record(event_id, key)
            return

    async def _record(self, event_id: str, key: str) -> None:
        try:
            await self._spool.append([direct_dispatch_line(event_id, key, SESSIONS_SEND)])
        except (SpoolFull, OSError) as e:
            logger.error("the direct re-dispatch after event {} could not be spooled: {}", event_id, e)


def direct_target(effect: Effect) -> tuple[str, str] | None:
    """Return the session and message of a direct re-dispatch for an event, if it calls for one."""
    if effect.hook == "subagent_ended" and JobStatus.RETRYING in effect.status_by_kind.values():
        child = dict(effect.lookup).get("child_session")
        return (child, FOLLOW_UP_MESSAGE) if child else None
    if effect.hook == "after_tool_call" and effect.status_by_kind.get(JobKind.SEND) is JobStatus.RETRYING:
        session_key = effect.fields.get("target_session_key")
        message = effect.fields.get("task")
        return (session_key, message) if session_key and message else None
    return None


def direct_dispatch_line(event_id: str, run_id: str, method: str) -> bytes:
    """Return the spool record of a dispatch made while Redis was unavailable."""
    record = {DIRECT_DISPATCH_KEY: {"event_id": event_id, "run_id": run_id, "method": method}}
    return orjson.dumps(record)


DIRECT_DISPATCH_KEY = "orch_direct_dispatch"
