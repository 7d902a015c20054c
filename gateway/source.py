"""The site side: a persistent QoS 1 subscription to the local Mosquitto, acked only once spooled.

paho's network thread does as little as possible: it classifies the topic and appends
`(generation, mid, lane, topic, payload)` to an inbox. The committer spools a batch and then
calls `ack`, so the broker keeps every message until it is on disk; a crash before that gets
it redelivered from the persistent session.

A message's *generation* is the local connection it arrived on. An ack is only sent on that
same connection: after a reconnect the broker redelivers what was unacked and may reuse the
old packet ids for new messages, so a late ack for an old id could confirm a message that was
never spooled.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from saltmarsh.config.gateway import GatewayConfig
from saltmarsh.mqtt import QOS_AT_LEAST_ONCE, connect_client, make_client
from saltmarsh.spool import Lane
from saltmarsh.topics import ROOT, Channel

Inbound = tuple[int, int, Lane, str, bytes]
"""(generation, mid, lane, topic, payload): one message received and not yet spooled."""

# Channels not in this table (typos, future ones) go to BULK and on to the cloud, whose ingester
# dead-letters them: bad input stays visible instead of vanishing at the gateway.
_LANE_BY_CHANNEL: dict[str, Lane | None] = {
    Channel.READING.value: Lane.BULK,
    Channel.EVENT.value: Lane.KEEP,
    Channel.ALERT.value: Lane.KEEP,
    Channel.STATUS.value: None,  # device state, retained on the site broker
    Channel.COMMAND.value: None,  # downlink: relayed towards devices, never up
}

log = logging.getLogger(__name__)


def lane_for(topic: str) -> Lane | None:
    """The spool lane for a topic, or None for channels that are not forwarded."""
    return _LANE_BY_CHANNEL.get(topic[topic.rfind("/") + 1 :], Lane.BULK)


def subscription_filter(site: str) -> str:
    return f"{ROOT}/{site}/#"


class LocalSource:
    """Receives from the site broker into `inbox`; `arrived` is set when the inbox gains work."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self._cfg = cfg
        self.inbox: deque[Inbound] = deque()
        self.arrived = threading.Event()
        self.received_total = 0  # forwarded channels only
        self.skipped_total = 0  # status and cmd
        self.connected = False  # connected and subscribed
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._filter = subscription_filter(cfg.site)
        self._client = make_client(cfg.local, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        # The broker may send this many unacked messages at once (capped by its own
        # max_inflight_messages): two group commits' worth, so one fills while one is written.
        receive_maximum = min(65_535, 2 * self._cfg.commit_max_messages)
        connect_client(self._client, self._cfg.local, clean_start=False, receive_maximum=receive_maximum)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect: nothing more is received or acked; what is unacked stays with the broker."""
        with self._ack_lock:
            self._generation += 1
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False

    def ack(self, batch: Iterable[Inbound]) -> int:
        """Confirm spooled messages to the broker; returns how many acks were sent."""
        sent = 0
        ack = self._client.ack
        with self._ack_lock:
            current = self._generation
            for generation, mid, _lane, _topic, _payload in batch:
                if generation == current and mid:
                    ack(mid, QOS_AT_LEAST_ONCE)
                    sent += 1
        return sent

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("local broker refused connection", extra={"event": "local_refused", "reason": str(reason)})
            return
        with self._ack_lock:
            self._generation += 1
        options = SubscribeOptions(
            qos=QOS_AT_LEAST_ONCE,
            # Retained messages only on a new subscription, not on every reconnect.
            retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB,
        )
        client.subscribe(self._filter, options=options)
        log.info(
            "local broker connected",
            extra={"event": "local_connected", "session_present": flags.session_present, "filter": self._filter},
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Properties
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("local subscription refused", extra={"event": "local_subscribe_refused", "reasons": str(reasons)})
            return
        self.connected = True

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._ack_lock:
            self._generation += 1
        if self.connected:
            log.warning("local broker disconnected", extra={"event": "local_disconnected", "reason": str(reason)})
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        lane = _LANE_BY_CHANNEL.get(topic[topic.rfind("/") + 1 :], Lane.BULK)
        if lane is None:
            self.skipped_total += 1
            if msg.mid:
                client.ack(msg.mid, QOS_AT_LEAST_ONCE)
            return
        self.received_total += 1
        self.inbox.append((self._generation, msg.mid, lane, topic, bytes(msg.payload)))
        if not self.arrived.is_set():
            self.arrived.set()
