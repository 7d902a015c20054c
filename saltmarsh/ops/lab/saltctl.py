"""Real Salt in the lab: the master's and minions' configs, their daemons, keys and state runs.

The configs are what an operator would write on real machines (README "Provision a fleet"): the
master's file_roots and pillar_roots point at the repo, keys are never auto-accepted, and each
minion gets its roles and site as grains, and the lab's service provider (saltmarsh_svc) in
place of systemd. Every command runs inside its node, through the node's anchor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.lab.fleet import Fleet, Node
from saltmarsh.ops.lab.node import PILLAR_MOUNT, REPO_MOUNT, NodeDirs, enter_argv, run_in

BIN = Path(sys.executable).parent
SVC_STATE_DIR = "/var/lib/saltmarsh-svc"
UNIT_DIR = "/etc/systemd/system"
SALT_TIMEOUT_S = 600


def master_config(master: Node) -> dict[str, Any]:
    return {
        "interface": str(master.address),
        "file_roots": {"base": [f"{REPO_MOUNT}/salt/states"]},
        # The lab's generated pillar first: it shadows the repo's placeholder sites and secrets.
        "pillar_roots": {"base": [f"{PILLAR_MOUNT}/pillar", f"{REPO_MOUNT}/pillar"]},
        "auto_accept": False,
        "open_mode": False,
        "log_level_logfile": "info",
        "timeout": 30,
    }


def minion_config(node: Node, master: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "master": str(master.address),
        "providers": {"service": "saltmarsh_svc"},
        "saltmarsh_svc": {"unit_dirs": [UNIT_DIR], "state_dir": SVC_STATE_DIR},
        "acceptance_wait_time": 1,
        "acceptance_wait_time_max": 5,
        "random_reauth_delay": 0,
        "recon_default": 1000,
        "recon_max": 5000,
        "log_level_logfile": "info",
        # A node has no DNS server to ask: the fqdns grain's reverse lookups would each wait for
        # a resolver timeout, at every grains refresh (the minion's start, every sync).
        "enable_fqdns_grains": False,
    }


def hosts_file(fleet: Fleet) -> str:
    """Every node by name, as a site's DNS or DHCP server would make them known."""
    lines = ["127.0.0.1 localhost"]
    for node in fleet.nodes:
        lines += [f"{address} {node.id}" for address in (node.uplink, node.lan) if address is not None]
    return "\n".join(lines) + "\n"


def write_salt_configs(node: Node, fleet: Fleet, dirs: NodeDirs) -> None:
    """Written into the node's own /etc before its anchor mounts it."""
    master = fleet.master
    etc_salt = dirs.upper("etc") / "salt"
    etc_salt.mkdir(parents=True, exist_ok=True)
    (etc_salt / "minion").write_text(yaml.safe_dump(minion_config(node, master), sort_keys=False))
    (etc_salt / "grains").write_text(yaml.safe_dump(node.grains, sort_keys=False))
    (dirs.upper("etc") / "hosts").write_text(hosts_file(fleet))
    if node.has("master"):
        (etc_salt / "master").write_text(yaml.safe_dump(master_config(node), sort_keys=False))


def start_daemon(anchor_pid: int, daemon: str) -> None:
    """`salt-master -d` or `salt-minion -d` inside the node: it detaches, writing its pid file."""
    done = run_in(anchor_pid, [str(BIN / daemon), "-d"], timeout_s=60)
    if done.returncode != 0:
        raise SaltmarshError(f"{daemon} did not start: {done.stderr.strip() or done.stdout.strip()}")


@dataclass(frozen=True, slots=True)
class Master:
    """The salt CLI tools, run in the master's node."""

    anchor_pid: int

    def argv(self, tool: str, args: Sequence[str]) -> list[str]:
        return enter_argv(self.anchor_pid, [str(BIN / tool), *args])

    def run(
        self, tool: str, args: Sequence[str], timeout_s: float = SALT_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(tool, args), capture_output=True, text=True, timeout=timeout_s, check=False)

    def json(self, tool: str, args: Sequence[str], timeout_s: float = SALT_TIMEOUT_S) -> Any:
        done = self.run(tool, [*args, "--out", "json"], timeout_s)
        try:
            return json.loads(done.stdout or "null")
        except json.JSONDecodeError as err:
            raise SaltmarshError(f"{tool} {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}") from err

    def keys(self) -> dict[str, list[str]]:
        out = self.json("salt-key", ["-L"], timeout_s=60)
        return out if isinstance(out, dict) else {}

    def accept(self, minion_ids: Sequence[str], timeout_s: float = 120.0) -> None:
        """Accept exactly these ids' keys, once each has asked; never a glob, never auto-accept."""
        pending = set(minion_ids)
        deadline = time.monotonic() + timeout_s
        while pending:
            waiting = set(self.keys().get("minions_pre", []))
            for minion_id in sorted(pending & waiting):
                done = self.run("salt-key", ["-y", "-a", minion_id], timeout_s=60)
                if done.returncode != 0:
                    raise SaltmarshError(f"salt-key -a {minion_id}: {done.stderr.strip()}")
            pending -= set(self.keys().get("minions", []))
            if pending and time.monotonic() > deadline:
                raise SaltmarshError(f"these minions never asked for their key to be accepted: {sorted(pending)}")
            if pending:
                time.sleep(0.5)

    def wait_for_minions(self, minion_ids: Sequence[str], timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        missing = set(minion_ids)
        while missing:
            answered = self.json(
                "salt", ["-t", "10", "--static", "-L", ",".join(sorted(missing)), "test.ping"], timeout_s=60
            )
            if isinstance(answered, dict):
                missing -= {k for k, v in answered.items() if v is True}
            if missing and time.monotonic() > deadline:
                raise SaltmarshError(f"minions not answering the master: {sorted(missing)}")
            if missing:
                time.sleep(1.0)

    def salt(self, *args: str, timeout_s: float = SALT_TIMEOUT_S) -> Any:
        return self.json("salt", ["-t", str(int(timeout_s)), "--static", *args], timeout_s=timeout_s + 30)


@dataclass(frozen=True, slots=True)
class StateRun:
    """One `state.apply` across minions: what failed, and how many states changed anything."""

    target: str
    minions: dict[str, Any]

    def failures(self) -> list[str]:
        out: list[str] = []
        for minion, ret in self.minions.items():
            if not isinstance(ret, Mapping):
                out.append(f"{minion}: {ret}")
                continue
            for state_id, result in ret.items():
                if isinstance(result, Mapping) and result.get("result") is False:
                    out.append(f"{minion}: {state_id}: {str(result.get('comment', ''))[:400]}")
        return out

    def changed(self) -> dict[str, int]:
        return {
            minion: sum(1 for r in ret.values() if isinstance(r, Mapping) and r.get("changes"))
            for minion, ret in self.minions.items()
            if isinstance(ret, Mapping)
        }

    def states(self) -> dict[str, int]:
        return {minion: len(ret) for minion, ret in self.minions.items() if isinstance(ret, Mapping)}


def apply_role(master: Master, role: str, expected: Sequence[str]) -> StateRun:
    """`salt -G 'roles:<role>' state.apply` (the highstate, as top.sls targets by grain)."""
    out = master.salt("-G", f"roles:{role}", "state.apply")
    minions = out if isinstance(out, dict) else {}
    run = StateRun(f"roles:{role}", minions)
    missing = sorted(set(expected) - set(minions))
    if missing:
        raise SaltmarshError(f"state.apply on roles:{role}: no return from {missing}")
    return run
