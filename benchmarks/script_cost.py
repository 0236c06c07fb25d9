"""Redis time of the apply script, split into its parts: ``python -m benchmarks.script_cost``.

Runs four variants of a script over the same events, each in pipelines of 500 on its own
redis-server, and prints Redis's own time per EVALSHA (``INFO commandstats``):

1. ``return 1``: the cost of an EVALSHA call itself.
2. decoding the effect JSON (ARGV 5) and returning.
3. the apply script up to its first Redis command: decoding the arguments and defining the
   helpers and key builders, which every call repeats.
4. the whole apply script.

It also prints the time of the commands the whole script ran, which Redis counts under their own
names as well.
"""

from __future__ import annotations

from typing import cast

import orjson
import redis

from benchmarks.baselines import effects
from benchmarks.services import BenchRedis
from benchmarks.workload import Workload
from orchestrator.store import render_script

LIFECYCLES = 5_000
BATCH = 500
# The apply script's first statement after its helpers. NOTE: if apply_event.lua is reworded
# there, variant 3 cannot be built and this module raises instead of guessing.
FIRST_STEP_MARK = "-- 1. A replayed event id"


def variants() -> dict[str, str]:
    whole = render_script("apply_event.lua")
    if FIRST_STEP_MARK not in whole:
        raise RuntimeError(f"apply_event.lua no longer contains {FIRST_STEP_MARK!r}; update FIRST_STEP_MARK")
    prelude = whole.replace(FIRST_STEP_MARK, "do return {'', '[]', 'new'} end\n" + FIRST_STEP_MARK, 1)
    return {
        "EVALSHA of return 1": "return 1",
        "decode the effect JSON": "local effect = cjson.decode(ARGV[5])\nreturn 1",
        "arguments and helper definitions": prelude,
        "whole apply script": whole,
    }


def run(client: redis.Redis, source: str, args: list[list[str]]) -> dict[str, dict[str, float]]:
    """Run one script variant over every argument list, and return the command stats."""
    sha = str(client.script_load(source))
    client.config_resetstat()
    for first in range(0, len(args), BATCH):
        pipe = client.pipeline(transaction=False)
        for item in args[first : first + BATCH]:
            pipe.evalsha(sha, 0, *item)
        pipe.execute()
    # redis-py types the synchronous client's replies as "Awaitable or Any".
    return cast(dict[str, dict[str, float]], client.info("commandstats"))


def main() -> None:
    workload = Workload()
    server = BenchRedis()
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        lines = [item for lifecycle in workload.lifecycles(LIFECYCLES) for item in lifecycle]
        events = effects(lines)
        for variant, (name, source) in enumerate(variants().items()):
            args = [
                [
                    "script-cost",  # key prefix
                    f"v{variant}-{event_id}",
                    "1796412840000",  # now, Unix ms
                    f"{index:016x}",  # id for a new job
                    orjson.dumps(effect.to_wire()).decode(),
                    "3600",  # event id TTL, s
                    "3600",  # orphan TTL, s
                    "3",  # max attempts
                ]
                for index, (event_id, effect) in enumerate(events)
            ]
            stats = run(client, source, args)
            evalsha = stats["cmdstat_evalsha"]
            inner_usec = sum(item["usec"] for key, item in stats.items() if key != "cmdstat_evalsha")
            print(
                f"{name}: {evalsha['usec_per_call']:.1f} µs per EVALSHA over {evalsha['calls']:,} calls, "
                f"of which {inner_usec / evalsha['calls']:.1f} µs in the commands it ran"
            )
        client.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
