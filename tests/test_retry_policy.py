"""Backoff bounds as properties: full jitter stays within [0, min(cap, base * 2^(n-1)))."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.retry import RetryPolicies, RetryPolicy, jitter_fraction
from orchestrator.settings import AgentPolicy, Settings

bases = st.floats(min_value=0.001, max_value=3600, allow_nan=False)
attempts = st.integers(min_value=1, max_value=500)
fractions = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(base=bases, extra=st.floats(min_value=0, max_value=86_400), attempt=attempts, fraction=fractions)
def test_delay_within_full_jitter_bounds(base: float, extra: float, attempt: int, fraction: float) -> None:
    policy = RetryPolicy(max_attempts=3, base_s=base, cap_s=base + extra)
    delay = policy.delay_s(attempt, fraction)
    ceiling = min(policy.cap_s, base * 2.0 ** (attempt - 1))
    assert 0 <= delay <= ceiling
    assert delay <= policy.cap_s


@given(base=bases, attempt=st.integers(min_value=1, max_value=60))
def test_ceiling_doubles_until_cap(base: float, attempt: int) -> None:
    policy = RetryPolicy(max_attempts=3, base_s=base, cap_s=base * 1000)
    assert policy.ceiling_s(attempt + 1) == min(policy.cap_s, policy.ceiling_s(attempt) * 2)


@given(job_id=st.text(min_size=1, max_size=40), number=st.integers(min_value=1, max_value=10**6))
def test_jitter_fraction_is_stable_and_in_range(job_id: str, number: int) -> None:
    fraction = jitter_fraction(job_id, number)
    assert 0 <= fraction < 1
    assert jitter_fraction(job_id, number) == fraction


def test_redrive_runs_at_once() -> None:
    assert RetryPolicy(max_attempts=3, base_s=5, cap_s=300).delay_s(0, 0.99) == 0


def test_default_policy_matches_settings() -> None:
    policy = RetryPolicies(Settings()).for_agent("anyone")
    assert policy == RetryPolicy(max_attempts=3, base_s=5.0, cap_s=300.0)


def test_agent_override_falls_back_per_field() -> None:
    settings = Settings(agent_policies={"research": AgentPolicy(max_attempts=6, retry_cap_s=60)})
    policies = RetryPolicies(settings)
    assert policies.for_agent("research") == RetryPolicy(max_attempts=6, base_s=5.0, cap_s=60.0)
    assert policies.for_agent("main").max_attempts == 3
    assert policies.for_agent(None).max_attempts == 3
