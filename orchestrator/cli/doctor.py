"""``orchestrator doctor``: check Redis, the socket, the spool and the gateway."""

from __future__ import annotations

import asyncio

import typer

from orchestrator.cli.common import CliState, JsonOption, global_options, print_json
from orchestrator.cli.render import line_console
from orchestrator.doctor import Verdict, run_checks

VERDICT_STYLES = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "bold red"}


@global_options
def doctor(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Check Redis, the socket, the spool and the gateway, and print the fix for each failure."""
    state: CliState = ctx.obj
    checks = asyncio.run(run_checks(state.settings_or_fail()))
    if as_json:
        print_json([check.to_json() for check in checks])
    else:
        out = line_console()
        for check in checks:
            style = VERDICT_STYLES[check.verdict]
            out.print(
                f"[{style}]{check.verdict.value:<4}[/] [bold]{check.name}[/]: {check.detail}", highlight=False
            )
            if check.fix and check.verdict is not Verdict.OK:
                out.print(f"     fix: {check.fix}", highlight=False)
    if any(check.verdict is Verdict.FAIL for check in checks):
        raise typer.Exit(code=1)
