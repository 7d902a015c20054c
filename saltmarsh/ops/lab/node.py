"""One lab node: a network namespace, and a mount and UTS namespace held open by an anchor process.

The anchor overlays the host's /etc, /var, /run and /srv with the node's own copy-on-write layers
(`<node dir>/<path>.upper`), so Salt's states write /etc/saltmarsh, /etc/mosquitto, the
node's users, /var/lib/saltmarsh, /run/saltmarsh and /var/log for that node alone, at the real
paths. The repo is bind-mounted read-only at /srv/saltmarsh, and the lab's pillar at
/srv/saltmarsh-lab, where a master's file_roots and pillar_roots would point. Everything else
in the node (its salt-minion, and what that minion's service states start) joins the anchor's
namespaces with `nsenter`.
"""

from __future__ import annotations

import contextlib
import posixpath
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from saltmarsh.contract.errors import SaltmarshError

OVERLAID = ("etc", "var", "run", "srv")
REPO_MOUNT = "/srv/saltmarsh"
PILLAR_MOUNT = "/srv/saltmarsh-lab"
ANCHOR_READY_S = 10.0
# What this process started and outlives it by design (anchors, the cloud's Elasticsearch):
# held so they are not collected while running, and reaped by `reap_started` at `lab down`.
_STARTED: list[subprocess.Popen[bytes]] = []


def keep(process: subprocess.Popen[bytes]) -> int:
    _STARTED.append(process)
    return process.pid


def reap_started() -> None:
    for process in _STARTED:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    _STARTED[:] = [p for p in _STARTED if p.returncode is None]


@dataclass(frozen=True, slots=True)
class NodeDirs:
    root: Path

    def upper(self, top: str) -> Path:
        return self.root / f"{top}.upper"

    def work(self, top: str) -> Path:
        return self.root / f"{top}.work"

    def path(self, absolute: str) -> Path:
        """Where a file the node wrote at `absolute` lives on the host (its overlay's upper layer)."""
        # Normalised first: /etc/../home/x is the host's /home/x, not the node's.
        top, _, rest = posixpath.normpath(absolute).lstrip("/").partition("/")
        if top not in OVERLAID:
            raise SaltmarshError(f"{absolute} is not under a node's private layers ({', '.join(OVERLAID)})")
        return self.upper(top) / rest

    @property
    def ready_marker(self) -> Path:
        return self.root / "anchor.ready"


def anchor_script(node_id: str, dirs: NodeDirs, repo: Path, pillar: Path) -> str:
    """The shell the anchor runs inside its new namespaces, then it sleeps holding them."""
    lines = ["set -e"]
    for top in OVERLAID:
        lines.append(
            f"mount -t overlay saltmarsh-lab -o lowerdir=/{top},upperdir={shlex.quote(str(dirs.upper(top)))},"
            f"workdir={shlex.quote(str(dirs.work(top)))} /{top}"
        )
    for source, target in ((repo, REPO_MOUNT), (pillar, PILLAR_MOUNT)):
        lines += [f"mkdir -p {target}", f"mount --bind -o ro {shlex.quote(str(source))} {target}"]
    lines += [
        f"hostname {shlex.quote(node_id)}",
        f"echo {shlex.quote(node_id)} > /etc/hostname",
        f"touch {shlex.quote(str(dirs.ready_marker))}",
        "exec sleep infinity",
    ]
    return "\n".join(lines)


def anchor_argv(netns: str, script: str) -> list[str]:
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script]


def start_anchor(node_id: str, netns: str, dirs: NodeDirs, repo: Path, pillar: Path) -> int:
    """Start the node's anchor; its pid, once its mounts are in place."""
    for top in OVERLAID:
        dirs.upper(top).mkdir(parents=True, exist_ok=True)
        dirs.work(top).mkdir(parents=True, exist_ok=True)
    dirs.ready_marker.unlink(missing_ok=True)
    log = (dirs.root / "anchor.log").open("ab")
    process = subprocess.Popen(
        anchor_argv(netns, anchor_script(node_id, dirs, repo, pillar)),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + ANCHOR_READY_S
    while not dirs.ready_marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tail = (dirs.root / "anchor.log").read_text(errors="replace")[-2000:]
            raise SaltmarshError(f"node {node_id}: its namespaces could not be set up:\n{tail}")
        time.sleep(0.02)
    return keep(process)


def enter_argv(anchor_pid: int, argv: Sequence[str]) -> list[str]:
    """`argv`, run inside the node whose anchor is `anchor_pid`."""
    return ["nsenter", "--target", str(anchor_pid), "--mount", "--uts", "--net", "--", *argv]


def run_in(anchor_pid: int, argv: Sequence[str], timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(enter_argv(anchor_pid, argv), capture_output=True, text=True, timeout=timeout_s, check=False)
