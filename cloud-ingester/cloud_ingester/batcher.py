"""Validate, batch, write, then ack: the part of the ingester that makes delivery exact.

Messages are validated as they arrive (the future-timestamp check uses their arrival time) and
gathered into batches of one connection each. A batch is written when it holds `max_messages`
or `interval_s` after its first message, in one `Sink.write`, and its messages are acked only
after that returns. When the sink fails, the same batch is retried with backoff; nothing is
acked meanwhile, so the broker's receive maximum bounds what piles up behind it.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from cloud_ingester.consumer import gateway_of
from cloud_ingester.validate import validate
from saltmarsh.contract.envelope import Limits
from saltmarsh.mqtt.wire import Publish
from saltmarsh.runtime.status import RateMeter
from saltmarsh.sinks.base import DeadLetter, Delivery, Sink, WriteResult

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


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
        self.sink_ok = True
        self.sink_why = ""
        self.last_batch_ms = 0.0
        self.last_batch_size = 0
        self._batch_ms: deque[float] = deque(maxlen=100)
        self._write_rate = RateMeter()

    def batch_committed(
        self, result: WriteResult, dead_letters: list[DeadLetter], size: int, acked: int, ms: float
    ) -> None:
        with self._lock:
            self.written_total += result.written
            self.duplicates_total += result.duplicates
            self.dead_letters_total += result.dead_letters
            self.dead_letters_by_reason.update(d.reason.value for d in dead_letters)
            self.acked_total += acked
            self.sink_ok, self.sink_why = True, ""
            self.last_batch_ms, self.last_batch_size = ms, size
            self._batch_ms.append(ms)
            self._write_rate.add(result.written)

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

    __slots__ = ("connection", "dead_letters", "deliveries", "opened_at", "packet_ids")

    def __init__(self, connection: int, opened_at: float) -> None:
        self.connection = connection
        self.opened_at = opened_at
        self.deliveries: list[Delivery] = []
        self.dead_letters: list[DeadLetter] = []
        self.packet_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.packet_ids)


# Acks a batch's packet ids on the connection that delivered them; False if that one is gone.
Ack = Callable[[list[int], int], bool]


class BatchWriter:
    """Holds the batches not yet written; `take` fills them, `write_due` writes and acks them.

    Owned by the loop thread; the status thread reads only `held`.
    """

    def __init__(
        self, sink: Sink, ack: Ack, counters: IngesterCounters, limits: Limits, *, max_messages: int, interval_s: float
    ) -> None:
        self.sink = sink
        self.ack = ack
        self.counters = counters
        self.limits = limits
        self.max_messages = max_messages
        self.interval_s = interval_s
        self.held = 0  # messages taken and not yet written
        self._batches: deque[Batch] = deque()
        self._retry_at = 0.0
        self._backoff_s = BACKOFF_FIRST_S

    def take(self, publishes: Iterable[Publish], connection: int, received_ms: int, now: float) -> None:
        """Validate messages that arrived on `connection` at `received_ms` into open batches."""
        batches, limits, max_messages = self._batches, self.limits, self.max_messages
        batch = batches[-1] if batches else None
        taken = 0
        for publish in publishes:
            if batch is None or len(batch) >= max_messages or batch.connection != connection:
                batch = Batch(connection, now)
                batches.append(batch)
            outcome = validate(publish.topic, publish.payload, received_ms, gateway_of(publish), limits)
            if isinstance(outcome, Delivery):
                batch.deliveries.append(outcome)
            else:
                batch.dead_letters.append(outcome)
            batch.packet_ids.append(publish.packet_id)
            taken += 1
        self.held += taken
        self.counters.received(taken)

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

    def write_due(self, now: float) -> None:
        """Write and ack the batches that are due, oldest first; stops at the first failure."""
        while self._batches and now >= self._retry_at and now >= self._head_due_at():
            if not self._write_head():
                return

    def drain(self, deadline: float) -> bool:
        """Write every held batch, retrying until `deadline`; False if some are left unwritten."""
        while self._batches:
            now = time.monotonic()
            if now >= deadline:
                return False
            if now < self._retry_at:
                time.sleep(min(self._retry_at, deadline) - now)
            else:
                self._write_head()
        return True

    def _head_due_at(self) -> float:
        head = self._batches[0]
        if len(head) >= self.max_messages or len(self._batches) > 1:
            return head.opened_at  # closed: full, or its connection is gone
        return head.opened_at + self.interval_s

    def _write_head(self) -> bool:
        head = self._batches[0]
        if not self._commit(head):
            return False
        self._batches.popleft()
        self.held -= len(head)
        return True

    def _commit(self, batch: Batch) -> bool:
        started = time.perf_counter()
        try:
            result = self.sink.write(batch.deliveries, batch.dead_letters)
        except Exception as err:
            # Any failure, not only SinkUnavailable, must leave the batch unacked: acking after a
            # write we cannot vouch for is the one way to lose a reading here.
            self.counters.write_failed(f"{type(err).__name__}: {err}"[:300])
            log.warning(
                "sink write failed; retrying the same batch",
                extra={"event": "sink_write_failed", "error": repr(err)[:300], "retry_in_s": self._backoff_s},
            )
            self._retry_at = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            return False
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._retry_at, self._backoff_s = 0.0, BACKOFF_FIRST_S
        acked = len(batch) if self.ack(batch.packet_ids, batch.connection) else 0
        self.counters.batch_committed(result, batch.dead_letters, len(batch), acked, elapsed_ms)
        return True
