"""What a corrupt spool still holds: every segment whose row reads back whole.

A spool that fails its integrity check is moved aside (quarantined) and a fresh one takes its
place (`Spool.open`); the messages of the old one that SQLite can still read are then appended
to the new one, so a damaged page costs the messages on it, not the whole spool. Rows are read
one rowid range at a time: a query that hits a damaged page fails alone, and the reader steps
past it rather than giving up on the rows after it. Nothing is written to the quarantined file
beyond what SQLite's own recovery of its WAL does on open.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

# A corrupt table's highest rowid may itself be unreadable: probing stops after this many
# unreadable rowids in a row.
MAX_UNREADABLE_RUN = 10_000
SEGMENT_PREFIX = "seg/"
COUNTERS_KEY = "meta/counters"


@dataclass(slots=True)
class Salvage:
    """Rows read off a damaged spool file, in spool order."""

    segments: list[tuple[str, bytes]] = field(default_factory=list)  # (segment key, encoded records)
    counters: dict[str, int] = field(default_factory=dict)  # the exact eviction counters, if readable
    unreadable: int = 0  # rowids whose row could not be read, or whose value was not a segment
    error: str = ""  # the first error met, for the log


def _row(conn: sqlite3.Connection, after: int) -> tuple[int, object, object] | None:
    found = conn.execute(
        "SELECT rowid, key, value FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT 1", (after,)
    ).fetchone()
    return None if found is None else (int(found[0]), found[1], found[2])


def _highest_rowid(conn: sqlite3.Connection) -> int | None:
    try:
        row = conn.execute("SELECT max(rowid) FROM Cache").fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None or row[0] is None else int(row[0])


def salvage(db: Path) -> Salvage:
    """Every readable row of a spool's `cache.db`; never raises for what the file holds."""
    out = Salvage()
    if not db.is_file():
        out.error = f"{db} does not exist"
        return out
    try:
        conn = sqlite3.connect(db, timeout=5)
        # A file cut short has fewer pages than its header says, which SQLite otherwise refuses
        # outright; with this it reads the pages that are there.
        conn.execute("PRAGMA writable_schema=ON")
    except sqlite3.DatabaseError as err:
        out.error = f"{type(err).__name__}: {err}"
        return out
    try:
        _read_rows(conn, out)
    finally:
        conn.close()
    return out


def _read_rows(conn: sqlite3.Connection, out: Salvage) -> None:
    highest = _highest_rowid(conn)
    after, failures = 0, 0
    while highest is None or after < highest:
        try:
            row = _row(conn, after)
        except sqlite3.DatabaseError as err:
            out.error = out.error or f"{type(err).__name__}: {err}"
            if "not a database" in str(err):
                return  # no page of it is SQLite's: nothing to step past
            out.unreadable += 1
            failures += 1
            after += 1  # the damaged page holds this rowid, or the search through it failed
            if failures >= MAX_UNREADABLE_RUN:
                return
            continue
        if row is None:
            return
        failures = 0
        after, key, value = row
        _take(out, key, value)


def _take(out: Salvage, key: object, value: object) -> None:
    if isinstance(key, str) and key.startswith(SEGMENT_PREFIX) and isinstance(value, bytes):
        out.segments.append((key, value))
    elif key == COUNTERS_KEY and isinstance(value, str):
        try:
            parsed = json.loads(value)
            out.counters = {k: int(v) for k, v in parsed.items() if isinstance(v, int)}
        except (ValueError, AttributeError):
            out.unreadable += 1
    else:
        out.unreadable += 1


def check_segment(key: str, blob: bytes) -> str | None:
    """None if a salvaged row is a whole segment (its key's count and size match), else why not."""
    parts = key.split("/")
    if len(parts) != 6 or not parts[3].isdigit() or not parts[4].isdigit():
        return f"not a segment key: {key[:80]!r}"
    if int(parts[4]) != len(blob):
        return f"{key}: {len(blob)} bytes, the key says {parts[4]}"
    return None
