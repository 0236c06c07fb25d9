"""Daemon and CLI configuration.

Every setting has an environment variable ``ORCH_<NAME>`` and may also come from a TOML file
(``--config`` or ``ORCH_CONFIG``). Precedence, highest first: command-line flags, environment,
TOML file, defaults. Secrets are ``SecretStr`` so that printing a ``Settings`` never shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.errors import ConfigError

# Linux limits sun_path to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
MIB = 1024 * 1024
DAY_S = 86_400


def default_state_dir() -> Path:
    """Return ``$XDG_STATE_HOME/openclaw-orchestrator``, or the ``~/.local/state`` equivalent."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "openclaw-orchestrator"


class AgentPolicy(BaseModel):
    """Retry policy of one agent; unset fields fall back to the global settings."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int | None = Field(default=None, ge=1, le=100)
    retry_base_s: float | None = Field(default=None, gt=0)
    retry_cap_s: float | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    """All configuration of the daemon and the CLI."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="forbid", validate_default=True)

    # Redis
    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss://, unix:// or redis+sentinel://host:port,host:port/master URL; unset runs an embedded redis-server",
    )
    redis_password: SecretStr | None = Field(default=None, description="Redis password")
    redis_password_file: Path | None = Field(
        default=None, description="file whose first line is the Redis password"
    )
    key_prefix: str = Field(default="orch", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    redis_server_path: Path | None = Field(
        default=None, description="redis-server binary for the embedded mode; default: PATH lookup"
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user name")
    redis_tls_ca_file: Path | None = Field(default=None, description="CA bundle for rediss:// servers")
    redis_tls_cert_file: Path | None = Field(default=None, description="client certificate for rediss://")
    redis_tls_key_file: Path | None = Field(default=None, description="client key for rediss://")
    redis_connect_timeout_s: float = Field(default=5.0, gt=0)
    redis_startup_timeout_s: float = Field(
        default=30.0, gt=0, description="how long serve waits for Redis to respond at start"
    )

    # Files
    state_dir: Path = Field(default_factory=default_state_dir)
    socket_path: Path | None = Field(
        default=None,
        description="Unix socket the gateway plugin connects to; default STATE_DIR/orchestrator.sock",
    )
    socket_mode: int = Field(default=0o660, description="permission bits of the socket file, octal")

    # Ingest
    max_line_bytes: int = Field(default=MIB, ge=1024, le=64 * MIB)
    max_connections: int = Field(default=256, ge=1, le=65_536)
    max_pending_events: int = Field(
        default=10_000, ge=1, description="events read but not yet stored, across all connections"
    )
    commit_batch_max: int = Field(default=512, ge=1, le=10_000)
    event_ttl_s: int = Field(default=7 * DAY_S, ge=60, description="how long event ids are deduplicated")
    orphan_ttl_s: int = Field(
        default=3600, ge=60, description="how long an event waits for the job it refers to"
    )

    # Jobs
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_base_s: float = Field(default=5.0, gt=0)
    retry_cap_s: float = Field(default=300.0, gt=0)
    task_max_chars: int = Field(
        default=65_536,
        ge=256,
        description="maximum length of the task or message text stored for re-dispatch, in characters",
    )
    agent_policies: dict[str, AgentPolicy] = Field(
        default_factory=dict,
        description="per-agent overrides of max_attempts, retry_base_s and retry_cap_s, keyed by agent id",
    )
    dispatch_timeout_s: float = Field(
        default=60.0, gt=0, description="timeout of one re-dispatch call to the gateway"
    )
    completed_ttl_s: int = Field(
        default=7 * DAY_S, ge=60, description="retention of completed and cancelled jobs"
    )
    failed_ttl_s: int = Field(default=30 * DAY_S, ge=60, description="retention of failed jobs")

    # Gateway
    gateway_id: str = Field(default="default", min_length=1, max_length=128)
    gateway_url: str = Field(default="ws://127.0.0.1:18789")
    gateway_token: SecretStr | None = None
    gateway_token_file: Path | None = None

    # Dead-letter alerts
    alert_webhook_url: str | None = Field(
        default=None, description="HTTP(S) URL that receives a JSON POST per dead letter"
    )
    alert_webhook_timeout_s: float = Field(default=10.0, gt=0)
    alert_max_tries: int = Field(
        default=8, ge=1, le=100, description="delivery tries per alert sink before giving up"
    )
    alert_retry_base_s: float = Field(
        default=2.0,
        gt=0,
        description="wait after the first failed alert delivery; doubles per try, capped at 300 s",
    )
    alert_session_key: str | None = Field(
        default=None, description="OpenClaw session that receives a chat message per dead letter"
    )
    alert_to_requester: bool = Field(
        default=False, description="also message the session of the agent that delegated the failed work"
    )
    alert_task_max_chars: int = Field(default=500, ge=20, description="task text included in an alert")

    # Redis outages
    breaker_failure_threshold: int = Field(
        default=5, ge=1, description="consecutive Redis failures that open the breaker"
    )
    breaker_reset_timeout_s: float = Field(
        default=30.0, gt=0, description="time open before one trial operation"
    )
    spool_path: Path | None = Field(
        default=None, description="local spool file; default STATE_DIR/spool.ndjson"
    )
    spool_max_bytes: int = Field(
        default=256 * MIB, ge=MIB, description="spool size at which new events are rejected"
    )
    spool_fsync: Literal["always", "interval", "never"] = Field(
        default="always", description="fsync after every spool write, at most once a second, or never"
    )

    # Observability
    http_host: str = Field(
        default="127.0.0.1", description="address of the /healthz, /readyz and /metrics listener"
    )
    http_port: int = Field(default=9464, ge=0, le=65_535, description="port of that listener; 0 turns it off")

    # Lifecycle and logging
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _parse_octal_mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError as e:
                raise ValueError(f"socket_mode {value!r} is not an octal permission such as 0660") from e
        return value

    @field_validator("socket_mode")
    @classmethod
    def _check_mode_range(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError(f"socket_mode {value} is out of range; write it in octal, such as 0660")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        # Imported here because orchestrator.connection imports this module.
        from orchestrator.connection import parse_redis_url

        try:
            parse_redis_url(value)
        except ConfigError as e:
            raise ValueError(str(e)) from e
        return value

    @model_validator(mode="after")
    def _check_socket_path(self) -> Settings:
        path = self.resolved_socket_path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes, the Unix socket "
                "limit; set ORCH_SOCKET_PATH to a shorter path"
            )
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError("retry_cap_s must be at least retry_base_s")
        return self

    @property
    def resolved_socket_path(self) -> Path:
        return self.socket_path or self.state_dir / "orchestrator.sock"

    @property
    def embedded_redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def resolved_spool_path(self) -> Path:
        return self.spool_path or self.state_dir / "spool.ndjson"

    @property
    def embedded_redis_socket(self) -> Path:
        return self.embedded_redis_dir / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        """Return the configured URL, or the embedded server's Unix socket URL when none is set."""
        return self.redis_url or f"unix://{self.embedded_redis_socket}"

    def read_redis_password(self) -> str | None:
        if self.redis_password is not None:
            return self.redis_password.get_secret_value()
        if self.redis_password_file is not None:
            return _read_secret_file(self.redis_password_file, "redis_password_file")
        return None

    def read_gateway_token(self) -> str | None:
        if self.gateway_token is not None:
            return self.gateway_token.get_secret_value()
        if self.gateway_token_file is not None:
            return _read_secret_file(self.gateway_token_file, "gateway_token_file")
        return None


def _read_secret_file(path: Path, setting: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {setting} {path}: {e.strerror}") from e
    secret = text.splitlines()[0].strip() if text else ""
    if not secret:
        raise ConfigError(f"{setting} {path} is empty")
    return secret


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build ``Settings`` from overrides, the environment and an optional TOML file.

    Raises ``ConfigError`` with every invalid field named, instead of a pydantic traceback.
    """
    config_file = config_file or _env_config_file()
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"configuration file {config_file} does not exist")
    cleaned = {key: value for key, value in overrides.items() if value is not None}

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
            return sources

    try:
        return _FileSettings(**cleaned)
    except ValidationError as e:
        raise ConfigError(_describe_validation_error(e, config_file)) from e
    except ValueError as e:  # a TOML syntax error surfaces as tomllib.TOMLDecodeError
        raise ConfigError(f"cannot read configuration file {config_file}: {e}") from e


def _env_config_file() -> Path | None:
    value = os.environ.get("ORCH_CONFIG")
    return Path(value) if value else None


def _describe_validation_error(error: ValidationError, config_file: Path | None) -> str:
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        problems.append(f"{name} (env ORCH_{name.upper()}): {item['msg']}")
    where = f" (configuration file {config_file})" if config_file else ""
    return f"invalid settings{where}: " + "; ".join(problems)
