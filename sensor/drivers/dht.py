"""DHT11 and DHT22 through adafruit-circuitpython-dht, with retries for their flaky reads.

A DHT answers with a checksum error or nothing at all a few percent of the time; the library
raises RuntimeError and says "try again". We do, with exponential backoff, and count it.
The device is made by a factory so that tests (and this non-Pi machine) can inject a fake.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from saltmarsh.config.sensor import DriverConfig
from saltmarsh.contract.errors import DriverError
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from sensor.drivers.base import Driver, Sample, Wait, plain_sleep

log = logging.getLogger(__name__)

UNITS = {"temperature": "°C", "humidity": "%"}


class DhtDevice(Protocol):
    """The part of `adafruit_dht.DHTBase` we use; each property may raise RuntimeError."""

    @property
    def temperature(self) -> float | None: ...

    @property
    def humidity(self) -> float | None: ...

    def exit(self) -> None: ...


DeviceFactory = Callable[[str, str], DhtDevice]
"""(model, pin name) to an open device, e.g. ("dht22", "D4")."""


def adafruit_device(model: str, pin: str) -> DhtDevice:
    """The real sensor; imported here so that other drivers never need Blinka or a Pi."""
    try:
        import adafruit_dht
        import board
    except (ImportError, NotImplementedError, RuntimeError) as err:
        raise DriverError(
            f"{model} on pin {pin}: cannot load adafruit_dht/board ({err}); install saltmarsh[sensor] on a Pi"
        ) from None
    pin_obj = getattr(board, pin, None)
    if pin_obj is None:
        raise DriverError(f"{model}: this board has no pin {pin} (board {getattr(board, 'board_id', '?')})")
    device_class = adafruit_dht.DHT22 if model == "dht22" else adafruit_dht.DHT11
    try:
        device: DhtDevice = device_class(pin_obj)
    except (RuntimeError, ValueError, OSError) as err:
        raise DriverError(f"{model} on pin {pin}: {err}") from None
    return device


class DhtDriver(Driver):
    def __init__(self, cfg: DriverConfig, factory: DeviceFactory = adafruit_device, wait: Wait = plain_sleep) -> None:
        super().__init__()
        self.model = cfg.type
        self.pin = cfg.pin
        self.retries = cfg.retries
        # Doubling, without jitter: one sensor on its own pin has no herd to spread out.
        self.backoff = BackoffPolicy(
            base_s=cfg.retry_backoff_s, cap_s=cfg.retry_backoff_s * 2 ** max(cfg.retries - 1, 0), jitter=False
        )
        self._wait = wait
        self._device = factory(cfg.type, cfg.pin)

    def read(self, now_s: float) -> Sample | None:
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters.retries += 1
                if self._wait(backoff_delay(attempt, self.backoff, 0.0)):
                    return None  # stopping: an unfinished read is not a sensor failure
            try:
                temperature = self._device.temperature
                humidity = self._device.humidity
            except (RuntimeError, OSError) as err:
                last_error = str(err)
                continue
            if temperature is None or humidity is None:
                last_error = "device returned no value"
                continue
            return Sample({"temperature": float(temperature), "humidity": float(humidity)}, UNITS)
        self.counters.failures += 1
        log.warning(
            "sensor read failed after retries",
            extra={
                "event": "read_failed",
                "model": self.model,
                "pin": self.pin,
                "attempts": self.retries + 1,
                "why": last_error,
                "read_failures": self.counters.failures,
            },
        )
        return None

    def close(self) -> None:
        self._device.exit()
