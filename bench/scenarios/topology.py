"""The two hops being compared, set up on a gateway broker and a cloud broker in a `Lab`.

- ours: the gateway Mosquitto (saltmarsh's settings) and `python -m gateway` forwarding up.
- bridge (a): Mosquitto's native bridge with Mosquitto's defaults everywhere: no persistence,
  max_queued_messages 1000, max_inflight_messages 20.
- bridge (b): its only crash-safe configuration: persistence true, autosave_on_changes true,
  autosave_interval 1, max_queued_messages 0 (unlimited).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.lab import Lab
from bench.reading import SITE
from bench.services import start_forwarder
from saltmarsh.contract.errors import WireError
from saltmarsh.mqtt.wire import WireClient
from saltmarsh.ops.localfleet.mosquitto import Mosquitto, bridge_lines
from saltmarsh.ops.localfleet.processes import ServiceProcess

OURS = "ours"
BRIDGE_DEFAULT = "bridge (a)"
BRIDGE_CRASH_SAFE = "bridge (b)"
SYSTEMS = (OURS, BRIDGE_DEFAULT, BRIDGE_CRASH_SAFE)
BRIDGE_TOPIC = f"saltmarsh/v1/{SITE}/#"


@dataclass(slots=True)
class Hop:
    """What carries readings from the gateway broker to the cloud, and whose CPU counts for it."""

    system: str
    gateway: Mosquitto
    forwarder: ServiceProcess | None

    @property
    def pid(self) -> int:
        """The forwarder, or for a bridge the gateway broker that runs it."""
        if self.forwarder is not None:
            return self.forwarder.pid
        assert self.gateway.process is not None
        return self.gateway.process.pid

    @property
    def gateway_pid(self) -> int:
        assert self.gateway.process is not None
        return self.gateway.process.pid


def bridge_spec(system: str, cloud_port: int, remote_host: str = "127.0.0.1") -> dict[str, object]:
    bridge = bridge_lines("cloud", cloud_port, BRIDGE_TOPIC, remote_host)
    if system == BRIDGE_DEFAULT:
        return {"persistence": False, "max_queued_messages": 1000, "max_inflight_messages": 20, "extra_lines": bridge}
    return {
        "persistence": True,
        "autosave_interval_s": 1,
        "max_queued_messages": 0,
        "max_inflight_messages": 20,
        "extra_lines": ("autosave_on_changes true", *bridge),
    }


def start_hop(
    lab: Lab, system: str, cloud_port: int, drain_rate_limit: float = 5000.0, wait_uplink: bool = True
) -> Hop:
    """Start the gateway broker and whatever forwards from it; return once it is forwarding."""
    if system == OURS:
        gateway = lab.broker("gateway")
        forwarder = start_forwarder(lab, gateway.port, cloud_port, drain_rate_limit, wait_uplink)
        return Hop(system, gateway, forwarder)
    gateway = lab.broker("gateway", **bridge_spec(system, cloud_port))
    if wait_uplink:
        wait_bridge_connected(gateway.port, 30)
    return Hop(system, gateway, None)


def wait_bridge_connected(gateway_port: int, timeout_s: float) -> None:
    """The bridge announces its state on the gateway broker, retained: '1' once connected."""
    deadline = time.monotonic() + timeout_s
    client = WireClient("127.0.0.1", gateway_port, "bench-bridge-watch", clean_start=True)
    client.connect()
    try:
        client.subscribe([("$SYS/broker/connection/+/state", 0)])
        while time.monotonic() < deadline:
            publishes, _ = client.poll(0.1)
            if any(p.payload == b"1" for p in publishes):
                return
    except (OSError, WireError):
        pass
    finally:
        client.close()
    raise TimeoutError(f"the bridge on port {gateway_port} did not connect within {timeout_s:.0f} s")
