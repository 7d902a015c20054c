"""The drain limiter, driven by a hand-held clock."""

from __future__ import annotations

import pytest

from gateway.token_bucket import TokenBucket

# (rate, burst, [(now, take)], expected grants)
CASES = [
    pytest.param(10.0, 5, [(0.0, 5)], [5], id="starts-full"),
    pytest.param(10.0, 5, [(0.0, 8)], [5], id="never-more-than-burst"),
    pytest.param(10.0, 5, [(0.0, 5), (0.0, 1)], [5, 0], id="empty-until-refilled"),
    pytest.param(10.0, 5, [(0.0, 5), (0.1, 5)], [5, 1], id="refills-at-rate"),
    pytest.param(10.0, 5, [(0.0, 5), (0.35, 5)], [5, 3], id="whole-tokens-only"),
    pytest.param(10.0, 5, [(0.0, 5), (0.35, 3), (0.38, 1)], [5, 3, 0], id="fractions-carry-over"),
    pytest.param(10.0, 5, [(0.0, 5), (0.35, 3), (0.45, 1)], [5, 3, 1], id="fractions-add-up"),
    pytest.param(10.0, 5, [(0.0, 5), (100.0, 50)], [5, 5], id="idle-time-caps-at-burst"),
    pytest.param(1000.0, 100, [(0.0, 100), (0.05, 100)], [100, 50], id="fast-rate"),
    pytest.param(0.5, 1, [(0.0, 1), (1.0, 1), (2.0, 1)], [1, 0, 1], id="slower-than-one-a-second"),
    pytest.param(10.0, 5, [(1.0, 5), (0.5, 5)], [5, 0], id="clock-going-back-mints-nothing"),
    pytest.param(10.0, 5, [(0.0, 0), (0.0, -1)], [0, 0], id="zero-or-negative-takes-nothing"),
]


@pytest.mark.parametrize(("rate", "burst", "takes", "granted"), CASES)
def test_take(rate: float, burst: int, takes: list[tuple[float, int]], granted: list[int]) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    assert [bucket.take(count, now) for now, count in takes] == granted


@pytest.mark.parametrize(
    ("spent", "now", "want", "wait"),
    [
        (0, 0.0, 1, 0.0),
        (5, 0.0, 1, 0.1),
        (5, 0.0, 5, 0.5),
        (5, 0.05, 1, 0.05),
        (5, 0.0, 50, 0.5),  # asking past the burst waits only for a full bucket
        (5, 1.0, 1, 0.0),
    ],
)
def test_seconds_until(spent: int, now: float, want: int, wait: float) -> None:
    bucket = TokenBucket(10.0, 5, now=0.0)
    bucket.take(spent, 0.0)
    assert bucket.seconds_until(want, now) == pytest.approx(wait)


def test_available_does_not_spend() -> None:
    bucket = TokenBucket(10.0, 5, now=0.0)
    assert bucket.available(0.0) == 5
    assert bucket.available(0.0) == 5
    assert bucket.take(2, 0.0) == 2
    assert bucket.available(0.0) == 3


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_rejects_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst, now=0.0)
