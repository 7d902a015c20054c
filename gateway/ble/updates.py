"""What one `update()` added: the metrics of this advertisement alone.

A Bluetooth-Devices parser returns a `SensorUpdate` whose `entity_values` is the parser's own
dict of every value it has ever set, not this advertisement's: sensor-state-data never clears
it (bluetooth-sensor-state-data 1.9, sensor-state-data 2.20). A duplicate that bthome-ble drops
therefore still "returns" the previous temperature. Each value the parser sets is a new
`SensorValue` object, so the values of this advertisement are those whose object is not the one
the previous update held. `FreshValues` keeps that previous picture, per parser.

Only numbers become metrics (an envelope's metrics are floats): text, raw hex and timestamps
are left out, binary sensors become 1.0 or 0.0, and the signal strength is left to the health
counters, because it is the gateway's measurement of the radio, not the device's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sensor_state_data import DeviceKey, SensorUpdate

from saltmarsh.contract.topics import ID_PATTERN

SIGNAL_STRENGTH = "signal_strength"


@dataclass(frozen=True, slots=True)
class Fresh:
    metrics: dict[str, float]
    units: dict[str, str]
    events: tuple[str, ...]  # `button:press`, as `key:event_type`


@dataclass(slots=True)
class FreshValues:
    """The previous update's values of one parser, to tell this update's own from the carried-over."""

    _sensor: dict[DeviceKey, object] = field(default_factory=dict)
    _binary: dict[DeviceKey, object] = field(default_factory=dict)
    # The parser's own dicts (the update hands them out as they are), to resynchronise after a failure.
    _live: tuple[dict[DeviceKey, Any], dict[DeviceKey, Any]] | None = None

    def take(self, update: SensorUpdate) -> Fresh:
        metrics: dict[str, float] = {}
        units: dict[str, str] = {}
        for key, value in update.entity_values.items():
            if self._sensor.get(key) is value or key.key == SIGNAL_STRENGTH:
                continue
            number = _number(value.native_value)
            name = _metric_name(key)
            if number is None or name is None:
                continue
            metrics[name] = number
            description = update.entity_descriptions.get(key)
            unit = description.native_unit_of_measurement if description is not None else None
            if unit is not None:
                units[name] = str(unit)
        for key, binary in update.binary_entity_values.items():
            name = _metric_name(key)
            # A sensor of the same name (BTHome has a `power` of each kind) keeps its number.
            if self._binary.get(key) is binary or name is None or name in metrics or binary.native_value is None:
                continue
            metrics[name] = 1.0 if binary.native_value else 0.0
        # Events are the one part sensor-state-data does clear per update: they are this advertisement's.
        events = tuple(f"{key.key}:{event.event_type}" for key, event in update.events.items())
        self._live = (update.entity_values, update.binary_entity_values)
        self._sensor = dict(update.entity_values)
        self._binary = dict(update.binary_entity_values)
        return Fresh(metrics=metrics, units=units, events=events)

    def resync(self) -> bool:
        """After `update()` raised: take what the parser set before failing as not fresh. False if
        no update has succeeded yet, so there is nothing to resynchronise with."""
        if self._live is None:
            return False
        self._sensor = dict(self._live[0])
        self._binary = dict(self._live[1])
        return True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _metric_name(key: DeviceKey) -> str | None:
    """`temperature`, or `temperature_<device_id>` for a sub-device; None if no valid metric name."""
    # Keys are often sensor-state-data's StrEnum members; a metric name is a plain str.
    name = str(key.key) if key.device_id is None else f"{key.key!s}_{key.device_id!s}"
    return name if ID_PATTERN.fullmatch(name) else None
