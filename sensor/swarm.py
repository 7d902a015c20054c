"""A swarm: many simulated devices in one sensor process, for a test lab (the config's `[swarm]`).

Each device is a whole sensor, built by `sensor.device.open_device` as the single sensor is: its
own boot id, seq, spool (in `state_dir/<device>/spool`), sender with the same end-to-end
confirmations, MQTT session (its own client id, under the swarm host's one credential) and status
file (instance = its device id, so `saltmarsh status` and the audit see every device).

What the devices share is what would cost per device for nothing: the interpreter, one status
thread that rewrites every device's status file in turn (a single sensor has a thread of its
own), and the wait for the last spools to empty at the end of a bounded run. Their ticks are
spread over one interval, so that fifty devices at 1 Hz make a steady fifty spool commits a
second rather than a burst of fifty every second.

Stops as the single sensor does, for every device: on SIGTERM no more readings, a few seconds
(in all, not per device) to flush, "offline", a last status write; `max_readings` is per device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from saltmarsh.config.sensor import SensorConfig, device_configs
from saltmarsh.runtime.status import StatusPublisher
from sensor.commands import EXIT_RESTART, CommandInbox, command_inbox
from sensor.device import Device, deliver, flush, open_device

log = logging.getLogger("sensor")

EXIT_OK = 0
EXIT_FAILED = 1
STATUS_INTERVAL_S = 1.0  # as a single sensor's StatusPublisher
CLOSE_WORKERS = 16  # each close waits up to seconds for an offline PUBACK: not one after another


class StatusRounds:
    """One thread that rewrites each device's status file every `interval_s`, if it changed.

    The same StatusPublisher a single sensor runs, driven from here instead of a thread each:
    the heartbeat and metrics intervals are its own.
    """

    def __init__(self, publishers: Sequence[StatusPublisher], interval_s: float = STATUS_INTERVAL_S) -> None:
        self.publishers = publishers
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swarm-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for publisher in self.publishers:
                try:
                    publisher.write(only_if_changed=True)
                except OSError as err:
                    # One device's full or vanished status directory must not stop the others' files.
                    log.warning(
                        "status file not written",
                        extra={"event": "status_write_failed", "device": publisher.instance, "why": repr(err)},
                    )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _open_all(members: Sequence[SensorConfig], stop: threading.Event, inbox: CommandInbox | None) -> list[Device]:
    devices: list[Device] = []
    try:
        for member in members:
            devices.append(open_device(member, stop, inbox=inbox))
    except BaseException:
        for device in devices:
            device.close()
        raise
    return devices


class Producers:
    """Each device's reading loop (`Agent.produce`, as a single sensor runs it) on a thread of its
    own, started a share of one interval after the one before, so the spool commits come steadily.

    A thread each, not one for all: each tick ends in a synchronous spool commit, and one thread
    would wait for every device's fsync in turn (measured: no cheaper at 50 devices either).
    """

    def __init__(self, devices: Sequence[Device], stop: threading.Event) -> None:
        self.stop = stop
        self.failed: list[str] = []
        spread_s = devices[0].cfg.interval_s / len(devices) if devices else 0.0
        self._threads = [
            threading.Thread(target=self._produce, args=(d, i * spread_s), name=f"device-{d.cfg.device}", daemon=True)
            for i, d in enumerate(devices)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()  # a signal still runs its handler (POSIX lock waits are interruptible)

    def _produce(self, device: Device, offset_s: float) -> None:
        try:
            if not self.stop.wait(offset_s):
                device.agent.produce(self.stop)
        except Exception:
            # As a single sensor's process would die: the whole swarm stops, flushes and exits 1.
            where = {"event": "device_failed", "device": device.cfg.device}
            log.exception("device failed; stopping the swarm", extra=where)
            self.failed.append(device.cfg.device)
            self.stop.set()


def run(cfg: SensorConfig, stop: threading.Event) -> int:
    """Run every device of `cfg`'s swarm until stopped, or until each has produced and delivered
    its `max_readings`. Returns the exit code."""
    members = device_configs(cfg)
    restarting = threading.Event()
    inbox = command_inbox(cfg, stop, restarting)
    devices = _open_all(members, stop, inbox)
    log.info(
        "swarm starting",
        extra={
            "event": "swarm_started",
            "host": cfg.device,
            "site": cfg.site,
            "devices": len(devices),
            "first": members[0].device,
            "last": members[-1].device,
            "interval_s": cfg.interval_s,
            "backlog": sum(d.spool.stats().depth_messages for d in devices),
        },
    )
    for device in devices:
        log.info(
            "sensor starting",
            extra={"event": "started", "device": device.cfg.device, "site": cfg.site, "boot": device.boot},
        )
    rounds = StatusRounds([d.status for d in devices])
    producers = Producers(devices, stop)
    try:
        for device in devices:
            device.start(status_thread=False)
        rounds.start()
        if inbox is not None:
            inbox.start()
        producers.start()
        producers.join()
        deliver(devices, stop)
        flush(devices)
    finally:
        if inbox is not None:
            inbox.close()
        rounds.stop()
        finals = _close_all(devices)
    for final in finals:
        summary = {k: final[k] for k in ("device", "boot", "last_seq", "acked_total", "spool_depth")}
        log.info("sensor stopped", extra={"event": "stopped", **summary})
    log.info(
        "swarm stopped",
        extra={
            "event": "swarm_stopped",
            "host": cfg.device,
            "devices": len(finals),
            "readings_total": sum(int(f["readings_total"]) for f in finals),
            "alerts_total": sum(int(f["alerts_total"]) for f in finals),
            "spool_depth": sum(int(f["spool_depth"]) for f in finals),
            "failed": producers.failed,
        },
    )
    if producers.failed:
        return EXIT_FAILED
    return EXIT_RESTART if restarting.is_set() else EXIT_OK


def _close_all(devices: Sequence[Device]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(CLOSE_WORKERS, len(devices)), thread_name_prefix="close") as pool:
        return list(pool.map(Device.close, devices))
