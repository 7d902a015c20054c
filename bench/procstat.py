"""CPU time, memory, wake-ups and disk writes of a running process, read from /proc by PID.

CPU is `utime + stime` from `/proc/PID/stat` (fields 14 and 15, in clock ticks), which is the
process's own work whatever else the shared machine is doing. Memory is `VmRSS` (now) and
`VmHWM` (peak resident) from `/proc/PID/status`. Wake-ups are the voluntary context switches of
all its threads (each time one blocked: select, a lock, fsync, a sleep), from
`/proc/PID/task/*/status`; disk writes are `write_bytes` from `/proc/PID/io`. Run time is the
threads' time on a CPU in nanoseconds (`/proc/PID/task/*/schedstat`), for figures too small for
clock ticks: an idle process. Parsing is pure, for the smoke test.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat_cpu_ticks(line: str) -> int:
    """utime + stime in ticks from one /proc/PID/stat line.

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself, so
    fields are counted from the last ')'.
    """
    rest = line[line.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def parse_field(text: str, key: str) -> int:
    """The number after `Key:` in /proc/PID/status or /proc/PID/io; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def parse_status_kib(text: str, key: str) -> int:
    """A `Key:   1234 kB` value from /proc/PID/status, in KiB; 0 if absent."""
    return parse_field(text, key)


def cpu_seconds(pid: int) -> float:
    line = Path(f"/proc/{pid}/stat").read_text()
    return parse_stat_cpu_ticks(line) / CLOCK_TICKS


def memory_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return parse_status_kib(text, "VmRSS") * 1024, parse_status_kib(text, "VmHWM") * 1024


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds a process spent since `start`, read again at every `elapsed`."""

    pid: int
    start_s: float = 0.0

    @classmethod
    def begin(cls, pid: int) -> CpuMeter:
        return cls(pid, cpu_seconds(pid))

    def elapsed(self) -> float:
        return cpu_seconds(self.pid) - self.start_s


def _per_thread(pid: int, name: str) -> list[str]:
    """One /proc file of each live thread (one that exited takes its counts along)."""
    texts = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            texts.append((task / name).read_text())
        except FileNotFoundError:
            continue
    return texts


def wakeups(pid: int) -> int:
    """Voluntary context switches of the process's live threads."""
    return sum(parse_field(text, "voluntary_ctxt_switches") for text in _per_thread(pid, "status"))


def parse_schedstat_ns(line: str) -> int:
    """Nanoseconds on a CPU, the first of /proc/PID/task/TID/schedstat's three fields."""
    return int(line.split(maxsplit=1)[0])


def run_seconds(pid: int) -> float:
    """Time on a CPU of the process's live threads, to the nanosecond; NaN without schedstat."""
    texts = _per_thread(pid, "schedstat")  # none at all: a kernel built without it
    return sum(parse_schedstat_ns(text) for text in texts) / 1e9 if texts else math.nan


def disk_write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (page cache writeback included)."""
    return parse_field(Path(f"/proc/{pid}/io").read_text(), "write_bytes")


@dataclass(frozen=True, slots=True)
class Usage:
    """What a process has used, so far or (as a difference of two) over a window."""

    cpu_s: float  # utime + stime, in clock ticks
    wakeups: int
    disk_write_bytes: int
    run_s: float  # time on a CPU from schedstat, to the nanosecond

    @classmethod
    def of(cls, pid: int) -> Usage:
        return cls(cpu_seconds(pid), wakeups(pid), disk_write_bytes(pid), run_seconds(pid))

    def __sub__(self, earlier: Usage) -> Usage:
        return Usage(
            self.cpu_s - earlier.cpu_s,
            self.wakeups - earlier.wakeups,
            self.disk_write_bytes - earlier.disk_write_bytes,
            self.run_s - earlier.run_s,
        )


def disk_bytes(path: Path) -> int:
    """Allocated bytes under `path`, as `du` counts them (st_blocks, not apparent size)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total
