"""End to end: captured OpenClaw events through the socket of a running daemon, read back with the CLI."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import orjson

from tests.daemon_process import DaemonProcess, cli_json
from tests.events import SPAWN_CHILD_RUN, SPAWN_CHILD_SESSION, line, spawn_lifecycle
from tests.redis_process import RedisProcess

VOLATILE = {"id", "created_at", "updated_at", "events", "history"}


def deliver(path: Path, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(str(path))
        client.sendall(b"".join(line(data) for data in frames))
        reader = client.makefile("rb")
        return [orjson.loads(reader.readline()) for _ in frames]


def run_scenario(redis_server: RedisProcess, work_dir: Path, name: str, frames: list[dict[str, Any]]) -> Any:
    env = {
        "ORCH_REDIS_URL": redis_server.url,
        "ORCH_KEY_PREFIX": f"life-{name}-{random.randrange(1 << 30)}",
        "ORCH_STATE_DIR": str(work_dir / name),
        "ORCH_SOCKET_PATH": str(work_dir / f"{name}.sock"),
    }
    daemon = DaemonProcess(env, work_dir / f"{name}.log")
    daemon.start()
    try:
        acks = deliver(daemon.socket_path, frames)
        assert all(ack["ok"] and ack["tracked"] for ack in acks), acks
        listed = cli_json(["queue", "list"], env)
        assert isinstance(listed, list)
        assert len(listed) == 1
        return cli_json(["queue", "inspect", listed[0]["id"]], env)
    finally:
        assert daemon.stop() == 0


def test_captured_spawn_lifecycle_end_to_end(redis_server: RedisProcess, work_dir: Path) -> None:
    job = run_scenario(redis_server, work_dir, "ordered", spawn_lifecycle())
    assert job["status"] == "completed"
    assert job["child_session_key"] == SPAWN_CHILD_SESSION
    assert job["run_id"] == SPAWN_CHILD_RUN
    assert [entry["to"] for entry in job["history"]] == ["queued", "active", "announcing", "completed"]


def test_shuffled_and_duplicated_events_give_same_record(redis_server: RedisProcess, work_dir: Path) -> None:
    ordered = run_scenario(redis_server, work_dir, "base", spawn_lifecycle())
    frames = spawn_lifecycle()
    rng = random.Random(20261204)
    for round_number in range(3):
        copies = [dict(data) for data in frames] + [dict(data) for data in frames]
        copies += [dict(data, id=f"{data['id']}-redelivered") for data in frames]
        rng.shuffle(copies)
        job = run_scenario(redis_server, work_dir, f"shuffled{round_number}", copies)
        assert {k: v for k, v in job.items() if k not in VOLATILE} == {
            k: v for k, v in ordered.items() if k not in VOLATILE
        }
        assert job["history"][-1]["to"] == "completed"
