"""The relay's never-blocking middle: a bounded queue, a sender thread, and the disk spool.

In: `(tag, data)` from the bus reader, through `offer`, which never waits on a sink.
Out: fleet-event documents to the event store (Elasticsearch), selected events to the
forwarder (Kinesis); whatever they cannot take now goes to the spool and is sent later.

- The reader puts each selected event on a bounded in-memory queue. When the queue is full
  (a flood, or the sender busy with a slow sink) the reader spills events to the spool itself,
  in batches, so a flood costs one fsync per batch and never a lost event.
- The sender thread takes batches off the queue and delivers them. What a sink refuses as
  unavailable is spooled at once, and that sink is left alone for `sink_retry_s` rather than
  being tried (and timing out) for every batch.
- Each spooled event carries the sinks it is still owed, so an event that reached
  Elasticsearch but not Kinesis is later sent to Kinesis only.
- Live events go first; between live batches the sender backfills the oldest spool segment,
  once every sink is available again. A segment is deleted only after every event in it is
  delivered; a failed segment is released and retried whole, which Elasticsearch's
  create-only writes with deterministic ids make harmless (Kinesis is at least once).
- Nothing is dropped unless the spool quota is reached: the spool then evicts its oldest
  segments and counts every evicted event (exactly, and across restarts) as `dropped`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from saltmarsh.config.relay import RelayConfig
from saltmarsh.contract.errors import KinesisUnavailable, SinkUnavailable
from saltmarsh.relay.documents import event_document, fleet_event, json_safe, kinesis_record
from saltmarsh.runtime.spool import Lane, Record, Spool
from saltmarsh.sinks.elasticsearch.bulk import BulkDoc, BulkResult
from saltmarsh.sinks.kinesis.selection import Globs, Match, Selection
from saltmarsh.sinks.kinesis.sink import KinesisRecord, PutOutcome

log = logging.getLogger(__name__)

ELASTICSEARCH = "elasticsearch"
KINESIS = "kinesis"
HEALTH_TAG = "saltmarsh/relay/health"
SPILL_BATCH = 500  # events the reader spills per fsync when the queue is full
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class EventStore(Protocol):
    """Where every relayed event goes: `ElasticsearchSink` in production."""

    def index_documents(self, docs: Sequence[BulkDoc]) -> BulkResult: ...


class EventForwarder(Protocol):
    """Where selected events also go: `KinesisForwarder` in production."""

    def put_all(self, records: Sequence[KinesisRecord]) -> PutOutcome: ...


@dataclass(frozen=True, slots=True)
class Router:
    """Which sinks a tag is owed to; pure."""

    relay_tags: Globs
    forward: Selection

    def sinks(self, tag: str) -> frozenset[str]:
        to_store = self.relay_tags.first_match(tag) is not None
        to_forward = self.forward.match_tag(tag) is not None
        if to_store and to_forward:
            return frozenset((ELASTICSEARCH, KINESIS))
        if to_store:
            return frozenset((ELASTICSEARCH,))
        return frozenset((KINESIS,)) if to_forward else frozenset()


@dataclass(slots=True)
class Pending:
    """One event on its way, and the sinks it is still owed."""

    tag: str
    data: Mapping[str, Any]  # as read off the bus, or JSON-safe when it came from the spool
    received_ms: int
    owed: set[str]
    _doc: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def doc(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = event_document(self.tag, self.data, self.received_ms)
        return self._doc

    def to_record(self) -> Record:
        body = {"received_ms": self.received_ms, "owed": sorted(self.owed), "data": json_safe(self.data)}
        return self.tag, _encode(body).encode()

    @classmethod
    def from_record(cls, record: Record) -> Pending:
        tag, payload = record
        body = json.loads(payload)
        return cls(tag, body["data"], int(body["received_ms"]), set(body["owed"]))


@dataclass
class RelayCounters:
    received: int = 0  # events selected for Elasticsearch or Kinesis
    ignored: int = 0  # events no glob selected
    relayed: int = 0  # stored in Elasticsearch (created, or already there from an earlier try)
    forwarded: int = 0  # committed to Kinesis
    spooled: int = 0  # written to the spool (a full queue or a sink down)
    backfilled: int = 0  # delivered from the spool
    rejected: int = 0  # refused for what they are (a 4xx document, an oversized record): never retried
    lost: int = 0  # could not even be spooled (the spool's disk failed)
    bus_reconnects: int = 0
    last_error: str | None = None


class Relay:
    """Queue, sender thread and spool; see the module docstring."""

    def __init__(
        self,
        cfg: RelayConfig,
        store: EventStore,
        forwarder: EventForwarder | None,
        spool: Spool,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.cfg = cfg
        self.prefix = cfg.elasticsearch.index_prefix
        self.router = Router(cfg.relay_tags, cfg.forward if forwarder is not None else Selection())
        self.store = store
        self.forwarder = forwarder
        self.spool = spool
        self.counters = RelayCounters()
        self._clock = clock
        self._wall_ms = wall_ms
        self._flush_s = cfg.flush_interval_ms / 1000
        self._queue: queue.Queue[Pending] = queue.Queue(cfg.queue_max)
        self._lock = threading.Lock()  # counters: both threads write them
        self._spill: list[Record] = []  # reader thread only
        self._spill_since = 0.0
        self._retry_at: dict[str, float] = {}  # sender thread only: sink -> when to try it again
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reader side -----------------------------------------------------------------------

    def offer(self, tag: str, data: Mapping[str, Any]) -> None:
        """Take one bus event; never waits on a sink (at worst on one batched spool write)."""
        owed = self.router.sinks(tag)
        if not owed:
            with self._lock:
                self.counters.ignored += 1
            return
        with self._lock:
            self.counters.received += 1
        item = Pending(tag, data, self._wall_ms(), set(owed))
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        if not self._spill:
            self._spill_since = self._clock()
        self._spill.append(item.to_record())
        if len(self._spill) >= SPILL_BATCH:
            self.flush_spill()

    def tick(self) -> None:
        """The reader's idle beat: spilled events wait at most one flush interval for the disk."""
        if self._spill and self._clock() - self._spill_since >= self._flush_s:
            self.flush_spill()

    def flush_spill(self) -> None:
        records, self._spill = self._spill, []
        self._spool_records(records)

    def note(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.counters, name, getattr(self.counters, name) + delta)

    def note_error(self, text: str) -> None:
        with self._lock:
            self.counters.last_error = text[:500]

    # -- sender side -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="saltmarsh-relay-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the sender, then spool whatever is still queued, so a restart loses nothing queued."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        left: list[Pending] = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._spool_records([p.to_record() for p in left])
        self.flush_spill()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except Exception as err:  # the thread must outlive any bug in one batch
                log.exception("relay sender step failed", extra={"event": "relay_step_failed"})
                self.note_error(f"{type(err).__name__}: {err}")
                self._stopping.wait(1.0)

    def step(self) -> bool:
        """One sender cycle: a live batch if one comes within the wait, then one spool segment.

        True when it did any work, for tests that drive it by hand.
        """
        backlog = self._ready_to_backfill() and self.spool.stats().segments > 0
        batch = self._take(0.0 if backlog else min(self._flush_s, 0.25))
        if batch:
            left = self._deliver_guarded(batch)
            self._spool_records([p.to_record() for p in left])
        backfilled = self._backfill_one() if self._ready_to_backfill() else False
        return bool(batch) or backfilled

    def _take(self, wait_s: float) -> list[Pending]:
        """Up to `batch_max_events`: the first within `wait_s`, the rest within one flush interval."""
        try:
            first = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        deadline = self._clock() + self._flush_s
        limit = self.cfg.batch_max_events
        while len(batch) < limit:
            remaining = deadline - self._clock()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _sinks(self) -> tuple[str, ...]:
        return (ELASTICSEARCH, KINESIS) if self.forwarder is not None else (ELASTICSEARCH,)

    def _available(self, sink: str) -> bool:
        return self._clock() >= self._retry_at.get(sink, 0.0)

    def _ready_to_backfill(self) -> bool:
        return all(self._available(sink) for sink in self._sinks())

    def _down(self, sink: str, why: str) -> None:
        first = sink not in self._retry_at
        self._retry_at[sink] = self._clock() + self.cfg.sink_retry_s
        self.note_error(f"{sink}: {why}")
        if first:
            log.warning(
                "relay sink unavailable; spooling its events",
                extra={"event": "relay_sink_down", "sink": sink, "why": why[:300]},
            )

    def _up(self, sink: str) -> None:
        if self._retry_at.pop(sink, None) is not None:
            log.info("relay sink available again", extra={"event": "relay_sink_up", "sink": sink})

    @property
    def sink_ok(self) -> bool:
        return not self._retry_at

    def _deliver_guarded(self, items: list[Pending]) -> list[Pending]:
        try:
            return self._deliver(items)
        except Exception as err:  # a bug must cost a retry later, never the events
            log.exception("relay delivery failed unexpectedly", extra={"event": "relay_deliver_failed"})
            for sink in self._sinks():
                self._down(sink, f"{type(err).__name__}: {err}")
            return items

    def _deliver(self, items: Sequence[Pending]) -> list[Pending]:
        """Send each item to the sinks it is owed and available; the items still owing any."""
        to_store = [p for p in items if ELASTICSEARCH in p.owed]
        if to_store and self._available(ELASTICSEARCH):
            self._store(to_store)
        to_forward = [p for p in items if KINESIS in p.owed]
        if to_forward and self.forwarder is not None and self._available(KINESIS):
            self._forward(self.forwarder, to_forward)
        elif to_forward and self.forwarder is None:
            for p in to_forward:  # spooled while Kinesis was configured; it no longer is
                p.owed.discard(KINESIS)
        return [p for p in items if p.owed]

    def _store(self, items: Sequence[Pending]) -> None:
        try:
            result = self.store.index_documents([fleet_event(self.prefix, p.doc) for p in items])
        except SinkUnavailable as err:
            self._down(ELASTICSEARCH, str(err))
            return
        self._up(ELASTICSEARCH)
        for p in items:
            p.owed.discard(ELASTICSEARCH)
        for refusal in result.refused:
            log.warning(
                "elasticsearch refused a fleet event",
                extra={
                    "event": "relay_event_rejected",
                    "tag": items[refusal.position].tag,
                    "status": refusal.status,
                    "reason": refusal.reason[:300],
                },
            )
        self.note(relayed=result.created + result.duplicates, rejected=len(result.refused))

    def _forward(self, forwarder: EventForwarder, items: Sequence[Pending]) -> None:
        records: list[KinesisRecord] = []
        for p in items:
            match = self.router.forward.match_tag(p.tag) or Match("spooled", "selected before a restart")
            records.append(kinesis_record(p.doc, match))
        committed: set[int]
        try:
            outcome = forwarder.put_all(records)
        except KinesisUnavailable as err:
            committed = set(err.committed)
            self._down(KINESIS, str(err))
        except SinkUnavailable as err:
            committed = set()
            self._down(KINESIS, str(err))
        else:
            self._up(KINESIS)
            refused = set(outcome.rejected)
            committed = set(range(len(records))) - refused
            for i in refused:  # over the record limit: no retry can fix that
                items[i].owed.discard(KINESIS)
            self.note(rejected=len(refused))
        for i in committed:
            items[i].owed.discard(KINESIS)
        self.note(forwarded=len(committed))

    def _spool_records(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            self.spool.append([(Lane.BULK, records)])
        except Exception as err:  # a failing disk must not stop the relay; the loss is counted
            log.exception("relay spool write failed", extra={"event": "relay_spool_failed", "events": len(records)})
            self.note(lost=len(records))
            self.note_error(f"spool: {type(err).__name__}: {err}")
            return
        self.note(spooled=len(records))

    def _backfill_one(self) -> bool:
        """Deliver the oldest spool segment; True when it was delivered whole."""
        pending = self.spool.pending()
        if not pending:
            return False
        segment = pending[0]
        records = self.spool.lease(segment)
        if records is None:  # evicted or unreadable since `pending`; the spool counted it
            return True
        items: list[Pending] = []
        for record in records:
            try:
                items.append(Pending.from_record(record))
            except (ValueError, KeyError, TypeError) as err:
                # Not ours or damaged: keeping it would block the spool for ever.
                log.error("unreadable relay spool record dropped", extra={"event": "relay_record_corrupt"})
                self.note(lost=1)
                self.note_error(f"spool record {record[0]!r}: {type(err).__name__}: {err}")
        left = self._deliver_guarded(items)
        if left:
            self.spool.release(segment)
            return False
        self.spool.remove(segment)
        self.note(backfilled=len(items))
        return True

    # -- health ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The counters of `saltmarsh/relay/health`; `dropped` is the spool's lifetime eviction count."""
        stats = self.spool.stats()
        with self._lock:
            counters = self.counters
            return {
                "received": counters.received,
                "ignored": counters.ignored,
                "relayed": counters.relayed,
                "forwarded": counters.forwarded,
                "spooled": counters.spooled,
                "backfilled": counters.backfilled,
                "spool_depth": stats.depth_messages,
                "queue_depth": self._queue.qsize(),
                "dropped": stats.evicted_messages + counters.lost,
                "rejected": counters.rejected,
                "bus_reconnects": counters.bus_reconnects,
                "sink_ok": self.sink_ok,
                "last_error": counters.last_error,
            }
