"""One device's parts, wired: driver -> agent -> spool -> sender, and its status counters.

`open_device` is the one place a device is built: the single sensor (`sensor.service`) runs one,
a swarm (`sensor.swarm`) runs many in one process. Each device has its own boot id, minted here,
its own spool, its own sender (and MQTT session) and its own status file, named by its device id.
A device whose config trusts a command key also has a command executor and journal
(`sensor.commands`), fed by the process's one inbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from saltmarsh.commands.executor import CommandExecutor
from saltmarsh.config.sensor import SensorConfig
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.runtime.spool import Spool
from saltmarsh.runtime.status import StatusPublisher
from sensor.agent import Agent
from sensor.commands import CommandInbox, SensorOps, message_delivery, open_commands
from sensor.drivers import Driver, open_driver
from sensor.sender import SpoolSender

SERVICE = "sensor"
FLUSH_TIMEOUT_S = 3.0
DRAIN_POLL_S = 0.1
# One small reading per commit: small pages keep what each commit writes to an SD card small
# (saltmarsh.runtime.spool._create_with_page_size).
SPOOL_PAGE_SIZE = 1024


def counters(
    agent: Agent, sender: SpoolSender, spool: Spool, executor: CommandExecutor | None = None
) -> dict[str, Any]:
    return {
        "device": agent.cfg.device,
        "site": agent.cfg.site,
        "driver": agent.cfg.driver.type,
        "boot": agent.boot,
        "last_seq": agent.last_seq,
        "readings_total": agent.readings_total,
        "alerts_total": agent.alerts_total,
        "read_failures": agent.driver.counters.failures,
        "read_retries": agent.driver.counters.retries,
        "spool_errors": agent.spool_errors,
        "invalid_total": agent.invalid_total,
        "oversized_total": agent.oversized_total,
        **delivery_counters(sender, spool),
        "interval_s": agent.interval_s,
        "outcomes_total": agent.outcomes_total,
    } | ({} if executor is None else executor.status_counters())


def delivery_counters(sender: SpoolSender, spool: Spool) -> dict[str, Any]:
    """The spool and its sender: depth, oldest, in flight, unconfirmed; a sensor's or the BLE collector's."""
    stats = spool.stats()
    now_ms = int(time.time() * 1000)
    oldest_age_s = 0.0 if stats.oldest_spooled_ms is None else max(0.0, (now_ms - stats.oldest_spooled_ms) / 1000)
    return {
        "spool_depth": stats.depth_messages,
        "spool_bytes": stats.depth_bytes,
        "spool_evicted": stats.evicted_messages,
        "quarantined": stats.quarantined,
        "salvaged_total": stats.salvaged,
        "oldest_unsent_age_s": round(oldest_age_s, 3),
        "acked_total": sender.acked_total,
        "rejected_total": sender.rejected_total,
        "in_flight": sender.in_flight,
        "acknowledgement": sender.cfg.confirmations.mode.value,
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


@dataclass(eq=False)
class Device:
    """One device's running parts: `start`, then `agent.produce`, `deliver` and `flush`, then `close`."""

    cfg: SensorConfig
    boot: str
    driver: Driver
    spool: Spool
    sender: SpoolSender
    agent: Agent
    status: StatusPublisher
    executor: CommandExecutor | None = None

    def counters(self) -> dict[str, Any]:
        return counters(self.agent, self.sender, self.spool, self.executor)

    def spool_empty(self) -> bool:
        return self.spool.stats().depth_messages == 0

    def start(self, *, status_thread: bool = True) -> None:
        """Write the first status and connect. Without `status_thread` the caller rewrites the
        status (`status.write(only_if_changed=True)`): a swarm's one thread does it for all."""
        if status_thread:
            self.status.start()
        else:
            self.status.write()
        self.sender.start()

    def close(self) -> dict[str, Any]:
        """Say offline and disconnect, then the last status write, after the last spool append so
        that the audit's `last_seq` is final; returns those last counters."""
        self.sender.close()
        self.driver.close()
        self.status.stop()
        final = self.counters()
        self.spool.close()
        if self.executor is not None:
            self.executor.journal.close()
        return final


def deliver(devices: Sequence[Device], stop: threading.Event) -> None:
    """Done producing on their own: keep delivering until every spool is empty or we are told to stop."""
    while not stop.is_set() and not all(d.spool_empty() for d in devices):
        stop.wait(DRAIN_POLL_S)


def flush(devices: Sequence[Device]) -> None:
    """Stopping: give what is spooled a few seconds in all to go, from each device whose broker is there."""
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    for device in devices:
        if not device.sender.connected:
            continue
        while time.monotonic() < deadline and not device.spool_empty():
            time.sleep(DRAIN_POLL_S)


def _offer(inbox: CommandInbox, executor: CommandExecutor, ops: SensorOps, message: Any) -> None:
    inbox.offer(message_delivery(executor, ops, message))


def open_device(
    cfg: SensorConfig, stop: threading.Event, driver: Driver | None = None, inbox: CommandInbox | None = None
) -> Device:
    """Build one device's parts (nothing is started): its boot id, driver, spool, sender, agent,
    status, and with an `inbox` and a trusted command key, its command executor."""
    boot = new_boot_id()
    driver = driver or open_driver(cfg.driver, wait=stop.wait)
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes, page_size=SPOOL_PAGE_SIZE)
    sender = SpoolSender(cfg, spool, boot)
    agent = Agent(cfg, driver, spool, boot, on_spooled=sender.notify)
    executor = None
    if inbox is not None and cfg.commands.enabled:
        executor, ops = open_commands(cfg, agent)
        inbox.add(executor)
        sender.take_commands(partial(_offer, inbox, executor, ops))
    status = StatusPublisher(
        cfg.status_dir,
        SERVICE,
        cfg.device,
        lambda: counters(agent, sender, spool, executor),
        metrics_dir=cfg.metrics_dir,
    )
    return Device(cfg, boot, driver, spool, sender, agent, status, executor)
