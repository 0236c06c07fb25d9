"""Per-phase measurement of CPU use, Redis command time and Redis stalls."""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis

from benchmarks.measure import CpuMeter
from benchmarks.services import Services


class PhaseMeter:
    """CPU use of the processes, Redis command time and Redis stalls over one phase.

    Redis command time is the ``usec`` of ``INFO commandstats``. For a phase of the daemon it is
    the EVALSHA time alone, which includes the commands the script runs (Redis also counts those
    under their own names, so a sum over all commands would count them twice). For a baseline it
    is the sum over all commands. Stalls are the forks Redis made (for AOF rewrites) and the
    events of its latency monitor, with the longest duration of each in milliseconds.
    """

    def __init__(self, services: Services, client: aioredis.Redis) -> None:
        self._cpu = CpuMeter(daemon_pid=services.daemon_pid, redis_pid=services.redis_pid)
        self._client = client
        self._usec_start: tuple[int, int] = (0, 0)
        self._forks_start = 0
        self._started_at = 0.0

    async def _command_usec(self) -> tuple[int, int]:
        """Return the microseconds Redis spent in EVALSHA and in all commands."""
        stats = await self._client.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha", {})
        return int(evalsha.get("usec", 0)), sum(int(item["usec"]) for item in stats.values())

    async def _forks(self) -> int:
        stats = await self._client.info("stats")
        return int(stats["total_forks"])

    async def start(self) -> None:
        await self._client.latency_reset()
        self._forks_start = await self._forks()
        self._usec_start = await self._command_usec()
        self._cpu.start()
        self._started_at = time.perf_counter()

    async def stop(self, *, events: int, scripted: bool) -> dict[str, Any]:
        cpu_s = self._cpu.stop()
        seconds = time.perf_counter() - self._started_at
        evalsha_usec, all_usec = await self._command_usec()
        usec = evalsha_usec - self._usec_start[0] if scripted else all_usec - self._usec_start[1]
        latest = await self._client.latency_latest()
        stalls = {
            "forks": await self._forks() - self._forks_start,
            "latency_monitor_max_ms": {str(event[0]): int(event[3]) for event in latest},
        }
        return {
            "cores": {
                name: round(value / seconds, 2) if seconds > 0 else math.nan for name, value in cpu_s.items()
            },
            "redis_usec_per_event": round(usec / events, 1) if events else math.nan,
            "redis_stalls": stalls,
        }
