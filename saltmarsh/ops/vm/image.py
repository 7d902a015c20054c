"""Everything a guest boots from, made once and cached: kernel, initramfs, root image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from saltmarsh.ops.vm.kernel import build_initramfs, fetch_kernel
from saltmarsh.ops.vm.rootfs import Progress, build_rootfs

CACHE_ENV = "SALTMARSH_VM_CACHE"


def cache_dir() -> Path:
    """$SALTMARSH_VM_CACHE, or ~/.cache/saltmarsh/vm: kept between runs, never in the checkout."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "saltmarsh" / "vm"


@dataclass(frozen=True, slots=True)
class GuestImage:
    kernel: Path
    initramfs: Path
    rootfs: Path


def ensure_image(project_root: Path, cache: Path | None = None, progress: Progress = lambda _: None) -> GuestImage:
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    kernel = fetch_kernel(cache)
    initramfs = cache / f"initramfs-{kernel.version}.gz"
    if not initramfs.is_file():
        progress(f"initramfs for {kernel.version}")
        build_initramfs(kernel, initramfs)
    return GuestImage(kernel.vmlinuz, initramfs, build_rootfs(cache, project_root, progress))
