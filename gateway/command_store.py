"""The gateway's durable hold of commands on their way down: one SQLite file, fsynced per change.

In: a command taken from the cloud broker (its parsed body and its payload as signed), before
the broker is acknowledged; a target's outcome as it comes back; the clock. Out: what is held
for each device, in arrival order, and what has expired. A command stays here until its target
reports a final outcome, or its deadline passes; so a forwarder, a site broker or a device may
restart at any moment without the command being lost or forgotten.

The table holds the payload exactly as the master signed it: the device checks that signature,
so the gateway must not re-encode what it forwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from saltmarsh.contract.command import Command
from saltmarsh.contract.errors import SpoolError

SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    cmd_id       TEXT    PRIMARY KEY,
    device       TEXT    NOT NULL,
    rollout      TEXT    NOT NULL,
    coalesce_key TEXT,
    not_after_ms INTEGER NOT NULL,
    run_timeout_s REAL   NOT NULL,
    topic        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    received_ms  INTEGER NOT NULL,
    -- held: to deliver; running: the device said so, too late to supersede; superseded: a newer
    -- command with its coalesce key replaced it, and its CANCELED outcome is not spooled yet.
    status       TEXT    NOT NULL DEFAULT 'held'
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_by_device ON held (device, received_ms);
"""


@dataclass(frozen=True, slots=True)
class Held:
    cmd_id: str
    device: str
    rollout: str
    coalesce: str | None
    not_after_ms: int
    run_timeout_s: float
    topic: str
    payload: bytes
    received_ms: int
    status: str


HELD, RUNNING, SUPERSEDED = "held", "running", "superseded"
_COLUMNS = "cmd_id, device, rollout, coalesce_key, not_after_ms, run_timeout_s, topic, payload, received_ms, status"


def _held(row: tuple[object, ...]) -> Held:
    cmd_id, device, rollout, coalesce, not_after_ms, run_timeout_s, topic, payload, received_ms, status = row
    return Held(
        str(cmd_id),
        str(device),
        str(rollout),
        None if coalesce is None else str(coalesce),
        int(not_after_ms),  # type: ignore[call-overload]
        float(run_timeout_s),  # type: ignore[arg-type]
        str(topic),
        bytes(payload),  # type: ignore[call-overload]
        int(received_ms),  # type: ignore[call-overload]
        str(status),
    )


class CommandStore:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> CommandStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise SpoolError(f"command store {path}: {err}") from err
        return cls(conn, path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):  # a closed or broken connection has none
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise SpoolError(f"command store {self.path}: {err}") from err
            raise

    def hold(self, cmd: Command, payload: bytes, now_ms: int) -> tuple[bool, list[Held]]:
        """Keep `cmd` (durably, before the cloud broker is acknowledged); returns whether it is
        new (a redelivery from the cloud is not), and the held commands it supersedes: same
        target and coalesce key, issued before it, not yet running. Those are marked
        superseded, to be released once their CANCELED outcome is spooled. A command that
        arrives after the one that replaces it is kept as superseded itself."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM held WHERE cmd_id = ?", (cmd.cmd_id,)).fetchone():
                return False, []
            status = HELD
            superseded: list[Held] = []
            if cmd.coalesce is not None:
                same_key = (cmd.device, cmd.coalesce, cmd.cmd_id)
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM held WHERE device = ? AND coalesce_key = ? AND status = 'held'"
                    " AND cmd_id < ? ORDER BY cmd_id",
                    same_key,
                ).fetchall()
                superseded = [_held(r) for r in rows]
                conn.executemany(
                    "UPDATE held SET status = 'superseded' WHERE cmd_id = ?", [(h.cmd_id,) for h in superseded]
                )
                newer = "SELECT 1 FROM held WHERE device = ? AND coalesce_key = ? AND cmd_id > ?"
                if conn.execute(newer, same_key).fetchone():
                    status = SUPERSEDED
            conn.execute(
                f"INSERT INTO held ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cmd.cmd_id,
                    cmd.device,
                    cmd.rollout,
                    cmd.coalesce,
                    cmd.not_after_ms,
                    cmd.run_timeout_s,
                    str(cmd.topic),
                    payload,
                    now_ms,
                    status,
                ),
            )
        if status == SUPERSEDED:
            held = self.get(cmd.cmd_id)
            assert held is not None
            superseded.append(held)
        return True, [dataclasses.replace(h, status=SUPERSEDED) for h in superseded]

    def mark_running(self, cmd_id: str) -> bool:
        """The target said RUNNING: no longer supersedable. False if it is not held (any more)."""
        with self._write() as conn:
            before = conn.total_changes
            conn.execute("UPDATE held SET status = 'running' WHERE cmd_id = ? AND status = 'held'", (cmd_id,))
            return conn.total_changes > before

    def release(self, cmd_ids: list[str]) -> int:
        """Let go of commands whose target reported a final outcome (or that expired)."""
        if not cmd_ids:
            return 0
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM held WHERE cmd_id = ?", [(c,) for c in cmd_ids])
            return conn.total_changes - before

    def expired(self, now_ms: int) -> list[Held]:
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM held WHERE not_after_ms <= ? ORDER BY cmd_id", (now_ms,)
        ).fetchall()
        return [_held(r) for r in rows]

    def all(self) -> list[Held]:
        return [_held(r) for r in self._conn.execute(f"SELECT {_COLUMNS} FROM held ORDER BY cmd_id").fetchall()]

    def get(self, cmd_id: str) -> Held | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM held WHERE cmd_id = ?", (cmd_id,)).fetchone()
        return None if row is None else _held(row)

    def depth(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM held").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
