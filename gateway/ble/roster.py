"""Which BLE devices this collector ingests: the ones pillar assigns it, or, with discovery, any.

A sensor heard over the air that pillar does not list is never ingested (its readings would be
nobody's, and the site ACL would refuse them): it is counted and listed, by MAC, for the
operator to add with `saltmarsh pillar add-ble-device` (status `ble_unknown_devices`). The list
is bounded; past `MAX_UNKNOWN` new MACs are counted only, so a street full of phones and
thermometers cannot grow it without end. With `discovery` every sensor heard is ingested, with
the defaults of an unlisted device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.ble.advertisement import Advertisement
from gateway.ble.parsed import Kind
from saltmarsh.config.ble import BleDeviceConfig

MAX_UNKNOWN = 256


@dataclass(slots=True)
class UnknownDevice:
    mac: str
    kind: Kind
    first_seen_s: float
    last_seen_s: float
    rssi: int
    heard: int = 1

    def status(self, now_s: float) -> dict[str, object]:
        return {
            "mac": self.mac,
            "kind": self.kind.value,
            "heard": self.heard,
            "rssi": self.rssi,
            "last_seen_s_ago": round(max(0.0, now_s - self.last_seen_s), 1),
        }


class Roster:
    def __init__(self, devices: Iterable[BleDeviceConfig], *, discovery: bool = False) -> None:
        self.devices = {device.mac: device for device in devices}
        self.discovery = discovery
        self.unknown: dict[str, UnknownDevice] = {}
        self.unknown_heard = 0  # advertisements from sensors not listed, in total
        self.unknown_not_listed = 0  # distinct MACs past MAX_UNKNOWN
        self.on_new: Callable[[str], None] = lambda device_id: None  # discovered: its device id

    def admit(self, advertisement: Advertisement, kind: Kind) -> BleDeviceConfig | None:
        """The device's config if it is ingested; None, counted, if it is unknown here."""
        device = self.devices.get(advertisement.address)
        if device is not None:
            return device
        if self.discovery:
            device = BleDeviceConfig(mac=advertisement.address, kind=kind.value)
            self.devices[device.mac] = device
            self.on_new(device.device_id)
            return device
        self._heard_unknown(advertisement, kind)
        return None

    def _heard_unknown(self, advertisement: Advertisement, kind: Kind) -> None:
        self.unknown_heard += 1
        known = self.unknown.get(advertisement.address)
        if known is not None:
            known.heard += 1
            known.last_seen_s = advertisement.time_s
            known.rssi = advertisement.rssi
        elif len(self.unknown) < MAX_UNKNOWN:
            t = advertisement.time_s
            self.unknown[advertisement.address] = UnknownDevice(advertisement.address, kind, t, t, advertisement.rssi)
        else:
            self.unknown_not_listed += 1

    def unknown_status(self, now_s: float) -> list[dict[str, object]]:
        ordered = sorted(self.unknown.values(), key=lambda u: u.last_seen_s, reverse=True)
        return [u.status(now_s) for u in ordered]
