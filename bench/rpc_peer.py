"""The commands bench's peer: plain MQTT request/response through one Mosquitto, as ThingsBoard's
RPC or a naive paho RPC does it, with no store-and-forward, no journal and no signature.

Each device is a paho client that takes a request on `rpc/{site}/{device}/req` (QoS 1), applies
it (a `set_interval` is one assignment) and answers on `rpc/{site}/{device}/resp` (QoS 1) with
the request's id. Its session is persistent (clean start off, an hour's expiry), so requests
published while it is away wait in the broker, as a device's would over a cut link.

`python -m bench.rpc_peer PORT SITE DEVICES READY_FILE`: one process for every device of the
site, a client (and paho's network thread) each; READY_FILE is written once every client has
its subscription, and the process runs until SIGTERM.

The requester is `Requester`, in the bench's own process.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

SESSION_EXPIRY_S = 3600
CONNECT_TIMEOUT_S = 60.0
PUBACK_TIMEOUT_S = 30.0


def request_topic(site: str, device: str) -> str:
    return f"rpc/{site}/{device}/req"


def response_topic(site: str, device: str) -> str:
    return f"rpc/{site}/{device}/resp"


def peer_device(n: int) -> str:
    """The n-th device (from 1), named as the swarm names ours."""
    return f"rpc-{n:03d}"


def no_delay(client: mqtt.Client) -> None:
    """TCP_NODELAY, as Mosquitto sets it (`set_tcp_nodelay true`): without it a request written
    right behind the PUBACK of an answer waits for the broker's delayed ACK, 40 ms at 100/s."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def subscribe_on_connect(
    topic_filter: str,
) -> Callable[[mqtt.Client, object, ConnectFlags, ReasonCode, Properties | None], None]:
    def on_connect(
        client: mqtt.Client, userdata: object, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        no_delay(client)
        client.subscribe(topic_filter, qos=1)

    return on_connect


def persistent_client(client_id: str) -> tuple[mqtt.Client, Properties]:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    return client, props


class Responder:
    """One device: answers each request once it has applied it."""

    def __init__(self, port: int, site: str, device: str, subscribed: Callable[[], None]) -> None:
        self.site = site
        self.device = device
        self.interval_s = 5.0
        self.client, props = persistent_client(device)
        self.client.on_connect = subscribe_on_connect(request_topic(site, device))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed()
        self.client.on_message = self._on_request
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)

    def _on_request(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
            if request.get("op") == "set_interval":
                self.interval_s = float(request["args"]["interval_s"])
            answer = {"id": request["id"], "ok": True}
        except (ValueError, KeyError, TypeError) as err:
            answer = {"id": None, "ok": False, "error": str(err)}
        client.publish(response_topic(self.site, self.device), json.dumps(answer), qos=1)


def main(argv: list[str]) -> int:
    port, site, devices, ready_file = int(argv[0]), argv[1], int(argv[2]), Path(argv[3])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    lock = threading.Lock()
    waiting = [devices]

    def subscribed() -> None:
        with lock:
            waiting[0] -= 1
            if waiting[0] == 0:
                ready_file.write_text(f"{devices}\n")

    responders = [Responder(port, site, peer_device(n), subscribed) for n in range(1, devices + 1)]
    for responder in responders:
        responder.client.loop_start()
    stop.wait()
    for responder in responders:
        responder.client.disconnect()
        responder.client.loop_stop()
    return 0


class Requester:
    """The peer's master: publishes each request at QoS 1 (waiting for its PUBACK, as ours does)
    and times each answer from the moment its request was published."""

    def __init__(self, port: int, site: str, client_id: str = "rpc-requester") -> None:
        self.site = site
        self.published_s: dict[str, float] = {}
        self.answered_s: dict[str, float] = {}
        self.answers_total = 0
        self.failed_total = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client, props = persistent_client(client_id)
        self.client.on_connect = subscribe_on_connect(f"rpc/{site}/+/resp")
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_answer
        self.client.connect("127.0.0.1", port, clean_start=True, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise TimeoutError(f"the peer's requester could not subscribe on port {port}")

    def _on_answer(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            answer = json.loads(message.payload)
        except ValueError:
            answer = {}
        with self._lock:
            self.answers_total += 1
            if not answer.get("ok"):
                self.failed_total += 1
            request_id = answer.get("id")
            if isinstance(request_id, str):
                self.answered_s.setdefault(request_id, now)

    def request(self, request_id: str, device: str, op: str, args: dict[str, float], expiry_s: int) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = expiry_s
        payload = json.dumps({"id": request_id, "op": op, "args": args})
        self.published_s[request_id] = time.time()
        info = self.client.publish(request_topic(self.site, device), payload, qos=1, properties=props)
        info.wait_for_publish(PUBACK_TIMEOUT_S)

    def answered(self) -> int:
        with self._lock:
            return len(self.answered_s)

    def latencies_s(self, request_ids: list[str]) -> list[float]:
        with self._lock:
            return [self.answered_s[r] - self.published_s[r] for r in request_ids if r in self.answered_s]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def stop(self) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
