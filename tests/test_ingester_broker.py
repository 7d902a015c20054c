"""The ingester as a real process against a real Mosquitto: rows, dead letters, crashes, scale-out."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from saltmarsh.ops.audit import AuditReport, run_audit
from saltmarsh.ops.localfleet.configs import broker_table, ingester_config, sqlite_sink, write_config
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess
from saltmarsh.runtime.status import find_status
from saltmarsh.sinks import open_audit_source
from tests.conftest import BrokerFactory
from tests.support import publish_all

SITE = "marsh-1"
BOOT = "b-1"


def reading(device: str, seq: int) -> tuple[str, bytes]:
    doc = {
        "v": 1,
        "kind": "reading",
        "device": device,
        "site": SITE,
        "boot": BOOT,
        "seq": seq,
        "ts": int(time.time() * 1000),
        "metrics": {"temperature": 20 + seq % 10, "humidity": 50.5},
    }
    return f"saltmarsh/v1/{SITE}/{device}/reading", json.dumps(doc).encode()


def readings(devices: int, per_device: int) -> list[tuple[str, bytes]]:
    # Interleaved by seq, as a site's sensors would publish them.
    return [reading(f"probe-{d}", seq) for seq in range(1, per_device + 1) for d in range(devices)]


class Ingesters:
    """Writes configs and starts ingester processes that share one status dir and one database."""

    def __init__(self, tmp_path: Path, broker: Mosquitto) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.status_dir = tmp_path / "status"
        self.db = tmp_path / "sink.db"
        self.started: list[ServiceProcess] = []

    def config(self, ingester_id: str, **extra: str | int) -> Path:
        doc = ingester_config(
            ingester_id=ingester_id,
            broker=broker_table(self.broker.port),
            sink=sqlite_sink(self.db),
            status_dir=self.status_dir,
            share_group="cloud",
            **extra,
        )
        return write_config(self.tmp_path / f"{ingester_id}.toml", doc)

    def start(self, ingester_id: str, **extra: str | int) -> ServiceProcess:
        config = self.config(ingester_id, **extra)
        log = self.tmp_path / "logs" / f"{ingester_id}.log"
        process = ServiceProcess.service(f"ingester-{ingester_id}", "cloud_ingester", config, log)
        self.started.append(process.start())
        wait_until(lambda: self.counters(ingester_id).get("subscribed") is True, 15, process)
        return process

    def counters(self, ingester_id: str) -> dict[str, Any]:
        status = find_status(self.status_dir, "ingester", ingester_id)
        return dict(status.counters) if status is not None else {}

    def stored(self) -> int:
        if not self.db.exists():
            return 0
        with closing(sqlite3.connect(self.db, timeout=5)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def audit(self, expectations: dict[str, tuple[str, int]]) -> AuditReport:
        source = open_audit_source(self.db)
        try:
            return run_audit(source.stored_keys(), expectations, source.dead_letter_counts())
        finally:
            source.close()

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


def wait_until(predicate: Callable[[], bool], timeout_s: float, process: ServiceProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and not process.alive():
            raise AssertionError(f"{process.name} exited {process.returncode()}:\n{process.log_tail()}")
        time.sleep(0.05)
    tail = process.log_tail() if process is not None else ""
    raise AssertionError(f"timed out after {timeout_s}s\n{tail}")


@pytest.fixture
def ingesters(tmp_path: Path, broker_factory: BrokerFactory) -> Iterator[Ingesters]:
    fleet = Ingesters(tmp_path, broker_factory("cloud"))
    yield fleet
    fleet.stop_all()


def publish_messages(
    port: int, messages: list[tuple[str, bytes]], *, gateway: str | None = None, retain: bool = False
) -> None:
    """Publish at QoS 1 and wait for every PUBACK; `gateway` adds the forwarder's user property."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fwd", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if gateway is not None:
        props.UserProperty = ("gw", gateway)
    try:
        infos = [client.publish(topic, body, qos=1, retain=retain, properties=props) for topic, body in messages]
        for info in infos:
            info.wait_for_publish(timeout=60)
    finally:
        client.disconnect()
        client.loop_stop()


def publish_via_gateway(port: int, messages: list[tuple[str, bytes]], gateway: str) -> None:
    """Publish as the forwarder does: QoS 1 with the gateway id as an MQTT 5 user property."""
    publish_messages(port, messages, gateway=gateway)


def publish_paced(port: int, messages: list[tuple[str, bytes]], chunk: int, pause_s: float) -> threading.Thread:
    """Publish in the background in chunks, so that a crash lands in the middle of the stream."""

    def run() -> None:
        for start in range(0, len(messages), chunk):
            publish_all(port, messages[start : start + chunk], client_id="paced-publisher")
            time.sleep(pause_s)

    thread = threading.Thread(target=run, name="publisher", daemon=True)
    thread.start()
    return thread


def test_readings_and_bad_messages_become_rows_dead_letters_and_counters(ingesters: Ingesters) -> None:
    ingester = ingesters.start("ing-1")
    good = readings(devices=3, per_device=100)
    publish_via_gateway(ingesters.broker.port, good[:150], "gw-north")
    bad = [
        ("saltmarsh/v1/marsh-1/probe-0/reading", b"{not json"),
        ("saltmarsh/v1/marsh-1/probe-0/reading", b"\xff\xfe\xfd"),
        ("saltmarsh/v1/marsh-1/probe-0/status", b'{"online": true}'),
        ("saltmarsh/v1/marsh-1/probe-0/telemetry", b"{}"),
        ("saltmarsh/v1/marsh-1/probe-9/reading", reading("probe-0", 1)[1]),
    ]
    publish_all(ingesters.broker.port, good[150:] + bad)

    wait_until(lambda: ingesters.counters("ing-1").get("acked_total") == 305, 15, ingester)
    counters = ingesters.counters("ing-1")
    assert counters["received_total"] == 305
    assert counters["written_total"] == 300
    assert counters["duplicates_total"] == 0
    assert counters["dead_letters_total"] == 5
    assert counters["dead_letters_by_reason"] == {
        "malformed_json": 1,
        "not_utf8": 1,
        "unknown_topic": 2,
        "topic_mismatch": 1,
    }
    assert counters["sink"] == "sqlite" and counters["sink_ok"] is True and counters["connected"] is True

    assert ingester.stop() == 0
    with closing(sqlite3.connect(ingesters.db)) as conn:
        gateways = dict(conn.execute("SELECT gateway, COUNT(*) FROM messages GROUP BY gateway").fetchall())
        assert gateways == {"gw-north": 150, None: 150}
        letters = conn.execute("SELECT topic, reason, field, encoding FROM dead_letters ORDER BY id").fetchall()
    assert letters == [
        ("saltmarsh/v1/marsh-1/probe-0/reading", "malformed_json", "payload", "utf-8"),
        ("saltmarsh/v1/marsh-1/probe-0/reading", "not_utf8", "payload", "base64"),
        ("saltmarsh/v1/marsh-1/probe-0/status", "unknown_topic", "topic.channel", "utf-8"),
        ("saltmarsh/v1/marsh-1/probe-0/telemetry", "unknown_topic", "topic.channel", "utf-8"),
        ("saltmarsh/v1/marsh-1/probe-9/reading", "topic_mismatch", "device", "utf-8"),
    ]
    report = ingesters.audit({f"probe-{d}": (BOOT, 100) for d in range(3)})
    assert (report.readings, report.lost, report.duplicated) == (300, 0, 0)
    assert report.dead_letters == {"malformed_json": 1, "not_utf8": 1, "unknown_topic": 2, "topic_mismatch": 1}


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(ingesters: Ingesters) -> None:
    messages = readings(devices=4, per_device=1000)
    first = ingesters.start("ing-1", batch_max_messages=200)
    publisher = publish_paced(ingesters.broker.port, messages, chunk=200, pause_s=0.05)
    wait_until(lambda: ingesters.stored() >= 800, 20, first)
    first.kill9()
    # The crash really is mid-stream: the rest is published while no ingester is connected.
    assert publisher.is_alive()
    assert ingesters.stored() < len(messages)

    second = ingesters.start("ing-1", batch_max_messages=200)
    publisher.join(30)
    assert not publisher.is_alive()
    wait_until(lambda: ingesters.stored() == len(messages), 30, second)
    report = ingesters.audit({f"probe-{d}": (BOOT, 1000) for d in range(4)})
    assert (report.readings, report.lost, report.duplicated) == (4000, 0, 0), report
    assert second.stop() == 0


def test_sigterm_mid_stream_commits_and_acks_what_it_took(ingesters: Ingesters) -> None:
    messages = readings(devices=2, per_device=1000)
    first = ingesters.start("ing-1")
    publisher = publish_paced(ingesters.broker.port, messages, chunk=100, pause_s=0.02)
    wait_until(lambda: ingesters.stored() >= 400, 20, first)
    assert first.stop() == 0
    final = ingesters.counters("ing-1")
    assert final["acked_total"] == final["written_total"] == ingesters.stored()

    second = ingesters.start("ing-1")
    publisher.join(30)
    wait_until(lambda: ingesters.stored() == len(messages), 30, second)
    # Everything the first one committed was acked before it left, so none of it came back.
    assert second.stop() == 0
    assert ingesters.counters("ing-1")["duplicates_total"] == 0
    assert ingesters.audit({f"probe-{d}": (BOOT, 1000) for d in range(2)}).ok


def test_two_ingesters_in_one_share_group_split_the_stream_and_store_it_once(ingesters: Ingesters) -> None:
    a = ingesters.start("ing-a")
    b = ingesters.start("ing-b")
    messages = readings(devices=5, per_device=400)
    publish_all(ingesters.broker.port, messages)
    wait_until(lambda: ingesters.stored() == len(messages), 30, a)
    assert a.stop() == 0 and b.stop() == 0

    written = {i: ingesters.counters(i)["written_total"] for i in ("ing-a", "ing-b")}
    assert sum(written.values()) == len(messages)
    assert min(written.values()) >= len(messages) // 4, written  # the broker shares it out, not all to one
    assert all(ingesters.counters(i)["duplicates_total"] == 0 for i in ("ing-a", "ing-b"))
    report = ingesters.audit({f"probe-{d}": (BOOT, 400) for d in range(5)})
    assert (report.readings, report.lost, report.duplicated) == (2000, 0, 0)


def test_a_broker_restart_is_ridden_out_and_the_session_resumed(ingesters: Ingesters) -> None:
    ingester = ingesters.start("ing-1")
    messages = readings(devices=2, per_device=300)
    publish_all(ingesters.broker.port, messages[:300])
    wait_until(lambda: ingesters.stored() == 300, 15, ingester)
    ingesters.broker.stop()  # graceful: the broker saves the ingester's session and subscription
    wait_until(lambda: ingesters.counters("ing-1").get("connected") is False, 10, ingester)
    ingesters.broker.start()
    # Mosquitto 2.0 does not restore shared subscriptions from its store, so a message published
    # before the ingester has subscribed again is refused as "no matching subscribers" (which the
    # forwarder retries); these wait for the new subscription.
    wait_until(lambda: ingesters.counters("ing-1").get("subscribed") is True, 15, ingester)
    publish_all(ingesters.broker.port, messages[300:])
    wait_until(lambda: ingesters.stored() == len(messages), 30, ingester)
    assert ingester.stop() == 0
    assert ingesters.audit({f"probe-{d}": (BOOT, 300) for d in range(2)}).ok
