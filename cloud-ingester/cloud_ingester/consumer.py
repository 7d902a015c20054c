"""The ingester's consumer stage: a shared QoS 1 subscription on a persistent session.

One `WireClient` connection, owned by the one loop thread that also validates and writes: no
network thread and no hand-off queue, and many messages per read and many acks per write.
Nothing is acked on arrival: the loop calls `ack` once a batch is durable in the sink, and only
on the connection that delivered it, so a crash at any point leaves the message with the broker,
which redelivers it to this client id when it comes back.
"""

from __future__ import annotations

import logging
import select
import time

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.contract.errors import WireError
from saltmarsh.mqtt.codec import (
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    RC_FIRST_FAILURE,
    RETAIN_AS_PUBLISHED,
    RETAIN_DO_NOT_SEND,
)
from saltmarsh.mqtt.connect import wire_client
from saltmarsh.mqtt.wire import CLOSE_LINGER_S, ConnAck, Publish, WireClient
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy

log = logging.getLogger(__name__)

MAX_RECEIVE_MAXIMUM = 65_535
CONNECT_TIMEOUT_S = 10.0
RECONNECT_BACKOFF = BackoffPolicy(base_s=0.2, cap_s=5.0)
# Retain As Published: a message its sender retained arrives flagged, for validate to refuse.
# Retain Handling 2: the broker's kept copy is never sent, so no restart ingests it again.
SUBSCRIPTION_OPTIONS = QOS_AT_LEAST_ONCE | RETAIN_AS_PUBLISHED | RETAIN_DO_NOT_SEND
CLOSE_FLUSH_S = 2.0  # how long `close` waits for the socket to take the last acks

# What ends a connection: the socket's errors (ConnectionError and TimeoutError among them), the
# broker breaking the protocol (WireError), and a value the codec cannot encode (ValueError).
_CONNECTION_ERRORS = (OSError, WireError, ValueError)


class Consumer:
    """The connection to the cloud broker: connect with backoff, subscribe, poll, ack, close.

    Not thread-safe: the loop thread calls everything; the status thread only reads
    `connected` and `subscribed`.
    """

    def __init__(self, broker: BrokerConfig, topic_filter: str, receive_maximum: int) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        # The broker sends at most this many unacked messages: with acks held until commit, it
        # is what bounds the messages this process holds, and so its memory.
        self.receive_maximum = max(1, min(receive_maximum, MAX_RECEIVE_MAXIMUM))
        self.connection = 0  # counts connections; a packet id means nothing on another one
        self.connected = False
        self.subscribed = False
        self._client: WireClient | None = None
        self._retry_at = 0.0
        self._backoff = Backoff(RECONNECT_BACKOFF)

    def retry_in(self, now: float) -> float:
        """Seconds until `connect` will try again (0 when connected or due)."""
        return 0.0 if self.connected else max(0.0, self._retry_at - now)

    def connect(self) -> ConnAck | None:
        """Connect and subscribe if the backoff allows; the CONNACK of a new connection, else None."""
        now = time.monotonic()
        if self.connected or now < self._retry_at:
            return None
        # clean_start=False with a fixed client id: the broker keeps the subscription and the
        # unacked messages across our restarts, and queues for us while we are away.
        client = wire_client(self.broker, clean_start=False, receive_maximum=self.receive_maximum)
        try:
            connack = client.connect(CONNECT_TIMEOUT_S)
            # Subscribing again on a resumed session is harmless and covers a session the broker lost.
            granted = client.subscribe([(self.topic_filter, SUBSCRIPTION_OPTIONS)], CONNECT_TIMEOUT_S)
            if any(code >= RC_FIRST_FAILURE for code in granted):
                raise ConnectionRefusedError(f"subscription to {self.topic_filter} refused: {granted}")
        except _CONNECTION_ERRORS as err:
            client.close()
            self._lost(f"{type(err).__name__}: {err}", now)
            return None
        self._client = client
        self.connection += 1
        self.connected = self.subscribed = True
        self._backoff.reset()
        log.info(
            "connected",
            extra={"event": "connected", "session_present": connack.session_present, "filter": self.topic_filter},
        )
        return connack

    def poll(self, timeout_s: float) -> list[Publish]:
        """The PUBLISHes that arrive within `timeout_s`; [] (having waited) when not connected."""
        client = self._client
        if client is None:
            time.sleep(max(0.0, min(timeout_s, self.retry_in(time.monotonic()))))
            return []
        try:
            publishes, _ = client.poll(timeout_s)
        except _CONNECTION_ERRORS as err:
            self._lost(f"{type(err).__name__}: {err}", time.monotonic())
            return []
        return publishes

    def ack(self, packet_ids: list[int], connection: int) -> bool:
        """PUBACK these messages if `connection` is still the current one; False if it is gone.

        A message from a connection that is gone has been redelivered on the new one (or the
        broker lost it with the session); that copy is acked when its own batch commits.
        """
        client = self._client
        if client is None or connection != self.connection:
            return False
        for packet_id in packet_ids:
            if packet_id:  # QoS 0 has nothing to ack
                client.ack(packet_id)
        try:
            client.flush()  # what the socket does not take now goes out with the next poll
        except _CONNECTION_ERRORS as err:
            self._lost(f"{type(err).__name__}: {err}", time.monotonic())
            return False
        return True

    def confirm(self, messages: list[tuple[str, bytes]]) -> bool:
        """Publish confirmations at QoS 0 (saltmarsh.contract.confirmation); False when not connected.

        A confirmation that cannot go now is not kept: the forwarder resends what it hears
        nothing about, and the sink counts the copy as a duplicate.
        """
        client = self._client
        if client is None:
            return False
        for topic, payload in messages:
            client.publish(topic.encode(), payload, QOS_AT_MOST_ONCE)
        return True

    def close(self) -> None:
        """Disconnect once the queued PUBACKs are on the wire; the session stays on the broker."""
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + CLOSE_FLUSH_S
        try:
            while client.pending_out_bytes and time.monotonic() < deadline:
                select.select([], [client.fileno()], [], max(0.0, deadline - time.monotonic()))
                client.flush()
        except _CONNECTION_ERRORS:
            pass  # unacked messages are redelivered after the restart
        client.close(linger_s=CLOSE_LINGER_S)
        self._client = None
        self.connected = self.subscribed = False

    def _lost(self, why: str, now: float) -> None:
        was_connected = self.connected
        if self._client is not None:
            self._client.close()
            self._client = None
        self.connected = self.subscribed = False
        delay_s = self._backoff.next_delay()
        self._retry_at = now + delay_s
        message, event = ("disconnected", "disconnected") if was_connected else ("connect failed", "connect_failed")
        log.warning(message, extra={"event": event, "reason": why[:300], "retry_in_s": round(delay_s, 3)})
