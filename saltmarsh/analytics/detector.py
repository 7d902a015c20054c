"""The anomaly detector of one (device, metric): a rollup in, an assessment out, causally.

Feed `SeriesDetector.observe` one value per fixed step (a per-minute rollup, say) in timestamp
order, or None for a step known to have had no value. Each step is scored against only what came
before it, by four scores on one 0..1 curve (`faults.squash`, 0.5 at the point of alarm):

- level: the robust z of the value against its hour-of-week band (`baseline`), 0.5 at
  `LEVEL_HALF_Z` robust standard deviations. A level alarm is labelled "spike" for its first
  `SPIKE_S` seconds, "level" after: a spike is a short level alarm;
- drift: an EWMA (half-life `DRIFT_HALF_LIFE_S`) of the signed z, 0.5 at `DRIFT_HALF_Z`;
- stuck: repeats of one value against the longest normal run lately (`faults.StuckWatch`);
- dropout: missing steps in a row, 0.5 at `DROPOUT_MIN_S` (and at least `DROPOUT_MIN_STEPS`).

On a new series' first day the baseline has only its recent hours: level scores are capped at
`WARMING_UP_CAP`; stuck waits for the first day to end. Drift is followed only against a settled
baseline (`baseline.Expectation.settled`): in the first week, before an hour has been seen on a
Saturday, a Saturday that stays cooler than the weekdays is not drift.

The anomaly score is the largest; at or above `THRESHOLD` it is an alarm, of that kind.

Time: only data timestamps count, never the wall clock, so a backlog drained after an outage is
scored exactly as it would have been live. A value older than the last one seen (a backlog that
arrives after live data) is scored by level against the current baseline, and neither learned nor
counted in the runs, which belong to the series in order. Do not feed None while a device's
gateway is unreachable: its readings are late, not missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from saltmarsh.analytics import state_codec
from saltmarsh.analytics.baseline import Expectation, TimeOfWeekBaseline
from saltmarsh.analytics.faults import DriftWatch, DropoutWatch, NoiseWatch, StuckWatch, squash
from saltmarsh.analytics.week_clock import LocalHour, local_hour, site_zone
from saltmarsh.contract.topics import check_id

# The committed alarm threshold: every score is 0.5 where its watch's own limit is reached.
THRESHOLD = 0.5
LEVEL_HALF_Z = 5.0  # robust sigmas off the band's centre for a level alarm
DRIFT_HALF_Z = 3.0  # a mean z this far off, sustained, is a drift alarm
DRIFT_HALF_LIFE_S = 3600.0
DRIFT_CLIP_Z = 8.0
SPIKE_S = 600.0
# Before a first day has been seen, the baseline knows no daily cycle: the first warm morning is
# news, not an alarm. Level scores against the recent hours are capped here, and drift waits.
WARMING_UP_CAP = 0.25
STUCK_MIN_S = 600.0  # never call a value stuck sooner than this...
STUCK_MIN_STEPS = 5  # ...or than this many steps
DROPOUT_MIN_S = 300.0
DROPOUT_MIN_STEPS = 3
NOISE_HALF_LIFE_S = 86_400.0
SCALE_FLOOR = 0.05  # in the metric's unit: flat history must not make every wobble an alarm
SCALE_FLOOR_RELATIVE = 0.005  # of the expected value, for metrics with large values (pressure)
DAY_S = 86_400

KINDS = ("normal", "level", "spike", "drift", "stuck", "dropout")
ALARM_KINDS = KINDS[1:]


@dataclass(frozen=True, slots=True)
class Assessment:
    """One step, scored. `band` is where a value would not be a level alarm; `expected` and `band`
    are None while the baseline is warming up (its first `baseline.MIN_HISTORY` hours)."""

    timestamp_s: float
    actual: float | None
    anomaly_score: float
    kind: str
    expected: float | None
    band: tuple[float, float] | None
    bucket: str
    source: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.anomaly_score <= 1.0:
            raise ValueError(f"anomaly_score {self.anomaly_score!r} is not in 0..1")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.band is not None and not self.band[0] <= self.band[1]:
            raise ValueError(f"band {self.band!r}: low is above high")

    @property
    def is_anomaly(self) -> bool:
        return self.kind != "normal"


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """Whose series it is: the context an anomaly carries."""

    device: str
    site: str
    place: str
    metric: str

    def __post_init__(self) -> None:
        check_id("device", self.device)
        check_id("site", self.site)
        check_id("metric", self.metric)
        if not isinstance(self.place, str):
            raise ValueError(f"place {self.place!r} is not text")


@dataclass(frozen=True, slots=True)
class Anomaly:
    """An alarm that explains itself: what was seen, what was expected and within which band, at
    which hour of the week ("Tue 10:00"), of what kind, and how sure (`anomaly_score`, 0..1)."""

    device: str
    site: str
    place: str
    metric: str
    timestamp_s: float
    bucket: str
    kind: str
    anomaly_score: float
    actual: float | None
    expected: float | None
    band: tuple[float, float] | None

    def __post_init__(self) -> None:
        if not 0.0 <= self.anomaly_score <= 1.0:
            raise ValueError(f"anomaly_score {self.anomaly_score!r} is not in 0..1")
        if self.kind not in ALARM_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(ALARM_KINDS)}")
        if self.band is not None and not self.band[0] <= self.band[1]:
            raise ValueError(f"band {self.band!r}: low is above high")
        if self.actual is None and self.kind != "dropout":
            raise ValueError(f"actual: only a dropout has no value, not a {self.kind}")


def explain(assessment: Assessment, series: SeriesKey) -> Anomaly | None:
    """The anomaly `assessment` is, with its series' context; None if it is normal."""
    if not assessment.is_anomaly:
        return None
    return Anomaly(
        device=series.device,
        site=series.site,
        place=series.place,
        metric=series.metric,
        timestamp_s=assessment.timestamp_s,
        bucket=assessment.bucket,
        kind=assessment.kind,
        anomaly_score=assessment.anomaly_score,
        actual=assessment.actual,
        expected=assessment.expected,
        band=assessment.band,
    )


def _half_life_weight(step_s: float, half_life_s: float) -> float:
    return 1.0 - math.pow(0.5, step_s / half_life_s)


def _steps(seconds: float, step_s: float, at_least: int) -> int:
    return max(at_least, math.ceil(seconds / step_s - 1e-9))


class SeriesDetector:
    """Scores one series causally. `step_s` is its fixed step; `zone` the site's time zone.

    State is bounded (`nbytes`, about 7.5 kB) and round-trips through `to_dict` / `from_dict`
    (JSON-safe) exactly: a restored detector gives the same scores as one that never stopped.
    """

    def __init__(self, step_s: float, zone: ZoneInfo | str = "UTC") -> None:
        if isinstance(step_s, bool) or not isinstance(step_s, int | float) or not (0 < step_s < math.inf):
            raise ValueError(f"step_s {step_s!r} must be a number of seconds above 0")
        self.step_s = float(step_s)
        self.zone = zone if isinstance(zone, ZoneInfo) else site_zone(zone)
        self.baseline = TimeOfWeekBaseline()
        self.stuck = StuckWatch()
        self.drift = DriftWatch()
        self.dropout = DropoutWatch()
        self.noise = NoiseWatch()
        self.level_alarm_steps = 0
        self.last_timestamp_s: float | None = None
        self._drift_weight = _half_life_weight(self.step_s, DRIFT_HALF_LIFE_S)
        self._noise_weight = _half_life_weight(self.step_s, NOISE_HALF_LIFE_S)
        self._stuck_min = _steps(STUCK_MIN_S, self.step_s, STUCK_MIN_STEPS)
        self._dropout_min = _steps(DROPOUT_MIN_S, self.step_s, DROPOUT_MIN_STEPS)
        self._spike_steps = _steps(SPIKE_S, self.step_s, 1)
        z_at_threshold = LEVEL_HALF_Z * math.sqrt(THRESHOLD / (1.0 - THRESHOLD))
        self._band_z = z_at_threshold

    def observe(self, timestamp_s: float, value: float | None) -> Assessment:
        if not math.isfinite(timestamp_s):
            raise ValueError(f"timestamp_s {timestamp_s!r} is not finite")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"value {value!r} is not finite: pass None for a missing step")
        hour = local_hour(timestamp_s, self.zone)
        if self.last_timestamp_s is not None and timestamp_s <= self.last_timestamp_s:
            return self._late(timestamp_s, value, hour)
        self.last_timestamp_s = timestamp_s
        self.baseline.advance(hour)
        expectation = self._expect(hour)
        if value is None:
            self.dropout = self.dropout.advance(present=False)
            score = self.dropout.score(self._dropout_min)
            kind = "dropout" if score >= THRESHOLD else "normal"
            return self._assessment(timestamp_s, None, (score, kind), expectation, hour)
        self.dropout = self.dropout.advance(present=True)
        self.stuck = self.stuck.advance(value, int(timestamp_s // DAY_S), self._stuck_min)
        scores = {"stuck": self.stuck.score(self._stuck_min), "level": 0.0, "drift": 0.0}
        if expectation is not None:
            z = (value - expectation.expected) / expectation.scale
            scores["level"] = squash(z / LEVEL_HALF_Z)
            if expectation.source == "recent":
                scores["level"] = min(scores["level"], WARMING_UP_CAP)
            if expectation.settled:
                self.drift = self.drift.advance(z, self._drift_weight, DRIFT_CLIP_Z)
                scores["drift"] = self.drift.score(DRIFT_HALF_Z)
        self.level_alarm_steps = self.level_alarm_steps + 1 if scores["level"] >= THRESHOLD else 0
        self.noise = self.noise.advance(timestamp_s, value, self.step_s, self._noise_weight)
        self.baseline.learn(value)
        worst = max(scores, key=scores.__getitem__)
        kind = worst if scores[worst] >= THRESHOLD else "normal"
        if kind == "level" and self.level_alarm_steps <= self._spike_steps:
            kind = "spike"
        return self._assessment(timestamp_s, value, (scores[worst], kind), expectation, hour)

    def _late(self, timestamp_s: float, value: float | None, hour: LocalHour) -> Assessment:
        expectation = self._expect(hour)
        if value is None or expectation is None:
            return self._assessment(timestamp_s, value, (0.0, "normal"), expectation, hour)
        score = squash((value - expectation.expected) / expectation.scale / LEVEL_HALF_Z)
        kind = "level" if score >= THRESHOLD else "normal"
        return self._assessment(timestamp_s, value, (score, kind), expectation, hour)

    def _expect(self, hour: LocalHour) -> Expectation | None:
        found = self.baseline.expect(hour, SCALE_FLOOR)
        if found is None:
            return None
        floor = max(
            SCALE_FLOOR, SCALE_FLOOR_RELATIVE * abs(found.expected), self.noise.sigma, self.noise.resolution or 0.0
        )
        if found.scale >= floor:
            return found
        return Expectation(found.expected, floor, found.source, found.settled)

    def _assessment(
        self,
        timestamp_s: float,
        value: float | None,
        scored: tuple[float, str],
        expectation: Expectation | None,
        hour: LocalHour,
    ) -> Assessment:
        score, kind = scored
        if expectation is None:
            expected, band, source = None, None, "none"
        else:
            half = self._band_z * expectation.scale
            expected = expectation.expected
            band = (expected - half, expected + half)
            source = expectation.source
        return Assessment(timestamp_s, value, score, kind, expected, band, hour.label, source)

    @property
    def nbytes(self) -> int:
        """Bytes of state, at its fullest: the baseline's arrays plus the watches' few numbers."""
        return self.baseline.nbytes + 8 * (5 + 4 + 1 + 1 + 4 + 2 + 7)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_s": self.step_s,
            "zone": self.zone.key,
            "baseline": self.baseline.to_dict(),
            "stuck": self.stuck.to_dict(),
            "drift": self.drift.to_dict(),
            "dropout": self.dropout.to_dict(),
            "noise": self.noise.to_dict(),
            "level_alarm_steps": self.level_alarm_steps,
            "last_timestamp_s": self.last_timestamp_s,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> SeriesDetector:
        zone = state.get("zone")
        if not isinstance(zone, str):
            raise ValueError(f"state key 'zone': expected a zone name, got {zone!r}")
        detector = cls(state_codec.number(state, "step_s"), zone)
        detector.baseline = TimeOfWeekBaseline.from_dict(state_codec.table(state, "baseline"))
        detector.stuck = StuckWatch.from_dict(state_codec.table(state, "stuck"))
        detector.drift = DriftWatch.from_dict(state_codec.table(state, "drift"))
        detector.dropout = DropoutWatch.from_dict(state_codec.table(state, "dropout"))
        detector.noise = NoiseWatch.from_dict(state_codec.table(state, "noise"))
        detector.level_alarm_steps = state_codec.integer(state, "level_alarm_steps")
        detector.last_timestamp_s = state_codec.optional_number(state, "last_timestamp_s")
        return detector
