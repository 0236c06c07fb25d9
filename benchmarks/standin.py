"""The tests' gateway stand-in (``tests/gateway_standin.py``), with handlers that record the calls the phases count.

It speaks the real protocol on loopback: the ``connect.challenge`` event, ``connect`` with the
token, then request and response frames. It runs in the benchmark process, so its CPU time is
part of the ``client`` column.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from types import TracebackType
from typing import Any, Self

from tests.gateway_standin import GatewayStandin, Payload, Reply


class RecordingStandin:
    """A gateway stand-in that starts every ``sessions.send`` run and reports every run as still running.

    ``sessions.send`` responds ``{runId: idempotencyKey, status: "started"}``, as OpenClaw
    2026.9.6 does, and the receipt time of each key is kept. ``agent.wait`` responds
    ``{status: "timeout"}``, what 2026.9.6 responds for a run that is still going.
    """

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.gateway = GatewayStandin(self.token)
        self.gateway.on("sessions.send", self._sessions_send)
        self.gateway.on("agent.wait", self._agent_wait)
        self.send_received_at_s: dict[str, float] = {}  # idempotency key -> Unix time of receipt
        self.send_repeats: Counter[str] = Counter()  # keys received more than once, and how often again
        self.agent_waits = 0

    @property
    def url(self) -> str:
        return self.gateway.url

    def settings(self) -> dict[str, str]:
        """Return the daemon settings that point it at this stand-in."""
        return {"ORCH_GATEWAY_URL": self.url, "ORCH_GATEWAY_TOKEN": self.token}

    def _sessions_send(self, params: dict[str, Any]) -> Reply:
        key = str(params.get("idempotencyKey", ""))
        if key in self.send_received_at_s:
            self.send_repeats[key] += 1
        else:
            self.send_received_at_s[key] = time.time()
        return Payload({"runId": key, "status": "started"})

    def _agent_wait(self, params: dict[str, Any]) -> Reply:
        self.agent_waits += 1
        return Payload({"runId": params.get("runId"), "status": "timeout"})

    async def __aenter__(self) -> Self:
        await self.gateway.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.gateway.stop()
