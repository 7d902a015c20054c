"""The lab's pillar: the repo's pillar layout, filled for the lab's fleet with fresh secrets.

The master reads `pillar_roots: [<lab pillar>, <repo>/pillar]`: the repo's top.sls assigns files
by minion id from the first fleet.yaml it finds, which is the lab's; the lab's sites/, secrets/
and cloud.sls shadow the repo's placeholder ones. Every password is fresh, the TLS material comes
from a fresh lab CA, and every secret is also returned, so the security checks can look for it
in every log.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saltmarsh.contract.signature import generate_key
from saltmarsh.ops.lab.ca import LabCA
from saltmarsh.ops.lab.fleet import Fleet
from saltmarsh.ops.localfleet.fleet import SENSOR_PLACES

PASSWORD_BYTES = 24
UPLINK_PORT = 8883
# The lab's stand-in for the fleet's Elasticsearch cluster, inside the cloud node
# (saltmarsh.ops.lab.lab.start_elasticsearch); osmem refuses the client's vendor media types.
ELASTICSEARCH_URL = "http://127.0.0.1:9200"
RELAY_ENGINE = {
    "name": "saltmarsh_relay",
    # Health (the relay's own counters) every 3 s, so a chaos run sees it catch up soon after.
    "config": {"elasticsearch": {"hosts": [ELASTICSEARCH_URL], "plain_json": True}, "health_interval_s": 3},
}
SITE_BROKER_PORT = 1883
COMMAND_KEY = "/etc/saltmarsh/command.key"  # the formula's default signing_key_file


@dataclass(frozen=True, slots=True)
class LabSettings:
    """What the lab sets for every minion: it runs the code from this checkout's venv."""

    venv: str
    service_user: str = "saltmarsh"
    beacon_interval_s: int = 3  # a chaos run waits for the beacons that see a spool drain
    sensor_interval_s: float = 1.0
    # Every sensor alerts when its temperature crosses this (None: no alerts); the lab sets it at
    # the simulated room's temperature of the moment, so the noise crosses it often.
    alert_above_temperature: float | None = None
    swarm: int = 0  # each sensor node a swarm host of this many simulated devices; 0: one device
    sink: str = "sqlite"  # the ingester's: "elasticsearch" writes to the emulator in the cloud node
    # The public half of the lab's command key (the private half is a root-only file in the master
    # node, `write_command_key`): every device and gateway trusts it.
    command_public_key: str | None = None

    def pillar(self) -> dict[str, Any]:
        manage = self.service_user != "root"
        sensor: dict[str, Any] = {"interval_s": self.sensor_interval_s}
        if self.alert_above_temperature is not None:
            sensor["alerts"] = {"above": {"temperature": round(self.alert_above_temperature, 2)}}
        return {
            "install": {"enabled": False, "venv": self.venv},
            "user": {"manage": manage, "name": self.service_user, "group": self.service_user},
            # A master restarting itself from a state would cut its own job: the lab restarts it.
            "master": {"manage_service": False},
            "sensor": sensor,
            # The lab's faults last seconds: with the fleet's 60 s silence, each plan would wait a
            # minute for the copies a kill left unconfirmed to be sent again and confirmed; and a
            # plan of several kills doubles the silence each time, so it stops at 20 s, not 600.
            "confirmations": {"overtaken_s": 3, "silence_s": 10, "silence_max_s": 20},
            "gateway": {"beacons": {"interval_s": self.beacon_interval_s, "spool_interval_s": self.beacon_interval_s}},
            "commands": {"public_keys": [self.command_public_key] if self.command_public_key else []},
        }


@dataclass
class LabPillar:
    root: Path
    secrets: list[str] = field(default_factory=list)

    def _password(self) -> str:
        value = secrets.token_urlsafe(PASSWORD_BYTES)
        self.secrets.append(value)
        return value

    def _key(self, pem: str) -> str:
        self.secrets.append(pem.strip().splitlines()[1])  # a line of the key body is enough to find it
        return pem

    def write(self, path: str, doc: dict[str, Any], secret: bool = False) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        # JSON is YAML, and Salt's yaml renderer reads it; secrets are 0600 from the first byte.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=1)
            out.write("\n")


def _sites_entry(fleet: Fleet, site: str, ca_pem: str, swarm: int = 0) -> dict[str, Any]:
    gateway = fleet.gateway_of(site)
    devices: dict[str, Any] = {}
    for index, sensor in enumerate(fleet.with_role("sensor", site)):
        place, lat, lon = SENSOR_PLACES[index % len(SENSOR_PLACES)]
        devices[sensor.id] = {
            "model": "HW-MD202",
            "driver": {"type": "simulated", "seed": index + 1},
            "location": {"lat": lat, "lon": lon, "place": place},
        }
        if swarm:
            devices[sensor.id]["swarm"] = swarm
    return {
        "name": f"lab site {site}",
        "broker": {"host": str(gateway.lan), "port": SITE_BROKER_PORT},
        "uplink": {"host": str(fleet.master.uplink), "port": UPLINK_PORT, "tls": True, "ca_cert": ca_pem},
        "gateways": {gateway.id: {}},
        "devices": devices,
        "thresholds": {"temperature": {"above": 35, "below": -5}},
        "kinesis": {"select": [{"name": "alerts", "kinds": ["alert"]}]},
    }


def write_lab_pillar(root: Path, fleet: Fleet, settings: LabSettings, ca: LabCA) -> LabPillar:
    """Write the lab's pillar tree under `root`; returns it with every secret it generated."""
    pillar = LabPillar(root)
    master = fleet.master
    broker = ca.issue(master.id, server=True, dns=(master.id,), ips=(master.address,))
    pillar.write(
        "fleet.yaml",
        {
            "cloud": {"minions": [master.id]},
            "sites": {
                site: {
                    "gateways": [fleet.gateway_of(site).id],
                    "sensors": [s.id for s in fleet.with_role("sensor", site)],
                }
                for site in fleet.sites
            },
        },
    )
    pillar.write(
        "cloud.sls",
        {
            "saltmarsh": {
                **settings.pillar(),
                "master": {"manage_service": False, "engine": RELAY_ENGINE},
                "cloud": {
                    "broker": {"ca_cert": ca.cert_pem, "tls_cert": broker.cert_pem},
                    **_sink_pillar(settings.sink),
                    "kinesis": {"enabled": False},
                    # `saltmarsh cmd` on the master, which is the cloud node: it reads the sink there.
                    "commander": {"enabled": settings.command_public_key is not None},
                },
            }
        },
    )
    pillar.write(
        "secrets/cloud.sls",
        {
            "saltmarsh": {
                "cloud": {
                    "broker": {"tls_key": pillar._key(broker.key_pem)},
                    "ingester": {"password": pillar._password()},
                    "commander": {"password": pillar._password()},
                    "elasticsearch": {"api_key": pillar._password()},
                    "kinesis": {
                        "access_key_id": "LABKEY" + secrets.token_hex(6).upper(),
                        "secret_access_key": pillar._password(),
                    },
                }
            }
        },
        secret=True,
    )
    for site in fleet.sites:
        pillar.write(
            f"sites/{site}.sls",
            {
                "saltmarsh": {
                    **settings.pillar(),
                    "sites": {site: _sites_entry(fleet, site, ca.cert_pem, settings.swarm)},
                }
            },
        )
        gateway = fleet.gateway_of(site)
        client = ca.issue(gateway.id, server=False)
        site_secret = f"secrets/{site}"
        pillar.write(
            f"{site_secret}/{gateway.id}.sls",
            _site_secret(
                site,
                "gateways",
                gateway.id,
                {
                    "forwarder_password": pillar._password(),
                    "tls_cert": client.cert_pem,
                    "tls_key": pillar._key(client.key_pem),
                },
            ),
            secret=True,
        )
        pillar.write(
            f"{site_secret}/{gateway.id}-uplink.sls",
            _site_secret(site, "gateways", gateway.id, {"uplink_password": pillar._password()}),
            secret=True,
        )
        for sensor in fleet.with_role("sensor", site):
            pillar.write(
                f"{site_secret}/{sensor.id}.sls",
                _site_secret(site, "devices", sensor.id, {"password": pillar._password()}),
                secret=True,
            )
    return pillar


def write_command_key(path: Path) -> tuple[str, str]:
    """The fleet's command signing key, made as `saltmarsh cmd keygen` would, at `path` (where the
    master node's COMMAND_KEY lives on the host), mode 0600 from the first byte. Returns the public
    key, for pillar, and a line of the private one, for the secrets no log may show."""
    private_pem, public = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    return public, private_pem.decode().strip().splitlines()[1]


def _sink_pillar(sink: str) -> dict[str, Any]:
    if sink == "elasticsearch":
        return {
            "ingester": {"instances": 1, "sink": {"type": "elasticsearch"}},
            "elasticsearch": {"enabled": True, "hosts": [ELASTICSEARCH_URL], "plain_json": True},
        }
    return {"ingester": {"instances": 1}, "elasticsearch": {"enabled": False}}


def _site_secret(site: str, section: str, entry: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"saltmarsh": {"sites": {site: {section: {entry: values}}}}}
