"""CPU time and memory of a running process, read from /proc by PID.

CPU is `utime + stime` from `/proc/PID/stat` (fields 14 and 15, in clock ticks), which is the
process's own work whatever else the shared machine is doing. Memory is `VmRSS` (now) and
`VmHWM` (peak resident) from `/proc/PID/status`. Parsing is pure, for the smoke test.
"""

from __future__ import annotations

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


def parse_status_kib(text: str, key: str) -> int:
    """A `Key:   1234 kB` value from /proc/PID/status, in KiB; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


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
