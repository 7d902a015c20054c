"""Spool -> gateway broker at QoS 1, in spool order; a reading leaves the spool when the forwarder confirms it.

Both spool lanes go out, in the order they were spooled: readings (BULK) and the alerts (KEEP)
that follow them, each on the topic spooled with it, its envelope's (`.../reading`, `.../alert`).

Each reading goes out numbered (the `msg` user property, `saltmarsh.contract.confirmation`). The
gateway broker's PUBACK only frees a slot of the publish window (`publish_window`); the segment
is deleted once the forwarder says, on this device's `ack` topic, that its spool has committed
every reading in it. What is not confirmed is sent again when `saltmarsh.runtime.unconfirmed`
says so, and after every reconnect (the broker may have restarted without it). No new reading
goes out while `confirmations.max_messages` are unconfirmed, so a forwarder that is down leaves
the backlog here, in the spool, and not in the broker. With `confirmations.mode = "broker"` the
PUBACK is the confirmation, as plain MQTT has it.

While the link is down nothing new is handed to paho: it already holds the in-flight messages
and resends them on reconnect, and new messages wait until those are acknowledged, so the
backlog reaches the broker in order.

PUBACKs and confirmations arrive on paho's thread while it holds its own lock; they are queued
and handled here, on the sender's thread, so the spool's fsyncs never stall the network loop and
there is no lock order to get wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config.sensor import SensorConfig
from saltmarsh.contract.confirmation import MESSAGE_PROPERTY, ack_topic, message_id
from saltmarsh.mqtt.codec import QOS_AT_LEAST_ONCE, QOS_AT_MOST_ONCE
from saltmarsh.mqtt.paho import connect_client, delivered, make_client
from saltmarsh.runtime.spool import Segment, Spool
from saltmarsh.runtime.status import RateMeter
from saltmarsh.runtime.unconfirmed import OpenSegment, Unconfirmed
from sensor.commands import command_topics
from sensor.presence import OFFLINE, ONLINE, presence, status_topic

log = logging.getLogger(__name__)

IDLE_WAKE_S = 1.0  # also how soon a rejected reading is retried
REFILL_SEGMENTS = 1000  # segments read from the spool index at once; bounds memory on a long backlog
OFFLINE_ACK_TIMEOUT_S = 2.0


class SpoolSender:
    def __init__(
        self, cfg: SensorConfig, spool: Spool, boot: str, devices: Iterable[str] = (), release_every_s: float = 0.0
    ) -> None:
        self.cfg = cfg
        self.on_command: Callable[[mqtt.MQTTMessage], None] | None = None
        self.command_topics: frozenset[str] = frozenset()
        self.spool = spool
        self.boot = boot
        self.window = cfg.publish_window
        self.status_topic = status_topic(cfg)
        # A collector (gateway.ble) sends for many devices, each confirmed on its own ack topic.
        self.ack_topics = {ack_topic(cfg.site, device) for device in (devices or (cfg.device,))}
        self._end_to_end = cfg.confirmations.end_to_end
        self.unconfirmed: Unconfirmed[OpenSegment] = Unconfirmed(
            overtaken_s=cfg.confirmations.overtaken_s, silence=cfg.confirmations.silence_policy()
        )
        self.connected = False
        self.connects = 0
        self.acked_total = 0  # PUBACKed by the gateway broker
        self.rejected_total = 0
        self._rate = RateMeter()
        self._rate_lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # paho mid -> message number, until its PUBACK
        self._open: dict[int, OpenSegment] = {}  # segno -> leased, not yet confirmed
        self._publishing: OpenSegment | None = None  # the segment still being published
        self._queue: deque[Segment] = deque()
        self._acks: deque[tuple[int, bool]] = deque()
        self._confirmations: deque[tuple[str, bytes]] = deque()
        self._resend: deque[int] = deque()
        self._retry: deque[tuple[float, int]] = deque()  # (when, number): rejected by the broker
        self._reconnected = False
        self._refresh_at = 0.0
        self._hold_new = False
        # Confirmed segments wait this long to leave the spool in one transaction: a collector's
        # devices are each confirmed on their own ack topic, and one delete per confirmation would
        # cost a spool transaction each. They stay leased meanwhile, so they are neither sent again
        # nor evicted; a crash before the delete only means copies the sink already holds.
        self.release_every_s = release_every_s
        self._done: list[Segment] = []
        self._release_at = 0.0
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensor-sender", daemon=True)
        self.client = make_client(cfg.broker)
        self.client.max_inflight_messages_set(self.window)
        self.client.will_set(self.status_topic, presence(cfg, boot, OFFLINE), qos=QOS_AT_LEAST_ONCE, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_publish = self.on_publish
        self.client.on_message = self.on_message

    def watch(self, device: str) -> None:
        """Also send for `device` (a BLE device discovered while running): its confirmations count."""
        topic = ack_topic(self.cfg.site, device)
        if topic not in self.ack_topics:
            self.ack_topics = self.ack_topics | {topic}  # a new set: paho's thread may be iterating
            if self.connected and self._end_to_end:
                self.client.subscribe(topic, qos=QOS_AT_MOST_ONCE)

    def take_commands(self, on_command: Callable[[mqtt.MQTTMessage], None]) -> None:
        """Subscribe to this device's command topics (before `start`); each command is handed to
        `on_command` as it comes, on paho's thread (sensor.commands queues it)."""
        self.on_command = on_command
        self.command_topics = frozenset(command_topics(self.cfg))

    # paho calls these, on its thread

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.warning("gateway broker refused connection", extra={"event": "connect_refused", "reason": str(reason)})
            return
        self.connected = True
        self.connects += 1
        if self._end_to_end:
            # QoS 0: a confirmation missed while away is covered by the resend on reconnect.
            client.subscribe([(topic, QOS_AT_MOST_ONCE) for topic in sorted(set(self.ack_topics))])
        if self.command_topics:
            # QoS 1: the gateway's forwarder resends a command until the device's result comes back.
            client.subscribe([(topic, QOS_AT_LEAST_ONCE) for topic in sorted(self.command_topics)])
        online = presence(self.cfg, self.boot, ONLINE, int(time.time() * 1000))
        client.publish(self.status_topic, online, qos=QOS_AT_LEAST_ONCE, retain=True)
        log.info(
            "connected to gateway broker",
            extra={"event": "connected", "host": self.cfg.broker.host, "port": self.cfg.broker.port},
        )
        self._reconnected = True
        self._wake.set()

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        # Whatever paho holds is resent first on reconnect; new messages wait behind it.
        self._hold_new = True
        was_connected, self.connected = self.connected, False
        if was_connected and not self._closing.is_set():
            log.warning("lost gateway broker", extra={"event": "disconnected", "reason": str(reason)})

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        self._acks.append((mid, delivered(reason)))
        self._wake.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic in self.command_topics and self.on_command is not None:
            self.on_command(message)
            return
        self._confirmations.append((message.topic, bytes(message.payload)))
        self._wake.set()

    # the sender's thread

    def _run(self) -> None:
        while not self._closing.is_set():
            wait_s = IDLE_WAKE_S
            if self._done:
                wait_s = max(0.0, min(wait_s, self._release_at - time.monotonic()))
            self._wake.wait(wait_s)
            self._wake.clear()
            try:
                self.step()
            except Exception:
                # A dead sender thread would stop delivery silently; log and try again next wake.
                log.exception("sender step failed", extra={"event": "sender_error"})

    def step(self, now: float | None = None) -> None:
        """Settle what was acknowledged and confirmed, then hand paho more while there is room."""
        now = time.monotonic() if now is None else now
        self._apply_acks(now)
        self._apply_confirmations(now)
        self._remove_done(now)
        self._plan_resends(now)
        self._fill_window(now)
        if now >= self._refresh_at:
            self._refresh_at = now + 1.0
            self.unconfirmed.refresh_oldest()

    def _apply_acks(self, now: float) -> None:
        settled: list[int] = []
        while self._acks:
            mid, ok = self._acks.popleft()
            number = self._in_flight.pop(mid, None)
            if number is None:
                continue  # a presence message
            if ok:
                self.acked_total += 1
                settled.append(number)
                with self._rate_lock:
                    self._rate.add(1)
            else:
                self.rejected_total += 1
                self._retry.append((now + IDLE_WAKE_S, number))
                log.warning(
                    "gateway broker did not take a reading (rejected, or no subscriber yet); will resend",
                    extra={"event": "publish_rejected", "number": number, "rejected_total": self.rejected_total},
                )
        if settled and not self._end_to_end:
            self._release(self.unconfirmed.settle(settled, now))

    def _apply_confirmations(self, now: float) -> None:
        receive = self.unconfirmed.receive
        while self._confirmations:
            topic, payload = self._confirmations.popleft()
            self._release(receive(topic, payload, now, ours=topic in self.ack_topics))

    def _release(self, released: list[tuple[int, OpenSegment]]) -> None:
        for _, open_seg in released:
            if open_seg.release():
                del self._open[open_seg.seg.segno]
                self._done.append(open_seg.seg)

    def _remove_done(self, now: float, force: bool = False) -> None:
        """Delete the fully confirmed segments: at once, or once a `release_every_s`."""
        if not self._done or not (force or now >= self._release_at):
            return
        done, self._done = self._done, []
        self._release_at = now + self.release_every_s
        self.spool.remove_many(done)

    def _plan_resends(self, now: float) -> None:
        if self._reconnected:
            self._reconnected = False
            self._resend.clear()
            self._resend.extend(self.unconfirmed.resend_all())
        else:
            self._resend.extend(self.unconfirmed.due(now))
        while self._retry and self._retry[0][0] <= now:
            number = self._retry.popleft()[1]
            if self.unconfirmed.requeue(number):
                self._resend.append(number)

    def _next_segment(self) -> OpenSegment | None:
        while True:
            if not self._queue:
                self._queue.extend(self.spool.pending()[:REFILL_SEGMENTS])
            if not self._queue:
                return None
            seg = self._queue.popleft()
            records = self.spool.lease(seg)
            if not records:
                continue  # evicted under the quota, or unreadable and dropped by the spool
            open_seg = OpenSegment(seg, records, self.unconfirmed.reserve(len(records)))
            self._open[seg.segno] = open_seg
            return open_seg

    def _props(self, number: int) -> Properties | None:
        if not self._end_to_end:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = (MESSAGE_PROPERTY, message_id(self.unconfirmed.run, number))
        return props

    def _send(self, number: int, open_seg: OpenSegment, origin: int) -> bool:
        """Hand one numbered copy of a reading to paho; False when the link dropped under us."""
        topic, payload = open_seg.record(origin)
        info = self.client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE, properties=self._props(number))
        self._in_flight[info.mid] = number
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # paho keeps this one for the reconnect, and nothing newer may overtake it.
            self._hold_new = True
            return False
        return True

    def _has_room(self) -> bool:
        return self.connected and len(self._in_flight) < self.window

    def _fill_window(self, now: float) -> None:
        if not self.connected or self._closing.is_set():
            return
        if self._hold_new:
            if self._in_flight:
                return
            self._hold_new = False
        while self._resend and self._has_room():
            found = self.unconfirmed.copy(self._resend.popleft(), now)
            if found is not None and not self._send(*found):
                return
        limits = self.cfg.confirmations
        while self._has_room() and not self.unconfirmed.full(limits.max_messages, limits.max_bytes):
            open_seg = self._publishing or self._next_segment()
            if open_seg is None:
                return
            self._publishing = open_seg
            number = open_seg.base + open_seg.sent
            open_seg.sent += 1
            self.unconfirmed.sent(number, open_seg, len(open_seg.record(number)[1]), now)
            if open_seg.remaining == 0:
                self._publishing = None
            if not self._send(number, open_seg, number):
                return

    # any thread

    def start(self) -> None:
        connect_client(self.client, self.cfg.broker, clean_start=True)
        self.client.loop_start()
        self._thread.start()

    def notify(self) -> None:
        """More is in the spool."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def publish_rate(self) -> float:
        with self._rate_lock:
            return round(self._rate.rate(), 2)

    def close(self) -> None:
        """Stop sending, say offline (retained), and disconnect; unconfirmed readings stay spooled."""
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.connected:
            info = self.client.publish(
                self.status_topic,
                presence(self.cfg, self.boot, OFFLINE, int(time.time() * 1000)),
                qos=QOS_AT_LEAST_ONCE,
                retain=True,
            )
            try:
                info.wait_for_publish(timeout=OFFLINE_ACK_TIMEOUT_S)
            except (RuntimeError, ValueError) as err:
                log.warning("could not publish offline status", extra={"event": "offline_failed", "why": str(err)})
        # Acks and confirmations that came in during the goodbye still count: fewer repeats next start.
        now = time.monotonic()
        self._apply_acks(now)
        self._apply_confirmations(now)
        self._remove_done(now, force=True)
        self.client.disconnect()
        self.client.loop_stop()
