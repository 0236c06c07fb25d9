"""``python -m benchmarks``: run the benchmark, print a Markdown report, optionally write JSON."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import redis.asyncio as aioredis
import typer
import uvloop

from benchmarks.dispatch import measure_dispatch
from benchmarks.ingest import BenchmarkError
from benchmarks.plan import FULL, SMOKE, Plan
from benchmarks.profile import profile_ingest, py_spy_recording, read_profile
from benchmarks.recovery import measure_recovery
from benchmarks.report import dispatch_tables, recovery_tables, render, to_json
from benchmarks.runner import PHASES, Bench, Measured, run_all
from benchmarks.services import running_services

PROFILE_CLIENTS = 32
PROFILE_PHASES = ("ingest", "dispatch", "recovery")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _parse_phases(text: str) -> tuple[str, ...]:
    phases = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in phases if name not in PHASES]
    if unknown or not phases:
        raise typer.BadParameter(
            f"{text!r} names no phase or an unknown one; use a comma-separated list of {', '.join(PHASES)}",
            param_hint="--phases",
        )
    return phases


def _with_counts(plan: Plan, dispatch_jobs: int | None, recovery_jobs_text: str | None) -> Plan:
    """Return ``plan`` with the dispatch and recovery job counts given on the command line."""
    if dispatch_jobs is not None:
        plan = dataclasses.replace(plan, dispatch_jobs=dispatch_jobs)
    if recovery_jobs_text is not None:
        try:
            counts = tuple(int(item) for item in recovery_jobs_text.split(",") if item.strip())
        except ValueError:
            counts = ()
        if not counts or min(counts) < 3:
            raise typer.BadParameter(
                f"{recovery_jobs_text!r} is not a comma-separated list of job counts of 3 or more",
                param_hint="--recovery-jobs",
            )
        plan = dataclasses.replace(plan, recovery_jobs=counts)
    return plan


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("ORCH_"):
            raise typer.BadParameter(
                f"{pair!r} is not of the form ORCH_NAME=VALUE", param_hint="--daemon-env"
            )
        env[name] = value
    return env


async def _benchmark(plan: Plan, extra_env: dict[str, str], phases: tuple[str, ...]) -> dict[str, object]:
    with running_services(extra_env) as services:
        client: aioredis.Redis = aioredis.Redis.from_url(services.redis.url, decode_responses=True)
        try:
            bench = Bench(plan, services, client)
            results = await bench.start_results(extra_env)
            await run_all(bench, results, _progress, phases)
        finally:
            await client.aclose()
    print(render(results))
    return to_json(results)


async def _profile(plan: Plan, extra_env: dict[str, str], profile_dir: Path, phase: str) -> None:
    with running_services(extra_env) as services:
        client: aioredis.Redis = aioredis.Redis.from_url(services.redis.url, decode_responses=True)
        try:
            bench = Bench(plan, services, client)
            _progress("warm-up")
            await bench.warm_up()
            if phase == "ingest":
                await _profile_ingest(bench, profile_dir)
            elif phase == "dispatch":
                await _profile_dispatch(bench, profile_dir)
            else:
                await _profile_recovery(bench, profile_dir)
        finally:
            await client.aclose()


async def _profile_ingest(bench: Bench, profile_dir: Path) -> None:
    raw_path = profile_dir / f"daemon-{PROFILE_CLIENTS}-clients.folded"
    _progress(f"ingest, {PROFILE_CLIENTS} clients, with py-spy recording the daemon")
    measured, command_stats = await profile_ingest(bench, raw_path, PROFILE_CLIENTS)
    _print_profile(measured, command_stats, raw_path)


def _print_profile(measured: Measured, command_stats: str, raw_path: Path) -> None:
    cores = ", ".join(f"{name} {value:.2f}" for name, value in measured.cores.items())
    print(
        f"{measured.label}: {measured.events_per_s:,.0f} events/s while sampled, cores used: {cores}, "
        f"Redis µs/event {measured.redis_usec_per_event:.1f}, load average {measured.load_average}\n"
    )
    print(read_profile(raw_path).render())
    print(command_stats)
    print(f"folded stacks: {raw_path}")


async def _profile_dispatch(bench: Bench, profile_dir: Path) -> None:
    raw_path = profile_dir / "daemon-dispatch.folded"
    _progress(f"dispatch of {bench.plan.dispatch_jobs:,} retries, with py-spy recording the phase's daemon")
    result = await measure_dispatch(bench, around_timed=lambda pid: py_spy_recording(pid, raw_path))
    print(dispatch_tables(result) + "\n")
    print(read_profile(raw_path).render())
    print(f"folded stacks: {raw_path}")


async def _profile_recovery(bench: Bench, profile_dir: Path) -> None:
    """Profile the boot of the plan's largest recovery step, from the daemon's first log line on."""
    largest = dataclasses.replace(bench.plan, recovery_jobs=(max(bench.plan.recovery_jobs),))
    bench.plan = largest
    paths: list[Path] = []

    def record(pid: int, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        paths.append(profile_dir / f"daemon-{name}.folded")
        # No wait for py-spy to attach: the boot goes on meanwhile, and only its first samples are lost.
        return py_spy_recording(pid, paths[-1], attach_wait_s=0.0)

    steps = await measure_recovery(bench, _progress, around_boot=record)
    print(recovery_tables(steps) + "\n")
    for step, raw_path in zip(steps, paths, strict=True):
        print(
            f"{step.name}, boot {step.boot_s:.2f} s (slower than unprofiled: py-spy pauses the daemon per sample)\n"
        )
        print(read_profile(raw_path).render())
        print(f"folded stacks: {raw_path}\n")


@app.command()
def main(
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke", help="Run every phase with small counts, in a few seconds, to check the harness."
        ),
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")
    ] = None,
    daemon_env: Annotated[
        list[str] | None,
        typer.Option("--daemon-env", help="Extra daemon setting ORCH_NAME=VALUE; repeat for more."),
    ] = None,
    phases_text: Annotated[
        str,
        typer.Option(
            "--phases",
            help="Comma-separated phases to run, out of ingest, fixed-rate, baselines, scale, dispatch "
            "and recovery; "
            "a run of fewer than all is not a full run.",
        ),
    ] = ",".join(PHASES),
    profile_dir: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Instead of the benchmark, run one phase (see --profile-phase) with py-spy recording its "
            "daemon, write the folded stacks to this directory and print the top functions.",
        ),
    ] = None,
    profile_phase: Annotated[
        str,
        typer.Option(
            "--profile-phase",
            help="Phase that --profile records: ingest (one 32-client phase), dispatch, or recovery "
            "(the boots of the plan's largest job count).",
        ),
    ] = "ingest",
    dispatch_jobs: Annotated[
        int | None,
        typer.Option(
            "--dispatch-jobs",
            min=2,
            help="Retries of the dispatch phase, in place of the plan's (full 5,000).",
        ),
    ] = None,
    recovery_jobs_text: Annotated[
        str | None,
        typer.Option(
            "--recovery-jobs",
            help="Comma-separated job counts of the recovery steps, in place of the plan's "
            "(full 10000,100000).",
        ),
    ] = None,
) -> None:
    """Measure the daemon's ingest rate, ack latency, memory per job, retry dispatch and boot recovery.

    Starts its own redis-server (Unix socket, AOF with appendfsync everysec) and
    `orchestrator serve` in a temporary directory, and stops both at the end. The dispatch and
    recovery phases start daemons of their own (and recovery a redis-server per step) and a gateway
    stand-in on loopback, and stop them when the phase ends.
    """
    plan = _with_counts(SMOKE if smoke else FULL, dispatch_jobs, recovery_jobs_text)
    extra_env = _parse_env(daemon_env or [])
    phases = _parse_phases(phases_text)
    if profile_phase not in PROFILE_PHASES:
        raise typer.BadParameter(
            f"{profile_phase!r} is not one of {', '.join(PROFILE_PHASES)}", param_hint="--profile-phase"
        )
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                runner.run(_profile(plan, extra_env, profile_dir, profile_phase))
                return
            data = runner.run(_benchmark(plan, extra_env, phases))
    except BenchmarkError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        _progress(f"wrote {json_path}")
