"""Run inside a lab node: what a broker answers one MQTT 5 client, as JSON on stdout.

    python tests/lab_probe.py '{"host": "192.168.57.1", "port": 1883, "username": "sensor1",
        "password_file": "/etc/saltmarsh/secrets/sensor-broker-password",
        "publish": ["saltmarsh/v1/example/sensor2/reading"], "subscribe": ["saltmarsh/v1/example/#"]}'

prints {"connect": <reason code or an error>, "published": {topic: puback reason}, "subscribed":
{filter: suback reason}, "received": {topic: count}}, having listened `listen_s` seconds (or until
a message on `until_topic` arrived) after subscribing. Mosquitto names a refused publish in the
PUBACK (0x87, not authorized); a subscription it grants, but it delivers only what the client may
read, so a refused read shows as silence next to a topic that does arrive. TLS with `ca_file` (and a client
`cert_file`/`key_file`) checks the broker's certificate as the forwarder does.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

TIMEOUT_S = 15.0


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"connect": None, "published": {}, "subscribed": {}, "received": {}}
    arrived = threading.Event()
    connected = threading.Event()
    done = threading.Event()
    pending: dict[int, str] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec.get("client_id", ""), protocol=mqtt.MQTTv5)
    if spec.get("username"):
        password = Path(spec["password_file"]).read_text().strip() if spec.get("password_file") else None
        client.username_pw_set(spec["username"], password)
    if spec.get("ca_file"):
        client.tls_set(ca_certs=spec["ca_file"], certfile=spec.get("cert_file"), keyfile=spec.get("key_file"))

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None) -> None:
        out["connect"] = reason.value
        connected.set()

    def on_publish(c: mqtt.Client, u: Any, mid: int, reason: ReasonCode, props: Properties | None) -> None:
        out["published"][pending.pop(mid)] = reason.value
        if not pending:
            done.set()

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, reasons: list[ReasonCode], props: Properties | None) -> None:
        out["subscribed"][pending.pop(mid)] = reasons[0].value
        if not pending:
            done.set()

    def on_message(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        out["received"][message.topic] = out["received"].get(message.topic, 0) + 1
        if message.topic == spec.get("until_topic"):
            arrived.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    try:
        client.connect(spec["host"], int(spec["port"]), keepalive=30)
    except (OSError, ssl.SSLError) as err:
        out["connect"] = f"{type(err).__name__}: {err}"
        return out
    client.loop_start()
    try:
        if not connected.wait(TIMEOUT_S):
            out["connect"] = "no CONNACK"
            return out
        if out["connect"] != 0:
            return out
        for topic in spec.get("publish", []):
            info = client.publish(topic, b'{"probe": true}', qos=1)
            pending[info.mid] = topic
        for topic in spec.get("subscribe", []):
            _, mid = client.subscribe(topic, qos=1)
            pending[int(mid or 0)] = topic
        if pending:
            done.wait(TIMEOUT_S)
        arrived.wait(float(spec.get("listen_s", 0)))
        return out
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
