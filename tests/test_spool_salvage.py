"""A damaged spool: quarantined, reported, and what SQLite can still read of it delivered.

The damage is done the ways a power cut or a dying SD card does it: a file cut short, a page
overwritten, a file that is not SQLite at all. Each case counts what came back: whole segments
only, in spool order, none twice, and never anything that was not in the spool."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from saltmarsh.runtime.salvage import salvage
from saltmarsh.runtime.spool import Lane, Record, Spool

SEGMENTS = 300
PER_SEGMENT = 10
PAGE = 4096


def _fill(directory: Path) -> list[list[Record]]:
    spool = Spool(directory)
    written = []
    for n in range(SEGMENTS):
        lane = Lane.KEEP if n % 50 == 0 else Lane.BULK
        records = [
            (f"saltmarsh/v1/s/d/{'alert' if lane is Lane.KEEP else 'reading'}", b"p%06d" % (n * PER_SEGMENT + i))
            for i in range(PER_SEGMENT)
        ]
        spool.append([(lane, records)])
        written.append(records)
    spool.close()
    assert not (directory / "cache.db-wal").exists() or (directory / "cache.db-wal").stat().st_size == 0
    return written


def _truncate(fraction: float) -> Callable[[Path], None]:
    def damage(db: Path) -> None:
        os.truncate(db, int(db.stat().st_size * fraction) // PAGE * PAGE)

    return damage


def _overwrite_page(db: Path) -> None:
    with db.open("r+b") as f:
        f.seek(PAGE * (db.stat().st_size // PAGE // 2))
        f.write(b"\xa5" * PAGE)


def _not_sqlite(db: Path) -> None:
    db.write_bytes(b"this is not an sqlite database" * 100)


# case -> (damage, some come back)
DAMAGE = {
    "cut to 60%": (_truncate(0.6), True),
    "cut to 20%": (_truncate(0.2), True),
    "a page overwritten": (_overwrite_page, True),
    "not SQLite": (_not_sqlite, False),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_spool_is_quarantined_and_its_readable_part_kept(tmp_path: Path, case: str) -> None:
    damage, some_back = DAMAGE[case]
    directory = tmp_path / "spool"
    written = _fill(directory)
    damage(directory / "cache.db")

    spool = Spool.open(directory)
    stats = spool.stats()
    assert stats.quarantined == 1
    moved = list(tmp_path.glob("spool.corrupt-*"))
    assert len(moved) == 1 and (moved[0] / "cache.db").exists(), "the damaged file is kept for a post-mortem"

    back = [spool.lease(seg) or [] for seg in spool.pending()]
    flat = [record for records in back for record in records]
    assert stats.salvaged == len(flat) == stats.depth_messages
    assert (len(flat) > 0) is some_back
    assert len(flat) < SEGMENTS * PER_SEGMENT or case == "a page overwritten"
    # Whole segments, in spool order, none twice, each one that was written.
    positions = [written.index(records) for records in back]
    assert positions == sorted(set(positions))
    spool.close()

    # The new spool is a sound one: it reopens without another quarantine.
    again = Spool.open(directory)
    assert again.stats().quarantined == 0 and again.stats().depth_messages == len(flat)
    again.close()


def test_alerts_keep_their_lane(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    _fill(directory)
    _truncate(0.6)(directory / "cache.db")
    spool = Spool.open(directory)
    lanes = {seg.lane for seg in spool.pending()}
    assert Lane.KEEP in lanes and Lane.BULK in lanes
    for seg in spool.pending():
        topics = {topic for topic, _ in spool.lease(seg) or []}
        assert topics == {f"saltmarsh/v1/s/d/{'alert' if seg.lane is Lane.KEEP else 'reading'}"}
    spool.close()


def test_salvage_of_a_missing_file_finds_nothing(tmp_path: Path) -> None:
    found = salvage(tmp_path / "absent" / "cache.db")
    assert found.segments == [] and found.error
