"""The one Elasticsearch bulk writer: create-only or externally versioned, chunked by count and
bytes, retried per item.

Used by the sink for readings, dead letters and command states, and by the Salt engine for fleet
events, so all of them share a single answer to "what does this bulk item status mean":

- 201 created, 409 already there (a duplicate, which create-only semantics make harmless);
- for a document with a `version` (indexed with `version_type=external`): 200/201 stored, 409
  stale (the cluster holds an equal or higher version, which is the point of versioning it);
- 429 and 5xx: the cluster is busy or a shard is missing; only those items are sent again, after
  `saltmarsh.runtime.backoff`'s capped exponential wait with jitter, up to `retry_max` times,
  then `SinkUnavailable`;
- any other 4xx: the document itself is wrong (a mapping conflict, a parse error) and no retry will
  fix it; it comes back as a `Refusal` for the caller to dead-letter.

A connection error, a timeout or a refused request (401, 403, 413) is `SinkUnavailable` at once:
the caller keeps its batch and tries again later. Nothing here is buffered past one request body,
so memory is bounded by `batch_max_bytes` whatever the cluster does.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from elasticsearch import ApiError, Elasticsearch, TransportError

from saltmarsh.config.elasticsearch import ElasticsearchConfig
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay

log = logging.getLogger(__name__)

# The response fields classification reads; the rest (_shards, _seq_no, ...) is a third of a
# large bulk response and not worth decoding.
_RESPONSE_FILTER = "errors,items.*.status,items.*.error,items.*._id"
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class BulkDoc:
    """One document to create. `doc_id` is required: without it a retry would store a second copy.

    With a `version`, the document replaces the stored one only if that one's external version is
    lower; the cluster compares versions, so concurrent writers and replays need no read first.
    """

    index: str
    doc_id: str
    source: Mapping[str, Any]
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A document Elasticsearch will never take as it is; `position` is its place in the input."""

    position: int
    doc: BulkDoc
    status: int
    error_type: str
    reason: str


@dataclass(frozen=True, slots=True)
class BulkResult:
    created: int
    duplicates: int
    refused: tuple[Refusal, ...] = ()
    versioned: int = 0  # versioned documents stored
    stale: int = 0  # versioned documents not stored: an equal or higher version is


DEFAULT_BACKOFF = BackoffPolicy(base_s=0.2, cap_s=10.0)


@dataclass(frozen=True, slots=True)
class BulkPolicy:
    max_docs: int = 1000
    max_bytes: int = 5_000_000
    retry_max: int = 5
    backoff: BackoffPolicy = DEFAULT_BACKOFF

    @classmethod
    def from_config(cls, cfg: ElasticsearchConfig) -> BulkPolicy:
        return cls(
            max_docs=cfg.batch_max_docs,
            max_bytes=cfg.batch_max_bytes,
            retry_max=cfg.retry_max,
            backoff=BackoffPolicy(base_s=cfg.retry_backoff_base_s, cap_s=cfg.retry_backoff_cap_s),
        )


def is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


@dataclass(frozen=True, slots=True)
class Encoded:
    """A document as its two NDJSON lines, encoded once and reused across retries."""

    position: int
    doc: BulkDoc
    lines: bytes


def encode(position: int, doc: BulkDoc) -> Encoded:
    if doc.version is None:
        action = _encode({"create": {"_index": doc.index, "_id": doc.doc_id}})
    else:
        meta = {"_index": doc.index, "_id": doc.doc_id, "version": doc.version, "version_type": "external"}
        action = _encode({"index": meta})
    return Encoded(position, doc, f"{action}\n{_encode(doc.source)}\n".encode())


def chunked(encoded: Iterable[Encoded], max_docs: int, max_bytes: int) -> Iterator[list[Encoded]]:
    """Request bodies of at most `max_docs` documents and `max_bytes` bytes; a single document
    larger than `max_bytes` goes alone rather than never."""
    chunk: list[Encoded] = []
    size = 0
    for item in encoded:
        if chunk and (len(chunk) >= max_docs or size + len(item.lines) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item.lines)
    if chunk:
        yield chunk


def _error_text(error: Any) -> tuple[str, str]:
    """(type, reason) of a bulk item error, with the root cause that usually names the value."""
    if not isinstance(error, Mapping):
        return "unknown", str(error)[:500]
    reason = str(error.get("reason", ""))
    caused_by = error.get("caused_by")
    if isinstance(caused_by, Mapping) and caused_by.get("reason"):
        reason = f"{reason}: {caused_by['reason']}"
    return str(error.get("type", "unknown")), reason[:1000]


@dataclass(slots=True)
class _Tally:
    created: int = 0
    duplicates: int = 0
    versioned: int = 0
    stale: int = 0


class BulkWriter:
    """Writes documents to Elasticsearch; returns only once each is stored, a duplicate, stale or refused."""

    def __init__(
        self,
        client: Elasticsearch,
        policy: BulkPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.policy = policy
        self._sleep = sleep
        self._jitter = jitter
        self.requests_sent = 0
        self.retries = 0

    def index_documents(self, docs: Iterable[BulkDoc]) -> BulkResult:
        """Create every document; raises `SinkUnavailable` if some could not be stored in time.

        Documents are encoded one chunk at a time, so a long iterable is never held whole.
        """
        return self.write_encoded(encode(i, doc) for i, doc in enumerate(docs))

    def write_encoded(self, encoded: Iterable[Encoded]) -> BulkResult:
        tally = _Tally()
        refused: list[Refusal] = []
        for chunk in chunked(encoded, self.policy.max_docs, self.policy.max_bytes):
            refused.extend(self._write_chunk(chunk, tally))
        return BulkResult(tally.created, tally.duplicates, tuple(refused), tally.versioned, tally.stale)

    def _write_chunk(self, chunk: Sequence[Encoded], tally: _Tally) -> list[Refusal]:
        pending = list(chunk)
        refused: list[Refusal] = []
        last_failure = ""
        for attempt in range(self.policy.retry_max + 1):
            if attempt:
                self.retries += 1
                delay = backoff_delay(attempt, self.policy.backoff, self._jitter())
                log.warning(
                    "elasticsearch asked us to slow down; retrying part of a bulk request",
                    extra={
                        "event": "es_bulk_retry",
                        "documents": len(pending),
                        "attempt": attempt,
                        "delay_s": round(delay, 3),
                        "last_failure": last_failure,
                    },
                )
                self._sleep(delay)
            items = self._send(pending)
            if items is None:
                last_failure = "whole request refused as busy"
                continue
            retry: list[Encoded] = []
            for item, answer in zip(pending, items, strict=True):
                status = int(answer.get("status", 0))
                versioned = item.doc.version is not None
                if status in (200, 201):
                    if versioned:
                        tally.versioned += 1
                    else:
                        tally.created += 1
                elif status == 409:
                    if versioned:
                        tally.stale += 1
                    else:
                        tally.duplicates += 1
                elif is_retryable(status):
                    retry.append(item)
                    error_type, reason = _error_text(answer.get("error"))
                    last_failure = f"{status} {error_type}: {reason}"[:300]
                else:
                    error_type, reason = _error_text(answer.get("error"))
                    refused.append(Refusal(item.position, item.doc, status, error_type, reason))
            if not retry:
                return refused
            pending = retry
        raise SinkUnavailable(
            f"elasticsearch: {len(pending)} of {len(chunk)} documents still not stored after "
            f"{self.policy.retry_max} retries (last: {last_failure})"
        )

    def _send(self, pending: Sequence[Encoded]) -> list[Mapping[str, Any]] | None:
        """The per-item answers in request order, or None when the whole request may be retried."""
        body = b"".join(item.lines for item in pending)
        self.requests_sent += 1
        try:
            # Pre-encoded NDJSON bytes pass through the client's serializer untouched; its type
            # hints only know about a list of dicts.
            response = self.client.bulk(operations=cast(Any, body), refresh=False, filter_path=_RESPONSE_FILTER)
        except ApiError as err:
            if is_retryable(err.meta.status):
                return None
            hint = "; lower batch_max_bytes" if err.meta.status == 413 else ""
            raise SinkUnavailable(f"elasticsearch refused a bulk request: {err.meta.status} {err}{hint}"[:500]) from err
        except TransportError as err:
            raise SinkUnavailable(f"elasticsearch unreachable: {type(err).__name__}: {err}"[:500]) from err
        raw_items = response.body.get("items") if isinstance(response.body, Mapping) else None
        if not isinstance(raw_items, list) or len(raw_items) != len(pending):
            got = len(raw_items) if isinstance(raw_items, list) else "no"
            raise SinkUnavailable(f"elasticsearch bulk response has {got} items for {len(pending)} documents")
        # Each item is {"create": {...}} or {"index": {...}}: one key, the op type.
        return [next(iter(item.values())) if isinstance(item, Mapping) and item else {} for item in raw_items]
