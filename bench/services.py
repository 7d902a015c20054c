"""The saltmarsh services as the benches run them: each one's config is built here, and only here.

`saltmarsh.ops.localfleet.configs` builds a service's document from the keys it cannot run
without; this module fills them in from a `Lab` (its directories, loopback brokers), adds the
settings every bench gives that service, starts it, and returns once it is ready.

`ACKNOWLEDGEMENT` is what every bench's forwarder, sensor agent and BLE collector are told about
when they may delete what they sent, merged into their config documents. Empty: the services'
default, end to end (delete once the ingester confirms). Benching hop-by-hop acknowledgement (delete
on the broker's PUBACK) is the one-line change
`ACKNOWLEDGEMENT = {"confirmations": {"mode": "broker"}}`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.lab import Lab
from bench.reading import SITE
from saltmarsh.config.sensor import swarm_device_id
from saltmarsh.ops.localfleet.configs import (
    ConfigDoc,
    ble_config,
    ble_device_rows,
    broker_table,
    forwarder_config,
    ingester_config,
    sensor_config,
)
from saltmarsh.ops.localfleet.processes import ServiceProcess
from saltmarsh.runtime.status import read_statuses

if TYPE_CHECKING:
    from gateway.ble.recording import SimDevice

GATEWAY_ID = "gw1"
INGESTER_ID = "ing1"
BLE_COLLECTOR_ID = f"{SITE}-{GATEWAY_ID}-ble"
READY_TIMEOUT_S = 30.0

ACKNOWLEDGEMENT: Mapping[str, object] = {}


def forwarder_doc(
    lab: Lab, gateway_port: int, cloud_port: int, drain_rate_limit: float, settings: Mapping[str, object] | None = None
) -> ConfigDoc:
    """`settings` are more keys of its own (a `[commands]` table), over the ones every bench gives."""
    return forwarder_config(
        gateway_id=GATEWAY_ID,
        site=SITE,
        local=broker_table(gateway_port),
        uplink=broker_table(cloud_port),
        state_dir=lab.layout.state_dir("forwarder"),
        status_dir=lab.status_dir,
        # No bench fills a disk: a quota would only turn a slow run into a lossy one.
        spool_quota_bytes=20_000_000_000,
        drain_rate_limit=drain_rate_limit,
        **ACKNOWLEDGEMENT,
        **(settings or {}),
    )


def start_forwarder(
    lab: Lab,
    gateway_port: int,
    cloud_port: int,
    drain_rate_limit: float,
    wait_uplink: bool = True,
    *,
    settings: Mapping[str, object] | None = None,
) -> ServiceProcess:
    """`python -m gateway`, returned once connected locally (and to the uplink, with `wait_uplink`)."""
    config = lab.config("forwarder", forwarder_doc(lab, gateway_port, cloud_port, drain_rate_limit, settings))
    forwarder = lab.service("forwarder", "gateway", config)
    key = "uplink_connected" if wait_uplink else "local_connected"
    lab.wait_status(
        "forwarder",
        GATEWAY_ID,
        lambda c: bool(c.get("local_connected")) and bool(c.get(key)),
        READY_TIMEOUT_S,
        forwarder.alive,
    )
    return forwarder


def sensor_doc(
    lab: Lab, gateway_port: int, device: str, interval_s: float, settings: Mapping[str, object] | None = None
) -> ConfigDoc:
    """`settings` are more keys of its own (`[swarm]`, `[commands]`), over the ones every bench gives."""
    return sensor_config(
        device=device,
        site=SITE,
        broker=broker_table(gateway_port),
        state_dir=lab.layout.state_dir(f"sensor-{device}"),
        status_dir=lab.status_dir,
        interval_s=interval_s,
        model="HW-MD202",
        firmware="1.0.0",
        location={"lat": -27.4698, "lon": 153.0251, "place": "garden"},
        driver={"type": "simulated", "seed": 7},
        **ACKNOWLEDGEMENT,
        **(settings or {}),
    )


def start_sensor(lab: Lab, gateway_port: int, device: str, interval_s: float) -> ServiceProcess:
    """`python -m sensor` with the simulated driver, returned once connected to the gateway broker."""
    name = f"sensor-{device}"
    sensor = lab.service(name, "sensor", lab.config(name, sensor_doc(lab, gateway_port, device, interval_s)))
    lab.wait_status("sensor", device, lambda c: bool(c.get("connected")), READY_TIMEOUT_S, sensor.alive)
    return sensor


def start_swarm(
    lab: Lab, gateway_port: int, host: str, devices: int, *, interval_s: float, settings: Mapping[str, object]
) -> ServiceProcess:
    """One sensor process running `devices` simulated devices (`[swarm]`), returned once every one
    of them is connected to the gateway broker; `settings` as for `sensor_doc`."""
    name = f"sensor-{host}"
    doc = sensor_doc(lab, gateway_port, host, interval_s, {"swarm": {"devices": devices}, **settings})
    swarm = lab.service(name, "sensor", lab.config(name, doc))
    expected = {swarm_device_id(host, n) for n in range(1, devices + 1)}
    deadline = time.monotonic() + READY_TIMEOUT_S + devices * 0.5  # each device opens its own spool
    while time.monotonic() < deadline:
        connected = {
            s.instance for s in read_statuses(lab.status_dir) if s.service == "sensor" and s.counters.get("connected")
        }
        if expected <= connected:
            return swarm
        if not swarm.alive():
            raise RuntimeError(f"{name} exited; see {lab.logs}")
        time.sleep(0.2)
    raise TimeoutError(f"{name}: not every one of its {devices} devices connected; see {lab.logs}")


def start_ingester(lab: Lab, cloud_port: int, sink: Mapping[str, object]) -> ServiceProcess:
    """`python -m cloud_ingester` writing to `sink` (a `[sink]` table), returned once subscribed."""
    doc = ingester_config(
        ingester_id=INGESTER_ID, broker=broker_table(cloud_port), sink=sink, status_dir=lab.status_dir
    )
    ingester = lab.service("ingester", "cloud_ingester", lab.config("ingester", doc))
    lab.wait_status("ingester", INGESTER_ID, lambda c: bool(c.get("subscribed")), READY_TIMEOUT_S, ingester.alive)
    return ingester


def ble_doc(
    lab: Lab,
    gateway_port: int,
    devices: Sequence[SimDevice],
    recording: Path,
    *,
    start_s: float,
    expected_interval_s: float,
) -> ConfigDoc:
    """The BLE collector replaying `recording` in real time from the wall time `start_s`, with a
    bindkey file (mode 0600) for each encrypted device."""
    rows = ble_device_rows(devices, lab.base / "ble-keys", expected_interval_s=expected_interval_s)
    return ble_config(
        collector=BLE_COLLECTOR_ID,
        site=SITE,
        broker=broker_table(gateway_port),
        state_dir=lab.layout.state_dir("ble"),
        status_dir=lab.status_dir,
        scan={"backend": "replay", "replay_file": str(recording), "replay_speed": 1.0, "replay_start_s": start_s},
        devices=rows,
        **ACKNOWLEDGEMENT,
    )


def start_ble_collector(
    lab: Lab,
    gateway_port: int,
    devices: Sequence[SimDevice],
    recording: Path,
    *,
    start_s: float,
    expected_interval_s: float,
) -> ServiceProcess:
    """`python -m gateway.ble` on a replay, returned once connected to the gateway broker."""
    doc = ble_doc(lab, gateway_port, devices, recording, start_s=start_s, expected_interval_s=expected_interval_s)
    collector = lab.service("ble", "gateway.ble", lab.config("ble", doc))
    lab.wait_status("ble", BLE_COLLECTOR_ID, lambda c: bool(c.get("connected")), READY_TIMEOUT_S, collector.alive)
    return collector
