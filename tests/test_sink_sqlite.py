"""The SQLite sink: idempotent on (device, boot, seq), one transaction per write, ordered audit keys."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.ingester import SinkConfig
from saltmarsh.contract.envelope import Envelope, Limits, Location, from_json, parse
from saltmarsh.contract.errors import ConfigError, Reason
from saltmarsh.contract.topics import Channel, Topic
from saltmarsh.sinks import (
    DeadLetter,
    Delivery,
    SinkUnavailable,
    SqliteSink,
    StoredKey,
    WriteResult,
    open_audit_source,
    open_sink,
)
from saltmarsh.sinks.base import DEAD_LETTER_HEAD_BYTES

NOW_MS = 1_700_000_000_000


def reading(device: str = "probe-1", boot: str = "b1", seq: int = 1) -> Envelope:
    return Envelope(Channel.READING, device, "marsh-1", boot, seq, NOW_MS + seq, {"temperature": 20.0 + seq / 10})


def deliveries(device: str, seqs: range, boot: str = "b1") -> list[Delivery]:
    return [Delivery(reading(device, boot, seq), NOW_MS + 5000, "gw-1") for seq in seqs]


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SqliteSink]:
    opened = SqliteSink(tmp_path / "sink.db")
    yield opened
    opened.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql))


def test_replayed_batch_is_counted_as_duplicates_and_stored_once(sink: SqliteSink) -> None:
    batch = deliveries("probe-1", range(1, 101))
    assert sink.write(batch, []) == WriteResult(written=100, duplicates=0, dead_letters=0)
    assert sink.write(batch, []) == WriteResult(written=0, duplicates=100, dead_letters=0)
    # A replay that overlaps new data: only the new part is written.
    assert sink.write(deliveries("probe-1", range(51, 151)), []) == WriteResult(50, 50, 0)
    assert rows(sink.path, "SELECT COUNT(*) FROM messages") == [(150,)]


def test_the_same_key_twice_in_one_batch_is_one_row_and_one_duplicate(sink: SqliteSink) -> None:
    first = Delivery(reading(seq=7), NOW_MS, "gw-1")
    redelivered = Delivery(reading(seq=7), NOW_MS + 900, "gw-2")
    assert sink.write([first, redelivered], []) == WriteResult(1, 1, 0)
    # Create semantics: the first copy stays, a later one never overwrites it.
    assert rows(sink.path, "SELECT gateway, received_ms FROM messages") == [("gw-1", NOW_MS)]


def test_a_redelivery_after_reopening_is_still_a_duplicate(tmp_path: Path) -> None:
    first = SqliteSink(tmp_path / "sink.db")
    first.write(deliveries("probe-1", range(1, 11)), [])
    first.close()
    reopened = SqliteSink(tmp_path / "sink.db")
    assert reopened.write(deliveries("probe-1", range(1, 11)), []) == WriteResult(0, 10, 0)
    reopened.close()


def test_row_columns_and_envelope_round_trip(sink: SqliteSink) -> None:
    env = Envelope(
        Channel.ALERT,
        "probe-1",
        "marsh-1",
        "b1",
        3,
        NOW_MS,
        {"temperature": 45.5},
        name="threshold",
        detail="above 40",
        units={"temperature": "C"},
        model="HW-MD202",
        firmware="1.0.0",
        location=Location(36.7, -4.4, "garden"),
    )
    sink.write([Delivery(env, NOW_MS + 10, "gw-9"), Delivery(reading(seq=1), NOW_MS + 11, None)], [])
    stored = rows(
        sink.path,
        "SELECT device, boot, seq, site, kind, ts_ms, received_ms, gateway, name, metrics, envelope"
        " FROM messages ORDER BY seq",
    )
    assert stored[0][:9] == ("probe-1", "b1", 1, "marsh-1", "reading", NOW_MS + 1, NOW_MS + 11, None, None)
    assert stored[1][:9] == ("probe-1", "b1", 3, "marsh-1", "alert", NOW_MS, NOW_MS + 10, "gw-9", "threshold")
    assert json.loads(str(stored[1][9])) == {"temperature": 45.5}
    envelope_doc = json.loads(str(stored[1][10]))
    assert from_json(envelope_doc, Topic("marsh-1", "probe-1", Channel.ALERT), NOW_MS, Limits()) == env


def test_dead_letters_keep_text_as_utf8_and_binary_as_base64(sink: SqliteSink) -> None:
    binary = b"\xff\xfe\x00garbage"
    letters = [
        DeadLetter.of(
            NOW_MS,
            "saltmarsh/v1/s/d/reading",
            b"{oops",
            reason=Reason.MALFORMED_JSON,
            field="payload",
            detail="Expecting value",
        ),
        DeadLetter.of(
            NOW_MS,
            "saltmarsh/v1/s/d/reading",
            binary,
            reason=Reason.NOT_UTF8,
            field="payload",
            detail="invalid UTF-8 at byte 0",
        ),
        DeadLetter.of(
            NOW_MS,
            "saltmarsh/v1/s/d/status",
            b"{}",
            reason=Reason.UNKNOWN_TOPIC,
            field="topic.channel",
            detail="no data",
        ),
    ]
    assert sink.write(deliveries("probe-1", range(1, 3)), letters) == WriteResult(2, 0, 3)
    stored = rows(sink.path, "SELECT topic, reason, field, detail, encoding, payload FROM dead_letters ORDER BY id")
    assert stored[0] == (
        "saltmarsh/v1/s/d/reading", "malformed_json", "payload", "Expecting value", "utf-8", "{oops"
    )  # fmt: skip
    assert stored[1][1:5] == ("not_utf8", "payload", "invalid UTF-8 at byte 0", "base64")
    assert base64.b64decode(str(stored[1][5])) == binary
    assert stored[2][1:3] == ("unknown_topic", "topic.channel")
    # Dead letters are never deduplicated: each rejected delivery is evidence.
    sink.write([], letters[:1])
    assert sink.dead_letter_counts() == {"malformed_json": 2, "not_utf8": 1, "unknown_topic": 1}


def test_a_large_dead_letter_is_stored_as_its_head_size_and_hash(sink: SqliteSink) -> None:
    body = b"z" * 10_000_000
    letter = DeadLetter.of(
        NOW_MS, "saltmarsh/v1/s/d/reading", body, reason=Reason.OVERSIZED, field="payload", detail="big"
    )
    sink.write([], [letter])
    stored = rows(sink.path, "SELECT length(payload), payload_bytes, payload_sha256 FROM dead_letters")
    assert stored == [(DEAD_LETTER_HEAD_BYTES, 10_000_000, hashlib.sha256(body).hexdigest())]


# The dead_letters table as the first releases created it, before payload_bytes and payload_sha256.
OLD_DEAD_LETTERS = """
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    encoding    TEXT    NOT NULL,
    payload     TEXT    NOT NULL
);
INSERT INTO dead_letters VALUES (1, 1, 't', 'malformed_json', 'payload', 'old', 'utf-8', '{');
"""


def test_a_database_from_before_the_payload_columns_gets_them_at_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as old:
        old.executescript(OLD_DEAD_LETTERS)
    sink = SqliteSink(path)
    letter = DeadLetter.of(NOW_MS, "t", b"{}", reason=Reason.MALFORMED_JSON, field="payload", detail="new")
    sink.write([], [letter])
    sink.close()
    SqliteSink(path).close()  # and a second open finds them there
    assert rows(path, "SELECT detail, payload, payload_bytes, payload_sha256 FROM dead_letters ORDER BY id") == [
        ("old", "{", None, None),
        ("new", "{}", 2, hashlib.sha256(b"{}").hexdigest()),
    ]


def test_stored_keys_are_ordered_by_device_boot_seq(sink: SqliteSink) -> None:
    batch = deliveries("probe-2", range(1, 30)) + deliveries("probe-1", range(1, 30), "b2")
    batch += deliveries("probe-1", range(1, 30), "b1") + deliveries("probe-10", range(1, 30))
    random.Random(4).shuffle(batch)
    for start in range(0, len(batch), 17):
        sink.write(batch[start : start + 17], [])
    keys = list(sink.stored_keys())
    assert keys == sorted(keys, key=lambda k: (k.device, k.boot, k.seq))
    assert len(keys) == 4 * 29
    assert keys[0] == StoredKey("probe-1", "b1", 1, NOW_MS + 1)
    # Numeric order within a boot, not text order: 2 comes before 10.
    assert [k.seq for k in keys[:11]] == list(range(1, 12))


def test_a_locked_database_raises_sink_unavailable_and_commits_nothing(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "sink.db", busy_timeout_ms=50)
    sink.write(deliveries("probe-1", range(1, 4)), [])
    other = sqlite3.connect(tmp_path / "sink.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    letter = DeadLetter.of(NOW_MS, "t", b"x", reason=Reason.OVERSIZED, field="payload", detail="big")
    with pytest.raises(SinkUnavailable, match="locked"):
        sink.write(deliveries("probe-1", range(4, 10)), [letter])
    other.execute("ROLLBACK")
    other.close()
    assert rows(sink.path, "SELECT COUNT(*) FROM messages") == [(3,)]
    # The same batch retried once the lock is gone: everything in it is new.
    assert sink.write(deliveries("probe-1", range(4, 10)), [letter]) == WriteResult(6, 0, 1)
    sink.close()


def test_database_is_in_wal_mode(sink: SqliteSink) -> None:
    assert rows(sink.path, "PRAGMA journal_mode") == [("wal",)]


def test_open_sink_dispatches_on_type(tmp_path: Path) -> None:
    opened = open_sink(SinkConfig("sqlite", tmp_path / "nested" / "sink.db"))
    assert isinstance(opened, SqliteSink)
    assert opened.name == "sqlite"
    opened.close()
    with pytest.raises(ConfigError) as caught:
        open_sink(SinkConfig("mongodb", tmp_path / "x"))
    assert caught.value.key == "sink.type"


def test_unopenable_path_is_sink_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkUnavailable):
        SqliteSink(tmp_path / "file" / "sink.db")


def test_audit_source_reads_without_writing(tmp_path: Path) -> None:
    with pytest.raises(SinkUnavailable):
        open_audit_source(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()
    writer = SqliteSink(tmp_path / "sink.db")
    writer.write(deliveries("probe-1", range(1, 6)), [])
    source = open_audit_source(SinkConfig("sqlite", tmp_path / "sink.db"))
    assert [k.seq for k in source.stored_keys()] == [1, 2, 3, 4, 5]
    assert source.dead_letter_counts() == {}
    assert isinstance(source, SqliteSink)
    with pytest.raises(SinkUnavailable, match="readonly"):
        source.write(deliveries("probe-1", range(6, 7)), [])
    source.close()
    writer.close()


def test_a_parsed_envelope_is_stored_as_the_text_that_arrived(sink: SqliteSink) -> None:
    text = '{"v": 1, "device": "probe-1", "site": "marsh-1", "boot": "b1", "seq": 4, "ts": 5, "metrics": {"t": 1}}'
    env = parse("saltmarsh/v1/marsh-1/probe-1/reading", text.encode(), NOW_MS)
    assert env.raw_json == text
    sink.write([Delivery(env, NOW_MS, None)], [])
    assert rows(sink.path, "SELECT kind, metrics, envelope FROM messages") == [("reading", '{"t":1}', text)]


def test_text_sqlite_cannot_take_is_escaped_instead_of_failing_every_retry(sink: SqliteSink) -> None:
    # "\ud800" is valid JSON and a valid Python string, but not Unicode that UTF-8 can carry.
    event = Envelope(Channel.EVENT, "probe-1", "marsh-1", "b1", 1, NOW_MS, name="door\ud800")
    letter = DeadLetter.of(
        NOW_MS, "t", b"{}", reason=Reason.INVALID_VALUE, field="metrics.\ud800", detail="'\ud800' must match"
    )
    assert sink.write([Delivery(event, NOW_MS, None)], [letter]) == WriteResult(1, 0, 1)
    [(name, envelope)] = rows(sink.path, "SELECT name, envelope FROM messages")
    assert name == "door\\ud800"
    assert json.loads(str(envelope))["name"] == "door\ud800"
    assert rows(sink.path, "SELECT field, detail FROM dead_letters") == [("metrics.\\ud800", "'\\ud800' must match")]


def test_a_batch_that_fails_midway_for_any_reason_leaves_no_open_transaction(sink: SqliteSink) -> None:
    # A gateway id is checked upstream; here one that UTF-8 cannot carry fails the binding.
    broken = Delivery(reading(seq=2), NOW_MS, "gw\ud800")
    with pytest.raises(UnicodeEncodeError):
        sink.write([Delivery(reading(seq=1), NOW_MS, None), broken], [])
    assert sink.write(deliveries("probe-1", range(1, 3)), []) == WriteResult(2, 0, 0)


def _open_at_once(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        SqliteSink(Path(path)).close()
        results.put("ok")
    except SinkUnavailable as err:
        results.put(str(err))


def test_ingesters_opening_a_new_sink_at_once_all_open_it(tmp_path: Path) -> None:
    """Switching a new file to WAL bypasses SQLite's busy handler; before the sink waited it out,
    about one start in four of three ingesters at once lost one of them to "database is locked"."""
    context = multiprocessing.get_context("fork")
    failures = []
    for attempt in range(20):
        path = tmp_path / f"sink-{attempt}.db"
        barrier, results = context.Barrier(3), context.Queue()
        openers = [context.Process(target=_open_at_once, args=(str(path), barrier, results)) for _ in range(3)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(30)
        failures += [r for r in (results.get(timeout=5) for _ in openers) if r != "ok"]
    assert failures == []
