"""The forwarder's sender on the confirmation path, with a fake uplink and a real spool, time driven by hand.

What deletes a segment (the ingester's confirmation end to end, the PUBACK in broker mode), what
a confirmation that is not ours does, the unconfirmed window, and the resends after a reconnect.
The published bytes are decoded to read each message's `gw` and `msg` user properties.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.sender import RETRY_AFTER_S, Sender, uplink_ack_topic
from saltmarsh.config.gateway import GatewayConfig, gateway_config
from saltmarsh.config.table import Table
from saltmarsh.contract.confirmation import Confirmation, parse_message_id
from saltmarsh.contract.envelope import MAX_SEQ
from saltmarsh.mqtt.codec import Publish, encode_publish, parse_stream
from saltmarsh.mqtt.wire import ConnAck, WireClient
from saltmarsh.runtime.spool import Lane, Record, Segment, Spool

NOW = 1000.0
GATEWAY = "gw-1"
SITE = "marsh-1"
ACK_TOPIC = f"saltmarsh/v1/{SITE}/{GATEWAY}/ack"


class FakeUplink:
    """Stands in for the uplink WireClient: encodes what is published, as the real one would send it."""

    def __init__(self) -> None:
        self.wire = bytearray()
        self.acked: list[int] = []
        self.closed = False
        self._packet_id = 0

    def publish(self, topic: bytes, payload: bytes, qos: int = 1, props: bytes = b"\x00") -> int:
        self._packet_id = self._packet_id % 65535 + 1
        self.wire += encode_publish(topic, payload, qos, self._packet_id, props=props)
        return self._packet_id

    def ack(self, packet_id: int) -> None:
        self.acked.append(packet_id)

    def close(self, linger_s: float = 0.0) -> None:
        self.closed = True

    def take(self) -> list[Publish]:
        """What was published since the last call, as the cloud broker would read it."""
        publishes, pubacks, others, consumed = parse_stream(bytes(self.wire))
        assert (pubacks, others, consumed) == ([], [], len(self.wire))
        self.wire.clear()
        return publishes


def msg_of(publish: Publish) -> tuple[str, int]:
    props = dict(publish.user_properties)
    parsed = parse_message_id(props["msg"])
    assert parsed is not None, props
    return parsed


def make_config(tmp_path: Path, site: str = SITE, confirmations: dict[str, Any] | None = None) -> GatewayConfig:
    return gateway_config(
        Table(
            {
                "gateway_id": GATEWAY,
                "site": site,
                "state_dir": str(tmp_path / "state"),
                "status_dir": str(tmp_path / "status"),
                "local": {},
                "uplink": {},
                "confirmations": confirmations or {},
            },
            "test",
        )
    )


class Harness:
    """A sender attached to a fake uplink, fed segments through a real spool."""

    def __init__(self, cfg: GatewayConfig, spool: Spool, receive_maximum: int = 65535) -> None:
        self.spool = spool
        self.sender = Sender(cfg, spool, clock=lambda: NOW)
        self.uplink = FakeUplink()
        self.published: list[Publish] = []  # everything, in order
        self._segments = 0
        self.reconnect(receive_maximum)

    def reconnect(self, receive_maximum: int = 65535) -> FakeUplink:
        """Attach a new uplink (detach the old one first); returns the old one."""
        old, self.uplink = self.uplink, FakeUplink()
        self.sender.attach(cast(WireClient, self.uplink), ConnAck(False, 0, receive_maximum))
        return old

    @property
    def run(self) -> str:
        return self.sender.unconfirmed.run

    def spool_segments(self, *sizes: int, payload_bytes: int = 8) -> list[Segment]:
        """Commit one segment per size and offer them, as the committer does with live traffic."""
        offered: list[tuple[Segment, list[Record]]] = []
        for size in sizes:
            self._segments += 1
            records = [
                (
                    f"saltmarsh/v1/{SITE}/probe-{self._segments}/reading",
                    f"{self._segments}.{i}".encode().ljust(payload_bytes),
                )
                for i in range(size)
            ]
            (seg,) = self.spool.append([(Lane.BULK, records)])
            offered.append((seg, records))
        self.sender.offer(offered)
        return [seg for seg, _ in offered]

    def pump(self, now: float = NOW) -> list[Publish]:
        self.sender.pump(now)
        out = self.uplink.take()
        self.published += out
        return out

    def puback_all(self, publishes: list[Publish], reason: int = 0, now: float = NOW) -> None:
        self.sender.settle([(p.packet_id, reason) for p in publishes], now)

    def confirm(self, *ranges: tuple[int, int], topic: str = ACK_TOPIC, now: float = NOW) -> None:
        body = Confirmation(self.run, ranges).encode()
        self.sender.confirm([Publish(topic, body, 0, 0, False, False, ())], now)

    def delivered(self) -> list[int]:
        return [seg.segno for seg in self.sender.take_delivered()]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool.open(tmp_path / "spool")
    yield spool
    spool.close()


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make_harness(tmp_path: Path, spool: Spool) -> HarnessFactory:
    def make(confirmations: dict[str, Any] | None = None, site: str = SITE, receive_maximum: int = 65535) -> Harness:
        return Harness(make_config(tmp_path, site, confirmations), spool, receive_maximum)

    return make


@pytest.fixture
def e2e(make_harness: HarnessFactory) -> Harness:
    return make_harness()


# -- what delivers a segment -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "delivered", "properties"),
    [("end-to-end", False, ["gw", "msg"]), ("broker", True, ["gw"])],
    ids=["end-to-end: only a confirmation", "broker: the PUBACK"],
)
def test_what_a_puback_delivers(
    make_harness: HarnessFactory, mode: str, delivered: bool, properties: list[str]
) -> None:
    h = make_harness({"mode": mode})
    (seg,) = h.spool_segments(3)
    sent = h.pump()
    assert len(sent) == 3
    assert [[name for name, _ in p.user_properties] for p in sent] == [properties] * 3
    assert all(dict(p.user_properties)["gw"] == GATEWAY for p in sent)
    assert h.sender.inflight == 3
    h.puback_all(sent)
    assert (h.sender.inflight, h.sender.forwarded_total) == (0, 3)
    assert h.delivered() == ([seg.segno] if delivered else [])
    assert h.sender.unconfirmed.count == (0 if delivered else 3)
    if not delivered:
        h.confirm((1, 3))
        assert (h.delivered(), h.sender.unconfirmed.count) == ([seg.segno], 0)


def test_messages_are_numbered_in_order_within_the_run(e2e: Harness) -> None:
    e2e.spool_segments(2, 3)
    sent = e2e.pump()
    assert [msg_of(p) for p in sent] == [(e2e.run, n) for n in range(1, 6)]
    assert [p.topic for p in sent] == [f"saltmarsh/v1/{SITE}/probe-{s}/reading" for s in (1, 1, 2, 2, 2)]
    assert all((p.qos, p.retain, p.dup) == (1, False, False) for p in sent)


# Three segments of two messages: numbers 1-2, 3-4 and 5-6.
DELIVERIES: list[tuple[str, tuple[tuple[int, int], ...], list[int], int]] = [
    ("all", ((1, 6),), [0, 1, 2], 0),
    ("the first segment", ((1, 2),), [0], 4),
    ("half of each", ((1, 1), (3, 3), (5, 5)), [], 3),
    ("straddling two", ((2, 5),), [1], 2),
    ("first and last", ((1, 2), (5, 6)), [0, 2], 2),
    ("numbers never used", ((7, MAX_SEQ),), [], 6),
    ("the whole number space", ((1, MAX_SEQ),), [0, 1, 2], 0),
]


@pytest.mark.parametrize(
    ("ranges", "delivered", "unconfirmed"), [c[1:] for c in DELIVERIES], ids=[c[0] for c in DELIVERIES]
)
@pytest.mark.parametrize("pubacked", [True, False], ids=["after the PUBACKs", "before the PUBACKs"])
def test_a_confirmation_delivers_exactly_the_segments_it_completes(
    e2e: Harness, ranges: tuple[tuple[int, int], ...], delivered: list[int], unconfirmed: int, pubacked: bool
) -> None:
    segs = e2e.spool_segments(2, 2, 2)
    sent = e2e.pump()
    assert len(sent) == 6
    if pubacked:
        e2e.puback_all(sent)
    e2e.confirm(*ranges)
    assert e2e.delivered() == [segs[i].segno for i in delivered]
    assert e2e.delivered() == [], "each segment is handed over once"
    assert (e2e.sender.unconfirmed.count, e2e.sender.unconfirmed.bad_total) == (unconfirmed, 0)
    e2e.confirm(*ranges)  # the same confirmation again, as a second ingester might send for a copy
    assert e2e.delivered() == []
    assert e2e.sender.unconfirmed.count == unconfirmed


def test_segments_complete_one_confirmation_at_a_time(e2e: Harness) -> None:
    segs = e2e.spool_segments(2, 2)
    e2e.pump()
    e2e.confirm((1, 1), (3, 3))
    assert e2e.delivered() == []
    e2e.confirm((4, 4))
    assert e2e.delivered() == [segs[1].segno]
    e2e.confirm((2, 2))
    assert e2e.delivered() == [segs[0].segno]
    assert e2e.spool.stats().depth_messages == 4, "deleting is the committer's, with its next transaction"


# -- confirmations that are not ours -----------------------------------------------------------

NOT_OURS: list[tuple[str, str, bytes, int, int]] = [
    # topic, payload (RUN stands for the sender's run), bad, foreign
    ("another gateway's", f"saltmarsh/v1/{SITE}/gw-2/ack", b'{"v":1,"run":"RUN","ranges":[[1,4]]}', 1, 0),
    ("another site's", f"saltmarsh/v1/marsh-2/{GATEWAY}/ack", b'{"v":1,"run":"RUN","ranges":[[1,4]]}', 1, 0),
    ("a data topic", f"saltmarsh/v1/{SITE}/{GATEWAY}/reading", b'{"v":1,"run":"RUN","ranges":[[1,4]]}', 1, 0),
    ("below the ack topic", f"{ACK_TOPIC}/x", b'{"v":1,"run":"RUN","ranges":[[1,4]]}', 1, 0),
    ("another run", ACK_TOPIC, b'{"v":1,"run":"earlier-run","ranges":[[1,4]]}', 0, 1),
    ("not json", ACK_TOPIC, b"1-4", 1, 0),
    ("overlapping ranges", ACK_TOPIC, b'{"v":1,"run":"RUN","ranges":[[1,3],[2,4]]}', 1, 0),
    ("version 2", ACK_TOPIC, b'{"v":2,"run":"RUN","ranges":[[1,4]]}', 1, 0),
]


@pytest.mark.parametrize(("topic", "body", "bad", "foreign"), [c[1:] for c in NOT_OURS], ids=[c[0] for c in NOT_OURS])
def test_a_confirmation_that_is_not_ours_is_counted_and_delivers_nothing(
    e2e: Harness, topic: str, body: bytes, bad: int, foreign: int
) -> None:
    e2e.spool_segments(4)
    e2e.puback_all(e2e.pump())
    payload = body.replace(b"RUN", e2e.run.encode())
    e2e.sender.confirm([Publish(topic, payload, 1, 77, False, False, ())], NOW)
    assert e2e.delivered() == []
    unconfirmed = e2e.sender.unconfirmed
    assert (e2e.sender.unconfirmed.bad_total, unconfirmed.foreign_total) == (bad, foreign)
    assert (unconfirmed.count, unconfirmed.confirmed_total) == (4, 0)
    assert e2e.uplink.acked == [77], "a QoS 1 confirmation is PUBACKed, ours or not"
    e2e.confirm((1, 4))
    assert len(e2e.delivered()) == 1, "and the sender still takes its own"


def test_a_gateway_for_every_site_takes_confirmations_on_each(tmp_path: Path, make_harness: HarnessFactory) -> None:
    h = make_harness(site="+")
    assert uplink_ack_topic(make_config(tmp_path, site="+")) == f"saltmarsh/v1/+/{GATEWAY}/ack"
    h.spool_segments(1, 1)
    h.pump()
    h.confirm((1, 1), topic=f"saltmarsh/v1/marsh-9/{GATEWAY}/ack")
    h.confirm((2, 2), topic=f"saltmarsh/v1/other/{GATEWAY}/ack")
    h.confirm((2, 2), topic="saltmarsh/v1/other/gw-2/ack")
    assert len(h.delivered()) == 2
    assert h.sender.unconfirmed.bad_total == 1


def test_a_deeply_nested_confirmation_is_counted_as_bad(e2e: Harness) -> None:
    e2e.spool_segments(1)
    e2e.pump()
    e2e.sender.confirm([Publish(ACK_TOPIC, b"[" * 100_000, 0, 0, False, False, ())], NOW)
    assert (e2e.sender.unconfirmed.bad_total, e2e.sender.unconfirmed.count) == (1, 1)


# -- the unconfirmed window --------------------------------------------------------------------

WINDOWS: list[tuple[str, dict[str, int], int]] = [
    # [confirmations], and how many one-message segments go before the window is full
    ("max_messages", {"max_messages": 3, "max_bytes": 0}, 3),
    ("max_bytes", {"max_messages": 100, "max_bytes": 25}, 3),  # 10-byte messages: full at 30
    ("both, messages first", {"max_messages": 2, "max_bytes": 25}, 2),
    ("one message", {"max_messages": 1, "max_bytes": 0}, 1),
]


@pytest.mark.parametrize(("window", "first"), [c[1:] for c in WINDOWS], ids=[c[0] for c in WINDOWS])
def test_the_unconfirmed_window_stops_new_messages_until_confirmations_open_it(
    make_harness: HarnessFactory, window: dict[str, int], first: int
) -> None:
    h = make_harness(window)
    segs = h.spool_segments(*[1] * 8, payload_bytes=10)
    sent = h.pump()
    assert [msg_of(p)[1] for p in sent] == list(range(1, first + 1))
    assert (h.sender.window_full, h.sender.can_send) == (True, False)
    h.puback_all(sent)
    assert h.pump(NOW + 1) == [], "PUBACKed is not confirmed"
    assert (h.sender.inflight, h.sender.window_full_total) == (0, 1), "counted when a pump finds it full"
    h.confirm((1, 1), now=NOW + 2)
    assert h.delivered() == [segs[0].segno]
    reopened = h.pump(NOW + 2)
    assert [msg_of(p)[1] for p in reopened] == [first + 1], "one confirmed, one more goes"
    assert h.pump(NOW + 2.5) == []
    assert h.sender.window_full_total == 2, "full again"
    h.confirm((2, first + 1), now=NOW + 3)
    assert [msg_of(p)[1] for p in h.pump(NOW + 3)] == list(range(first + 2, min(8, 2 * first + 1) + 1))
    assert sorted(msg_of(p)[1] for p in h.published) == list(range(1, len(h.published) + 1)), "no copies"


@pytest.mark.parametrize(
    ("window", "sizes", "first", "after"),
    [
        ({"max_messages": 4}, [10], 4, [5, 6]),
        ({"max_messages": 4}, [3, 3], 4, [5, 6]),
        # Bytes are checked per batch, messages exactly: 50 bytes went, and 30 are still out.
        ({"max_messages": 5, "max_bytes": 25}, [10], 5, []),
    ],
    ids=["one large segment", "across segments", "bytes per batch"],
)
def test_the_window_is_exact_in_messages_whatever_the_segments(
    make_harness: HarnessFactory, window: dict[str, int], sizes: list[int], first: int, after: list[int]
) -> None:
    h = make_harness(window)
    h.spool_segments(*sizes, payload_bytes=10)
    assert len(h.pump()) == first
    assert (h.sender.unconfirmed.count, h.sender.window_full) == (first, True)
    h.confirm((1, 2))
    assert [msg_of(p)[1] for p in h.pump()] == after


# -- reconnecting ------------------------------------------------------------------------------


@pytest.mark.parametrize("confirmed", ["the first copies", "the copies"])
def test_after_a_reconnect_every_unconfirmed_message_goes_again(e2e: Harness, confirmed: str) -> None:
    segs = e2e.spool_segments(2, 2)
    before = e2e.pump()
    e2e.puback_all(before)
    e2e.confirm((1, 1))
    e2e.sender.detach("test: uplink lost")
    assert not e2e.sender.connected
    assert e2e.pump(NOW + 1) == [], "nothing goes while the uplink is down"
    assert e2e.reconnect().closed
    again = e2e.pump(NOW + 2)
    # The same messages, each as a new copy of this run: a confirmation of either copy releases it.
    assert [(p.topic, p.payload) for p in again] == [(p.topic, p.payload) for p in before[1:]]
    assert [msg_of(p) for p in again] == [(e2e.run, n) for n in (5, 6, 7)]
    assert e2e.sender.unconfirmed.resent_total == 3
    assert e2e.pump(NOW + 2.5) == [], "each once"
    assert e2e.delivered() == []
    if confirmed == "the first copies":
        e2e.confirm((2, 4), now=NOW + 3)
    else:
        e2e.confirm((5, 7), now=NOW + 3)
    assert e2e.delivered() == [segs[0].segno, segs[1].segno]
    assert (e2e.sender.unconfirmed.count, e2e.sender.unconfirmed.confirmed_total) == (0, 4)


def test_a_reconnect_resends_first_then_finishes_a_half_published_segment(make_harness: HarnessFactory) -> None:
    h = make_harness(receive_maximum=2)
    (seg,) = h.spool_segments(5)
    assert [msg_of(p)[1] for p in h.pump()] == [1, 2], "the broker's receive maximum: two in flight"
    assert h.pump() == []
    h.sender.detach("test")
    h.reconnect(receive_maximum=2)
    order = []
    for step in range(4):
        sent = h.pump(NOW + step)
        order.append([msg_of(p)[1] for p in sent])
        h.puback_all(sent, now=NOW + step)
    assert order == [[6, 7], [3, 4], [5], []], "copies of 1 and 2 first, then the rest of the segment"
    h.confirm((1, 1), (3, 5), (7, 7), now=NOW + 5)
    assert h.delivered() == [seg.segno]


@pytest.mark.parametrize(
    ("reason", "again"),
    [(0x00, []), (0x10, [4]), (0x87, [4])],
    ids=["success: nothing", "no matching subscribers: kept", "not authorized: kept"],
)
def test_a_refused_puback_sends_the_message_again_as_a_new_copy(e2e: Harness, reason: int, again: list[int]) -> None:
    (seg,) = e2e.spool_segments(3)
    sent = e2e.pump()
    e2e.puback_all(sent[1:2], reason=reason)
    e2e.puback_all(sent[::2])
    assert e2e.pump(NOW + RETRY_AFTER_S / 2) == []
    assert [msg_of(p)[1] for p in e2e.pump(NOW + RETRY_AFTER_S)] == again
    assert e2e.sender.refused_total == len(again)
    assert e2e.sender.inflight == len(again)
    e2e.confirm((1, 3), now=NOW + 2)
    assert e2e.delivered() == [seg.segno], "the first copy's confirmation does, whatever its PUBACK said"
