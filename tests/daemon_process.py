"""Run ``orchestrator serve`` and the CLI as real subprocesses, as an operator would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORCH_")}
    # Tests run many daemons at once: no HTTP listener unless a test requests one.
    env["ORCH_HTTP_PORT"] = "0"
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_json(args: list[str], env: dict[str, str]) -> object:
    result = run_cli([*args, "--json"], env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


class DaemonProcess:
    """``python -m orchestrator serve`` with its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return Path(self.env["ORCH_SOCKET_PATH"])

    def start(self, *, wait: bool = True) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "serve"],
                env=cli_env(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop(signal.SIGKILL)  # never leave a daemon behind a failed start
                raise

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            if self.answers_ping():
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready within {START_TIMEOUT_S}s:\n{self.log()}")

    def answers_ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                client.connect(str(self.socket_path))
                client.sendall(b'{"v":1,"id":"ready-probe","type":"ping","ts":0}\n')
                reply = client.makefile("rb").readline()
        except OSError:
            return False
        return bool(reply) and orjson.loads(reply)["ok"] is True

    def wait_exit(self) -> int:
        assert self.process is not None
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        return self.wait_exit()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
