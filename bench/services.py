"""The saltmarsh services as the benches run them: each one's config is built here, and only here.

`saltmarsh.ops.localfleet.configs` builds a service's document from the keys it cannot run
without; this module fills them in from a `Lab` (its directories, loopback brokers), adds the
settings every bench gives that service, starts it, and returns once it is ready.

`ACKNOWLEDGEMENT` is what every bench's forwarder and sensor agent are told about when they may
delete what they sent, merged into their config documents. Empty: the services' default,
end to end (delete once the ingester confirms). Benching hop-by-hop acknowledgement (delete
on the broker's PUBACK) is the one-line change
`ACKNOWLEDGEMENT = {"confirmations": {"mode": "broker"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.lab import Lab
from bench.reading import SITE
from saltmarsh.ops.localfleet.configs import ConfigDoc, broker_table, forwarder_config, ingester_config, sensor_config
from saltmarsh.ops.localfleet.processes import ServiceProcess

GATEWAY_ID = "gw1"
INGESTER_ID = "ing1"
READY_TIMEOUT_S = 30.0

ACKNOWLEDGEMENT: Mapping[str, object] = {}


def forwarder_doc(lab: Lab, gateway_port: int, cloud_port: int, drain_rate_limit: float) -> ConfigDoc:
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
    )


def start_forwarder(
    lab: Lab, gateway_port: int, cloud_port: int, drain_rate_limit: float, wait_uplink: bool = True
) -> ServiceProcess:
    """`python -m gateway`, returned once connected locally (and to the uplink, with `wait_uplink`)."""
    config = lab.config("forwarder", forwarder_doc(lab, gateway_port, cloud_port, drain_rate_limit))
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


def sensor_doc(lab: Lab, gateway_port: int, device: str, interval_s: float) -> ConfigDoc:
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
    )


def start_sensor(lab: Lab, gateway_port: int, device: str, interval_s: float) -> ServiceProcess:
    """`python -m sensor` with the simulated driver, returned once connected to the gateway broker."""
    name = f"sensor-{device}"
    sensor = lab.service(name, "sensor", lab.config(name, sensor_doc(lab, gateway_port, device, interval_s)))
    lab.wait_status("sensor", device, lambda c: bool(c.get("connected")), READY_TIMEOUT_S, sensor.alive)
    return sensor


def start_ingester(lab: Lab, cloud_port: int, sink: Mapping[str, object]) -> ServiceProcess:
    """`python -m cloud_ingester` writing to `sink` (a `[sink]` table), returned once subscribed."""
    doc = ingester_config(
        ingester_id=INGESTER_ID, broker=broker_table(cloud_port), sink=sink, status_dir=lab.status_dir
    )
    ingester = lab.service("ingester", "cloud_ingester", lab.config("ingester", doc))
    lab.wait_status("ingester", INGESTER_ID, lambda c: bool(c.get("subscribed")), READY_TIMEOUT_S, ingester.alive)
    return ingester
