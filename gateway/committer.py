"""Group commit: whatever arrived since the last commit goes to the spool in one transaction.

One fsync covers a whole batch, so durability costs a share of an fsync per message, never one
each; and the segments the uplink confirmed since the last commit are deleted in the same
transaction, so deletes cost no fsync of their own. The fsync runs in this thread, where SQLite
releases the GIL, so the loop thread keeps reading and publishing meanwhile.

Acks go to the site broker only after the transaction returned, which is what makes "acked"
mean "on disk": the loop thread sends them when it collects the `Committed` result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.source import Inbound
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from saltmarsh.runtime.spool import Lane, Record, Segment, Spool

log = logging.getLogger(__name__)

# A local disk: no fleet retries with us, so no jitter.
RETRY_BACKOFF = BackoffPolicy(base_s=0.1, cap_s=5.0, jitter=False)
# Deletes of confirmed segments wait this long for an append to ride with, so that a quiet
# site pays one fsync per commit, not two. A crash meanwhile only resends what was confirmed.
REMOVAL_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class Committed:
    """A batch now durably in the spool, and its segments with their records (for the live path)."""

    batch: Inbound
    segments: list[tuple[Segment, list[Record]]]


class GroupCommitter:
    """Spools batches handed over by the loop thread; reports each back through `on_done`."""

    def __init__(self, spool: Spool, on_done: Callable[[], None], interval_ms: int) -> None:
        self._spool = spool
        self._on_done = on_done
        self._interval_s = interval_ms / 1000.0
        self._cond = threading.Condition()
        self._batches: deque[Inbound] = deque()
        self._removals: list[Segment] = []
        self._removals_since = 0.0  # monotonic: when the oldest pending removal was handed over
        self._stopping = False
        self._gather = True
        self._waiting = False  # in wait(): only then is a notify worth its cost
        self.done: deque[Committed] = deque()  # appended here, popped by the loop thread
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self.spooled_total = 0
        self.commits_total = 0
        self.commit_failures_total = 0
        self.removed_total = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Spool everything already handed over and apply the removals, then return."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, batch: Inbound, gather: bool = True) -> None:
        """Spool `batch`; with `gather`, after `interval_ms`, so that what arrives meanwhile shares the fsync."""
        with self._cond:
            self._batches.append(batch)
            self._gather = gather
            if self._waiting:
                self._cond.notify()

    def remove(self, segments: list[Segment]) -> None:
        """Delivered segments: deleted with the next commit (or on their own when idle)."""
        if not segments:
            return
        with self._cond:
            first = not self._removals
            if first:
                self._removals_since = time.monotonic()
            self._removals += segments
            if first and self._waiting:
                self._cond.notify()  # to wait for REMOVAL_DELAY_S; later ones change nothing

    @property
    def queued(self) -> int:
        """Batches handed over and not yet committed."""
        return len(self._batches)

    def _removals_due(self) -> bool:
        """Under the lock: deletes that have waited long enough for an append."""
        return bool(self._removals) and time.monotonic() >= self._removals_since + REMOVAL_DELAY_S

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._batches or self._stopping or self._removals_due()):
                    self._waiting = True
                    self._cond.wait(
                        self._removals_since + REMOVAL_DELAY_S - time.monotonic() if self._removals else None
                    )
                    self._waiting = False
                if self._stopping and not (self._batches or self._removals):
                    return
            if self._interval_s > 0 and self._gather and self._batches and not self._stopping:
                # A short gather: one fsync then covers what arrives meanwhile, at a bounded
                # cost in latency; under load the previous fsync already did the gathering.
                time.sleep(self._interval_s)
            with self._cond:
                batches = list(self._batches)
                self._batches.clear()
                removals = self._removals
                self._removals = []
            self._commit(batches, removals)

    def _commit(self, batches: list[Inbound], removals: list[Segment]) -> None:
        bulk: list[Record] = []
        keep: list[Record] = []
        for batch in batches:
            bulk += batch.bulk
            keep += batch.keep
        attempt = 0
        while True:
            try:
                segments = self._spool.append([(Lane.BULK, bulk), (Lane.KEEP, keep)], remove=removals)
                break
            # The committer must outlive any storage hiccup (disk full, locked database): an
            # unspooled batch stays unacked with the broker, so retrying is always safe.
            except Exception as err:
                self.commit_failures_total += 1
                if self._stopping:
                    log.error(
                        "spool append failed at shutdown; the broker keeps the batch unacked",
                        extra={"event": "spool_append_abandoned", "messages": len(bulk) + len(keep), "why": repr(err)},
                    )
                    return
                attempt += 1
                delay = backoff_delay(attempt, RETRY_BACKOFF, 0.0)
                log.error(
                    "spool append failed; batch kept unacked and retried",
                    extra={
                        "event": "spool_append_failed",
                        "messages": len(bulk) + len(keep),
                        "retry_in_s": delay,
                        "why": repr(err),
                    },
                )
                time.sleep(delay)
        self.removed_total += len(removals)
        if not batches:
            return
        self.spooled_total += len(bulk) + len(keep)
        self.commits_total += 1
        # One segment per lane at most; a segment the quota evicted at once is simply absent.
        with_records = [(seg, bulk if seg.lane is Lane.BULK else keep) for seg in segments]
        # Acks are per batch (per connection generation); the segments travel with the last one.
        for batch in batches[:-1]:
            self.done.append(Committed(batch, []))
        self.done.append(Committed(batches[-1], with_records))
        self._on_done()
