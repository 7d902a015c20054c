"""SQLite statements that SQLite's own busy handler does not wait for.

Switching a new database file to WAL takes an exclusive lock without calling the busy handler:
two processes opening a new file at once (two ingesters on one sink, `saltmarsh cmd` beside the
relay engine on one rollout store) fail one of them at once with "database is locked".
"""

from __future__ import annotations

import sqlite3
import time

RETRY_S = 0.01


def execute_waiting(conn: sqlite3.Connection, statement: str, timeout_s: float) -> None:
    """`statement`, tried again while the file is locked, for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_S)
