"""The sink interface: where validated messages and dead letters are committed.

Backends (SQLite now; Elasticsearch and Kinesis later) are chosen in one place,
`saltmarsh.sinks.open_sink`, from the ingester's SinkConfig. The contract that keeps the data
path exact:

- `write` returns only once everything it was given is durable, or raises `SinkUnavailable`
  having committed nothing the caller must not retry. The ingester acks MQTT after it returns.
- Writes are idempotent on `Envelope.key` (device, boot, seq): a redelivery is counted as a
  duplicate and is not stored twice.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.errors import Reason


@dataclass(frozen=True, slots=True)
class Delivery:
    """A validated message as it reached the ingester."""

    envelope: Envelope
    received_ms: int
    gateway: str | None = None  # the forwarder that carried it, from the MQTT 5 user property


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that broke the contract, kept with the reason and its raw bytes."""

    received_ms: int
    topic: str
    reason: Reason
    field: str
    detail: str
    payload: bytes

    def payload_text(self) -> tuple[str, str]:
        """(encoding, text): the payload as UTF-8 where it is, else base64."""
        try:
            return "utf-8", self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return "base64", base64.b64encode(self.payload).decode("ascii")


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
