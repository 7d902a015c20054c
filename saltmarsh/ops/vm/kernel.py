"""A Debian kernel from apt and a busybox initramfs that loads just what the guest needs to boot.

Debian builds virtio and ext4 as modules, so the initramfs loads them (in dependency order, read
from each module's own `depends=`) before it mounts the root image read-only and hands over to
the guest's init. Nothing here needs root beyond what apt-get download and dpkg -x need.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# What the guest's first seconds need: its disks (virtio-blk, ext4) and its one NIC (virtio-net).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_net")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no libraries to copy

INITRAMFS_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /lib/modules/order); do
  /bin/busybox insmod /lib/modules/$m.ko || echo "initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
/bin/busybox mount -o ro -t ext4 /dev/vda /newroot || {
  echo "initramfs: cannot mount the root image"; /bin/busybox poweroff -f
}
/bin/busybox mount --move /dev /newroot/dev
/bin/busybox umount /proc /sys
exec /bin/busybox switch_root /newroot /sbin/saltmarsh-init
"""


@dataclass(frozen=True, slots=True)
class Kernel:
    version: str  # "6.1.0-57-amd64"
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<version>/kernel


def module_depends(ko: bytes) -> list[str]:
    """The modules a .ko needs first, from its modinfo `depends=` (names with '-' as '_')."""
    at = ko.find(b"depends=")
    if at < 0:
        return []
    end = ko.index(b"\0", at)
    return [name.replace("-", "_") for name in ko[at + len("depends=") : end].decode().split(",") if name]


def load_order(wanted: Iterable[str], depends_of: Callable[[str], list[str]]) -> list[str]:
    """Every module `wanted` needs, each after what it depends on, each once."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        visiting.add(name)
        for dep in depends_of(name):
            visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def index_modules(modules_dir: Path) -> dict[str, Path]:
    """Module name ('_' spelling) -> its .ko file."""
    return {p.name[:-3].replace("-", "_"): p for p in modules_dir.rglob("*.ko")}


def kernel_package() -> str:
    """The versioned image package that Debian's linux-image-amd64 points at today."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-") and name.endswith("-amd64") and name != "linux-image-amd64":
            return name
    raise RuntimeError(f"apt-cache names no kernel for linux-image-amd64: {out.strip()!r}")


def fetch_kernel(cache_dir: Path) -> Kernel:
    """apt-get download + dpkg -x of today's kernel, once per version."""
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    tree = cache_dir / package
    vmlinuz = tree / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        download = cache_dir / "download"
        shutil.rmtree(download, ignore_errors=True)
        download.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "-q", package], cwd=download, check=True, capture_output=True)
        (deb,) = download.glob("*.deb")
        partial = tree.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        os.replace(partial, tree)
        shutil.rmtree(download)
    return Kernel(version, vmlinuz, tree / "lib" / "modules" / version / "kernel")


def newc_archive(files: Mapping[str, tuple[int, bytes]]) -> bytes:
    """A cpio 'newc' archive of `files` (path -> (mode, content); mode 0o040000-type for dirs)."""
    out = io.BytesIO()
    for ino, (name, (mode, data)) in enumerate([*files.items(), ("TRAILER!!!", (0, b""))], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def build_initramfs(kernel: Kernel, out: Path, busybox: Path = BUSYBOX) -> Path:
    """The initramfs: busybox, the boot modules in load order, and INITRAMFS_INIT."""
    modules = index_modules(kernel.modules_dir)
    order = load_order(BOOT_MODULES, lambda name: module_depends(modules[name].read_bytes()))
    dir_mode, exe_mode, file_mode = 0o040755, 0o100755, 0o100644
    files: dict[str, tuple[int, bytes]] = dict.fromkeys(
        ("bin", "dev", "proc", "sys", "newroot", "lib"), (dir_mode, b"")
    )
    files["lib/modules"] = (dir_mode, b"")
    files["bin/busybox"] = (exe_mode, busybox.read_bytes())
    files["init"] = (exe_mode, INITRAMFS_INIT.encode())
    for name in order:
        files[f"lib/modules/{name}.ko"] = (file_mode, modules[name].read_bytes())
    files["lib/modules/order"] = (file_mode, ("\n".join(order) + "\n").encode())
    partial = out.with_suffix(".partial")
    partial.write_bytes(gzip.compress(newc_archive(files), compresslevel=1))
    os.replace(partial, out)
    return out
