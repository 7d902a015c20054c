"""Group commit: whatever arrived in the last few milliseconds goes to the spool in one transaction.

One fsync covers a whole batch, so durability costs a share of an fsync per message, never one
each. Acks go to the site broker only after the transaction returned, which is what makes
"acked" mean "on disk".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence, Sized

from gateway.source import Inbound, LocalSource
from saltmarsh.spool import Lane, Record, Segment, Spool

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.2
_GATHER_POLL_S = 0.001
_RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 5.0)


def split_lanes(batch: Sequence[Inbound]) -> list[tuple[Lane, list[Record]]]:
    """One record list per lane, each in arrival order."""
    bulk: list[Record] = []
    keep: list[Record] = []
    for _generation, _mid, lane, topic, payload in batch:
        (bulk if lane is Lane.BULK else keep).append((topic, payload))
    return [(Lane.BULK, bulk), (Lane.KEEP, keep)]


class GroupCommitter:
    """Drains the source's inbox into the spool, acks, then tells the sender what was spooled."""

    def __init__(
        self,
        source: LocalSource,
        spool: Spool,
        on_spooled: Callable[[list[Segment]], None],
        interval_ms: int,
        max_messages: int,
    ) -> None:
        self._source = source
        self._spool = spool
        self._on_spooled = on_spooled
        self._interval_s = interval_ms / 1000.0
        self._max_messages = max_messages
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self.spooled_total = 0
        self.commits_total = 0
        self.commit_failures_total = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Spool everything already received, then return. Call after the source has stopped."""
        self._stopping.set()
        self._source.arrived.set()
        self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        inbox = self._source.inbox
        arrived = self._source.arrived
        while True:
            arrived.clear()
            if not inbox:
                if self._stopping.is_set():
                    return
                arrived.wait(_IDLE_WAIT_S)
                continue
            self._gather(inbox)
            take = min(len(inbox), self._max_messages)
            batch = [inbox.popleft() for _ in range(take)]
            self._commit(batch)

    def _gather(self, inbox: Sized) -> None:
        # Polling beats a wakeup per message: the network thread then only appends.
        if self._interval_s <= 0 or self._stopping.is_set():
            return
        deadline = time.monotonic() + self._interval_s
        while len(inbox) < self._max_messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, _GATHER_POLL_S))

    def _commit(self, batch: list[Inbound]) -> None:
        attempt = 0
        while True:
            try:
                segments = self._spool.append(split_lanes(batch))
                break
            # The committer must outlive any storage hiccup (disk full, locked database): an
            # unspooled batch stays unacked with the broker, so retrying is always safe.
            except Exception as err:
                self.commit_failures_total += 1
                if self._stopping.is_set():
                    log.error(
                        "spool append failed at shutdown; the broker keeps the batch unacked",
                        extra={"event": "spool_append_abandoned", "messages": len(batch), "why": repr(err)},
                    )
                    return
                delay = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                log.error(
                    "spool append failed; batch kept unacked and retried",
                    extra={
                        "event": "spool_append_failed",
                        "messages": len(batch),
                        "retry_in_s": delay,
                        "why": repr(err),
                    },
                )
                attempt += 1
                time.sleep(delay)
        self.spooled_total += len(batch)
        self.commits_total += 1
        self._source.ack(batch)
        if segments:
            self._on_spooled(segments)
