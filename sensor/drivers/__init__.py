"""Sensor drivers: one small interface, three backends, chosen in one place (`open_driver`).

- `dht11` / `dht22`: the real sensor on a Pi GPIO pin, retried with backoff;
- `simulated`: a time-of-week curve with seeded noise and injected anomalies;
- `replay`: a CSV file, at the agent's interval or by its own timestamps.
"""

from __future__ import annotations

import time

from saltmarsh.config.sensor import DriverConfig
from saltmarsh.contract.errors import DriverError, ReplayError
from sensor.drivers.base import Driver, ReadCounters, Sample, Wait, plain_sleep
from sensor.drivers.dht import DeviceFactory, DhtDevice, DhtDriver, adafruit_device
from sensor.drivers.replay import ReplayDriver, ReplayRow, iter_replay, parse_replay, parse_timestamp
from sensor.drivers.simulated import SimulatedDriver, simulate

__all__ = [
    "DeviceFactory",
    "DhtDevice",
    "DhtDriver",
    "Driver",
    "DriverError",
    "ReadCounters",
    "ReplayDriver",
    "ReplayError",
    "ReplayRow",
    "Sample",
    "SimulatedDriver",
    "Wait",
    "iter_replay",
    "open_driver",
    "parse_replay",
    "parse_timestamp",
    "simulate",
]


def open_driver(
    cfg: DriverConfig,
    *,
    wait: Wait = plain_sleep,
    dht_factory: DeviceFactory = adafruit_device,
    boot_s: float | None = None,
) -> Driver:
    """The driver `cfg.type` names. Raises DriverError (or ConfigError) when it cannot start.

    `wait` is how a driver sleeps between retries, so that a stop interrupts it; `dht_factory`
    makes the DHT device, so that tests inject a fake one; `boot_s` anchors simulated anomalies.
    """
    if cfg.type in ("dht11", "dht22"):
        return DhtDriver(cfg, dht_factory, wait)
    if cfg.type == "replay":
        return ReplayDriver.from_config(cfg)
    if cfg.type == "simulated":
        return SimulatedDriver(cfg, time.time() if boot_s is None else boot_s, wait)
    raise DriverError(f"driver.type {cfg.type!r} is not one of dht11, dht22, simulated, replay")
