"""Every Redis key name the orchestrator uses, built from the configured prefix.

Nothing else in the package formats a key. The Lua transition script gets its key builders from
``lua_key_functions()``, which renders the same templates, so Python and Lua cannot drift apart.

NOTE: the Lua script builds key names at run time instead of declaring them in KEYS, so the key
layout works on a single Redis or a Sentinel-managed primary, but not on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

# Identifier kinds that map an OpenClaw id to a job id (one hash per kind).
REF_KINDS = ("tool_call", "child_session", "run", "label")

# Templates: "{p}" is the prefix; the other placeholder is the variable part.
_TEMPLATES = {
    "job": "{p}:job:{id}",  # hash: the job record
    "history": "{p}:job:{id}:history",  # list of JSON transition entries, oldest first
    "ref": "{p}:ref:{kind}",  # hash: OpenClaw identifier -> job id
    "status_index": "{p}:status:{status}",  # zset: job ids by updated_at (ms)
    "agent_index": "{p}:agent:{agent}",  # zset: job ids of one agent by created_at (ms)
    "agent_stats": "{p}:agent_stats:{agent}",  # hash: status -> job count for one agent
    "gateway_stats": "{p}:gateway_stats:{source}",  # hash: status -> job count for one gateway
    "gateways": "{p}:gateways",  # set: every gateway id that owns jobs
    "event": "{p}:event:{id}",  # string: stored ack of an event id (TTL event_ttl_s)
    "orphan": "{p}:orphan:{kind}:{ref}",  # list: events waiting for their job (TTL orphan_ttl_s)
    "gateway": "{p}:gateway:{source}",  # hash: last start/stop seen from one gateway
    # zset: work to hand to arq for one gateway, by time added (ms). Members are "retry|<job id>"
    # and "alert|<job id>|<failure number>"; the relay removes each after enqueueing it.
    "outbox": "{p}:outbox:{source}",
    "alert_sent": "{p}:alert_sent:{id}:{n}:{sink}",  # string: one alert was delivered to a sink
    "arq_queue": "{p}:arq:queue:{source}",  # zset: the arq queue of one gateway's daemon
    "arq_health_check": "{p}:arq:health-check:{source}",  # string: arq's health-check record
    "all_jobs": "{p}:jobs",  # zset: every job id by created_at (ms)
    "agents": "{p}:agents",  # set: every agent id that has jobs
    "counters": "{p}:counters",  # hash: event and transition counters
}


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one prefix."""

    prefix: str

    @property
    def all_jobs(self) -> str:
        return _TEMPLATES["all_jobs"].format(p=self.prefix)

    @property
    def agents(self) -> str:
        return _TEMPLATES["agents"].format(p=self.prefix)

    @property
    def counters(self) -> str:
        return _TEMPLATES["counters"].format(p=self.prefix)

    def arq_queue(self, source: str) -> str:
        """Return the arq queue of one gateway; arq's job and result keys use its fixed ``arq:`` prefix."""
        return _TEMPLATES["arq_queue"].format(p=self.prefix, source=source)

    def arq_health_check(self, source: str) -> str:
        return _TEMPLATES["arq_health_check"].format(p=self.prefix, source=source)

    @staticmethod
    def arq_in_progress(arq_job_id: str) -> str:
        """Return arq's lock key of a running job (arq 0.28's fixed ``arq:in-progress:`` prefix)."""
        return f"arq:in-progress:{arq_job_id}"

    def outbox(self, source: str) -> str:
        return _TEMPLATES["outbox"].format(p=self.prefix, source=source)

    def alert_sent(self, job_id: str, failure: int, sink: str) -> str:
        return _TEMPLATES["alert_sent"].format(p=self.prefix, id=job_id, n=failure, sink=sink)

    def job(self, job_id: str) -> str:
        return _TEMPLATES["job"].format(p=self.prefix, id=job_id)

    def history(self, job_id: str) -> str:
        return _TEMPLATES["history"].format(p=self.prefix, id=job_id)

    def ref(self, kind: str) -> str:
        return _TEMPLATES["ref"].format(p=self.prefix, kind=kind)

    def status_index(self, status: str) -> str:
        return _TEMPLATES["status_index"].format(p=self.prefix, status=status)

    def agent_index(self, agent: str) -> str:
        return _TEMPLATES["agent_index"].format(p=self.prefix, agent=agent)

    def agent_stats(self, agent: str) -> str:
        return _TEMPLATES["agent_stats"].format(p=self.prefix, agent=agent)

    def gateway_stats(self, source: str) -> str:
        return _TEMPLATES["gateway_stats"].format(p=self.prefix, source=source)

    @property
    def gateways(self) -> str:
        return _TEMPLATES["gateways"].format(p=self.prefix)

    def event(self, event_id: str) -> str:
        return _TEMPLATES["event"].format(p=self.prefix, id=event_id)

    def orphan(self, kind: str, ref: str) -> str:
        return _TEMPLATES["orphan"].format(p=self.prefix, kind=kind, ref=ref)

    def gateway(self, source: str) -> str:
        return _TEMPLATES["gateway"].format(p=self.prefix, source=source)


def lua_key_functions() -> str:
    """Render Lua functions ``k_<name>(p, ...)`` equal to the Python builders above."""
    lines = []
    for name, template in _TEMPLATES.items():
        parts = template.replace("{", "\x00{").replace("}", "}\x00").split("\x00")
        params = [part[1:-1] for part in parts if part.startswith("{")]
        pieces = [part[1:-1] if part.startswith("{") else repr(part) for part in parts if part]
        lines.append(f"local function k_{name}({', '.join(params)}) return {' .. '.join(pieces)} end")
    return "\n".join(lines)
