"""Where a BLE device's readings, events and alerts get their `(device, boot, seq)` and reach the spool.

The collector owns the identity of the devices it hears: one boot per start of the collector (a
new ULID, as a sensor agent's), and per device one sequence from 1 within it, shared by its
readings, events and alerts, so the audit finds a lost event as it finds a lost reading. Nothing
is minted until it is committed: what the collector heard waits in `pending`, and `commit` mints
it all and appends it in one spool transaction (readings in the BULK lane, events and alerts in
the never-evicted KEEP lane); each device's seq advances only if that transaction succeeds. So a
restart never reuses an identity (new boot), and a seq that reached the spool is never minted
again within a boot.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

from saltmarsh.contract.envelope import Envelope, Location
from saltmarsh.contract.errors import SpoolError, ValidationError
from saltmarsh.contract.mint import mint, mint_alert
from saltmarsh.contract.topics import Channel
from saltmarsh.runtime.logs import log_oversized
from saltmarsh.runtime.spool import Lane, Record, Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pending:
    """Something heard, not yet minted: a reading (`name` None) or a named event or alert."""

    device: str
    ts_ms: int
    metrics: Mapping[str, float]
    units: Mapping[str, str]
    kind: Channel = Channel.READING
    name: str | None = None
    detail: str | None = None
    model: str | None = None
    firmware: str | None = None
    location: Location | None = None


@dataclass(slots=True)
class MintCounts:
    readings: int = 0
    events: int = 0
    alerts: int = 0
    invalid: int = 0
    oversized: int = 0
    spool_errors: int = 0
    commits: int = 0
    by_device: dict[str, int] = field(default_factory=dict)  # device -> last seq


class Minter:
    def __init__(self, site: str, boot: str, spool: Spool, max_message_bytes: int) -> None:
        self.site = site
        self.boot = boot
        self.spool = spool
        self.max_message_bytes = max_message_bytes
        self.pending: list[Pending] = []
        self.counts = MintCounts()

    @property
    def last_seq(self) -> Mapping[str, int]:
        return self.counts.by_device

    def add(self, item: Pending) -> None:
        self.pending.append(item)

    def commit(self) -> list[Envelope]:
        """Mint everything pending and spool it in one transaction; the envelopes spooled, in order."""
        if not self.pending:
            return []
        items, self.pending = self.pending, []
        seqs = dict(self.counts.by_device)
        minted: list[tuple[Envelope, Record]] = []
        for item in items:
            seq = seqs.get(item.device, 0) + 1
            checked = self._checked(item, seq)
            if checked is not None:
                seqs[item.device] = seq
                minted.append(checked)
        if not minted:
            return []
        bulk = [record for envelope, record in minted if envelope.kind is Channel.READING]
        keep = [record for envelope, record in minted if envelope.kind is not Channel.READING]
        batches = [(lane, records) for lane, records in ((Lane.BULK, bulk), (Lane.KEEP, keep)) if records]
        try:
            self.spool.append(batches)
        except (SpoolError, OSError, sqlite3.Error) as err:
            # A full or failing disk must not stop the collector; the seqs do not advance, so the
            # audit sees fewer readings, not a gap.
            self.counts.spool_errors += 1
            log.error("spool append failed", extra={"event": "spool_append_failed", "why": str(err)})
            return []
        self.counts.by_device = seqs
        self.counts.commits += 1
        for envelope, _ in minted:
            if envelope.kind is Channel.READING:
                self.counts.readings += 1
            elif envelope.kind is Channel.EVENT:
                self.counts.events += 1
            else:
                self.counts.alerts += 1
        return [envelope for envelope, _ in minted]

    def _checked(self, item: Pending, seq: int) -> tuple[Envelope, Record] | None:
        try:
            envelope = self._mint(item, seq)
        except ValidationError as err:
            self.counts.invalid += 1
            extra = {"event": f"{item.kind.value}_invalid", "device": item.device, "why": str(err)}
            log.error("%s refused", item.kind.value, extra=extra)
            return None
        topic, payload = str(envelope.topic), envelope.encode()
        if len(payload) > self.max_message_bytes:
            self.counts.oversized += 1
            log_oversized(
                log,
                refused=f"{item.kind.value} refused",
                event=f"{item.kind.value}_oversized",
                topic=topic,
                size_bytes=len(payload),
                limit=self.max_message_bytes,
                total=self.counts.oversized,
            )
            return None
        return envelope, (topic, payload)

    def _mint(self, item: Pending, seq: int) -> Envelope:
        if item.kind is Channel.READING:
            return mint(
                device=item.device,
                site=self.site,
                boot=self.boot,
                seq=seq,
                ts_ms=item.ts_ms,
                metrics=item.metrics,
                units=item.units,
                model=item.model,
                firmware=item.firmware,
                location=item.location,
            )
        return mint_alert(
            device=item.device,
            site=self.site,
            boot=self.boot,
            seq=seq,
            ts_ms=item.ts_ms,
            name=item.name or "",
            metrics=item.metrics,
            units=item.units,
            detail=item.detail,
            model=item.model,
            firmware=item.firmware,
            location=item.location,
            kind=item.kind,
        )
