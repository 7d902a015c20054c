"""What the guest says on its serial console, parsed: the host's only view of it at a power cut.

The guest init prints three kinds of line (`guest-init.sh`):
    @vm <event> <uptime_s>            init, services, fatal ...
    @status <status-file JSON>        each service's counters, twice a second
    @disk <uptime_s> <diskstats;...>  the data disks' /proc/diskstats lines
The console is a host file, so what was printed before the cut survives it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SECTOR_BYTES = 512
_WRITTEN_SECTORS = (
    9  # /proc/diskstats: major minor name rd_ios rd_merges rd_sectors rd_ticks wr_ios wr_merges wr_sectors
)


@dataclass(frozen=True, slots=True)
class VmEvent:
    name: str
    uptime_s: float


@dataclass(frozen=True, slots=True)
class DiskSample:
    uptime_s: float
    written_bytes: dict[str, int]  # by disk name: vdb, vdc


@dataclass(frozen=True, slots=True)
class StatusLine:
    service: str
    instance: str
    counters: dict[str, Any]


ConsoleLine = VmEvent | DiskSample | StatusLine


def parse_diskstats(text: str) -> dict[str, int]:
    """Bytes written by disk, from ';'-joined /proc/diskstats lines."""
    out: dict[str, int] = {}
    for line in text.split(";"):
        fields = line.split()
        if len(fields) > _WRITTEN_SECTORS and fields[_WRITTEN_SECTORS].isdigit():
            out[fields[2]] = int(fields[_WRITTEN_SECTORS]) * SECTOR_BYTES
    return out


def parse_line(line: str) -> ConsoleLine | None:
    """One console line, or None for anything else (kernel messages, a line cut by the power)."""
    try:
        if line.startswith("@vm "):
            name, uptime = line[4:].rsplit(" ", 1)
            return VmEvent(name, float(uptime))
        if line.startswith("@disk "):
            uptime, _, stats = line[6:].partition(" ")
            return DiskSample(float(uptime), parse_diskstats(stats))
        if line.startswith("@status "):
            doc = json.loads(line[8:])
            return StatusLine(str(doc["service"]), str(doc["instance"]), dict(doc["counters"]))
    except (ValueError, KeyError, TypeError):
        return None
    return None


@dataclass(slots=True)
class BootRecord:
    """What one boot said, from power-on to its cut."""

    events: list[VmEvent] = field(default_factory=list)
    last_status: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    last_disk: DiskSample | None = None
    # (device, sensor boot) -> the highest last_seq it reported: a sensor restarted within one
    # guest boot starts a new sensor boot, and the old one's readings must still be accounted for.
    sensor_seqs: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, parsed: ConsoleLine) -> None:
        if isinstance(parsed, VmEvent):
            self.events.append(parsed)
        elif isinstance(parsed, DiskSample):
            self.last_disk = parsed
        else:
            self.last_status[(parsed.service, parsed.instance)] = parsed.counters
            if parsed.service == "sensor":
                self._note_sensor(parsed.instance, parsed.counters)

    def _note_sensor(self, device: str, counters: dict[str, Any]) -> None:
        boot, seq = counters.get("boot"), counters.get("last_seq")
        if isinstance(boot, str) and boot and type(seq) is int and seq > 0:
            key = (device, boot)
            self.sensor_seqs[key] = max(self.sensor_seqs.get(key, 0), seq)

    def event(self, name: str) -> VmEvent | None:
        return next((e for e in self.events if e.name == name), None)

    def status(self, service: str, instance: str) -> dict[str, Any] | None:
        return self.last_status.get((service, instance))


def read_boot(lines: Iterable[str]) -> BootRecord:
    record = BootRecord()
    for line in lines:
        parsed = parse_line(line.rstrip("\r\n"))
        if parsed is not None:
            record.add(parsed)
    return record
