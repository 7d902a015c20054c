"""The sender's rules, driven step by step with paho's publish replaced: window, acks, rejects,
reconnect; then confirmations: what deletes a reading, the unconfirmed window, resends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config import BrokerConfig, SensorConfig
from saltmarsh.config.confirmations import AckMode, ConfirmationsConfig
from saltmarsh.contract.confirmation import Confirmation
from saltmarsh.runtime.spool import Lane, Spool
from sensor import sender as sender_module
from sensor.sender import SpoolSender

READING = "saltmarsh/v1/marsh/pi-1/reading"
STATUS = "saltmarsh/v1/marsh/pi-1/status"
SUCCESS = ReasonCode(PacketTypes.PUBACK, identifier=0)
NO_SUBSCRIBERS = ReasonCode(PacketTypes.PUBACK, identifier=0x10)  # accepted, then thrown away
NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, identifier=0x87)
ACK_TOPIC = "saltmarsh/v1/marsh/pi-1/ack"
# The PUBACK rules first, where the PUBACK is all there is; then the end-to-end ones.
BROKER_ACKS = ConfirmationsConfig(max_messages=1000, max_bytes=0, mode=AckMode.BROKER)


@dataclass
class Info:
    mid: int
    rc: MQTTErrorCode


@dataclass
class FakePaho:
    """Records what the sender hands over; `rc` is what publish answers (NO_CONN when the link dropped)."""

    rc: MQTTErrorCode = MQTTErrorCode.MQTT_ERR_SUCCESS
    sent: list[tuple[int, str, bytes]] = field(default_factory=list)
    numbers: dict[int, str] = field(default_factory=dict)  # mid -> the `msg` property

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties: Any = None) -> Info:
        mid = len(self.sent) + 1
        self.sent.append((mid, topic, payload))
        if properties is not None:
            self.numbers[mid] = dict(properties.UserProperty)["msg"]
        return Info(mid, self.rc)

    def data(self) -> list[tuple[int, bytes]]:
        return [(mid, payload) for mid, topic, payload in self.sent if topic == READING]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool.open(tmp_path / "spool")
    for i in range(1, 11):
        spool.append([(Lane.BULK, [(READING, f"r{i}".encode())])])
    yield spool
    spool.close()


class Harness:
    """A SpoolSender that is never started: the test plays paho's thread and the sender's thread."""

    def __init__(
        self,
        tmp_path: Path,
        spool: Spool,
        monkeypatch: pytest.MonkeyPatch,
        window: int,
        confirmations: ConfirmationsConfig = BROKER_ACKS,
    ) -> None:
        cfg = SensorConfig(
            device="pi-1",
            site="marsh",
            broker=BrokerConfig("127.0.0.1", 1, "sensor-pi-1"),
            state_dir=tmp_path,
            status_dir=tmp_path / "status",
            publish_window=window,
            confirmations=confirmations,
        )
        self.sender = SpoolSender(cfg, spool, "boot-1")
        self.paho = FakePaho()
        monkeypatch.setattr(self.sender.client, "publish", self.paho.publish)

    def connect(self) -> None:
        self.sender.on_connect(self.sender.client, None, None, SUCCESS, None)

    def disconnect(self) -> None:
        self.sender.on_disconnect(self.sender.client, None, None, SUCCESS, None)

    def ack(self, mid: int, reason: ReasonCode = SUCCESS) -> None:
        self.sender.on_publish(self.sender.client, None, mid, reason, None)

    def step(self) -> list[bytes]:
        """Run one sender step; the payloads of every reading handed over so far."""
        self.sender.step()
        return [payload for _, payload in self.paho.data()]

    def mids(self) -> list[int]:
        return [mid for mid, _ in self.paho.data()]


@pytest.fixture
def make(tmp_path: Path, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Harness]:
    return lambda window: Harness(tmp_path, spool, monkeypatch, window)


def test_nothing_is_handed_over_while_disconnected(make: Callable[[int], Harness]) -> None:
    h = make(3)
    assert h.step() == []


def test_window_bounds_in_flight_and_each_ack_frees_one_slot_in_order(
    make: Callable[[int], Harness], spool: Spool
) -> None:
    h = make(3)
    h.connect()
    assert h.paho.sent[0][1] == STATUS  # online, before any reading
    assert h.step() == [b"r1", b"r2", b"r3"]
    h.ack(h.mids()[0])
    h.ack(h.mids()[1])
    h.ack(h.paho.sent[0][0])  # the presence message's ack is not a reading's
    assert h.step() == [b"r1", b"r2", b"r3", b"r4", b"r5"]
    assert (h.sender.acked_total, h.sender.in_flight, spool.stats().depth_messages) == (2, 3, 8)


@pytest.mark.parametrize("refusal", [NOT_AUTHORIZED, NO_SUBSCRIBERS], ids=["not-authorized", "no-subscribers"])
def test_a_rejected_reading_stays_spooled_and_is_sent_again(
    make: Callable[[int], Harness], spool: Spool, monkeypatch: pytest.MonkeyPatch, refusal: ReasonCode
) -> None:
    monkeypatch.setattr(sender_module, "IDLE_WAKE_S", 0.0)  # retry at once
    h = make(2)
    h.connect()
    assert h.step() == [b"r1", b"r2"]
    first, second = h.mids()
    h.ack(first, refusal)
    h.ack(second)
    assert h.step()[2:] == [b"r1", b"r3"]  # oldest first, again
    assert (h.sender.rejected_total, h.sender.acked_total, spool.stats().depth_messages) == (1, 1, 9)


def test_after_a_reconnect_new_readings_wait_for_pahos_resends(make: Callable[[int], Harness], spool: Spool) -> None:
    h = make(3)
    h.connect()
    h.step()
    held = h.mids()
    h.disconnect()
    h.connect()
    assert len(h.step()) == 3  # paho resends r1-r3 itself; r4 must not overtake them
    h.ack(held[0])
    h.ack(held[1])
    assert len(h.step()) == 3
    h.ack(held[2])
    assert h.step()[3:] == [b"r4", b"r5", b"r6"]
    assert spool.stats().depth_messages == 7


def test_a_publish_that_finds_the_link_gone_holds_the_rest(make: Callable[[int], Harness]) -> None:
    h = make(5)
    h.connect()
    h.paho.rc = MQTTErrorCode.MQTT_ERR_NO_CONN
    assert h.step() == [b"r1"]
    h.paho.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    assert h.step() == [b"r1"]
    h.ack(h.mids()[0])
    assert h.step() == [b"r1", b"r2", b"r3", b"r4", b"r5", b"r6"]


# -- end to end: a reading leaves the spool when the forwarder confirms it ------------------


def end_to_end(max_messages: int = 1000, overtaken_s: float = 10.0) -> ConfirmationsConfig:
    return ConfirmationsConfig(max_messages=max_messages, max_bytes=0, overtaken_s=overtaken_s, silence_s=60.0)


def confirm(h: Harness, payload: bytes, topic: str = ACK_TOPIC) -> None:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    h.sender.on_message(h.sender.client, None, message)


def numbers(h: Harness, mids: list[int]) -> list[int]:
    return [int(h.paho.numbers[mid].rsplit(":", 1)[1]) for mid in mids]


@pytest.fixture
def make_e2e(tmp_path: Path, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return lambda window=10, **kw: Harness(tmp_path, spool, monkeypatch, window, end_to_end(**kw))


def test_a_puback_frees_a_slot_but_only_a_confirmation_deletes(make_e2e: Callable[..., Harness], spool: Spool) -> None:
    h = make_e2e(window=3)
    h.connect()
    h.step()
    for mid in h.mids():
        h.ack(mid)
    h.step()
    assert (h.sender.acked_total, spool.stats().depth_messages, h.sender.unconfirmed.count) == (3, 10, 6)
    run = h.sender.unconfirmed.run
    confirm(h, Confirmation(run, ((1, 2), (4, 4))).encode())
    h.step()
    assert (spool.stats().depth_messages, h.sender.unconfirmed.confirmed_total) == (7, 3)


def test_the_unconfirmed_window_stops_new_readings(make_e2e: Callable[..., Harness], spool: Spool) -> None:
    h = make_e2e(window=10, max_messages=4)
    h.connect()
    assert h.step() == [b"r1", b"r2", b"r3", b"r4"]
    for mid in h.mids():
        h.ack(mid)
    assert len(h.step()) == 4  # PUBACKed, not confirmed: nothing new
    confirm(h, Confirmation(h.sender.unconfirmed.run, ((1, 2),)).encode())
    assert h.step()[4:] == [b"r5", b"r6"]


@pytest.mark.parametrize(
    ("why", "topic", "payload"),
    [
        ("another run", ACK_TOPIC, Confirmation("other-run", ((1, 3),)).encode()),
        ("not JSON", ACK_TOPIC, b"{nope"),
        ("another device's topic", "saltmarsh/v1/marsh/pi-2/ack", None),
        ("a backwards range", ACK_TOPIC, b'{"v":1,"run":"RUN","ranges":[[3,1]]}'),
    ],
)
def test_a_confirmation_that_does_not_name_our_readings_deletes_nothing(
    make_e2e: Callable[..., Harness], spool: Spool, why: str, topic: str, payload: bytes | None
) -> None:
    h = make_e2e(window=3)
    h.connect()
    h.step()
    run = h.sender.unconfirmed.run
    body = payload.replace(b"RUN", run.encode()) if payload else Confirmation(run, ((1, 3),)).encode()
    confirm(h, body, topic)
    h.step()
    assert (spool.stats().depth_messages, h.sender.unconfirmed.count) == (10, 3), why


def test_a_reading_overtaken_by_confirmed_ones_is_resent_as_a_new_copy(
    make_e2e: Callable[..., Harness], spool: Spool
) -> None:
    h = make_e2e(window=10, max_messages=3, overtaken_s=0.5)
    h.connect()
    h.sender.step(now=100.0)  # r1-r3
    confirm(h, Confirmation(h.sender.unconfirmed.run, ((1, 1),)).encode())
    h.sender.step(now=100.6)  # r4
    confirm(h, Confirmation(h.sender.unconfirmed.run, ((3, 4),)).encode())
    h.sender.step(now=101.0)  # r4 was sent 0.6 s after r2, and is confirmed: r2 goes again, first
    sent = [payload for _, payload in h.paho.data()]
    assert sent[:4] == [b"r1", b"r2", b"r3", b"r4"]
    assert sent[4:] == [b"r2", b"r5", b"r6"]
    assert numbers(h, h.mids()) == [1, 2, 3, 4, 5, 6, 7]  # the copy of r2 has a number of its own: 5
    assert h.sender.unconfirmed.resent_total == 1
    confirm(h, Confirmation(h.sender.unconfirmed.run, ((2, 2),)).encode())  # the first copy made it after all
    h.sender.step(now=101.1)
    assert spool.stats().depth_messages == 6  # r1-r4 gone: either copy's confirmation will do


def test_a_collectors_confirmed_segments_leave_the_spool_together_once_a_release_interval(
    make_e2e: Callable[..., Harness], spool: Spool
) -> None:
    h = make_e2e(window=10, max_messages=10)
    h.sender.release_every_s = 0.25
    h.connect()
    h.sender.step(now=100.0)
    run = h.sender.unconfirmed.run
    timeline = []
    for now, confirmed in (
        (100.0, (1, 1)),
        (100.1, (2, 2)),
        (100.2, (3, 4)),
        (100.25, None),
        (100.3, (5, 5)),
        (100.6, None),
    ):
        if confirmed is not None:
            confirm(h, Confirmation(run, (confirmed,)).encode())
        h.sender.step(now=now)
        timeline.append((now, spool.stats().depth_messages))
    # The first at once; the next two wait for 100.25 and go in one delete; then 100.5 and after.
    assert timeline == [(100.0, 9), (100.1, 9), (100.2, 9), (100.25, 6), (100.3, 6), (100.6, 5)]
    # Confirmed and waiting, they were never sent again.
    assert [payload for _, payload in h.paho.data()] == [
        b"r1",
        b"r2",
        b"r3",
        b"r4",
        b"r5",
        b"r6",
        b"r7",
        b"r8",
        b"r9",
        b"r10",
    ]
    confirm(h, Confirmation(run, ((6, 6),)).encode())
    h.sender.step(now=100.7)
    h.disconnect()
    h.sender.close()  # what waits goes before the goodbye
    assert spool.stats().depth_messages == 4


def test_a_reconnect_resends_everything_unconfirmed(make_e2e: Callable[..., Harness], spool: Spool) -> None:
    h = make_e2e(window=10, max_messages=3)
    h.connect()
    h.step()
    for mid in h.mids():
        h.ack(mid)  # the broker had them; then it restarted and lost them
    h.step()
    h.disconnect()
    h.connect()
    sent = h.step()
    assert sent == [b"r1", b"r2", b"r3", b"r1", b"r2", b"r3"]
    assert spool.stats().depth_messages == 10
