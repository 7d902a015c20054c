"""The reading loop: driver sample -> envelope -> durable spool append, once per interval.

A reading exists once it is in the spool: the append is a synchronous SQLite commit, and `seq`
advances only after it succeeds, so `last_seq` is exactly how many readings this boot produced.
Sending is someone else's job (`sender.SpoolSender`); the agent only says "there is more".
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from saltmarsh.config.sensor import SensorConfig
from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.errors import SpoolError, ValidationError
from saltmarsh.contract.mint import mint
from saltmarsh.runtime.logs import log_oversized
from saltmarsh.runtime.spool import Lane, Spool
from sensor.drivers.base import Driver

log = logging.getLogger(__name__)


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
        self.invalid_total = 0  # readings the contract refused (a driver's bad metric name or value)
        self.oversized_total = 0  # readings larger than max_message_bytes

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
        try:
            envelope = mint(
                device=self.cfg.device,
                site=self.cfg.site,
                boot=self.boot,
                seq=self.last_seq + 1,
                ts_ms=int(now_s * 1000),
                metrics=sample.metrics,
                units=sample.units,
                model=self.cfg.model,
                firmware=self.cfg.firmware,
                location=self.cfg.location,
            )
        except ValidationError as err:
            # Refused before it has a seq, like the oversized below: the audit sees no gap.
            self.invalid_total += 1
            log.error("reading refused", extra={"event": "reading_invalid", "why": str(err)})
            return None
        topic, payload = str(envelope.topic), envelope.encode()
        if len(payload) > self.cfg.max_message_bytes:
            # Every broker and the ingester would refuse it, and the sender would retry it for ever.
            self.oversized_total += 1
            log_oversized(
                log,
                refused="reading refused",
                event="reading_oversized",
                topic=topic,
                size_bytes=len(payload),
                limit=self.cfg.max_message_bytes,
                total=self.oversized_total,
            )
            return None
        try:
            self.spool.append([(Lane.BULK, [(topic, payload)])])
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
