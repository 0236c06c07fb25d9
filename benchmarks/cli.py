"""``python -m benchmarks``: run the benchmark, print a Markdown report, optionally write JSON."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import redis.asyncio as aioredis
import typer
import uvloop

from benchmarks.ingest import BenchmarkError
from benchmarks.plan import FULL, SMOKE, Plan
from benchmarks.profile import profile_ingest, read_profile
from benchmarks.report import render, to_json
from benchmarks.runner import PHASES, Bench, Measured, run_all
from benchmarks.services import running_services

PROFILE_CLIENTS = 32

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


async def _profile(plan: Plan, extra_env: dict[str, str], raw_path: Path) -> tuple[Measured, str]:
    with running_services(extra_env) as services:
        client: aioredis.Redis = aioredis.Redis.from_url(services.redis.url, decode_responses=True)
        try:
            bench = Bench(plan, services, client)
            _progress("warm-up")
            await bench.warm_up()
            _progress(f"ingest, {PROFILE_CLIENTS} clients, with py-spy recording the daemon")
            return await profile_ingest(bench, raw_path, PROFILE_CLIENTS)
        finally:
            await client.aclose()


def _print_profile(measured: Measured, command_stats: str, raw_path: Path) -> None:
    cores = ", ".join(f"{name} {value:.2f}" for name, value in measured.cores.items())
    print(
        f"{measured.label}: {measured.events_per_s:,.0f} events/s while sampled, cores used: {cores}, "
        f"Redis µs/event {measured.redis_usec_per_event:.1f}, load average {measured.load_average}\n"
    )
    print(read_profile(raw_path).render())
    print(command_stats)
    print(f"folded stacks: {raw_path}")


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
            help="Comma-separated phases to run, out of ingest, fixed-rate, baselines and scale; "
            "a run of fewer than all is not a full run.",
        ),
    ] = ",".join(PHASES),
    profile_dir: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Instead of the benchmark, run one 32-client ingest phase with py-spy recording the daemon, "
            "write its folded stacks to this directory and print the top functions.",
        ),
    ] = None,
) -> None:
    """Measure the daemon's ingest rate, ack latency and memory per job, beside arq and redis-py baselines.

    Starts its own redis-server (Unix socket, AOF with appendfsync everysec) and
    `orchestrator serve` in a temporary directory, and stops both at the end.
    """
    plan = SMOKE if smoke else FULL
    extra_env = _parse_env(daemon_env or [])
    phases = _parse_phases(phases_text)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                raw_path = profile_dir / f"daemon-{PROFILE_CLIENTS}-clients.folded"
                measured, command_stats = runner.run(_profile(plan, extra_env, raw_path))
                _print_profile(measured, command_stats, raw_path)
                return
            data = runner.run(_benchmark(plan, extra_env, phases))
    except BenchmarkError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        _progress(f"wrote {json_path}")
