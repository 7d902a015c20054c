"""The reading loop: driver sample -> envelope -> durable spool append, once per interval.

A reading exists once it is in the spool: the append is a synchronous SQLite commit, and `seq`
advances only after it succeeds, so `last_seq` is exactly how many readings this boot produced.
Sending is someone else's job (`sender.SpoolSender`); the agent only says "there is more".
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable

from saltmarsh.config.sensor import SensorConfig
from saltmarsh.envelope import Envelope
from saltmarsh.errors import SpoolError
from saltmarsh.spool import Lane, Spool
from saltmarsh.topics import Channel
from sensor.drivers.base import Driver, Sample

log = logging.getLogger(__name__)


def new_boot_id(now_s: float | None = None) -> str:
    """Hex boot time, then randomness: unique per start and sortable by when the agent started."""
    started = int(time.time() if now_s is None else now_s)
    return f"{started:x}-{secrets.token_hex(4)}"


def mint(cfg: SensorConfig, boot: str, seq: int, ts_ms: int, sample: Sample) -> Envelope:
    return Envelope(
        kind=Channel.READING,
        device=cfg.device,
        site=cfg.site,
        boot=boot,
        seq=seq,
        ts_ms=ts_ms,
        metrics=dict(sample.metrics),
        units=dict(sample.units),
        model=cfg.model,
        firmware=cfg.firmware,
        location=cfg.location,
    )


class Agent:
    def __init__(
        self,
        cfg: SensorConfig,
        driver: Driver,
        spool: Spool,
        boot: str,
        on_spooled: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.spool = spool
        self.boot = boot
        self.on_spooled = on_spooled
        self.last_seq = 0
        self.spool_errors = 0

    @property
    def done(self) -> bool:
        """No more readings will come: `max_readings` reached or the source ran dry."""
        reached = self.cfg.max_readings > 0 and self.last_seq >= self.cfg.max_readings
        return reached or self.driver.exhausted

    def tick(self, now_s: float) -> Envelope | None:
        """Read once and spool the reading; None if the driver had nothing or the disk refused it."""
        sample = self.driver.read(now_s)
        if sample is None or not sample.metrics:
            return None
        envelope = mint(self.cfg, self.boot, self.last_seq + 1, int(now_s * 1000), sample)
        try:
            self.spool.append([(Lane.BULK, [(str(envelope.topic), envelope.encode())])])
        except (SpoolError, OSError, sqlite3.Error) as err:
            # A full or failing disk must not kill the agent; the reading is lost, `seq` does not
            # advance, so the audit shows fewer readings rather than a gap.
            self.spool_errors += 1
            log.error("spool append failed", extra={"event": "spool_append_failed", "why": str(err)})
            return None
        self.last_seq = envelope.seq
        self.on_spooled()
        return envelope

    def produce(self, stop: threading.Event) -> None:
        """Tick on schedule until stopped or done. Late ticks are not made up in a burst."""
        due = time.monotonic()
        while not stop.is_set() and not self.done:
            self.tick(time.time())
            if self.done:
                break
            delay = self.driver.next_delay_s(self.cfg.interval_s)
            due += delay
            now = time.monotonic()
            if due < now - delay:
                due = now
            stop.wait(max(0.0, due - now))
        if self.driver.exhausted and not stop.is_set():
            log.info("driver has no more readings", extra={"event": "driver_exhausted", "last_seq": self.last_seq})
