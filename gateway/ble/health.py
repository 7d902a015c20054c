"""Per-device health: what the status file and the spool beacon show for each BLE device.

Last seen, advertisements per minute, RSSI (last, and per adapter), readings, duplicates dropped
and bad input by reason, with decrypt failures (wrong or missing key) summed apart because an
operator acts on them. Every advertisement from a sensor's MAC counts as heard, duplicates too:
the rate is the radio's, the readings are what reached the spool.

Advertisements per minute is a sliding-window estimate from two one-minute buckets (the current
minute plus the share of the previous one still inside the window): constant memory per device,
at any advertising rate.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from gateway.ble.advertisement import Advertisement
from gateway.ble.device_id import device_id_for
from gateway.ble.parsed import Kind
from gateway.ble.reasons import BadReason, DuplicateReason

MAX_DEVICES = 4096
MAX_ADAPTERS = 8


@dataclass(slots=True)
class DeviceHealth:
    address: str
    device_id: str
    kind: Kind
    last_seen_s: float = 0.0
    rssi: int | None = None
    rssi_by_adapter: dict[str, int] = field(default_factory=dict)
    adverts: int = 0
    readings: int = 0
    duplicates: Counter[DuplicateReason] = field(default_factory=Counter)
    bad: Counter[BadReason] = field(default_factory=Counter)
    _minute: int = -1
    _this_minute: int = 0
    _last_minute: int = 0

    def heard(self, advertisement: Advertisement) -> None:
        self.adverts += 1
        self.last_seen_s = max(self.last_seen_s, advertisement.time_s)
        self.rssi = advertisement.rssi
        if advertisement.adapter in self.rssi_by_adapter or len(self.rssi_by_adapter) < MAX_ADAPTERS:
            self.rssi_by_adapter[advertisement.adapter] = advertisement.rssi
        minute = int(advertisement.time_s // 60)
        if minute == self._minute:
            self._this_minute += 1
        elif minute > self._minute:
            self._last_minute = self._this_minute if minute == self._minute + 1 else 0
            self._this_minute = 1
            self._minute = minute
        # An advertisement older than the current minute (a late copy) is counted, not binned.

    def adverts_per_min(self, now_s: float) -> float:
        minute, into = divmod(now_s, 60)
        if int(minute) == self._minute:
            return self._this_minute + self._last_minute * (1 - into / 60)
        if int(minute) == self._minute + 1:
            return self._this_minute * (1 - into / 60)
        return 0.0

    @property
    def duplicates_dropped(self) -> int:
        return sum(self.duplicates.values())

    @property
    def decrypt_failures(self) -> int:
        return sum(count for reason, count in self.bad.items() if reason.is_decrypt_failure)

    def status(self, now_s: float) -> dict[str, object]:
        return {
            "address": self.address,
            "kind": self.kind.value,
            "last_seen_ms": round(self.last_seen_s * 1000),
            "last_seen_age_s": round(max(0.0, now_s - self.last_seen_s), 1),
            "adverts": self.adverts,
            "adverts_per_min": round(self.adverts_per_min(now_s), 1),
            "rssi": self.rssi,
            "rssi_by_adapter": dict(self.rssi_by_adapter),
            "readings": self.readings,
            "duplicates_dropped": self.duplicates_dropped,
            "decrypt_failures": self.decrypt_failures,
            "bad_input": {reason.value: count for reason, count in sorted(self.bad.items())},
        }


class HealthTable:
    """Every sensor heard, the longest-unheard out first past `max_devices`."""

    def __init__(self, max_devices: int = MAX_DEVICES) -> None:
        self._max_devices = max_devices
        self._devices: OrderedDict[str, DeviceHealth] = OrderedDict()
        self.evicted = 0

    def heard(self, advertisement: Advertisement, kind: Kind) -> DeviceHealth:
        device = self._devices.get(advertisement.address)
        if device is None:
            device = DeviceHealth(advertisement.address, device_id_for(advertisement.address), kind)
            self._devices[advertisement.address] = device
            while len(self._devices) > self._max_devices:
                self._devices.popitem(last=False)
                self.evicted += 1
        self._devices.move_to_end(advertisement.address)
        device.kind = kind
        device.heard(advertisement)
        return device

    def get(self, address: str) -> DeviceHealth | None:
        return self._devices.get(address)

    def __len__(self) -> int:
        return len(self._devices)

    def status(self, now_s: float) -> dict[str, dict[str, object]]:
        """Device id to its health, for the status file."""
        return {device.device_id: device.status(now_s) for device in self._devices.values()}
