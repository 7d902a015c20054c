"""The one backoff: doubling, capped, jittered into the upper half of each step."""

from __future__ import annotations

import pytest

from saltmarsh.contract.errors import ConfigError
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy, backoff_delay

POLICY = BackoffPolicy(base_s=0.1, cap_s=1.0)


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.05),
        (1, 0.999999, 0.1),
        (2, 0.0, 0.1),
        (3, 0.5, 0.3),
        (4, 0.0, 0.4),
        (5, 0.0, 0.5),  # 1.6 capped to 1.0
        (50, 0.999999, 1.0),
        (0, 0.0, 0.05),  # attempt below 1 counts as the first
    ],
)
def test_delay_doubles_caps_and_jitters(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, POLICY, rand) == pytest.approx(expected, abs=1e-6)


def test_without_jitter_the_step_is_the_wait() -> None:
    policy = BackoffPolicy(base_s=0.5, cap_s=30.0, jitter=False)
    assert [backoff_delay(n, policy, 0.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_state_advances_and_resets() -> None:
    backoff = Backoff(BackoffPolicy(base_s=1.0, cap_s=4.0, jitter=False))
    assert [backoff.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize(
    ("base", "cap", "key"),
    [(0.0, 1.0, "backoff.base_s"), (-1.0, 1.0, "backoff.base_s"), (2.0, 1.0, "backoff.cap_s")],
)
def test_a_bad_policy_names_its_key(base: float, cap: float, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        BackoffPolicy(base_s=base, cap_s=cap)
    assert err.value.key == key
