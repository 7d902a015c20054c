"""Batch, write, then ack: the part of the ingester that makes delivery exact.

A batch is closed at `max_messages` or `interval_s` after its first message, validated, and
handed to the sink in one `write`. Acks follow only a successful return. When the sink fails
the same batch is retried with backoff and nothing new is taken from the inbox meanwhile, so
memory stays bounded by the broker's receive maximum while the sink is down.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from cloud_ingester.consumer import Inbound
from cloud_ingester.validate import validate
from saltmarsh.envelope import Limits
from saltmarsh.sinks.base import DeadLetter, Delivery, Sink, WriteResult
from saltmarsh.status import RateMeter

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often an idle writer looks at the stop flag
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


class IngesterCounters:
    """What the status file shows; updated by the writer thread, read by the status thread."""

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

    def batch_committed(self, result: WriteResult, dead_letters: list[DeadLetter], acked: int, ms: float) -> None:
        with self._lock:
            self.written_total += result.written
            self.duplicates_total += result.duplicates
            self.dead_letters_total += result.dead_letters
            self.dead_letters_by_reason.update(d.reason.value for d in dead_letters)
            self.acked_total += acked
            self.sink_ok, self.sink_why = True, ""
            self.last_batch_ms, self.last_batch_size = ms, acked
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


class BatchWriter:
    def __init__(
        self,
        inbox: queue.Queue[Inbound],
        sink: Sink,
        ack: Callable[[Inbound], None],
        counters: IngesterCounters,
        limits: Limits,
        *,
        max_messages: int,
        interval_s: float,
    ) -> None:
        self.inbox = inbox
        self.sink = sink
        self.ack = ack
        self.counters = counters
        self.limits = limits
        self.max_messages = max_messages
        self.interval_s = interval_s

    def run(self, stopping: threading.Event, abandon: threading.Event) -> None:
        """Write batches until `stopping` is set and the inbox is drained.

        `abandon` cuts a retry loop short at shutdown: that batch stays unacked and the broker
        redelivers it after the restart.
        """
        while True:
            batch = self.collect()
            if batch:
                if not self.commit(batch, abandon):
                    return
            elif stopping.is_set():
                return

    def collect(self) -> list[Inbound]:
        try:
            batch = [self.inbox.get(timeout=POLL_S)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.interval_s
        while len(batch) < self.max_messages:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def commit(self, batch: list[Inbound], abandon: threading.Event) -> bool:
        """Validate, write until the sink takes it, then ack; False if abandoned unwritten."""
        self.counters.received(len(batch))
        deliveries: list[Delivery] = []
        dead_letters: list[DeadLetter] = []
        for inbound in batch:
            outcome = validate(inbound.topic, inbound.payload, inbound.received_ms, inbound.gateway, self.limits)
            if isinstance(outcome, Delivery):
                deliveries.append(outcome)
            else:
                dead_letters.append(outcome)
        backoff_s = BACKOFF_FIRST_S
        while True:
            started = time.perf_counter()
            try:
                result = self.sink.write(deliveries, dead_letters)
                break
            except Exception as err:
                # Any failure, not only SinkUnavailable, must leave the batch unacked: acking
                # after a write we cannot vouch for is the one way to lose a reading here.
                self.counters.write_failed(f"{type(err).__name__}: {err}"[:300])
                log.warning(
                    "sink write failed; retrying the same batch",
                    extra={"event": "sink_write_failed", "error": repr(err)[:300], "retry_in_s": backoff_s},
                )
            if abandon.wait(backoff_s):
                return False
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        elapsed_ms = (time.perf_counter() - started) * 1000
        for inbound in batch:
            self.ack(inbound)
        self.counters.batch_committed(result, dead_letters, len(batch), elapsed_ms)
        return True
