"""Advertisements in, readings out: the BLE hop's steps, in the order an advertisement takes them.

    kind_of         BTHome or Ruuvi by what it carries; anything else is not a sensor: counted, dropped
    health.heard    last seen, rate and RSSI of the device, duplicates included
    repeats         the same bytes again within a second, on any adapter: one reading
    decoder         the device's parser, called once: a reading's content, a duplicate, or bad input
    sequences       a Ruuvi format 5 measurement sequence already read: a duplicate
    -> BleReading   what the collector mints with `saltmarsh.contract.mint`

Every advertisement ends in exactly one counter: `not_sensors`, `readings`, `duplicates[reason]`
or `bad[reason]`, in total and (but for `not_sensors`) per device. A downgrade also queues a
`DowngradeAlert` for the collector to send as an alert envelope, at most one per device per
`alert_every_s`, so a device replaying plaintext at 10 Hz cannot flood the uplink; the ones held
back are counted.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

from gateway.ble.advertisement import Advertisement
from gateway.ble.decode import Decoder, kind_of
from gateway.ble.dedup import RepeatFilter, SequenceFilter
from gateway.ble.health import DeviceHealth, HealthTable
from gateway.ble.parsed import Kind
from gateway.ble.reasons import BadReason, DuplicateReason
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import check_id

ALERT_EVERY_S = 600.0
MAX_PENDING_ALERTS = 256


@dataclass(frozen=True, slots=True)
class BleReading:
    """One reading of one BLE device, not yet minted: no boot or seq yet, those are the collector's."""

    device_id: str
    address: str
    kind: Kind
    ts_ms: int
    metrics: dict[str, float]
    units: dict[str, str]
    adapter: str
    rssi: int
    events: tuple[str, ...] = ()
    model: str | None = None
    firmware: str | None = None
    encrypted: bool = False

    def __post_init__(self) -> None:
        check_id("device", self.device_id)
        if not (self.metrics or self.events):
            raise ValidationError(Reason.INVALID_VALUE, "metrics", "a BLE reading needs a metric or an event")
        for name, value in self.metrics.items():
            check_id(f"metrics.{name[:40]}", name)
            if not math.isfinite(value):
                raise ValidationError(Reason.NON_FINITE, f"metrics.{name}", f"{value} is not finite")
        if self.ts_ms <= 0:
            raise ValidationError(Reason.INVALID_VALUE, "ts_ms", f"{self.ts_ms} is not a positive epoch time")


@dataclass(frozen=True, slots=True)
class DowngradeAlert:
    device_id: str
    address: str
    ts_ms: int
    adapter: str
    detail: str


@dataclass(slots=True)
class IntakeCounts:
    heard: int = 0
    not_sensors: int = 0
    readings: int = 0
    duplicates: Counter[DuplicateReason] = field(default_factory=Counter)
    bad: Counter[BadReason] = field(default_factory=Counter)
    alerts: int = 0
    alerts_held_back: int = 0

    def status(self) -> dict[str, object]:
        return {
            "heard": self.heard,
            "not_sensors": self.not_sensors,
            "readings": self.readings,
            "duplicates": {reason.value: count for reason, count in sorted(self.duplicates.items())},
            "bad_input": {reason.value: count for reason, count in sorted(self.bad.items())},
            "alerts": self.alerts,
            "alerts_held_back": self.alerts_held_back,
        }


class Intake:
    def __init__(
        self,
        decoder: Decoder | None = None,
        *,
        repeats: RepeatFilter | None = None,
        sequences: SequenceFilter | None = None,
        health: HealthTable | None = None,
        alert_every_s: float = ALERT_EVERY_S,
    ) -> None:
        self.decoder = decoder or Decoder()
        self.repeats = repeats or RepeatFilter()
        self.sequences = sequences or SequenceFilter()
        self.health = health or HealthTable()
        self.counts = IntakeCounts()
        self.alert_every_s = alert_every_s
        self._alerts: deque[DowngradeAlert] = deque(maxlen=MAX_PENDING_ALERTS)
        # Only a device with a bindkey can downgrade, so this holds at most the configured ones.
        self._last_alert_s: dict[str, float] = {}

    def accept(self, advertisement: Advertisement) -> BleReading | None:
        self.counts.heard += 1
        kind = kind_of(advertisement)
        if kind is None:
            self.counts.not_sensors += 1
            return None
        device = self.health.heard(advertisement, kind)
        if self.repeats.is_repeat(advertisement):
            self._duplicate(device, DuplicateReason.REPEAT)
            return None
        parsed = self.decoder.decode(advertisement, kind)
        if parsed.duplicate is not None:
            self._duplicate(device, parsed.duplicate)
            return None
        if parsed.bad is not None:
            self._bad(device, parsed.bad, advertisement)
            return None
        if parsed.sequence is not None and self.sequences.is_duplicate(
            advertisement.address, parsed.sequence, advertisement.time_s
        ):
            self._duplicate(device, DuplicateReason.SEQUENCE)
            return None
        device.readings += 1
        self.counts.readings += 1
        return BleReading(
            device_id=device.device_id,
            address=advertisement.address,
            kind=kind,
            ts_ms=round(advertisement.time_s * 1000),
            metrics=parsed.metrics,
            units=parsed.units,
            adapter=advertisement.adapter,
            rssi=advertisement.rssi,
            events=parsed.events,
            model=parsed.model,
            firmware=parsed.firmware,
            encrypted=parsed.encrypted,
        )

    def take_alerts(self) -> list[DowngradeAlert]:
        """The downgrade alerts queued since the last call, oldest first."""
        alerts = list(self._alerts)
        self._alerts.clear()
        return alerts

    def status(self, now_s: float) -> dict[str, object]:
        return {"counts": self.counts.status(), "devices": self.health.status(now_s)}

    def _duplicate(self, device: DeviceHealth, reason: DuplicateReason) -> None:
        device.duplicates[reason] += 1
        self.counts.duplicates[reason] += 1

    def _bad(self, device: DeviceHealth, reason: BadReason, advertisement: Advertisement) -> None:
        device.bad[reason] += 1
        self.counts.bad[reason] += 1
        if reason is BadReason.DOWNGRADE:
            self._alert(device, advertisement)

    def _alert(self, device: DeviceHealth, advertisement: Advertisement) -> None:
        last = self._last_alert_s.get(device.address)
        if last is not None and abs(advertisement.time_s - last) < self.alert_every_s:
            self.counts.alerts_held_back += 1
            return
        self._last_alert_s[device.address] = advertisement.time_s
        self.counts.alerts += 1
        self._alerts.append(
            DowngradeAlert(
                device_id=device.device_id,
                address=device.address,
                ts_ms=round(advertisement.time_s * 1000),
                adapter=advertisement.adapter,
                detail="plaintext BTHome advertisement from a device with a bindkey: refused",
            )
        )
