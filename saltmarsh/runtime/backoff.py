"""The one backoff: capped exponential with equal jitter, for every retry in every hop.

Reconnecting a link, retrying a sink write, a Kinesis call, an Elasticsearch bulk chunk or the
master's event bus all wait the same way: the step doubles from `base_s` up to `cap_s`, and the
wait is a random point in the upper half of the step. Half the step at least, so retries do
spread out; jittered, so ingesters or gateways that failed together do not retry together.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from saltmarsh.contract.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    base_s: float
    cap_s: float
    jitter: bool = True

    def __post_init__(self) -> None:
        if not self.base_s > 0:
            raise ConfigError("backoff.base_s", f"{self.base_s} must be above 0")
        if self.cap_s < self.base_s:
            raise ConfigError("backoff.cap_s", f"{self.cap_s} is below base_s {self.base_s}")


def backoff_delay(attempt: int, policy: BackoffPolicy, rand: float) -> float:
    """The wait before retry number `attempt` (1 for the first), given `rand` in [0, 1)."""
    step = min(policy.cap_s, policy.base_s * 2.0 ** min(max(attempt, 1) - 1, 30))
    if not policy.jitter:
        return step
    return step / 2 + rand * step / 2


class Backoff:
    """A retry loop's state: `next_delay()` after each failure, `reset()` after a success."""

    def __init__(self, policy: BackoffPolicy, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rand = rand
        self.attempts = 0

    def next_delay(self) -> float:
        self.attempts += 1
        return backoff_delay(self.attempts, self.policy, self._rand())

    def reset(self) -> None:
        self.attempts = 0
