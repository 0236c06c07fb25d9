"""State and helpers shared by the CLI commands."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import orjson
import typer

from orchestrator.connection import REDIS_DOWN_ERRORS, create_client, unreachable_message
from orchestrator.errors import OrchestratorError
from orchestrator.keys import Keys
from orchestrator.settings import Settings, load_settings
from orchestrator.store import JobStore

T = TypeVar("T")
P = ParamSpec("P")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (env ORCH_CONFIG).", show_default=False),
]
RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis URL: redis://, rediss://, unix:// or redis+sentinel://. Unset: the embedded Redis in the state directory.",
        show_default=False,
    ),
]
SocketOption = Annotated[
    Path | None,
    typer.Option("--socket", help="Unix socket path for the gateway plugin.", show_default=False),
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Directory for the socket, lock file and embedded Redis data.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
_GLOBAL_OPTIONS = {
    "config": ConfigOption,
    "redis_url": RedisUrlOption,
    "socket_path": SocketOption,
    "state_dir": StateDirOption,
}


@dataclass(slots=True)
class CliState:
    """Global options, turned into ``Settings`` only when a command needs them."""

    config: Path | None
    redis_url: str | None
    socket_path: Path | None
    state_dir: Path | None

    def merge(self, options: dict[str, Any]) -> None:
        """Let options given after the subcommand override those given before it."""
        for name, value in options.items():
            if value is not None:
                setattr(self, name, value)

    def settings_or_fail(self) -> Settings:
        try:
            return self.settings()
        except OrchestratorError as e:
            fail(str(e))

    def settings(self) -> Settings:
        return load_settings(
            self.config,
            redis_url=self.redis_url,
            socket_path=self.socket_path,
            state_dir=self.state_dir,
        )


def global_options(command: Callable[P, T]) -> Callable[P, T]:
    """Accept --config, --redis-url, --socket and --state-dir after the subcommand as well."""
    signature = inspect.signature(command, eval_str=True)
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in _GLOBAL_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        options = {name: kwargs.pop(name, None) for name in _GLOBAL_OPTIONS}
        # Typer passes its vendored click Context here, not typer.Context, so check by behaviour.
        ctx: Any = kwargs.get("ctx")
        state = ctx.find_root().obj if hasattr(ctx, "find_root") else None
        if isinstance(state, CliState):
            state.merge(options)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    wrapper.__annotations__ = {**command.__annotations__, **_GLOBAL_OPTIONS}
    return wrapper


def fail(message: str) -> NoReturn:
    """Print one error line to stderr and exit with code 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def print_json(data: object) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def run_with_store(state: CliState, action: Callable[[JobStore], Awaitable[T]]) -> T:
    """Run ``action`` against the configured Redis; turn expected failures into ``fail``."""
    settings = state.settings_or_fail()

    async def run() -> T:
        client = create_client(settings)
        try:
            store = JobStore(
                client,
                Keys(settings.key_prefix),
                event_ttl_s=settings.event_ttl_s,
                orphan_ttl_s=settings.orphan_ttl_s,
                max_attempts=settings.max_attempts,
            )
            return await action(store)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except REDIS_DOWN_ERRORS as e:
        fail(unreachable_message(settings, e))
    except OrchestratorError as e:
        fail(str(e))
