"""``orchestrator queue``: job statistics, listings and the story of one job."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import typer
from rich.live import Live

from orchestrator.cli.common import CliState, JsonOption, fail, global_options, print_json, run_with_store
from orchestrator.cli.render import console, render_job, render_job_list, render_stats, stats_view
from orchestrator.jobs import TERMINAL_STATUSES, Job, JobStatus
from orchestrator.retry import RetryPolicies
from orchestrator.store import JobStore
from orchestrator.tracker import now_ms

GatewayOption = Annotated[
    str | None, typer.Option("--gateway", help="Only jobs of this gateway id.", show_default=False)
]

queue_app = typer.Typer(help="Inspect the jobs stored in Redis.", no_args_is_help=True)

AgentOption = Annotated[
    str | None, typer.Option("--agent", help="Only jobs of this agent id.", show_default=False)
]


@queue_app.command("stats")
@global_options
def stats(
    ctx: typer.Context,
    agent: AgentOption = None,
    gateway: GatewayOption = None,
    as_json: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval_s: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between refreshes with --watch.")
    ] = 2.0,
) -> None:
    """Count jobs by status, by agent and by gateway."""
    state: CliState = ctx.obj
    if watch:
        if as_json:
            fail("--watch and --json cannot be combined; poll `queue stats --json` instead")
        with contextlib.suppress(KeyboardInterrupt):
            run_with_store(state, lambda store: _watch_stats(store, agent, gateway, interval_s))
        return
    result = run_with_store(state, lambda store: store.stats(agent=agent, gateway=gateway))
    if as_json:
        print_json(result.to_json())
    else:
        render_stats(result, agent=agent, gateway=gateway)


async def _watch_stats(store: JobStore, agent: str | None, gateway: str | None, interval_s: float) -> None:
    first = await store.stats(agent=agent, gateway=gateway)
    with Live(
        stats_view(first, agent=agent, gateway=gateway),
        console=console(),
        auto_refresh=False,
        vertical_overflow="visible",
    ) as live:
        try:
            while True:
                await asyncio.sleep(interval_s)
                result = await store.stats(agent=agent, gateway=gateway)
                live.update(stats_view(result, agent=agent, gateway=gateway), refresh=True)
        except asyncio.CancelledError:
            return


@queue_app.command("list")
@global_options
def list_jobs(
    ctx: typer.Context,
    agent: AgentOption = None,
    status: Annotated[
        JobStatus | None,
        typer.Option("--status", help="Only jobs in this status.", show_default=False),
    ] = None,
    gateway: GatewayOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="Maximum number of jobs to print.")
    ] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first. `--status failed` is the dead-letter queue."""
    state: CliState = ctx.obj
    jobs = run_with_store(
        state, lambda store: store.list_jobs(agent=agent, status=status, gateway=gateway, limit=limit)
    )
    if as_json:
        print_json([job.to_json() for job in jobs])
    else:
        render_job_list(jobs)


@queue_app.command("inspect")
@global_options
def inspect(
    ctx: typer.Context,
    job_id: Annotated[
        str,
        typer.Argument(help="Job id, or an OpenClaw tool call id, child session key or run id."),
    ],
    as_json: JsonOption = False,
) -> None:
    """Show one job with its timeline of transitions."""
    state: CliState = ctx.obj
    job = run_with_store(state, lambda store: store.resolve(job_id, with_history=True))
    if as_json:
        print_json(job.to_json(with_history=True))
    else:
        render_job(job)


@queue_app.command("retry")
@global_options
def retry(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id, or an OpenClaw id the job is known by.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Also re-drive a job stuck in queued, active or announcing."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Re-drive a failed job: reset its attempts and dispatch it again. Its history is kept."""
    state: CliState = ctx.obj
    policies = RetryPolicies(state.settings_or_fail())

    async def redrive(store: JobStore) -> Job:
        job = await store.resolve(job_id)
        max_attempts = policies.for_agent(job.agent_id).max_attempts
        reason = "re-driven by an operator" + (" (forced)" if force else "")
        await store.redrive(job.id, now_ms(), max_attempts=max_attempts, reason=reason, force=force)
        return await store.get_job(job.id)

    job = run_with_store(state, redrive)
    if as_json:
        print_json(job.to_json())
        return
    typer.echo(
        f"job {job.id} is retrying: the daemon of gateway {job.source!r} dispatches it again "
        f"(attempts reset, up to {job.max_attempts})"
    )


@queue_app.command("purge")
@global_options
def purge(
    ctx: typer.Context,
    status: Annotated[
        list[JobStatus] | None,
        typer.Option("--status", help="Terminal status to purge; repeat for several. Default: all three."),
    ] = None,
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Only jobs that ended longer ago than this, such as 30m, 12h, 7d."),
    ] = "0s",
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete; without it, only count what would be deleted.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete terminal jobs (completed, failed, cancelled) with their history and index entries."""
    state: CliState = ctx.obj
    statuses = status or sorted(TERMINAL_STATUSES)
    if not_terminal := [item.value for item in statuses if item not in TERMINAL_STATUSES]:
        fail(
            f"cannot purge {', '.join(not_terminal)} jobs: only completed, failed and cancelled jobs can be purged"
        )
    try:
        age_s = parse_duration_s(older_than)
    except ValueError as e:
        fail(str(e))
    before_ms = now_ms() - int(age_s * 1000)

    async def run(store: JobStore) -> int:
        count = 0
        for item in statuses:
            if not yes:
                count += await store.count_in_status_before(item, before_ms)
                continue
            while job_ids := await store.job_ids_in_status_before(item, before_ms, PURGE_PAGE):
                for job_id in job_ids:
                    count += int(await store.purge_job(job_id))
        return count

    count = run_with_store(state, run)
    names = ", ".join(item.value for item in statuses)
    if as_json:
        print_json({"deleted" if yes else "matching": count, "statuses": [item.value for item in statuses]})
    elif yes:
        typer.echo(f"deleted {count} jobs ({names}) that ended more than {older_than} ago")
    else:
        typer.echo(f"{count} jobs ({names}) ended more than {older_than} ago; add --yes to delete them")


PURGE_PAGE = 500
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration_s(text: str) -> float:
    """Parse ``90s``, ``30m``, ``12h`` or ``7d`` into seconds."""
    value, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS_S or not value.replace(".", "", 1).isdigit():
        raise ValueError(f"invalid duration {text!r}; write a number and a unit: s, m, h or d (e.g. 7d)")
    return float(value) * _DURATION_UNITS_S[unit]
