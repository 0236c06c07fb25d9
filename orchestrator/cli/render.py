"""Rich tables for people; the ``--json`` forms are printed by the commands themselves."""

from __future__ import annotations

import time

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.jobs import Job, JobStatus, ms_to_iso
from orchestrator.store import Stats

STATUS_STYLES = {
    JobStatus.QUEUED: "cyan",
    JobStatus.ACTIVE: "blue",
    JobStatus.ANNOUNCING: "magenta",
    JobStatus.RETRYING: "yellow",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.CANCELLED: "dim",
}
MAX_CELL_CHARS = 60


def console() -> Console:
    return Console(soft_wrap=False)


def line_console() -> Console:
    """Return a console that wraps long lines at the terminal width instead of cutting them."""
    return Console(soft_wrap=True)


def _short(text: str | None, limit: int = MAX_CELL_CHARS) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _age(ms: int) -> str:
    seconds = max(0, int(time.time() - ms / 1000))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _status(status: JobStatus) -> str:
    return f"[{STATUS_STYLES[status]}]{status.value}[/]"


def stats_view(stats: Stats, *, agent: str | None = None, gateway: str | None = None) -> Group:
    """Build the tables of ``queue stats``: by status, then by agent and by gateway."""
    scope = ""
    if agent:
        scope = f" of agent {agent}"
    elif gateway:
        scope = f" of gateway {gateway}"
    table = Table(title=f"Jobs{scope} by status")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for status in JobStatus:
        table.add_row(_status(status), str(stats.by_status.get(status.value, 0)))
    table.add_row("[bold]total[/]", f"[bold]{stats.total}[/]")
    parts: list[RenderableType] = [table]
    if agent is None and gateway is None:
        for title, groups in (("agent", stats.by_agent), ("gateway", stats.by_gateway)):
            if groups:
                parts.append(_breakdown(title, groups))
    if stats.counters:
        counters = ", ".join(f"{name}={value}" for name, value in sorted(stats.counters.items()))
        parts.append(Text(f"counters: {counters}", style="dim"))
    return Group(*parts)


def _breakdown(name: str, groups: dict[str, dict[str, int]]) -> Table:
    table = Table(title=f"Jobs by {name}")
    table.add_column(name)
    for status in JobStatus:
        table.add_column(status.value, justify="right")
    for key, counts in groups.items():
        table.add_row(key, *(str(counts.get(status.value, 0)) for status in JobStatus))
    return table


def render_stats(stats: Stats, *, agent: str | None = None, gateway: str | None = None) -> None:
    console().print(stats_view(stats, agent=agent, gateway=gateway))


def render_job_list(jobs: list[Job]) -> None:
    out = console()
    if not jobs:
        out.print("no jobs match")
        return
    table = Table()
    for column in ("id", "kind", "agent", "status", "attempts", "updated"):
        table.add_column(column, no_wrap=True)
    table.add_column("session", overflow="fold")
    table.add_column("last error", overflow="fold")
    for job in jobs:
        table.add_row(
            job.id,
            job.kind.value,
            job.agent_id,
            _status(job.status),
            f"{job.attempts}/{job.max_attempts}",
            _age(job.updated_at_ms),
            _short(job.child_session_key or job.target_session_key, 48),
            _short(job.last_error, 40),
        )
    out.print(table)


def render_job(job: Job) -> None:
    out = console()
    details = Table(show_header=False, title=f"Job {job.id}", title_justify="left")
    details.add_column("field", style="bold")
    details.add_column("value", overflow="fold")
    rows = {
        "kind": job.kind.value,
        "status": _status(job.status),
        "agent": job.agent_id,
        "target agent": job.target_agent_id,
        "gateway": job.source,
        "attempts": f"{job.attempts} of {job.max_attempts}",
        "next retry": ms_to_iso(job.next_retry_at_ms),
        "created": ms_to_iso(job.created_at_ms),
        "updated": ms_to_iso(job.updated_at_ms),
        "label": job.label,
        "task": _short(job.task, 200),
        "tool call id": job.tool_call_id,
        "parent session": job.parent_session_key,
        "parent run id": job.parent_run_id,
        "child session": job.child_session_key,
        "target session": job.target_session_key,
        "run id": job.run_id,
        "mode": job.mode,
        "outcome": job.outcome,
        "last error": job.last_error,
        "events": str(job.events),
    }
    for name, value in rows.items():
        if value:
            details.add_row(name, value)
    out.print(details)
    history = Table(title="History", title_justify="left")
    history.add_column("at", no_wrap=True)
    for column in ("from", "to", "attempt", "reason"):
        history.add_column(column)
    for entry in job.history:
        history.add_row(
            ms_to_iso(entry.at_ms) or "-",
            entry.from_status.value if entry.from_status else "-",
            _status(entry.to_status),
            str(entry.attempt),
            entry.reason,
        )
    out.print(history)
