"""The embedded default sink: one SQLite file, idempotent on (device, boot, seq).

WAL with `synchronous=FULL` makes every commit durable before `write` returns, which is what
lets the ingester ack MQTT right after it. One batch is one transaction, so a crash leaves
either the whole batch or none of it, and a replay of the batch is counted as duplicates.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from saltmarsh.sinks.base import DeadLetter, Delivery, SinkUnavailable, StoredKey, WriteResult

# A rowid table plus the (device, boot, seq) key index, not WITHOUT ROWID: readings from many
# devices arrive interleaved, and keeping ~300-byte rows in key order split pages on nearly every
# insert (34 us against 13-17 us per reading, measured with 500 interleaved devices). The audit's
# ordered scan still walks the key index.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    device      TEXT    NOT NULL,
    boot        TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    site        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    gateway     TEXT,
    name        TEXT,
    metrics     TEXT    NOT NULL,
    envelope    TEXT    NOT NULL,
    PRIMARY KEY (device, boot, seq)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    encoding    TEXT    NOT NULL,
    payload     TEXT    NOT NULL
);
"""

# The metrics column is cut out of the envelope JSON by SQLite, in C, instead of encoding the
# metrics twice in Python.
INSERT_MESSAGE = (
    "INSERT INTO messages (device, boot, seq, site, kind, ts_ms, received_ms, gateway, name, metrics, envelope)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, json_extract(?10, '$.metrics'), ?10) ON CONFLICT DO NOTHING"
)
INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letters (received_ms, topic, reason, field, detail, encoding, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# One encoder instance: json.dumps builds a new JSONEncoder on every call with non-default args.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _message_row(delivery: Delivery) -> tuple[Any, ...]:
    env = delivery.envelope
    return (
        env.device,
        env.boot,
        env.seq,
        env.site,
        env.kind.value,
        env.ts_ms,
        delivery.received_ms,
        delivery.gateway,
        env.name,
        _encode(env.to_json()),
    )


def _dead_letter_row(letter: DeadLetter) -> tuple[Any, ...]:
    encoding, text = letter.payload_text()
    return (letter.received_ms, letter.topic, letter.reason.value, letter.field, letter.detail, encoding, text)


class SqliteSink:
    """Sink and AuditSource over one SQLite database file."""

    name = "sqlite"

    def __init__(self, path: Path, *, read_only: bool = False, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        # The ingester opens the sink on its main thread and writes from its batch thread; the
        # lock, not sqlite3's thread check, is what keeps one statement sequence at a time.
        self._lock = threading.Lock()
        # Another writer (a second ingester on the same file, a backup) holds the lock for a
        # moment at most; past `timeout` the write fails as SinkUnavailable and is retried.
        timeout_s = busy_timeout_ms / 1000
        try:
            if read_only:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                self._conn = sqlite3.connect(
                    uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise SinkUnavailable(f"sqlite {path}: {err}") from err

    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult:
        message_rows = [_message_row(d) for d in deliveries]
        dead_letter_rows = [_dead_letter_row(d) for d in dead_letters]
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                before = conn.total_changes
                conn.executemany(INSERT_MESSAGE, message_rows)
                written = conn.total_changes - before
                conn.executemany(INSERT_DEAD_LETTER, dead_letter_rows)
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise SinkUnavailable(f"sqlite {self.path}: {err}") from err
        return WriteResult(written=written, duplicates=len(message_rows) - written, dead_letters=len(dead_letter_rows))

    def stored_keys(self) -> Iterator[StoredKey]:
        with self._lock:
            rows = self._conn.execute("SELECT device, boot, seq, ts_ms FROM messages ORDER BY device, boot, seq")
        # Fetched in chunks so a large audit streams instead of loading every key at once; the lock
        # is never held across a yield, so a slow consumer cannot stall a writer on this connection.
        while True:
            with self._lock:
                chunk = rows.fetchmany(10_000)
            if not chunk:
                return
            for device, boot, seq, ts_ms in chunk:
                yield StoredKey(device, boot, seq, ts_ms)

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY reason")
            return {str(reason): int(count) for reason, count in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
