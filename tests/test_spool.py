"""The spool's batch operations and O(1) stats: same answers as walking every segment."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saltmarsh.runtime.spool import Lane, Record, Spool


def records(n: int, tag: str = "r") -> list[Record]:
    return [(f"t/{tag}", f"{tag}{i}".encode()) for i in range(n)]


def test_remove_many_in_one_go_and_ignores_what_is_gone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    segs = [s for i in range(4) for s in spool.append([(Lane.BULK, records(3, f"b{i}"))], now_ms=1000 + i)]
    spool.remove_many([segs[0], segs[2]])
    spool.remove_many([segs[0]])  # already gone: a duplicate PUBACK path must not fail
    assert [s.segno for s in spool.pending()] == [segs[1].segno, segs[3].segno]
    stats = spool.stats()
    assert (stats.depth_messages, stats.segments, stats.oldest_spooled_ms) == (6, 2, 1001)
    spool.close()
    reopened = Spool(tmp_path / "s")
    assert [s.segno for s in reopened.pending()] == [segs[1].segno, segs[3].segno]
    reopened.close()


def test_append_removes_delivered_segments_in_the_same_transaction(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    first = spool.append([(Lane.BULK, records(2)), (Lane.KEEP, records(1, "k"))], now_ms=5)
    second = spool.append([(Lane.BULK, records(4))], now_ms=6, remove=first)
    assert spool.pending() == second
    assert spool.stats().depth_messages == 4
    assert spool.stats().oldest_spooled_ms == 6
    spool.close()


def test_hold_leases_without_reading_and_protects_from_eviction(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", quota_bytes=10_000)
    (held,) = spool.append([(Lane.BULK, [("t", b"x" * 4000)])])
    assert spool.hold(held)
    assert spool.pending() == []
    spool.append([(Lane.BULK, [("t", b"y" * 4000)])])
    spool.append([(Lane.BULK, [("t", b"z" * 4000)])])  # over quota: the held one survives
    assert spool.stats().evicted_segments == 1
    assert spool.lease(held) == [("t", b"x" * 4000)], "held: not evicted although oldest"
    spool.remove(held)
    assert not spool.hold(held)
    spool.close()


def test_stats_running_totals_match_a_full_walk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", quota_bytes=600)
    written = []
    for i in range(30):
        lane = Lane.KEEP if i % 3 == 0 else Lane.BULK
        written += spool.append([(lane, records(1 + i % 4, f"x{i}"))], now_ms=100 + i)
        if i % 5 == 4:
            spool.remove_many(written[-2:])
    stats = spool.stats()
    pending = spool.pending()
    assert stats.depth_messages == sum(s.count for s in pending)
    assert stats.depth_bytes == sum(s.nbytes for s in pending)
    assert stats.segments == len(pending)
    assert stats.oldest_spooled_ms == min(s.spooled_ms for s in pending)
    keep_bytes = sum(s.nbytes for s in pending if s.lane is Lane.KEEP)
    assert stats.over_quota_keep_bytes == max(0, keep_bytes - 600)
    assert stats.evicted_messages > 0
    spool.close()


PAGE_SIZE_CASES = {"sensor's small pages": (1024, 1024), "SQLite's default": (0, 4096)}


@pytest.mark.parametrize("case", sorted(PAGE_SIZE_CASES))
def test_page_size_is_set_on_a_new_spool_and_kept_after(tmp_path: Path, case: str) -> None:
    asked, expected = PAGE_SIZE_CASES[case]
    spool = Spool(tmp_path / "s", page_size=asked)
    spool.append([(Lane.BULK, [("t", b"x" * 300)])])
    spool.close()
    reopened = Spool(tmp_path / "s", page_size=2048)  # an existing file keeps its page size
    assert [r for seg in reopened.pending() for r in reopened.lease(seg) or []] == [("t", b"x" * 300)]
    reopened.close()
    con = sqlite3.connect(tmp_path / "s" / "cache.db")
    try:
        assert con.execute("PRAGMA page_size").fetchone() == (expected,)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        con.close()
