"""DHT driver: intermittent read errors are retried with backoff and counted; hardware is injected."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from saltmarsh.config.sensor import DriverConfig
from sensor.drivers import DhtDevice, DhtDriver, DriverError, Sample, open_driver
from sensor.drivers.dht import UNITS

READING = (22.5, 48.0)


@dataclass
class FakeDht:
    """Fails `failures` times (raising, or answering None), then reads `values`."""

    failures: int
    mode: str = "raise"
    values: tuple[float, float] = READING
    attempts: int = 0
    exited: bool = False

    @property
    def temperature(self) -> float | None:
        self.attempts += 1
        if self.attempts <= self.failures:
            if self.mode == "raise":
                raise RuntimeError("Checksum did not validate. Try again.")
            return None
        return self.values[0]

    @property
    def humidity(self) -> float | None:
        return self.values[1]

    def exit(self) -> None:
        self.exited = True


@dataclass
class Waits:
    stop_after: int | None = None
    seconds: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> bool:
        self.seconds.append(seconds)
        return self.stop_after is not None and len(self.seconds) >= self.stop_after


def make(device: FakeDht, retries: int, waits: Waits, backoff_s: float = 0.5) -> DhtDriver:
    cfg = DriverConfig(type="dht22", pin="D4", retries=retries, retry_backoff_s=backoff_s)
    return DhtDriver(cfg, lambda model, pin: device, waits)


OK = Sample({"temperature": 22.5, "humidity": 48.0}, UNITS)


@dataclass(frozen=True)
class RetryCase:
    failures: int
    mode: str
    retries: int
    expected: Sample | None
    read_failures: int
    read_retries: int
    waits: list[float]


RETRY_TABLE = {
    "first try": RetryCase(0, "raise", 3, OK, 0, 0, []),
    "two flaky reads": RetryCase(2, "raise", 3, OK, 0, 2, [0.5, 1.0]),
    "succeeds on the last retry": RetryCase(3, "raise", 3, OK, 0, 3, [0.5, 1.0, 2.0]),
    "gives up after every retry": RetryCase(4, "raise", 3, None, 1, 3, [0.5, 1.0, 2.0]),
    "no retries configured": RetryCase(1, "raise", 0, None, 1, 0, []),
    "None values count as a failed read": RetryCase(1, "none", 2, OK, 0, 1, [0.5]),
    "None forever": RetryCase(99, "none", 1, None, 1, 1, [0.5]),
}


@pytest.mark.parametrize("case", RETRY_TABLE.values(), ids=RETRY_TABLE.keys())
def test_retry_table(case: RetryCase) -> None:
    recorded = Waits()
    driver = make(FakeDht(case.failures, case.mode), case.retries, recorded)
    assert driver.read(0.0) == case.expected
    assert (driver.counters.failures, driver.counters.retries) == (case.read_failures, case.read_retries)
    assert recorded.seconds == case.waits


def test_counters_accumulate_across_reads() -> None:
    device = FakeDht(failures=5)
    driver = make(device, retries=2, waits=Waits())
    assert driver.read(0.0) is None  # attempts 1-3 fail
    assert driver.read(1.0) == OK  # attempts 4-5 fail, 6 reads
    assert (driver.counters.failures, driver.counters.retries) == (1, 4)
    assert device.attempts == 6


def test_stop_during_backoff_returns_nothing_and_is_not_a_failure() -> None:
    driver = make(FakeDht(failures=10), retries=5, waits=Waits(stop_after=1))
    assert driver.read(0.0) is None
    assert (driver.counters.failures, driver.counters.retries) == (0, 1)


@pytest.mark.parametrize(("model", "pin"), [("dht22", "D4"), ("dht11", "D17")])
def test_factory_gets_model_and_pin_and_close_releases_the_device(model: str, pin: str) -> None:
    asked: list[tuple[str, str]] = []
    device = FakeDht(0)

    def factory(m: str, p: str) -> DhtDevice:
        asked.append((m, p))
        return device

    driver = open_driver(DriverConfig(type=model, pin=pin), dht_factory=factory)
    assert driver.read(0.0) == OK
    driver.close()
    assert asked == [(model, pin)]
    assert device.exited


def test_real_library_without_the_pin_names_it() -> None:
    # This machine is not a Pi: board has no D4, and the error must say which pin.
    with pytest.raises(DriverError, match="D4"):
        open_driver(DriverConfig(type="dht22", pin="D4"))
