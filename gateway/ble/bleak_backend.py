"""The real radio: one `BleakScanner` per adapter, with a detection callback.

Passive scanning where the platform supports it: the radio only listens, which costs the
sensors' batteries nothing (an active scan asks every device for a scan response). On BlueZ a
passive scan needs an advertisement monitor with "or patterns", here the BTHome service data
UUIDs and Ruuvi's company id, and BlueZ 5.56+ with `--experimental`; where that is missing
bleak says so at start and the adapter falls back to an active scan, logged once.

Without a D-Bus system bus, bleak fails at once with FileNotFoundError (the bus socket is
missing): that, and every other reason the radio cannot be used, becomes `BleUnavailable` with
a reason an operator can act on, and `keep_scanning` retries with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakError

from gateway.ble.advertisement import Advertisement
from gateway.ble.backend import BleUnavailable, Emit, Started
from gateway.ble.bthome import BTHOME_UUIDS
from gateway.ble.ruuvi import RUUVI_COMPANY_ID
from saltmarsh.contract.errors import ValidationError

log = logging.getLogger(__name__)

NO_SYSTEM_BUS = "no D-Bus system bus; is bluetoothd running?"
DEFAULT_ADAPTER = "default"
ScanningMode = Literal["active", "passive"]


def or_patterns() -> list[OrPattern]:
    """What a passive scan listens for: each BTHome UUID16 and Ruuvi's company id, little-endian
    as they are on the air, at the start of their AD structure."""
    patterns = [
        OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, int(uuid[4:8], 16).to_bytes(2, "little"))
        for uuid in sorted(BTHOME_UUIDS)
    ]
    patterns.append(
        OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, RUUVI_COMPANY_ID.to_bytes(2, "little"))
    )
    return patterns


def describe_failure(exc: BaseException) -> str:
    """Why the radio cannot be used, for the status file and the log."""
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return NO_SYSTEM_BUS
    if isinstance(exc, BleakDBusError) and exc.dbus_error == "org.freedesktop.DBus.Error.ServiceUnknown":
        return "bluetoothd is not on the D-Bus system bus; start bluetooth.service"
    if isinstance(exc, BleakError) and "No Bluetooth adapters" in str(exc):
        return "no Bluetooth adapter found"
    if isinstance(exc, BleakError) and "not found" in str(exc):
        return f"{exc}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class BleakBackend:
    def __init__(
        self,
        adapters: Sequence[str] = (),
        scanning_mode: ScanningMode = "passive",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.adapters = tuple(adapters)
        self.scanning_mode: ScanningMode = scanning_mode
        self._clock = clock
        self.malformed = 0  # advertisements bleak delivered that are no valid record (counted, dropped)
        self.modes: dict[str, ScanningMode] = {}

    @property
    def name(self) -> str:
        return f"bleak on {', '.join(self.adapters or (DEFAULT_ADAPTER,))}"

    async def run(self, emit: Emit, stop: asyncio.Event, started: Started) -> None:
        scanners: list[BleakScanner] = []
        try:
            for adapter in self.adapters or (None,):
                scanners.append(await self._start(adapter, emit))
            started(", ".join(f"{adapter} ({mode})" for adapter, mode in self.modes.items()))
            await stop.wait()
        except (OSError, BleakError) as exc:
            raise BleUnavailable(describe_failure(exc)) from exc
        finally:
            for scanner in scanners:
                try:
                    await scanner.stop()
                except (OSError, BleakError) as exc:
                    log.warning("ble: stopping a scanner failed: %s", exc)

    async def _start(self, adapter: str | None, emit: Emit) -> BleakScanner:
        label = adapter or DEFAULT_ADAPTER
        callback = self._callback(label, emit)
        if self.scanning_mode == "passive":
            try:
                scanner = self._scanner(adapter, "passive", callback)
                await scanner.start()
            except BleakError as exc:
                # FileNotFoundError (no bus at all) is not a BleakError: it goes straight up.
                log.warning("ble: passive scanning unavailable on %s, scanning actively: %s", label, exc)
            else:
                self.modes[label] = "passive"
                return scanner
        scanner = self._scanner(adapter, "active", callback)
        await scanner.start()
        self.modes[label] = "active"
        return scanner

    def _scanner(
        self, adapter: str | None, mode: ScanningMode, callback: Callable[[BLEDevice, AdvertisementData], None]
    ) -> BleakScanner:
        bluez: BlueZScannerArgs = {}
        if adapter is not None:
            bluez["adapter"] = adapter
        if mode == "passive":
            bluez["or_patterns"] = list(or_patterns())
        return BleakScanner(detection_callback=callback, scanning_mode=mode, bluez=bluez)

    def _callback(self, adapter: str, emit: Emit) -> Callable[[BLEDevice, AdvertisementData], None]:
        def on_advertisement(device: BLEDevice, data: AdvertisementData) -> None:
            try:
                advertisement = Advertisement.of(
                    address=device.address,
                    rssi=data.rssi,
                    time_s=self._clock(),
                    adapter=adapter,
                    service_data=data.service_data,
                    manufacturer_data=data.manufacturer_data,
                    name=data.local_name,
                )
            except ValidationError as exc:
                # macOS reports UUIDs, not MACs; a platform oddity must not stop the scan.
                self.malformed += 1
                log.debug("ble: dropped an advertisement bleak delivered: %s", exc)
                return
            emit(advertisement)

        return on_advertisement
