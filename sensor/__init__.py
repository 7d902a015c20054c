"""sensor: the agent that runs on each Raspberry Pi.

In: samples from one driver (a DHT11/DHT22 on a GPIO pin, a simulated room, or a replayed CSV
file), once per interval.
Out: one reading envelope per sample, and an alert envelope for each threshold it crosses
(`alerts`, from the config's `[alerts]`), `(device, boot, seq)`-keyed from one sequence, written
to a local disk spool first (readings in its BULK lane, alerts in its never-evicted KEEP lane,
together in one transaction) and then published at QoS 1 to the site's gateway broker, each on
its own topic (`.../reading`, `.../alert`), in order, numbered in the `msg` user property, and
removed from the spool only when the forwarder confirms, on the device's `ack` topic, that its
own spool has it (`saltmarsh.contract.confirmation`); plus a retained
online/offline presence message on the device's status topic, and a status file of counters.

One device per process; or, with the config's `[swarm]`, many simulated devices in one process
(`swarm`), each of them the same wiring (`device.open_device`) with its own identity and spool.
"""

from sensor.agent import Agent
from sensor.device import Device, open_device
from sensor.drivers import Driver, DriverError, ReadCounters, Sample, open_driver
from sensor.sender import SpoolSender
from sensor.service import main, run

__all__ = [
    "Agent",
    "Device",
    "Driver",
    "DriverError",
    "ReadCounters",
    "Sample",
    "SpoolSender",
    "main",
    "open_device",
    "open_driver",
    "run",
]
