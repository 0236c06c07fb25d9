"""The queue commands in both forms, and their one-line errors."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from tests.daemon_process import cli_env
from tests.events import SPAWN_CHILD_SESSION, SPAWN_TOOL_CALL, frame, sample, spawn_lifecycle
from tests.test_store import apply_frame

LIST_FIELDS = {
    "id",
    "kind",
    "agent_id",
    "status",
    "attempts",
    "created_at",
    "updated_at",
    "child_session_key",
    "run_id",
    "last_error",
}


@pytest.fixture
def filled(settings: Settings) -> str:
    """Store one completed spawn of agent main and one failed spawn of agent ops."""

    async def fill() -> str:
        client = aioredis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
        store = JobStore(client, Keys(settings.key_prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=3)
        try:
            job_id = ""
            for data in spawn_lifecycle():
                job_id = (await apply_frame(store, data)).job_id or job_id
            forbidden = frame(sample("failing spawn (agentId not allowed)"))
            forbidden["ctx"]["agentId"] = "ops"
            await apply_frame(store, forbidden)
            return job_id
        finally:
            await client.aclose()

    return asyncio.run(fill())


def invoke(settings: Settings, *args: str) -> Any:
    options = ["--redis-url", settings.effective_redis_url]
    return CliRunner().invoke(app, [*args, *options], env={"ORCH_KEY_PREFIX": settings.key_prefix})


def invoke_json(settings: Settings, *args: str) -> Any:
    result = invoke(settings, *args, "--json")
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def test_stats_json(filled: str, settings: Settings) -> None:
    stats = invoke_json(settings, "queue", "stats")
    assert stats["total"] == 2
    assert stats["by_status"]["completed"] == 1
    assert stats["by_status"]["failed"] == 1
    assert stats["by_agent"] == {
        "main": {
            "queued": 0,
            "active": 0,
            "announcing": 0,
            "retrying": 0,
            "completed": 1,
            "failed": 0,
            "cancelled": 0,
        },
        "ops": {
            "queued": 0,
            "active": 0,
            "announcing": 0,
            "retrying": 0,
            "completed": 0,
            "failed": 1,
            "cancelled": 0,
        },
    }
    assert invoke_json(settings, "queue", "stats", "--agent", "ops")["by_status"]["failed"] == 1


def test_stats_table(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "stats")
    assert result.exit_code == 0
    assert "completed" in result.stdout
    assert "Jobs by agent" in result.stdout
    assert "ops" in result.stdout


def test_list_json_has_contract_fields(filled: str, settings: Settings) -> None:
    jobs = invoke_json(settings, "queue", "list")
    assert len(jobs) == 2
    assert all(set(job) >= LIST_FIELDS for job in jobs)
    failed = invoke_json(settings, "queue", "list", "--status", "failed")
    assert [job["agent_id"] for job in failed] == ["ops"]
    assert invoke_json(settings, "queue", "list", "--agent", "main", "--status", "failed") == []
    assert len(invoke_json(settings, "queue", "list", "--limit", "1")) == 1


def test_list_table(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "list")
    assert result.exit_code == 0
    assert filled in result.stdout
    assert "failed" in result.stdout


def test_list_rejects_unknown_status(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "list", "--status", "lost")
    assert result.exit_code == 2
    assert "lost" in result.output


def test_inspect_json_has_history(filled: str, settings: Settings) -> None:
    job = invoke_json(settings, "queue", "inspect", filled)
    assert job["status"] == "completed"
    assert [(entry["from"], entry["to"]) for entry in job["history"]] == [
        (None, "queued"),
        ("queued", "active"),
        ("active", "announcing"),
        ("announcing", "completed"),
    ]
    assert all({"at", "from", "to", "reason"} <= set(entry) for entry in job["history"])
    for identifier in (SPAWN_TOOL_CALL, SPAWN_CHILD_SESSION):
        assert invoke_json(settings, "queue", "inspect", identifier)["id"] == filled


def test_inspect_table(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "inspect", filled)
    assert result.exit_code == 0
    assert "History" in result.stdout
    assert "announcing" in result.stdout
    assert "write a haiku #0" in result.stdout


def test_inspect_unknown_job_is_one_line(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "inspect", "0000000000000000")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: job 0000000000000000 not found: no job, tool call id, child session key or run id matches it"
    )


@pytest.mark.parametrize("command", [["queue", "stats"], ["queue", "list"], ["queue", "inspect", "x"]])
def test_unreachable_redis_is_one_line(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Redis unreachable at 127.0.0.1:1")


def test_global_options_work_before_the_command() -> None:
    result = CliRunner().invoke(app, ["--redis-url", "redis://127.0.0.1:1/0", "queue", "stats"])
    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.output


def test_invalid_config_file_is_one_line(tmp_path: Any) -> None:
    config = tmp_path / "orch.toml"
    config.write_text('max_connections = "many"\n')
    result = CliRunner().invoke(app, ["queue", "stats", "--config", str(config)])
    assert result.exit_code == 1
    assert "max_connections" in result.output
    missing = CliRunner().invoke(app, ["queue", "stats", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output


def test_retry_redrives_failed_job(filled: str, settings: Settings) -> None:
    failed = invoke_json(settings, "queue", "list", "--status", "failed")[0]
    result = invoke(settings, "queue", "retry", failed["id"])
    assert result.exit_code == 0, result.output
    assert f"job {failed['id']} is retrying" in result.stdout
    job = invoke_json(settings, "queue", "inspect", failed["id"])
    assert job["status"] == "retrying"
    assert job["attempts"] == 0
    assert job["history"][-1]["reason"] == "re-driven by an operator"
    assert job["history"][-2]["to"] == "failed"


def test_retry_refuses_completed_job(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "retry", filled)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: job {filled} is completed; only failed jobs can be retried"


def test_retry_force_redrives_stuck_job(settings: Settings) -> None:
    async def store_active_job() -> str:
        client = aioredis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
        store = JobStore(client, Keys(settings.key_prefix), event_ttl_s=60, orphan_ttl_s=60, max_attempts=3)
        try:
            return (await apply_frame(store, frame(sample("spawn success: subagent_spawned")))).job_id or ""
        finally:
            await client.aclose()

    job_id = asyncio.run(store_active_job())
    refused = invoke(settings, "queue", "retry", job_id)
    assert refused.exit_code == 1
    assert "add --force" in refused.output
    forced = invoke(settings, "queue", "retry", job_id, "--force")
    assert forced.exit_code == 0, forced.output
    job = invoke_json(settings, "queue", "inspect", job_id)
    assert job["status"] == "retrying"
    assert job["history"][-1]["reason"] == "re-driven by an operator (forced)"


def test_retry_unknown_job(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "retry", "feedfacefeedface")
    assert result.exit_code == 1
    assert "not found" in result.output


def test_purge_counts_then_deletes(filled: str, settings: Settings) -> None:
    dry = invoke(settings, "queue", "purge", "--status", "completed")
    assert dry.exit_code == 0
    assert dry.stdout.startswith("1 jobs (completed)")
    assert invoke_json(settings, "queue", "stats")["total"] == 2
    # The fixture stores its jobs at Unix time 1 s, about 20,700 days ago.
    recent = invoke(settings, "queue", "purge", "--older-than", "30000d", "--yes")
    assert recent.stdout.startswith("deleted 0 jobs")
    assert invoke_json(settings, "queue", "purge", "--status", "failed") == {
        "matching": 1,
        "statuses": ["failed"],
    }
    done = invoke(settings, "queue", "purge", "--yes")
    assert done.stdout.startswith("deleted 2 jobs")
    assert invoke_json(settings, "queue", "stats")["total"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "soon"], "invalid duration 'soon'"),
        (["--status", "active"], "cannot purge active jobs"),
    ],
)
def test_purge_rejects_bad_options(filled: str, settings: Settings, args: list[str], message: str) -> None:
    result = invoke(settings, "queue", "purge", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_stats_and_list_by_gateway(filled: str, settings: Settings) -> None:
    # The fixture's events come from the plugin's source "gw-test"; with no daemon as owner,
    # that source is the jobs' gateway.
    stats = invoke_json(settings, "queue", "stats")
    assert stats["by_gateway"]["gw-test"]["completed"] == 1
    assert invoke_json(settings, "queue", "stats", "--gateway", "gw-test")["by_status"]["failed"] == 1
    assert len(invoke_json(settings, "queue", "list", "--gateway", "gw-test")) == 2
    assert invoke_json(settings, "queue", "list", "--gateway", "elsewhere") == []
    table = invoke(settings, "queue", "stats")
    assert "Jobs by gateway" in table.stdout


def test_stats_watch_refuses_json(filled: str, settings: Settings) -> None:
    result = invoke(settings, "queue", "stats", "--watch", "--json")
    assert result.exit_code == 1
    assert "--watch and --json cannot be combined" in result.output


def test_stats_watch_refreshes_until_interrupted(filled: str, settings: Settings) -> None:
    env = {"ORCH_REDIS_URL": settings.effective_redis_url, "ORCH_KEY_PREFIX": settings.key_prefix}
    controller, terminal = pty.openpty()  # rich refreshes in place only on a terminal
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "queue", "stats", "--watch", "--interval", "0.2"],
        env=cli_env(env),
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"total") < 2:  # the first view, then at least one refresh
            assert time.monotonic() < deadline, f"no refresh seen: {seen[-400:]!r}"
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                seen += os.read(controller, 65536)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert b"Traceback" not in stderr
