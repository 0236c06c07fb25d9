"""Fixtures that run the real OpenClaw gateway offline, with the bridge plugin loaded.

One gateway process serves the whole test session, because it takes 10 to 20 s to start. Its
plugin sends events to ``plugin_socket_path``, and each test decides what listens there. That is
a ``FrameSink`` that records frames, a real ``orchestrator serve`` daemon, or nothing, in which
case the plugin buffers. Frames left over from an earlier test can reach a later test's listener, so tests
pick out their own frames and jobs by the ids of the runs they started.

The tests are marked ``interop`` and skipped unless selected with ``-m interop`` or
``ORCH_INTEROP=1``, because the first run downloads Node 24 and openclaw (about 840 MB) from npm.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .daemon import OrchestratorDaemon, RedisServer, orchestrator_executable
from .gateway import GatewayClient, GatewayConfig, GatewayPaths, GatewayProcess, free_port
from .mock_model import MockModel
from .sink import FrameSink, Received

REPO_DIR = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_DIR / "scripts" / "install-openclaw.sh"
PLUGIN_DIR = REPO_DIR / "deploy" / "openclaw-plugin"
GATEWAY_ID = "interop"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: runs the real OpenClaw gateway offline (Node 24 and openclaw from npm); "
        "select with -m interop or ORCH_INTEROP=1",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = "interop" in (config.getoption("markexpr", "") or "") or os.environ.get("ORCH_INTEROP") == "1"
    if selected:
        return
    skip = pytest.mark.skip(reason="interop test: select with -m interop or ORCH_INTEROP=1")
    for item in items:
        if item.get_closest_marker("interop") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gateway_paths() -> GatewayPaths:
    """Install (once) and locate Node 24 and openclaw 2026.9.6 with scripts/install-openclaw.sh."""
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "--with-openclaw"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{INSTALL_SCRIPT.name} --with-openclaw failed with status {result.returncode}:\n{result.stderr[-4000:]}"
        )
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return GatewayPaths(
        node_bin=Path(printed["NODE_BIN"]),
        openclaw_mjs=Path(printed["OPENCLAW_MJS"]),
        plugin_dir=PLUGIN_DIR,
    )


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """A temporary directory under /tmp, short enough for Unix socket paths (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="orch-interop-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def plugin_socket_path(short_tmp: Path) -> Path:
    return short_tmp / "plugin.sock"


@pytest.fixture(scope="session")
def mock_model_server() -> Iterator[MockModel]:
    with MockModel() as server:
        yield server


@pytest.fixture
def model(mock_model_server: MockModel) -> Iterator[MockModel]:
    """The mock model with no rules and an empty request log."""
    mock_model_server.reset()
    yield mock_model_server
    mock_model_server.reset()


@pytest.fixture(scope="session")
def gateway(
    gateway_paths: GatewayPaths,
    mock_model_server: MockModel,
    plugin_socket_path: Path,
    short_tmp: Path,
    frame_log: list[Received],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The real gateway with the plugin loaded, on a free loopback port with token auth."""
    config = GatewayConfig(
        port=free_port(),
        token=secrets.token_hex(16),
        model_base_url=mock_model_server.base_url,
        plugin_config={
            "socketPath": str(plugin_socket_path),
            "gatewayId": GATEWAY_ID,
            "connectTimeoutMs": 1000,
            "reconnectMinMs": 100,
            "reconnectMaxMs": 1000,
        },
    )
    process = GatewayProcess(gateway_paths, config, short_tmp / "gateway")
    try:
        process.start(timeout_s=90)
        _collect_startup_frames(plugin_socket_path, frame_log)
        yield process
    finally:
        process.stop()
        # Keep the logs where pytest keeps its temporary directories for the last runs.
        log_copies = tmp_path_factory.mktemp("gateway-logs")
        for log in (process.stdout_path, process.log_file):
            if log.exists():
                shutil.copy(log, log_copies / log.name)


def _collect_startup_frames(socket_path: Path, frame_log: list[Received], timeout_s: float = 30.0) -> None:
    """Receive the gateway_start frame the plugin buffered since startup, into frame_log.

    Whatever listens first on the plugin's socket gets it, so it is collected here, before any
    test, to make the checks on it independent of test order.
    """
    with FrameSink(socket_path) as startup_sink:
        deadline = time.monotonic() + timeout_s
        while startup_sink.find(lambda f: f.get("hook") == "gateway_start") is None:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the plugin sent no gateway_start frame within {timeout_s} s of the gateway's ready line"
                )
            time.sleep(0.05)
    frame_log.extend(startup_sink.received)


@pytest.fixture
async def gateway_client(gateway: GatewayProcess) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(gateway.url, gateway.config.token) as client:
        yield client


@pytest.fixture(scope="session")
def frame_log() -> list[Received]:
    """Every frame any FrameSink of this session received, in order of the sinks' teardown."""
    return []


@pytest.fixture
def sink(plugin_socket_path: Path, gateway: GatewayProcess, frame_log: list[Received]) -> Iterator[FrameSink]:
    """A daemon stand-in on the plugin's socket that records and acknowledges every frame."""
    with FrameSink(plugin_socket_path) as frame_sink:
        yield frame_sink
    frame_log.extend(frame_sink.received)


@pytest.fixture(scope="session")
def interop_redis(short_tmp: Path) -> Iterator[RedisServer]:
    """A private redis-server on a Unix socket, shared by the session's daemons."""
    server = RedisServer(short_tmp / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orchestrator_daemon(
    request: pytest.FixtureRequest,
    gateway: GatewayProcess,
    interop_redis: RedisServer,
    plugin_socket_path: Path,
    short_tmp: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OrchestratorDaemon]:
    """An ``orchestrator serve`` daemon on the plugin's socket, not started; tests call start().

    Each test gets its own Redis key prefix, so jobs of earlier tests stay out of its queue.
    """
    executable = orchestrator_executable()
    if executable is None:
        pytest.skip("the orchestrator console script is not installed; run pip install -e . first")
    name = f"d{uuid.uuid4().hex[:8]}"
    controller = OrchestratorDaemon(
        executable=executable,
        work_dir=short_tmp / name,
        socket_path=plugin_socket_path,
        redis_url=interop_redis.url,
        key_prefix=f"it{name}",
        gateway_url=gateway.url,
        gateway_token=gateway.config.token,
        gateway_id=GATEWAY_ID,
        # A free port for /healthz and /metrics, so that no other daemon's listener is in the way.
        extra_env={"ORCH_LOG_LEVEL": "DEBUG", "ORCH_HTTP_PORT": str(free_port())},
    )
    try:
        yield controller
    finally:
        controller.stop()
        if controller.log_path.exists():
            # Kept beside the gateway logs, under the test's name, for a failure to be read later.
            log_copies = tmp_path_factory.mktemp("daemon-logs")
            shutil.copy(controller.log_path, log_copies / f"{request.node.name}.log")
