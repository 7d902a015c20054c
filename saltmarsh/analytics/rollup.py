"""Per-minute rollups, computed from what the store holds: pure aggregation and the minute's state.

A rollup is a function of the raw readings the sink stored for one (scope, minute, metric), never
of the stream that passed one ingester: several ingesters share the subscription, a device's
readings do not all pass one process, and only the store has refused the duplicates. So a rollup
is recomputed from the stored rows of its minute whenever a reading lands in that minute, late or
not, and it always equals what those rows say.

Scopes: a device (`device`), and a place (`site` + the location's place) for every device there.
Per metric: count, min, max, sum, mean and last (the value of the newest reading by time, then by
`(boot, seq)`, so that two readings at one millisecond give one answer).

A minute is `provisional` until `grace_ms` has passed since its end, then `final`. A reading that
lands in a final minute reopens it: it is recomputed, stays final, and its `reopened` count goes
up, so a late backlog is visible rather than silently absorbed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

MINUTE_MS = 60_000
DEFAULT_GRACE_MS = 6 * 3600 * 1000  # longer than a gateway's expected drain after a day-long cut


class Scope(StrEnum):
    DEVICE = "device"
    PLACE = "place"


class MinuteState(StrEnum):
    PROVISIONAL = "provisional"
    FINAL = "final"


def minute_of(ts_ms: int) -> int:
    """The start (epoch ms) of the minute `ts_ms` falls in."""
    return ts_ms - ts_ms % MINUTE_MS


def place_key(site: str, place: str | None) -> str | None:
    """A place's scope key, `site/place`; None for a device with no place."""
    return None if place is None else f"{site}/{place}"


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One reading as the store holds it: what a rollup is computed from."""

    device: str
    boot: str
    seq: int
    site: str
    place: str | None
    ts_ms: int
    metrics: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq {self.seq} must be at least 1")
        for name, value in self.metrics.items():
            if not math.isfinite(value):
                raise ValueError(f"metrics.{name}: {value} is not finite")


@dataclass(frozen=True, slots=True)
class RollupKey:
    scope: Scope
    key: str  # the device id, or `site/place`
    minute_ms: int
    metric: str


@dataclass(frozen=True, slots=True)
class Rollup:
    key: RollupKey
    count: int
    min: float
    max: float
    sum: float
    last: float
    last_ts_ms: int

    @property
    def mean(self) -> float:
        return self.sum / self.count

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a rollup of {self.count} readings")
        if not self.min <= self.last <= self.max:
            raise ValueError(f"last {self.last} outside [{self.min}, {self.max}]")


def scope_keys(reading: StoredReading) -> list[tuple[Scope, str]]:
    """The scopes a reading counts in: its device, and its place if it has one."""
    keys = [(Scope.DEVICE, reading.device)]
    place = place_key(reading.site, reading.place)
    if place is not None:
        keys.append((Scope.PLACE, place))
    return keys


def compute(readings: Iterable[StoredReading]) -> dict[RollupKey, Rollup]:
    """Every rollup the readings make, per scope, minute and metric. Each reading must be stored
    once (the store's primary key sees to that). The order they come in changes nothing: the sum
    is `math.fsum`, correctly rounded, so a recomputation in any order gives the same bits."""
    values: dict[RollupKey, list[float]] = {}
    last: dict[RollupKey, tuple[tuple[int, str, int], float]] = {}
    for r in readings:
        minute = minute_of(r.ts_ms)
        order = (r.ts_ms, r.boot, r.seq)
        for scope, key in scope_keys(r):
            for metric, value in r.metrics.items():
                k = RollupKey(scope, key, minute, metric)
                values.setdefault(k, []).append(value)
                seen = last.get(k)
                if seen is None or order > seen[0]:
                    last[k] = (order, value)
    return {
        k: Rollup(k, len(vs), min(vs), max(vs), math.fsum(vs), last[k][1], last[k][0][0]) for k, vs in values.items()
    }


def state_at(minute_ms: int, now_ms: int, grace_ms: int = DEFAULT_GRACE_MS) -> MinuteState:
    """A minute is final once `grace_ms` has passed since it ended."""
    return MinuteState.FINAL if now_ms >= minute_ms + MINUTE_MS + grace_ms else MinuteState.PROVISIONAL


@dataclass(frozen=True, slots=True)
class MinuteMark:
    """What the store keeps per (scope, key, minute) beside its rollups."""

    state: MinuteState
    reopened: int = 0

    def after_landing(self, minute_ms: int, now_ms: int, grace_ms: int = DEFAULT_GRACE_MS) -> MinuteMark:
        """The mark once a new reading has landed in this minute at `now_ms`: one that lands after
        the grace (marked final yet or not) reopens the minute, and is counted."""
        if self.state is MinuteState.FINAL or state_at(minute_ms, now_ms, grace_ms) is MinuteState.FINAL:
            return MinuteMark(MinuteState.FINAL, self.reopened + 1)
        return self
