"""The lab's wiring, node mounts and Salt configs, checked as data: no root, no running lab.

network.build_commands and the fault commands are pure command lines; node.anchor_script is the
shell its anchor runs; saltctl's configs are dicts. Each is checked for what it does to a node.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.lab import network
from saltmarsh.ops.lab.fleet import REPO, Fleet, Node, generated_fleet
from saltmarsh.ops.lab.node import OVERLAID, PILLAR_MOUNT, REPO_MOUNT, NodeDirs, anchor_script
from saltmarsh.ops.lab.saltctl import StateRun, hosts_file, master_config, minion_config

FLEET = generated_fleet(2, 2)
PREFIX = network.lab_prefix(Path("/tmp/saltmarsh-lab-test"))
COMMANDS = network.build_commands(FLEET, PREFIX)
IFNAMSIZ = 15  # the kernel's limit on an interface name, without its NUL


def ns(node: Node | str) -> str:
    return network.netns_name(FLEET.node(node) if isinstance(node, str) else node, PREFIX)


def in_ns(node: Node | str, *argv: str) -> list[str]:
    return ["ip", "-n", ns(node), *argv]


def veth_of(node: Node) -> list[str]:
    """The one command that makes `node`'s link to the node above it."""
    veths = [c for c in COMMANDS if c[:5] == in_ns(node, "link", "add") and "veth" in c]
    assert len(veths) == 1, veths
    return veths[0]


def test_the_fleet_is_two_sites_of_two_sensors() -> None:
    assert [n.id for n in FLEET.nodes] == [
        "master",
        "site01-gw1",
        "site01-s001",
        "site01-s002",
        "site02-gw1",
        "site02-s001",
        "site02-s002",
    ]


def test_one_namespace_per_node_with_the_lab_prefix() -> None:
    added = [c[3] for c in COMMANDS if c[:3] == ["ip", "netns", "add"]]
    assert added == [PREFIX + node.id for node in FLEET.nodes]
    # Made first: every other command runs in a namespace that exists by then.
    assert COMMANDS[: len(added)] == [["ip", "netns", "add", name] for name in added]


def test_every_command_acts_in_a_namespace_of_this_lab() -> None:
    namespaces = {ns(node) for node in FLEET.nodes}
    for argv in COMMANDS[len(FLEET.nodes) :]:
        if argv[:2] == ["ip", "-n"]:
            assert argv[2] in namespaces, argv
        else:
            assert argv[:3] == ["ip", "netns", "exec"] and argv[3] in namespaces, argv
        if "netns" in argv[4:]:
            assert argv[argv.index("netns", 4) + 1] in namespaces, argv


def test_every_loopback_is_up() -> None:
    for node in FLEET.nodes:
        assert in_ns(node, "link", "set", "lo", "up") in COMMANDS


def test_the_master_holds_the_uplink_bridge_with_its_address() -> None:
    master = FLEET.master
    bridge = [
        in_ns(master, "link", "add", "uplink0", "type", "bridge"),
        in_ns(master, "addr", "add", "192.168.56.10/24", "dev", "uplink0"),
        in_ns(master, "link", "set", "uplink0", "up"),
    ]
    at = COMMANDS.index(bridge[0])
    assert COMMANDS[at : at + 3] == bridge
    assert f"{master.uplink}/{FLEET.uplink.prefixlen}" == "192.168.56.10/24"


@pytest.mark.parametrize("gateway", FLEET.with_role("gateway"), ids=lambda n: n.id)
def test_each_gateway(gateway: Node) -> None:
    assert gateway.site is not None
    lan = FLEET.lans[gateway.site]
    master = FLEET.master
    # Its site's LAN bridge, holding its LAN address, and it forwards between LAN and uplink.
    assert in_ns(gateway, "link", "add", "lan0", "type", "bridge") in COMMANDS
    assert in_ns(gateway, "addr", "add", f"{gateway.lan}/{lan.prefixlen}", "dev", "lan0") in COMMANDS
    assert in_ns(gateway, "link", "set", "lan0", "up") in COMMANDS
    assert ["ip", "netns", "exec", ns(gateway), "sysctl", "-qw", "net.ipv4.ip_forward=1"] in COMMANDS
    # Its uplink: a veth whose far end is on the master's uplink bridge.
    veth = veth_of(gateway)
    assert veth[:10] == in_ns(gateway, "link", "add", "uplink", "type", "veth", "peer", "name")
    far_dev = veth[10]
    assert veth[11:] == ["netns", ns(master)]
    assert in_ns(master, "link", "set", far_dev, "master", "uplink0", "up") in COMMANDS
    assert in_ns(gateway, "addr", "add", f"{gateway.uplink}/24", "dev", "uplink") in COMMANDS
    assert in_ns(gateway, "link", "set", "uplink", "up") in COMMANDS
    assert in_ns(gateway, "route", "add", "default", "via", str(master.uplink)) in COMMANDS
    # uplink_of names the same link, for cutting it.
    assert network.uplink_of(FLEET, PREFIX, gateway.id) == network.Link(
        gateway.id, ns(gateway), "uplink", ns(master), far_dev
    )


@pytest.mark.parametrize("sensor", FLEET.with_role("sensor"), ids=lambda n: n.id)
def test_each_sensor(sensor: Node) -> None:
    assert sensor.site is not None
    gateway = FLEET.gateway_of(sensor.site)
    veth = veth_of(sensor)
    assert veth[:10] == in_ns(sensor, "link", "add", "eth0", "type", "veth", "peer", "name")
    far_dev = veth[10]
    # The far end is in its own gateway's namespace, on that gateway's LAN bridge.
    assert veth[11:] == ["netns", ns(gateway)]
    assert in_ns(gateway, "link", "set", far_dev, "master", "lan0", "up") in COMMANDS
    assert in_ns(sensor, "addr", "add", f"{sensor.lan}/24", "dev", "eth0") in COMMANDS
    assert in_ns(sensor, "link", "set", "eth0", "up") in COMMANDS
    assert in_ns(sensor, "route", "add", "default", "via", str(gateway.lan)) in COMMANDS
    routes = [c for c in COMMANDS if c[:5] == in_ns(sensor, "route", "add")]
    assert len(routes) == 1


def test_the_master_routes_each_sites_lan_via_its_gateway() -> None:
    routes = [c[5:] for c in COMMANDS if c[:5] == in_ns(FLEET.master, "route", "add")]
    assert routes == [
        ["192.168.57.0/24", "via", "192.168.56.11"],
        ["192.168.58.0/24", "via", "192.168.56.12"],
    ]
    assert routes == [[str(lan), "via", str(FLEET.gateway_of(site).uplink)] for site, lan in FLEET.lans.items()]


def test_each_far_end_is_made_before_it_joins_its_bridge() -> None:
    joins = 0
    for at, argv in enumerate(COMMANDS):
        if argv[3:5] == ["link", "set"] and "master" in argv:
            joins += 1
            far_ns, far_dev = argv[2], argv[5]
            made = [c for c in COMMANDS[:at] if "peer" in c and c[c.index("peer") + 2 :] == [far_dev, "netns", far_ns]]
            assert len(made) == 1, argv
            bridge = argv[argv.index("master") + 1]
            assert ["ip", "-n", far_ns, "link", "add", bridge, "type", "bridge"] in COMMANDS[:at], argv
    assert joins == len(FLEET.nodes) - 1


def interface_names(commands: list[list[str]]) -> set[str]:
    names: set[str] = set()
    for argv in commands:
        if argv[3:5] == ["link", "add"]:
            names.add(argv[5])
        if "peer" in argv:
            names.add(argv[argv.index("peer") + 2])
        if "dev" in argv:
            names.add(argv[argv.index("dev") + 1])
    return names


@pytest.mark.parametrize("fleet", [FLEET, generated_fleet(3, 200)], ids=["2x2", "3x200"])
def test_no_interface_name_is_longer_than_the_kernel_allows(fleet: Fleet) -> None:
    names = interface_names(network.build_commands(fleet, PREFIX))
    assert {"uplink0", "lan0", "uplink", "eth0"} <= names
    assert len(names) > 4
    assert [n for n in names if len(n) > IFNAMSIZ] == []
    # The names that must be unique in one namespace are: every far end is its own.
    far_ends = [(link.far_ns, link.far_dev) for link in network.links(fleet, PREFIX)]
    assert len(far_ends) == len(set(far_ends)) == len(fleet.nodes) - 1


def test_lab_prefix_is_per_base_dir_and_stable(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    assert network.lab_prefix(one) != network.lab_prefix(other)
    assert network.lab_prefix(one) == network.lab_prefix(one)
    assert network.lab_prefix(one) == network.lab_prefix(tmp_path / "x" / ".." / "one")
    assert re.fullmatch(r"smlab-[0-9a-f]{6}-", network.lab_prefix(one))


@pytest.mark.parametrize(("up", "state"), [(False, "down"), (True, "up")])
def test_link_state_commands_act_on_both_ends(up: bool, state: str) -> None:
    link = network.uplink_of(FLEET, PREFIX, "site02-gw1")
    assert network.link_state_commands(link, up=up) == [
        in_ns("site02-gw1", "link", "set", "uplink", state),
        in_ns("master", "link", "set", link.far_dev, state),
    ]


@pytest.mark.parametrize("node", ["master", "site01-s001"])
def test_only_a_gateway_has_an_uplink_to_cut(node: str) -> None:
    with pytest.raises(SaltmarshError, match=node):
        network.uplink_of(FLEET, PREFIX, node)


@pytest.mark.parametrize(
    ("loss", "delay", "rate", "spec"),
    [
        (20.0, 200.0, None, ["netem", "loss", "20.0%", "delay", "200.0ms"]),
        (0.0, 50.0, 512.0, ["netem", "loss", "0.0%", "delay", "50.0ms", "rate", "512.0kbit"]),
        (2.5, 0.0, None, ["netem", "loss", "2.5%", "delay", "0.0ms"]),
    ],
)
def test_netem_commands_impair_both_ends(loss: float, delay: float, rate: float | None, spec: list[str]) -> None:
    link = network.uplink_of(FLEET, PREFIX, "site01-gw1")
    assert network.netem_commands(link, loss, delay, rate) == [
        ["ip", "netns", "exec", ns("site01-gw1"), "tc", "qdisc", "replace", "dev", "uplink", "root", *spec],
        ["ip", "netns", "exec", ns("master"), "tc", "qdisc", "replace", "dev", link.far_dev, "root", *spec],
    ]


def test_clear_netem_commands_clear_both_ends() -> None:
    link = network.uplink_of(FLEET, PREFIX, "site01-gw1")
    assert network.clear_netem_commands(link) == [
        ["ip", "netns", "exec", ns("site01-gw1"), "tc", "qdisc", "del", "dev", "uplink", "root"],
        ["ip", "netns", "exec", ns("master"), "tc", "qdisc", "del", "dev", link.far_dev, "root"],
    ]


def test_teardown_deletes_each_namespace() -> None:
    assert network.teardown_commands(["a", "b"]) == [["ip", "netns", "delete", "a"], ["ip", "netns", "delete", "b"]]


# -- a node's mounts ----------------------------------------------------------------------------


def test_anchor_script_overlays_the_nodes_layers_and_binds_repo_and_pillar(tmp_path: Path) -> None:
    # A space in every path: the script must still mount the right directories.
    dirs = NodeDirs(tmp_path / "node dirs" / "gw1")
    repo, pillar = tmp_path / "the repo", tmp_path / "lab pillar"
    lines = [shlex.split(line) for line in anchor_script("gw1", dirs, repo, pillar).splitlines()]
    assert lines[0] == ["set", "-e"]
    assert OVERLAID == ("etc", "var", "run", "srv")
    for top in OVERLAID:
        options = f"lowerdir=/{top},upperdir={dirs.root}/{top}.upper,workdir={dirs.root}/{top}.work"
        assert ["mount", "-t", "overlay", "saltmarsh-lab", "-o", options, f"/{top}"] in lines
    repo_bind = ["mount", "--bind", "-o", "ro", str(repo), "/srv/saltmarsh"]
    pillar_bind = ["mount", "--bind", "-o", "ro", str(pillar), "/srv/saltmarsh-lab"]
    assert (REPO_MOUNT, PILLAR_MOUNT) == ("/srv/saltmarsh", "/srv/saltmarsh-lab")
    assert repo_bind in lines
    assert pillar_bind in lines
    # The binds go on top of the /srv overlay, not under it where the overlay would hide them.
    srv_overlay = next(i for i, line in enumerate(lines) if line[-1:] == ["/srv"])
    assert srv_overlay < lines.index(repo_bind)
    assert srv_overlay < lines.index(pillar_bind)
    assert ["mkdir", "-p", "/srv/saltmarsh"] in lines[srv_overlay : lines.index(repo_bind)]
    assert ["hostname", "gw1"] in lines
    # Ready only once everything is mounted; then the anchor holds the namespaces.
    assert lines[-2:] == [["touch", str(dirs.ready_marker)], ["exec", "sleep", "infinity"]]


@pytest.mark.parametrize(
    ("absolute", "layer", "rest"),
    [
        ("/etc/saltmarsh/x", "etc.upper", "saltmarsh/x"),
        ("/etc/saltmarsh/gateway.toml", "etc.upper", "saltmarsh/gateway.toml"),
        ("/var/lib/saltmarsh-svc/mosquitto.service.pid", "var.upper", "lib/saltmarsh-svc/mosquitto.service.pid"),
        ("/run/salt-master.pid", "run.upper", "salt-master.pid"),
        ("/srv/x", "srv.upper", "x"),
    ],
)
def test_node_dirs_path_maps_into_the_upper_layer(absolute: str, layer: str, rest: str, tmp_path: Path) -> None:
    assert NodeDirs(tmp_path).path(absolute) == tmp_path / layer / rest


@pytest.mark.parametrize("absolute", ["/home/x", "/usr/bin/salt-call", "/etcetera/x", "/tmp/x", "/"])
def test_node_dirs_path_refuses_what_is_not_the_nodes_own(absolute: str, tmp_path: Path) -> None:
    with pytest.raises(SaltmarshError, match=re.escape(absolute)):
        NodeDirs(tmp_path).path(absolute)


def test_node_dirs_path_refuses_a_way_out_of_the_layers(tmp_path: Path) -> None:
    with pytest.raises(SaltmarshError):
        NodeDirs(tmp_path).path("/etc/../home/x")


# -- Salt's configs -------------------------------------------------------------------------------


def test_master_config_never_auto_accepts_and_serves_the_repo() -> None:
    config = master_config(FLEET.master)
    assert config["interface"] == "192.168.56.10"
    assert config["auto_accept"] is False
    assert config["open_mode"] is False
    assert [k for k in config if k.startswith("autosign")] == []
    assert config["file_roots"] == {"base": ["/srv/saltmarsh/salt/states"]}
    # The lab's pillar first: it shadows the repo's placeholder sites and secrets.
    assert config["pillar_roots"] == {"base": ["/srv/saltmarsh-lab/pillar", "/srv/saltmarsh/pillar"]}
    # The repo paths are the repo's, as mounted in the node.
    for root in config["file_roots"]["base"] + config["pillar_roots"]["base"][1:]:
        assert (REPO / Path(root).relative_to(REPO_MOUNT)).is_dir(), root


@pytest.mark.parametrize("node", ["master", "site01-gw1", "site02-s002"])
def test_minion_config(node: str) -> None:
    config = minion_config(FLEET.node(node), FLEET.master)
    assert config["id"] == node
    assert config["master"] == "192.168.56.10"
    assert config["providers"] == {"service": "saltmarsh_svc"}
    assert (REPO / "salt" / "states" / "_modules" / "saltmarsh_svc.py").is_file()
    assert config["enable_fqdns_grains"] is False


def test_hosts_file_names_every_address() -> None:
    lines = hosts_file(FLEET).splitlines()
    assert lines[0] == "127.0.0.1 localhost"
    assert "192.168.56.10 master" in lines
    assert "192.168.56.12 site02-gw1" in lines
    assert "192.168.58.1 site02-gw1" in lines
    assert "192.168.57.11 site01-s002" in lines
    assert len(lines) == 1 + sum((n.uplink is not None) + (n.lan is not None) for n in FLEET.nodes)


STATE_RETURN: dict[str, Any] = {
    "site01-gw1": {
        "file_|-saltmarsh-gateway-config-file-managed_|-/etc/saltmarsh/gateway.toml_|-managed": {
            "result": True,
            "changes": {"diff": "New file"},
            "comment": "File updated",
        },
        "service_|-saltmarsh-gateway-service-running_|-saltmarsh-forwarder_|-running": {
            "result": False,
            "changes": {},
            "comment": "Service saltmarsh-forwarder failed to start",
        },
        "pkg_|-saltmarsh-gateway-package-installed_|-mosquitto_|-installed": {
            "result": True,
            "changes": {},
            "comment": "All specified packages are already installed",
        },
        "test_|-dry_|-dry_|-nop": {"result": None, "changes": {}, "comment": "would change"},
    },
    "site01-s001": {
        "file_|-saltmarsh-sensor-config_|-/etc/saltmarsh/sensor.toml_|-managed": {
            "result": True,
            "changes": {"diff": "+interval_s = 1.0"},
            "comment": "File updated",
        },
        "service_|-saltmarsh-sensor-service_|-saltmarsh-sensor_|-running": {
            "result": True,
            "changes": {"saltmarsh-sensor": True},
            "comment": "Started",
        },
    },
    "site02-s001": "Minion did not return. [No response]",
}


def test_state_run_failures_and_changes() -> None:
    run = StateRun("roles:gateway", STATE_RETURN)
    assert run.failures() == [
        "site01-gw1: service_|-saltmarsh-gateway-service-running_|-saltmarsh-forwarder_|-running: "
        "Service saltmarsh-forwarder failed to start",
        "site02-s001: Minion did not return. [No response]",
    ]
    assert run.changed() == {"site01-gw1": 1, "site01-s001": 2}
    assert run.states() == {"site01-gw1": 4, "site01-s001": 2}


def test_a_clean_state_run_has_no_failures() -> None:
    clean = {minion: ret for minion, ret in STATE_RETURN.items() if minion == "site01-s001"}
    assert StateRun("roles:sensor", clean).failures() == []
