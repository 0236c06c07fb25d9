"""Static checks of the deployment files: Dockerfile, compose.yaml, redis.conf and the systemd unit.

No container engine runs here, so the Dockerfile and compose.yaml are read, not built. The Redis
configuration and the image's health check command are also run for real, on loopback.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.connection import parse_redis_url
from orchestrator.health import HealthServer
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from tests.redis_process import RedisProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
REDIS_CONF = ROOT / "deploy" / "redis" / "redis.conf"
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD_DIR / "openclaw-orchestrator.service"
ENV_EXAMPLE = SYSTEMD_DIR / "orchestrator.env.example"
SYSUSERS = SYSTEMD_DIR / "openclaw-orchestrator.sysusers.conf"

REQUIRED_REDIS = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
SETTINGS_ENV = {f"ORCH_{name.upper()}" for name in Settings.model_fields}
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}


def assert_known_settings(names: set[str], where: str) -> None:
    unknown = sorted(name for name in names if name.startswith("ORCH_") and name not in SETTINGS_ENV)
    assert not unknown, f"{where} sets variables that are no setting: {unknown}"


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends with a continuation line"
    return instructions


def instruction_values(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in instruction_values("ENV"):
        for item in shlex.split(arguments):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def test_dockerfile_base_is_slim_python() -> None:
    bases = [arguments.split()[0] for arguments in instruction_values("FROM")]
    assert bases
    for base in bases:
        match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
        assert match, f"base image {base} is not a slim Python image"
        assert int(match.group(1)) >= 11


def test_dockerfile_runs_as_non_root() -> None:
    users = instruction_values("USER")
    assert users, "the Dockerfile sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_healthcheck_uses_healthz_without_curl() -> None:
    checks = instruction_values("HEALTHCHECK")
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "urllib.request" in checks[0]
    assert "curl" not in checks[0]


def healthcheck_command() -> list[str]:
    check = instruction_values("HEALTHCHECK")[0]
    command: list[str] = yaml.safe_load(check[check.index("CMD") + len("CMD") :].strip())
    return command


async def run_healthcheck(port: int) -> int:
    command = healthcheck_command()
    assert command[0] == "python"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={"ORCH_HTTP_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        return await process.wait()


async def test_dockerfile_healthcheck_command_runs() -> None:
    async def ready() -> tuple[bool, dict[str, object]]:
        return True, {}

    server = HealthServer("127.0.0.1", 0, ready, Metrics(process=False))
    await server.start()
    try:
        assert await run_healthcheck(server.port) == 0
    finally:
        await server.stop()
    assert await run_healthcheck(free_port()) != 0


def test_dockerfile_socket_directory_is_volume() -> None:
    env = dockerfile_env()
    socket_dir = str(Path(env["ORCH_SOCKET_PATH"]).parent)
    volumes = [path for arguments in instruction_values("VOLUME") for path in yaml.safe_load(arguments)]
    assert socket_dir in volumes
    assert env["ORCH_STATE_DIR"] in volumes


def test_dockerfile_env_names_are_settings() -> None:
    env = dockerfile_env()
    assert_known_settings(set(env), "the Dockerfile")
    assert env["ORCH_HTTP_HOST"] == "0.0.0.0"


def test_dockerfile_entrypoint_serves() -> None:
    assert yaml.safe_load(instruction_values("ENTRYPOINT")[-1]) == ["orchestrator"]
    assert yaml.safe_load(instruction_values("CMD")[-1]) == ["serve"]


def test_dockerignore_admits_copied_files() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert "*" in patterns, ".dockerignore should exclude everything not named"
    for arguments in instruction_values("COPY"):
        if arguments.startswith("--from"):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (ROOT / source).exists()


# --- compose.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Map each mount target of a service to its source (a named volume or a host path)."""
    result: dict[str, str] = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        result[target] = source
    return result


def test_compose_services_have_restart_and_healthcheck(compose: dict[str, Any]) -> None:
    for name in ("redis", "orchestrator"):
        service = compose["services"][name]
        assert service["restart"] in RESTART_POLICIES, name
        assert service["healthcheck"]["test"], name


def test_compose_redis_uses_config_and_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7")
    volumes = mounts(redis)
    config_target = redis["command"][1]
    assert redis["command"][0] == "redis-server"
    assert volumes[config_target] == "./deploy/redis/redis.conf"
    assert any(entry.endswith(":ro") for entry in redis["volumes"] if config_target in entry)
    assert volumes["/data"] in compose["volumes"]
    assert "ports" not in redis, "Redis has no password and must not be published"


def test_compose_redis_network_is_internal(compose: dict[str, Any]) -> None:
    assert compose["services"]["redis"]["networks"] == ["redis"]
    assert compose["networks"]["redis"]["internal"] is True


def test_compose_orchestrator_points_at_redis(compose: dict[str, Any]) -> None:
    orchestrator = compose["services"]["orchestrator"]
    target = parse_redis_url(orchestrator["environment"]["ORCH_REDIS_URL"])
    assert target.hosts == (("redis", 6379),)
    assert orchestrator["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis" in orchestrator["networks"]


def test_compose_orchestrator_shares_socket_volume(compose: dict[str, Any]) -> None:
    orchestrator = compose["services"]["orchestrator"]
    environment = orchestrator["environment"]
    socket_dir = str(Path(environment["ORCH_SOCKET_PATH"]).parent)
    volumes = mounts(orchestrator)
    assert volumes[socket_dir] in compose["volumes"], "the socket directory must be a named volume"
    assert volumes[environment["ORCH_STATE_DIR"]] in compose["volumes"]


def test_compose_orchestrator_settings_valid(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {
        name: str(value) for name, value in compose["services"]["orchestrator"]["environment"].items()
    }
    assert_known_settings(set(environment), "compose.yaml")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.http_port == 9464


def test_compose_metrics_port_on_loopback_only(compose: dict[str, Any]) -> None:
    orchestrator = compose["services"]["orchestrator"]
    port = str(orchestrator["environment"]["ORCH_HTTP_PORT"])
    assert orchestrator["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(orchestrator["healthcheck"]["test"])


# --- redis.conf ----------------------------------------------------------------------------------


def redis_directives() -> dict[str, tuple[str, int]]:
    """Map each directive to its value and line index."""
    directives: dict[str, tuple[str, int]] = {}
    for index, line in enumerate(REDIS_CONF.read_text().splitlines()):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, _, value = stripped.partition(" ")
            directives[name.lower()] = (value.strip(), index)
    return directives


def test_redis_conf_required_settings() -> None:
    directives = redis_directives()
    for name, expected in REQUIRED_REDIS.items():
        assert directives[name][0] == expected, name


def test_redis_conf_settings_are_explained() -> None:
    lines = REDIS_CONF.read_text().splitlines()
    for name, (_, index) in redis_directives().items():
        assert index > 0, f"{name} is on the first line, with no comment above it"
        assert lines[index - 1].lstrip().startswith("#"), f"{name} has no comment above it"


class ConfRedisProcess(RedisProcess):
    """redis-server reading deploy/redis/redis.conf, with only its address moved to loopback."""

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        return [
            binary, str(REDIS_CONF),
            "--port", "0",
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip


def test_redis_conf_loads_in_redis_server() -> None:
    server = ConfRedisProcess()
    server.start()
    try:
        for name, expected in REQUIRED_REDIS.items():
            result = subprocess.run(
                ["redis-cli", "-s", str(server.socket_path), "CONFIG", "GET", name],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert result.stdout.split() == [name, expected]
    finally:
        server.cleanup()


# --- systemd -------------------------------------------------------------------------------------


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    """Map each section of the unit file to its (key, value) entries; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in UNIT.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], [])
            continue
        assert current is not None, f"entry outside a section: {stripped}"
        key, equals, value = stripped.partition("=")
        assert equals, f"invalid unit line: {stripped}"
        current.append((key, value))
    return sections


def service_values(key: str) -> list[str]:
    return [value for name, value in unit_entries()["Service"] if name == key]


def service_value(key: str) -> str:
    values = service_values(key)
    assert len(values) == 1, f"{key} is set {len(values)} times"
    return values[0]


def unit_environment() -> dict[str, str]:
    return dict(value.partition("=")[::2] for value in service_values("Environment"))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("RuntimeDirectory", "openclaw-orchestrator"),
        ("StateDirectory", "openclaw-orchestrator"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/openclaw-orchestrator"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
    ],
)
def test_unit_service_setting(key: str, expected: str) -> None:
    assert service_value(key) == expected


def test_unit_watchdog_set() -> None:
    assert re.fullmatch(r"\d+s", service_value("WatchdogSec"))


def test_unit_dedicated_user() -> None:
    user = service_value("User")
    assert user not in {"root", "0"}
    assert service_value("Group") == user
    assert SYSUSERS.read_text().split("\n")[-2].split()[1] == user


def test_unit_exec_start_runs_venv_serve() -> None:
    command = service_value("ExecStart").split()
    assert command[0].startswith("/opt/")
    assert command[0].endswith("/bin/orchestrator")
    assert command[1:] == ["serve"]


def test_unit_socket_in_runtime_directory() -> None:
    environment = unit_environment()
    runtime_dir = f"/run/{service_value('RuntimeDirectory')}"
    assert environment["ORCH_SOCKET_PATH"] == f"{runtime_dir}/orchestrator.sock"
    assert environment["ORCH_STATE_DIR"] == f"/var/lib/{service_value('StateDirectory')}"
    assert_known_settings(set(environment), "the unit file")


def test_unit_installs_for_multi_user() -> None:
    assert ("WantedBy", "multi-user.target") in unit_entries()["Install"]


def test_env_example_names_are_settings() -> None:
    names = set(re.findall(r"^#?(ORCH_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    assert names
    assert_known_settings(names, ENV_EXAMPLE.name)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze(work_dir: Path) -> None:
    copy = work_dir / UNIT.name
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # The unit names the installed binary, which does not exist on a test machine.
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "/opt/openclaw-orchestrator/venv/bin/orchestrator" not in line
    ]
    assert problems == []
