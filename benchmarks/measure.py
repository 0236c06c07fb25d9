"""Latency percentiles, CPU time of the processes under test, and the state of the machine."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import resource
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles in milliseconds, nearest-rank."""

    samples: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, values: list[float]) -> Latency:
        if not values:
            return cls(samples=0, p50_ms=math.nan, p90_ms=math.nan, p99_ms=math.nan, max_ms=math.nan)
        ordered = sorted(values)

        def rank(fraction: float) -> float:
            index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
            return round(ordered[index] * 1000, 3)

        return cls(
            samples=len(ordered),
            p50_ms=rank(0.50),
            p90_ms=rank(0.90),
            p99_ms=rank(0.99),
            max_ms=round(ordered[-1] * 1000, 3),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """Keep this process's cyclic garbage collector from running inside a timed phase.

    A full collection over the objects a phase builds (the control phase's parsed effects and
    thousands of tasks) stalled the client for 60 to 90 ms, and every call in flight looked that
    slow. Only the load generator is affected, because the daemon keeps its own collector settings.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def process_cpu_s(pid: int) -> float:
    """Return the user plus system CPU seconds a process has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; the fields after its closing bracket do not.
    fields = stat.rsplit(")", 1)[1].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / _CLOCK_TICKS_PER_S


def own_cpu_s() -> float:
    """Return the user plus system CPU seconds of this benchmark process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process in KiB, from /proc/PID/status."""
    values = {}
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = entry.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            values[name] = int(rest.split()[0])
    return values


def machine_cpu_s() -> dict[str, float]:
    """Return the busy and the steal CPU seconds of the whole machine, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / _CLOCK_TICKS_PER_S,
        "steal": steal / _CLOCK_TICKS_PER_S,
    }


class CpuMeter:
    """CPU seconds used between ``start()`` and ``stop()``.

    Covers the daemon, Redis, this client, every other process of the machine together
    (``other``), and the time the hypervisor gave the machine's virtual CPUs to someone else
    (``steal``).
    """

    def __init__(self, *, daemon_pid: int | None, redis_pid: int) -> None:
        self._pids = {"redis": redis_pid}
        if daemon_pid is not None:
            self._pids["daemon"] = daemon_pid
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        values = {name: process_cpu_s(pid) for name, pid in self._pids.items()}
        values["client"] = own_cpu_s()
        values.update(machine_cpu_s())
        return values

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        used = {name: end[name] - self._start[name] for name in end}
        ours = sum(used[name] for name in (*self._pids, "client"))
        used["other"] = max(0.0, used.pop("busy") - ours)
        return {name: round(value, 2) for name, value in used.items()}


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    """Describe the machine and the software versions behind a result."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_kib": _mem_total_kib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": _redis_version(),
        "orchestrator_revision": _revision(),
    }


def _revision() -> str:
    """Return the git commit of the checkout, and whether orchestrator/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        changed = _git(root, "status", "--porcelain", "--", "orchestrator")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} with uncommitted changes in orchestrator/" if changed else commit


def _git(root: Path, *args: str) -> str:
    output = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return output.stdout.strip()


def _cpu_model() -> str:
    for entry in Path("/proc/cpuinfo").read_text().splitlines():
        if entry.startswith("model name"):
            return entry.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_kib() -> int:
    for entry in Path("/proc/meminfo").read_text().splitlines():
        if entry.startswith("MemTotal:"):
            return int(entry.split()[1])
    return 0


def _redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=10)
    return output.stdout.strip()
