"""The device's command journal: what makes a command run at most once at the device.

The agent writes `intent` before it acts and `result` after (`begin`, `finish`), each committed
and fsynced before the call returns (SQLite, WAL, synchronous=FULL). On a later delivery of the
same `cmd_id`, whoever repeated it (a QoS 1 redelivery, the gateway's resend, a broadcast and a
direct copy), `begin` answers from the journal:

| journal holds                       | op idempotent | decision | result                       |
|-------------------------------------|---------------|----------|------------------------------|
| nothing                             | either        | RUN      | None (intent now recorded)   |
| a result                            | either        | CACHED   | the recorded result          |
| intent, being run by this process   | either        | RUNNING  | None (its result will come)  |
| intent, its process died            | no            | CACHED   | FAILED(interrupted), kept    |
| intent, its process died            | yes           | RUN      | None                         |

"Its process died" is known, not guessed: a journal is opened by one process at a time (an
exclusive lock on `<path>.lock`, which the kernel releases when the process dies, kill -9
included), so an intent without a result that this process did not begin was left by a dead one.

An entry is kept until its command can no longer arrive (`prune`), then deleted. The counters
are kept in the file. A duplicate is answered without writing, so it costs no fsync; it is
counted in the next write's transaction (or at `close`), so a kill -9 loses at most the
duplicates counted since the last write. Every other count is written with the event it counts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from saltmarsh.contract.errors import JournalError

log = logging.getLogger(__name__)

INTERRUPTED_RESULT: Mapping[str, Any] = MappingProxyType({"state": "FAILED", "reason": "interrupted"})
"""What a non-idempotent command whose run was cut short by a crash reports, for ever after."""

# Every hop drops a command past its `not_after`, so no copy should arrive after it; the margin is
# for clocks. `not_after` comes from the master's clock and `prune` runs on the device's. A Pi has
# no real-time clock: it boots at fake-hwclock's last saved time and steps when NTP answers, and a
# bad NTP answer can put it ahead. If the clock steps back after a prune, a late copy would look
# unexpired and unknown, and run again. A day covers a step of up to a day; an entry is about 200
# bytes, so a day of one command a minute costs about 300 KB.
DEFAULT_PRUNE_MARGIN_MS = 24 * 3600 * 1000

MAX_ID_CHARS = 256  # a ULID has 26: anything far longer is not an id
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS command_journal (
    cmd_id TEXT PRIMARY KEY NOT NULL,
    op TEXT NOT NULL,
    idempotent INTEGER NOT NULL CHECK (idempotent IN (0, 1)),
    not_after_ms INTEGER NOT NULL,
    intent_ms INTEGER NOT NULL,
    result_json TEXT,
    result_ms INTEGER,
    CHECK ((result_json IS NULL) = (result_ms IS NULL))
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS command_journal_not_after ON command_journal (not_after_ms);
CREATE TABLE IF NOT EXISTS journal_counter (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""
_ENTRY_COLUMNS = "cmd_id, op, idempotent, not_after_ms, intent_ms, result_json, result_ms"
_BUMP = (
    "INSERT INTO journal_counter (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
_TOTALS = ("duplicates_total", "interrupted_total", "pruned_total")

# One encoder instance: json.dumps builds a new JSONEncoder on every call with non-default args.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class Decision(StrEnum):
    RUN = "run"  # run the op now, then `finish`
    CACHED = "cached"  # do not run: answer with `Begin.result`
    RUNNING = "running"  # do not run: this process is running it, and will answer when it finishes


@dataclass(frozen=True, slots=True)
class Begin:
    decision: Decision
    result: Mapping[str, Any] | None  # set when CACHED, None otherwise


@dataclass(frozen=True, slots=True)
class JournalEntry:
    cmd_id: str
    op: str
    idempotent: bool
    not_after_ms: int
    intent_ms: int  # when it was first begun
    result: Mapping[str, Any] | None
    result_ms: int | None


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is empty")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"{name} has {len(value)} characters, more than {MAX_ID_CHARS}")
    # Unprintable covers lone surrogates too, which SQLite (UTF-8 only) would refuse mid-transaction.
    if not value.isprintable():
        raise ValueError(f"{name} {value!r} holds unprintable characters")
    return value


def _check_ms(name: str, value: object) -> int:
    # bool is an int to Python, and `True` where a time belongs is always a caller's slip.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int (ms), not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} is {value}, below 0")
    return value


def _check_json(value: object, where: str) -> None:
    """Raise, naming the place, for anything JSON would refuse or silently change (non-str keys)."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}: JSON has no NaN or infinity")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r} of type {type(key).__name__}: JSON keys are str")
            _check_json(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}, which JSON cannot carry")


def _encode_result(result: object) -> str:
    if not isinstance(result, Mapping):
        raise TypeError(f"result must be a mapping, not {type(result).__name__}")
    try:
        _check_json(result, "result")
    except RecursionError:
        raise ValueError("result is nested too deeply, or holds itself") from None
    return _encode(result)


def _decode_result(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return None
    result: dict[str, Any] = json.loads(text)
    return result


def _lock(path: Path) -> int:
    """An exclusive lock on `<path>.lock`, held until the fd is closed or the process dies."""
    lock_path = path.with_name(f"{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(
            f"command journal {path}: in use by another process ({lock_path} is locked); "
            "two agents on one journal would each take the other's running commands for interrupted ones"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    created = not path.exists()
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise JournalError(f"command journal {path}: cannot open: {err}") from err
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check != ("ok",):
            raise JournalError(_corrupt(path, str(check)))
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"command journal {path}: schema version {version} is newer than this saltmarsh's {SCHEMA_VERSION}"
            )
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal":
            raise JournalError(f"command journal {path}: journal_mode is {mode!r}, WAL could not be set")
        # FULL: the WAL is fsynced at every commit, so a call that returned survives a power cut.
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.DatabaseError as err:
        conn.close()
        raise JournalError(_corrupt(path, f"{type(err).__name__}: {err}")) from err
    except BaseException:
        conn.close()
        raise
    if created:
        # SQLite syncs the directory for the WAL it creates, not for the database file itself.
        _fsync_dir(path.parent)
    return conn


def _corrupt(path: Path, why: str) -> str:
    # Unlike the spool, no quarantine and fresh start: a fresh journal forgets exactly the command
    # that was running at the power cut, which the gateway then delivers again because it never
    # saw the result, and a non-idempotent op would run twice.
    return (
        f"command journal {path} is unreadable ({why}); commands cannot run at most once without it. "
        "Moving it aside accepts that a command in flight when it broke may run again."
    )


class CommandJournal:
    """Intent and result per `cmd_id`, durable before each call returns; one process at a time.

    Thread-safe: the MQTT callback thread and the agent's loop may both call it.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int) -> None:
        """Use `CommandJournal.open`."""
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._closed = False
        self._duplicates_unwritten = 0
        self._duplicates_carried = 0  # written in the open transaction; unwritten no more once it commits
        # Begun by this process and not yet finished: an intent without a result that is not here
        # was left by a process that died.
        self._running: set[str] = set()

    @classmethod
    def open(cls, path: Path) -> CommandJournal:
        """Open or create the journal at `path`, creating its parents.

        Raises JournalError naming the file when it is corrupt (it is left in place: see `_corrupt`
        for why there is no quarantine), written by a newer schema, or open in another process.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path)
        try:
            conn = _connect(path)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, conn, lock_fd)

    @contextmanager
    def _transaction(self, what: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """Under the lock. A write transaction is committed, and so fsynced, when the block ends."""
        if self._closed:
            raise JournalError(f"command journal {self.path}: {what}: the journal is closed")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield conn
            conn.execute("COMMIT")
            self._duplicates_unwritten -= self._duplicates_carried
        except BaseException as err:
            # Nothing half-done may stay in an open transaction: the next BEGIN would fail for ever.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise JournalError(f"command journal {self.path}: {what}: {err}") from err
            raise
        finally:
            self._duplicates_carried = 0

    def _carry_duplicates(self, conn: sqlite3.Connection) -> None:
        """Within a transaction that writes anyway: one fsync pays for the count as well."""
        if self._duplicates_unwritten:
            conn.execute(_BUMP, ("duplicates_total", self._duplicates_unwritten))
            self._duplicates_carried = self._duplicates_unwritten

    def begin(self, cmd_id: str, op: str, idempotent: bool, not_after_ms: int, now_ms: int) -> Begin:
        """Decide whether to run `cmd_id` now (see the table in this module's docstring).

        On RUN the intent is on disk before this returns, so a crash while the op runs is seen as
        one at the next delivery. Expiry is the caller's check; the journal only counts runs.
        """
        _check_text("cmd_id", cmd_id)
        _check_text("op", op)
        if not isinstance(idempotent, bool):
            raise TypeError(f"idempotent must be a bool, not {type(idempotent).__name__}")
        _check_ms("not_after_ms", not_after_ms)
        _check_ms("now_ms", now_ms)
        with self._lock:
            with self._transaction(f"begin {cmd_id!r}", write=True) as conn:
                begun = self._decide(conn, cmd_id, op, idempotent, not_after_ms=not_after_ms, now_ms=now_ms)
            # Only once the intent is committed: a failed commit leaves nothing to be running.
            if begun.decision is Decision.RUN:
                self._running.add(cmd_id)
        return begun

    def _decide(
        self, conn: sqlite3.Connection, cmd_id: str, op: str, idempotent: bool, *, not_after_ms: int, now_ms: int
    ) -> Begin:
        """Within `begin`'s transaction."""
        row = conn.execute(
            "SELECT op, idempotent, result_json FROM command_journal WHERE cmd_id = ?", (cmd_id,)
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO command_journal (cmd_id, op, idempotent, not_after_ms, intent_ms) VALUES (?, ?, ?, ?, ?)",
                (cmd_id, op, int(idempotent), not_after_ms, now_ms),
            )
            self._carry_duplicates(conn)
            return Begin(Decision.RUN, None)
        first_op, first_idempotent, result_json = row
        if first_op != op:
            log.warning(
                "a command id came back with another op: the journal answers for the first",
                extra={"event": "command_id_reused", "cmd_id": cmd_id, "first_op": first_op, "op": op},
            )
        if result_json is not None:
            self._duplicates_unwritten += 1
            return Begin(Decision.CACHED, json.loads(result_json))
        if cmd_id in self._running:
            self._duplicates_unwritten += 1
            return Begin(Decision.RUNNING, None)
        conn.execute(_BUMP, ("interrupted_total", 1))
        self._carry_duplicates(conn)
        # Run again only if it was declared idempotent when it was first run as well as now: an op
        # that stopped being idempotent across an upgrade must not be repeated.
        again = bool(first_idempotent) and idempotent
        log.warning(
            "a command was cut short by a crash",
            extra={"event": "command_interrupted", "cmd_id": cmd_id, "op": op, "run_again": again},
        )
        if again:
            return Begin(Decision.RUN, None)
        conn.execute(
            "UPDATE command_journal SET result_json = ?, result_ms = ? WHERE cmd_id = ?",
            (_encode(dict(INTERRUPTED_RESULT)), now_ms, cmd_id),
        )
        return Begin(Decision.CACHED, dict(INTERRUPTED_RESULT))

    def finish(self, cmd_id: str, result: Mapping[str, Any], now_ms: int) -> Mapping[str, Any]:
        """Record `result` for a begun command; the result to send back, as stored.

        First result wins: if one is already recorded it is kept and returned. What is returned
        has been through JSON (a tuple comes back a list), so it is exactly what a later
        duplicate gets from `begin`.
        """
        _check_text("cmd_id", cmd_id)
        text = _encode_result(result)
        _check_ms("now_ms", now_ms)
        with self._lock:
            with self._transaction(f"finish {cmd_id!r}", write=True) as conn:
                row = conn.execute("SELECT result_json FROM command_journal WHERE cmd_id = ?", (cmd_id,)).fetchone()
                if row is None:
                    raise JournalError(f"command journal {self.path}: finish {cmd_id!r}: no intent was recorded")
                if row[0] is None:
                    conn.execute(
                        "UPDATE command_journal SET result_json = ?, result_ms = ? WHERE cmd_id = ?",
                        (text, now_ms, cmd_id),
                    )
                    self._carry_duplicates(conn)
                else:
                    text = row[0]
            self._running.discard(cmd_id)
        stored: dict[str, Any] = json.loads(text)
        return stored

    def lookup(self, cmd_id: str) -> JournalEntry | None:
        _check_text("cmd_id", cmd_id)
        with self._lock, self._transaction(f"lookup {cmd_id!r}", write=False) as conn:
            row = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM command_journal WHERE cmd_id = ?", (cmd_id,)).fetchone()
        if row is None:
            return None
        cmd_id, op, idempotent, not_after_ms, intent_ms, result_json, result_ms = row
        return JournalEntry(
            cmd_id, op, bool(idempotent), not_after_ms, intent_ms, _decode_result(result_json), result_ms
        )

    def prune(self, now_ms: int, margin_ms: int = DEFAULT_PRUNE_MARGIN_MS) -> int:
        """Delete the entries with `not_after_ms + margin_ms < now_ms`; how many.

        A command this process is still running is kept whatever its deadline, so that its
        `finish` finds it.
        """
        _check_ms("now_ms", now_ms)
        _check_ms("margin_ms", margin_ms)
        with self._lock, self._transaction("prune", write=True) as conn:
            deleted = conn.execute(
                "DELETE FROM command_journal WHERE not_after_ms < ? AND cmd_id NOT IN (SELECT value FROM json_each(?))",
                (now_ms - margin_ms, json.dumps(sorted(self._running))),
            ).rowcount
            if deleted:
                conn.execute(_BUMP, ("pruned_total", deleted))
                self._carry_duplicates(conn)
        return int(deleted)

    def counters(self) -> dict[str, int]:
        """entries, running (intent without result, whether running now or left by a crash), and
        the totals since the journal was created, for `saltmarsh status`."""
        with self._lock, self._transaction("counters", write=False) as conn:
            entries, running = conn.execute(
                "SELECT count(*), count(*) - count(result_json) FROM command_journal"
            ).fetchone()
            totals = dict(conn.execute("SELECT name, value FROM journal_counter").fetchall())
        totals["duplicates_total"] = totals.get("duplicates_total", 0) + self._duplicates_unwritten
        return {"entries": entries, "running": running} | {name: int(totals.get(name, 0)) for name in _TOTALS}

    def close(self) -> None:
        """Close the file and release the lock; a second close does nothing."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._duplicates_unwritten:
                    with self._transaction("close", write=True) as conn:
                        self._carry_duplicates(conn)
            finally:
                self._closed = True
                try:
                    self._conn.close()
                finally:
                    os.close(self._lock_fd)
