"""Results as Markdown tables for stdout and docs/benchmarks.md, and as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.runner import PHASES, Measured, RunResults

SCHEMA_VERSION = 1
TARGET_INGEST_EVENTS_PER_S = 20_000.0
TARGET_RATIO_VS_ARQ = 5.0
TARGET_P99_MS = 2.0
NOT_MEASURABLE = "not measurable yet"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measurable yet

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "measured": self.measured, "met": self.met}


def _find(items: list[Measured], key: str, value: object) -> Measured | None:
    return next((item for item in items if item.details.get(key) == value), None)


def ratios(results: RunResults) -> dict[str, float]:
    """Return the daemon's 32-client ingest rate divided by each baseline's rate."""
    daemon = _find(results.ingest, "clients", 32)
    if daemon is None:
        return {}
    return {
        f"daemon_32_clients_over_{baseline.details['key']}": round(
            daemon.events_per_s / baseline.events_per_s, 2
        )
        for baseline in results.baselines
    }


def targets(results: RunResults) -> list[Target]:
    daemon = _find(results.ingest, "clients", 32)
    arq = _find(results.baselines, "key", "arq_sequential")
    found: list[Target] = []
    if daemon is not None:
        rate = daemon.events_per_s
        found.append(
            Target(
                "ingest, 32 clients",
                f">= {TARGET_INGEST_EVENTS_PER_S:,.0f} events/s",
                f"{rate:,.0f} events/s",
                rate >= TARGET_INGEST_EVENTS_PER_S,
            )
        )
        if arq is not None:
            ratio = rate / arq.events_per_s
            found.append(
                Target(
                    "ingest vs raw arq sequential enqueue",
                    f">= {TARGET_RATIO_VS_ARQ:.0f}x",
                    f"{ratio:.1f}x",
                    ratio >= TARGET_RATIO_VS_ARQ,
                )
            )
    if results.fixed_rate is not None:
        p99 = results.fixed_rate.latency.p99_ms
        offered = results.fixed_rate.details["offered_events_per_s"]
        found.append(
            Target(
                f"ack p99 at {offered:,.0f} events/s",
                f"<= {TARGET_P99_MS:g} ms",
                f"{p99:.2f} ms",
                p99 <= TARGET_P99_MS,
            )
        )
    found.append(
        Target(
            "dispatch of retries",
            ">= 2,000 retries/s",
            "not measured: the harness has no phase for it yet",
            None,
        )
    )
    found.append(
        Target(
            "boot recovery of 100k non-terminal jobs",
            "<= 10 s",
            "not measured: the harness has no phase for it yet",
            None,
        )
    )
    return found


def _fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def _cores(item: Measured) -> str:
    names = ("daemon", "redis", "client", "other")
    return " / ".join(f"{item.cores.get(name, math.nan):.2f}" for name in names)


def throughput_table(results: RunResults) -> str:
    header = [
        "| measurement | events | events/s | latency p50 ms | p99 ms | max ms "
        "| cores daemon / redis / client / other | Redis µs/event | load avg (1 min) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    rows = []
    measured = _measured(results)
    for item in measured:
        latency = item.latency
        rows.append(
            f"| {item.label} | {item.events:,} | {_fmt_rate(item.events_per_s)} | {latency.p50_ms:.2f} | "
            f"{latency.p99_ms:.2f} | {latency.max_ms:.2f} | {_cores(item)} | {item.redis_usec_per_event:.1f} "
            f"| {item.load_average[0]:.2f} |"
        )
    return "\n".join(header + rows)


def _measured(results: RunResults) -> list[Measured]:
    fixed = [item for item in (results.fixed_rate, results.fixed_rate_direct) if item is not None]
    return [*results.ingest, *fixed, *results.baselines]


def stalls(results: RunResults) -> str:
    """Return one line per phase on stalls: late open-loop sends, Redis forks and latency events."""
    lines = []
    for item in _measured(results):
        redis_stalls = item.details.get("redis_stalls", {})
        parts = [f"Redis forks {redis_stalls.get('forks', 0)}"]
        events = redis_stalls.get("latency_monitor_max_ms", {})
        if events:
            parts.append(
                "Redis latency events " + ", ".join(f"{name} {ms} ms" for name, ms in events.items())
            )
        within = item.details.get("daemon_ack_latency_within")
        if within:
            parts.append(
                "daemon's own ack latency histogram: "
                + ", ".join(f"{100 * share:.1f}% within {bound}" for bound, share in list(within.items())[:4])
            )
        if "max_send_lag_ms" in item.details:
            late = item.details["late_sends_at_s"]
            parts.append(
                f"max send lag {item.details['max_send_lag_ms']:.1f} ms, {len(late)} sends over 10 ms late"
                + (f" (at {', '.join(f'{at:.1f}' for at in late[:8])} s)" if late else "")
            )
        lines.append(f"- {item.label}: " + "; ".join(parts))
    return "\n".join(lines)


def scale_table(results: RunResults) -> str:
    header = [
        "| jobs stored | Redis used_memory delta | bytes per job | daemon VmRSS | daemon VmHWM | ingest events/s |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    rows = []
    for step in results.scale:
        if step.extrapolated:
            rows.append(
                f"| {step.jobs:,} (extrapolated) | ~{step.bytes_per_job * step.jobs / 2**20:,.0f} MiB | "
                f"{step.bytes_per_job:,.0f} | not measured | not measured | not measured |"
            )
            continue
        delta = step.used_memory_delta_bytes or 0
        rows.append(
            f"| {step.jobs:,} | {delta / 2**20:,.1f} MiB | {step.bytes_per_job:,.0f} | "
            f"{(step.daemon_rss_kib or 0) / 1024:,.1f} MiB | {(step.daemon_peak_rss_kib or 0) / 1024:,.1f} MiB | "
            f"{_fmt_rate(step.ingest_events_per_s or math.nan)} |"
        )
    return "\n".join(header + rows)


def targets_table(found: list[Target]) -> str:
    header = ["| target | goal | measured | met |", "|---|---|---|---|"]
    verdict = {True: "yes", False: "**no**", None: NOT_MEASURABLE}
    rows = [f"| {item.name} | {item.goal} | {item.measured} | {verdict[item.met]} |" for item in found]
    return "\n".join(header + rows)


def _run_name(results: RunResults) -> str:
    if set(results.phases) == set(PHASES):
        return f"{results.plan.mode} run"
    return f"{results.plan.mode} plan, phases {', '.join(results.phases)} only"


def render(results: RunResults) -> str:
    """Return the whole report as Markdown."""
    load_start = ", ".join(f"{value:.2f}" for value in results.load_average_start)
    load_end = ", ".join(f"{value:.2f}" for value in results.load_average_end)
    lines = [
        f"{_run_name(results)}, {results.started_at}, {results.machine['cpus']} CPUs "
        f"({results.machine['cpu_model']}), load average at start {load_start}, at end {load_end}",
        "",
        throughput_table(results),
        "",
        stalls(results),
        "",
        "Ratios of the daemon's 32-client rate to each baseline: "
        + ", ".join(f"{name} {value:.2f}" for name, value in ratios(results).items()),
        "",
        scale_table(results),
        "",
        results.scale_note,
        "Memory of one job's own keys (bytes, MEMORY USAGE): "
        + ", ".join(f"{name} {value:,}" for name, value in results.job_memory_breakdown.items()),
        "",
        targets_table(targets(results)),
    ]
    if results.plan.mode != "full":
        lines.append(f"\nA {results.plan.mode} run's samples are too small to judge the targets.")
    return "\n".join(lines)


def to_json(results: RunResults) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "mode": results.plan.mode,
        "started_at": results.started_at,
        "machine": results.machine,
        "note": "shared machine: other work may run at the same time; see load_average",
        "load_average_start": results.load_average_start,
        "load_average_end": results.load_average_end,
        "redis_config": results.redis_config,
        "daemon_env": results.daemon_env,
        "plan": results.plan.to_json(),
        "phases": list(results.phases),
        "ingest": [item.to_json() for item in results.ingest],
        "fixed_rate": results.fixed_rate.to_json() if results.fixed_rate else None,
        "fixed_rate_direct": results.fixed_rate_direct.to_json() if results.fixed_rate_direct else None,
        "baselines": [item.to_json() for item in results.baselines],
        "ratios": ratios(results),
        "scale": [step.to_json() for step in results.scale],
        "scale_note": results.scale_note,
        "job_memory_breakdown_bytes": results.job_memory_breakdown,
        "targets": [item.to_json() for item in targets(results)],
    }
