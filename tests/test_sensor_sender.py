"""The sender's rules, driven step by step with paho's publish replaced: window, acks, rejects, reconnect."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config import BrokerConfig, SensorConfig
from saltmarsh.runtime.spool import Lane, Spool
from sensor import sender as sender_module
from sensor.sender import SpoolSender

READING = "saltmarsh/v1/marsh/pi-1/reading"
STATUS = "saltmarsh/v1/marsh/pi-1/status"
SUCCESS = ReasonCode(PacketTypes.PUBACK, identifier=0)
NO_SUBSCRIBERS = ReasonCode(PacketTypes.PUBACK, identifier=0x10)  # accepted, then thrown away
NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, identifier=0x87)


@dataclass
class Info:
    mid: int
    rc: MQTTErrorCode


@dataclass
class FakePaho:
    """Records what the sender hands over; `rc` is what publish answers (NO_CONN when the link dropped)."""

    rc: MQTTErrorCode = MQTTErrorCode.MQTT_ERR_SUCCESS
    sent: list[tuple[int, str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Info:
        mid = len(self.sent) + 1
        self.sent.append((mid, topic, payload))
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

    def __init__(self, tmp_path: Path, spool: Spool, monkeypatch: pytest.MonkeyPatch, window: int) -> None:
        cfg = SensorConfig(
            device="pi-1",
            site="marsh",
            broker=BrokerConfig("127.0.0.1", 1, "sensor-pi-1"),
            state_dir=tmp_path,
            status_dir=tmp_path / "status",
            publish_window=window,
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
