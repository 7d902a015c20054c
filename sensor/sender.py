"""Spool -> gateway broker at QoS 1, in spool order, with at most `publish_window` in flight.

A segment leaves the spool only when its PUBACK says success. While the link is down nothing new
is handed to paho: it already holds the in-flight messages and resends them on reconnect, and new
messages wait until those are acknowledged, so the backlog reaches the broker in order.

PUBACKs arrive on paho's thread while it holds its own lock; they are queued and handled here, on
the sender's thread, so the spool's fsyncs never stall the network loop and there is no lock
order to get wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config.sensor import SensorConfig
from saltmarsh.mqtt.codec import QOS_AT_LEAST_ONCE
from saltmarsh.mqtt.paho import connect_client, delivered, make_client
from saltmarsh.runtime.spool import Segment, Spool
from saltmarsh.runtime.status import RateMeter
from sensor.presence import OFFLINE, ONLINE, presence, status_topic

log = logging.getLogger(__name__)

IDLE_WAKE_S = 1.0  # also how soon a rejected segment is retried
REFILL_SEGMENTS = 1000  # segments read from the spool index at once; bounds memory on a long backlog
OFFLINE_ACK_TIMEOUT_S = 2.0


class SpoolSender:
    def __init__(self, cfg: SensorConfig, spool: Spool, boot: str) -> None:
        self.cfg = cfg
        self.spool = spool
        self.boot = boot
        self.window = cfg.publish_window
        self.status_topic = status_topic(cfg)
        self.connected = False
        self.connects = 0
        self.acked_total = 0
        self.rejected_total = 0
        self._rate = RateMeter()
        self._rate_lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # mid -> segno
        self._unacked: dict[int, int] = {}  # segno -> messages not yet acknowledged
        self._rejected_segments: set[int] = set()
        self._leased: dict[int, Segment] = {}
        self._queue: deque[Segment] = deque()
        self._acks: deque[tuple[int, bool]] = deque()
        self._hold_new = False
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensor-sender", daemon=True)
        self.client = make_client(cfg.broker)
        self.client.max_inflight_messages_set(self.window)
        self.client.will_set(self.status_topic, presence(cfg, boot, OFFLINE), qos=QOS_AT_LEAST_ONCE, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_publish = self.on_publish

    # paho calls these, on its thread

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            log.warning("gateway broker refused connection", extra={"event": "connect_refused", "reason": str(reason)})
            return
        self.connected = True
        self.connects += 1
        online = presence(self.cfg, self.boot, ONLINE, int(time.time() * 1000))
        client.publish(self.status_topic, online, qos=QOS_AT_LEAST_ONCE, retain=True)
        log.info(
            "connected to gateway broker",
            extra={"event": "connected", "host": self.cfg.broker.host, "port": self.cfg.broker.port},
        )
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

    # the sender's thread

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(IDLE_WAKE_S)
            self._wake.clear()
            try:
                self.step()
            except Exception:
                # A dead sender thread would stop delivery silently; log and try again next wake.
                log.exception("sender step failed", extra={"event": "sender_error"})

    def step(self) -> None:
        """Settle what was acknowledged, then hand paho more while there is room."""
        self._apply_acks()
        self._fill_window()

    def _apply_acks(self) -> None:
        while self._acks:
            mid, ok = self._acks.popleft()
            segno = self._in_flight.pop(mid, None)
            if segno is None:
                continue  # a presence message
            if ok:
                self.acked_total += 1
                with self._rate_lock:
                    self._rate.add(1)
            else:
                self.rejected_total += 1
                self._rejected_segments.add(segno)
            self._unacked[segno] -= 1
            if self._unacked[segno] == 0:
                self._settle(segno)

    def _settle(self, segno: int) -> None:
        del self._unacked[segno]
        seg = self._leased.pop(segno)
        if segno not in self._rejected_segments:
            self.spool.remove(seg)
            return
        self._rejected_segments.discard(segno)
        self.spool.release(seg)
        self._queue.clear()  # the released segment is the oldest again
        self._retry_at = time.monotonic() + IDLE_WAKE_S
        log.warning(
            "gateway broker did not take a reading (rejected, or no subscriber yet); will resend",
            extra={"event": "publish_rejected", "segment": seg.key, "rejected_total": self.rejected_total},
        )

    def _next_segment(self) -> Segment | None:
        if not self._queue:
            self._queue.extend(self.spool.pending()[:REFILL_SEGMENTS])
        return self._queue.popleft() if self._queue else None

    def _fill_window(self) -> None:
        if not self.connected or self._closing.is_set():
            return
        if self._hold_new:
            if self._in_flight:
                return
            self._hold_new = False
        if time.monotonic() < self._retry_at:
            return
        while self.connected and len(self._in_flight) < self.window:
            seg = self._next_segment()
            if seg is None:
                return
            records = self.spool.lease(seg)
            if not records:
                continue  # evicted under the quota, or unreadable and dropped by the spool
            self._leased[seg.segno] = seg
            self._unacked[seg.segno] = len(records)
            for topic, payload in records:
                info = self.client.publish(topic, payload, qos=QOS_AT_LEAST_ONCE)
                self._in_flight[info.mid] = seg.segno
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    # The link dropped under us: paho keeps this one for the reconnect, and
                    # nothing newer may overtake it.
                    self._hold_new = True
            if self._hold_new:
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
        """Stop sending, say offline (retained), and disconnect; unacked readings stay spooled."""
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
        # Acks that came in during the goodbye still count: fewer repeats at the next start.
        self._apply_acks()
        self.client.disconnect()
        self.client.loop_stop()
