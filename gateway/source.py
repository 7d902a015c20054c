"""The site side: a persistent QoS 1 subscription to the local Mosquitto, acked only once spooled.

The forwarder's loop thread reads the local connection and hands each PUBLISH to `take`, which
classifies the topic and adds it to the batch being gathered for the next group commit. The
committer spools that batch; only then does `ack` send the PUBACKs, so the broker keeps every
message until it is on disk and a crash before that gets it redelivered from the session.

Once a batch is spooled its senders get a confirmation too: every message that carries the
sender's number (the `msg` user property, `saltmarsh.contract.confirmation`) is confirmed to the
device its topic names, on that device's `ack` topic, which the site broker's ACL lets only that
device read. The sensor deletes a reading only then: the gateway broker never owns one.
Confirmations are gathered for `confirm_interval_ms` (5 s) and sent then, one per device: a
sensor reading once a second would otherwise cost the site broker a confirmation per reading,
as much as the reading itself. A confirmation is true on any connection, since the spool has
the message; PUBACKs are not:

A batch remembers the *generation* it arrived on: the local connection. An ack is only sent on
that same connection: after a reconnect the broker redelivers what was unacked and may reuse
the old packet ids for new messages, so a late ack for an old id could confirm a message that
was never spooled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from saltmarsh.config.gateway import GatewayConfig
from saltmarsh.contract.confirmation import MESSAGE_PROPERTY, ConfirmationBatch, ack_topic, parse_message_id
from saltmarsh.contract.errors import ValidationError
from saltmarsh.contract.topics import ROOT, Channel
from saltmarsh.mqtt.codec import NO_LOCAL, QOS_AT_LEAST_ONCE, QOS_AT_MOST_ONCE, RETAIN_SEND_IF_NEW_SUB, Publish
from saltmarsh.mqtt.connect import wire_client
from saltmarsh.mqtt.wire import WireClient
from saltmarsh.runtime.logs import log_oversized
from saltmarsh.runtime.spool import Lane, Record

# Channels not in this table (typos, future ones) go to BULK and on to the cloud, whose ingester
# dead-letters them: bad input stays visible instead of vanishing at the gateway.
_LANE_BY_CHANNEL: dict[str, Lane | None] = {
    Channel.READING.value: Lane.BULK,
    Channel.EVENT.value: Lane.KEEP,
    Channel.ALERT.value: Lane.KEEP,
    Channel.CMDRES.value: Lane.KEEP,  # a command's outcome is never evicted, as an alert is not
    Channel.STATUS.value: None,  # device state, retained on the site broker
    Channel.COMMAND.value: None,  # downlink: relayed towards devices, never up
    Channel.ACK.value: None,  # confirmations to devices (ours; No Local keeps them from us anyway)
}

_STATUS_SUFFIX = "/" + Channel.STATUS.value
_CMDRES_SUFFIX = "/" + Channel.CMDRES.value
_LANE_CACHE_MAX = 100_000
# A device with this many spooled and unconfirmed is confirmed at once, not at the interval: a
# fast sensor would otherwise fill its unconfirmed window (1,000) and wait for us.
CONFIRM_EARLY_AT = 200

log = logging.getLogger(__name__)


def lane_for(topic: str) -> Lane | None:
    """The spool lane for a topic, or None for channels that are not forwarded.

    An unknown channel goes to BULK: the ingester dead-letters it with its reason, and a new
    sensor's new channel is not silently dropped by an old gateway."""
    return _LANE_BY_CHANNEL.get(topic[topic.rfind("/") + 1 :], Lane.BULK)


def subscription_filter(site: str) -> str:
    return f"{ROOT}/{site}/#"


class Inbound:
    """Messages received on one local connection and not yet spooled: one group commit's worth."""

    __slots__ = ("after", "bulk", "confirmations", "first_at", "generation", "keep", "packet_ids")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.first_at = 0.0  # monotonic: when its first message arrived
        self.bulk: list[Record] = []
        self.keep: list[Record] = []
        self.packet_ids: list[int] = []  # to PUBACK once spooled, in arrival order
        self.confirmations = ConfirmationBatch()  # to each sender once spooled, on any connection
        self.after: list[Callable[[], None]] = []  # to run once spooled: the gateway's own outcomes

    def __len__(self) -> int:
        return len(self.bulk) + len(self.keep)

    def lanes(self) -> list[tuple[Lane, Sequence[Record]]]:
        return [(Lane.BULK, self.bulk), (Lane.KEEP, self.keep)]


def local_client(cfg: GatewayConfig) -> WireClient:
    """The site-broker connection: a persistent session whose unacked messages survive us."""
    # The broker may send this many unacked messages at once (capped by its own
    # max_inflight_messages): two group commits' worth, so one fills while one is written.
    return wire_client(cfg.local, clean_start=False, receive_maximum=min(65_535, 2 * cfg.commit_max_messages))


def connect_local(cfg: GatewayConfig) -> WireClient:
    """Connect and subscribe (blocking; run by a connector thread, never the loop)."""
    client = local_client(cfg)
    client.connect()
    topic_filter = subscription_filter(cfg.site)
    try:
        # Retained messages only on a new subscription, not on every reconnect; No Local, so the
        # confirmations we publish to devices under the same filter do not come back to us.
        granted = client.subscribe([(topic_filter, QOS_AT_LEAST_ONCE | RETAIN_SEND_IF_NEW_SUB | NO_LOCAL)])
        if any(code >= 0x80 for code in granted):
            raise ConnectionRefusedError(f"local broker refused the subscription to {topic_filter}: {granted}")
    except BaseException:
        client.close()
        raise
    return client


class LocalSource:
    """Turns PUBLISHes from the site broker into group-commit batches, and acks them once spooled.

    Owned by the forwarder's loop thread, like the connection it reads; the status thread only
    reads the counters.
    """

    def __init__(self, cfg: GatewayConfig) -> None:
        self._cfg = cfg
        self.client: WireClient | None = None
        self.generation = 0
        self.gathering = Inbound(0)
        self.received_total = 0  # forwarded channels only
        self.skipped_total = 0  # status and cmd
        self.oversized_total = 0  # larger than max_message_bytes: acked, logged, not forwarded
        self.confirmed_total = 0  # messages confirmed to their senders
        self.confirmations_sent_total = 0
        self.unconfirmable_total = 0  # a `msg` property we could not read: kept, not confirmed
        # A site has a bounded set of topics (devices x channels), each seen over and over.
        self._lane_by_topic: dict[str, Lane | None] = {}
        self._ack_topic_by_topic: dict[str, str | None] = {}
        self._unsent = ConfirmationBatch()  # spooled, not yet confirmed to their senders
        self._confirm_at = 0.0
        # Sees each presence (status, not forwarded) and command outcome (cmdres) as it passes:
        # gateway.commands follows its devices and their answers so.
        self.observer: Callable[[Publish], None] | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None

    def attach(self, client: WireClient) -> None:
        """A new connection: earlier batches can no longer be acked."""
        self.generation += 1
        self.client = client
        if self.gathering.packet_ids:
            self.gathering.packet_ids = []
        self.gathering.generation = self.generation
        log.info(
            "local broker connected",
            extra={"event": "local_connected", "filter": subscription_filter(self._cfg.site)},
        )

    def detach(self, why: str, linger_s: float = 0.0) -> None:
        """The connection is gone (or we are stopping: `linger_s`, so the last acks count)."""
        if self.client is None:
            return
        if linger_s:
            self.confirm(0.0, force=True)  # a clean stop: spare the sensors their resends
        self.client.close(linger_s)
        self.client = None
        self.generation += 1
        self.gathering.packet_ids = []
        self.gathering.generation = self.generation
        log.warning("local broker disconnected", extra={"event": "local_disconnected", "why": why})

    def take(self, publishes: list[Publish], now: float) -> None:
        """File received messages into the batch being gathered (loop thread, per message)."""
        gathering = self.gathering
        if not len(gathering):
            gathering.first_at = now
        bulk = gathering.bulk.append
        keep = gathering.keep.append
        packet_ids = gathering.packet_ids.append
        lanes = self._lane_by_topic
        if len(lanes) > _LANE_CACHE_MAX:
            lanes.clear()
            self._ack_topic_by_topic.clear()
        skipped: list[int] = []
        received = 0
        max_bytes = self._cfg.max_message_bytes
        for msg in publishes:
            topic = msg.topic
            if len(msg.payload) > max_bytes:
                self._refuse_oversized(msg)
                if msg.packet_id:
                    skipped.append(msg.packet_id)
                continue
            try:
                lane = lanes[topic]
            except KeyError:
                lane = lanes[topic] = lane_for(topic)
            if lane is Lane.BULK:
                bulk((topic, msg.payload))
            elif lane is Lane.KEEP:
                keep((topic, msg.payload))
                if self.observer is not None and topic.endswith(_CMDRES_SUFFIX):
                    self.observer(msg)
            else:
                if self.observer is not None and topic.endswith(_STATUS_SUFFIX):
                    self.observer(msg)
                if msg.packet_id:
                    skipped.append(msg.packet_id)
                continue
            received += 1
            if msg.packet_id:
                packet_ids(msg.packet_id)
            if msg.user_properties:
                self._note_sender(gathering.confirmations, msg)
        self.received_total += received
        if skipped:
            self.skipped_total += len(skipped)
            client = self.client
            if client is not None:
                for packet_id in skipped:
                    client.ack(packet_id)

    def _note_sender(self, confirmations: ConfirmationBatch, msg: Publish) -> None:
        """Remember whom to confirm a numbered message to, once it is spooled."""
        for name, value in msg.user_properties:
            if name != MESSAGE_PROPERTY:
                continue
            numbered = parse_message_id(value)
            topic = self._ack_topic_for(msg.topic)
            if numbered is None or topic is None:
                self.unconfirmable_total += 1
                if self.unconfirmable_total == 1 or self.unconfirmable_total % 1000 == 0:
                    log.warning(
                        "message kept but cannot be confirmed to its sender",
                        extra={
                            "event": "unconfirmable",
                            "topic": msg.topic[:200],
                            "message_id": value[:80],
                            "unconfirmable_total": self.unconfirmable_total,
                        },
                    )
                return
            confirmations.add(topic, *numbered)
            return

    def _ack_topic_for(self, topic: str) -> str | None:
        """The ack topic of the device a data topic names; None if it names none."""
        try:
            return self._ack_topic_by_topic[topic]
        except KeyError:
            pass
        parts = topic.split("/")
        found: str | None = None
        if len(parts) == 5:
            try:
                found = ack_topic(parts[2], parts[3])
            except ValidationError:
                found = None
        self._ack_topic_by_topic[topic] = found
        return found

    def confirm(self, now: float, force: bool = False) -> int:
        """Send the gathered confirmations, one per device and run, once `confirm_interval_ms` has
        passed or a device has CONFIRM_EARLY_AT waiting."""
        unsent = self._unsent
        if not unsent or (now < self._confirm_at and unsent.largest < CONFIRM_EARLY_AT and not force):
            return 0
        client = self.client
        if client is None:
            return 0  # kept for the next connection: a confirmation is true on any of them
        unsent, self._unsent = self._unsent, ConfirmationBatch()
        self._confirm_at = now + self._cfg.confirm_interval_ms / 1000.0
        messages = unsent.messages()
        for topic, payload in messages:
            client.publish(topic.encode(), payload, QOS_AT_MOST_ONCE)
        self.confirmations_sent_total += len(messages)
        self.confirmed_total += unsent.count
        return len(messages)

    def _refuse_oversized(self, msg: Publish) -> None:
        # Acked with the skipped ones, so the site broker does not redeliver it; the ingester,
        # and the cloud broker's max_packet_size, would refuse it anyway.
        self.oversized_total += 1
        log_oversized(
            log,
            refused="not forwarded",
            event="oversized_refused",
            topic=msg.topic,
            size_bytes=len(msg.payload),
            limit=self._cfg.max_message_bytes,
            total=self.oversized_total,
        )

    def cut(self) -> Inbound | None:
        """Hand the gathered batch to the committer and start a new one; None when it is empty."""
        batch = self.gathering
        if not len(batch):
            return None
        self.gathering = Inbound(self.generation)
        return batch

    def add_own(self, records: Sequence[Record], after: Sequence[Callable[[], None]]) -> None:
        """Spool the gateway's own messages (never evicted) with the next batch; `after` runs once they are."""
        if not records:
            for then in after:
                then()
            return
        gathering = self.gathering
        if not len(gathering):
            gathering.first_at = 0.0  # nothing waits for more: it goes with the next commit
        gathering.keep.extend(records)
        gathering.after.extend(after)

    def ack(self, batch: Inbound) -> int:
        """A batch is spooled: its confirmations wait for `confirm`, its `after`s run; PUBACK it if
        this is still its connection."""
        if batch.confirmations:
            self._unsent.extend(batch.confirmations)
        for then in batch.after:
            then()
        client = self.client
        if client is None or batch.generation != self.generation:
            return 0
        ack = client.ack
        for packet_id in batch.packet_ids:
            ack(packet_id)
        return len(batch.packet_ids)
