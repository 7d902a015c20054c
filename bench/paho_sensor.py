"""The peer sensor agent: the simplest paho-mqtt publisher, one reading a second at QoS 1.

This is the Raspberry Pi + DHT11 architecture from the brief: a loop that reads and publishes,
with no spool, no status file and no presence. `python -m bench.paho_sensor PORT DEVICE`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.reading import ReadingTemplate, boot_id


def main(argv: list[str]) -> int:
    port, device = int(argv[0]), argv[1]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    template = ReadingTemplate.for_device(device, boot_id())
    seq = 0
    while not stop.wait(1.0):
        seq += 1
        client.publish(template.topic.decode(), template.payload(seq, int(time.time() * 1000)), qos=1)
    client.loop_stop()
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
