"""The ``orchestrator`` command line: ``serve`` runs the daemon, ``queue`` inspects jobs.

Expected failures (Redis unreachable, job not found, invalid settings) print one line to stderr
and exit with code 1, without a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator import __version__
from orchestrator.cli.common import (
    CliState,
    ConfigOption,
    RedisUrlOption,
    SocketOption,
    StateDirOption,
    fail,
    global_options,
)
from orchestrator.cli.doctor import doctor
from orchestrator.cli.queue import queue_app
from orchestrator.errors import OrchestratorError
from orchestrator.logs import configure_logging

app = typer.Typer(
    name="orchestrator",
    help="Durable, retried sub-agent work for the OpenClaw gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(queue_app, name="queue")
app.command("doctor")(doctor)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"openclaw-orchestrator {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: ConfigOption = None,
    redis_url: RedisUrlOption = None,
    socket: SocketOption = None,
    state_dir: StateDirOption = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    ctx.obj = CliState(config=config, redis_url=redis_url, socket_path=socket, state_dir=state_dir)


@app.command()
@global_options
def serve(ctx: typer.Context) -> None:
    """Run the daemon: the socket server, the job tracker and the arq worker."""
    from orchestrator.service import run_daemon

    state: CliState = ctx.obj
    try:
        settings = state.settings()
        configure_logging(level=settings.log_level, log_format=settings.log_format)
        run_daemon(settings)
    except OrchestratorError as e:
        fail(str(e))


def main() -> None:
    app()
