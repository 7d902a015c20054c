"""The ingester's sink stage: batch validated messages, write them, hand back what is durable.

Outcomes of the validate stage are gathered, with their packet ids, into batches of one
connection each. A batch is written when it holds `max_messages` or `interval_s` after its first
message, in one `Sink.write`; `write_due` and `drain` return the batches that committed, for the
service to ack. When the sink fails, the same batch is retried with backoff; nothing is acked
meanwhile, so the broker's receive maximum bounds what piles up behind it.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from cloud_ingester.confirm import Sender
from saltmarsh.contract.confirmation import ConfirmationBatch
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy
from saltmarsh.runtime.status import RateMeter
from saltmarsh.sinks.base import DeadLetter, Delivery, Sink, WriteResult

log = logging.getLogger(__name__)

WRITE_BACKOFF = BackoffPolicy(base_s=0.1, cap_s=5.0)


class IngesterCounters:
    """What the status file shows; updated by the loop thread, read by the status thread."""

    def __init__(self, sink_name: str) -> None:
        self._lock = threading.Lock()
        self.sink_name = sink_name
        self.received_total = 0
        self.written_total = 0
        self.duplicates_total = 0
        self.dead_letters_total = 0
        self.dead_letters_by_reason: Counter[str] = Counter()
        self.acked_total = 0
        self.write_failures_total = 0
        self.confirmed_total = 0  # messages confirmed to their forwarders
        self.confirmations_sent_total = 0
        self.skipped_total = 0  # confirmations and commands seen under the shared subscription: not data
        self.sink_ok = True
        self.sink_why = ""
        self.last_batch_ms = 0.0
        self.last_batch_size = 0
        self._batch_ms: deque[float] = deque(maxlen=100)
        self._write_rate = RateMeter()

    def batch_committed(self, result: WriteResult, dead_letters: list[DeadLetter], size: int, ms: float) -> None:
        with self._lock:
            self.written_total += result.written
            self.duplicates_total += result.duplicates
            self.dead_letters_total += result.dead_letters
            self.dead_letters_by_reason.update(d.reason.value for d in dead_letters)
            self.sink_ok, self.sink_why = True, ""
            self.last_batch_ms, self.last_batch_size = ms, size
            self._batch_ms.append(ms)
            self._write_rate.add(result.written)

    def acked(self, count: int) -> None:
        with self._lock:
            self.acked_total += count

    def confirmed(self, messages: int, confirmations: int) -> None:
        with self._lock:
            self.confirmed_total += messages
            self.confirmations_sent_total += confirmations

    def skipped(self, count: int) -> None:
        with self._lock:
            self.skipped_total += count

    def received(self, count: int) -> None:
        with self._lock:
            self.received_total += count

    def write_failed(self, why: str) -> None:
        with self._lock:
            self.write_failures_total += 1
            self.sink_ok, self.sink_why = False, why

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received_total": self.received_total,
                "written_total": self.written_total,
                "duplicates_total": self.duplicates_total,
                "dead_letters_total": self.dead_letters_total,
                "dead_letters_by_reason": dict(self.dead_letters_by_reason),
                "acked_total": self.acked_total,
                "write_failures_total": self.write_failures_total,
                "confirmed_total": self.confirmed_total,
                "confirmations_sent_total": self.confirmations_sent_total,
                "skipped_total": self.skipped_total,
                "write_rate": self._write_rate.rate(),  # new rows stored per second, 10 s window
                "last_batch_ms": round(self.last_batch_ms, 2),
                "last_batch_size": self.last_batch_size,
                "batch_p50_ms": round(statistics.median(self._batch_ms), 2) if self._batch_ms else 0.0,
                "sink": self.sink_name,
                "sink_ok": self.sink_ok,
                "sink_why": self.sink_why,
            }


class Batch:
    """Validated messages from one connection, and the packet ids to ack once they are written."""

    __slots__ = ("confirmations", "connection", "dead_letters", "deliveries", "opened_at", "packet_ids")

    def __init__(self, connection: int, opened_at: float) -> None:
        self.connection = connection
        self.opened_at = opened_at
        self.deliveries: list[Delivery] = []
        self.dead_letters: list[DeadLetter] = []
        self.packet_ids: list[int] = []
        # To the forwarders once written: true on any connection, since the sink has them.
        self.confirmations = ConfirmationBatch()

    def __len__(self) -> int:
        return len(self.packet_ids)


class BatchWriter:
    """Holds the batches not yet written; `take` fills them, `write_due` writes them.

    Owned by the loop thread; the status thread reads only `held`.
    """

    def __init__(
        self,
        sink: Sink,
        counters: IngesterCounters,
        *,
        max_messages: int,
        interval_s: float,
        backoff: Backoff | None = None,
    ) -> None:
        self.sink = sink
        self.counters = counters
        self.max_messages = max_messages
        self.interval_s = interval_s
        self.held = 0  # messages taken and not yet written
        self._batches: deque[Batch] = deque()
        self._retry_at = 0.0
        self._backoff = backoff if backoff is not None else Backoff(WRITE_BACKOFF)

    def take(
        self,
        outcomes: Sequence[Delivery | DeadLetter],
        packet_ids: Sequence[int],
        connection: int,
        now: float,
        senders: Sequence[Sender | None] = (),
    ) -> None:
        """Add the outcomes of messages that arrived on `connection`, with their packet ids and
        whom to confirm them to, to open batches."""
        batches, max_messages = self._batches, self.max_messages
        batch = batches[-1] if batches else None
        senders = senders or [None] * len(packet_ids)
        for outcome, packet_id, sender in zip(outcomes, packet_ids, senders, strict=True):
            if batch is None or len(batch.packet_ids) >= max_messages or batch.connection != connection:
                batch = Batch(connection, now)
                batches.append(batch)
            if isinstance(outcome, Delivery):
                batch.deliveries.append(outcome)
            else:
                batch.dead_letters.append(outcome)
            batch.packet_ids.append(packet_id)
            if sender is not None:
                batch.confirmations.add(*sender)
        self.held += len(packet_ids)
        self.counters.received(len(packet_ids))

    def forget_before(self, connection: int) -> int:
        """Drop unwritten batches of earlier connections; how many messages were dropped.

        For a reconnect onto a session the broker kept: it redelivers those messages on the new
        connection, and the copies held here would only be written as duplicates.
        """
        kept = deque(b for b in self._batches if b.connection >= connection)
        dropped = self.held - sum(len(b) for b in kept)
        self._batches, self.held = kept, self.held - dropped
        return dropped

    def wait_s(self, now: float) -> float | None:
        """Seconds until `write_due` has work (0 if it has now), or None while nothing is held."""
        if not self._batches:
            return None
        return max(0.0, self._head_due_at() - now, self._retry_at - now)

    def write_due(self, now: float) -> list[Batch]:
        """Write the batches that are due, oldest first, stopping at the first failure; those written."""
        written: list[Batch] = []
        while self._batches and now >= self._retry_at and now >= self._head_due_at():
            batch = self._write_head()
            if batch is None:
                break
            written.append(batch)
        return written

    def drain(self, deadline: float) -> list[Batch]:
        """Write every held batch, retrying until `deadline`; those written (`held` counts the rest)."""
        written: list[Batch] = []
        while self._batches:
            now = time.monotonic()
            if now >= deadline:
                break
            if now < self._retry_at:
                time.sleep(min(self._retry_at, deadline) - now)
                continue
            batch = self._write_head()
            if batch is not None:
                written.append(batch)
        return written

    def _head_due_at(self) -> float:
        head = self._batches[0]
        if len(head) >= self.max_messages or len(self._batches) > 1:
            return head.opened_at  # closed: full, or its connection is gone
        return head.opened_at + self.interval_s

    def _write_head(self) -> Batch | None:
        """Write the oldest batch; it, taken off the queue, once durable, else None (retry later)."""
        batch = self._batches[0]
        started = time.perf_counter()
        try:
            result = self.sink.write(batch.deliveries, batch.dead_letters)
        except Exception as err:
            # Any failure, not only SinkUnavailable, must leave the batch unacked: acking after a
            # write we cannot vouch for is the one way to lose a reading here.
            self.counters.write_failed(f"{type(err).__name__}: {err}"[:300])
            delay_s = self._backoff.next_delay()
            log.warning(
                "sink write failed; retrying the same batch",
                extra={"event": "sink_write_failed", "error": repr(err)[:300], "retry_in_s": round(delay_s, 3)},
            )
            self._retry_at = time.monotonic() + delay_s
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._retry_at = 0.0
        self._backoff.reset()
        self.counters.batch_committed(result, batch.dead_letters, len(batch), elapsed_ms)
        self._batches.popleft()
        self.held -= len(batch)
        return batch
