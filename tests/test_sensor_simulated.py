"""Simulated driver: a time-of-week curve, deterministic by seed, with injectable anomalies."""

from __future__ import annotations

import statistics

import pytest

from saltmarsh.config.sensor import Anomaly, DriverConfig
from saltmarsh.contract.errors import ConfigError
from sensor.drivers import SimulatedDriver, open_driver, simulate

MONDAY = 1_704_067_200.0  # 2024-01-01T00:00:00Z
HOUR = 3600.0
DAY = 24 * HOUR
QUIET = DriverConfig(noise=0.0)


def value(t_s: float, cfg: DriverConfig = QUIET, metric: str = "temperature", boot_s: float = MONDAY) -> float:
    sample = simulate(t_s, boot_s, 7, cfg)
    assert sample is not None
    return sample.metrics[metric]


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    cfg = DriverConfig(seed=42)
    times = [MONDAY + i * 1.0 for i in range(50)]
    first = [SimulatedDriver(cfg, MONDAY).read(t) for t in times]
    again = [SimulatedDriver(cfg, MONDAY).read(t) for t in reversed(times)][::-1]
    other = [SimulatedDriver(DriverConfig(seed=43), MONDAY).read(t) for t in times]
    assert first == again  # a function of time, not of call order
    assert first != other


def test_readings_carry_units_and_two_decimals() -> None:
    sample = simulate(MONDAY, MONDAY, 1, DriverConfig())
    assert sample is not None
    assert dict(sample.units) == {"temperature": "°C", "humidity": "%"}
    assert all(round(v, 2) == v for v in sample.metrics.values())


def test_daily_cycle_warmest_in_the_afternoon() -> None:
    sunday = MONDAY + 6 * DAY  # no occupancy, so only the daily swing shows
    assert value(sunday + 15 * HOUR) - value(sunday + 3 * HOUR) == pytest.approx(6.0, abs=0.05)
    hourly = [value(sunday + h * HOUR) for h in range(24)]
    assert hourly.index(max(hourly)) == 15
    assert hourly.index(min(hourly)) == 3


def test_weekday_working_hours_are_warmer_than_the_same_hour_at_the_weekend() -> None:
    tuesday_10 = MONDAY + 1 * DAY + 10 * HOUR
    sunday_10 = MONDAY + 6 * DAY + 10 * HOUR
    tuesday_22 = MONDAY + 1 * DAY + 22 * HOUR
    sunday_22 = MONDAY + 6 * DAY + 22 * HOUR
    assert value(tuesday_10) - value(sunday_10) == pytest.approx(1.5, abs=0.05)
    assert value(tuesday_22) == pytest.approx(value(sunday_22), abs=0.05)


def test_humidity_moves_against_temperature() -> None:
    cold, warm = MONDAY + 3 * HOUR, MONDAY + 15 * HOUR
    assert value(warm) > value(cold)
    assert value(warm, metric="humidity") < value(cold, metric="humidity")


def test_noise_is_centred_with_the_configured_spread() -> None:
    cfg = DriverConfig(noise=0.5)
    errors = [value(MONDAY + i * 0.5, cfg) - value(MONDAY + i * 0.5) for i in range(400)]
    assert abs(statistics.mean(errors)) < 0.1
    assert statistics.stdev(errors) == pytest.approx(0.5, rel=0.2)


BOOT = MONDAY + 9 * HOUR
NOISY = DriverConfig(noise=0.3)

# name, anomaly, seconds after boot, expected change from the normal signal ("stuck" / None special)
ANOMALY_TABLE: list[tuple[str, Anomaly, float, object]] = [
    ("spike inside the window", Anomaly("spike", 60, 30, magnitude=10.0), 75, 10.0),
    ("spike before the window", Anomaly("spike", 60, 30, magnitude=10.0), 59, 0.0),
    ("spike ends with the window", Anomaly("spike", 60, 30, magnitude=10.0), 90, 0.0),
    ("negative spike on humidity", Anomaly("spike", 0, 10, magnitude=-20.0, metric="humidity"), 5, -20.0),
    ("drift halfway", Anomaly("drift", 100, 200, magnitude=4.0), 200, 2.0),
    ("drift at its start", Anomaly("drift", 100, 200, magnitude=4.0), 100, 0.0),
    ("drift gone after its window", Anomaly("drift", 100, 200, magnitude=4.0), 300, 0.0),
    ("stuck holds the window's first value", Anomaly("stuck", 10, 100, metric="humidity"), 80, "stuck"),
    ("dropout gives no reading", Anomaly("dropout", 10, 5), 12, None),
    ("dropout over", Anomaly("dropout", 10, 5), 15, 0.0),
]


@pytest.mark.parametrize(
    ("anomaly", "after_boot_s", "expected"),
    [row[1:] for row in ANOMALY_TABLE],
    ids=[row[0] for row in ANOMALY_TABLE],
)
def test_anomaly_table(anomaly: Anomaly, after_boot_s: float, expected: object) -> None:
    cfg = DriverConfig(noise=0.3, anomalies=(anomaly,))
    t_s = BOOT + after_boot_s
    got = simulate(t_s, BOOT, 7, cfg)
    normal = simulate(t_s, BOOT, 7, NOISY)
    assert normal is not None
    if expected is None:
        assert got is None
        return
    assert got is not None
    if expected == "stuck":
        window_start = simulate(BOOT + anomaly.start_s, BOOT, 7, NOISY)
        assert window_start is not None
        assert got.metrics[anomaly.metric] == window_start.metrics[anomaly.metric]
        assert got.metrics[anomaly.metric] != normal.metrics[anomaly.metric]
        return
    assert isinstance(expected, float)
    assert got.metrics[anomaly.metric] - normal.metrics[anomaly.metric] == pytest.approx(expected, abs=0.011)
    other = next(m for m in got.metrics if m != anomaly.metric)
    assert got.metrics[other] == normal.metrics[other]


def test_stuck_value_is_flat_for_the_whole_window() -> None:
    cfg = DriverConfig(noise=0.3, anomalies=(Anomaly("stuck", 10, 50),))
    values = {value(BOOT + s, cfg, boot_s=BOOT) for s in range(10, 60)}
    assert len(values) == 1
    assert len({value(BOOT + s, cfg, boot_s=BOOT) for s in range(60, 70)}) > 1


def test_anomaly_on_an_unknown_metric_is_a_config_error_naming_the_key() -> None:
    cfg = DriverConfig(anomalies=(Anomaly("dropout", 0, 1), Anomaly("spike", 0, 1, 5.0, metric="pressure")))
    with pytest.raises(ConfigError) as err:
        open_driver(cfg)
    assert err.value.key == "driver.anomalies[1].metric"


def test_without_a_seed_each_start_picks_its_own() -> None:
    seeds = {SimulatedDriver(DriverConfig(seed=None), MONDAY).seed for _ in range(5)}
    assert len(seeds) > 1
