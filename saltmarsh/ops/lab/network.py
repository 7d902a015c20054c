"""The lab's wires: one network namespace per node, veth links, bridges, routes and faults.

Every function returns the `ip`/`tc` command lines it needs (pure, so the topology can be checked
without root); `run` carries them out. The cloud node holds the uplink bridge; each gateway holds
its site's LAN bridge, forwards between its LAN and its uplink, and is its sensors' default route.
A gateway's uplink is its own veth pair, so it can be cut (link down) or made bad (netem) alone.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.lab.fleet import Fleet, Node

NETNS_PREFIX = "smlab-"  # then the lab's id, so two labs (a test's and a user's) never meet
UPLINK_BRIDGE = "uplink0"
LAN_BRIDGE = "lan0"
UPLINK_DEV = "uplink"  # a gateway's end of its uplink
LAN_DEV = "eth0"  # a sensor's end of its LAN link

Command = list[str]


def lab_prefix(base: Path) -> str:
    """The namespace prefix of the lab kept under `base`: `smlab-<6 hex>-`."""
    return f"{NETNS_PREFIX}{hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:6]}-"


def netns_name(node: Node, prefix: str) -> str:
    return prefix + node.id


def peer_name(index: int) -> str:
    """The cloud-side (or gateway-side) end of node `index`'s link: 15 characters at most."""
    return f"smp{index}"


def _in(ns: str, *argv: str) -> Command:
    return ["ip", "-n", ns, *argv]


def _prefix(fleet: Fleet, node: Node, on_lan: bool) -> int:
    return (fleet.lans[node.site] if on_lan and node.site else fleet.uplink).prefixlen


@dataclass(frozen=True, slots=True)
class Link:
    """One node's link to the node above it: which namespace holds the far end, and its name."""

    node: str
    node_ns: str
    node_dev: str
    far_ns: str
    far_dev: str


def links(fleet: Fleet, prefix: str) -> list[Link]:
    master_ns = netns_name(fleet.master, prefix)
    out: list[Link] = []
    for index, node in enumerate(fleet.nodes):
        if node.has("gateway"):
            out.append(Link(node.id, netns_name(node, prefix), UPLINK_DEV, master_ns, peer_name(index)))
        elif node.has("sensor") and node.site is not None:
            gateway_ns = netns_name(fleet.gateway_of(node.site), prefix)
            out.append(Link(node.id, netns_name(node, prefix), LAN_DEV, gateway_ns, peer_name(index)))
    return out


def build_commands(fleet: Fleet, prefix: str) -> list[Command]:
    """Everything `lab up` does to the network, in order."""
    master = fleet.master
    master_ns = netns_name(master, prefix)
    cmds: list[Command] = [["ip", "netns", "add", netns_name(node, prefix)] for node in fleet.nodes]
    for node in fleet.nodes:
        cmds.append(_in(netns_name(node, prefix), "link", "set", "lo", "up"))
    cmds += [
        _in(master_ns, "link", "add", UPLINK_BRIDGE, "type", "bridge"),
        _in(master_ns, "addr", "add", f"{master.uplink}/{fleet.uplink.prefixlen}", "dev", UPLINK_BRIDGE),
        _in(master_ns, "link", "set", UPLINK_BRIDGE, "up"),
    ]
    for gateway in fleet.with_role("gateway"):
        ns = netns_name(gateway, prefix)
        cmds += [
            _in(ns, "link", "add", LAN_BRIDGE, "type", "bridge"),
            _in(ns, "addr", "add", f"{gateway.lan}/{_prefix(fleet, gateway, True)}", "dev", LAN_BRIDGE),
            _in(ns, "link", "set", LAN_BRIDGE, "up"),
            ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ]
    by_id = {node.id: node for node in fleet.nodes}
    for link in links(fleet, prefix):
        node = by_id[link.node]
        ns = link.node_ns
        bridge = UPLINK_BRIDGE if node.has("gateway") else LAN_BRIDGE
        address = node.uplink if node.has("gateway") else node.lan
        cmds += [
            _in(ns, "link", "add", link.node_dev, "type", "veth", "peer", "name", link.far_dev, "netns", link.far_ns),
            _in(link.far_ns, "link", "set", link.far_dev, "master", bridge, "up"),
            _in(ns, "addr", "add", f"{address}/{_prefix(fleet, node, not node.has('gateway'))}", "dev", link.node_dev),
            _in(ns, "link", "set", link.node_dev, "up"),
        ]
        if node.has("gateway"):
            cmds.append(_in(ns, "route", "add", "default", "via", str(master.uplink)))
            cmds.append(_in(master_ns, "route", "add", str(fleet.lans[str(node.site)]), "via", str(node.uplink)))
        else:
            cmds.append(_in(ns, "route", "add", "default", "via", str(fleet.gateway_of(str(node.site)).lan)))
    return cmds


def teardown_commands(namespaces: Iterable[str]) -> list[Command]:
    """Deleting a namespace deletes the veth ends and bridges inside it, and with them their peers."""
    return [["ip", "netns", "delete", ns] for ns in namespaces]


def uplink_of(fleet: Fleet, prefix: str, gateway_id: str) -> Link:
    for link in links(fleet, prefix):
        if link.node == gateway_id and fleet.node(gateway_id).has("gateway"):
            return link
    raise SaltmarshError(f"{gateway_id} is not a gateway of this lab")


def link_state_commands(link: Link, up: bool) -> list[Command]:
    state = "up" if up else "down"
    # Both ends, as a pulled cable: neither side keeps a carrier to send into.
    return [
        _in(link.node_ns, "link", "set", link.node_dev, state),
        _in(link.far_ns, "link", "set", link.far_dev, state),
    ]


def netem_commands(link: Link, loss_pct: float, delay_ms: float, rate_kbit: float | None) -> list[Command]:
    """The same impairment in both directions (netem shapes only what leaves a device)."""
    spec = ["netem", "loss", f"{loss_pct}%", "delay", f"{delay_ms}ms"]
    if rate_kbit is not None:
        spec += ["rate", f"{rate_kbit}kbit"]
    return [
        ["ip", "netns", "exec", link.node_ns, "tc", "qdisc", "replace", "dev", link.node_dev, "root", *spec],
        ["ip", "netns", "exec", link.far_ns, "tc", "qdisc", "replace", "dev", link.far_dev, "root", *spec],
    ]


def clear_netem_commands(link: Link) -> list[Command]:
    return [
        ["ip", "netns", "exec", link.node_ns, "tc", "qdisc", "del", "dev", link.node_dev, "root"],
        ["ip", "netns", "exec", link.far_ns, "tc", "qdisc", "del", "dev", link.far_dev, "root"],
    ]


IMPAIR_TABLE = "smlab_impair"


def nft_impair_script(link: Link, loss_pct: float, rate_kbit: float | None) -> str:
    """The fallback where the kernel has no netem qdisc (a Firecracker guest's, say): random loss
    both ways, and a rate cap by policing, from nftables on the gateway's end of its uplink.
    Delay needs a queue, which nftables does not have."""
    matches = []
    if loss_pct > 0:
        matches.append(f"numgen random mod 10000 < {round(loss_pct * 100)} counter drop")
    if rate_kbit is not None:
        matches.append(f"limit rate over {max(1, round(rate_kbit / 8))} kbytes/second counter drop")
    egress = "; ".join(f'oifname "{link.node_dev}" {m}' for m in matches)
    ingress = "; ".join(f'iifname "{link.node_dev}" {m}' for m in matches)
    return (
        f"table inet {IMPAIR_TABLE} {{\n"
        f"  chain egress {{ type filter hook postrouting priority 0; {egress}; }}\n"
        f"  chain ingress {{ type filter hook prerouting priority 0; {ingress}; }}\n"
        "}\n"
    )


def nft_impair(link: Link, loss_pct: float, rate_kbit: float | None) -> None:
    script = nft_impair_script(link, loss_pct, rate_kbit)
    done = subprocess.run(
        ["ip", "netns", "exec", link.node_ns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SaltmarshError(f"nft in {link.node_ns}: {done.stderr.strip()}")


def nft_clear(link: Link) -> int:
    """Remove the fallback impairment; how many packets it dropped."""
    listed = subprocess.run(
        ["ip", "netns", "exec", link.node_ns, "nft", "-j", "list", "table", "inet", IMPAIR_TABLE],
        capture_output=True,
        text=True,
        check=False,
    )
    dropped = sum(int(m) for m in re.findall(r'"counter": \{"packets": (\d+)', listed.stdout))
    subprocess.run(
        ["ip", "netns", "exec", link.node_ns, "nft", "delete", "table", "inet", IMPAIR_TABLE],
        capture_output=True,
        check=False,
    )
    return dropped


def run(commands: Sequence[Command], check: bool = True) -> list[str]:
    """Run each command; with check, stop at the first failure, naming it. Returns the failures."""
    failures: list[str] = []
    for argv in commands:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            failure = f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}"
            if check:
                raise SaltmarshError(failure)
            failures.append(failure)
    return failures


def namespaces() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def lab_namespaces(prefix: str) -> list[str]:
    """Every namespace of one lab on this machine, whichever run of it made them."""
    return [ns for ns in namespaces() if ns.startswith(prefix)]


def namespace_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(pid) for pid in done.stdout.split() if pid.isdigit()]
