"""Job storage in Redis: atomic event application, reads, indexes and statistics.

Writes go through one Lua script (``apply_event.lua``) so that deduplication, the status
transition, the indexes, the counters and the history entry of an event land together or not
at all. Reads use plain commands.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from orchestrator.errors import JobNotFound, JobStateError
from orchestrator.jobs import DAEMON_TRANSITIONS, EVENT_TRANSITIONS, Effect, HistoryEntry, Job, JobStatus
from orchestrator.keys import REF_KINDS, Keys, lua_key_functions

LIST_PAGE_SIZE = 500
# Outbox member kinds, as lib.lua writes them: "retry|<job id>" and "alert|<job id>|<n>".
OUTBOX_RETRY = "retry"
OUTBOX_ALERT = "alert"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _lua_table(name: str, table: dict[JobStatus, frozenset[JobStatus]], *, allow_new: bool) -> str:
    rows = []
    for old, targets in table.items():
        allowed = ", ".join(f"{target.value} = true" for target in sorted(targets))
        rows.append(f"  ['{old.value}'] = {{{allowed}}},")
    if allow_new:
        rows.append("  [''] = {queued = true},")
    return f"local {name} = {{\n" + "\n".join(rows) + "\n}"


def render_script(name: str) -> str:
    """Return a Lua script with the key builders, transition tables and helpers filled in."""
    package = resources.files("orchestrator")
    source = package.joinpath(name).read_text("utf-8")
    return (
        source.replace("--@LIB@", package.joinpath("lib.lua").read_text("utf-8"))
        .replace("--@KEY_FUNCTIONS@", lua_key_functions())
        .replace("--@ALLOWED@", _lua_table("ALLOWED", EVENT_TRANSITIONS, allow_new=True))
        .replace("--@ALLOWED_DAEMON@", _lua_table("ALLOWED_DAEMON", DAEMON_TRANSITIONS, allow_new=False))
    )


def new_job_id() -> str:
    """Return a random 16-hex-digit job id (64 bits)."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change made by one script call, returned for logging."""

    job_id: str
    agent_id: str
    from_status: JobStatus | None
    to_status: JobStatus
    attempt: int
    reason: str


def parse_transitions(raw_json: str) -> tuple[Transition, ...]:
    """Decode the transitions a Lua script returned (cjson encodes an empty list as ``{}``)."""
    raw = orjson.loads(raw_json)
    items = raw if isinstance(raw, list) else []
    return tuple(
        Transition(
            job_id=item["job_id"],
            agent_id=item["agent_id"],
            from_status=JobStatus(item["from"]) if item["from"] else None,
            to_status=JobStatus(item["to"]),
            attempt=int(item["attempt"]),
            reason=item["reason"],
        )
        for item in items
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of claiming a job for one re-dispatch (see ``claim_dispatch.lua``)."""

    verdict: str  # claimed, resume or skip
    job: Job | None
    status: str | None
    transitions: tuple[Transition, ...]


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    """The result of recording a re-dispatch call (see ``finish_dispatch.lua``)."""

    verdict: str  # done or skip
    status: str
    transitions: tuple[Transition, ...]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The result of applying one event."""

    job_id: str | None
    outcome: str  # created, applied, stale, parked, recorded, ignored, or duplicate
    transitions: tuple[Transition, ...]

    @classmethod
    def from_reply(cls, reply: list[str]) -> ApplyResult:
        ack = orjson.loads(reply[0])
        transitions = parse_transitions(reply[1])
        outcome = "duplicate" if reply[2] == "duplicate" else str(ack["outcome"])
        return cls(job_id=ack.get("job_id"), outcome=outcome, transitions=transitions)


@dataclass(frozen=True, slots=True)
class Stats:
    """Job counts by status and by agent, plus event counters."""

    by_status: dict[str, int]
    by_agent: dict[str, dict[str, int]]
    counters: dict[str, int]
    by_gateway: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_status": self.by_status,
            "by_agent": self.by_agent,
            "by_gateway": self.by_gateway,
            "counters": self.counters,
        }


class JobStore:
    """Reads and writes jobs under one key prefix."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        event_ttl_s: int,
        orphan_ttl_s: int,
        max_attempts: int,
        agent_max_attempts: dict[str, int] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._event_ttl_s = event_ttl_s
        self._orphan_ttl_s = orphan_ttl_s
        self._max_attempts = max_attempts
        self._agent_max_attempts = agent_max_attempts or {}
        self._script = render_script("apply_event.lua")
        self._sha: str | None = None
        self._purge = client.register_script(render_script("purge_job.lua"))
        self._claim = client.register_script(render_script("claim_dispatch.lua"))
        self._finish = client.register_script(render_script("finish_dispatch.lua"))
        self._redrive = client.register_script(render_script("redrive.lua"))
        self._link = client.register_script(render_script("link_ref.lua"))

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    @property
    def keys(self) -> Keys:
        return self._keys

    async def load_scripts(self) -> None:
        """Load the Lua script into Redis (again after a Redis restart emptied its script cache)."""
        self._sha = await self._client.script_load(self._script)

    def queue_apply(self, pipe: Pipeline, event_id: str, effect: Effect, now_ms: int) -> None:
        """Add one event application to a pipeline; ``ApplyResult.from_reply`` reads its reply."""
        if self._sha is None:
            raise RuntimeError("JobStore.load_scripts() must run before events are applied")
        pipe.evalsha(self._sha, 0, *self._script_args(event_id, effect, now_ms))

    async def apply(self, event_id: str, effect: Effect, now_ms: int) -> ApplyResult:
        """Apply one event outside any pipeline."""
        args = self._script_args(event_id, effect, now_ms)
        try:
            reply = await self._client.evalsha(await self._script_sha(), 0, *args)  # type: ignore[misc]
        except NoScriptError:
            await self.load_scripts()
            reply = await self._client.evalsha(await self._script_sha(), 0, *args)  # type: ignore[misc]
        return ApplyResult.from_reply(reply)

    async def _script_sha(self) -> str:
        if self._sha is None:
            await self.load_scripts()
        assert self._sha is not None
        return self._sha

    def _script_args(self, event_id: str, effect: Effect, now_ms: int) -> list[str]:
        return [
            self._keys.prefix,
            event_id,
            str(now_ms),
            new_job_id(),
            orjson.dumps(effect.to_wire()).decode(),
            str(self._event_ttl_s),
            str(self._orphan_ttl_s),
            str(self.max_attempts_for(effect.fields.get("agent_id"))),
        ]

    def max_attempts_for(self, agent_id: str | None) -> int:
        if agent_id is None:
            return self._max_attempts
        return self._agent_max_attempts.get(agent_id, self._max_attempts)

    async def claim_dispatch(self, job_id: str, number: int, now_ms: int, run_id: str) -> Claim:
        """Claim a RETRYING job for re-dispatch ``number``; see ``claim_dispatch.lua``."""
        reply = await self._claim(args=[self._keys.prefix, job_id, number, now_ms, run_id])
        verdict, payload, transitions = reply
        if verdict == "skip":
            return Claim(verdict, None, payload, parse_transitions(transitions))
        job = Job.from_hash(orjson.loads(payload))
        return Claim(verdict, job, job.status.value, parse_transitions(transitions))

    async def finish_dispatch(
        self,
        job_id: str,
        number: int,
        now_ms: int,
        *,
        result: str,
        reason: str,
        error: str = "",
        fields: dict[str, str] | None = None,
        links: tuple[tuple[str, str], ...] = (),
    ) -> DispatchOutcome:
        """Record a re-dispatch result: 'accepted', 'transient' or 'permanent'."""
        args: list[str | int] = [
            self._keys.prefix,
            job_id,
            number,
            now_ms,
            result,
            reason,
            error,
            orjson.dumps(fields or {}).decode(),
            orjson.dumps([list(pair) for pair in links]).decode(),
        ]
        verdict, status, transitions = await self._finish(args=args)
        return DispatchOutcome(verdict, status, parse_transitions(transitions))

    async def redrive(
        self, job_id: str, now_ms: int, *, max_attempts: int, reason: str, force: bool = False
    ) -> None:
        """Move a FAILED job (with ``force``, also a QUEUED, ACTIVE or ANNOUNCING one) to RETRYING.

        Its attempts are reset and its history kept. Raises ``JobNotFound`` when there is no such
        job, and ``JobStateError`` when its status does not allow it.
        """
        args: list[str | int] = [
            self._keys.prefix,
            job_id,
            now_ms,
            max_attempts,
            reason,
            "1" if force else "0",
        ]
        verdict, status = await self._redrive(args=args)
        if verdict == "ok":
            return
        if not status:
            raise JobNotFound(f"job {job_id} not found")
        if status in {"queued", "active", "announcing"}:
            raise JobStateError(
                f"job {job_id} is {status}; add --force to re-dispatch it if it is stuck, "
                "or wait for its run to end"
            )
        raise JobStateError(f"job {job_id} is {status}; only failed jobs can be retried")

    async def link_ref(self, job_id: str, kind: str, ref: str) -> bool:
        """Index an OpenClaw identifier to a job; return False when it was indexed already."""
        linked = await self._link(args=[self._keys.prefix, job_id, kind, ref])
        return bool(linked)

    async def job_for_event(self, event_id: str) -> str | None:
        """Return the job an event was applied to, from its stored ack."""
        raw = await self._client.get(self._keys.event(event_id))
        if raw is None:
            return None
        job_id = orjson.loads(raw).get("job_id")
        return job_id if isinstance(job_id, str) else None

    async def owned_jobs(self, status: JobStatus, owner: str, *, page: int = 1_000) -> list[Job]:
        """Return every job in ``status`` that belongs to gateway ``owner``."""
        jobs: list[Job] = []
        start = 0
        while page_ids := await self._client.zrange(self._keys.status_index(status), start, start + page - 1):
            jobs.extend(job for job in await self._load_jobs(page_ids) if job.source == owner)
            start += page
        return jobs

    async def rearm_retries(self, owner: str, job_ids: list[str]) -> int:
        """Put retries back in a gateway's outbox; return how many were not there yet."""
        if not job_ids:
            return 0
        at_ms = _now_ms()
        entries: dict[str, float] = {f"{OUTBOX_RETRY}|{job_id}": at_ms for job_id in job_ids}
        added: int = await self._client.zadd(self._keys.outbox(owner), entries, nx=True)
        return added

    async def outbox_items(self, source: str, limit: int) -> list[str]:
        """Return up to ``limit`` outbox members of one gateway, oldest first."""
        items: list[str] = await self._client.zrange(self._keys.outbox(source), 0, limit - 1)
        return items

    async def remove_outbox_item(self, source: str, member: str) -> None:
        await self._client.zrem(self._keys.outbox(source), member)

    async def outbox_depth(self, source: str) -> int:
        depth: int = await self._client.zcard(self._keys.outbox(source))
        return depth

    async def set_next_retry(self, job_id: str, at_ms: int) -> None:
        await self._client.hset(self._keys.job(job_id), "next_retry_at", str(at_ms))  # type: ignore[misc]

    async def alert_delivered(self, job_id: str, failure: int, sink: str) -> bool:
        return bool(await self._client.exists(self._keys.alert_sent(job_id, failure, sink)))

    async def mark_alert_delivered(self, job_id: str, failure: int, sink: str, ttl_s: int) -> None:
        await self._client.set(self._keys.alert_sent(job_id, failure, sink), "1", ex=ttl_s)

    async def purge_job(self, job_id: str) -> bool:
        """Delete a job, its history and its index entries; return False if it did not exist."""
        deleted = await self._purge(args=[self._keys.prefix, job_id])
        return bool(deleted)

    async def job_ids_in_status_before(self, status: JobStatus, before_ms: int, limit: int) -> list[str]:
        """Return up to ``limit`` ids of jobs that entered ``status`` before ``before_ms``, oldest first."""
        ids: list[str] = await self._client.zrangebyscore(
            self._keys.status_index(status), "-inf", before_ms, start=0, num=limit
        )
        return ids

    async def count_in_status_before(self, status: JobStatus, before_ms: int) -> int:
        count: int = await self._client.zcount(self._keys.status_index(status), "-inf", before_ms)
        return count

    async def get_job(self, job_id: str, *, with_history: bool = False) -> Job:
        """Return one job by its id; raise ``JobNotFound`` if there is none."""
        data: dict[str, str] = await self._client.hgetall(self._keys.job(job_id))  # type: ignore[misc]
        if not data:
            raise JobNotFound(f"job {job_id} not found")
        history: tuple[HistoryEntry, ...] = ()
        if with_history:
            raw = await self._client.lrange(self._keys.history(job_id), 0, -1)  # type: ignore[misc]
            history = tuple(HistoryEntry.from_record(orjson.loads(item)) for item in raw)
        return Job.from_hash(data, history)

    async def resolve(self, identifier: str, *, with_history: bool = False) -> Job:
        """Return the job with this job id, tool call id, child session key or run id."""
        if await self._client.exists(self._keys.job(identifier)):
            return await self.get_job(identifier, with_history=with_history)
        for kind in REF_KINDS:
            job_id = await self._client.hget(self._keys.ref(kind), identifier)  # type: ignore[misc]
            if job_id:
                return await self.get_job(job_id, with_history=with_history)
        raise JobNotFound(
            f"job {identifier} not found: no job, tool call id, child session key or run id matches it"
        )

    async def list_jobs(
        self,
        *,
        agent: str | None = None,
        status: JobStatus | None = None,
        gateway: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Return up to ``limit`` jobs, newest first, filtered by agent, status and gateway."""
        if gateway is not None:
            return await self._gateway_jobs(gateway, agent=agent, status=status, limit=limit)
        if agent is not None and status is not None:
            job_ids = await self._agent_jobs_with_status(agent, status, limit)
        elif status is not None:
            job_ids = await self._client.zrevrange(self._keys.status_index(status), 0, limit - 1)
        elif agent is not None:
            job_ids = await self._client.zrevrange(self._keys.agent_index(agent), 0, limit - 1)
        else:
            job_ids = await self._client.zrevrange(self._keys.all_jobs, 0, limit - 1)
        return await self._load_jobs(job_ids)

    async def _gateway_jobs(
        self, gateway: str, *, agent: str | None, status: JobStatus | None, limit: int
    ) -> list[Job]:
        """Page through the narrowest index and keep the jobs of one gateway."""
        if status is not None:
            index = self._keys.status_index(status)
        elif agent is not None:
            index = self._keys.agent_index(agent)
        else:
            index = self._keys.all_jobs
        found: list[Job] = []
        start = 0
        while len(found) < limit and (
            page := await self._client.zrevrange(index, start, start + LIST_PAGE_SIZE - 1)
        ):
            for job in await self._load_jobs(page):
                if (
                    job.source == gateway
                    and (agent is None or job.agent_id == agent)
                    and (status is None or job.status is status)
                ):
                    found.append(job)
            start += LIST_PAGE_SIZE
        return found[:limit]

    async def _agent_jobs_with_status(self, agent: str, status: JobStatus, limit: int) -> list[str]:
        found: list[str] = []
        start = 0
        while len(found) < limit:
            page = await self._client.zrevrange(
                self._keys.agent_index(agent), start, start + LIST_PAGE_SIZE - 1
            )
            if not page:
                break
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id in page:
                    pipe.hget(self._keys.job(job_id), "status")
                statuses = await pipe.execute()
            found.extend(job_id for job_id, value in zip(page, statuses, strict=True) if value == status)
            start += LIST_PAGE_SIZE
        return found[:limit]

    async def _load_jobs(self, job_ids: list[str]) -> list[Job]:
        if not job_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._keys.job(job_id))
            records: list[dict[str, str]] = await pipe.execute()
        return [Job.from_hash(record) for record in records if record]

    async def stats(self, *, agent: str | None = None, gateway: str | None = None) -> Stats:
        """Count jobs by status, by agent and by gateway, and read the counters.

        With ``agent`` or ``gateway``, ``by_status`` counts only that agent's or gateway's jobs.
        """
        agents = [agent] if agent is not None else sorted(await self._members(self._keys.agents))
        gateways = [gateway] if gateway is not None else sorted(await self._members(self._keys.gateways))
        async with self._client.pipeline(transaction=False) as pipe:
            for status in JobStatus:
                pipe.zcard(self._keys.status_index(status))
            for name in agents:
                pipe.hgetall(self._keys.agent_stats(name))
            for name in gateways:
                pipe.hgetall(self._keys.gateway_stats(name))
            pipe.hgetall(self._keys.counters)
            replies = await pipe.execute()
        status_counts = replies[: len(JobStatus)]
        agent_counts = replies[len(JobStatus) : len(JobStatus) + len(agents)]
        gateway_counts = replies[len(JobStatus) + len(agents) : -1]
        by_agent = {
            name: _full_status_counts(counts) for name, counts in zip(agents, agent_counts, strict=True)
        }
        by_gateway = {
            name: _full_status_counts(counts) for name, counts in zip(gateways, gateway_counts, strict=True)
        }
        if agent is not None:
            by_status = by_agent[agent]
        elif gateway is not None:
            by_status = by_gateway[gateway]
        else:
            by_status = {
                status.value: int(count) for status, count in zip(JobStatus, status_counts, strict=True)
            }
        counters = {name: int(value) for name, value in replies[-1].items()}
        return Stats(by_status=by_status, by_agent=by_agent, counters=counters, by_gateway=by_gateway)

    async def _members(self, key: str) -> set[str]:
        members: set[str] = await self._client.smembers(key)  # type: ignore[misc]
        return members


def _full_status_counts(counts: dict[str, str]) -> dict[str, int]:
    return {status.value: int(counts.get(status.value, 0)) for status in JobStatus}
