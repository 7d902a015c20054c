"""What a series usually does at this hour of the week: a robust, causal, bounded baseline.

Each local hour that ends is boiled down to two numbers, the median of its values and their
spread about it (1.4826 x MAD, a robust standard deviation), and pushed into three sets of rings:

- `weeks`: per hour-of-week bucket (Mon 00:00 .. Sun 23:00), the last `WEEKS_KEPT` weeks;
- `days`: per hour of day, the last `DAYS_KEPT` days: the fallback while a bucket has seen
  fewer than `MIN_HISTORY` weeks;
- `recent`: the last `RECENT_HOURS` hours, whatever their bucket: the fallback on day one.

The expected value is the median of the ring, so one odd week (a holiday, a fault that was
learned) does not move it; the scale is the spread across weeks and the spread within the hour
together. A fallback does not know the weekly pattern, so its band spans the whole range its ring
has seen: early on, a Saturday that is colder than the weekdays is not an alarm.

Only the past is used: an hour is learned when it ends, and the value being scored is never part
of its own baseline. Nothing here looks at the wall clock or at how old the history is, so a gap
(an outage, a backlog drained later) leaves the buckets as they were.

Memory per series is fixed: 168 x 8 weekly medians, 24 x 7 daily ones, 24 recent ones, a spread
per slot (float32), and at most `HOUR_VALUES_KEPT` values of the hour in progress: about 7.4 kB
raw (see `tests/test_analytics_baseline.py`).
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saltmarsh.analytics import state_codec
from saltmarsh.analytics.week_clock import HOURS_PER_DAY, HOURS_PER_WEEK, LocalHour

WEEKS_KEPT = 8
DAYS_KEPT = 7
RECENT_HOURS = 24
MIN_HISTORY = 3  # hours in a ring before it is trusted: a median of fewer is one reading's word
HOUR_VALUES_KEPT = 64  # one minute rollups fit whole; finer steps are thinned evenly
SPREAD_WEIGHT = 0.25  # how fast a slot's within-hour spread follows new hours (EWMA weight)
MAD_TO_SIGMA = 1.4826  # MAD x this is the standard deviation, for normal noise
SOURCES = ("week", "day", "recent")


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the baseline expects now: `expected`, and `scale`, one robust standard deviation of a
    reading about it; `source` says which ring answered (week, day or recent). `settled` once the
    ring has seen every day of the week at this hour: a small steady offset means something."""

    expected: float
    scale: float
    source: str
    settled: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.expected):
            raise ValueError(f"expected {self.expected!r} is not finite")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale {self.scale!r} must be finite and above 0")
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")


def robust_spread(values: Sequence[float], centre: float) -> float:
    """1.4826 x the median absolute deviation of `values` about `centre`."""
    return MAD_TO_SIGMA * statistics.median(abs(v - centre) for v in values)


class BucketRings:
    """`slots` rings of the last `depth` hourly medians each (NaN = empty), and per slot the
    smoothed within-hour spread. Flat float32 arrays: a series costs the same at any age."""

    def __init__(self, slots: int, depth: int) -> None:
        self.slots = slots
        self.depth = depth
        self.medians = array("f", [math.nan]) * (slots * depth)
        self.cursors = array("B", [0]) * slots
        self.spreads = array("f", [math.nan]) * slots

    def push(self, slot: int, median: float, spread: float | None) -> None:
        cursor = self.cursors[slot]
        self.medians[slot * self.depth + cursor] = median
        self.cursors[slot] = (cursor + 1) % self.depth
        if spread is not None:
            old = self.spreads[slot]
            self.spreads[slot] = spread if math.isnan(old) else old + SPREAD_WEIGHT * (spread - old)

    def history(self, slot: int) -> list[float]:
        start = slot * self.depth
        return [v for v in self.medians[start : start + self.depth] if not math.isnan(v)]

    def spread(self, slot: int) -> float:
        """The slot's within-hour spread; 0 before any hour had enough values to measure one."""
        found = self.spreads[slot]
        return 0.0 if math.isnan(found) else float(found)

    @property
    def nbytes(self) -> int:
        arrays = (self.medians, self.cursors, self.spreads)
        return sum(a.itemsize * len(a) for a in arrays)

    def to_dict(self) -> dict[str, Any]:
        return {
            "medians": state_codec.pack(self.medians),
            "cursors": state_codec.pack(self.cursors),
            "spreads": state_codec.pack(self.spreads),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], slots: int, depth: int) -> BucketRings:
        rings = cls(slots, depth)
        rings.medians = state_codec.unpack(state, "medians", "f", slots * depth)
        rings.cursors = state_codec.unpack(state, "cursors", "B", slots)
        rings.spreads = state_codec.unpack(state, "spreads", "f", slots)
        if any(c >= depth for c in rings.cursors):
            raise ValueError(f"state key 'cursors': a cursor is not below the depth {depth}")
        return rings


class HourInProgress:
    """The values of the local hour being filled, at most `HOUR_VALUES_KEPT` of them: past that,
    every other one is dropped and then only every other one kept, so the sample stays even."""

    def __init__(self) -> None:
        self.hour_key: int | None = None
        self.week_slot = 0
        self.hour = 0
        self.values = array("f")
        self.seen = 0
        self.stride = 1

    def start(self, hour: LocalHour) -> None:
        self.hour_key = hour.hour_key
        self.week_slot = hour.week_slot
        self.hour = hour.hour
        self.values = array("f")
        self.seen = 0
        self.stride = 1

    def add(self, value: float) -> None:
        if self.seen % self.stride == 0:
            if len(self.values) == HOUR_VALUES_KEPT:
                self.values = self.values[::2]
                self.stride *= 2
            if self.seen % self.stride == 0:
                self.values.append(value)
        self.seen += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "hour_key": self.hour_key,
            "week_slot": self.week_slot,
            "hour": self.hour,
            "values": state_codec.pack(self.values),
            "seen": self.seen,
            "stride": self.stride,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> HourInProgress:
        hour = cls()
        hour.hour_key = None if state.get("hour_key") is None else state_codec.integer(state, "hour_key")
        hour.week_slot = state_codec.integer(state, "week_slot")
        hour.hour = state_codec.integer(state, "hour")
        hour.values = state_codec.unpack(state, "values", "f")
        hour.seen = state_codec.integer(state, "seen")
        hour.stride = state_codec.integer(state, "stride")
        if len(hour.values) > HOUR_VALUES_KEPT or hour.stride < 1:
            raise ValueError("state key 'values': more than the hour keeps, or a stride below 1")
        return hour


class TimeOfWeekBaseline:
    """The baseline of one (device, metric): `advance` to each step's hour, `expect`, then `learn`."""

    def __init__(self) -> None:
        self.weeks = BucketRings(HOURS_PER_WEEK, WEEKS_KEPT)
        self.days = BucketRings(HOURS_PER_DAY, DAYS_KEPT)
        self.recent = BucketRings(1, RECENT_HOURS)
        self.in_progress = HourInProgress()
        # The rings change only when an hour closes: until then an expectation is looked up, not
        # recomputed at every step (derived, so never persisted).
        self._expected: dict[tuple[int, int, float], Expectation | None] = {}

    def advance(self, hour: LocalHour) -> None:
        """Close the hour in progress if `hour` is another one: it joins the rings."""
        if self.in_progress.hour_key == hour.hour_key:
            return
        self._close()
        self.in_progress.start(hour)

    def learn(self, value: float) -> None:
        self.in_progress.add(value)

    def _close(self) -> None:
        values = self.in_progress.values
        if not values:
            return
        self._expected.clear()
        median = statistics.median(values)
        # Two values say little about spread: such an hour updates only the median rings.
        spread = robust_spread(values, median) if len(values) >= MIN_HISTORY else None
        self.weeks.push(self.in_progress.week_slot, median, spread)
        self.days.push(self.in_progress.hour, median, spread)
        self.recent.push(0, median, spread)

    def expect(self, hour: LocalHour, floor: float) -> Expectation | None:
        """The expectation for a reading in `hour`, its scale at least `floor`; None while even the
        recent ring holds fewer than `MIN_HISTORY` hours."""
        key = (hour.week_slot, hour.hour, floor)
        if key not in self._expected:
            self._expected[key] = self._compute(hour, floor)
        return self._expected[key]

    def _compute(self, hour: LocalHour, floor: float) -> Expectation | None:
        recent = self.recent.history(0)
        history = self.weeks.history(hour.week_slot)
        if len(history) >= MIN_HISTORY:
            return _expectation("week", history, self.weeks.spread(hour.week_slot), floor, settled=True)
        history = self.days.history(hour.hour)
        if len(history) >= MIN_HISTORY:
            # Until the hour has been seen on every day of the week, a day it has not been seen on
            # (the first Saturday) may differ by as much as the day's own swing: half of it widens
            # the band.
            settled = len(history) == DAYS_KEPT
            unseen = 0.0 if settled else _half_range(recent) / 2
            return _expectation("day", history, self.days.spread(hour.hour), max(floor, unseen), settled)
        if len(recent) >= MIN_HISTORY:
            return _expectation("recent", recent, self.recent.spread(0), floor, settled=False)
        return None

    @property
    def nbytes(self) -> int:
        """Bytes of state held, the hour in progress at its fullest."""
        return self.weeks.nbytes + self.days.nbytes + self.recent.nbytes + HOUR_VALUES_KEPT * 4

    def to_dict(self) -> dict[str, Any]:
        return {
            "weeks": self.weeks.to_dict(),
            "days": self.days.to_dict(),
            "recent": self.recent.to_dict(),
            "in_progress": self.in_progress.to_dict(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TimeOfWeekBaseline:
        baseline = cls()
        baseline.weeks = BucketRings.from_dict(state_codec.table(state, "weeks"), HOURS_PER_WEEK, WEEKS_KEPT)
        baseline.days = BucketRings.from_dict(state_codec.table(state, "days"), HOURS_PER_DAY, DAYS_KEPT)
        baseline.recent = BucketRings.from_dict(state_codec.table(state, "recent"), 1, RECENT_HOURS)
        baseline.in_progress = HourInProgress.from_dict(state_codec.table(state, "in_progress"))
        return baseline


def _half_range(history: list[float]) -> float:
    return (max(history) - min(history)) / 2 if history else 0.0


def _expectation(source: str, history: list[float], within: float, floor: float, settled: bool) -> Expectation:
    expected = statistics.median(history)
    between = robust_spread(history, expected)
    if source != "week":
        # A fallback mixes weekdays with weekends: its band covers what the ring has seen.
        between = max(between, _half_range(history))
    scale = max(math.hypot(between, within), floor)
    return Expectation(expected, scale, source, settled)
