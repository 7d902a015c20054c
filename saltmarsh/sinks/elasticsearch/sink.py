"""The Elasticsearch sink: every data message once, in a monthly index chosen by its own time.

In: validated `Delivery`s and `DeadLetter`s, one batch per `write`.
Out: one document per message in `{prefix}-readings-YYYY.MM` with `_id` = `device:boot:seq`,
created with the `create` op so a redelivery is a 409 and counted as a duplicate; dead letters
in `{prefix}-deadletter-YYYY.MM`. Each command outcome (`cmdres`) also moves its target's state
in `{prefix}-commands`, in the same bulk request: `_id` = `cmd_id/device`, indexed with
`version_type=external` and the rank as version, so the cluster keeps the rank rule of
`saltmarsh.sinks.command_state` itself and an outcome that does not advance the state is a 409,
counted as stale and never retried. `write` returns once Elasticsearch has acknowledged every
document of the batch (the bulk response is its durability acknowledgement: the translog is
fsynced before it answers; `refresh` only affects visibility), else it raises `SinkUnavailable`
and the ingester keeps the batch unacked.

A document Elasticsearch refuses for what it is (a 400: a metric whose name clashes with
another's mapping, say) cannot be fixed by retrying; it becomes a `sink_rejected` dead letter
carrying the error and the envelope, so the batch still completes and nothing is silently lost.
A command-state document refused so is a broken template or cluster instead (the sink builds
every field of it), so the batch fails as `SinkUnavailable` and is retried whole.

Also an `AuditSource`, so `saltmarsh audit` reads the keys back in (device, boot, seq) order,
and the reader of command states for the master (`command_states`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from elastic_transport import BaseNode
from elasticsearch import ApiError, AuthorizationException, Elasticsearch, NotFoundError, TransportError

from saltmarsh.config.elasticsearch import ElasticsearchConfig
from saltmarsh.contract.errors import Reason, SinkUnavailable, ValidationError
from saltmarsh.contract.topics import Channel, Topic
from saltmarsh.sinks.base import DeadLetter, Delivery, StoredKey, WriteResult
from saltmarsh.sinks.command_state import CommandRecord, command_records, kept_per_target
from saltmarsh.sinks.elasticsearch.bulk import BulkDoc, BulkPolicy, BulkResult, BulkWriter, Refusal
from saltmarsh.sinks.elasticsearch.plain import PlainJsonNode
from saltmarsh.sinks.elasticsearch.templates import (
    DEAD_LETTERS,
    READINGS,
    command_index,
    index_pattern,
    install_templates,
    monthly_index,
)

log = logging.getLogger(__name__)

# ECS event.kind: a reading is a metric, an event an event, an alert an alert.
EVENT_KINDS = {Channel.READING: "metric", Channel.EVENT: "event", Channel.ALERT: "alert"}
AUDIT_PAGE_SIZE = 5000
# The (device, boot, seq) order the audit needs; _index breaks ties so that the same key stored
# twice (only possible with two different timestamps) is reported rather than skipped by
# search_after.
AUDIT_SORT = [{"device.id": "asc"}, {"saltmarsh.boot": "asc"}, {"saltmarsh.seq": "asc"}, {"_index": "asc"}]
# (cmd_id, device) is the document's identity, so no two share a sort position, and it never
# changes: a state written between two pages does not move its document across them. The
# SQLite sink's order too (keywords and SQLite's BINARY collation both compare UTF-8 bytes).
COMMAND_SORT = [{"cmd_id": "asc"}, {"device": "asc"}]
_FIELD_IN_REASON = re.compile(r"field \[([^\]]+)\]")


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds, the form Kibana shows."""
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_ms(value: Any) -> int:
    """`@timestamp` back to epoch milliseconds: our ISO form, or a number if someone wrote one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    when = datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def message_document(delivery: Delivery) -> dict[str, Any]:
    """The stored form of one reading, event, alert or command outcome: ECS names where ECS has them."""
    env = delivery.envelope
    event: dict[str, Any] = {
        "kind": EVENT_KINDS.get(env.kind, "event"),
        "dataset": f"saltmarsh.{env.kind.value}",
        "ingested": iso_ms(delivery.received_ms),
    }
    device: dict[str, Any] = {"id": env.device}
    saltmarsh: dict[str, Any] = {
        "key": env.key,
        "boot": env.boot,
        "seq": env.seq,
        "kind": env.kind.value,
        # Precomputed so a Kibana histogram of delivery delay needs no runtime field.
        "delivery_delay_ms": delivery.received_ms - env.ts_ms,
    }
    doc: dict[str, Any] = {
        "@timestamp": iso_ms(env.ts_ms),
        "event": event,
        "device": device,
        "site": {"id": env.site},
        "metrics": dict(env.metrics),
        "saltmarsh": saltmarsh,
    }
    if env.name is not None:
        event["action"] = env.name
    if env.detail is not None:
        doc["message"] = env.detail
    if env.model is not None:
        device["model"] = {"identifier": env.model}
    if env.firmware is not None:
        saltmarsh["firmware"] = env.firmware
    if env.units:
        saltmarsh["units"] = dict(env.units)
    if delivery.gateway is not None:
        saltmarsh["gateway"] = delivery.gateway
    if env.cmd is not None:
        saltmarsh["command"] = env.cmd.to_json()
    if env.location is not None:
        doc["location"] = {"lat": env.location.lat, "lon": env.location.lon}
        if env.location.place is not None:
            doc["location_name"] = env.location.place
    return doc


def dead_letter_source(letter: DeadLetter) -> dict[str, Any]:
    """The stored form of a dead letter: why, where it came from, and the head, size and hash of
    the payload as received."""
    encoding, text = letter.payload_text()
    doc: dict[str, Any] = {
        "@timestamp": iso_ms(letter.received_ms),
        "reason": letter.reason.value,
        "field": letter.field,
        "detail": letter.detail,
        "topic": letter.topic,
        "payload_encoding": encoding,
        "payload": text,
        "payload_bytes": letter.payload_bytes,
        "payload_sha256": letter.payload_sha256,
        "event": {"kind": "pipeline_error", "ingested": iso_ms(letter.received_ms)},
    }
    try:
        parsed = Topic.parse(letter.topic)
    except ValidationError:
        return doc
    doc["device"] = {"id": parsed.device}
    doc["site"] = {"id": parsed.site}
    return doc


def dead_letter_doc(prefix: str, letter: DeadLetter) -> BulkDoc:
    """A contract violation from the ingester. Its id is a digest of everything it carries, so the
    same batch written again after a failure stores it once; a fresh redelivery (another
    received_ms) is a new dead letter, as in the SQLite sink."""
    digest = hashlib.sha256()
    for part in (str(letter.received_ms), letter.topic, letter.reason.value, letter.field):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(letter.payload_sha256.encode())
    index = monthly_index(prefix, DEAD_LETTERS, letter.received_ms)
    return BulkDoc(index, digest.hexdigest()[:40], dead_letter_source(letter))


def rejected_doc(prefix: str, delivery: Delivery, status: int, error_type: str, reason: str) -> BulkDoc:
    """A valid envelope that Elasticsearch refused. Keyed and routed like the reading itself, so a
    replay of the same envelope finds its dead letter already there."""
    env = delivery.envelope
    match = _FIELD_IN_REASON.search(reason)
    letter = DeadLetter.of(
        delivery.received_ms,
        str(env.topic),
        env.encode(),
        reason=Reason.SINK_REJECTED,
        field=match.group(1) if match else "",
        detail=f"{error_type}: {reason}"[:2000],
    )
    source = dead_letter_source(letter)
    source["saltmarsh"] = {"key": env.key}
    if delivery.gateway is not None:
        source["saltmarsh"]["gateway"] = delivery.gateway
    source["error"] = {"type": error_type, "status": status}
    try:
        index = monthly_index(prefix, DEAD_LETTERS, env.ts_ms)
    except (OverflowError, OSError, ValueError):
        index = monthly_index(prefix, DEAD_LETTERS, delivery.received_ms)
    return BulkDoc(index, f"{Reason.SINK_REJECTED.value}:{env.key}", source)


def command_state_doc(prefix: str, record: CommandRecord) -> BulkDoc:
    return BulkDoc(command_index(prefix), record.key, record.to_doc(), version=record.version)


def open_client(cfg: ElasticsearchConfig, node_class: type[BaseNode] | None = None) -> Elasticsearch:
    """The client for `cfg`. Production passes no `node_class`; tests pass one for the emulator."""
    kwargs: dict[str, Any] = {
        "request_timeout": cfg.request_timeout_s,
        # One try per host, so a dead node fails over to the next; backoff and status retries
        # are BulkWriter's, which knows which items are safe to resend.
        "max_retries": len(cfg.hosts) - 1,
        "retry_on_status": (),
        "retry_on_timeout": False,
    }
    if cfg.api_key is not None:
        kwargs["api_key"] = cfg.api_key.reveal()
    elif cfg.password is not None and cfg.username is not None:
        kwargs["basic_auth"] = (cfg.username, cfg.password.reveal())
    if cfg.ca_file is not None:
        kwargs["ca_certs"] = str(cfg.ca_file)
    if not cfg.verify_certs:
        kwargs["verify_certs"] = False
        kwargs["ssl_show_warn"] = False
        log.warning("TLS certificates of elasticsearch are not verified", extra={"event": "es_tls_unverified"})
    if node_class is not None:
        kwargs["node_class"] = node_class
    elif cfg.plain_json:
        kwargs["node_class"] = PlainJsonNode
    return Elasticsearch(list(cfg.hosts), **kwargs)


class ElasticsearchSink:
    """Sink and AuditSource over an Elasticsearch (or OpenSearch-compatible) cluster."""

    name = "elasticsearch"

    def __init__(
        self,
        cfg: ElasticsearchConfig,
        *,
        client: Elasticsearch | None = None,
        node_class: type[BaseNode] | None = None,
        read_only: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        audit_page_size: int = AUDIT_PAGE_SIZE,
    ) -> None:
        self.cfg = cfg
        self.prefix = cfg.index_prefix
        self.read_only = read_only
        self.client = client if client is not None else open_client(cfg, node_class)
        self._owns_client = client is None
        self.writer = BulkWriter(self.client, BulkPolicy.from_config(cfg), sleep=sleep, jitter=jitter)
        self.audit_page_size = audit_page_size
        self.last_error: str | None = None
        self.last_ok_ms: int | None = None
        self.command_states_stored = 0
        self.command_states_stale = 0  # outcomes that did not advance their target's state
        # The ingester writes from one thread, but status and audit may call in from others.
        self._lock = threading.Lock()
        self._templates_ready = False
        if not read_only:
            # The ingester must start even while the cluster is down (it then holds its batch
            # unacked), so a failure here is remembered and retried by the first write.
            try:
                self._ensure_templates()
            except SinkUnavailable as err:
                self._failed(err)

    @property
    def why(self) -> str:
        """Empty while healthy; otherwise the last failure, for the status file."""
        return self.last_error or ""

    def _failed(self, err: SinkUnavailable) -> None:
        self.last_error = str(err)
        log.warning("elasticsearch sink unavailable", extra={"event": "es_unavailable", "why": self.last_error})

    def _ensure_templates(self) -> None:
        if self._templates_ready:
            return
        # Writing before the templates exist would auto-create this month's index with guessed
        # mappings that could never be corrected; so no template, no write.
        try:
            install_templates(self.client, self.prefix, self.cfg.ilm_delete_after_days)
        except (ApiError, TransportError) as err:
            raise SinkUnavailable(f"elasticsearch: cannot install index templates: {err}"[:500]) from err
        self._templates_ready = True

    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult:
        with self._lock:
            try:
                result = self._write(deliveries, dead_letters)
            except SinkUnavailable as err:
                self._failed(err)
                raise
            self.last_error = None
            self.last_ok_ms = int(time.time() * 1000)
            return result

    def _write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult:
        if self.read_only:
            raise SinkUnavailable("elasticsearch sink was opened read-only")
        self._ensure_templates()
        letters = [dead_letter_doc(self.prefix, letter) for letter in dead_letters]
        routed: list[BulkDoc] = []
        routed_from: list[Delivery] = []
        for delivery in deliveries:
            env = delivery.envelope
            try:
                index = monthly_index(self.prefix, READINGS, env.ts_ms)
            except (OverflowError, OSError, ValueError) as err:
                # A timestamp no calendar month holds: refused here as Elasticsearch would.
                letters.append(rejected_doc(self.prefix, delivery, 400, "timestamp_out_of_range", str(err)))
                continue
            routed.append(BulkDoc(index, env.key, message_document(delivery)))
            routed_from.append(delivery)
        # Every outcome moves its target's state, as in SQLite, even one whose message is refused.
        states = [command_state_doc(self.prefix, r) for r in kept_per_target(command_records(deliveries))]
        docs = routed + states
        messages = self.writer.index_documents(docs) if docs else BulkResult(0, 0)
        state_refusals = [r for r in messages.refused if r.position >= len(routed)]
        if state_refusals:
            first = state_refusals[0]
            raise SinkUnavailable(
                f"elasticsearch refused {len(state_refusals)} command states, e.g. {first.doc.doc_id}: "
                f"{first.status} {first.error_type}: {first.reason}"[:500]
            )
        self.command_states_stored += messages.versioned
        self.command_states_stale += messages.stale
        for refusal in messages.refused:
            letters.append(self._rejected(routed_from[refusal.position], refusal))
        if letters:
            stored = self.writer.index_documents(letters)
            if stored.refused:
                first = stored.refused[0]
                # The dead-letter mapping takes any document, so this is a broken template or
                # cluster; stalling the batch unacked is safer than dropping what it holds.
                raise SinkUnavailable(
                    f"elasticsearch refused {len(stored.refused)} dead letters, e.g. {first.status} "
                    f"{first.error_type}: {first.reason}"[:500]
                )
        return WriteResult(written=messages.created, duplicates=messages.duplicates, dead_letters=len(letters))

    def _rejected(self, delivery: Delivery, refusal: Refusal) -> BulkDoc:
        log.warning(
            "elasticsearch refused a message; storing it as a dead letter",
            extra={
                "event": "es_message_rejected",
                "key": delivery.envelope.key,
                "status": refusal.status,
                "error_type": refusal.error_type,
                "reason": refusal.reason[:300],
            },
        )
        return rejected_doc(self.prefix, delivery, refusal.status, refusal.error_type, refusal.reason)

    def index_documents(self, docs: Sequence[BulkDoc]) -> BulkResult:
        """Create arbitrary documents (fleet events) through the same bulk, retry and health path."""
        with self._lock:
            try:
                self._ensure_templates()
                result = self.writer.index_documents(docs)
            except SinkUnavailable as err:
                self._failed(err)
                raise
            self.last_error = None
            return result

    def _refresh(self, family: str) -> None:
        # Writes use refresh=false; an audit must see everything acknowledged before it started.
        self.client.indices.refresh(index=index_pattern(self.prefix, family), allow_no_indices=True)

    def stored_keys(self) -> Iterator[StoredKey]:
        """Every stored message key in (device, boot, seq) order, one page of search_after at a time."""
        pattern = index_pattern(self.prefix, READINGS)
        try:
            self._refresh(READINGS)
            for hit in self._pages(
                index=pattern,
                sort=AUDIT_SORT,
                source_includes=["device.id", "saltmarsh.boot", "saltmarsh.seq", "@timestamp"],
                allow_no_indices=True,
            ):
                yield _stored_key(hit["_source"])
        except (ApiError, TransportError) as err:
            raise SinkUnavailable(f"elasticsearch audit failed: {err}"[:500]) from err

    def _pages(self, **search: Any) -> Iterator[dict[str, Any]]:
        """Every hit of a sorted search, one page of search_after at a time (the callers map errors)."""
        search_after: list[Any] | None = None
        while True:
            response = self.client.search(
                size=self.audit_page_size, search_after=search_after, track_total_hits=False, **search
            )
            hits = response["hits"]["hits"]
            yield from hits
            if len(hits) < self.audit_page_size:
                return
            search_after = hits[-1]["sort"]

    def dead_letter_counts(self) -> dict[str, int]:
        try:
            self._refresh(DEAD_LETTERS)
            response = self.client.search(
                index=index_pattern(self.prefix, DEAD_LETTERS),
                size=0,
                aggs={"by_reason": {"terms": {"field": "reason", "size": 1000}}},
                allow_no_indices=True,
            )
        except (ApiError, TransportError) as err:
            raise SinkUnavailable(f"elasticsearch audit failed: {err}"[:500]) from err
        aggregations = response.body.get("aggregations") or {}
        buckets = aggregations.get("by_reason", {}).get("buckets", [])
        return {str(b["key"]): int(b["doc_count"]) for b in sorted(buckets, key=lambda b: str(b["key"]))}

    def command_states(self, rollout: str | None = None) -> list[CommandRecord]:
        """Each target's command state, oldest command first; one rollout's, or every one.

        All of them, one page of search_after at a time: a rollout may have tens of thousands of
        targets. No index yet (no outcome written) reads as none.
        """
        index = command_index(self.prefix)
        query: dict[str, Any] = {"match_all": {}} if rollout is None else {"term": {"rollout": rollout}}
        try:
            # Writes use refresh=false; a reader should see every outcome acknowledged so far. A
            # read-only role may not refresh: what the cluster's own refresh (1 s) made visible will do.
            with contextlib.suppress(AuthorizationException):
                self.client.indices.refresh(index=index)
            return [
                CommandRecord.from_doc(hit["_source"])
                for hit in self._pages(index=index, query=query, sort=COMMAND_SORT)
            ]
        except NotFoundError:
            return []
        except TransportError as err:
            hosts = ", ".join(self.cfg.hosts)
            raise SinkUnavailable(
                f"elasticsearch unreachable at {hosts}: command states not read: {type(err).__name__}: {err}"[:500]
            ) from err
        except ApiError as err:
            raise SinkUnavailable(f"elasticsearch: command states not read from {index}: {err}"[:500]) from err

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _stored_key(source: Mapping[str, Any]) -> StoredKey:
    return StoredKey(
        device=str(source["device"]["id"]),
        boot=str(source["saltmarsh"]["boot"]),
        seq=int(source["saltmarsh"]["seq"]),
        ts_ms=parse_ms(source["@timestamp"]),
    )
