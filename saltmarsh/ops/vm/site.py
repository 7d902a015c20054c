"""The gateway a guest runs: its broker, forwarder and sensors' configs, as files for its data disks.

The same config builders as the local fleet (`saltmarsh.ops.localfleet.configs`), with the
paths a Pi has: state under /var/lib (the data disks), status under /run (tmpfs), the cloud
broker at the guest's forwarded address. The sensors keep their spools on a disk of their own
(vdc), so that each side's writes per reading can be read off /proc/diskstats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from saltmarsh.ops.localfleet.configs import broker_table, forwarder_config, sensor_config
from saltmarsh.ops.localfleet.mosquitto import BrokerSpec
from saltmarsh.ops.vm.machine import GUEST_HOST

GATEWAY_STATE = Path("/var/lib/saltmarsh")  # vdb
SENSOR_STATE = Path("/var/lib/saltmarsh-sensor")  # vdc
STATUS_DIR = Path("/run/saltmarsh/status")
GUEST_BROKER_PORT = 1884  # inside the guest: its own loopback, not the host's
GUEST_UPLINK_PORT = 11883  # the guestfwd address of the host's cloud broker
GUEST_GATEWAY_PORT = 11884  # ... and of a gateway broker on the host, for a sensor-only guest


@dataclass(frozen=True, slots=True)
class GuestSite:
    site: str = "vm"
    gateway_id: str = "vm-gw"
    sensors: int = 2
    interval_s: float = 0.05
    # False: a Pi that is only a sensor, its gateway's broker elsewhere (`broker_host`, a guestfwd).
    gateway: bool = True
    broker_host: str = "127.0.0.1"
    broker_port: int = GUEST_BROKER_PORT
    # A peer to compare with: the gateway's Mosquitto bridging to the cloud itself (BrokerSpec
    # settings, its bridge lines last) instead of the forwarder, the sensors deleting on its PUBACK.
    bridge: Mapping[str, Any] | None = None

    @property
    def forwarder(self) -> bool:
        return self.gateway and self.bridge is None

    @classmethod
    def bridged(cls, site: str, settings: Mapping[str, Any]) -> GuestSite:
        """A gateway Pi as plain Mosquitto runs one: its broker's native bridge, `settings` as BrokerSpec's."""
        return cls(site=site, bridge=dict(settings))

    @classmethod
    def sensor_only(cls, site: str, sensors: int = 1, interval_s: float = 0.05) -> GuestSite:
        """A sensor Pi: its agents publish to a gateway broker outside the guest."""
        return cls(
            site=site,
            sensors=sensors,
            interval_s=interval_s,
            gateway=False,
            broker_host=GUEST_HOST,
            broker_port=GUEST_GATEWAY_PORT,
        )

    def device(self, index: int) -> str:
        return f"vm-s{index + 1:02d}"

    def gateway_files(self) -> dict[str, bytes]:
        """vdb: the configs under etc/, and the directories the services expect."""
        files: dict[str, bytes] = {"etc/.keep": b""}
        if self.gateway:
            files |= {"mosquitto/.keep": b"", "forwarder/.keep": b""}
            spec = BrokerSpec(
                "gateway", self.broker_port, GATEWAY_STATE / "mosquitto", user="root", **(self.bridge or {})
            )
            files["etc/mosquitto.conf"] = spec.render().encode()
        if self.forwarder:
            doc = forwarder_config(
                gateway_id=self.gateway_id,
                site=self.site,
                local=broker_table(self.broker_port),
                uplink=broker_table(GUEST_UPLINK_PORT, host=GUEST_HOST),
                state_dir=GATEWAY_STATE / "forwarder",
                status_dir=STATUS_DIR,
                confirm_interval_ms=1000,
            )
            files["etc/forwarder.toml"] = tomli_w.dumps(doc).encode()
        for index in range(self.sensors):
            device = self.device(index)
            doc = sensor_config(
                device=device,
                site=self.site,
                broker=broker_table(self.broker_port, host=self.broker_host),
                state_dir=SENSOR_STATE / device,
                status_dir=STATUS_DIR,
                interval_s=self.interval_s,
                driver={"type": "simulated", "seed": index + 1},
                **({"confirmations": {"mode": "broker"}} if self.bridge is not None else {}),
            )
            files[f"etc/sensor-{device}.toml"] = tomli_w.dumps(doc).encode()
        return files

    def sensor_files(self) -> dict[str, bytes]:
        """vdc: one directory per sensor's spool."""
        return {f"{self.device(i)}/.keep": b"" for i in range(self.sensors)}
