"""What `saltmarsh audit` concludes from the keys a sink holds: gaps, duplicates, totals.

Pure logic: stored keys in (ordered by device, boot, seq), a frozen `AuditReport` out. Each boot
of a device numbers its messages from 1, so any hole in 1..max(seq) is a lost message. The
highest seq a device sent is only known from outside (the sensor's own counter), so
`expectations` may name, per device, the boot and last seq it reached: stored seqs short of it
are lost too, and an expected device with nothing stored lost everything.

A seq jump no real loss explains is *suspicious*, not lost: one message with a forged or
corrupted seq (say 2**53-1) must not make the audit report nine quadrillion lost readings. A gap
is suspicious when

- the sensor's own last seq for that boot is known, the gap goes beyond it, and the gap is larger
  than the readings stored for that boot (the sensor never minted those seqs: lost up to its
  last seq, suspicious after; the size test keeps a status written a moment before the last
  few readings from hiding their gaps), or
- it is larger than both SUSPICIOUS_MIN_GAP and SUSPICIOUS_FACTOR times the readings stored for
  that boot: a million missing around three stored is not an outage, it is a bad seq.

Suspicious gaps are listed apart and do not count in `lost`, so they do not fail the audit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from saltmarsh.runtime.status import ServiceStatus
from saltmarsh.sinks.base import StoredKey

Expectations = Mapping[str, tuple[str, int]]  # device -> (boot, last seq it sent)

SUSPICIOUS_MIN_GAP = 1_000_000  # about 11.5 days of one reading a second
SUSPICIOUS_FACTOR = 1000


def expectations_from(statuses: Iterable[ServiceStatus]) -> dict[str, tuple[str, int]]:
    """Each device's own word on what it sent, device -> (boot, last seq): a sensor's status, and
    each device of a BLE collector's (`devices.<id>.last_seq` under the collector's `boot`).
    ValueError names the status whose numbers are not numbers."""
    out: dict[str, tuple[str, int]] = {}
    for s in statuses:
        counters = s.counters
        try:
            if s.service == "sensor" and "boot" in counters and "last_seq" in counters:
                out[s.instance] = (str(counters["boot"]), int(counters["last_seq"]))
            elif s.service == "ble" and "boot" in counters and isinstance(counters.get("devices"), Mapping):
                for device, row in counters["devices"].items():
                    if isinstance(row, Mapping) and int(row.get("last_seq", 0)) > 0:
                        out[str(device)] = (str(counters["boot"]), int(row["last_seq"]))
        except (TypeError, ValueError):
            raise ValueError(f"{s.service} {s.instance}: last_seq is not a number") from None
    return out


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs `first_missing..last_missing` (inclusive) of one boot never reached the sink."""

    boot: str
    first_missing: int
    last_missing: int

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True, slots=True)
class DeviceAudit:
    device: str
    boots: tuple[str, ...]
    count: int  # distinct keys stored
    gaps: tuple[Gap, ...]
    duplicates: int  # keys seen more than once
    first_ts_ms: int | None
    last_ts_ms: int | None
    suspicious: tuple[Gap, ...] = ()  # seq jumps no real loss explains; not counted as lost

    @property
    def lost(self) -> int:
        return sum(gap.size for gap in self.gaps)


@dataclass(frozen=True, slots=True)
class AuditReport:
    devices: tuple[DeviceAudit, ...]
    # Rejected messages by reason: shown alongside, not counted as lost, since the contract
    # already said no to them and the sink kept every one of them.
    dead_letters: Mapping[str, int] = field(default_factory=dict)

    @property
    def readings(self) -> int:
        return sum(d.count for d in self.devices)

    @property
    def lost(self) -> int:
        return sum(d.lost for d in self.devices)

    @property
    def duplicated(self) -> int:
        return sum(d.duplicates for d in self.devices)

    @property
    def suspicious(self) -> int:
        return sum(len(d.suspicious) for d in self.devices)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def device(self, device: str) -> DeviceAudit:
        for entry in self.devices:
            if entry.device == device:
                return entry
        raise KeyError(device)


class _DeviceTally:
    """Running state for one device while its keys stream past."""

    def __init__(self, device: str) -> None:
        self.device = device
        # Highest seq stored per boot, in arrival (sorted) order; seqs start at 1, so 0 means none.
        self.last_seq_by_boot: dict[str, int] = {}
        self.count_by_boot: dict[str, int] = {}
        self.count = 0
        self.gaps: list[Gap] = []
        self.duplicates = 0
        self.first_ts_ms: int | None = None
        self.last_ts_ms: int | None = None
        self._boot = ""

    def add(self, key: StoredKey) -> None:
        if key.boot != self._boot or not self.last_seq_by_boot:
            if key.boot in self.last_seq_by_boot:
                raise ValueError(f"stored keys out of order at {key.device}:{key.boot}:{key.seq}")
            self._boot = key.boot
            self.last_seq_by_boot[key.boot] = 0
            last_seq = 0
        else:
            last_seq = self.last_seq_by_boot[key.boot]
            if key.seq == last_seq:
                self.duplicates += 1
                return
            if key.seq < last_seq:
                raise ValueError(f"stored keys out of order at {key.device}:{key.boot}:{key.seq}")
        if key.seq > last_seq + 1:
            self.gaps.append(Gap(key.boot, last_seq + 1, key.seq - 1))
        self.last_seq_by_boot[key.boot] = key.seq
        self.count_by_boot[key.boot] = self.count_by_boot.get(key.boot, 0) + 1
        self.count += 1
        if self.first_ts_ms is None or key.ts_ms < self.first_ts_ms:
            self.first_ts_ms = key.ts_ms
        if self.last_ts_ms is None or key.ts_ms > self.last_ts_ms:
            self.last_ts_ms = key.ts_ms

    def finish(self, expected: tuple[str, int] | None) -> DeviceAudit:
        gaps: list[Gap] = []
        suspicious: list[Gap] = []
        expected_boot, expected_last = expected if expected is not None else ("", 0)
        for gap in self.gaps:
            stored = self.count_by_boot[gap.boot]
            if gap.boot == expected_boot and gap.last_missing > expected_last and gap.size > stored:
                # The sensor never got this far: lost up to its last seq, suspicious beyond it.
                if gap.first_missing <= expected_last:
                    gaps.append(Gap(gap.boot, gap.first_missing, expected_last))
                suspicious.append(Gap(gap.boot, max(gap.first_missing, expected_last + 1), gap.last_missing))
            elif gap.size > max(SUSPICIOUS_MIN_GAP, SUSPICIOUS_FACTOR * stored):
                suspicious.append(gap)
            else:
                gaps.append(gap)
        boots = list(self.last_seq_by_boot)
        if expected is not None:
            stored_last = self.last_seq_by_boot.get(expected_boot, 0)
            if expected_last > stored_last:
                gaps.append(Gap(expected_boot, stored_last + 1, expected_last))
            if expected_boot not in self.last_seq_by_boot:
                boots.append(expected_boot)
        return DeviceAudit(
            device=self.device,
            boots=tuple(boots),
            count=self.count,
            gaps=tuple(sorted(gaps, key=lambda g: (g.boot, g.first_missing))),
            duplicates=self.duplicates,
            first_ts_ms=self.first_ts_ms,
            last_ts_ms=self.last_ts_ms,
            suspicious=tuple(suspicious),
        )


def run_audit(
    keys: Iterable[StoredKey],
    expectations: Expectations | None = None,
    dead_letters: Mapping[str, int] | None = None,
) -> AuditReport:
    """Stream `keys` (ordered by device, boot, seq, as every AuditSource yields them) into a report.

    Raises ValueError if the keys are not in that order, since gaps could not be told apart.
    """
    expectations = expectations or {}
    finished: list[DeviceAudit] = []
    seen_devices: set[str] = set()
    tally: _DeviceTally | None = None
    for key in keys:
        if tally is None or key.device != tally.device:
            if tally is not None:
                finished.append(tally.finish(expectations.get(tally.device)))
            if key.device in seen_devices:
                raise ValueError(f"stored keys out of order at {key.device}:{key.boot}:{key.seq}")
            seen_devices.add(key.device)
            tally = _DeviceTally(key.device)
        tally.add(key)
    if tally is not None:
        finished.append(tally.finish(expectations.get(tally.device)))
    for device in expectations.keys() - seen_devices:
        finished.append(_DeviceTally(device).finish(expectations[device]))
    return AuditReport(tuple(sorted(finished, key=lambda d: d.device)), dict(dead_letters or {}))


def _iso_utc(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, ValueError, OSError):
        return f"{ts_ms} ms"  # beyond what datetime can show; still worth printing as-is


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def format_report(report: AuditReport, max_gaps: int = 20) -> str:
    """A table per device, the first `max_gaps` gaps, and one summary line last."""
    header = ("device", "boots", "count", "lost", "dup", "first ts", "last ts")
    rows = [
        (
            d.device,
            str(len(d.boots)),
            str(d.count),
            str(d.lost),
            str(d.duplicates),
            _iso_utc(d.first_ts_ms),
            _iso_utc(d.last_ts_ms),
        )
        for d in report.devices
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {1, 2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths))] if rows else []
    out += [line(row) for row in rows]
    gaps = [(d.device, gap) for d in report.devices for gap in d.gaps]
    for device, gap in gaps[:max_gaps]:
        out.append(f"gap: {device} boot {gap.boot} seq {gap.first_missing}..{gap.last_missing} ({gap.size} lost)")
    if len(gaps) > max_gaps:
        out.append(f"gap: ... and {len(gaps) - max_gaps} more")
    jumps = [(d.device, gap) for d in report.devices for gap in d.suspicious]
    for device, gap in jumps[:max_gaps]:
        out.append(
            f"suspicious: {device} boot {gap.boot} seq {gap.first_missing}..{gap.last_missing} missing "
            f"({gap.size}): more than any real loss explains; not counted as lost"
        )
    if len(jumps) > max_gaps:
        out.append(f"suspicious: ... and {len(jumps) - max_gaps} more")
    if report.dead_letters:
        by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(report.dead_letters.items()))
        out.append(f"dead letters: {sum(report.dead_letters.values())} ({by_reason})")
    suspicious = f", {_plural(report.suspicious, 'suspicious seq jump')}" if report.suspicious else ""
    out.append(
        f"audit: {_plural(len(report.devices), 'device')}, {_plural(report.readings, 'reading')}, "
        f"{report.lost} lost, {report.duplicated} duplicated{suspicious}"
    )
    return "\n".join(out)


def format_whereabouts(statuses: Iterable[ServiceStatus]) -> str:
    """Where readings not (yet) in the sink are, from the services' own counters: one line.

    Unconfirmed ones are kept by their sender until the next durable owner confirms them; the
    sink's duplicates are the resends it absorbed; evicted ones are the quota's, counted.
    """
    held: dict[str, tuple[int, float, int]] = {}  # service -> (unconfirmed, oldest age, spooled)
    duplicates = evicted = 0
    for status in statuses:
        counters = status.counters
        if status.service in ("sensor", "forwarder"):
            unconfirmed, oldest, spooled = held.get(status.service, (0, 0.0, 0))
            held[status.service] = (
                unconfirmed + _count(counters.get("unconfirmed")),
                max(oldest, float(counters.get("oldest_unconfirmed_age_s") or 0.0)),
                spooled + _count(counters.get("spool_depth")),
            )
        evicted += _count(counters.get("evicted_total")) if status.service == "forwarder" else 0
        duplicates += _count(counters.get("duplicates_total")) if status.service == "ingester" else 0
    parts = [
        f"{service}s hold {spooled} spooled, {unconfirmed} sent and unconfirmed (oldest {oldest:.1f} s)"
        for service, (unconfirmed, oldest, spooled) in sorted(held.items(), reverse=True)
    ]
    parts += [f"evicted under quota {evicted}", f"resent copies the sink absorbed {duplicates}"]
    return "in flight: " + "; ".join(parts)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
