"""Redis ``INFO commandstats`` read before and after a phase, as calls and time per unit of work.

Redis counts the commands a Lua script runs under their own names as well as in ``EVALSHA``, so
the ``EVALSHA`` row contains the time of some other rows.
"""

from __future__ import annotations

import redis.asyncio as aioredis

CommandStats = dict[str, dict[str, float]]


async def command_stats(client: aioredis.Redis) -> CommandStats:
    """Return the calls and microseconds of each command since Redis started, by command name."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): {"calls": float(values["calls"]), "usec": float(values["usec"])}
        for name, values in stats.items()
    }


def per_unit(before: CommandStats, after: CommandStats, units: int) -> CommandStats:
    """Return the calls and microseconds of each command between two reads, divided by ``units``.

    Commands with no call in between are left out. The result is ordered by time, most first.
    """
    rows = {}
    for name, values in after.items():
        previous = before.get(name, {"calls": 0.0, "usec": 0.0})
        calls = values["calls"] - previous["calls"]
        if calls <= 0 or units <= 0:
            continue
        rows[name] = {
            "calls": round(calls / units, 2),
            "usec": round((values["usec"] - previous["usec"]) / units, 1),
        }
    return dict(sorted(rows.items(), key=lambda item: item[1]["usec"], reverse=True))
