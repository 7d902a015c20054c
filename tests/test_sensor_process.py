"""The real `python -m sensor` process against real Mosquitto: delivery, outage, restart, presence, bad config.

The subscriber here is a plain MQTT client, not a forwarder, so nobody confirms: the agent runs
with `confirmations.mode = "broker"`, where the PUBACK deletes. Its end-to-end behaviour, with a
real forwarder confirming, is in tests/test_confirmations.py and tests/test_sensor_sender.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from saltmarsh.contract.envelope import Envelope, parse
from saltmarsh.contract.topics import ID_PATTERN
from saltmarsh.ops.localfleet import configs
from saltmarsh.ops.localfleet.mosquitto import BrokerSpec, Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess, free_port, wait_until
from saltmarsh.runtime.status import find_status
from tests.conftest import BrokerFactory
from tests.support import Collector

READINGS = "saltmarsh/v1/marsh/pi-1/reading"
STATUS = "saltmarsh/v1/marsh/pi-1/status"


def write_config(tmp_path: Path, port: int, **overrides: Any) -> Path:
    settings: dict[str, Any] = {
        "interval_s": 0.01,
        "max_readings": 100,
        "publish_window": 20,
        "model": "DHT22",
        "driver": {"type": "simulated", "seed": 3},
        "confirmations": {"mode": "broker"},
        **overrides,
    }
    doc = configs.sensor_config(
        device=settings.pop("device", "pi-1"),
        site="marsh",
        broker=configs.broker_table(port, keepalive_s=5),
        state_dir=tmp_path / "state",
        status_dir=tmp_path / "status",
        **settings,
    )
    return configs.write_config(tmp_path / f"sensor-{time.monotonic_ns()}.toml", doc)


@pytest.fixture
def sensors(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop(timeout_s=5)


def start_sensor(sensors: list[ServiceProcess], config: Path) -> ServiceProcess:
    proc = ServiceProcess.service("sensor", "sensor", config, config.with_suffix(".log"))
    sensors.append(proc.start())
    return proc


def envelopes(messages: list[mqtt.MQTTMessage]) -> list[Envelope]:
    now_ms = int(time.time() * 1000)
    return [parse(m.topic, bytes(m.payload), now_ms) for m in messages]


def counters(tmp_path: Path, written_after_ms: int = 0) -> dict[str, Any]:
    status = find_status(tmp_path / "status", "sensor", "pi-1")
    assert status is not None, "no status file yet"
    assert status.updated_ms > written_after_ms, "status file not rewritten yet"
    return dict(status.counters)


def test_every_reading_arrives_once_in_order(tmp_path: Path, broker_factory: BrokerFactory) -> None:
    gateway = broker_factory("gateway")
    collector = Collector(gateway.port, READINGS)
    sensor = start_sensor([], write_config(tmp_path, gateway.port, max_readings=300))
    try:
        assert sensor.wait(20) == 0, sensor.log_tail()
        assert collector.wait_for(lambda msgs: len(msgs) >= 300, 5)
        time.sleep(0.2)  # anything extra would be a duplicate
        got = envelopes(collector.messages)
    finally:
        collector.close()
        sensor.stop()

    assert [e.seq for e in got] == list(range(1, 301))
    boots = {e.boot for e in got}
    assert len(boots) == 1 and ID_PATTERN.match(boots.pop())
    final = counters(tmp_path)
    assert final["boot"] == got[0].boot
    assert (final["last_seq"], final["readings_total"], final["acked_total"]) == (300, 300, 300)
    assert (final["spool_depth"], final["oldest_unsent_age_s"], final["read_failures"]) == (0, 0.0, 0)
    assert final["connected"] is False  # the last write is after the goodbye


def test_broker_outage_mid_run_backfills_in_order(
    tmp_path: Path, broker_factory: BrokerFactory, sensors: list[ServiceProcess]
) -> None:
    gateway = broker_factory("gateway")
    # A persistent session, so the collector misses nothing published before it reconnects.
    collector = Collector(gateway.port, READINGS, client_id="outage-collector", clean_start=False)
    sensor = start_sensor(sensors, write_config(tmp_path, gateway.port, max_readings=400))
    restarted: Mosquitto | None = None
    try:
        assert collector.wait_for(lambda msgs: len(msgs) >= 50, 10)
        gateway.stop()
        stopped_ms = int(time.time() * 1000)
        time.sleep(1.2)  # the status file is rewritten every second
        during_outage = counters(tmp_path, written_after_ms=stopped_ms)
        restarted = Mosquitto(gateway.spec, gateway.log_dir).start()
        assert sensor.wait(30) == 0, sensor.log_tail()
        assert collector.wait_for(lambda msgs: {e.seq for e in envelopes(msgs)} >= set(range(1, 401)), 15)
        got = envelopes(collector.messages)
    finally:
        collector.close()
        if restarted is not None:
            restarted.stop()

    assert during_outage["connected"] is False
    assert during_outage["spool_depth"] > 0  # readings waited on disk, not in memory
    seqs = [e.seq for e in got]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(1, 401))  # in order, nothing missing
    # At-least-once: only what was in flight when the broker went away may come twice.
    assert len(seqs) - len(first_seen) <= 20
    final = counters(tmp_path)
    assert final["connects"] >= 2
    assert (final["last_seq"], final["spool_depth"]) == (400, 0)


def test_restart_sends_the_earlier_boots_backlog_first(tmp_path: Path, sensors: list[ServiceProcess]) -> None:
    port = free_port()  # nothing listens yet: the gateway is down
    first = start_sensor(sensors, write_config(tmp_path, port, max_readings=20))
    assert wait_until(lambda: tmp_path.joinpath("status").is_dir() and counters(tmp_path)["last_seq"] == 20, 10)
    assert first.stop() == 0, first.log_tail()
    offline = counters(tmp_path)
    assert (offline["last_seq"], offline["spool_depth"], offline["acked_total"]) == (20, 20, 0)

    gateway = Mosquitto(BrokerSpec("gateway", port, tmp_path / "gateway"), tmp_path / "logs").start()
    collector = Collector(port, READINGS)
    try:
        second = start_sensor(sensors, write_config(tmp_path, port, max_readings=5))
        assert second.wait(20) == 0, second.log_tail()
        assert collector.wait_for(lambda msgs: len(msgs) >= 25, 5)
        time.sleep(0.2)
        got = envelopes(collector.messages)
    finally:
        collector.close()
        gateway.stop()

    earlier, later = got[:20], got[20:]
    assert [(e.boot, e.seq) for e in earlier] == [(offline["boot"], s) for s in range(1, 21)]
    assert len(later) == 5 and all(e.boot != offline["boot"] for e in later)
    assert [e.seq for e in later] == [1, 2, 3, 4, 5]
    assert counters(tmp_path)["boot"] == later[0].boot


def presence_of(messages: list[mqtt.MQTTMessage]) -> list[tuple[str, str, bool]]:
    return [(json.loads(m.payload)["state"], json.loads(m.payload)["boot"], bool(m.retain)) for m in messages]


def retained_presence(port: int) -> tuple[str, str, bool]:
    late = Collector(port, STATUS, client_id=f"late-{time.monotonic_ns()}")
    try:
        assert late.wait_for(lambda msgs: len(msgs) >= 1, 5)
        return presence_of(late.messages)[0]
    finally:
        late.close()


def test_presence_online_then_last_will_or_goodbye(
    tmp_path: Path, broker_factory: BrokerFactory, sensors: list[ServiceProcess]
) -> None:
    gateway = broker_factory("gateway")
    watcher = Collector(gateway.port, STATUS)
    config = write_config(tmp_path, gateway.port, max_readings=0, interval_s=0.2)
    try:
        crashed = start_sensor(sensors, config)
        assert watcher.wait_for(lambda msgs: len(msgs) >= 1, 10)
        (state, boot, _) = presence_of(watcher.messages)[0]
        assert state == "online" and ID_PATTERN.match(boot)
        assert retained_presence(gateway.port) == ("online", boot, True)

        crashed.kill9()  # no goodbye: the broker speaks the last will
        assert watcher.wait_for(lambda msgs: len(msgs) >= 2, 10)
        assert presence_of(watcher.messages)[1][:2] == ("offline", boot)
        assert retained_presence(gateway.port) == ("offline", boot, True)

        graceful = start_sensor(sensors, config)
        assert watcher.wait_for(lambda msgs: len(msgs) >= 3, 10)
        (state, second_boot, _) = presence_of(watcher.messages)[2]
        assert state == "online" and second_boot != boot
        assert graceful.stop() == 0, graceful.log_tail()
        assert watcher.wait_for(lambda msgs: len(msgs) >= 4, 5)
        goodbye = json.loads(watcher.messages[3].payload)
        assert (goodbye["state"], goodbye["boot"], goodbye["device"]) == ("offline", second_boot, "pi-1")
        assert "ts" in goodbye  # said by the sensor, not by the broker's will
        assert retained_presence(gateway.port) == ("offline", second_boot, True)
    finally:
        watcher.close()
    final = counters(tmp_path)
    assert final["boot"] == second_boot and final["last_seq"] >= 1


def run_sensor_cli(config: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sensor", "--config", str(config)]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)


# name, top-level overrides, the key the error must name
BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type", {"interval_s": "fast"}, "interval_s"),
    ("typo in the driver table", {"driver": {"type": "simulated", "sed": 1}}, "driver.sed"),
    ("device id unsafe for topics", {"device": "pi 1/#"}, "device"),
    ("replay without a file", {"driver": {"type": "replay"}}, "driver.replay_file"),
    (
        "anomaly on a metric the simulator lacks",
        {
            "driver": {
                "type": "simulated",
                "anomalies": [{"kind": "spike", "start_s": 0, "duration_s": 1, "metric": "co2"}],
            }
        },
        "driver.anomalies[0].metric",
    ),
    ("DHT without the pin on this machine", {"driver": {"type": "dht22", "pin": "D4"}}, "D4"),
]


@pytest.mark.parametrize(("overrides", "named"), [row[1:] for row in BAD_CONFIGS], ids=[row[0] for row in BAD_CONFIGS])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, overrides: dict[str, Any], named: str) -> None:
    config = write_config(tmp_path, free_port(), **overrides)
    done = run_sensor_cli(config)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    done = run_sensor_cli(missing)
    assert done.returncode == 2
    assert str(missing) in done.stderr
