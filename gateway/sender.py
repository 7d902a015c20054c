"""The cloud side: spooled segments up to the uplink broker, deleted only when the sink confirms them.

A segment is leased from the spool and its records are published at QoS 1, each numbered in the
`msg` user property (`saltmarsh.contract.confirmation`). The cloud broker's PUBACK only frees a
slot of the MQTT window; the segment is deleted when the ingester has confirmed, on this
gateway's `ack` topic, that every one of its messages is committed to the sink (or, with
`confirmations.mode = "broker"`, when every PUBACK is in). What is not confirmed is sent again
(`saltmarsh.runtime.unconfirmed` says when), whole messages with their numbers, so a
confirmation of either copy releases it and the sink counts the copy as a duplicate.

Flow control: no new message goes up while the unconfirmed window (`confirmations.max_messages`,
`max_bytes`) is full. A slow or absent sink therefore fills the gateway's spool, under its quota,
and never the cloud broker. What is spooled while the window is full is backlog when it opens.

Segments that have just been committed come with their records still in memory, so live
traffic is never read back from disk; the backlog is. Everything here runs on the forwarder's
loop thread, which also owns the uplink connection, so a PUBACK or a confirmation can never race
the bookkeeping of its own publish and there are no locks on the per-message path.

Uplink outages: open segments stay leased and tracked; on the new connection every unconfirmed
message is sent again (the broker may have restarted without them), and a fresh look at the
spool makes the rest backlog.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.schedule import Phase, SendQueue, batch_size
from gateway.token_bucket import TokenBucket
from saltmarsh.config.gateway import GatewayConfig
from saltmarsh.contract.confirmation import MESSAGE_PROPERTY, ack_topic
from saltmarsh.contract.topics import ROOT, Channel, site_commands
from saltmarsh.mqtt.codec import (
    GATEWAY_PROPERTY,
    PROP_USER_PROPERTY,
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    Publish,
    puback_delivered,
    user_property,
    utf8,
    varint,
)
from saltmarsh.mqtt.connect import wire_client
from saltmarsh.mqtt.wire import ConnAck, WireClient
from saltmarsh.runtime.spool import Record, Segment, Spool
from saltmarsh.runtime.status import RateMeter
from saltmarsh.runtime.unconfirmed import OpenSegment, Unconfirmed

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0  # a refused message waits this long before it is sent again
DUE_CHECK_S = 0.25  # how often the unconfirmed window is searched for messages to resend
_IDLE_WAIT_S = 1.0
_MIN_WAIT_S = 0.001
_U16 = struct.Struct(">H")


def uplink_ack_topic(cfg: GatewayConfig) -> str:
    """Where the ingesters confirm this gateway's messages: on each site it carries."""
    if cfg.site == "+":
        return f"{ROOT}/+/{cfg.gateway_id}/{Channel.ACK.value}"  # the id is checked by the config
    return ack_topic(cfg.site, cfg.gateway_id)


def connect_uplink(cfg: GatewayConfig) -> tuple[WireClient, ConnAck]:
    """Connect and subscribe to the confirmations (blocking; run by a connector thread, never the loop)."""
    client = wire_client(cfg.uplink, clean_start=False)
    connack = client.connect()
    filters: list[tuple[str, int]] = []
    if cfg.confirmations.end_to_end:
        # QoS 0: a confirmation that finds us away is worth nothing later (a new run, or a
        # resend already under way), so the broker need not keep it.
        filters.append((uplink_ack_topic(cfg), QOS_AT_MOST_ONCE))
    if cfg.commands.enabled:
        # QoS 1 on the persistent session: the cloud broker keeps this site's commands while we
        # are away, and lets go of each only when gateway.commands holds it.
        filters.append((site_commands(cfg.site), QOS_AT_LEAST_ONCE))
    if filters:
        try:
            granted = client.subscribe(filters)
            if any(code >= 0x80 for code in granted):
                raise ConnectionRefusedError(f"cloud broker refused the subscriptions to {filters}: {granted}")
        except BaseException:
            client.close()
            raise
    return client, connack


class MessageProperties:
    """The PUBLISH property block of each forwarded message: `gw`, then its number in `msg`."""

    def __init__(self, gateway_id: str, run: str) -> None:
        self._gateway = user_property(GATEWAY_PROPERTY, gateway_id)
        self._msg_key = bytes((PROP_USER_PROPERTY,)) + utf8(MESSAGE_PROPERTY)
        self._run = f"{run}:"
        self._plain = varint(len(self._gateway)) + self._gateway

    def unnumbered(self, number: int) -> bytes:
        """Broker mode: nobody downstream confirms, so the number stays here."""
        return self._plain

    def numbered(self, number: int) -> bytes:
        value = (self._run + str(number)).encode()
        body = b"".join((self._gateway, self._msg_key, _U16.pack(len(value)), value))
        return varint(len(body)) + body


class Sender:
    """Publishes the spool to the uplink: live first, backlog under a token bucket, within the window."""

    def __init__(
        self, cfg: GatewayConfig, spool: Spool, clock: Callable[[], float] = time.monotonic, hot_max_messages: int = 0
    ) -> None:
        self._cfg = cfg
        self._spool = spool
        self._clock = clock
        self._confirm_cfg = cfg.confirmations
        self._end_to_end = cfg.confirmations.end_to_end
        self.unconfirmed: Unconfirmed[OpenSegment] = Unconfirmed(
            overtaken_s=cfg.confirmations.overtaken_s, silence=cfg.confirmations.silence_policy()
        )
        props = MessageProperties(cfg.gateway_id, self.unconfirmed.run)
        self._props_for = props.numbered if self._end_to_end else props.unnumbered
        self._ack_topic_prefix = uplink_ack_topic(cfg).split("/")
        self._queue = SendQueue()
        # The drain limit: the config's until a `set_drain_rate` command changes it (until a restart).
        self.drain_rate_limit = cfg.drain_rate_limit
        self._bucket = TokenBucket(self.drain_rate_limit, cfg.drain_burst, clock())
        self.flushing = False  # `flush_backlog_now`: the backlog goes at the window's pace, not the bucket's
        self._window = cfg.inflight_window
        self._by_id: dict[int, int] = {}  # packet id -> message number, until its PUBACK
        self._open: dict[int, OpenSegment] = {}  # segno -> leased, not yet fully confirmed
        self._live_open: OpenSegment | None = None
        self._backlog_open: OpenSegment | None = None
        self._resend: deque[int] = deque()  # copies to publish again as soon as there is room
        self._refused: deque[tuple[float, int]] = deque()  # (when, number): refused by the broker
        self._next_due_check = 0.0
        self._behind = False  # segments were spooled while the window was full: not queued
        self._delivered: list[Segment] = []
        # Records of queued live segments, so that they go up without a read from disk. Capped,
        # so that a slow uplink cannot grow memory: past the cap, segments are read back.
        self._hot: dict[int, list[Record]] = {}
        self._hot_messages = 0
        self._hot_max = hot_max_messages or max(4 * cfg.commit_max_messages, 4 * cfg.inflight_window)
        self.client: WireClient | None = None
        self.stopping = False  # publish nothing new; PUBACKs and confirmations are still counted

        self._meter_lock = threading.Lock()  # RateMeter is not safe to read while it is written
        self._live_meter = RateMeter()
        self._drain_meter = RateMeter()
        self.forwarded_total = 0  # PUBACKed by the cloud broker
        self.refused_total = 0
        self.window_full_total = 0  # times the unconfirmed window filled and stopped new sends
        self._was_full = False

    # -- read by the status thread ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client is not None

    @property
    def inflight(self) -> int:
        """Published, PUBACK not yet in."""
        return len(self._by_id)

    @property
    def window_full(self) -> bool:
        cfg = self._confirm_cfg
        return self.unconfirmed.full(cfg.max_messages, cfg.max_bytes)

    @property
    def idle(self) -> bool:
        """Nothing to push but what the next commit brings: no backlog, resends or live segments queued."""
        return not (
            self._resend
            or self._behind
            or self._live_open is not None
            or self._backlog_open is not None
            or self._queue.has_live()
            or self._queue.has_backlog()
        )

    @property
    def can_send(self) -> bool:
        """Up, with room in the unconfirmed window: what is committed now goes up at once."""
        return self.client is not None and not self.window_full

    def rates(self) -> tuple[float, float]:
        """(live, drain) messages per second handed to the uplink."""
        with self._meter_lock:
            return self._live_meter.rate(), self._drain_meter.rate()

    def backlog_depth(self, spool_depth: int) -> int:
        """Messages that will go up under the drain limit; while the uplink is down, all of the spool."""
        if self.client is None or self._behind:
            return spool_depth
        open_backlog = self._backlog_open
        depth = self._queue.backlog_messages + (open_backlog.remaining if open_backlog is not None else 0)
        # The queue may still list segments the quota has since evicted.
        return min(depth, spool_depth)

    # -- the loop thread -------------------------------------------------------------------

    def set_drain_rate(self, messages_per_s: float) -> float:
        """A new drain limit, at once; returns the one it replaces."""
        was = self.drain_rate_limit
        self.drain_rate_limit = messages_per_s
        self._bucket = TokenBucket(messages_per_s, self._cfg.drain_burst, self._clock())
        log.info(
            "drain limit changed",
            extra={"event": "drain_rate_changed", "messages_per_s": messages_per_s, "was": was},
        )
        return was

    def flush_backlog(self) -> int:
        """Drain the backlog as fast as the windows allow, until it is empty; returns its depth now."""
        self.flushing = True
        return self.backlog_depth(self._spool.stats().depth_messages)

    def attach(self, client: WireClient, connack: ConnAck, live_since_ms: int | None = None) -> None:
        """The uplink is (back) up: what the spool holds now is backlog, but for what was spooled
        after `live_since_ms`, the last moment the uplink was known to be down."""
        self.client = client
        now = self._clock()
        self._queue.restart(self._spool.pending(), live_since_ms)
        self._behind = False
        self._drop_hot()
        self._bucket = TokenBucket(self.drain_rate_limit, self._cfg.drain_burst, now)
        self._window = max(1, min(self._cfg.inflight_window, connack.receive_maximum))
        # The broker may have restarted without what it held for the sink: send it all again.
        self._resend.clear()
        self._resend.extend(self.unconfirmed.resend_all())
        log.info(
            "uplink connected; draining backlog behind live traffic",
            extra={
                "event": "uplink_connected",
                "backlog_messages": self._queue.backlog_messages,
                "recent_messages_as_live": self._queue.live_messages,
                "unconfirmed_resent": len(self._resend),
                "window": self._window,
                "session_present": connack.session_present,
            },
        )

    def detach(self, why: str) -> None:
        """The uplink is gone: open segments stay leased, and go again on the next connection."""
        client = self.client
        if client is None:
            return
        self.client = None
        client.close()
        self._by_id.clear()
        self._resend.clear()
        self._refused.clear()
        self._queue.clear()
        self._drop_hot()
        log.warning(
            "uplink disconnected; spooling until it is back",
            extra={
                "event": "uplink_disconnected",
                "open_segments": len(self._open),
                "unconfirmed": self.unconfirmed.count,
                "why": why,
            },
        )

    def offer(self, segments: list[tuple[Segment, list[Record]]]) -> None:
        """Freshly committed segments, with their records."""
        if self.client is None:
            return  # in the spool; the reconnect will find them
        if self.window_full and self._queue.live_messages >= self._confirm_cfg.max_messages:
            # A window's worth is queued already: the rest stays in the spool, as backlog once
            # the window opens, so that a long sink outage drains at the drain rate.
            self._behind = True
            return
        for seg, records in segments:
            if self._queue.offer(seg) and self._hot_messages + len(records) <= self._hot_max:
                self._hot[seg.segno] = records
                self._hot_messages += len(records)

    def take_delivered(self) -> list[Segment]:
        """Segments every message of which was confirmed since the last call: to delete."""
        delivered = self._delivered
        if delivered:
            self._delivered = []
        return delivered

    def idle_wait(self, now: float) -> float:
        """How long the loop may sleep before the bucket, a resend or a retry wants attention."""
        wait = min(_IDLE_WAIT_S, self._next_due_check - now) if self.unconfirmed.count else _IDLE_WAIT_S
        if self.client is not None:
            room = self._window - len(self._by_id)
            if room > 0 and self._resend:
                return 0.0
            if room > 0 and not self.window_full:
                if self._live_open is not None or self._queue.has_live():
                    return 0.0
                if self._backlog_open is not None or self._queue.has_backlog() or self._behind:
                    wait = 0.0 if self.flushing else min(wait, self._bucket.seconds_until(1, now))
        if self._refused:
            wait = min(wait, self._refused[0][0] - now)
        return max(_MIN_WAIT_S, wait) if wait > 0 else 0.0

    def pump(self, now: float) -> int:
        """Publish what the windows and the bucket allow, resends first; returns how many went."""
        if now >= self._next_due_check:
            self._next_due_check = now + DUE_CHECK_S
            self._resend.extend(self.unconfirmed.due(now))
        while self._refused and self._refused[0][0] <= now:
            number = self._refused.popleft()[1]
            if self.unconfirmed.requeue(number):
                self._resend.append(number)
        if self.client is None or self.stopping:
            return 0
        room = self._window - len(self._by_id)
        resent = self._publish_resends(room, now) if self._resend else 0
        room -= resent
        full = self.window_full
        if full and not self._was_full:
            self.window_full_total += 1
            log.info(
                "unconfirmed window full; holding new messages in the spool until the sink confirms",
                extra={"event": "window_full", "unconfirmed": self.unconfirmed.count, "bytes": self.unconfirmed.nbytes},
            )
        self._was_full = full
        if room <= 0 or full:
            return resent
        if self._behind:
            # The window opened after segments were spooled without being queued: the spool's
            # own view, all of it backlog, replaces the queue.
            self._behind = False
            self._drop_hot()
            self._queue.restart(self._spool.pending())
        # New messages fit the unconfirmed window exactly, in messages; bytes are checked per batch.
        room = min(room, self._confirm_cfg.max_messages - self.unconfirmed.count)
        live_sent = 0
        while room > 0 and not self.window_full:
            open_seg = self._live_open or self._open_next(Phase.LIVE)
            if open_seg is None:
                break
            count = self._publish(open_seg, batch_size(Phase.LIVE, room, open_seg.remaining, 0), now)
            room -= count
            live_sent += count
        drain_sent = 0
        tokens = room if self.flushing else self._bucket.available(now) if room > 0 else 0
        while room > 0 and tokens > 0 and not self.window_full:
            open_seg = self._backlog_open or self._open_next(Phase.BACKLOG)
            if open_seg is None:
                if self.flushing:
                    self.flushing = False
                    log.info("backlog flushed; the drain limit applies again", extra={"event": "backlog_flushed"})
                break
            count = self._publish(open_seg, batch_size(Phase.BACKLOG, room, open_seg.remaining, tokens), now)
            if not self.flushing:
                self._bucket.take(count, now)
            tokens -= count
            room -= count
            drain_sent += count
        if live_sent or drain_sent:
            with self._meter_lock:
                self._live_meter.add(live_sent, now)
                self._drain_meter.add(drain_sent, now)
        return resent + live_sent + drain_sent

    def settle(self, pubacks: list[tuple[int, int]], now: float) -> None:
        """PUBACKs: a slot of the MQTT window each; a refusal means that message goes again."""
        by_id = self._by_id
        forwarded: list[int] = []
        for packet_id, reason in pubacks:
            number = by_id.pop(packet_id, None)
            if number is None:
                continue
            if puback_delivered(reason):
                forwarded.append(number)
            else:
                self.refused_total += 1
                self._refused.append((now + RETRY_AFTER_S, number))
                if self.refused_total == 1 or self.refused_total % 1000 == 0:
                    log.warning(
                        "uplink refused messages; they will be sent again",
                        extra={
                            "event": "uplink_refused_messages",
                            "reason": reason,
                            "refused_total": self.refused_total,
                        },
                    )
        self.forwarded_total += len(forwarded)
        if not self._end_to_end:
            self._released(self.unconfirmed.settle(forwarded, now))

    def confirm(self, publishes: list[Publish], now: float) -> None:
        """Confirmations from the ingesters, on this gateway's `ack` topic."""
        receive = self.unconfirmed.receive
        for publish in publishes:
            if publish.packet_id and self.client is not None:
                self.client.ack(publish.packet_id)
            ours = self._is_ack_topic(publish.topic)
            self._released(receive(publish.topic, publish.payload, now, ours=ours))

    def tick(self) -> None:
        """Once a second or so: the oldest unconfirmed age for the status file."""
        self.unconfirmed.refresh_oldest()

    def release_all(self) -> None:
        """At shutdown: give back what is still leased, so nothing stays marked in flight."""
        if self.client is not None:
            self.detach("stopping")
        for open_seg in self._open.values():
            self._spool.release(open_seg.seg)
        self._open.clear()
        self._live_open = self._backlog_open = None

    # -- internals -------------------------------------------------------------------------

    def _is_ack_topic(self, topic: str) -> bool:
        parts = topic.split("/")
        return len(parts) == len(self._ack_topic_prefix) and all(
            want in ("+", got) for want, got in zip(self._ack_topic_prefix, parts, strict=True)
        )

    def _drop_hot(self) -> None:
        self._hot.clear()
        self._hot_messages = 0

    def _released(self, released: list[tuple[int, OpenSegment]]) -> None:
        for _, open_seg in released:
            if open_seg.release():
                self._finish(open_seg)

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
            base = self.unconfirmed.reserve(len(records))
            open_seg = OpenSegment(seg, records, base)
            self._open[seg.segno] = open_seg
            if phase is Phase.LIVE:
                self._live_open = open_seg
            else:
                self._backlog_open = open_seg
            return open_seg

    def _publish(self, open_seg: OpenSegment, count: int, now: float) -> int:
        client = self.client
        assert client is not None
        publish = client.publish
        numbered = self._props_for
        by_id = self._by_id
        sent = self.unconfirmed.sent
        start = open_seg.sent
        number = open_seg.base + start
        for topic, payload in open_seg.records[start : start + count]:
            by_id[publish(topic.encode(), payload, 1, numbered(number))] = number
            sent(number, open_seg, len(payload), now)
            number += 1
        open_seg.sent = start + count
        if open_seg.remaining == 0:
            if open_seg is self._live_open:
                self._live_open = None
            elif open_seg is self._backlog_open:
                self._backlog_open = None
        return count

    def _publish_resends(self, room: int, now: float) -> int:
        client = self.client
        assert client is not None
        copy = self.unconfirmed.copy
        resend = self._resend
        numbered = self._props_for
        sent = 0
        while resend and sent < room:
            found = copy(resend.popleft(), now)
            if found is None:
                continue  # confirmed meanwhile
            number, open_seg, origin = found
            topic, payload = open_seg.record(origin)
            self._by_id[client.publish(topic.encode(), payload, 1, numbered(number))] = number
            sent += 1
        return sent

    def _finish(self, open_seg: OpenSegment) -> None:
        # Deleted by the committer with its next transaction; until then it stays leased, so
        # a reconnect meanwhile does not send it again.
        del self._open[open_seg.seg.segno]
        self._delivered.append(open_seg.seg)
