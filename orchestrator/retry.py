"""Retry policy: attempts and exponential backoff with full jitter, per agent.

After attempt ``n`` fails, the next dispatch waits a uniformly random time between zero and
``min(cap, base * 2 ** (n - 1))`` ("full jitter"), which spreads the retries of many jobs that
failed together. The random fraction is derived from the job id and dispatch number, so computing
the delay twice for the same dispatch (after a crash) gives the same delay.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from orchestrator.settings import Settings

# 2 ** 62 keeps the exponent away from float overflow; the cap applies long before.
MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and backoff bounds for the jobs of one agent."""

    max_attempts: int
    base_s: float
    cap_s: float

    def ceiling_s(self, failed_attempts: int) -> float:
        """Return the longest wait after ``failed_attempts`` failures (1 or more)."""
        exponent = min(max(failed_attempts, 1) - 1, MAX_EXPONENT)
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def delay_s(self, failed_attempts: int, fraction: float) -> float:
        """Return the wait before the next dispatch; ``fraction`` is uniform in [0, 1)."""
        if failed_attempts <= 0:
            return 0.0  # an operator's re-drive runs at once
        return self.ceiling_s(failed_attempts) * fraction


def jitter_fraction(job_id: str, dispatch_number: int) -> float:
    """Return a fraction in [0, 1) that is fixed for one dispatch of one job."""
    digest = hashlib.blake2b(f"{job_id}:{dispatch_number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class RetryPolicies:
    """The global policy with the per-agent overrides of ``Settings.agent_policies``."""

    def __init__(self, settings: Settings) -> None:
        self._default = RetryPolicy(
            max_attempts=settings.max_attempts, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s
        )
        self._by_agent = {
            agent: RetryPolicy(
                max_attempts=override.max_attempts or self._default.max_attempts,
                base_s=override.retry_base_s or self._default.base_s,
                cap_s=override.retry_cap_s or self._default.cap_s,
            )
            for agent, override in settings.agent_policies.items()
        }

    def for_agent(self, agent_id: str | None) -> RetryPolicy:
        if agent_id is None:
            return self._default
        return self._by_agent.get(agent_id, self._default)
