"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from orchestrator.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so that the type checker does not pin it between steps."""
    return breaker.state


def make_breaker(clock: FakeClock, changes: list[BreakerState]) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout_s=30, clock=clock, on_change=changes.append)


def test_opens_after_consecutive_failures() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = make_breaker(clock, changes)
    for _ in range(2):
        breaker.record_failure(ConnectionError("refused"))
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure(ConnectionError("refused"))
    assert state(breaker) is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    assert breaker.allow() is False


def test_success_resets_the_count() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = make_breaker(clock, changes)
    breaker.record_failure(ConnectionError("x"))
    breaker.record_failure(ConnectionError("x"))
    breaker.record_success()
    breaker.record_failure(ConnectionError("x"))
    breaker.record_failure(ConnectionError("x"))
    assert state(breaker) is BreakerState.CLOSED
    assert changes == []


def test_half_open_lets_one_trial_through() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = make_breaker(clock, changes)
    for _ in range(3):
        breaker.record_failure(ConnectionError("x"))
    clock.now_s += 29.9
    assert breaker.allow() is False
    clock.now_s += 0.2
    assert breaker.allow() is True
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow() is False  # the trial is still running
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow() is True
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_trial_opens_again_for_a_full_timeout() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = make_breaker(clock, changes)
    for _ in range(3):
        breaker.record_failure(ConnectionError("x"))
    clock.now_s += 30
    assert breaker.allow() is True
    breaker.record_failure(ConnectionError("still down"))
    assert state(breaker) is BreakerState.OPEN
    clock.now_s += 29
    assert breaker.allow() is False
    clock.now_s += 1
    assert breaker.allow() is True
    assert breaker.changes == 4
