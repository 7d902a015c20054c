"""`saltmarsh-sensor --config sensor.toml`: wires driver -> agent -> spool -> sender, and the status file.

Stops on SIGTERM or SIGINT: no more readings, a few seconds to flush, "offline", a last status
write (after the last spool append, so the audit's `last_seq` is final), exit 0.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from saltmarsh.config import SensorConfig, load_sensor_config
from saltmarsh.contract.errors import ConfigError
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.runtime.daemon import serve
from saltmarsh.runtime.spool import Spool
from saltmarsh.runtime.status import StatusPublisher
from sensor.agent import Agent
from sensor.drivers import Driver, DriverError, open_driver
from sensor.sender import SpoolSender

log = logging.getLogger("sensor")

SERVICE = "sensor"
FLUSH_TIMEOUT_S = 3.0
DRAIN_POLL_S = 0.1
EXIT_OK = 0
EXIT_CANNOT_START = 2
# One small reading per commit: small pages keep what each commit writes to an SD card small
# (saltmarsh.runtime.spool._create_with_page_size).
SPOOL_PAGE_SIZE = 1024


def counters(agent: Agent, sender: SpoolSender, spool: Spool) -> dict[str, Any]:
    stats = spool.stats()
    now_ms = int(time.time() * 1000)
    oldest_age_s = 0.0 if stats.oldest_spooled_ms is None else max(0.0, (now_ms - stats.oldest_spooled_ms) / 1000)
    return {
        "device": agent.cfg.device,
        "site": agent.cfg.site,
        "driver": agent.cfg.driver.type,
        "boot": agent.boot,
        "last_seq": agent.last_seq,
        "readings_total": agent.last_seq,
        "read_failures": agent.driver.counters.failures,
        "read_retries": agent.driver.counters.retries,
        "spool_errors": agent.spool_errors,
        "invalid_total": agent.invalid_total,
        "oversized_total": agent.oversized_total,
        "spool_depth": stats.depth_messages,
        "spool_bytes": stats.depth_bytes,
        "spool_evicted": stats.evicted_messages,
        "quarantined": stats.quarantined,
        "salvaged_total": stats.salvaged,
        "oldest_unsent_age_s": round(oldest_age_s, 3),
        "acked_total": sender.acked_total,
        "rejected_total": sender.rejected_total,
        "in_flight": sender.in_flight,
        "acknowledgement": agent.cfg.confirmations.mode.value,
        "unconfirmed": sender.unconfirmed.count,
        "oldest_unconfirmed_age_s": _age_s(sender.unconfirmed.oldest_first_sent),
        "confirmed_total": sender.unconfirmed.confirmed_total,
        "resent_total": sender.unconfirmed.resent_total,
        "bad_confirmations_total": sender.unconfirmed.bad_total,
        "connected": sender.connected,
        "connects": sender.connects,
        "publish_rate": sender.publish_rate(),
    }


def _age_s(monotonic_at: float | None) -> float:
    return 0.0 if monotonic_at is None else round(max(0.0, time.monotonic() - monotonic_at), 3)


def _spool_empty(spool: Spool) -> bool:
    return spool.stats().depth_messages == 0


def run(cfg: SensorConfig, stop: threading.Event | None = None, driver: Driver | None = None) -> int:
    """Run until stopped, or until `max_readings` are produced and delivered. Returns the exit code."""
    stop = stop or threading.Event()
    boot = new_boot_id()
    driver = driver or open_driver(cfg.driver, wait=stop.wait)
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes, page_size=SPOOL_PAGE_SIZE)
    sender = SpoolSender(cfg, spool, boot)
    agent = Agent(cfg, driver, spool, boot, on_spooled=sender.notify)
    status = StatusPublisher(
        cfg.status_dir, SERVICE, cfg.device, lambda: counters(agent, sender, spool), metrics_dir=cfg.metrics_dir
    )
    backlog = spool.stats()
    log.info(
        "sensor starting",
        extra={
            "event": "started",
            "device": cfg.device,
            "site": cfg.site,
            "boot": boot,
            "driver": cfg.driver.type,
            "interval_s": cfg.interval_s,
            "backlog": backlog.depth_messages,
        },
    )
    try:
        status.start()
        sender.start()
        agent.produce(stop)
        # Done producing on our own: keep delivering until the spool is empty or we are told to stop.
        while not stop.is_set() and not _spool_empty(spool):
            stop.wait(DRAIN_POLL_S)
        if sender.connected:
            deadline = time.monotonic() + FLUSH_TIMEOUT_S
            while time.monotonic() < deadline and not _spool_empty(spool):
                time.sleep(DRAIN_POLL_S)
    finally:
        sender.close()
        driver.close()
        status.stop()
        final = counters(agent, sender, spool)
        spool.close()
    log.info(
        "sensor stopped",
        extra={"event": "stopped", **{k: final[k] for k in ("boot", "last_seq", "acked_total", "spool_depth")}},
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return serve(
        prog="saltmarsh-sensor",
        service=SERVICE,
        description="Read a sensor and send to the gateway.",
        argv=argv,
        load=load_sensor_config,
        run=run,
        cannot_start=(ConfigError, DriverError),
    )
