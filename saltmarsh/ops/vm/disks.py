"""The guest's data disks: raw ext4 images written from host files, and read back without mounting.

A data disk is where a Pi keeps its state (/var/lib/saltmarsh): the spools, the broker's
persistence, the configs. It is made once per run with `mke2fs -d` and then belongs to the guest;
between boots the host reads files off it with `debugfs` (e2fsprogs), never by mounting it.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

DATA_DISK_SIZE = "512M"


def make_disk(path: Path, files: Mapping[str, bytes], label: str, size: str = DATA_DISK_SIZE) -> Path:
    """A new ext4 image at `path` holding `files` (relative path -> content)."""
    with tempfile.TemporaryDirectory(prefix="saltmarsh-disk-") as tmp:
        root = Path(tmp)
        for relative, content in files.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        path.unlink(missing_ok=True)
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", str(root), str(path), size],
            check=True,
            capture_output=True,
        )
    return path


def recovered_copy(disk: Path, copy: Path) -> tuple[int, str]:
    """A copy of a cut disk, its journal replayed as the next mount would: (e2fsck's exit, report).

    After a power cut the journal holds what the last commits changed; reading the image as it
    is would show the filesystem before them (and bitmaps that fail their checksums). e2fsck -p
    on a copy does what the guest's next mount does, and leaves the disk itself to the guest.
    Exit 0 or 1 is a clean or journal-replayed filesystem; more is damage beyond the journal.
    """
    subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)
    result = subprocess.run(["e2fsck", "-fp", str(copy)], capture_output=True, text=True, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def copy_out(disk: Path, directory: str, into: Path) -> Path:
    """`directory` of an unmounted, consistent disk, copied to `into`/<its name>, with debugfs rdump."""
    into.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["debugfs", "-R", f"rdump {directory} {into}", str(disk)], capture_output=True, text=True, check=False
    )
    copied = into / Path(directory).name
    if result.returncode != 0 or not copied.exists():
        raise RuntimeError(f"debugfs could not copy {directory} off {disk}: {result.stderr.strip()[-500:]}")
    return copied
