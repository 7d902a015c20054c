"""The fleet file (salt/fleet.yaml) as a table, and the Vagrant fleet kept equal to the lab's.

parse_fleet: one document in, the Fleet or the ConfigError naming the bad field out.
generated_fleet: the lab's bigger fleets, named as `saltmarsh pillar new-site` names minions.
The Vagrantfile reads the same fleet file: ruby loads it with a stub `Vagrant` and prints what it
built, which must be the lab's nodes and routes; the Vagrant grains, salt configs and the example
pillar must name the same roles and addresses.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from saltmarsh.contract.errors import ConfigError
from saltmarsh.ops.lab import network
from saltmarsh.ops.lab.fleet import (
    FLEET_FILE,
    MAX_SENSORS_PER_SITE,
    MAX_SITES,
    Fleet,
    Node,
    fleet_document,
    generated_fleet,
    load_fleet,
    parse_fleet,
)
from saltmarsh.ops.pillar import gateway_id, sensor_ids

REPO = Path(__file__).resolve().parent.parent
_DROP = object()


def repo_doc() -> dict[str, Any]:
    doc = yaml.safe_load(FLEET_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def changed(path: str, value: Any) -> dict[str, Any]:
    """The repo's fleet document with the dotted `path` set to `value` (_DROP removes it)."""
    doc = copy.deepcopy(repo_doc())
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return doc


def test_the_repo_fleet_file_parses() -> None:
    fleet = load_fleet()
    assert [n.id for n in fleet.nodes] == ["master", "gw1", "sensor1", "sensor2"]
    assert fleet.master.id == "master"
    assert fleet.master.roles == ("cloud", "master")
    assert fleet.sites == ["example"]
    assert fleet.gateway_of("example").id == "gw1"
    assert [n.id for n in fleet.with_role("sensor", "example")] == ["sensor1", "sensor2"]


MINIMAL: dict[str, Any] = {
    "uplink": "10.1.0.0/24",
    "sites": {"s": {"lan": "10.2.0.0/24"}},
    "nodes": {
        "m": {"roles": ["cloud", "master"], "uplink": "10.1.0.5"},
        "g": {"roles": ["gateway"], "site": "s", "uplink": "10.1.0.6", "lan": "10.2.0.1"},
        "x": {"roles": ["sensor"], "site": "s", "lan": "10.2.0.9", "vagrant": {"memory": 256}},
    },
}
MINIMAL_FLEET = Fleet(
    uplink=IPv4Network("10.1.0.0/24"),
    lans={"s": IPv4Network("10.2.0.0/24")},
    nodes=(
        Node("m", ("cloud", "master"), None, IPv4Address("10.1.0.5"), None),
        Node("g", ("gateway",), "s", IPv4Address("10.1.0.6"), IPv4Address("10.2.0.1")),
        Node("x", ("sensor",), "s", None, IPv4Address("10.2.0.9")),
    ),
)


TWO_SITES = {
    **MINIMAL,
    "sites": {**MINIMAL["sites"], "t_2-b": {"lan": "10.3.0.0/16"}},
    "nodes": {
        **MINIMAL["nodes"],
        "h": {"roles": ["gateway"], "site": "t_2-b", "uplink": "10.1.0.7", "lan": "10.3.200.1"},
    },
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(MINIMAL, MINIMAL_FLEET, id="minimal-vagrant-keys-ignored"),
        pytest.param(
            TWO_SITES,
            Fleet(
                uplink=MINIMAL_FLEET.uplink,
                lans={**MINIMAL_FLEET.lans, "t_2-b": IPv4Network("10.3.0.0/16")},
                nodes=(
                    *MINIMAL_FLEET.nodes,
                    Node("h", ("gateway",), "t_2-b", IPv4Address("10.1.0.7"), IPv4Address("10.3.200.1")),
                ),
            ),
            id="two-sites-one-without-sensors",
        ),
    ],
)
def test_parse_fleet_good(doc: dict[str, Any], expected: Fleet) -> None:
    assert parse_fleet(doc) == expected


BAD: list[tuple[str, dict[str, Any] | Any, str]] = [
    # (id, document, the key the error names)
    ("not-a-mapping", ["uplink"], "fleet"),
    ("uplink-missing", changed("uplink", _DROP), "uplink"),
    ("uplink-not-a-network", changed("uplink", "uplink-net"), "uplink"),
    ("uplink-host-bits-set", changed("uplink", "192.168.56.1/24"), "uplink"),
    ("uplink-prefix-too-long", changed("uplink", "192.168.56.0/33"), "uplink"),
    ("lan-not-a-network", changed("sites.example.lan", "lan"), "sites.example.lan"),
    ("site-without-lan", changed("sites.example", {}), "sites.example.lan"),
    ("sites-missing", changed("sites", _DROP), "sites"),
    ("sites-empty", changed("sites", {}), "sites"),
    ("site-id-with-a-dot", changed("sites", {"ex.ample": {"lan": "192.168.57.0/24"}}), "sites.ex.ample"),
    ("nodes-missing", changed("nodes", _DROP), "nodes"),
    ("node-not-a-mapping", changed("nodes.sensor1", "sensor"), "nodes.sensor1"),
    ("roles-missing", changed("nodes.sensor1.roles", _DROP), "nodes.sensor1.roles"),
    ("roles-empty", changed("nodes.sensor1.roles", []), "nodes.sensor1.roles"),
    ("unknown-role", changed("nodes.sensor1.roles", ["sensor", "printer"]), "nodes.sensor1.roles"),
    ("sensor-missing-site", changed("nodes.sensor1.site", _DROP), "nodes.sensor1.site"),
    ("gateway-missing-site", changed("nodes.gw1.site", _DROP), "nodes.gw1.site"),
    ("site-not-under-sites", changed("nodes.sensor1.site", "elsewhere"), "nodes.sensor1.site"),
    ("sensor-without-lan", changed("nodes.sensor1.lan", _DROP), "nodes.sensor1.lan"),
    ("gateway-without-lan", changed("nodes.gw1.lan", _DROP), "nodes.gw1.lan"),
    ("gateway-without-uplink", changed("nodes.gw1.uplink", _DROP), "nodes.gw1.uplink"),
    ("cloud-without-uplink", changed("nodes.master.uplink", _DROP), "nodes.master.uplink"),
    ("address-not-an-address", changed("nodes.sensor1.lan", "sensor-one"), "nodes.sensor1.lan"),
    ("lan-address-outside-the-lan", changed("nodes.gw1.lan", "192.168.58.1"), "nodes.gw1.lan"),
    ("uplink-address-outside-the-uplink", changed("nodes.master.uplink", "10.0.0.10"), "nodes.master.uplink"),
    ("uplink-address-on-the-lan", changed("nodes.gw1.uplink", "192.168.57.11"), "nodes.gw1.uplink"),
    ("network-address", changed("nodes.gw1.lan", "192.168.57.0"), "nodes.gw1.lan"),
    ("broadcast-address", changed("nodes.sensor1.lan", "192.168.57.255"), "nodes.sensor1.lan"),
    ("uplink-network-address", changed("nodes.master.uplink", "192.168.56.0"), "nodes.master.uplink"),
    ("duplicate-lan-address", changed("nodes.sensor2.lan", "192.168.57.21"), "nodes.sensor2"),
    ("duplicate-uplink-address", changed("nodes.gw1.uplink", "192.168.56.10"), "nodes.gw1"),
    (
        "two-masters",
        changed("nodes.master2", {"roles": ["cloud", "master"], "uplink": "192.168.56.12"}),
        "nodes",
    ),
    ("no-master", changed("nodes.master.roles", ["cloud"]), "nodes"),
    ("master-not-cloud", changed("nodes.master.roles", ["master"]), "nodes"),
    (
        "site-with-two-gateways",
        changed(
            "nodes.gw2",
            {"roles": ["gateway"], "site": "example", "uplink": "192.168.56.12", "lan": "192.168.57.2"},
        ),
        "sites.example",
    ),
    ("site-without-a-gateway", changed("nodes.gw1.roles", ["sensor"]), "sites.example"),
]


@pytest.mark.parametrize(("doc", "key"), [pytest.param(doc, key, id=name) for name, doc, key in BAD])
def test_parse_fleet_names_the_bad_field(doc: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(doc)
    assert caught.value.key == key
    assert repr(key) in str(caught.value)


@pytest.mark.parametrize(
    "fleet",
    [
        pytest.param(load_fleet(), id="repo-fleet"),
        pytest.param(generated_fleet(3, 4), id="generated-3x4"),
        pytest.param(MINIMAL_FLEET, id="minimal"),
    ],
)
def test_fleet_document_round_trips(fleet: Fleet) -> None:
    document = fleet_document(fleet)
    assert parse_fleet(document) == fleet
    # The document is what a fleet file holds: it survives YAML too.
    assert parse_fleet(yaml.safe_load(yaml.safe_dump(document, sort_keys=False))) == fleet


def test_generated_fleet_is_named_as_new_site_names_minions() -> None:
    fleet = generated_fleet(3, 4)
    assert fleet.sites == ["site01", "site02", "site03"]
    assert fleet.master == load_fleet().master
    for site in fleet.sites:
        assert [n.id for n in fleet.with_role("gateway", site)] == [gateway_id(site)]
        assert [n.id for n in fleet.with_role("sensor", site)] == sensor_ids(site, 4)
    assert len(fleet.nodes) == 1 + 3 * (1 + 4)


@pytest.mark.parametrize(
    ("sites", "sensors"),
    [(3, 4), (1, 1), (MAX_SITES, 1), (1, MAX_SENSORS_PER_SITE)],
)
def test_generated_fleet_addresses_are_unique_host_addresses_of_their_networks(sites: int, sensors: int) -> None:
    fleet = generated_fleet(sites, sensors)
    addresses: list[IPv4Address] = []
    for node in fleet.nodes:
        if node.uplink is not None:
            assert node.uplink in list(fleet.uplink.hosts()), node
            addresses.append(node.uplink)
        if node.lan is not None:
            assert node.site is not None
            assert node.lan in list(fleet.lans[node.site].hosts()), node
            addresses.append(node.lan)
    assert len(addresses) == len(set(addresses))
    lans = [fleet.uplink, *fleet.lans.values()]
    assert all(not a.overlaps(b) for i, a in enumerate(lans) for b in lans[i + 1 :])
    assert parse_fleet(fleet_document(fleet)) == fleet


@pytest.mark.parametrize(
    ("sites", "sensors", "key"),
    [
        (0, 1, "sites"),
        (-1, 1, "sites"),
        (MAX_SITES + 1, 1, "sites"),
        (1, 0, "sensors-per-site"),
        (1, MAX_SENSORS_PER_SITE + 1, "sensors-per-site"),
    ],
)
def test_generated_fleet_bounds_name_the_field(sites: int, sensors: int, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        generated_fleet(sites, sensors)
    assert caught.value.key == key


# -- the Vagrantfile and the lab cannot drift apart ----------------------------------------------

RUBY_SCRIPT = """
require "json"
module Vagrant
  def self.configure(_version); end
end
load ARGV.fetch(0)
puts JSON.generate({
  "machines" => MACHINES,
  "routes" => MACHINES.to_h { |name, spec| [name, routes(spec)] },
})
"""


@pytest.fixture(scope="module")
def vagrant_fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the repo's Vagrantfile builds from salt/fleet.yaml: its MACHINES and each one's routes."""
    ruby = shutil.which("ruby", path="/usr/bin:/bin")
    # A failure, not a skip: `make test` installs Vagrant, and Vagrant brings ruby.
    assert ruby is not None, "ruby is not installed (it comes with vagrant): run `make system-deps`"
    home = tmp_path_factory.mktemp("ruby-home")
    script = home / "machines.rb"
    script.write_text(RUBY_SCRIPT)
    done = subprocess.run(
        [ruby, str(script), str(REPO / "Vagrantfile")],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert isinstance(out, dict)
    return out


def test_vagrant_machines_are_the_fleet_files_nodes(vagrant_fleet: dict[str, Any]) -> None:
    fleet = load_fleet()
    machines = vagrant_fleet["machines"]
    assert list(machines) == [node.id for node in fleet.nodes]
    for node in fleet.nodes:
        spec = machines[node.id]
        assert spec["roles"] == list(node.roles), node.id
        assert spec["site"] == node.site, node.id
        assert spec["uplink"] == (None if node.uplink is None else str(node.uplink)), node.id
        assert spec["lan"] == (None if node.lan is None else str(node.lan)), node.id


Routes = list[tuple[str, str]]  # (destination, via)


def expected_routes(fleet: Fleet, to_uplink: str) -> dict[str, tuple[bool, Routes]]:
    """The one routing plan, per node (forwards?, routes): gateways forward; a sensor sends
    `to_uplink` through its gateway's LAN address; the master reaches each site's LAN through that
    site's gateway's uplink address."""
    routes: dict[str, tuple[bool, Routes]] = {}
    for node in fleet.nodes:
        if node.has("gateway"):
            routes[node.id] = (True, [])
        elif node.has("sensor"):
            assert node.site is not None
            routes[node.id] = (False, [(to_uplink, str(fleet.gateway_of(node.site).lan))])
        else:
            routes[node.id] = (
                False,
                [(str(lan), str(fleet.gateway_of(site).uplink)) for site, lan in fleet.lans.items()],
            )
    return routes


def vagrant_routes(lines: list[str]) -> tuple[bool, Routes]:
    forwards = False
    routes: Routes = []
    for line in lines:
        words = line.split()
        if words == ["sysctl", "-qw", "net.ipv4.ip_forward=1"]:
            forwards = True
            continue
        assert words[:3] == ["ip", "route", "replace"] and words[4] == "via" and len(words) == 6, line
        routes.append((words[3], words[5]))
    return forwards, routes


def lab_routes(fleet: Fleet, prefix: str) -> dict[str, tuple[bool, Routes]]:
    """The forwarding and routes that the lab's build_commands set up, per node."""
    by_ns = {network.netns_name(node, prefix): node.id for node in fleet.nodes}
    forwarding: set[str] = set()
    routes: dict[str, Routes] = {node.id: [] for node in fleet.nodes}
    for argv in network.build_commands(fleet, prefix):
        if argv[:3] == ["ip", "netns", "exec"] and argv[4:] == ["sysctl", "-qw", "net.ipv4.ip_forward=1"]:
            forwarding.add(by_ns[argv[3]])
        elif argv[:2] == ["ip", "-n"] and argv[3:5] == ["route", "add"]:
            assert argv[6] == "via" and len(argv) == 8, argv
            routes[by_ns[argv[2]]].append((argv[5], argv[7]))
    return {node_id: (node_id in forwarding, node_routes) for node_id, node_routes in routes.items()}


def test_vagrant_routes_are_the_labs(vagrant_fleet: dict[str, Any]) -> None:
    fleet = load_fleet()
    vagrant = {name: vagrant_routes(lines) for name, lines in vagrant_fleet["routes"].items()}
    # On Vagrant a sensor routes the uplink network via its gateway, which forwards; the
    # gateway is on the uplink itself and keeps Vagrant's own default route.
    assert vagrant == expected_routes(fleet, to_uplink=str(fleet.uplink))
    assert vagrant["sensor1"] == (False, [("192.168.56.0/24", "192.168.57.1")])
    assert vagrant["master"] == (False, [("192.168.57.0/24", "192.168.56.11")])
    # In the lab a sensor's gateway is its default route, and a gateway's is the master (a
    # namespace has no other way out).
    lab = lab_routes(fleet, network.lab_prefix(REPO))
    expected = expected_routes(fleet, to_uplink="default")
    for gateway in fleet.with_role("gateway"):
        expected[gateway.id] = (True, [("default", str(fleet.master.uplink))])
    assert lab == expected


@pytest.mark.parametrize("node", [n.id for n in load_fleet().nodes])
def test_vagrant_grains_are_the_nodes_grains(node: str) -> None:
    grains = yaml.safe_load((REPO / "salt" / "vagrant" / "grains" / node).read_text())
    assert grains == load_fleet().node(node).grains


def test_every_vagrant_grains_file_is_a_node() -> None:
    files = sorted(p.name for p in (REPO / "salt" / "vagrant" / "grains").iterdir())
    assert files == sorted(n.id for n in load_fleet().nodes)


def test_vagrant_salt_configs_point_at_the_masters_uplink() -> None:
    master = str(load_fleet().master.uplink)
    minion = yaml.safe_load((REPO / "salt" / "vagrant" / "minion").read_text())
    master_config = yaml.safe_load((REPO / "salt" / "vagrant" / "master").read_text())
    assert minion["master"] == master
    assert master_config["interface"] == master


def test_the_example_pillar_is_the_vagrant_fleets() -> None:
    fleet = load_fleet()
    site = yaml.safe_load((REPO / "pillar" / "sites" / "example.sls").read_text())["saltmarsh"]["sites"]["example"]
    gateway = fleet.gateway_of("example")
    assert site["broker"]["host"] == str(gateway.lan)
    assert site["uplink"]["host"] == str(fleet.master.uplink)
    assert list(site["gateways"]) == [gateway.id]
    assert list(site["devices"]) == [n.id for n in fleet.with_role("sensor", "example")]
    members = yaml.safe_load((REPO / "pillar" / "fleet.yaml").read_text())
    assert members["cloud"]["minions"] == [fleet.master.id]
    assert members["sites"]["example"] == {
        "gateways": [gateway.id],
        "sensors": [n.id for n in fleet.with_role("sensor", "example")],
    }
