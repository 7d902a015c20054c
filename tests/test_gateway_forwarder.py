"""The forwarder as a real process between two real Mosquitto brokers: nothing acked is ever lost.

Every test counts unique `(device, boot, seq)` at a persistent cloud subscriber that exists
before the forwarder does, so a message the forwarder loses shows up as a missing key. That
subscriber is a plain MQTT client, not an ingester, so these tests run the forwarder with
`confirmations.mode = "broker"`: the PUBACK is the delivery here. The end-to-end rules, with a
real ingester confirming, are in tests/test_confirmations.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.topics import Channel
from saltmarsh.ops.localfleet.configs import broker_table, forwarder_config, write_config
from saltmarsh.ops.localfleet.layout import Layout
from saltmarsh.ops.localfleet.mosquitto import BrokerPair
from saltmarsh.ops.localfleet.processes import ServiceProcess, wait_until
from saltmarsh.runtime.status import find_status
from tests.support import Collector, publish_all

GATEWAY_ID = "gw-test"
SITE = "site"
Key = tuple[str, str, int]
PROBE_TOPIC = "saltmarsh/v1/site/probe/reading"

pytestmark = pytest.mark.slow


def envelopes(device: str, count: int, *, start: int = 0, kind: Channel = Channel.READING) -> list[tuple[str, bytes]]:
    out = []
    for seq in range(start, start + count):
        env = Envelope(
            kind=kind,
            device=device,
            site=SITE,
            boot="b1",
            seq=seq,
            ts_ms=1_700_000_000_000 + seq,
            metrics={"temperature": 20.0 + seq % 10},
            name=None if kind is Channel.READING else "threshold",
        )
        out.append((str(env.topic), env.encode()))
    return out


def key_of(msg: mqtt.MQTTMessage) -> Key:
    doc = json.loads(msg.payload)
    return (str(doc["device"]), str(doc["boot"]), int(doc["seq"]))


def keys_of(messages: list[tuple[str, bytes]]) -> set[Key]:
    out = set()
    for _, payload in messages:
        doc = json.loads(payload)
        out.add((doc["device"], doc["boot"], doc["seq"]))
    return out


def unique_keys(collector: Collector) -> set[Key]:
    with collector._lock:
        return {key_of(m) for m in collector.messages}


def probe_seen(port: int, collector: Collector) -> bool:
    publish_all(port, [(PROBE_TOPIC, b"probe")], client_id="probe")
    return collector.wait_for(lambda msgs: any(m.topic == PROBE_TOPIC for m in msgs), 1.0)


class Gateway:
    """A site broker, a cloud broker, a cloud collector and forwarder processes, all cleaned up."""

    def __init__(self, layout: Layout, brokers: BrokerPair) -> None:
        self.layout = layout
        self.brokers = brokers
        self.local, self.cloud = brokers.gateway, brokers.cloud
        self.config_path = layout.config_path("forwarder")
        self.status_dir = layout.status_dir
        self.state_dir = layout.state_dir("forwarder")
        self.processes: list[ServiceProcess] = []
        self.collectors: list[Collector] = []

    def write_config(self, **overrides: Any) -> None:
        doc = forwarder_config(
            gateway_id=GATEWAY_ID,
            site="+",
            local=broker_table(self.local.port),
            uplink=broker_table(self.cloud.port),
            state_dir=self.state_dir,
            status_dir=self.status_dir,
            **{"confirmations": {"mode": "broker"}, **overrides},
        )
        write_config(self.config_path, doc)

    def start_forwarder(self, wait_subscribed: bool = True) -> ServiceProcess:
        proc = ServiceProcess.service("forwarder", "gateway", self.config_path, self.layout.log_path("forwarder"))
        self.processes.append(proc.start())
        if wait_subscribed:
            started = time.time() * 1000
            assert self.wait_status(lambda c, s: bool(c.get("local_connected")) and s >= started, 15), (
                f"forwarder never subscribed:\n{proc.log_tail()}"
            )
        return proc

    def status(self) -> tuple[Mapping[str, Any], int]:
        status = find_status(self.status_dir, "forwarder")
        return (status.counters, status.updated_ms) if status is not None else ({}, 0)

    def wait_status(self, predicate: Callable[[Mapping[str, Any], int], bool], timeout_s: float) -> bool:
        return wait_until(lambda: predicate(*self.status()), timeout_s, interval_s=0.1)

    def collector(self) -> Collector:
        collector = Collector(self.cloud.port, "saltmarsh/v1/#", client_id="cloud-collector", clean_start=False)
        self.collectors.append(collector)
        return collector

    def restart_cloud(self) -> None:
        self.cloud.start()

    def close(self) -> None:
        for proc in self.processes:
            proc.stop()
        for collector in self.collectors:
            collector.close()
        self.brokers.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    layout = Layout(tmp_path)
    gw = Gateway(layout, BrokerPair.on_free_ports(layout.brokers_dir).start())
    gw.write_config()
    yield gw
    gw.close()


class PacedPublisher:
    """Publishes at QoS 1 at a steady rate from a thread, until every message has its PUBACK."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], rate_per_s: float) -> None:
        self._messages = messages
        self._interval = 1.0 / rate_per_s
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="paced-publisher", protocol=mqtt.MQTTv5
        )
        self._client.max_inflight_messages_set(1000)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.published = 0

    def start(self) -> PacedPublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        begin = time.monotonic()
        infos = []
        for i, (topic, payload) in enumerate(self._messages):
            delay = begin + i * self._interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            infos.append(self._client.publish(topic, payload, qos=1))
            self.published = i + 1
        for info in infos:
            info.wait_for_publish(timeout=30)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()


def test_steady_flow_arrives_whole_with_gateway_property(gateway: Gateway) -> None:
    collector = gateway.collector()
    proc = gateway.start_forwarder()
    sent = envelopes("dev", 2000) + envelopes("dev2", 50, kind=Channel.ALERT)
    # Status and command traffic stays on the site; unknown channels still go up.
    publish_all(
        gateway.local.port, [*sent, ("saltmarsh/v1/site/dev/status", b"{}"), ("saltmarsh/v1/site/dev/cmd", b"x")]
    )
    publish_all(gateway.local.port, [("saltmarsh/v1/site/dev/mystery", b"not json")], client_id="odd-publisher")

    assert collector.wait_for(lambda msgs: len(msgs) >= len(sent) + 1, 30), proc.log_tail()
    data = [m for m in collector.messages if not m.topic.endswith("/mystery")]
    assert {key_of(m) for m in data} == keys_of(sent)
    assert all(("gw", GATEWAY_ID) in getattr(m.properties, "UserProperty", []) for m in data)
    assert [m.payload for m in collector.messages if m.topic.endswith("/mystery")] == [b"not json"]
    channels = {m.topic.rsplit("/", 1)[1] for m in collector.messages}
    assert channels == {"reading", "alert", "mystery"}

    assert gateway.wait_status(lambda c, _: c.get("forwarded_total") == len(sent) + 1 and c["spool_depth"] == 0, 10)
    counters, _ = gateway.status()
    assert counters["received_total"] == len(sent) + 1
    assert counters["skipped_total"] == 2
    assert counters["spooled_total"] == len(sent) + 1
    assert counters["evicted_total"] == 0
    assert counters["uplink_connected"] is True
    assert proc.stop() == 0


def test_cloud_broker_restart_loses_nothing(gateway: Gateway) -> None:
    collector = gateway.collector()
    proc = gateway.start_forwarder()
    first, second, third = envelopes("dev", 1000), envelopes("dev", 1000, start=1000), envelopes("dev", 500, start=2000)
    publish_all(gateway.local.port, first)
    gateway.cloud.stop()
    publish_all(gateway.local.port, second)
    assert gateway.wait_status(lambda c, _: c.get("uplink_connected") is False and c["spool_depth"] > 0, 10)
    gateway.restart_cloud()
    publish_all(gateway.local.port, third)

    expected = keys_of(first + second + third)
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs}) >= len(expected), 40), proc.log_tail()
    assert unique_keys(collector) == expected
    assert gateway.wait_status(lambda c, _: c["spool_depth"] == 0 and c["inflight"] == 0, 10)


def test_kill9_five_times_mid_run_loses_nothing(gateway: Gateway) -> None:
    collector = gateway.collector()
    gateway.start_forwarder()
    sent = envelopes("dev", 3000)
    publisher = PacedPublisher(gateway.local.port, sent, rate_per_s=600).start()
    kills = 0
    while publisher.published < len(sent) and kills < 8:
        time.sleep(0.6)
        gateway.processes[-1].kill9()
        kills += 1
        gateway.start_forwarder(wait_subscribed=False)
    publisher.join(30)
    assert kills >= 5

    expected = keys_of(sent)
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs}) >= len(expected), 40), (
        f"missing {len(expected - unique_keys(collector))}:\n{gateway.processes[-1].log_tail()}"
    )
    assert unique_keys(collector) == expected


def test_restart_while_cloud_down_loses_nothing(gateway: Gateway) -> None:
    collector = gateway.collector()
    gateway.cloud.stop()
    first, second = envelopes("dev", 800), envelopes("dev", 800, start=800)
    proc = gateway.start_forwarder()
    publish_all(gateway.local.port, first)
    assert gateway.wait_status(lambda c, _: c.get("spooled_total") == len(first), 10)
    assert proc.stop() == 0

    proc = gateway.start_forwarder()
    counters, _ = gateway.status()
    assert counters["spool_depth"] == len(first)
    publish_all(gateway.local.port, second)
    proc.kill9()
    proc = gateway.start_forwarder()
    # At least: a batch spooled but not yet acked when killed is redelivered and spooled again.
    assert gateway.wait_status(lambda c, _: c.get("spool_depth", 0) >= len(first) + len(second), 10)

    gateway.restart_cloud()
    expected = keys_of(first + second)
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs}) >= len(expected), 40), proc.log_tail()
    assert unique_keys(collector) == expected


def test_quota_evicts_only_readings_and_counts_exactly(gateway: Gateway) -> None:
    collector = gateway.collector()
    gateway.cloud.stop()
    # The quota must hold every alert (about 17 kB) plus the newest reading segment, or that
    # segment is evicted too and nothing is left to show that only the oldest go. A segment is
    # at most one batch, and a batch at most the 100 messages the site broker may have unacked
    # (receive maximum, twice commit_max_messages): about 17 kB of readings. 60 kB holds both
    # whatever the batching, and is far below the 255 kB of readings, so eviction is certain.
    gateway.write_config(spool_quota_bytes=60_000, commit_max_messages=50)
    proc = gateway.start_forwarder()
    readings = envelopes("dev", 1500)
    alerts = envelopes("alarm", 100, kind=Channel.ALERT)
    for i in range(0, len(readings), 150):
        publish_all(gateway.local.port, readings[i : i + 150])
        publish_all(gateway.local.port, alerts[i // 15 : i // 15 + 10], client_id="alert-publisher")
    total = len(readings) + len(alerts)
    assert gateway.wait_status(lambda c, _: c.get("spooled_total") == total, 15), proc.log_tail()
    counters, _ = gateway.status()
    evicted = int(counters["evicted_total"])
    assert 0 < evicted < len(readings)

    # Restarting must keep the counter exact: it is persisted with the eviction itself.
    assert proc.stop() == 0
    gateway.restart_cloud()
    proc = gateway.start_forwarder()
    alert_keys, reading_keys = keys_of(alerts), keys_of(readings)
    assert gateway.wait_status(lambda c, _: c.get("spool_depth") == 0 and c.get("inflight") == 0, 30), proc.log_tail()
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs}) >= len(readings) - evicted + len(alerts), 10)
    delivered = unique_keys(collector)
    assert alert_keys <= delivered, "alerts are never evicted"
    assert len(reading_keys - delivered) == evicted
    counters, _ = gateway.status()
    assert counters["evicted_total"] == evicted


def test_corrupt_spool_is_quarantined_and_forwarding_goes_on(gateway: Gateway) -> None:
    spool_dir = gateway.state_dir / "spool"
    spool_dir.mkdir(parents=True)
    (spool_dir / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    collector = gateway.collector()
    proc = gateway.start_forwarder()

    moved = list(gateway.state_dir.glob("spool.corrupt-*"))
    assert len(moved) == 1
    assert (moved[0] / "cache.db").read_bytes().startswith(b"this is not")
    counters, _ = gateway.status()
    assert counters["quarantined"] == 1
    assert "spool_quarantined" in proc.log_tail(200)

    sent = envelopes("dev", 300)
    publish_all(gateway.local.port, sent)
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs}) >= len(sent), 20), proc.log_tail()
    assert unique_keys(collector) == keys_of(sent)


def test_live_messages_overtake_a_rate_limited_backlog(gateway: Gateway) -> None:
    collector = gateway.collector()
    gateway.cloud.stop()
    gateway.write_config(drain_rate_limit=300.0, drain_burst=50)
    proc = gateway.start_forwarder()
    backlog = envelopes("old", 2000)
    publish_all(gateway.local.port, backlog)
    assert gateway.wait_status(lambda c, _: c.get("spool_depth") == len(backlog), 10)
    # Backlog is what was spooled before the forwarder last found the cloud down: outlast one
    # reconnect attempt (at most a second apart) so that all of it is.
    time.sleep(1.5)

    gateway.restart_cloud()
    assert gateway.wait_status(lambda c, _: c.get("uplink_connected") is True, 15), proc.log_tail()
    live = envelopes("new", 30)
    publish_all(gateway.local.port, live)
    live_keys = keys_of(live)
    assert collector.wait_for(lambda msgs: live_keys <= {key_of(m) for m in msgs}, 10)
    backlog_delivered = len(unique_keys(collector) - live_keys)
    assert backlog_delivered < len(backlog) * 0.6, "live traffic should not wait for the backlog"

    counters, _ = gateway.status()
    assert counters["backlog_depth"] > 0
    assert counters["drain_eta_s"] > 0
    expected = keys_of(backlog) | live_keys
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs}) >= len(expected), 30)
    assert unique_keys(collector) == expected
    assert gateway.wait_status(lambda c, _: c.get("backlog_depth") == 0 and c.get("drain_eta_s") == 0, 5)


def test_segments_leave_the_spool_only_on_puback(gateway: Gateway) -> None:
    """Published is not delivered: a frozen cloud broker takes the bytes and never PUBACKs them."""
    collector = gateway.collector()
    proc = gateway.start_forwarder()
    warm, unacked = envelopes("dev", 300), envelopes("dev", 300, start=300)
    publish_all(gateway.local.port, warm)
    assert collector.wait_for(lambda msgs: len(msgs) >= len(warm), 15)

    assert gateway.cloud.process is not None
    cloud_pid = gateway.cloud.process.pid
    os.kill(cloud_pid, signal.SIGSTOP)
    try:
        publish_all(gateway.local.port, unacked)
        assert gateway.wait_status(lambda c, _: c.get("inflight", 0) > 0 and c["spooled_total"] == 600, 10)
        proc.kill9()  # what paho held in memory dies with it
    finally:
        gateway.cloud.kill9()  # never reads the bytes already in its socket
    gateway.restart_cloud()
    # The forwarder is down; make sure the collector is subscribed again before it comes back.
    assert wait_until(lambda: probe_seen(gateway.cloud.port, collector), 30, interval_s=0)

    proc = gateway.start_forwarder()
    expected = keys_of(warm + unacked)
    assert collector.wait_for(lambda msgs: len({key_of(m) for m in msgs if m.topic != PROBE_TOPIC}) >= 600, 30), (
        proc.log_tail()
    )
    assert {key_of(m) for m in collector.messages if m.topic != PROBE_TOPIC} == expected
