"""Which spooled segment goes up next: live first, then the backlog, alerts before readings.

When the uplink (re)connects, everything already in the spool is *backlog*; segments spooled
after that are *live*. Live segments go at full speed, so an operator sees the present as soon
as the link is back; the backlog drains behind them under the token bucket, KEEP lane (events,
alerts) before BULK (readings), oldest first within a lane.

Pure bookkeeping: no I/O, no clock, no threads. The sender owns one `SendQueue`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import StrEnum

from saltmarsh.runtime.spool import Lane, Segment


class Phase(StrEnum):
    LIVE = "live"  # spooled since the uplink came up: unlimited
    BACKLOG = "backlog"  # spooled before: rate-limited


class SendQueue:
    """Segments waiting to be leased and published, split into live and backlog."""

    def __init__(self) -> None:
        self.boundary = 0  # newest segno that counts as backlog
        self._live: deque[Segment] = deque()
        self._backlog: dict[Lane, deque[Segment]] = {Lane.KEEP: deque(), Lane.BULK: deque()}
        self.live_messages = 0
        self.backlog_messages = 0

    def restart(self, pending: Iterable[Segment], live_since_ms: int | None = None) -> None:
        """The uplink came (back) up: `pending` is what the spool holds now, backlog but for the newest.

        Segments spooled at or after `live_since_ms` (the last moment the uplink was known to be
        down) count as live: they arrived while the forwarder was reconnecting to a broker that
        was already back, so they are the present, not history, and must not wait behind the
        whole backlog. Replaces whatever was queued, because `pending` is the spool's own
        up-to-date view.
        """
        self.clear()
        for seg in sorted(pending, key=lambda s: s.segno):
            if live_since_ms is not None and seg.spooled_ms >= live_since_ms:
                self._live.append(seg)
                self.live_messages += seg.count
            else:
                self._backlog[seg.lane].append(seg)
                self.backlog_messages += seg.count
            self.boundary = max(self.boundary, seg.segno)

    def mark_boundary(self, segno: int) -> None:
        """Segments up to `segno` were spooled before the uplink came up (some may be in flight)."""
        self.boundary = max(self.boundary, segno)

    def offer(self, seg: Segment) -> bool:
        """A freshly spooled segment; False if `restart` already had it."""
        if seg.segno <= self.boundary:
            return False
        self._live.append(seg)
        self.live_messages += seg.count
        return True

    def retry(self, seg: Segment) -> None:
        """A segment that failed upstream goes back to the front of its backlog lane."""
        self._backlog[seg.lane].appendleft(seg)
        self.backlog_messages += seg.count

    def clear(self) -> None:
        """The uplink dropped: forget queued segments (they stay in the spool); keep the boundary."""
        self._live.clear()
        for lane in self._backlog.values():
            lane.clear()
        self.live_messages = 0
        self.backlog_messages = 0

    def next_live(self) -> Segment | None:
        if not self._live:
            return None
        seg = self._live.popleft()
        self.live_messages -= seg.count
        return seg

    def next_backlog(self) -> Segment | None:
        for lane in (Lane.KEEP, Lane.BULK):
            queue = self._backlog[lane]
            if queue:
                seg = queue.popleft()
                self.backlog_messages -= seg.count
                return seg
        return None

    def has_live(self) -> bool:
        return bool(self._live)

    def has_backlog(self) -> bool:
        return any(self._backlog.values())


def batch_size(phase: Phase, window_room: int, remaining: int, tokens: int) -> int:
    """How many messages of the current segment to hand to the uplink now.

    Bounded by the PUBACK window and by what is left of the segment; backlog also by tokens.
    """
    limit = min(window_room, remaining)
    if phase is Phase.BACKLOG:
        limit = min(limit, tokens)
    return max(0, limit)
