"""What every driver returns and the small interface the agent reads through."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Wait = Callable[[float], bool]
"""Sleep for a while; True means the agent is stopping, as `threading.Event.wait` answers."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading from one driver: metric name to value, and the unit of each metric."""

    metrics: Mapping[str, float]
    units: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReadCounters:
    """Shown in the agent's status so that a flaky DHT wire is visible before it fails outright."""

    failures: int = 0  # reads that gave nothing even after every retry
    retries: int = 0  # extra attempts after an intermittent error


class Driver(ABC):
    """A source of samples. `read` is called once per tick; None means nothing this tick."""

    def __init__(self) -> None:
        self.counters = ReadCounters()

    @abstractmethod
    def read(self, now_s: float) -> Sample | None: ...

    def next_delay_s(self, interval_s: float) -> float:
        """Seconds until the next read; replay by timestamps overrides the agent's interval."""
        return interval_s

    @property
    def exhausted(self) -> bool:
        """True once a finite source (a replay file) has nothing more to give."""
        return False

    def close(self) -> None:  # noqa: B027 - optional: most drivers hold no hardware
        """Release hardware, if the driver holds any."""


def plain_sleep(seconds: float) -> bool:
    """A `Wait` that nothing interrupts, for callers without a stop event."""
    time.sleep(seconds)
    return False
