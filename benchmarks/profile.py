"""Sampling profile of the daemon under load, with py-spy.

py-spy is not a dependency of the project; install it into the venv with
``.venv/bin/pip install py-spy``. It records the daemon's Python stacks during one 32-client
ingest phase, in py-spy's raw format (one folded stack and its sample count per line, the input of
the usual flamegraph tools), and this module sums the stacks per function.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks.ingest import BenchmarkError
from benchmarks.runner import Bench, Measured

SAMPLES_PER_S = 200
ATTACH_WAIT_S = 1.0
STOP_TIMEOUT_S = 30.0
TOP_FUNCTIONS = 25
# Frames on nearly every stack (the entry point, the event loop) tell nothing about the cost.
EVERYWHERE_SHARE = 0.99


def find_py_spy() -> str:
    """Return the py-spy next to this Python, or the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise BenchmarkError("py-spy is not installed; install it with .venv/bin/pip install py-spy")
    return found


@dataclass(frozen=True, slots=True)
class Profile:
    """Sample counts of the main thread (the event loop) per function.

    py-spy merges the stacks of all threads. The main thread is the one whose root frame is on
    the most samples. Other threads (thread pool workers) are only counted.
    """

    samples: int
    other_thread_samples: int
    inclusive: Counter[str]  # samples with the function anywhere on the stack
    exclusive: Counter[str]  # samples with the function on top of the stack

    @classmethod
    def from_raw(cls, text: str) -> Profile:
        stacks: list[tuple[list[str], int]] = []
        roots: Counter[str] = Counter()
        for entry in text.splitlines():
            stack, _, count_text = entry.rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            stacks.append((frames, int(count_text)))
            roots[frames[0]] += int(count_text)
        main_root = roots.most_common(1)[0][0] if roots else ""

        inclusive: Counter[str] = Counter()
        exclusive: Counter[str] = Counter()
        for frames, count in stacks:
            if frames[0] != main_root:
                continue
            exclusive[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        samples = roots[main_root]
        return cls(
            samples=samples,
            other_thread_samples=sum(roots.values()) - samples,
            inclusive=inclusive,
            exclusive=exclusive,
        )

    def by_package(self) -> Counter[str]:
        """Return self samples summed by top-level package (``loguru``, ``redis``, ``orchestrator``...)."""
        totals: Counter[str] = Counter()
        for frame, count in self.exclusive.items():
            location = frame.rpartition("(")[2]
            totals[location.split("/")[0].split(":")[0].split(".")[0]] += count
        return totals

    def render(self) -> str:
        lines = [
            f"{self.samples} samples of the daemon's main thread, and {self.other_thread_samples} of "
            "other threads, left out below (idle samples are not recorded)",
            "",
        ]
        inclusive = Counter(
            {
                frame: count
                for frame, count in self.inclusive.items()
                if count < EVERYWHERE_SHARE * self.samples
            }
        )
        tables = (
            ("inclusive %", "function", inclusive),
            ("self %", "function", self.exclusive),
            ("self %", "package", self.by_package()),
        )
        for share, column, counts in tables:
            lines.append(f"| {share} | {column} |")
            lines.append("|--:|---|")
            for frame, count in counts.most_common(TOP_FUNCTIONS):
                lines.append(f"| {100 * count / max(1, self.samples):.1f} | `{frame}` |")
            lines.append("")
        return "\n".join(lines)


def render_command_stats(stats: dict[str, dict[str, float]], events: int) -> str:
    """Return Redis command calls and time per event as a Markdown table, most time first.

    Redis counts the commands a Lua script runs under their own names as well as in EVALSHA, so
    the EVALSHA row contains the time of the other rows.
    """
    lines = [
        f"Redis commands per event over {events:,} events (INFO commandstats)",
        "",
        "| command | calls per event | µs per event |",
        "|---|--:|--:|",
    ]
    ordered = sorted(stats.items(), key=lambda item: item[1]["usec"], reverse=True)
    for name, values in ordered:
        command = name.removeprefix("cmdstat_")
        lines.append(f"| {command} | {values['calls'] / events:.2f} | {values['usec'] / events:.2f} |")
    return "\n".join(lines)


async def profile_ingest(bench: Bench, raw_path: Path, clients: int) -> tuple[Measured, str]:
    """Run one closed-loop ingest phase while py-spy writes the daemon's stacks to ``raw_path``.

    Returns the phase's measurement and a table of the Redis commands it ran.
    """
    await bench.client.config_resetstat()
    recorder = await asyncio.create_subprocess_exec(
        find_py_spy(),
        "record",
        "--pid",
        str(bench.services.daemon_pid),
        "--rate",
        str(SAMPLES_PER_S),
        "--function",
        "--format",
        "raw",
        "--output",
        str(raw_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.sleep(ATTACH_WAIT_S)
        if recorder.returncode is not None:
            error = await recorder.stderr.read() if recorder.stderr else b""
            raise BenchmarkError(
                f"py-spy exited with {recorder.returncode}: {error.decode(errors='replace')}"
            )
        measured = await bench.ingest(clients)
        stats = await bench.client.info("commandstats")
        return measured, render_command_stats(stats, measured.events)
    finally:
        if recorder.returncode is None:
            # py-spy writes its output file when interrupted.
            recorder.send_signal(signal.SIGINT)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await recorder.wait()


def read_profile(raw_path: Path) -> Profile:
    if not raw_path.exists():
        raise BenchmarkError(f"py-spy wrote no profile to {raw_path}")
    return Profile.from_raw(raw_path.read_text())
