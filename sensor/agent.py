"""The reading loop: driver sample -> envelope (and its threshold alerts) -> durable spool append, once per interval.

A reading exists once it is in the spool: the append is a synchronous SQLite commit, and `seq`
advances only after it succeeds. A reading that crosses a threshold (`sensor.alerts`) brings its
alerts with it: they take the seqs after the reading's (one sequence per device and boot, so the
audit counts them too) and go into the KEEP lane, never evicted, in the same append, one
transaction: the reading and its alerts are spooled together or not at all. So `last_seq` is
exactly how many readings and alerts this boot produced.
Sending is someone else's job (`sender.SpoolSender`); the agent only says "there is more".

A command's outcome (`spool_outcome`) is spooled the same way, as a `cmdres` envelope with the
next seq, in the KEEP lane: a result is never evicted. Commands run on another thread than the
reading loop (`sensor.commands`), so minting and spooling hold the agent's lock: one seq, one
order. `set_interval` takes effect at once, not after the old interval ran out.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial

from saltmarsh.config.sensor import SensorConfig
from saltmarsh.contract.command_state import CommandOutcome
from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.errors import SpoolError, ValidationError
from saltmarsh.contract.mint import mint, mint_alert, mint_cmdres
from saltmarsh.runtime.logs import log_oversized
from saltmarsh.runtime.spool import Lane, Record, Spool
from sensor.alerts import Crossing, ThresholdWatch
from sensor.drivers.base import Driver, Sample

log = logging.getLogger(__name__)

RETIME_SLICE_S = 1.0  # a longer wait is cut in slices, so that a new interval applies within one


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
        self.watch = ThresholdWatch(cfg.alerts)
        self.last_seq = 0  # readings and alerts
        self.readings_total = 0
        self.alerts_total = 0
        self.spool_errors = 0
        # Refused before they get a seq, readings and alerts alike: the contract refused them (a
        # driver's bad metric name or value), or they are larger than max_message_bytes.
        self.invalid_total = 0
        self.oversized_total = 0
        self.outcomes_total = 0
        self.interval_s = cfg.interval_s  # set_interval changes it while running
        self._lock = threading.Lock()
        self._retimed = threading.Event()

    @property
    def done(self) -> bool:
        """No more readings will come: `max_readings` reached or the source ran dry."""
        reached = self.cfg.max_readings > 0 and self.readings_total >= self.cfg.max_readings
        return reached or self.driver.exhausted

    def tick(self, now_s: float) -> Envelope | None:
        """Read once and spool the reading with its alerts; None if the driver had nothing or it was refused."""
        with self._lock:
            return self._tick(now_s)

    def set_interval(self, interval_s: float) -> float:
        """A new interval between readings, from the next wait on; returns the one it replaces."""
        with self._lock:
            was, self.interval_s = self.interval_s, interval_s
        self._retimed.set()
        log.info("interval changed", extra={"event": "interval_changed", "interval_s": interval_s, "was_s": was})
        return was

    def spool_outcome(self, outcome: CommandOutcome, now_s: float) -> Envelope | None:
        """Spool a command's outcome as this device's next `cmdres` message; None if it could not be.

        Not spooled, it is not lost: the gateway keeps the command until a final outcome
        arrives and delivers it again, and the journal answers with the same result.
        """
        with self._lock:
            seq, ts_ms = self.last_seq + 1, int(now_s * 1000)
            minted = self._checked("cmdres", partial(self._mint_cmdres, outcome, seq, ts_ms))
            if minted is None or not self._append([(Lane.KEEP, [minted[1]])]):
                return None
            self.last_seq = seq
            self.outcomes_total += 1
        self.on_spooled()
        return minted[0]

    def _mint_cmdres(self, outcome: CommandOutcome, seq: int, ts_ms: int) -> Envelope:
        cfg = self.cfg
        return mint_cmdres(device=cfg.device, site=cfg.site, boot=self.boot, seq=seq, ts_ms=ts_ms, outcome=outcome)

    def _append(self, batches: list[tuple[Lane, list[Record]]]) -> bool:
        try:
            self.spool.append(batches)
        except (SpoolError, OSError, sqlite3.Error) as err:
            # A full or failing disk must not kill the agent; what was to be spooled is lost and
            # `seq` does not advance, so the audit shows fewer messages rather than a gap.
            self.spool_errors += 1
            log.error("spool append failed", extra={"event": "spool_append_failed", "why": str(err)})
            return False
        return True

    def _tick(self, now_s: float) -> Envelope | None:
        sample = self.driver.read(now_s)
        if sample is None or not sample.metrics:
            return None
        ts_ms = int(now_s * 1000)
        minted = self._checked("reading", partial(self._mint_reading, sample, self.last_seq + 1, ts_ms))
        if minted is None:
            return None
        reading, reading_record = minted
        check = self.watch.check(reading.metrics)
        alerts: list[Envelope] = []
        alert_records: list[Record] = []
        for crossing in check.crossings:
            seq = reading.seq + len(alerts) + 1
            minted = self._checked("alert", partial(self._mint_alert, crossing, sample.units, seq, ts_ms))
            if minted is not None:
                alerts.append(minted[0])
                alert_records.append(minted[1])
        batches = [(Lane.BULK, [reading_record])]
        if alert_records:
            batches.append((Lane.KEEP, alert_records))
        if not self._append(batches):
            # The thresholds stay as they were: the next reading beyond raises the lost alert again.
            return None
        self.last_seq = alerts[-1].seq if alerts else reading.seq
        self.readings_total += 1
        self.alerts_total += len(alerts)
        # Adopted even when an alert was refused: it would be refused again, on every reading.
        self.watch.commit(check)
        for alert in alerts:
            extra = {"event": "alert_raised", "alert": alert.name, "seq": alert.seq, "alerts_total": self.alerts_total}
            log.info("alert: %s", alert.detail, extra=extra)
        self.on_spooled()
        return reading

    def _mint_reading(self, sample: Sample, seq: int, ts_ms: int) -> Envelope:
        cfg = self.cfg
        return mint(
            device=cfg.device,
            site=cfg.site,
            boot=self.boot,
            seq=seq,
            ts_ms=ts_ms,
            metrics=sample.metrics,
            units=sample.units,
            model=cfg.model,
            firmware=cfg.firmware,
            location=cfg.location,
        )

    def _mint_alert(self, crossing: Crossing, units: Mapping[str, str], seq: int, ts_ms: int) -> Envelope:
        cfg = self.cfg
        return mint_alert(
            device=cfg.device,
            site=cfg.site,
            boot=self.boot,
            seq=seq,
            ts_ms=ts_ms,
            name=crossing.name,
            metrics=crossing.metrics,
            units=crossing.units(units),
            detail=crossing.detail,
            model=cfg.model,
            firmware=cfg.firmware,
            location=cfg.location,
        )

    def _checked(self, what: str, make: Callable[[], Envelope]) -> tuple[Envelope, Record] | None:
        """The envelope `make` mints and its spool record; None, counted and logged, if it is refused."""
        try:
            envelope = make()
        except ValidationError as err:
            # Refused before it has a seq, like the oversized below: the audit sees no gap.
            self.invalid_total += 1
            log.error("%s refused", what, extra={"event": f"{what}_invalid", "why": str(err)})
            return None
        topic, payload = str(envelope.topic), envelope.encode()
        if len(payload) > self.cfg.max_message_bytes:
            # Every broker and the ingester would refuse it, and the sender would retry it for ever.
            self.oversized_total += 1
            log_oversized(
                log,
                refused=f"{what} refused",
                event=f"{what}_oversized",
                topic=topic,
                size_bytes=len(payload),
                limit=self.cfg.max_message_bytes,
                total=self.oversized_total,
            )
            return None
        return envelope, (topic, payload)

    def produce(self, stop: threading.Event) -> None:
        """Tick on schedule until stopped or done. Late ticks are not made up in a burst."""
        due = time.monotonic()
        while not stop.is_set() and not self.done:
            self.tick(time.time())
            if self.done:
                break
            delay = self.driver.next_delay_s(self.interval_s)
            due += delay
            now = time.monotonic()
            if due < now - delay:
                due = now
            due = self._wait_until(due, stop)
        if self.driver.exhausted and not stop.is_set():
            log.info("driver has no more readings", extra={"event": "driver_exhausted", "last_seq": self.last_seq})

    def _wait_until(self, due: float, stop: threading.Event) -> float:
        """Sleep until `due` or until stopped; a new interval cuts the wait short. Returns the due time kept."""
        while not stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, RETIME_SLICE_S))
            if self._retimed.is_set():
                self._retimed.clear()
                return time.monotonic()  # read now, then on the new interval
        return due
