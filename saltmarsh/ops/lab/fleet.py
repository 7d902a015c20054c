"""The test fleet's one description (salt/fleet.yaml): nodes, roles, sites, grains and addresses.

The Vagrantfile reads the same file for its VMs; `saltmarsh lab up` reads it for its namespaces,
or generates a bigger fleet of the same shape (`generated_fleet`), named as
`saltmarsh pillar new-site` names a site's minions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from saltmarsh.contract.errors import ConfigError
from saltmarsh.ops.pillar import SITE_PATTERN, gateway_id, sensor_ids

REPO = Path(__file__).resolve().parents[3]
FLEET_FILE = REPO / "salt" / "fleet.yaml"
ROLES = ("cloud", "master", "gateway", "sensor")
MAX_SITES = 60  # LANs are 192.168.(57 + n).0/24 after the uplink's 192.168.56.0/24
MAX_SENSORS_PER_SITE = 200  # addresses .10 to .209 of the site's LAN


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    roles: tuple[str, ...]
    site: str | None = None
    uplink: IPv4Address | None = None  # on the uplink network (cloud and gateways)
    lan: IPv4Address | None = None  # on its site's LAN (gateways and sensors)

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def grains(self) -> dict[str, Any]:
        grains: dict[str, Any] = {"roles": list(self.roles)}
        if self.site is not None:
            grains["site"] = self.site
        return grains

    @property
    def address(self) -> IPv4Address:
        """Where the node is reached first: its uplink address, else its LAN address."""
        address = self.uplink or self.lan
        assert address is not None  # parse_fleet refuses a node with neither
        return address


@dataclass(frozen=True, slots=True)
class Fleet:
    uplink: IPv4Network
    lans: Mapping[str, IPv4Network]
    nodes: tuple[Node, ...]

    @property
    def master(self) -> Node:
        return next(node for node in self.nodes if node.has("master"))

    @property
    def sites(self) -> list[str]:
        return list(self.lans)

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise ConfigError("node", f"{node_id!r} is not in the fleet ({', '.join(n.id for n in self.nodes)})")

    def with_role(self, role: str, site: str | None = None) -> list[Node]:
        return [n for n in self.nodes if n.has(role) and (site is None or n.site == site)]

    def gateway_of(self, site: str) -> Node:
        gateways = self.with_role("gateway", site)
        if not gateways:
            raise ConfigError(f"sites.{site}", "has no gateway node")
        return gateways[0]


def _address(value: Any, field: str, network: IPv4Network) -> IPv4Address:
    try:
        address = IPv4Address(str(value))
    except ValueError as err:
        raise ConfigError(field, f"{value!r} is not an IPv4 address") from err
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise ConfigError(field, f"{address} is not a host address of {network}")
    return address


def _network(value: Any, field: str) -> IPv4Network:
    try:
        return IPv4Network(str(value))
    except ValueError as err:
        raise ConfigError(field, f"{value!r} is not an IPv4 network") from err


def _node(node_id: str, spec: Any, uplink: IPv4Network, lans: Mapping[str, IPv4Network]) -> Node:
    field = f"nodes.{node_id}"
    if not isinstance(spec, Mapping):
        raise ConfigError(field, "must be a mapping")
    roles = spec.get("roles")
    if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
        raise ConfigError(f"{field}.roles", f"{roles!r} must be a non-empty list of {', '.join(ROLES)}")
    site = spec.get("site")
    if site is not None and site not in lans:
        raise ConfigError(f"{field}.site", f"{site!r} is not under sites:")
    node = Node(
        id=node_id,
        roles=tuple(roles),
        site=site,
        uplink=None if spec.get("uplink") is None else _address(spec["uplink"], f"{field}.uplink", uplink),
        lan=None if spec.get("lan") is None or site is None else _address(spec["lan"], f"{field}.lan", lans[site]),
    )
    needs = {
        "cloud": ("uplink",),
        "gateway": ("site", "uplink", "lan"),
        "sensor": ("site", "lan"),
    }
    for role in node.roles:
        for key in needs.get(role, ()):
            if getattr(node, key) is None:
                raise ConfigError(f"{field}.{key}", f"a {role} node needs one")
    return node


def parse_fleet(doc: Any) -> Fleet:
    """The fleet from the fleet file's document; a ConfigError names the first bad field."""
    if not isinstance(doc, Mapping):
        raise ConfigError("fleet", "must be a mapping with uplink, sites and nodes")
    uplink = _network(doc.get("uplink"), "uplink")
    sites = doc.get("sites")
    if not isinstance(sites, Mapping) or not sites:
        raise ConfigError("sites", "must map each site to its lan")
    lans: dict[str, IPv4Network] = {}
    for site, spec in sites.items():
        if not SITE_PATTERN.match(str(site)):
            raise ConfigError(f"sites.{site}", f"must match {SITE_PATTERN.pattern}")
        lans[str(site)] = _network(spec.get("lan") if isinstance(spec, Mapping) else None, f"sites.{site}.lan")
    nodes_doc = doc.get("nodes")
    if not isinstance(nodes_doc, Mapping) or not nodes_doc:
        raise ConfigError("nodes", "must map each node id to its roles and addresses")
    nodes = tuple(_node(str(node_id), spec, uplink, lans) for node_id, spec in nodes_doc.items())
    fleet = Fleet(uplink=uplink, lans=lans, nodes=nodes)
    _check_whole(fleet)
    return fleet


def _check_whole(fleet: Fleet) -> None:
    masters = fleet.with_role("master")
    if len(masters) != 1 or not masters[0].has("cloud"):
        raise ConfigError("nodes", "exactly one node must have the roles cloud and master")
    seen: dict[IPv4Address, str] = {}
    for node in fleet.nodes:
        for address in (node.uplink, node.lan):
            if address is not None and address in seen:
                raise ConfigError(f"nodes.{node.id}", f"{address} is also {seen[address]}'s address")
            if address is not None:
                seen[address] = node.id
    for site in fleet.sites:
        if len(fleet.with_role("gateway", site)) != 1:
            raise ConfigError(f"sites.{site}", "needs exactly one gateway node")


def load_fleet(path: Path = FLEET_FILE) -> Fleet:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(str(path), str(err)) from err
    return parse_fleet(doc)


def generated_fleet(sites: int, sensors_per_site: int, base: Fleet | None = None) -> Fleet:
    """`sites` sites of `sensors_per_site` sensors, on the fleet file's uplink network."""
    if not 1 <= sites <= MAX_SITES:
        raise ConfigError("sites", f"{sites} is not between 1 and {MAX_SITES}")
    if not 1 <= sensors_per_site <= MAX_SENSORS_PER_SITE:
        raise ConfigError("sensors-per-site", f"{sensors_per_site} is not between 1 and {MAX_SENSORS_PER_SITE}")
    base = base or load_fleet()
    master = base.master
    hosts = list(base.uplink.hosts())
    # Gateways from .11, as in the fleet file, after the cloud and room for more cloud nodes.
    uplinks = iter(h for h in hosts[10:] if h != master.uplink)
    lans: dict[str, IPv4Network] = {}
    nodes = [master]
    for index in range(1, sites + 1):
        site = f"site{index:02d}"
        lan = IPv4Network(f"192.168.{56 + index}.0/24")
        lans[site] = lan
        nodes.append(Node(gateway_id(site), ("gateway",), site, next(uplinks), lan.network_address + 1))
        for number, sensor in enumerate(sensor_ids(site, sensors_per_site)):
            nodes.append(Node(sensor, ("sensor",), site, None, lan.network_address + 10 + number))
    fleet = Fleet(uplink=base.uplink, lans=lans, nodes=tuple(nodes))
    _check_whole(fleet)
    return fleet


def fleet_document(fleet: Fleet) -> dict[str, Any]:
    """The fleet file's document for `fleet`: `parse_fleet(fleet_document(f)) == f`."""
    nodes: dict[str, Any] = {}
    for node in fleet.nodes:
        spec: dict[str, Any] = {"roles": list(node.roles)}
        if node.site is not None:
            spec["site"] = node.site
        if node.uplink is not None:
            spec["uplink"] = str(node.uplink)
        if node.lan is not None:
            spec["lan"] = str(node.lan)
        nodes[node.id] = spec
    return {
        "uplink": str(fleet.uplink),
        "sites": {site: {"lan": str(lan)} for site, lan in fleet.lans.items()},
        "nodes": nodes,
    }
