"""Redis round trips with client and server on the same or on different CPUs.

``python -m benchmarks.round_trip`` pins a redis-server of its own to CPU 0, then sends
sequential PINGs from this process pinned to CPU 0 and to CPU 1 in turn. On a virtual machine,
waking a process on another, idle virtual CPU costs more than switching on the same one, and any
benchmark bound by sequential round trips (arq's enqueue is) moves with that cost.
"""

from __future__ import annotations

import os
import time

import redis

from benchmarks.measure import Latency
from benchmarks.services import BenchRedis

PINGS = 20_000
SERVER_CPU = 0


def measure(client: redis.Redis, cpu: int) -> Latency:
    """Pin this process to ``cpu`` and time ``PINGS`` sequential PINGs."""
    os.sched_setaffinity(0, {cpu})
    client.ping()
    samples = []
    for _ in range(PINGS):
        sent_at = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - sent_at)
    return Latency.from_seconds(samples)


def main() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("this measurement needs at least 2 CPUs available to this process")
    other_cpu = min(cpu for cpu in os.sched_getaffinity(0) if cpu != SERVER_CPU)
    allowed = os.sched_getaffinity(0)
    server = BenchRedis()
    server.start()
    try:
        assert server.process is not None
        os.sched_setaffinity(server.process.pid, {SERVER_CPU})
        client = redis.Redis(unix_socket_path=str(server.socket_path))
        for cpu in (SERVER_CPU, other_cpu, SERVER_CPU, other_cpu):
            latency = measure(client, cpu)
            where = "same CPU as Redis" if cpu == SERVER_CPU else "other CPU than Redis"
            print(
                f"client on CPU {cpu} ({where}): median {latency.p50_ms * 1000:.0f} µs, "
                f"p99 {latency.p99_ms * 1000:.0f} µs, max {latency.max_ms * 1000:.0f} µs"
            )
        client.close()
    finally:
        os.sched_setaffinity(0, allowed)
        server.cleanup()


if __name__ == "__main__":
    main()
