"""Sampling profile of the daemon under load, with py-spy.

py-spy is not a dependency of the project; install it into the venv with
``.venv/bin/pip install py-spy``. It records a daemon's Python stacks during one 32-client ingest
phase, the dispatch phase or a boot recovery. Its raw format has one folded stack and its sample
count per line, the input of the usual flamegraph tools. This module sums the stacks per function
and per part of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
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
# Parts of the daemon, each named by the frames that mark it. A sample belongs to the first part
# with a marking frame anywhere on its stack, so the order settles overlaps.
DAEMON_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("boot reconciliation", ("Reconciler.", "Recovery._boot ")),
    ("outbox relay", ("OutboxRelay.",)),
    ("dispatch task: claim, gateway call, record", ("dispatch_retry ",)),
    ("alert task", ("deliver_alert ",)),
    ("arq worker: polling, start, finish, its logs", ("Worker.",)),
    ("event ingest: socket and tracker", ("Tracker.", "SocketServer.")),
    ("gateway client: reading responses", ("_Connection._read_frames ",)),
)
OTHER_PART = "other: the event loop itself and callbacks outside these"
LOGGING_FRAMES = ("(loguru/", "(logging/__init__")


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
    parts: Counter[str]  # samples by DAEMON_PARTS
    parts_logging: Counter[str]  # of those, the samples inside loguru or the logging module

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
        parts: Counter[str] = Counter()
        parts_logging: Counter[str] = Counter()
        for frames, count in stacks:
            if frames[0] != main_root:
                continue
            exclusive[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
            part = _part_of(frames)
            parts[part] += count
            if any(marker in frame for frame in frames for marker in LOGGING_FRAMES):
                parts_logging[part] += count
        samples = roots[main_root]
        return cls(
            samples=samples,
            other_thread_samples=sum(roots.values()) - samples,
            inclusive=inclusive,
            exclusive=exclusive,
            parts=parts,
            parts_logging=parts_logging,
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
        lines += ["| % | of which logging % | part of the daemon |", "|--:|--:|---|"]
        for part, count in self.parts.most_common():
            part_share = 100 * count / max(1, self.samples)
            logging_share = 100 * self.parts_logging[part] / max(1, self.samples)
            lines.append(f"| {part_share:.1f} | {logging_share:.1f} | {part} |")
        total_logging = 100 * sum(self.parts_logging.values()) / max(1, self.samples)
        lines += [f"| {total_logging:.1f} | | logging in all parts |", ""]
        return "\n".join(lines)


def _part_of(frames: list[str]) -> str:
    for name, markers in DAEMON_PARTS:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return OTHER_PART


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


@contextlib.asynccontextmanager
async def py_spy_recording(
    pid: int, raw_path: Path, *, attach_wait_s: float = ATTACH_WAIT_S
) -> AsyncIterator[None]:
    """Record the stacks of process ``pid`` with py-spy into ``raw_path`` while the block runs.

    Waits ``attach_wait_s`` for py-spy to attach before the block starts. py-spy pauses the
    process for each sample, because without pausing (``--nonblocking``) over half of the samples
    of a busy daemon came out as torn stacks without their root.
    """
    recorder = await asyncio.create_subprocess_exec(
        find_py_spy(),
        "record",
        "--pid",
        str(pid),
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
        await asyncio.sleep(attach_wait_s)
        if recorder.returncode is not None:
            error = await recorder.stderr.read() if recorder.stderr else b""
            raise BenchmarkError(
                f"py-spy exited with {recorder.returncode}: {error.decode(errors='replace')}"
            )
        yield
        if recorder.returncode not in (None, 0):
            error = await recorder.stderr.read() if recorder.stderr else b""
            raise BenchmarkError(
                f"py-spy stopped early with {recorder.returncode}: {error.decode(errors='replace')}"
            )
    finally:
        if recorder.returncode is None:
            # py-spy writes its output file when interrupted.
            recorder.send_signal(signal.SIGINT)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await recorder.wait()


async def profile_ingest(bench: Bench, raw_path: Path, clients: int) -> tuple[Measured, str]:
    """Run one closed-loop ingest phase while py-spy writes the daemon's stacks to ``raw_path``.

    Returns the phase's measurement and a table of the Redis commands it ran.
    """
    await bench.client.config_resetstat()
    async with py_spy_recording(bench.services.daemon_pid, raw_path):
        measured = await bench.ingest(clients)
        stats = await bench.client.info("commandstats")
    return measured, render_command_stats(stats, measured.events)


def read_profile(raw_path: Path) -> Profile:
    if not raw_path.exists():
        raise BenchmarkError(f"py-spy wrote no profile to {raw_path}")
    return Profile.from_raw(raw_path.read_text())
