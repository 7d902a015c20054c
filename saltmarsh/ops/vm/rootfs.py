"""The guest's root image: Debian packages by debootstrap, then this checkout, as an ext4 file.

The debootstrap tree is cached by its package list (about a minute to make); the image on top
of it by the hash of everything copied in (the project's sources, the venv's libraries the
services import, the guest init), so an edit to the forwarder rebuilds only the image, in
seconds. `mke2fs -d` writes the image from the tree without mounting anything. The image is
attached read-only: the guest writes only to its data disks, as a Pi with a read-only root does.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from saltmarsh.ops.vm.kernel import BUSYBOX

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "mosquitto", "sqlite3")
PROJECT_PACKAGES = ("saltmarsh", "gateway", "sensor")  # what the guest runs: never the cloud side
LIBRARIES = ("diskcache", "paho", "prometheus_client")  # third-party imports of gateway and sensor
GUEST_INIT = Path(__file__).with_name("guest-init.sh")
IMAGE_SIZE = "1G"
MOUNT_POINTS = ("var/lib/saltmarsh", "var/lib/saltmarsh-sensor")  # the data disks (guest-init.sh)

Progress = Callable[[str], None]


def _tree_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def library_dir(name: str) -> Path:
    """Where the running Python imports `name` from (its venv's site-packages)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not importable here: run `make venv`")
    return Path(next(iter(spec.submodule_search_locations)))


def content_key(project_root: Path) -> str:
    """A hash of everything the image holds beyond the debootstrap tree."""
    digest = hashlib.sha256()
    sources = [project_root / name for name in PROJECT_PACKAGES] + [library_dir(name) for name in LIBRARIES]
    for base in sources:
        for path in _tree_files(base):
            digest.update(str(path.relative_to(base.parent)).encode() + b"\0" + path.read_bytes())
    digest.update(GUEST_INIT.read_bytes())
    digest.update(" ".join((SUITE, *PACKAGES, IMAGE_SIZE)).encode())
    return digest.hexdigest()[:16]


def debootstrap_tree(cache_dir: Path, progress: Progress) -> Path:
    """Debian with PACKAGES, made once per package list."""
    tree = cache_dir / f"debootstrap-{SUITE}-{hashlib.sha256(' '.join(PACKAGES).encode()).hexdigest()[:12]}"
    if (tree / "usr" / "bin" / "python3").exists():
        return tree
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    progress(f"debootstrap {SUITE} with {', '.join(PACKAGES)} (about a minute, once)")
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    # Package caches and docs are most of a minbase tree's size and none of the guest's needs.
    for junk in ("var/cache/apt/archives", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(partial / junk, ignore_errors=True)
    os.replace(partial, tree)
    return tree


def install_project(tree: Path, project_root: Path) -> None:
    """The project and its libraries under /opt/saltmarsh, compiled ahead: the root is read-only,
    and compiling at every start would cost each boot seconds under emulation."""
    opt = tree / "opt" / "saltmarsh"
    shutil.rmtree(opt, ignore_errors=True)
    for name in PROJECT_PACKAGES:
        shutil.copytree(project_root / name, opt / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in LIBRARIES:
        shutil.copytree(library_dir(name), opt / "lib" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # The guest's python3.11 reads caches keyed by source mtime and size, as written here.
    compileall.compile_dir(str(opt), quiet=1, workers=1)
    for mount_point in MOUNT_POINTS:
        (tree / mount_point).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")  # ip, for the NIC: minbase has no iproute2
    init = tree / "sbin" / "saltmarsh-init"
    shutil.copy2(GUEST_INIT, init)
    init.chmod(0o755)


def build_rootfs(cache_dir: Path, project_root: Path, progress: Progress = lambda _: None) -> Path:
    """The root image for this checkout, from the cache when it is already there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    image = cache_dir / f"root-{content_key(project_root)}.img"
    if image.is_file():
        return image
    tree = debootstrap_tree(cache_dir, progress)
    progress(f"root image {image.name}: the project, its libraries and the guest init on {SUITE}")
    install_project(tree, project_root)
    partial = image.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "saltmarsh-root", "-d", str(tree), str(partial), IMAGE_SIZE],
        check=True,
        capture_output=True,
    )
    os.replace(partial, image)
    for old in cache_dir.glob("root-*.img"):
        if old != image:
            old.unlink()
    return image
