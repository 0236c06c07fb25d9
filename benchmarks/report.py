"""Results as Markdown tables for stdout and docs/benchmarks.md, and as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.dispatch import DispatchResult
from benchmarks.plan import FULL, SMOKE
from benchmarks.recovery import RecoveryStep
from benchmarks.runner import PHASES, Measured, RunResults

SCHEMA_VERSION = 2
TARGET_INGEST_EVENTS_PER_S = 20_000.0
TARGET_RATIO_VS_ARQ = 5.0
TARGET_P99_MS = 2.0
TARGET_RETRIES_PER_S = 2_000.0
TARGET_RECOVERY_JOBS = 100_000
TARGET_RECOVERY_S = 10.0
NOT_JUDGED = "not judged"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not judged, because the sample does not fit the target

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
    if results.dispatch is not None:
        rate = results.dispatch.retries_per_s
        found.append(
            Target(
                "dispatch of retries",
                f">= {TARGET_RETRIES_PER_S:,.0f} retries/s",
                f"{rate:,.0f} retries/s",
                rate >= TARGET_RETRIES_PER_S,
            )
        )
    found.extend(_recovery_targets(results.recovery))
    return found


def _recovery_targets(steps: list[RecoveryStep]) -> list[Target]:
    """Return one target row per gateway variant of the largest recovery step."""
    if not steps:
        return []
    largest = max(step.jobs for step in steps)
    found = []
    for step in steps:
        if step.jobs != largest:
            continue
        judged = step.jobs >= TARGET_RECOVERY_JOBS
        gateway = "no gateway token" if step.gateway == "none" else "gateway stand-in checking runs"
        found.append(
            Target(
                f"boot recovery of {step.jobs:,} non-terminal jobs, {gateway}",
                f"<= {TARGET_RECOVERY_S:g} s for {TARGET_RECOVERY_JOBS:,} jobs",
                f"{step.boot_s:.2f} s"
                + ("" if judged else f" ({NOT_JUDGED} below {TARGET_RECOVERY_JOBS:,} jobs)"),
                step.boot_s <= TARGET_RECOVERY_S if judged else None,
            )
        )
    return found


def _fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


def _cores(cores: dict[str, float]) -> str:
    names = ("daemon", "redis", "client", "other")
    return " / ".join(f"{cores.get(name, math.nan):.2f}" for name in names)


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
            f"{latency.p99_ms:.2f} | {latency.max_ms:.2f} | {_cores(item.cores)} | {item.redis_usec_per_event:.1f} "
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
    verdict = {True: "yes", False: "**no**", None: NOT_JUDGED}
    rows = [f"| {item.name} | {item.goal} | {item.measured} | {verdict[item.met]} |" for item in found]
    return "\n".join(header + rows)


def _run_name(results: RunResults) -> str:
    plan = results.plan
    named = FULL if plan.mode == FULL.mode else SMOKE
    counts = ""
    if (plan.dispatch_jobs, plan.recovery_jobs) != (named.dispatch_jobs, named.recovery_jobs):
        counts = f" with {plan.dispatch_jobs:,} retries and recovery steps of {', '.join(f'{jobs:,}' for jobs in plan.recovery_jobs)} jobs"
    if set(results.phases) == set(PHASES):
        return f"{plan.mode} run{counts}"
    return f"{plan.mode} plan{counts}, phases {', '.join(results.phases)} only"


def dispatch_tables(dispatch: DispatchResult) -> str:
    """Return the rate of the dispatch phase and the latency of each stage of a retry."""
    errors = dispatch.errors
    lines = [
        "| retries | retries/s, first to last send | retries/s, first error to last job active "
        "| cores daemon / redis / client / other | Redis EVALSHA µs/retry | load avg (1 min) |",
        "|--:|--:|--:|--:|--:|--:|",
        f"| {dispatch.retries:,} | {_fmt_rate(dispatch.retries_per_s)} | "
        f"{_fmt_rate(dispatch.retries / dispatch.end_to_end_s)} | {_cores(dispatch.cores)} | "
        f"{dispatch.evalsha_usec_per_retry:.1f} | {dispatch.load_average[0]:.2f} |",
        "",
        f"The {errors.events:,} error events took {errors.seconds:.2f} s through the daemon's socket "
        f"({_fmt_rate(errors.events_per_s)} events/s). The relay handed "
        f"{_fmt_optional_rate(dispatch.details.get('relayed_per_s'))} retries/s to arq, and arq started "
        f"{_fmt_optional_rate(dispatch.details.get('arq_tasks_started_per_s'))} tasks/s (first to last). "
        "Stages of a retry, from millisecond time stamps:",
        "",
        "| stage | retries | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, latency in dispatch.stages.items():
        lines.append(
            f"| {name} | {latency.samples:,} | {latency.p50_ms:.0f} | {latency.p90_ms:.0f} | "
            f"{latency.p99_ms:.0f} | {latency.max_ms:.0f} |"
        )
    top = list(dispatch.commands_per_retry.items())[:8]
    lines += [
        "",
        "Redis commands per retry, most time first (calls, µs): "
        + ", ".join(f"{name} {values['calls']:.2f}, {values['usec']:.1f}" for name, values in top),
        "",
        f"The daemon wrote {dispatch.details['daemon_log_lines_per_retry']:.1f} log records per retry. "
        f"Its stop after the measurement: {dispatch.details['daemon_stop']}.",
    ]
    return "\n".join(lines)


def recovery_tables(steps: list[RecoveryStep]) -> str:
    """Return the boot time, memory and CPU of each recovery step, then the parts of each boot."""
    lines = [
        "| jobs (active / retrying / queued) | gateway | boot s | ready -> reconciled s | daemon VmRSS "
        "| daemon VmHWM | CPU s daemon / redis / client / other | runs checked | Redis forks | load avg (1 min) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for step in steps:
        seeded = step.seeded
        cpu = " / ".join(
            f"{step.cpu_s.get(name, math.nan):.1f}" for name in ("daemon", "redis", "client", "other")
        )
        ready_to_reconciled = step.parts_s.get("ready -> reconciled")
        lines.append(
            f"| {step.jobs:,} ({seeded['active']:,} / {seeded['retrying']:,} / {seeded['queued']:,}) "
            f"| {step.gateway} | {step.boot_s:.2f} | {_fmt_seconds(ready_to_reconciled)} "
            f"| {step.daemon_rss_kib / 1024:,.1f} MiB | {step.daemon_peak_rss_kib / 1024:,.1f} MiB | {cpu} "
            f"| {step.reconciled['runs_checked']:,} | {step.redis_forks} | {step.load_average[0]:.2f} |"
        )
    if steps:
        names = list(steps[0].parts_s)
        lines += [
            "",
            "| part of the boot, s | " + " | ".join(step.name for step in steps) + " |",
            "|---|" + "--:|" * len(steps),
        ]
        for name in names:
            values = " | ".join(_fmt_seconds(step.parts_s.get(name)) for step in steps)
            lines.append(f"| {name} | {values} |")
        lines += [
            "",
            "Log records the daemon wrote up to the reconciliation line: "
            + ", ".join(f"{step.name}: {step.log_lines:,}" for step in steps)
            + ".",
            "",
            "The daemons' stops after the measurement: "
            + ", ".join(f"{step.name}: {step.daemon_stop}" for step in steps)
            + ".",
        ]
    return "\n".join(lines)


def _fmt_optional_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _fmt_seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(results: RunResults) -> str:
    """Return the whole report as Markdown."""
    load_start = ", ".join(f"{value:.2f}" for value in results.load_average_start)
    load_end = ", ".join(f"{value:.2f}" for value in results.load_average_end)
    lines = [
        f"{_run_name(results)}, {results.started_at}, {results.machine['cpus']} CPUs "
        f"({results.machine['cpu_model']}), load average at start {load_start}, at end {load_end}",
    ]

    # Sections of phases that did not run are left out.
    if _measured(results):
        lines += ["", throughput_table(results), "", stalls(results)]
    if ratios(results):
        lines += [
            "",
            "Ratios of the daemon's 32-client rate to each baseline: "
            + ", ".join(f"{name} {value:.2f}" for name, value in ratios(results).items()),
        ]
    if results.scale:
        lines += [
            "",
            scale_table(results),
            "",
            results.scale_note,
            "Memory of one job's own keys (bytes, MEMORY USAGE): "
            + ", ".join(f"{name} {value:,}" for name, value in results.job_memory_breakdown.items()),
        ]
    if results.dispatch is not None:
        lines += ["", dispatch_tables(results.dispatch)]
    if results.recovery:
        lines += ["", recovery_tables(results.recovery)]

    lines += ["", targets_table(targets(results))]
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
        "dispatch": results.dispatch.to_json() if results.dispatch else None,
        "recovery": [step.to_json() for step in results.recovery],
        "targets": [item.to_json() for item in targets(results)],
    }
