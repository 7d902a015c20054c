"""A simulated room: a daily and weekly temperature/humidity cycle, seeded noise, injected faults.

The shape follows the time of week, so that anomaly detection downstream has something to learn
("this is not fine for 10am on Tuesday"): warmest mid-afternoon, and warmer still in weekday
working hours, when people and heating are in. Humidity moves against temperature.

`simulate` is a pure function of (time, boot time, seed, config); the driver only remembers the
boot time and the seed. All times are UTC.
"""

from __future__ import annotations

import math
import random
import secrets

from saltmarsh.config.sensor import Anomaly, DriverConfig
from saltmarsh.contract.errors import ConfigError
from sensor.drivers.base import Driver, Sample, Wait, plain_sleep

UNITS = {"temperature": "°C", "humidity": "%"}
METRICS = tuple(UNITS)

DAY_S = 86_400
WEEK_S = 7 * DAY_S
MONDAY_OFFSET_S = 4 * DAY_S  # 1970-01-01 was a Thursday
DAILY_SWING_C = 3.0
WARMEST_HOUR = 15.0
OCCUPIED_HOURS = (8.0, 18.0)
OCCUPIED_EXTRA_C = 1.5
HUMIDITY_PER_C = -2.0


def _occupancy(t_s: float) -> float:
    """0 to 1: how much of a weekday working hour `t_s` is, with soft edges instead of steps."""
    weekday = int(((t_s - MONDAY_OFFSET_S) % WEEK_S) // DAY_S)  # 0 is Monday
    if weekday >= 5:
        return 0.0
    hour = (t_s % DAY_S) / 3600
    start, end = OCCUPIED_HOURS
    return 0.5 * (math.tanh((hour - start) / 0.5) - math.tanh((hour - end) / 0.5))


def clean_signal(t_s: float, cfg: DriverConfig) -> dict[str, float]:
    """The noiseless curve at `t_s`."""
    hour = (t_s % DAY_S) / 3600
    daily = DAILY_SWING_C * math.cos(2 * math.pi * (hour - WARMEST_HOUR) / 24)
    temperature = cfg.base_temperature_c + daily + OCCUPIED_EXTRA_C * _occupancy(t_s)
    humidity = cfg.base_humidity_pct + HUMIDITY_PER_C * (temperature - cfg.base_temperature_c)
    return {"temperature": temperature, "humidity": humidity}


def noisy_signal(t_s: float, seed: int, cfg: DriverConfig) -> dict[str, float]:
    # Seeding from (seed, millisecond) keeps the noise a function of time, not of call order.
    rng = random.Random(f"{seed}/{round(t_s * 1000)}")
    clean = clean_signal(t_s, cfg)
    return {
        "temperature": clean["temperature"] + rng.gauss(0.0, cfg.noise),
        "humidity": clean["humidity"] + rng.gauss(0.0, 2 * cfg.noise),
    }


def _active(anomaly: Anomaly, since_boot_s: float) -> bool:
    return anomaly.start_s <= since_boot_s < anomaly.start_s + anomaly.duration_s


def simulate(t_s: float, boot_s: float, seed: int, cfg: DriverConfig) -> Sample | None:
    """The simulated reading at `t_s`, or None inside a dropout window."""
    since_boot_s = t_s - boot_s
    active = [a for a in cfg.anomalies if _active(a, since_boot_s)]
    if any(a.kind == "dropout" for a in active):
        return None
    values = noisy_signal(t_s, seed, cfg)
    for anomaly in active:
        if anomaly.kind == "stuck":
            values[anomaly.metric] = noisy_signal(boot_s + anomaly.start_s, seed, cfg)[anomaly.metric]
        elif anomaly.kind == "spike":
            values[anomaly.metric] += anomaly.magnitude
        elif anomaly.kind == "drift":
            progress = (since_boot_s - anomaly.start_s) / anomaly.duration_s
            values[anomaly.metric] += anomaly.magnitude * progress
    values["humidity"] = min(100.0, max(0.0, values["humidity"]))
    return Sample({name: round(value, 2) for name, value in values.items()}, UNITS)


def check_anomalies(cfg: DriverConfig) -> None:
    for i, anomaly in enumerate(cfg.anomalies):
        if anomaly.kind != "dropout" and anomaly.metric not in METRICS:
            raise ConfigError(f"driver.anomalies[{i}].metric", f"{anomaly.metric!r} is not one of {', '.join(METRICS)}")


class SimulatedDriver(Driver):
    def __init__(self, cfg: DriverConfig, boot_s: float, wait: Wait = plain_sleep) -> None:
        super().__init__()
        check_anomalies(cfg)
        self.cfg = cfg
        self.boot_s = boot_s
        self.seed = cfg.seed if cfg.seed is not None else secrets.randbits(32)
        self.wait = wait

    def read(self, now_s: float) -> Sample | None:
        if self.cfg.read_time_s > 0:
            self.wait(self.cfg.read_time_s)
        return simulate(now_s, self.boot_s, self.seed, self.cfg)
