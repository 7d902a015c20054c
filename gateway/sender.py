"""The cloud side: spooled segments up to the uplink broker at QoS 1, deleted only when PUBACKed.

A segment is leased from the spool, its records are published (never more than the PUBACK
window at once), and it is deleted only when every one of its messages has a successful PUBACK.
A refused message (a failure reason code, or "no matching subscribers") is not a delivery: its
segment is released and sent again later, whole.

Segments that have just been committed come with their records still in memory, so live
traffic is never read back from disk; the backlog is. Everything here runs on the forwarder's
loop thread, which also owns the uplink connection, so a PUBACK can never race the bookkeeping
of its own publish and there are no locks on the per-message path.

Uplink outages: everything in flight is released back to the spool at once (the new
connection gets new packet ids, so nothing the old one held is resumed); the reconnect takes
a fresh look at the spool, all of it backlog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.schedule import Phase, SendQueue, batch_size
from gateway.token_bucket import TokenBucket
from saltmarsh.config.gateway import GatewayConfig
from saltmarsh.mqtt.codec import GATEWAY_PROPERTY, properties, puback_delivered, user_property
from saltmarsh.mqtt.connect import wire_client
from saltmarsh.mqtt.wire import ConnAck, WireClient
from saltmarsh.runtime.spool import Record, Segment, Spool
from saltmarsh.runtime.status import RateMeter

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0  # a refused segment waits this long before it is sent again
_IDLE_WAIT_S = 0.5
_MIN_WAIT_S = 0.001


def gateway_properties(gateway_id: str) -> bytes:
    """The PUBLISH property block every forwarded message carries, encoded once."""
    return properties(user_property(GATEWAY_PROPERTY, gateway_id))


def connect_uplink(cfg: GatewayConfig) -> tuple[WireClient, ConnAck]:
    """Connect (blocking; run by a connector thread, never the loop)."""
    client = wire_client(cfg.uplink, clean_start=False)
    return client, client.connect()


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
        self, cfg: GatewayConfig, spool: Spool, clock: Callable[[], float] = time.monotonic, hot_max_messages: int = 0
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._clock = clock
        self._props = gateway_properties(cfg.gateway_id)
        self._queue = SendQueue()
        self._bucket = TokenBucket(cfg.drain_rate_limit, cfg.drain_burst, clock())
        self._window = cfg.inflight_window
        self._by_id: dict[int, OpenSegment] = {}
        self._live_open: OpenSegment | None = None
        self._backlog_open: OpenSegment | None = None
        self._retry: deque[tuple[float, Segment]] = deque()
        self._delivered: list[Segment] = []
        # Records of queued live segments, so that they go up without a read from disk. Capped,
        # so that a slow uplink cannot grow memory: past the cap, segments are read back.
        self._hot: dict[int, list[Record]] = {}
        self._hot_messages = 0
        self._hot_max = hot_max_messages or max(4 * cfg.commit_max_messages, 4 * cfg.inflight_window)
        self.client: WireClient | None = None
        self.stopping = False  # publish nothing new; PUBACKs for what is up are still counted

        self._meter_lock = threading.Lock()  # RateMeter is not safe to read while it is written
        self._live_meter = RateMeter()
        self._drain_meter = RateMeter()
        self.forwarded_total = 0
        self.refused_total = 0

    # -- read by the status thread ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client is not None

    @property
    def inflight(self) -> int:
        return len(self._by_id)

    def rates(self) -> tuple[float, float]:
        """(live, drain) messages per second handed to the uplink."""
        with self._meter_lock:
            return self._live_meter.rate(), self._drain_meter.rate()

    def backlog_depth(self, spool_depth: int) -> int:
        """Messages that will go up under the drain limit; while the uplink is down, all of the spool."""
        if self.client is None:
            return spool_depth
        open_backlog = self._backlog_open
        depth = self._queue.backlog_messages + (open_backlog.remaining if open_backlog is not None else 0)
        # The queue may still list segments the quota has since evicted.
        return min(depth, spool_depth)

    # -- the loop thread -------------------------------------------------------------------

    def attach(self, client: WireClient, connack: ConnAck, live_since_ms: int | None = None) -> None:
        """The uplink is (back) up: what the spool holds now is backlog, but for what was spooled
        after `live_since_ms`, the last moment the uplink was known to be down."""
        self.client = client
        now = self._clock()
        self._queue.restart(self._spool.pending(), live_since_ms)
        self._retry.clear()  # released segments are back in `pending`
        self._drop_hot()
        self._bucket = TokenBucket(self._cfg.drain_rate_limit, self._cfg.drain_burst, now)
        self._window = max(1, min(self._cfg.inflight_window, connack.receive_maximum))
        log.info(
            "uplink connected; draining backlog behind live traffic",
            extra={
                "event": "uplink_connected",
                "backlog_messages": self._queue.backlog_messages,
                "recent_messages_as_live": self._queue.live_messages,
                "window": self._window,
                "session_present": connack.session_present,
            },
        )

    def detach(self, why: str) -> None:
        """The uplink is gone: what was in flight goes back to the spool, to be sent again."""
        client = self.client
        if client is None:
            return
        self.client = None
        client.close()
        released = {id(o): o for o in self._by_id.values()}
        for open_seg in (self._live_open, self._backlog_open):
            if open_seg is not None:
                released[id(open_seg)] = open_seg
        for open_seg in released.values():
            self._spool.release(open_seg.seg)
        self._by_id.clear()
        self._live_open = self._backlog_open = None
        self._queue.clear()
        self._drop_hot()
        log.warning(
            "uplink disconnected; spooling until it is back",
            extra={"event": "uplink_disconnected", "released_segments": len(released), "why": why},
        )

    def offer(self, segments: list[tuple[Segment, list[Record]]]) -> None:
        """Freshly committed segments, with their records."""
        if self.client is None:
            return  # in the spool; the reconnect will find them
        for seg, records in segments:
            if self._queue.offer(seg) and self._hot_messages + len(records) <= self._hot_max:
                self._hot[seg.segno] = records
                self._hot_messages += len(records)

    def take_delivered(self) -> list[Segment]:
        """Segments every message of which was PUBACKed since the last call: to delete."""
        delivered = self._delivered
        if delivered:
            self._delivered = []
        return delivered

    def idle_wait(self, now: float) -> float:
        """How long the loop may sleep before the bucket or a retry wants attention."""
        wait = _IDLE_WAIT_S
        if self.client is not None:
            room = self._window - len(self._by_id)
            if room > 0 and (self._live_open is not None or self._queue.has_live()):
                return 0.0
            if room > 0 and (self._backlog_open is not None or self._queue.has_backlog()):
                wait = min(wait, self._bucket.seconds_until(1, now))
        if self._retry:
            wait = min(wait, self._retry[0][0] - now)
        return max(_MIN_WAIT_S, wait) if wait > 0 else 0.0

    def pump(self, now: float) -> int:
        """Publish what the window and the bucket allow; returns how many messages went."""
        self._requeue_due(now)
        if self.client is None or self.stopping:
            return 0
        room = self._window - len(self._by_id)
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
        return live_sent + drain_sent

    def settle(self, pubacks: list[tuple[int, int]], now: float) -> None:
        """Count PUBACKs against their segments; a segment with all of them in is finished."""
        by_id = self._by_id
        forwarded = 0
        for packet_id, reason in pubacks:
            open_seg = by_id.pop(packet_id, None)
            if open_seg is None:
                continue
            open_seg.unacked -= 1
            if not puback_delivered(reason):
                open_seg.failed = True
                self.refused_total += 1
            else:
                forwarded += 1
            if not open_seg.unacked and open_seg.sent == len(open_seg.records):
                self._finish(open_seg, now)
        self.forwarded_total += forwarded

    def release_all(self) -> None:
        """At shutdown: give back what is still leased, so nothing stays marked in flight."""
        if self.client is not None:
            self.detach("stopping")

    # -- internals -------------------------------------------------------------------------

    def _drop_hot(self) -> None:
        self._hot.clear()
        self._hot_messages = 0

    def _requeue_due(self, now: float) -> None:
        while self._retry and self._retry[0][0] <= now:
            _, seg = self._retry.popleft()
            if self.client is not None:
                self._queue.retry(seg)

    def _open_next(self, phase: Phase) -> OpenSegment | None:
        while True:
            seg = self._queue.next_live() if phase is Phase.LIVE else self._queue.next_backlog()
            if seg is None:
                return None
            records = self._hot.pop(seg.segno, None)
            if records is not None:
                self._hot_messages -= len(records)
                if not self._spool.hold(seg):
                    continue  # evicted by the quota since it was committed
            else:
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
        client = self.client
        assert client is not None
        publish = client.publish
        props = self._props
        by_id = self._by_id
        start = open_seg.sent
        for topic, payload in open_seg.records[start : start + count]:
            by_id[publish(topic.encode(), payload, 1, props)] = open_seg
        open_seg.unacked += count
        open_seg.sent = start + count
        if open_seg.remaining == 0:
            if open_seg is self._live_open:
                self._live_open = None
            elif open_seg is self._backlog_open:
                self._backlog_open = None
        return count

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
        # Deleted by the committer with its next transaction; until then it stays leased, so
        # a reconnect meanwhile does not send it again.
        self._delivered.append(seg)
