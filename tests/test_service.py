"""``orchestrator serve`` as a subprocess: embedded Redis, signals, shutdown, start-up errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.daemon_process import DaemonProcess, cli_env, cli_json, run_cli
from tests.events import line, spawn_lifecycle
from tests.redis_process import RedisProcess, free_port


def embedded_env(work_dir: Path) -> dict[str, str]:
    return {"ORCH_STATE_DIR": str(work_dir / "state"), "ORCH_SOCKET_PATH": str(work_dir / "o.sock")}


def send_lines(path: Path, payload: bytes, count: int) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(path))
        client.sendall(payload)
        reader = client.makefile("rb")
        return [orjson.loads(reader.readline()) for _ in range(count)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def embedded_redis_pid(daemon_log: str) -> int:
    for text in daemon_log.splitlines():
        if "started embedded redis-server pid" in text:
            return int(text.split("pid ")[1].split()[0])
    raise AssertionError(f"no embedded redis-server start in the log:\n{daemon_log}")


def test_embedded_redis_serves_and_stops(work_dir: Path) -> None:
    env = embedded_env(work_dir)
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    daemon.start()
    redis_pid = embedded_redis_pid(daemon.log())
    frames = spawn_lifecycle()
    acks = send_lines(daemon.socket_path, b"".join(line(data) for data in frames), len(frames))
    assert all(ack["ok"] for ack in acks)

    stats = cli_json(["queue", "stats"], env)
    assert isinstance(stats, dict)
    assert stats["by_status"]["completed"] == 1

    assert daemon.stop(signal.SIGTERM) == 0
    assert not pid_alive(redis_pid)
    assert not daemon.socket_path.exists()
    log = daemon.log()
    for phase in range(1, 5):
        assert f"phase {phase} of 4" in log
    aof_dir = work_dir / "state" / "redis"
    assert any(path.name.startswith("appendonly") for path in aof_dir.iterdir())

    # The data survives a restart of daemon and embedded Redis (AOF).
    daemon.start()
    assert cli_json(["queue", "stats"], env)["by_status"]["completed"] == 1  # type: ignore[index]
    assert daemon.stop(signal.SIGINT) == 0


def test_embedded_redis_settings(work_dir: Path) -> None:
    env = embedded_env(work_dir)
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    daemon.start()
    try:
        socket_path = work_dir / "state" / "redis" / "redis.sock"
        result = subprocess.run(
            ["redis-cli", "-s", str(socket_path), "CONFIG", "GET", "*"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        pairs = result.stdout.split("\n")
        config = dict(zip(pairs[0::2], pairs[1::2], strict=False))
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction"
        assert config["port"] == "0"
    finally:
        daemon.stop()


def test_missing_redis_server_explains_fix(work_dir: Path) -> None:
    env = {**embedded_env(work_dir), "ORCH_REDIS_SERVER_PATH": str(work_dir / "no-such-redis-server")}
    result = run_cli(["serve"], env)
    assert result.returncode == 1
    assert "apt-get install redis-server" in result.stderr
    assert "ORCH_REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_redis_server_on_path_explains_fix(work_dir: Path) -> None:
    env = {**embedded_env(work_dir), "PATH": str(work_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve"],
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no redis-server found on PATH" in result.stderr


def test_second_daemon_on_same_state_dir_exits(work_dir: Path) -> None:
    env = embedded_env(work_dir)
    first = DaemonProcess(env, work_dir / "first.log")
    first.start()
    try:
        second = run_cli(["serve"], {**env, "ORCH_SOCKET_PATH": str(work_dir / "other.sock")})
        assert second.returncode == 1
        assert "another orchestrator is running with state directory" in second.stderr
        third = run_cli(["serve"], {**env, "ORCH_STATE_DIR": str(work_dir / "state2")})
        assert third.returncode == 1
        assert "already listening" in third.stderr
    finally:
        assert first.stop() == 0


def test_unreachable_redis_url_fails_start(work_dir: Path) -> None:
    env = {
        **embedded_env(work_dir),
        "ORCH_REDIS_URL": f"unix://{work_dir}/missing.sock",
        "ORCH_REDIS_STARTUP_TIMEOUT_S": "1",
    }
    result = run_cli(["serve"], env)
    assert result.returncode == 1
    assert "Redis unreachable at" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_is_one_line(work_dir: Path) -> None:
    result = run_cli(["serve"], {**embedded_env(work_dir), "ORCH_SOCKET_MODE": "rw-rw----"})
    assert result.returncode == 1
    assert "socket_mode" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_external_redis_password_never_logged(work_dir: Path) -> None:
    server = RedisProcess(tcp=True)
    server.start()
    try:
        secret = "s3cret-pass-word"
        subprocess.run(
            ["redis-cli", "-s", str(server.socket_path), "CONFIG", "SET", "requirepass", secret],
            check=True,
            capture_output=True,
            timeout=30,
        )
        env = {
            **embedded_env(work_dir),
            "ORCH_REDIS_URL": f"redis://:{secret}@127.0.0.1:{server.port}/0",
            "ORCH_LOG_FORMAT": "json",
            "ORCH_LOG_LEVEL": "DEBUG",
        }
        daemon = DaemonProcess(env, work_dir / "daemon.log")
        daemon.start()
        frames = spawn_lifecycle()
        send_lines(daemon.socket_path, b"".join(line(data) for data in frames), len(frames))
        assert daemon.stop() == 0
        log = daemon.log()
        assert secret not in log
        records = [orjson.loads(text) for text in log.splitlines() if text.startswith("{")]
        transitions = [record for record in records if record.get("job_id") and "->" in record["message"]]
        assert len(transitions) == 4
        assert {"ts", "level", "message", "job_id", "agent_id"} <= set(transitions[0])
    finally:
        server.cleanup()


@pytest.mark.parametrize("command", [["--version"], ["--help"], ["queue", "--help"]])
def test_cli_help_and_version(command: list[str]) -> None:
    result = run_cli(command, {})
    assert result.returncode == 0
    assert result.stdout


def test_busy_http_port_is_one_line(work_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve"], {**embedded_env(work_dir), "ORCH_HTTP_PORT": str(port)})
    assert result.returncode == 1
    assert "ORCH_HTTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_notifications_and_health(work_dir: Path) -> None:
    notify_path = work_dir / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    port = free_port()
    env = {**embedded_env(work_dir), "NOTIFY_SOCKET": str(notify_path), "ORCH_HTTP_PORT": str(port)}
    daemon = DaemonProcess(env, work_dir / "daemon.log")
    try:
        daemon.start()
        messages = [listener.recv(4096).decode()]
        while not any("READY=1" in message for message in messages):
            messages.append(listener.recv(4096).decode())
        assert any(message.startswith("STATUS=waiting for Redis") for message in messages)

        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["breaker"] == "closed"
        frames = spawn_lifecycle()
        send_lines(daemon.socket_path, b"".join(line(data) for data in frames), len(frames))
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'orchestrator_events_received_total{outcome="created",type="spawn"} 1.0' in metrics
        assert 'orchestrator_jobs{agent="main",status="completed"} 1.0' in metrics

        assert daemon.stop() == 0
        # The messages were queued before the exit; read up to the last phase (the timeout bounds it).
        rest = [listener.recv(4096).decode()]
        while not any("phase 4 of 4" in message for message in rest):
            rest.append(listener.recv(4096).decode())
        assert any("STOPPING=1" in message for message in rest)
    finally:
        listener.close()
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()
