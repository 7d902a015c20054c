"""`saltmarsh-ble --config ble.toml`: the gateway's BLE collector, wired.

    scan backend (bleak, or a replay) --keep_scanning--> Collector.on_advertisement
    Collector.tick --Minter.commit--> spool --SpoolSender--> site broker --> forwarder
    forwarder --ack, per device--> SpoolSender: the spool lets go of what is confirmed

The collector is one sender on the site broker for all of its devices: one boot, one spool, one
MQTT session under its own credential (the site ACL lets it publish as its pillar's devices and
no other), and each device's own topics and sequence. It deletes from its spool only on the
forwarder's confirmation, as a sensor agent does (`sensor.sender.SpoolSender`, reused).

Without Bluetooth (no D-Bus system bus, no adapter), the scan fails at once: `keep_scanning`
reports `ble: unavailable (...)` in the status and the log and retries with backoff, and the
rest of the collector (and the gateway's forwarder, another process) goes on as before.

Stops on SIGTERM: the scan stops, what is pending is spooled, a few seconds to deliver,
"offline", a last status write, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from gateway.ble.backend import ScanBackend
from gateway.ble.bleak_backend import BleakBackend
from gateway.ble.collector import COMMIT_S, Collector
from gateway.ble.decode import Decoder
from gateway.ble.intake import Intake
from gateway.ble.minter import Minter
from gateway.ble.replay import ReplayBackend
from gateway.ble.roster import Roster
from gateway.ble.stale import StaleWatch
from gateway.ble.supervise import keep_scanning
from saltmarsh.config.ble import BleConfig, load_ble_config
from saltmarsh.contract.errors import ConfigError, ReplayError
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.runtime.daemon import serve
from saltmarsh.runtime.spool import Spool
from saltmarsh.runtime.status import StatusPublisher
from sensor.device import FLUSH_TIMEOUT_S, SPOOL_PAGE_SIZE, delivery_counters
from sensor.sender import SpoolSender

SERVICE = "ble"
STOP_POLL_S = 0.2
# The forwarder confirms each device on its own ack topic: one spool delete per quarter second
# for all of them, rather than one per confirmation (at 200 devices, tens a second).
RELEASE_EVERY_S = 0.25

log = logging.getLogger("ble")


def open_backend(cfg: BleConfig) -> ScanBackend:
    scan = cfg.scan
    if scan.backend == "replay":
        assert scan.replay_file is not None  # ScanConfig requires it
        return ReplayBackend.from_file(
            scan.replay_file,
            speed=scan.replay_speed or None,
            rebase=True,
            start_at=scan.replay_start_s or None,
        )
    return BleakBackend(scan.adapters, "passive" if scan.passive else "active")


def open_collector(cfg: BleConfig, spool: Spool, boot: str, notify: Any) -> Collector:
    bindkeys = {d.mac: key for d in cfg.devices if (key := d.bindkey_bytes) is not None}
    intake = Intake(Decoder(bindkeys))
    roster = Roster(cfg.devices, discovery=cfg.discovery)
    minter = Minter(cfg.site, boot, spool, cfg.max_message_bytes)
    return Collector(intake, roster, minter, StaleWatch(cfg.stale_factor, time.time()), notify=notify)


async def collect(collector: Collector, backend: ScanBackend, stop: threading.Event) -> None:
    """Scan and commit until `stop`; the backend's end (a replay played out) does not stop us."""
    halt = asyncio.Event()
    scanning = asyncio.create_task(keep_scanning(backend, collector.on_advertisement, halt, collector.report))
    try:
        while not stop.is_set():
            collector.tick()
            await asyncio.sleep(COMMIT_S if not scanning.done() or collector.minter.pending else STOP_POLL_S)
    finally:
        halt.set()
        await scanning
        collector.tick()


def run(cfg: BleConfig, stop: threading.Event | None = None, backend: ScanBackend | None = None) -> int:
    stop = stop or threading.Event()
    backend = backend or open_backend(cfg)  # a bad replay file stops us here, before the spool
    boot = new_boot_id()
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes, page_size=SPOOL_PAGE_SIZE)
    sender = SpoolSender(
        cfg.as_sensor(), spool, boot, devices=[d.device_id for d in cfg.devices], release_every_s=RELEASE_EVERY_S
    )
    collector = open_collector(cfg, spool, boot, sender.notify)
    if cfg.discovery:
        collector.roster.on_new = sender.watch

    def counters() -> dict[str, Any]:
        return {"collector": cfg.collector, "site": cfg.site, **collector.snapshot, **delivery_counters(sender, spool)}

    status = StatusPublisher(cfg.status_dir, SERVICE, cfg.collector, counters, metrics_dir=cfg.metrics_dir)
    backlog = spool.stats().depth_messages
    extra = {"event": "started", "collector": cfg.collector, "site": cfg.site, "boot": boot, "backlog": backlog}
    log.info("ble collector starting: %d devices, %s", len(cfg.devices), backend.name, extra=extra)
    collector.tick()
    status.start()
    sender.start()
    try:
        asyncio.run(collect(collector, backend, stop))
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while sender.connected and spool.stats().depth_messages and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sender.close()
        collector.refresh()
        status.stop()
        final = counters()
        spool.close()
    log.info(
        "ble collector stopped",
        extra={"event": "stopped", **{k: final[k] for k in ("boot", "readings_total", "spool_depth")}},
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve(
        prog="saltmarsh-ble",
        service=SERVICE,
        description="Collect BLE sensors (BTHome, RuuviTag) and send their readings to the site broker.",
        argv=argv,
        load=load_ble_config,
        run=run,
        cannot_start=(ConfigError, ReplayError),
    )
