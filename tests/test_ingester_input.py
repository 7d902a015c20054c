"""Hostile input to a real ingester process on a real Mosquitto: huge messages, retained messages."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from saltmarsh.sinks.base import DEAD_LETTER_HEAD_BYTES
from tests.conftest import BrokerFactory
from tests.test_ingester_broker import Ingesters, reading, wait_until
from tests.test_ingester_broker import publish_messages as publish

TOPIC = "saltmarsh/v1/s/d/reading"
TEN_MB = 10_000_000
MQTT_MAX_PACKET = 268_435_455  # the protocol's own limit


@pytest.fixture
def ingesters(tmp_path: Path, broker_factory: BrokerFactory) -> Iterator[Ingesters]:
    # The brokers the formula renders refuse packets over max_message_bytes; the ingester must
    # still bound what a broker without that limit hands it, so this one has none to speak of.
    fleet = Ingesters(tmp_path, broker_factory("cloud", max_packet_size=MQTT_MAX_PACKET))
    yield fleet
    fleet.stop_all()


def dead_letters(db: Path) -> list[tuple[str, int, int, str]]:
    with closing(sqlite3.connect(db, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT reason, length(payload), payload_bytes, payload_sha256 FROM dead_letters ORDER BY id"
        )
        return [(str(r), int(n), int(b), str(h)) for r, n, b, h in rows]


def acked(ingesters: Ingesters, count: int) -> Callable[[], bool]:
    return lambda: ingesters.counters("ing-1").get("acked_total") == count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_10_mb_message_leaves_a_1_kib_dead_letter_with_its_size_and_hash(ingesters: Ingesters) -> None:
    ingester = ingesters.start("ing-1")
    body = b"x" * TEN_MB
    publish(ingesters.broker.port, [(TOPIC, body)])
    wait_until(lambda: ingesters.counters("ing-1").get("acked_total") == 1, 30, ingester)
    assert dead_letters(ingesters.db) == [
        ("oversized", DEAD_LETTER_HEAD_BYTES, TEN_MB, hashlib.sha256(body).hexdigest())
    ]


def test_a_retained_message_is_counted_once_however_often_the_ingester_restarts(ingesters: Ingesters) -> None:
    port = ingesters.broker.port
    ingesters.start("ing-1").stop()  # the persistent session and its subscription now exist
    # Published while the ingester is away: queued for its session, and kept by the broker.
    publish(port, [(TOPIC, b"}}}"), reading("probe-1", 1)], retain=True)
    expected_by_reason: list[dict[str, int]] = [{"malformed_json": 1, "retained": 1}, {}, {}]
    for seq, by_reason in enumerate(expected_by_reason, 1):  # the restarts must get nothing more
        ingester = ingesters.start("ing-1")
        publish(port, [reading("probe-2", seq)])  # behind anything the broker sent at subscribe
        expected_acks = 1 + sum(by_reason.values())  # counters are per process
        wait_until(acked(ingesters, expected_acks), 15, ingester)
        assert ingesters.counters("ing-1")["dead_letters_by_reason"] == by_reason
        assert ingester.stop() == 0
    assert [reason for reason, *_ in dead_letters(ingesters.db)] == ["malformed_json", "retained"]
    assert ingesters.stored() == 3  # probe-2's live readings; probe-1's retained one is a dead letter


def test_memory_goes_back_after_bursts_of_large_messages(ingesters: Ingesters) -> None:
    ingester = ingesters.start("ing-1")
    start_mb = rss_mb(ingester.pid)
    for burst in range(1, 4):
        publish(ingesters.broker.port, [(TOPIC, bytes([64 + i]) * TEN_MB) for i in range(10)])
        wait_until(acked(ingesters, 10 * burst), 60, ingester)
    after_mb = rss_mb(ingester.pid)
    # Before the fix: 24 MB at start, 206 MB after the bursts, and it stayed there.
    assert after_mb < start_mb + 40, (start_mb, after_mb)
    assert ingester.stop() == 0
