"""A crash-safe disk spool on diskcache (SQLite, WAL, synchronous=FULL).

Used by the sensor agent, the gateway forwarder and the Salt engine: one implementation.

Messages are stored in *segments*: every group commit writes the batch that arrived since the
last one as one diskcache value in one transaction, so the per-message cost of durability is a
share of one fsync rather than one each. A segment is deleted only once every message in it is
confirmed downstream; after a crash a half-confirmed segment is sent again whole, and the sink's
`(device, boot, seq)` key makes the repeat harmless.

Segment metadata (lane, order, message count, bytes, time spooled) lives in the diskcache key,
so reopening a spool of a million messages reads only keys, never payloads.

Two lanes: BULK (readings) may be evicted, oldest first, when the disk quota is reached;
KEEP (events, alerts) never is. Every evicted message is counted, and the counters are written
in the same transaction as the eviction, so they stay exact across restarts.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import diskcache

from saltmarsh.contract.errors import SpoolError
from saltmarsh.runtime.salvage import COUNTERS_KEY as _COUNTERS_KEY
from saltmarsh.runtime.salvage import SEGMENT_PREFIX, Salvage, check_segment, salvage

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">HI")
_DB_FILE = "cache.db"
RESTORE_BATCH = 500  # salvaged segments spooled again per transaction

Record = tuple[str, bytes]
"""One spooled message: topic and payload, exactly as received."""


class Lane(StrEnum):
    KEEP = "keep"  # events and alerts: never evicted
    BULK = "bulk"  # readings: evicted oldest first under the quota


@dataclass(frozen=True, slots=True)
class Segment:
    lane: Lane
    segno: int
    count: int
    nbytes: int
    spooled_ms: int

    @property
    def key(self) -> str:
        return f"{SEGMENT_PREFIX}{self.segno:016d}/{self.lane.value}/{self.count}/{self.nbytes}/{self.spooled_ms}"

    @classmethod
    def from_key(cls, key: str) -> Segment:
        _, segno, lane, count, nbytes, spooled_ms = key.split("/")
        return cls(Lane(lane), int(segno), int(count), int(nbytes), int(spooled_ms))


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth_messages: int
    depth_bytes: int
    segments: int
    oldest_spooled_ms: int | None
    evicted_messages: int
    evicted_segments: int
    quota_bytes: int
    over_quota_keep_bytes: int  # bytes of never-evicted messages above the quota
    quarantined: int
    salvaged: int = 0  # messages read back off a quarantined spool and spooled again


def encode_records(records: Iterable[Record]) -> bytes:
    parts: list[bytes] = []
    for topic, payload in records:
        topic_bytes = topic.encode()
        parts += (_HEADER.pack(len(topic_bytes), len(payload)), topic_bytes, payload)
    return b"".join(parts)


def decode_records(blob: bytes) -> list[Record]:
    out: list[Record] = []
    append = out.append
    unpack = _HEADER.unpack_from
    pos = 0
    end = len(blob)
    size = _HEADER.size
    while pos < end:
        topic_len, payload_len = unpack(blob, pos)
        pos += size
        topic_end = pos + topic_len
        append((blob[pos:topic_end].decode(), blob[topic_end : topic_end + payload_len]))
        pos = topic_end + payload_len
    if pos != end:
        raise SpoolError(f"segment truncated: {pos} of {end} bytes decoded")
    return out


def _quick_check(directory: Path) -> str | None:
    """None when the SQLite file is sound (or absent), else why not."""
    db = directory / _DB_FILE
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        return str(err)
    return None if row and row[0] == "ok" else str(row)


def _create_with_page_size(db: Path, page_size: int) -> None:
    """A new, empty spool file with SQLite pages of `page_size`; an existing one keeps its own.

    A commit writes every page it changed to the WAL (the table's, its indexes', diskcache's
    counters'), then to the database at the checkpoint. A sensor commits one small reading at a
    time, so its pages are mostly empty: with 1 KiB pages an SD card is written about half as
    much per reading as with SQLite's 4 KiB default (bench powercut: bytes per reading).
    """
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    try:
        con.execute(f"PRAGMA page_size={int(page_size)}")
        con.execute("PRAGMA journal_mode=wal")
        # The page size is fixed once the file has a page: make one.
        con.execute("CREATE TABLE saltmarsh_page_size (x)")
        con.execute("DROP TABLE saltmarsh_page_size")
    finally:
        con.close()


class Spool:
    """Segments in spool order, with a quota and leases that keep in-flight segments from eviction."""

    def __init__(self, directory: Path, quota_bytes: int = 0, quarantined: int = 0, page_size: int = 0) -> None:
        self.directory = directory
        if page_size:
            _create_with_page_size(directory / _DB_FILE, page_size)
        self.quota_bytes = quota_bytes
        self._quarantined = quarantined
        self._salvaged = 0
        self._cache = diskcache.Cache(
            str(directory),
            # FULL: a commit that returned survives power loss, not just a process crash.
            sqlite_synchronous=2,
            sqlite_journal_mode="wal",
            # diskcache writes large values to side files without fsync; keep all in SQLite.
            disk_min_file_size=2**31 - 1,
            eviction_policy="none",
            size_limit=2**62,
            cull_limit=0,
            statistics=0,
            # Memory stays flat however deep the spool: no memory-mapped reads (mapped pages
            # count as resident) and a small page cache, since every segment is read once.
            sqlite_mmap_size=0,
            sqlite_cache_size=2**10,
        )
        self._lock = threading.Lock()
        # In segno order, which is spool order: appends only ever add a higher segno.
        self._segments: dict[int, Segment] = {}
        # The same segnos in order, pruned lazily from the left: the oldest segment in O(1).
        self._order: deque[int] = deque()
        self._leased: set[int] = set()
        self._depth_messages = 0
        self._depth_bytes = 0
        self._keep_bytes = 0
        counters = self._cache.get(_COUNTERS_KEY, default=None)
        parsed = json.loads(counters) if isinstance(counters, str) else {}
        self._evicted_messages = int(parsed.get("evicted_messages", 0))
        self._evicted_segments = int(parsed.get("evicted_segments", 0))
        found = [
            Segment.from_key(k) for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(SEGMENT_PREFIX)
        ]
        for seg in sorted(found, key=lambda s: s.segno):
            self._track(seg)
        self._next_segno = max(self._segments, default=0) + 1

    @classmethod
    def open(cls, directory: Path, quota_bytes: int = 0, page_size: int = 0) -> Spool:
        """Open, or quarantine an unreadable spool and start a fresh one; never refuse to run."""
        directory.mkdir(parents=True, exist_ok=True)
        problem = _quick_check(directory)
        if problem is None:
            try:
                return cls(directory, quota_bytes, page_size=page_size)
            except (sqlite3.DatabaseError, ValueError, OSError) as err:
                problem = f"{type(err).__name__}: {err}"
        moved = directory.with_name(f"{directory.name}.corrupt-{int(time.time())}")
        shutil.move(str(directory), str(moved))
        directory.mkdir(parents=True)
        spool = cls(directory, quota_bytes, quarantined=1, page_size=page_size)
        found = salvage(moved / _DB_FILE)
        lost_rows = spool._restore(found)
        log.error(
            "spool quarantined; what could be read of it is spooled again",
            extra={
                "event": "spool_quarantined",
                "spool": str(directory),
                "moved_to": str(moved),
                "why": problem,
                "salvaged_messages": spool._salvaged,
                "salvaged_segments": len(found.segments) - lost_rows,
                "unreadable_rows": found.unreadable + lost_rows,
                "first_error": found.error,
            },
        )
        return spool

    def _restore(self, found: Salvage) -> int:
        """Spool again the segments read off a quarantined file, in their order; how many were not whole."""
        batches: list[tuple[Lane, Sequence[Record]]] = []
        not_whole = 0
        oldest_ms: int | None = None
        for key, blob in found.segments:
            try:
                seg = Segment.from_key(key)
                records = decode_records(blob) if check_segment(key, blob) is None else None
            except (ValueError, SpoolError, struct.error, UnicodeDecodeError):
                records = None
            if not records:
                not_whole += 1
                continue
            oldest_ms = seg.spooled_ms if oldest_ms is None else oldest_ms
            batches.append((seg.lane, records))
            self._salvaged += len(records)
        with self._lock:
            self._evicted_messages = found.counters.get("evicted_messages", 0)
            self._evicted_segments = found.counters.get("evicted_segments", 0)
        for start in range(0, len(batches), RESTORE_BATCH):
            self.append(batches[start : start + RESTORE_BATCH], now_ms=oldest_ms)
        with self._lock, self._cache.transact():
            self._cache.set(_COUNTERS_KEY, self._counters_json())
        return not_whole

    def _track(self, seg: Segment) -> None:
        self._segments[seg.segno] = seg
        self._order.append(seg.segno)
        self._depth_messages += seg.count
        self._depth_bytes += seg.nbytes
        if seg.lane is Lane.KEEP:
            self._keep_bytes += seg.nbytes

    def _untrack(self, seg: Segment) -> None:
        del self._segments[seg.segno]
        self._leased.discard(seg.segno)
        self._depth_messages -= seg.count
        self._depth_bytes -= seg.nbytes
        if seg.lane is Lane.KEEP:
            self._keep_bytes -= seg.nbytes

    def append(
        self,
        batches: Sequence[tuple[Lane, Sequence[Record]]],
        now_ms: int | None = None,
        *,
        remove: Sequence[Segment] = (),
    ) -> list[Segment]:
        """Write one segment per non-empty lane batch in a single durable transaction.

        `remove` deletes delivered segments in the same transaction, so that a busy forwarder
        pays one fsync per cycle, not one for its appends and another for its deletes.
        """
        spooled_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            written: list[Segment] = []
            evicted: list[Segment] = []
            with self._cache.transact():
                self._delete(remove)
                for lane, records in batches:
                    if not records:
                        continue
                    blob = encode_records(records)
                    seg = Segment(lane, self._next_segno, len(records), len(blob), spooled_ms)
                    self._next_segno += 1
                    self._cache.set(seg.key, blob)
                    self._track(seg)
                    written.append(seg)
                evicted = self._evict_over_quota()
                if evicted:
                    self._cache.set(_COUNTERS_KEY, self._counters_json())
            if evicted:
                log.warning(
                    "spool quota reached: evicted oldest readings",
                    extra={
                        "event": "spool_evicted",
                        "evicted_messages": sum(s.count for s in evicted),
                        "evicted_total": self._evicted_messages,
                        "quota_bytes": self.quota_bytes,
                    },
                )
            return [s for s in written if s.segno in self._segments]

    def _evict_over_quota(self) -> list[Segment]:
        if self.quota_bytes <= 0 or self._depth_bytes <= self.quota_bytes:
            return []
        evicted: list[Segment] = []
        self._prune_order()
        for segno in list(self._order):
            if self._depth_bytes <= self.quota_bytes:
                break
            seg = self._segments.get(segno)
            if seg is None or seg.lane is not Lane.BULK or segno in self._leased:
                continue
            self._cache.delete(seg.key)
            self._untrack(seg)
            self._evicted_messages += seg.count
            self._evicted_segments += 1
            evicted.append(seg)
        return evicted

    def _prune_order(self) -> None:
        order = self._order
        segments = self._segments
        while order and order[0] not in segments:
            order.popleft()

    def _counters_json(self) -> str:
        return json.dumps({"evicted_messages": self._evicted_messages, "evicted_segments": self._evicted_segments})

    def pending(self) -> list[Segment]:
        """Segments not leased, oldest first."""
        with self._lock:
            leased = self._leased
            return [seg for segno, seg in self._segments.items() if segno not in leased]

    def hold(self, seg: Segment) -> bool:
        """Lease a segment without reading it, for a caller that still has its records in memory.

        False when the segment is gone (evicted by the quota since it was written).
        """
        with self._lock:
            if seg.segno not in self._segments:
                return False
            self._leased.add(seg.segno)
            return True

    def lease(self, seg: Segment) -> list[Record] | None:
        """Read a segment and protect it from eviction until `remove` or `release`.

        None when the segment is gone (evicted) or unreadable; an unreadable one is dropped and
        logged, since keeping it would block the spool forever.
        """
        with self._lock:
            if seg.segno not in self._segments:
                return None
            self._leased.add(seg.segno)
        blob = self._cache.get(seg.key, default=None)
        try:
            if not isinstance(blob, bytes):
                raise SpoolError(f"segment {seg.key} has no bytes value")
            return decode_records(blob)
        except (SpoolError, struct.error, UnicodeDecodeError) as err:
            log.error(
                "unreadable spool segment dropped",
                extra={"event": "spool_segment_corrupt", "segment": seg.key, "messages": seg.count, "why": str(err)},
            )
            self.remove(seg)
            return None

    def release(self, seg: Segment) -> None:
        """Give a leased segment back, unsent (the uplink dropped)."""
        with self._lock:
            self._leased.discard(seg.segno)

    def remove(self, seg: Segment) -> None:
        """Delete a segment once every message in it is confirmed downstream."""
        self.remove_many([seg])

    def remove_many(self, segments: Sequence[Segment]) -> None:
        """Delete confirmed segments in one transaction; ones already gone are skipped."""
        if not segments:
            return
        with self._lock, self._cache.transact():
            self._delete(segments)

    def _delete(self, segments: Sequence[Segment]) -> None:
        """Within a transaction, under the lock."""
        for seg in segments:
            if seg.segno in self._segments:
                self._cache.delete(seg.key)
                self._untrack(seg)

    def stats(self) -> SpoolStats:
        """O(1): running totals, so a status poll never walks a deep spool."""
        with self._lock:
            self._prune_order()
            oldest = self._segments[self._order[0]].spooled_ms if self._order else None
            return SpoolStats(
                depth_messages=self._depth_messages,
                depth_bytes=self._depth_bytes,
                segments=len(self._segments),
                oldest_spooled_ms=oldest,
                evicted_messages=self._evicted_messages,
                evicted_segments=self._evicted_segments,
                quota_bytes=self.quota_bytes,
                over_quota_keep_bytes=max(0, self._keep_bytes - self.quota_bytes) if self.quota_bytes else 0,
                quarantined=self._quarantined,
                salvaged=self._salvaged,
            )

    def close(self) -> None:
        self._cache.close()
