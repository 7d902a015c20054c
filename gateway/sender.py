"""The cloud side: spooled segments up to the uplink broker at QoS 1, deleted only when PUBACKed.

A segment is leased from the spool, its records are handed to paho (never more than the
PUBACK window at once), and the segment is removed only when every one of its messages has a
successful PUBACK. A refused message (a failure reason code, or "no matching subscribers") is
not a delivery: its segment is released and sent again later, whole.

Threads: paho's network thread only appends `(mid, failed)` to `_acks` and flags connection
changes; every other piece of state belongs to the sender thread, so there are no locks on the
per-message path and a PUBACK can never race the bookkeeping of its own publish.

Uplink outages: nothing new is handed to paho while it is disconnected, so memory stays
bounded; what paho already holds it retransmits itself on reconnect, and those segments
complete then. Queued, not yet leased segments are simply forgotten: they are still in the
spool, and the reconnect takes a fresh look at it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.schedule import Phase, SendQueue, batch_size
from gateway.token_bucket import TokenBucket
from saltmarsh.config.gateway import GatewayConfig
from saltmarsh.mqtt import QOS_AT_LEAST_ONCE, connect_client, delivered, make_client
from saltmarsh.spool import Record, Segment, Spool
from saltmarsh.status import RateMeter

log = logging.getLogger(__name__)

GATEWAY_PROPERTY = "gw"  # MQTT 5 user property: which gateway carried a message
RETRY_AFTER_S = 1.0  # a refused segment waits this long before it is sent again
_IDLE_WAIT_S = 0.5
_MIN_WAIT_S = 0.001
_HANDED_TO_PAHO = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: paho keeps it and resends


class OpenSegment:
    """A leased segment on its way up: how far it is published, and how many PUBACKs are missing."""

    __slots__ = ("failed", "phase", "records", "seg", "sent", "unacked")

    def __init__(self, seg: Segment, records: list[Record], phase: Phase) -> None:
        self.seg = seg
        self.records = records
        self.phase = phase
        self.sent = 0
        self.unacked = 0
        self.failed = False

    @property
    def remaining(self) -> int:
        return len(self.records) - self.sent

    @property
    def settled(self) -> bool:
        return self.sent == len(self.records) and self.unacked == 0


class Sender:
    """Publishes the spool to the uplink: live first, backlog under a token bucket."""

    def __init__(
        self, cfg: GatewayConfig, spool: Spool, clock: Callable[[], float] = time.monotonic, grace_s: float = 2.0
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._clock = clock
        self._grace_s = grace_s
        self._queue = SendQueue()
        self._bucket = TokenBucket(cfg.drain_rate_limit, cfg.drain_burst, clock())
        self._window = cfg.inflight_window
        self._by_mid: dict[int, OpenSegment] = {}
        self._live_open: OpenSegment | None = None
        self._backlog_open: OpenSegment | None = None
        self._retry: deque[tuple[float, Segment]] = deque()
        self._accepting = False  # connected, and the queue reflects the spool

        # Written by other threads; plain appends and assignments, atomic under the GIL.
        self._acks: deque[tuple[int, bool]] = deque()
        self._spooled: deque[Segment] = deque()
        self._link_generation = 0
        self._seen_generation = 0
        self._server_receive_maximum = 65_535
        self.connected = False

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._meter_lock = threading.Lock()  # RateMeter is not safe to read while it is written
        self._live_meter = RateMeter()
        self._drain_meter = RateMeter()
        self.forwarded_total = 0
        self.refused_total = 0

        self._props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._props.UserProperty = (GATEWAY_PROPERTY, cfg.gateway_id)
        self._client = make_client(cfg.uplink)
        # Unlimited in paho: our window already bounds what it holds, and with a limit set paho
        # scans every message it holds on every PUBACK (measured: 2.3 of 6 s of CPU at 30k msgs).
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    # -- called from other threads -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        connect_client(self._client, self._cfg.uplink, clean_start=False)
        self._client.loop_start()

    def stop(self) -> None:
        """Stop publishing, give in-flight messages a moment to be PUBACKed, then disconnect."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(self._grace_s + 10.0)
        self._client.disconnect()
        self._client.loop_stop()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def spooled(self, segments: list[Segment]) -> None:
        """The committer wrote these segments (committer thread)."""
        self._spooled.extend(segments)
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._by_mid)

    def rates(self) -> tuple[float, float]:
        """(live, drain) messages per second handed to the uplink."""
        with self._meter_lock:
            return self._live_meter.rate(), self._drain_meter.rate()

    def backlog_depth(self, spool_depth: int) -> int:
        """Messages that will go up under the drain limit; while the uplink is down, all of the spool."""
        if not self._accepting:
            return spool_depth
        open_backlog = self._backlog_open
        depth = self._queue.backlog_messages + (open_backlog.remaining if open_backlog is not None else 0)
        # The queue may still list segments the quota has since evicted.
        return min(depth, spool_depth)

    # -- paho network thread ---------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("uplink refused connection", extra={"event": "uplink_refused", "reason": str(reason)})
            return
        receive_maximum = getattr(props, "ReceiveMaximum", None)
        self._server_receive_maximum = int(receive_maximum) if receive_maximum else 65_535
        self.connected = True
        self._link_generation += 1
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self.connected = False
        self._link_generation += 1
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties) -> None:
        self._acks.append((mid, not delivered(reason)))
        if not self._wake.is_set():
            self._wake.set()

    # -- sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            now = self._clock()
            self._settle_acks(now)
            self._follow_link()
            self._take_spooled()
            self._requeue_due(now)
            if not (self._accepting and self._send(now)):
                self._wake.wait(self._idle_wait(now))
        self._wind_down()

    def _follow_link(self) -> None:
        generation = self._link_generation
        if generation == self._seen_generation:
            return
        self._seen_generation = generation
        if self.connected:
            # Everything spooled until now is backlog; segments in flight are not in `pending`.
            pending = self._spool.pending()
            self._queue.restart(pending)
            for open_seg in (self._live_open, self._backlog_open):
                if open_seg is not None:
                    self._queue.mark_boundary(open_seg.seg.segno)
            self._retry.clear()  # released segments are back in `pending`
            self._bucket = TokenBucket(self._cfg.drain_rate_limit, self._cfg.drain_burst, self._clock())
            self._window = max(1, min(self._cfg.inflight_window, self._server_receive_maximum))
            self._accepting = True
            log.info(
                "uplink connected; draining backlog behind live traffic",
                extra={
                    "event": "uplink_connected",
                    "backlog_messages": self._queue.backlog_messages,
                    "backlog_segments": len(pending),
                    "held_by_client": len(self._by_mid),
                    "window": self._window,
                },
            )
        else:
            was_accepting = self._accepting
            self._accepting = False
            self._queue.clear()
            if was_accepting:
                log.warning(
                    "uplink disconnected; spooling until it is back",
                    extra={"event": "uplink_disconnected", "held_by_client": len(self._by_mid)},
                )

    def _take_spooled(self) -> None:
        spooled = self._spooled
        while spooled:
            seg = spooled.popleft()
            if self._accepting:
                self._queue.offer(seg)

    def _requeue_due(self, now: float) -> None:
        while self._retry and self._retry[0][0] <= now:
            _, seg = self._retry.popleft()
            if self._accepting:
                self._queue.retry(seg)

    def _idle_wait(self, now: float) -> float:
        wait = _IDLE_WAIT_S
        room = self._window - len(self._by_mid)
        if self._accepting and room > 0 and (self._backlog_open is not None or self._queue.has_backlog()):
            wait = min(wait, self._bucket.seconds_until(1, now))
        if self._retry:
            wait = min(wait, self._retry[0][0] - now)
        return max(_MIN_WAIT_S, wait)

    def _send(self, now: float) -> bool:
        """Hand what the window and the bucket allow to paho; True if anything went."""
        room = self._window - len(self._by_mid)
        live_sent = 0
        while room > 0:
            open_seg = self._live_open or self._open_next(Phase.LIVE)
            if open_seg is None:
                break
            count = self._publish(open_seg, batch_size(Phase.LIVE, room, open_seg.remaining, 0))
            room -= count
            live_sent += count
        drain_sent = 0
        tokens = self._bucket.available(now) if room > 0 else 0
        while room > 0 and tokens > 0:
            open_seg = self._backlog_open or self._open_next(Phase.BACKLOG)
            if open_seg is None:
                break
            count = self._publish(open_seg, batch_size(Phase.BACKLOG, room, open_seg.remaining, tokens))
            self._bucket.take(count, now)
            tokens -= count
            room -= count
            drain_sent += count
        if live_sent or drain_sent:
            with self._meter_lock:
                self._live_meter.add(live_sent, now)
                self._drain_meter.add(drain_sent, now)
        return bool(live_sent or drain_sent)

    def _open_next(self, phase: Phase) -> OpenSegment | None:
        while True:
            seg = self._queue.next_live() if phase is Phase.LIVE else self._queue.next_backlog()
            if seg is None:
                return None
            records = self._spool.lease(seg)
            if not records:
                continue  # evicted by the quota since it was queued, or unreadable and dropped
            open_seg = OpenSegment(seg, records, phase)
            if phase is Phase.LIVE:
                self._live_open = open_seg
            else:
                self._backlog_open = open_seg
            return open_seg

    def _publish(self, open_seg: OpenSegment, count: int) -> int:
        publish = self._client.publish
        props = self._props
        by_mid = self._by_mid
        start = open_seg.sent
        # `sent` moves only after the loop, so that acks settled mid-loop (below) cannot see
        # the segment as complete while part of it is still unpublished.
        for topic, payload in open_seg.records[start : start + count]:
            info = publish(topic, payload, QOS_AT_LEAST_ONCE, False, props)
            if info.rc in _HANDED_TO_PAHO:
                if info.mid in by_mid:
                    # paho reused a packet id whose PUBACK is queued but not yet counted here.
                    self._settle_acks(self._clock())
                by_mid[info.mid] = open_seg
                open_seg.unacked += 1
            else:
                open_seg.failed = True
        open_seg.sent = start + count
        if open_seg.remaining == 0:
            if open_seg is self._live_open:
                self._live_open = None
            elif open_seg is self._backlog_open:
                self._backlog_open = None
            if open_seg.settled:
                self._finish(open_seg, self._clock())
        return count

    def _settle_acks(self, now: float) -> None:
        acks = self._acks
        by_mid = self._by_mid
        forwarded = 0
        while acks:
            mid, failed = acks.popleft()
            open_seg = by_mid.pop(mid, None)
            if open_seg is None:
                continue
            open_seg.unacked -= 1
            if failed:
                open_seg.failed = True
                self.refused_total += 1
            else:
                forwarded += 1
            if open_seg.settled:
                self._finish(open_seg, now)
        self.forwarded_total += forwarded

    def _finish(self, open_seg: OpenSegment, now: float) -> None:
        seg = open_seg.seg
        if open_seg.failed:
            self._spool.release(seg)
            self._retry.append((now + RETRY_AFTER_S, seg))
            log.warning(
                "uplink refused messages; segment will be sent again",
                extra={"event": "uplink_refused_messages", "segment": seg.segno, "retry_in_s": RETRY_AFTER_S},
            )
            return
        try:
            self._spool.remove(seg)
        # A segment that cannot be deleted is merely sent again after a restart: a duplicate
        # the sink absorbs, never a loss, so the sender carries on.
        except Exception as err:
            self._spool.release(seg)
            log.error(
                "could not delete a delivered segment",
                extra={"event": "spool_remove_failed", "segment": seg.segno, "why": repr(err)},
            )

    def _wind_down(self) -> None:
        """Collect PUBACKs for what is already up, briefly; what misses the grace is resent next run."""
        deadline = self._clock() + self._grace_s
        while self._by_mid and self.connected and self._clock() < deadline:
            self._wake.clear()
            self._settle_acks(self._clock())
            self._wake.wait(0.05)
        self._settle_acks(self._clock())
