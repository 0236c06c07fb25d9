"""The Redis circuit breaker: one place that decides whether to try Redis at all.

closed -> open after ``failure_threshold`` consecutive failures; open -> half-open once
``reset_timeout_s`` has passed, which lets exactly one trial operation through; the trial's success
closes the breaker and its failure opens it again for another ``reset_timeout_s``. While the
breaker is open the tracker spools events to disk instead of waiting on Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from loguru import logger


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive Redis failures and gates further attempts."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._failure_threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at_s = 0.0
        self._trial_running = False
        self.changes = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def is_closed(self) -> bool:
        return self._state is BreakerState.CLOSED

    def allow(self) -> bool:
        """Return whether to try Redis now; in half-open, only one caller gets True until it reports."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at_s < self._reset_timeout_s:
                return False
            self._change(BreakerState.HALF_OPEN, f"{self._reset_timeout_s:g}s passed; trying Redis once")
        if self._trial_running:
            return False
        self._trial_running = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._trial_running = False
        if self._state is not BreakerState.CLOSED:
            self._change(BreakerState.CLOSED, "a Redis operation succeeded")

    def record_failure(self, error: BaseException) -> None:
        self._failures += 1
        self._trial_running = False
        if self._state is BreakerState.HALF_OPEN:
            self._open(f"the trial operation failed: {error}")
        elif self._state is BreakerState.CLOSED and self._failures >= self._failure_threshold:
            self._open(f"{self._failures} consecutive Redis operations failed, the last with: {error}")

    def _open(self, cause: str) -> None:
        self._opened_at_s = self._clock()
        self._change(BreakerState.OPEN, cause)

    def _change(self, new: BreakerState, cause: str) -> None:
        old, self._state = self._state, new
        self.changes += 1
        logger.warning("Redis circuit breaker {} -> {}: {}", old.value, new.value, cause)
        if new is BreakerState.OPEN:
            logger.warning(
                "tracking is degraded: events go to the local spool and are acked with tracked:false"
            )
        if self._on_change is not None:
            self._on_change(new)
