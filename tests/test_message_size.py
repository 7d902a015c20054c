"""One message size for the fleet: the sensor agent and the forwarder refuse and count larger ones."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.source import LocalSource
from saltmarsh.config import BrokerConfig, DriverConfig, SensorConfig
from saltmarsh.config.gateway import gateway_config
from saltmarsh.config.sensor import sensor_config
from saltmarsh.config.table import Table
from saltmarsh.contract.errors import ConfigError
from saltmarsh.mqtt.codec import Publish
from saltmarsh.runtime.spool import Spool
from sensor.agent import Agent
from sensor.drivers import Driver, Sample


class Fixed(Driver):
    def __init__(self, sample: Sample) -> None:
        super().__init__()
        self.sample = sample

    def read(self, now_s: float) -> Sample | None:
        return self.sample


def _sensor_cfg(tmp_path: Path, max_message_bytes: int) -> SensorConfig:
    return SensorConfig(
        device="pi-7",
        site="marsh",
        broker=BrokerConfig("127.0.0.1", 1, "sensor-pi-7"),
        state_dir=tmp_path / "state",
        status_dir=tmp_path / "status",
        driver=DriverConfig(),
        max_message_bytes=max_message_bytes,
    )


def test_the_agent_refuses_and_counts_a_reading_over_the_limit(tmp_path: Path, caplog: Any) -> None:
    cfg = _sensor_cfg(tmp_path, 200)
    spool = Spool(cfg.spool_dir)
    small = Sample({"temperature": 21.5})
    big = Sample({f"metric_{i}": float(i) for i in range(20)})
    driver = Fixed(small)
    agent = Agent(cfg, driver, spool, "b1")
    try:
        assert agent.tick(1_700_000_000.0) is not None
        driver.sample = big
        with caplog.at_level(logging.WARNING):
            assert agent.tick(1_700_000_001.0) is None
        assert (agent.oversized_total, agent.last_seq) == (1, 1), "refused before it got a seq: no gap"
        (message,) = [r.getMessage() for r in caplog.records if r.name == "sensor.agent"]
        assert message.startswith("reading refused: ") and "bytes on saltmarsh/v1/marsh/pi-7/reading" in message
        assert message.endswith("over max_message_bytes 200")
        driver.sample = small
        assert agent.tick(1_700_000_002.0) is not None and agent.last_seq == 2
        assert spool.stats().depth_messages == 2
    finally:
        spool.close()


def test_the_agent_refuses_and_counts_a_reading_the_contract_refuses(tmp_path: Path) -> None:
    cfg = _sensor_cfg(tmp_path, 16_384)
    spool = Spool(cfg.spool_dir)
    agent = Agent(cfg, Fixed(Sample({"temperature": float("nan")})), spool, "b1")
    try:
        assert agent.tick(1_700_000_000.0) is None
        assert (agent.invalid_total, agent.last_seq, spool.stats().depth_messages) == (1, 0, 0)
    finally:
        spool.close()


class AckRecorder:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, packet_id: int) -> None:
        self.acked.append(packet_id)


def test_the_forwarder_acks_counts_and_logs_a_message_over_its_limit(tmp_path: Path, caplog: Any) -> None:
    doc = {"gateway_id": "g", "state_dir": str(tmp_path), "status_dir": str(tmp_path), "local": {}, "uplink": {}}
    cfg = gateway_config(Table({**doc, "max_message_bytes": 100}, "test"))
    source = LocalSource(cfg)
    client = AckRecorder()
    source.client = client  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING):
        source.take(
            [
                Publish("s/d/reading", b"x" * 100, 1, 11, False, False, ()),
                Publish("s/d/reading", b"x" * 101, 1, 12, False, False, ()),
                Publish("s/d/alert", b"y" * 5000, 1, 13, False, False, ()),
                Publish("s/d/reading", b"z" * 101, 0, 0, False, False, ()),
            ],
            now=1.0,
        )
    batch = source.cut()
    assert batch is not None
    assert batch.bulk == [("s/d/reading", b"x" * 100)] and batch.keep == []
    assert batch.packet_ids == [11]
    assert client.acked == [12, 13], "acked at once, so the site broker does not send them again"
    assert (source.received_total, source.oversized_total) == (1, 3)
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.source"] == [
        "not forwarded: 101 bytes on s/d/reading is over max_message_bytes 100",
        "not forwarded: 5000 bytes on s/d/alert is over max_message_bytes 100",
        "not forwarded: 101 bytes on s/d/reading is over max_message_bytes 100",
    ]


# config key -> the error's dotted key, for both services that refuse at the edge
BAD_LIMITS: list[tuple[str, Any]] = [("too small", 63), ("too large", 10_000_001), ("text", "16k"), ("bool", True)]


@pytest.mark.parametrize("value", [v for _, v in BAD_LIMITS], ids=[n for n, _ in BAD_LIMITS])
def test_max_message_bytes_is_checked(tmp_path: Path, value: Any) -> None:
    common = {"state_dir": str(tmp_path), "status_dir": str(tmp_path), "max_message_bytes": value}
    with pytest.raises(ConfigError, match="'max_message_bytes'"):
        gateway_config(Table({**common, "gateway_id": "g", "local": {}, "uplink": {}}))
    with pytest.raises(ConfigError, match="'max_message_bytes'"):
        sensor_config(Table({**common, "device": "d", "site": "s"}))


def test_max_message_bytes_defaults_to_the_ingesters_payload_limit(tmp_path: Path) -> None:
    common = {"state_dir": str(tmp_path), "status_dir": str(tmp_path)}
    gateway = gateway_config(Table({**common, "gateway_id": "g", "local": {}, "uplink": {}}))
    sensor = sensor_config(Table({**common, "device": "d", "site": "s"}))
    assert gateway.max_message_bytes == sensor.max_message_bytes == 16_384
    assert dataclasses.replace(sensor, max_message_bytes=64).max_message_bytes == 64


def test_mosquitto_with_max_packet_size_refuses_an_oversized_publish(broker_factory: Any) -> None:
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    broker = broker_factory("small", max_packet_size=2048)
    acked: dict[int, int] = {}
    disconnected = threading.Event()
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="big", protocol=mqtt.MQTTv5)
    client.on_connect = lambda *_: connected.set()
    client.on_publish = lambda _c, _u, mid, reason, _p: acked.__setitem__(mid, reason.value)
    client.on_disconnect = lambda *_: disconnected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert connected.wait(10)
        small = client.publish("saltmarsh/v1/s/d/reading", b"x" * 1000, qos=1)
        small.wait_for_publish(10)
        assert acked.get(small.mid, 0x80) < 0x80  # success, or "no matching subscribers"
        big = client.publish("saltmarsh/v1/s/d/reading", b"x" * 4000, qos=1)
        # Either paho refuses to send it (the broker announced its limit in CONNACK) or the broker
        # drops the connection: the message is never acknowledged as taken.
        assert big.rc != mqtt.MQTT_ERR_SUCCESS or disconnected.wait(10)
        assert acked.get(big.mid, 0x80) >= 0x80
    finally:
        client.loop_stop()
        client.disconnect()
