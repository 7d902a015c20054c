"""The drain rate limit: a token bucket that the sender spends one token per backlog message from.

Pure: every method takes `now` (seconds, monotonic) so that tests can drive time by hand.
"""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens a second, up to `burst` banked; starts full so a drain starts at once."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        # A clock that steps backwards (it should not, being monotonic) must not mint tokens.
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._stamp = max(self._stamp, now)

    def available(self, now: float) -> int:
        """Whole tokens that may be spent now."""
        self._refill(now)
        return int(self._tokens)

    def take(self, count: int, now: float) -> int:
        """Spend up to `count` tokens; returns how many were granted."""
        self._refill(now)
        granted = max(0, min(count, int(self._tokens)))
        if granted > 0:
            self._tokens -= granted
        return granted

    def seconds_until(self, count: int, now: float) -> float:
        """How long until `count` tokens (at most `burst`) are banked; 0 when they already are."""
        self._refill(now)
        missing = min(count, self.burst) - self._tokens
        return max(0.0, missing / self.rate)
