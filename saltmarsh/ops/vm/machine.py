"""One guest under qemu (TCG), its power cut by `kill -9` of qemu.

qemu runs with no acceleration (`-accel tcg`: a KVM guest hangs early on this kind of host),
the root image read-only and the data disks read-write, and user networking with
`restrict=on`: the guest reaches nothing but the one host loopback port each `guestfwd` names.
Two serial ports go to host files: the console (ttyS0: the kernel, and what the guest init
reports) and the services' own logs (ttyS1). `kill -9` loses the guest's page cache and
keeps what it had written to its disks, which is what a power cut does to a Pi.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saltmarsh.ops.vm.console import BootRecord, read_boot

GUEST_HOST = "10.0.2.100"  # where, inside the guest, the host's forwarded ports appear
MEMORY_MB = 512


@dataclass(frozen=True, slots=True)
class GuestFwd:
    """A guest address that reaches one host loopback port."""

    guest_port: int
    host_port: int

    def option(self) -> str:
        # One socat per connection, so the guest may reconnect as often as it likes.
        return f"guestfwd=tcp:{GUEST_HOST}:{self.guest_port}-cmd:socat - TCP:127.0.0.1:{self.host_port}"


@dataclass(frozen=True, slots=True)
class MachineSpec:
    kernel: Path
    initramfs: Path
    rootfs: Path
    disks: Sequence[Path]  # vdb, vdc, ...
    forwards: Sequence[GuestFwd] = ()
    memory_mb: int = MEMORY_MB
    extra_append: str = ""

    def argv(self, console: Path, services_log: Path) -> list[str]:
        netdev = ",".join(["user", "id=n0", "restrict=on", *(f.option() for f in self.forwards)])
        argv = [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-cpu", "max",
            "-m", str(self.memory_mb),
            "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(self.kernel),
            "-initrd", str(self.initramfs),
            "-append", f"console=ttyS0 quiet panic=-1 {self.extra_append}".strip(),
            "-drive", f"file={self.rootfs},format=raw,if=virtio,readonly=on",
        ]  # fmt: skip
        for disk in self.disks:
            argv += ["-drive", f"file={disk},format=raw,if=virtio"]
        argv += [
            "-netdev", netdev,
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-serial", f"file:{console}",
            "-serial", f"file:{services_log}",
        ]  # fmt: skip
        return argv


@dataclass(slots=True)
class Machine:
    """One boot of a guest: start it, read what it says, cut its power."""

    spec: MachineSpec
    console: Path
    services_log: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # monotonic
    _stderr: Path = field(init=False)

    def __post_init__(self) -> None:
        self._stderr = self.console.with_suffix(".qemu.log")

    def start(self) -> Machine:
        self.console.parent.mkdir(parents=True, exist_ok=True)
        with self._stderr.open("wb") as err:
            self.process = subprocess.Popen(
                self.spec.argv(self.console, self.services_log), stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        self.started_at = time.monotonic()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def record(self) -> BootRecord:
        """What this boot has said so far."""
        if not self.console.exists():
            return BootRecord()
        with self.console.open(errors="replace") as f:
            return read_boot(f)

    def wait_for(
        self, predicate: Callable[[BootRecord], bool], timeout_s: float, interval_s: float = 0.25
    ) -> BootRecord:
        """The boot's record once `predicate` holds; TimeoutError (with the console's tail) if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.record()
            if predicate(record):
                return record
            if not self.alive:
                raise RuntimeError(f"the guest exited ({self.process and self.process.returncode}): {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the guest did not get there within {timeout_s:.0f} s: {self.tail()}")
            time.sleep(interval_s)

    def tail(self, lines: int = 25) -> str:
        out = []
        for path in (self._stderr, self.console, self.services_log):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def cut_power(self) -> None:
        """kill -9 of qemu: the guest stops between two instructions."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
