"""The sink interface: where validated messages and dead letters are committed.

Backends (SQLite or Elasticsearch as the store of record, Kinesis forwarding alongside it) are
chosen in one place, `saltmarsh.sinks.open_sink`, from the ingester's SinkConfig. The contract that keeps the data
path exact:

- `write` returns only once everything it was given is durable, or raises `SinkUnavailable`
  having committed nothing the caller must not retry. The ingester acks MQTT after it returns.
- Writes are idempotent on `Envelope.key` (device, boot, seq): a redelivery is counted as a
  duplicate and is not stored twice.
- A dead letter keeps the first `DEAD_LETTER_HEAD_BYTES` of its payload, with the full size and
  sha256, so a 10 MB message costs a 1 KiB row, and the ingester holds no more than that of it.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.errors import Reason

# Enough to see what a sender got wrong; what is cut off is still identified by size and hash.
DEAD_LETTER_HEAD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    """A validated message as it reached the ingester."""

    envelope: Envelope
    received_ms: int
    gateway: str | None = None  # the forwarder that carried it, from the MQTT 5 user property


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that broke the contract: the reason, and the head, size and hash of its raw bytes.

    Build one with `of`, which cuts the payload down; the full payload is never kept.
    """

    received_ms: int
    topic: str
    reason: Reason
    field: str
    detail: str
    payload_head: bytes  # the first DEAD_LETTER_HEAD_BYTES of the payload at most
    payload_bytes: int  # the size of the whole payload
    payload_sha256: str  # hex digest of the whole payload

    @classmethod
    def of(cls, received_ms: int, topic: str, payload: bytes, *, reason: Reason, field: str, detail: str) -> DeadLetter:
        return cls(
            received_ms,
            topic,
            reason,
            field,
            detail,
            payload[:DEAD_LETTER_HEAD_BYTES],
            len(payload),
            hashlib.sha256(payload).hexdigest(),
        )

    def payload_text(self) -> tuple[str, str]:
        """(encoding, text): the head as UTF-8 where it is, else base64.

        A head cut inside a multi-byte character is still UTF-8: the partial character is left out.
        """
        head = self.payload_head
        cut_short = self.payload_bytes > len(head)
        try:
            # Not final when cut short: the decoder then keeps back an incomplete last character.
            return "utf-8", codecs.getincrementaldecoder("utf-8")().decode(head, final=not cut_short)
        except UnicodeDecodeError:
            return "base64", base64.b64encode(head).decode("ascii")


@dataclass(frozen=True, slots=True)
class WriteResult:
    written: int  # new messages stored
    duplicates: int  # redeliveries of messages already stored
    dead_letters: int  # dead letters stored (given, plus any the sink itself refused)


@dataclass(frozen=True, slots=True)
class StoredKey:
    device: str
    boot: str
    seq: int
    ts_ms: int


class Sink(Protocol):
    name: str

    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult: ...

    def close(self) -> None: ...


class AuditSource(Protocol):
    """What `saltmarsh audit` reads: every stored key, ordered by device, boot, seq."""

    def stored_keys(self) -> Iterator[StoredKey]: ...

    def dead_letter_counts(self) -> dict[str, int]: ...
