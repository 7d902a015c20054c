"""Edge-triggered threshold alerts: a reading's metrics in, the thresholds it newly crosses out.

A threshold (`[alerts.above]` or `[alerts.below]` in the sensor config) is *armed* while its metric
is inside it. A reading that takes the metric beyond it (strictly above an `above`, strictly
below a `below`) crosses it once; the threshold is then *tripped* and crosses nothing more while
the metric stays beyond, until a reading brings the metric back inside (a value equal to the
threshold is inside) and re-arms it. Every threshold starts armed, so the first reading beyond it
crosses it too: a sensor that boots in a hot room says so. A reading without the metric changes
nothing for that metric's thresholds.

Each crossing is one alert (the agent mints it, `saltmarsh.contract.mint.mint_alert`):

    name     threshold_above | threshold_below
    metrics  {<metric>: <value>, "threshold": <the threshold's value>}
    units    {<metric>: <unit>, "threshold": <unit>}, if the reading gave the metric a unit
    detail   "<metric> <value> is above <threshold>"

Pure: `check` says what a reading would do and changes nothing, `commit` adopts it once the
reading and its alerts are spooled, so a reading the disk refused leaves the state as it was and
the next reading beyond raises the alert the lost one would have. The state lives in memory for
one boot: after a restart, a metric that is still beyond alerts again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from saltmarsh.config.sensor import THRESHOLD_METRIC, AlertsConfig, AlertThreshold

ALERT_NAME_PREFIX = "threshold_"


@dataclass(frozen=True, slots=True)
class Crossing:
    """One reading took `threshold.metric` to `value`, beyond `threshold`."""

    threshold: AlertThreshold
    value: float

    @property
    def name(self) -> str:
        return f"{ALERT_NAME_PREFIX}{self.threshold.bound.value}"

    @property
    def metrics(self) -> dict[str, float]:
        return {self.threshold.metric: self.value, THRESHOLD_METRIC: self.threshold.value}

    def units(self, reading_units: Mapping[str, str]) -> dict[str, str]:
        unit = reading_units.get(self.threshold.metric)
        return {} if unit is None else {self.threshold.metric: unit, THRESHOLD_METRIC: unit}

    @property
    def detail(self) -> str:
        t = self.threshold
        return f"{t.metric} {self.value} is {t.bound.value} {t.value}"


@dataclass(frozen=True, slots=True)
class Check:
    """What one reading does: the thresholds it crosses, and which are tripped after it."""

    crossings: tuple[Crossing, ...]
    tripped: frozenset[AlertThreshold]


class ThresholdWatch:
    """The config's thresholds and which of them are tripped now."""

    def __init__(self, alerts: AlertsConfig) -> None:
        self.thresholds = alerts.thresholds
        self.tripped: frozenset[AlertThreshold] = frozenset()

    def check(self, metrics: Mapping[str, float]) -> Check:
        """The crossings `metrics` makes and the state after it, without adopting that state."""
        if not self.thresholds:
            return Check((), self.tripped)
        tripped = set(self.tripped)
        crossings: list[Crossing] = []
        for threshold in self.thresholds:
            value = metrics.get(threshold.metric)
            if value is None:
                continue
            if not threshold.beyond(value):
                tripped.discard(threshold)
            elif threshold not in tripped:
                tripped.add(threshold)
                crossings.append(Crossing(threshold, value))
        return Check(tuple(crossings), frozenset(tripped))

    def commit(self, check: Check) -> None:
        """Adopt the state a checked reading leads to, once that reading is spooled."""
        self.tripped = check.tripped
