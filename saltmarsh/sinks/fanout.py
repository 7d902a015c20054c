"""The store of record plus Kinesis: what the ingester writes to when `[sink.kinesis]` is set.

The store of record (SQLite or Elasticsearch) commits first, then the selected messages go to
Kinesis; `write` returns, and the ingester acks, only when both have committed. If Kinesis
fails, the batch stays unacked and comes back: the store of record absorbs the repeat as
duplicates, and the Kinesis sink skips what it already forwarded. A message over Kinesis's
record limit is never sent; it becomes a dead letter in the store of record.
"""

from __future__ import annotations

from collections.abc import Sequence

from saltmarsh.sinks.base import DeadLetter, Delivery, Sink, WriteResult
from saltmarsh.sinks.kinesis.sink import KinesisSink


class FanoutSink:
    def __init__(self, record: Sink, kinesis: KinesisSink) -> None:
        self.record = record
        self.kinesis = kinesis
        self.name = f"{record.name}+kinesis"

    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult:
        stored = self.record.write(deliveries, dead_letters)
        self.kinesis.write(deliveries, ())
        rejected = self.kinesis.last_rejected
        if rejected:
            self.record.write((), rejected)
        return WriteResult(stored.written, stored.duplicates, stored.dead_letters + len(rejected))

    def close(self) -> None:
        try:
            self.kinesis.close()
        finally:
            self.record.close()
