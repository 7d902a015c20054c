"""The collector's event-loop side: advertisements in, minted envelopes in the spool out.

    on_advertisement   roster (unknown devices counted, not ingested) -> intake (decode, dedup,
                       health) -> a pending reading, its events, a downgrade alert
    tick               every COMMIT_S: what is pending is minted and spooled in one transaction,
                       then the sender is told; every CHECK_S: stale devices raise a `stale`
                       event, new decrypt failures are logged, and the status snapshot is taken

Everything here runs on the one asyncio thread that also runs the scan backend's callbacks, so
there are no locks; the status thread reads only `snapshot`, a finished dict.

The collector's clock is the newest advertisement time it has heard, or the wall clock if that
is later: a replay paced faster than real time keeps its own clock, and staleness is judged on
the recording's time, not the wall's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.ble.advertisement import Advertisement
from gateway.ble.decode import kind_of
from gateway.ble.intake import BleReading, Intake
from gateway.ble.minter import Minter, Pending
from gateway.ble.roster import Roster
from gateway.ble.stale import StaleWatch
from gateway.ble.supervise import ScanState, ScanStatus
from saltmarsh.config.ble import BleDeviceConfig
from saltmarsh.contract.topics import Channel

log = logging.getLogger(__name__)

# One spool commit gathers this long: an SD card's fsync per advertisement would not keep up, and
# a thermometer that reports every few seconds or minutes loses nothing by waiting a quarter second.
COMMIT_S = 0.25
CHECK_S = 1.0
DOWNGRADE_ALERT = "ble_downgrade"
STALE_EVENT = "stale"


class Collector:
    def __init__(
        self,
        intake: Intake,
        roster: Roster,
        minter: Minter,
        stale: StaleWatch,
        *,
        notify: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.intake = intake
        self.roster = roster
        self.minter = minter
        self.stale = stale
        self.notify = notify
        self._clock = clock
        self.newest_s = 0.0
        self.scan = ScanStatus(ScanState.STARTING)
        self.snapshot: dict[str, Any] = {}
        self._next_check = 0.0
        self._failures_logged: dict[str, int] = {}

    def now_s(self) -> float:
        return max(self._clock(), self.newest_s)

    def report(self, status: ScanStatus) -> None:
        self.scan = status

    def on_advertisement(self, advertisement: Advertisement) -> None:
        self.newest_s = max(self.newest_s, advertisement.time_s)
        kind = kind_of(advertisement)
        device = None
        if kind is not None:
            device = self.roster.admit(advertisement, kind)
            if device is None:
                return
        reading = self.intake.accept(advertisement)
        if reading is not None and device is not None:
            self._add_reading(reading, device)
        for alert in self.intake.take_alerts():
            self.minter.add(
                Pending(
                    alert.device_id, alert.ts_ms, {}, {}, kind=Channel.ALERT, name=DOWNGRADE_ALERT, detail=alert.detail
                )
            )

    def _add_reading(self, reading: BleReading, device: BleDeviceConfig) -> None:
        heard = Pending(
            reading.device_id,
            reading.ts_ms,
            reading.metrics,
            reading.units,
            model=reading.model,
            firmware=reading.firmware,
            location=device.location,
        )
        if reading.metrics:
            self.minter.add(heard)
        for event in reading.events:
            self.minter.add(replace(heard, metrics={}, units={}, kind=Channel.EVENT, name=event))

    def tick(self) -> None:
        """Commit what is pending; once a CHECK_S, look for stale devices and refresh the snapshot."""
        monotonic = time.monotonic()
        if monotonic >= self._next_check:
            self._next_check = monotonic + CHECK_S
            self._check(self.now_s())
        if self.minter.commit():
            self.notify()

    def _check(self, now_s: float) -> None:
        health = self.intake.health
        devices = []
        for mac, device in self.roster.devices.items():
            seen = health.get(mac)
            devices.append((mac, device.expected_interval_s, None if seen is None else seen.last_seen_s))
        for stale in self.stale.check(now_s, devices):
            device_id = self.roster.devices[stale.mac].device_id
            log.warning(
                "ble device %s (%s) is stale: %s",
                stale.mac,
                device_id,
                stale.detail,
                extra={"event": "ble_stale", "device": device_id, "mac": stale.mac, "unseen_s": round(stale.unseen_s)},
            )
            metrics = {"unseen_s": round(stale.unseen_s, 1), "limit_s": round(stale.limit_s, 1)}
            self.minter.add(
                Pending(
                    device_id,
                    round(now_s * 1000),
                    metrics,
                    {"unseen_s": "s", "limit_s": "s"},
                    kind=Channel.EVENT,
                    name=STALE_EVENT,
                    detail=stale.detail,
                )
            )
        self._log_decrypt_failures()
        self.refresh(now_s)

    def refresh(self, now_s: float | None = None) -> None:
        """A new status snapshot (the status thread reads only this)."""
        self.snapshot = self._snapshot(self.now_s() if now_s is None else now_s)

    def _log_decrypt_failures(self) -> None:
        for mac in self.roster.devices:
            seen = self.intake.health.get(mac)
            if seen is None or seen.decrypt_failures <= self._failures_logged.get(mac, 0):
                continue
            self._failures_logged[mac] = seen.decrypt_failures
            reasons = {r.value: n for r, n in seen.bad.items() if r.is_decrypt_failure}
            log.warning(
                "ble device %s: %d advertisements could not be decrypted (%s)",
                mac,
                seen.decrypt_failures,
                ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())),
                extra={"event": "ble_decrypt_failed", "mac": mac, "decrypt_failures": seen.decrypt_failures},
            )

    def _snapshot(self, now_s: float) -> dict[str, Any]:
        health = self.intake.health.status(now_s)
        last_seq = self.minter.last_seq
        devices: dict[str, Any] = {}
        for mac, device in sorted(self.roster.devices.items()):
            heard = health.get(device.device_id, {})
            devices[device.device_id] = {
                "mac": mac,
                "kind": device.kind,
                "place": device.place,
                "last_seq": last_seq.get(device.device_id, 0),
                "stale": mac in self.stale.stale,
                "expected_interval_s": device.expected_interval_s,
                **{k: v for k, v in heard.items() if k not in ("address", "kind")},
            }
        counts = self.minter.counts
        return {
            "ble": self.scan.message,
            "scan_state": self.scan.state.value,
            "scan_failures": self.scan.failures,
            "scan_retry_in_s": self.scan.retry_in_s,
            "boot": self.minter.boot,
            "devices": devices,
            "ble_unknown_devices": self.roster.unknown_status(now_s),
            "unknown_heard": self.roster.unknown_heard,
            "unknown_not_listed": self.roster.unknown_not_listed,
            "stale_devices": sorted(self.roster.devices[mac].device_id for mac in self.stale.stale),
            "stale_events_total": self.stale.raised,
            "intake": self.intake.counts.status(),
            "readings_total": counts.readings,
            "events_total": counts.events,
            "alerts_total": counts.alerts,
            "invalid_total": counts.invalid,
            "oversized_total": counts.oversized,
            "spool_errors": counts.spool_errors,
        }
