"""Test helpers that talk to a real broker: a collecting subscriber and a simple publisher."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from saltmarsh.commands.rollout import RolloutSpec
from saltmarsh.config.broker import BrokerConfig
from saltmarsh.mqtt.paho import connect_client, make_client


def broker_config(port: int, client_id: str) -> BrokerConfig:
    return BrokerConfig(host="127.0.0.1", port=port, client_id=client_id)


class Collector:
    """Subscribes at QoS 1 and keeps every message it receives, in arrival order."""

    def __init__(self, port: int, topic_filter: str, client_id: str = "test-collector", clean_start: bool = True):
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = make_client(broker_config(port, client_id))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        connect_client(self.client, broker_config(port, client_id), clean_start=clean_start)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"could not subscribe to {topic_filter} on port {port}")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.messages):
                    return True
            time.sleep(0.05)
        with self._lock:
            return predicate(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(port: int, messages: list[tuple[str, bytes]], client_id: str = "test-publisher") -> None:
    """Publish at QoS 1 and return once every PUBACK is in."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()


def rollout_spec(created_ms: int, **changes: Any) -> RolloutSpec:
    """A rollout of set_interval to the fleet's sensors, created at `created_ms`, 10 minutes to run."""
    fields: dict[str, Any] = {
        "rollout": "r-1",
        "op": "set_interval",
        "args": {"interval_s": 30.0},
        "target": "G@roles:sensor",
        "target_type": "compound",
        "created_ms": created_ms,
        "not_after_ms": created_ms + 600_000,
        "run_timeout_s": 10.0,
    }
    return RolloutSpec(**(fields | changes))
