"""The simulated driver's faults, as small watches: stuck, drift, dropout, and the noise level.

A spike needs no watch of its own: it is a reading far outside its time-of-week band, which the
detector's level score already is (`detector` labels a level alarm a spike while it is young).

Each watch is a frozen value with a pure `advance` that returns the next one, so a watch is
tested alone, step by step, and its state is a handful of numbers (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from saltmarsh.analytics import state_codec

STUCK_DAYS_KEPT = 7
STUCK_MARGIN = 2  # a stuck run must be this many times longer than the longest normal one lately
NOISE_CLIP = 6.0  # a step change beyond this many mean steps is a fault, not noise: clipped
# For normal noise, E|x[t] - x[t-1]| = 2 sigma / sqrt(pi): sigma is this times the mean step.
MEAN_STEP_TO_SIGMA = math.sqrt(math.pi) / 2


def squash(ratio: float) -> float:
    """0 at 0, 0.5 at 1, towards 1 beyond: smooth, and the same curve for every watch."""
    square = ratio * ratio
    return square / (1.0 + square)


def same_reading(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@dataclass(frozen=True, slots=True)
class StuckWatch:
    """Repeats of one value, against the longest run of repeats the series showed on each of its
    last days (runs that were themselves alarms excluded, so a fault does not teach tolerance).

    `repeats` counts steps since the value last changed. Unarmed until a first day has ended: on a
    new device, "longer than usual" has no meaning yet.
    """

    last_value: float | None = None
    repeats: int = 0
    day_key: int | None = None
    day_longest: int = 0
    normal_longest: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.repeats < 0 or self.day_longest < 0 or any(n < 0 for n in self.normal_longest):
            raise ValueError("stuck watch: run lengths must not be negative")
        if len(self.normal_longest) > STUCK_DAYS_KEPT:
            raise ValueError(f"stuck watch: normal_longest keeps at most {STUCK_DAYS_KEPT} days")

    def limit(self, min_repeats: int) -> int | None:
        """Repeats that make an alarm (score 0.5), or None while unarmed."""
        if not self.normal_longest:
            return None
        return max(min_repeats, STUCK_MARGIN * max(self.normal_longest))

    def score(self, min_repeats: int) -> float:
        limit = self.limit(min_repeats)
        return 0.0 if limit is None else squash(self.repeats / limit)

    def advance(self, value: float, day_key: int, min_repeats: int) -> StuckWatch:
        normal_longest, day_longest = self.normal_longest, self.day_longest
        if self.day_key is not None and day_key != self.day_key:
            normal_longest = (*normal_longest, day_longest)[-STUCK_DAYS_KEPT:]
            day_longest = 0
        if self.last_value is not None and same_reading(value, self.last_value):
            return StuckWatch(value, self.repeats + 1, day_key, day_longest, normal_longest)
        limit = self.limit(min_repeats)
        if limit is None or self.repeats < limit:
            day_longest = max(day_longest, self.repeats)
        return StuckWatch(value, 0, day_key, day_longest, normal_longest)

    def to_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["normal_longest"] = list(self.normal_longest)
        return found

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> StuckWatch:
        longest = state.get("normal_longest")
        if not isinstance(longest, list) or not all(isinstance(n, int) for n in longest):
            raise ValueError(f"state key 'normal_longest': expected a list of integers, got {longest!r}")
        day_key = None if state.get("day_key") is None else state_codec.integer(state, "day_key")
        return cls(
            state_codec.optional_number(state, "last_value"),
            state_codec.integer(state, "repeats"),
            day_key,
            state_codec.integer(state, "day_longest"),
            tuple(longest),
        )


@dataclass(frozen=True, slots=True)
class DriftWatch:
    """A slow EWMA of the signed, clipped residual z: a reading a little off its band for hours.

    Clipping keeps a spike from posing as drift; the sign keeps noise from adding up.
    """

    mean_z: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.mean_z):
            raise ValueError(f"drift watch: mean_z {self.mean_z!r} is not finite")

    def advance(self, z: float, weight: float, clip: float) -> DriftWatch:
        clipped = max(-clip, min(clip, z))
        return DriftWatch(self.mean_z + weight * (clipped - self.mean_z))

    def score(self, half_z: float) -> float:
        return squash(self.mean_z / half_z)

    def to_dict(self) -> dict[str, Any]:
        return {"mean_z": self.mean_z}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> DriftWatch:
        return cls(state_codec.number(state, "mean_z"))


@dataclass(frozen=True, slots=True)
class DropoutWatch:
    """Steps in a row with no value: device health. It counts only what it is told is missing;
    a jump in timestamps (an outage whose backlog may still come) is not a dropout."""

    missing: int = 0

    def __post_init__(self) -> None:
        if self.missing < 0:
            raise ValueError(f"dropout watch: missing {self.missing!r} must not be negative")

    def advance(self, present: bool) -> DropoutWatch:
        return DropoutWatch(0 if present else self.missing + 1)

    def score(self, limit: int) -> float:
        return squash(self.missing / limit)

    def to_dict(self) -> dict[str, Any]:
        return {"missing": self.missing}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> DropoutWatch:
        return cls(state_codec.integer(state, "missing"))


@dataclass(frozen=True, slots=True)
class NoiseWatch:
    """The series' step-to-step noise and its resolution, a floor under every band.

    `mean_step` is a slow EWMA of |x[t] - x[t-1]| over consecutive steps, each clipped at
    `NOISE_CLIP` times the mean so that faults do not pass for noise; `resolution` is the smallest
    change ever seen (1 for a DHT11's whole degrees), below which no band can be narrower.
    """

    last_value: float | None = None
    last_timestamp_s: float | None = None
    mean_step: float | None = None
    resolution: float | None = None

    def advance(self, timestamp_s: float, value: float, step_s: float, weight: float) -> NoiseWatch:
        mean_step, resolution = self.mean_step, self.resolution
        consecutive = self.last_timestamp_s is not None and timestamp_s - self.last_timestamp_s <= 1.5 * step_s
        if consecutive and self.last_value is not None:
            change = abs(value - self.last_value)
            if mean_step is None:
                mean_step = change
            else:
                limit = NOISE_CLIP * mean_step if mean_step > 0 else change
                mean_step += weight * (min(change, limit) - mean_step)
            if not same_reading(value, self.last_value):
                resolution = change if resolution is None else min(resolution, change)
        return NoiseWatch(value, timestamp_s, mean_step, resolution)

    @property
    def sigma(self) -> float:
        return 0.0 if self.mean_step is None else MEAN_STEP_TO_SIGMA * self.mean_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> NoiseWatch:
        keys = ("last_value", "last_timestamp_s", "mean_step", "resolution")
        return cls(*(state_codec.optional_number(state, key) for key in keys))
