"""MQTT in: a shared QoS 1 subscription on a persistent session, feeding a bounded inbox.

The paho thread only enqueues. Nothing is acked here on arrival: `ack` is called by the batch
writer once the message is durable in the sink, so a crash at any point leaves the message
with the broker, which redelivers it to this client id when it comes back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.mqtt import QOS_AT_LEAST_ONCE, connect_client, make_client

log = logging.getLogger(__name__)

GATEWAY_PROPERTY = "gw"  # MQTT 5 user property the forwarder sets to its gateway id
MAX_RECEIVE_MAXIMUM = 65_535


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as it came off the wire, with what is needed to ack it later."""

    topic: str
    payload: bytes
    gateway: str | None
    received_ms: int
    mid: int
    qos: int
    session: int  # the connection that delivered it: a packet id means nothing on another one


def _gateway(message: mqtt.MQTTMessage) -> str | None:
    props = message.properties
    for name, value in getattr(props, "UserProperty", None) or ():
        if name == GATEWAY_PROPERTY:
            return str(value)
    return None


def _topic(message: mqtt.MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:
        # Brokers should refuse such topics; if one does not, validation dead-letters this.
        return "<topic is not UTF-8>"


class Consumer:
    """Owns the paho client; `inbox` receives every message while `accepting`."""

    def __init__(
        self, broker: BrokerConfig, topic_filter: str, inbox: queue.Queue[Inbound], receive_maximum: int
    ) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.inbox = inbox
        # The broker sends at most this many unacked messages: with the batch writer holding
        # acks until commit, it is what bounds the inbox and the memory of this process.
        self.receive_maximum = max(1, min(receive_maximum, MAX_RECEIVE_MAXIMUM))
        self.connected = False
        self.subscribed = threading.Event()
        self._session = 0
        self._accepting = True
        self._client = make_client(broker, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        # clean_start=False with a fixed client id: the broker keeps the subscription and the
        # unacked messages across our restarts, and queues for us while we are away.
        connect_client(self._client, self.broker, clean_start=False, receive_maximum=self.receive_maximum)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused connection", extra={"event": "connect_refused", "reason": str(reason)})
            return
        self._session += 1
        self.connected = True
        log.info(
            "connected",
            extra={
                "event": "connected",
                "session_present": bool(getattr(flags, "session_present", False)),
                "filter": self.topic_filter,
            },
        )
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        client.subscribe(self.topic_filter, qos=QOS_AT_LEAST_ONCE)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.connected = False
        self.subscribed.clear()
        level = logging.WARNING if reason.is_failure else logging.INFO
        log.log(level, "disconnected", extra={"event": "disconnected", "reason": str(reason)})

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("subscription refused", extra={"event": "subscribe_refused", "reasons": failed})
            return
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # left unacked: the broker redelivers it to this session after the restart
        self.inbox.put(
            Inbound(
                topic=_topic(message),
                payload=bytes(message.payload),  # already bytes in practice: no copy
                gateway=_gateway(message),
                received_ms=int(time.time() * 1000),
                mid=message.mid,
                qos=message.qos,
                session=self._session,
            )
        )

    def ack(self, inbound: Inbound) -> None:
        if inbound.session == self._session:
            self._client.ack(inbound.mid, inbound.qos)
        # Otherwise the connection that delivered it is gone; the broker has redelivered it on
        # the new one, and that copy is acked when its own batch commits.

    def stop_taking(self) -> None:
        self._accepting = False

    def close(self) -> None:
        """Disconnect after the queued PUBACKs are on the wire; the session stays on the broker."""
        self._client.disconnect()
        self._client.loop_stop()
