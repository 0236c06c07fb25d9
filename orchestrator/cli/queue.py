"""``orchestrator queue``: job statistics, listings and the story of one job."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.common import CliState, global_options, print_json, run_with_store
from orchestrator.cli.render import render_job, render_job_list, render_stats
from orchestrator.jobs import JobStatus

queue_app = typer.Typer(help="Inspect the jobs stored in Redis.", no_args_is_help=True)

AgentOption = Annotated[
    str | None, typer.Option("--agent", help="Only jobs of this agent id.", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@queue_app.command("stats")
@global_options
def stats(ctx: typer.Context, agent: AgentOption = None, as_json: JsonOption = False) -> None:
    """Count jobs by status and by agent."""
    state: CliState = ctx.obj
    result = run_with_store(state, lambda store: store.stats(agent=agent))
    if as_json:
        print_json(result.to_json())
    else:
        render_stats(result, agent)


@queue_app.command("list")
@global_options
def list_jobs(
    ctx: typer.Context,
    agent: AgentOption = None,
    status: Annotated[
        JobStatus | None,
        typer.Option("--status", help="Only jobs in this status.", show_default=False),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10_000, help="Maximum number of jobs to print.")
    ] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first. `--status failed` is the dead-letter queue."""
    state: CliState = ctx.obj
    jobs = run_with_store(state, lambda store: store.list_jobs(agent=agent, status=status, limit=limit))
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
