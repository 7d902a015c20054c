"""Forward selected envelopes to an Amazon Kinesis data stream through PutRecords.

In: the ingester's validated deliveries (`KinesisSink.write`), or any producer's records
(`KinesisForwarder.put_all`, as the Salt relay does). Both run the same batching and retry code.
Out: one Kinesis record per selected envelope. Partition key: the device. Data: the envelope
JSON plus `"selected_by": {"rule", "why"}`. Unselected envelopes are skipped here; they reach
only Elasticsearch.

Limits. A PutRecords call carries at most 500 records and 5 MiB. A record, partition key
included, is at most 1 MiB. `plan_call` (pure) packs calls under the first two limits.
Records over the third are never sent, because one would fail every call it rides in. The
forwarder returns their indices in `PutOutcome.rejected`. The sink turns each into a
`DeadLetter` with reason `sink_rejected` in `KinesisSink.last_rejected`, for whoever stores
dead letters, and counts them in `WriteResult.dead_letters`.

Dead letters given to `write` are not sent to Kinesis. Another sink stores them, so this sink
ignores them and does not count them.

Retries. After a partial failure (`FailedRecordCount` > 0), only the records that have an
`ErrorCode` are sent again, in their original relative order. A throttled or failed call
(ProvisionedThroughputExceededException, connection errors, 5xx) is retried whole. Both wait
as `saltmarsh.runtime.backoff` says: exponential, capped, with jitter. Once any record has failed `retry_max` retries,
`SinkUnavailable` is raised. Errors that a retry cannot fix (missing stream, bad credentials)
raise it at once. botocore's own retries are off, so the counters see every attempt.

Ordering. Kinesis orders a shard by sequence number, and one partition key always maps to one
shard. A record that fails in a call and succeeds on retry gets a later sequence number than
every record that succeeded in that call. Nothing undoes those. `SequenceNumberForOrdering`
exists only on the single-record PutRecord, and it does not reorder records already
committed. So there are two modes:

- `per_device` (the default): a call carries at most one record per device. A device's next
  record is sent only after its previous one is committed. Each device's records reach its
  shard in the order `write` got them, whatever fails. The cost: n records of one device in
  one `write` take n calls. Live traffic spreads over many devices and still fills calls, but
  a single device's backlog drains at one record per round trip.
- `relaxed`: calls are packed with several records per device. A record retried after a
  partial failure lands behind any later record of its device that succeeded in the same
  call. `counters.out_of_order` counts those overtakes. Consumers reorder by
  (device, boot, seq), which every record carries.

Duplicates. Delivery is at least once. A call that times out may have committed, and its
retry adds a second copy. In `per_device` mode that copy comes after the first, so
deduplicating on (device, boot, seq) and keeping the first copy keeps the order. When `write`
raises, the ingester retries the whole batch. The sink remembers the last `RECENT_KEYS_MAX`
forwarded keys, so a retried batch does not resend the envelopes it already committed. That
memory does not survive a restart.
"""

from __future__ import annotations

import json
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from saltmarsh.config.kinesis import KinesisConfig
from saltmarsh.contract.errors import KinesisUnavailable, Reason
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from saltmarsh.sinks.base import DeadLetter, Delivery, WriteResult
from saltmarsh.sinks.kinesis.selection import Selection

MAX_RECORDS_PER_CALL = 500
MAX_CALL_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024  # data plus partition key
MAX_PARTITION_KEY_CHARS = 256
RECENT_KEYS_MAX = 100_000  # about 10 MB of keys; several ingester batches' worth

THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
    }
)
# Failures a retry a few hundred milliseconds later cannot fix: raise at once and let the
# ingester's own slower loop retry the batch until an operator fixes the stream or the keys.
FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "InvalidArgumentException",
        "ValidationException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "KMSOptInRequired",
    }
)

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class KinesisClient(Protocol):
    """The part of a boto3 Kinesis client this module uses; tests pass fakes."""

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class KinesisRecord:
    partition_key: str
    data: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.partition_key) <= MAX_PARTITION_KEY_CHARS:
            raise ValueError(f"partition key must be 1 to {MAX_PARTITION_KEY_CHARS} characters")

    @classmethod
    def of_json(cls, partition_key: str, doc: dict[str, Any]) -> KinesisRecord:
        return cls(partition_key, _encode(doc).encode())

    @property
    def size(self) -> int:
        """What counts against the record and call limits: the data plus the partition key."""
        return len(self.data) + len(self.partition_key.encode())


@dataclass(frozen=True, slots=True)
class PutOutcome:
    committed: int
    rejected: tuple[int, ...]  # indices over MAX_RECORD_BYTES, refused without being sent


@dataclass
class ForwarderCounters:
    records_sent: int = 0  # committed by Kinesis
    records_retried: int = 0  # sends after the first, per record
    throttled: int = 0  # calls refused in whole or in part for throughput
    rejected_oversize: int = 0
    batches: int = 0  # PutRecords calls made
    out_of_order: int = 0  # relaxed mode: records committed ahead of an earlier failed one of their device
    last_error: str | None = None  # the latest failure; kept after recovery

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_BACKOFF = BackoffPolicy(base_s=0.1, cap_s=2.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_max: int = 5
    backoff: BackoffPolicy = DEFAULT_BACKOFF


def plan_call(
    candidates: Sequence[KinesisRecord],
    max_records: int = MAX_RECORDS_PER_CALL,
    max_bytes: int = MAX_CALL_BYTES,
) -> list[int]:
    """Indices into `candidates` for the next call, in order, within both call limits.

    A record that does not fit is left for a later call. Later records of its partition key
    are left too, so that packing never reorders a key. Every candidate must be within
    MAX_RECORD_BYTES. Such a record always fits an empty call, so each call makes progress.
    """
    chosen: list[int] = []
    used = 0
    blocked: set[str] = set()
    for i, record in enumerate(candidates):
        if len(chosen) >= max_records:
            break
        if record.partition_key in blocked:
            continue
        if used + record.size > max_bytes:
            blocked.add(record.partition_key)
            continue
        chosen.append(i)
        used += record.size
    return chosen


def count_overtakes(outcomes: Iterable[tuple[str, bool]]) -> int:
    """For one call's (partition key, succeeded) in request order: successes behind a failure of their key."""
    failed_keys: set[str] = set()
    overtakes = 0
    for key, succeeded in outcomes:
        if not succeeded:
            failed_keys.add(key)
        elif key in failed_keys:
            overtakes += 1
    return overtakes


class _Pending:
    """Records still to commit, and which of them may ride in the next call."""

    def __init__(self, records: Sequence[KinesisRecord], indices: Iterable[int], per_key: bool) -> None:
        self._records = records
        self._per_key = per_key
        self._order: list[int] = []
        self._queues: dict[str, deque[int]] = {}
        for i in indices:
            if per_key:
                self._queues.setdefault(records[i].partition_key, deque()).append(i)
            else:
                self._order.append(i)

    def __bool__(self) -> bool:
        return bool(self._queues or self._order)

    def candidates(self) -> list[int]:
        if self._per_key:
            return [queue[0] for queue in self._queues.values()]
        return self._order

    def settle(self, committed: Collection[int]) -> None:
        if not self._per_key:
            self._order = [i for i in self._order if i not in committed]
            return
        for i in committed:
            key = self._records[i].partition_key
            queue = self._queues[key]
            queue.popleft()  # only heads are ever sent, so `i` is the head
            if not queue:
                del self._queues[key]


class _CallFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class KinesisForwarder:
    """PutRecords with the limits, retries and ordering described in the module docstring."""

    def __init__(
        self,
        client: KinesisClient,
        stream_name: str,
        *,
        per_device_order: bool = True,
        batch_max_records: int = MAX_RECORDS_PER_CALL,
        policy: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 1 <= batch_max_records <= MAX_RECORDS_PER_CALL:
            raise ValueError(f"batch_max_records {batch_max_records} is outside [1, {MAX_RECORDS_PER_CALL}]")
        self.client = client
        self.stream_name = stream_name
        self.per_device_order = per_device_order
        self.batch_max_records = batch_max_records
        self.policy = policy
        self.counters = ForwarderCounters()
        self._sleep = sleep
        self._rand = rand

    def put_all(self, records: Sequence[KinesisRecord]) -> PutOutcome:
        """Commit every record within the limits, or raise KinesisUnavailable after retry_max."""
        rejected = tuple(i for i, record in enumerate(records) if record.size > MAX_RECORD_BYTES)
        if rejected:
            self.counters.rejected_oversize += len(rejected)
            self.counters.last_error = f"{len(rejected)} records over the {MAX_RECORD_BYTES}-byte record limit"
        refused = set(rejected)
        pending = _Pending(records, (i for i in range(len(records)) if i not in refused), self.per_device_order)
        failures: dict[int, int] = {}
        committed: list[int] = []
        while pending:
            candidates = pending.candidates()
            chosen = [candidates[j] for j in plan_call([records[i] for i in candidates], self.batch_max_records)]
            failed = self._call(records, chosen, committed)
            succeeded = [i for i in chosen if i not in failed]
            committed.extend(succeeded)
            self.counters.records_sent += len(succeeded)
            self.counters.out_of_order += count_overtakes((records[i].partition_key, i not in failed) for i in chosen)
            pending.settle(set(succeeded))
            if not failed:
                continue
            worst = 0
            for i in failed:
                failures[i] = failures.get(i, 0) + 1
                worst = max(worst, failures[i])
            if worst > self.policy.retry_max:
                raise KinesisUnavailable(
                    f"Kinesis stream {self.stream_name!r}: {len(failed)} records still failing after "
                    f"{self.policy.retry_max} retries; last error {self.counters.last_error}",
                    committed,
                )
            self.counters.records_retried += len(failed)
            self._sleep(backoff_delay(worst, self.policy.backoff, self._rand()))
        return PutOutcome(len(committed), rejected)

    def _call(self, records: Sequence[KinesisRecord], chosen: list[int], committed: list[int]) -> dict[int, str]:
        """One PutRecords call: the indices that failed, each with its error code."""
        entries = [{"Data": records[i].data, "PartitionKey": records[i].partition_key} for i in chosen]
        self.counters.batches += 1
        try:
            response = self._put(entries)
        except _CallFailed as err:
            self.counters.last_error = str(err)[:300]
            if err.code in THROTTLE_CODES:
                self.counters.throttled += 1
            if err.code in FATAL_CODES:
                raise KinesisUnavailable(f"Kinesis stream {self.stream_name!r}: {err}", committed) from None
            return dict.fromkeys(chosen, err.code)
        failed: dict[int, str] = {}
        for i, result in zip(chosen, response, strict=True):
            code = result.get("ErrorCode")
            if code:
                failed[i] = str(code)
                self.counters.last_error = f"{code}: {result.get('ErrorMessage', '')}"[:300]
        if any(code in THROTTLE_CODES for code in failed.values()):
            self.counters.throttled += 1
        return failed

    def _put(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            response = self.client.put_records(StreamName=self.stream_name, Records=entries)
        except ClientError as err:
            error = err.response.get("Error", {})
            raise _CallFailed(str(error.get("Code", "Unknown")), str(error.get("Message", err))) from None
        except BotoCoreError as err:  # connection refused, timeouts, DNS
            raise _CallFailed(type(err).__name__, str(err)) from None
        results = response.get("Records")
        if not isinstance(results, list) or len(results) != len(entries):
            # Without one result per record we cannot tell which committed; retrying all of
            # them may duplicate, which is allowed, where skipping any may lose.
            raise _CallFailed("MalformedResponse", f"{len(entries)} records sent, results: {str(results)[:100]}")
        return results

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True, slots=True)
class ForwardResult:
    written: int  # committed to Kinesis by this call
    duplicates: int  # selected, but forwarded already (a retried batch) or twice in this batch
    unselected: int  # no rule matched: Elasticsearch only
    rejected: tuple[DeadLetter, ...]  # over the record limit: reason sink_rejected, not sent


class KinesisSink:
    """The Sink for selected envelopes; see the module docstring for every guarantee."""

    name = "kinesis"

    def __init__(
        self, forwarder: KinesisForwarder, selection: Selection, recent_keys_max: int = RECENT_KEYS_MAX
    ) -> None:
        self.forwarder = forwarder
        self.selection = selection
        self.recent_keys_max = recent_keys_max
        self.last_rejected: tuple[DeadLetter, ...] = ()
        self._recent: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_config(cls, cfg: KinesisConfig, client: KinesisClient | None = None) -> KinesisSink:
        return cls(forwarder_from_config(cfg, client), cfg.selection)

    @property
    def counters(self) -> ForwarderCounters:
        return self.forwarder.counters

    def forward(self, deliveries: Sequence[Delivery]) -> ForwardResult:
        records: list[KinesisRecord] = []
        sent: list[Delivery] = []
        in_batch: set[str] = set()
        duplicates = unselected = 0
        for delivery in deliveries:
            envelope = delivery.envelope
            match = self.selection.match(envelope)
            if match is None:
                unselected += 1
                continue
            if envelope.key in self._recent or envelope.key in in_batch:
                duplicates += 1
                continue
            in_batch.add(envelope.key)
            doc = envelope.to_json()
            doc["selected_by"] = match.to_json()
            records.append(KinesisRecord.of_json(envelope.device, doc))
            sent.append(delivery)
        try:
            outcome = self.forwarder.put_all(records)
        except KinesisUnavailable as err:
            self._remember(sent[i].envelope.key for i in err.committed)
            raise
        refused = set(outcome.rejected)
        self._remember(d.envelope.key for i, d in enumerate(sent) if i not in refused)
        rejected = tuple(_rejected_letter(sent[i], records[i]) for i in outcome.rejected)
        self.last_rejected = rejected
        return ForwardResult(outcome.committed, duplicates, unselected, rejected)

    def write(self, deliveries: Sequence[Delivery], dead_letters: Sequence[DeadLetter]) -> WriteResult:
        """Forward the selected deliveries; `dead_letters` are another sink's to store.

        `WriteResult.dead_letters` counts the envelopes this sink refused as over the record
        limit; `last_rejected` holds them as DeadLetters until the next write.
        """
        result = self.forward(deliveries)
        return WriteResult(written=result.written, duplicates=result.duplicates, dead_letters=len(result.rejected))

    def close(self) -> None:
        self.forwarder.close()

    def _remember(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._recent[key] = None
            self._recent.move_to_end(key)
        while len(self._recent) > self.recent_keys_max:
            self._recent.popitem(last=False)


def _rejected_letter(delivery: Delivery, record: KinesisRecord) -> DeadLetter:
    envelope = delivery.envelope
    return DeadLetter.of(
        delivery.received_ms,
        str(envelope.topic),
        envelope.encode(),
        reason=Reason.SINK_REJECTED,
        field="payload",
        detail=f"kinesis: record of {record.size} bytes is over the {MAX_RECORD_BYTES}-byte record limit",
    )


def make_client(cfg: KinesisConfig) -> KinesisClient:
    """A boto3 Kinesis client; boto3 is imported here so the pure parts load without it."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    timeout_s = cfg.request_timeout_ms / 1000
    options: dict[str, Any] = {
        "region_name": cfg.region,
        "endpoint_url": cfg.endpoint_url,
        # Our loop does the retrying, with its own backoff and counters; botocore's would
        # hide throttling and stretch an outage's detection by its own attempts.
        "config": Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 1}),
    }
    if cfg.access_key_id is not None and cfg.secret_access_key is not None:
        options["aws_access_key_id"] = cfg.access_key_id.reveal()
        options["aws_secret_access_key"] = cfg.secret_access_key.reveal()
        if cfg.session_token is not None:
            options["aws_session_token"] = cfg.session_token.reveal()
    # A session of our own: boto3's default session is not safe to share across threads.
    client: KinesisClient = boto3.session.Session().client("kinesis", **options)
    return client


def forwarder_from_config(cfg: KinesisConfig, client: KinesisClient | None = None) -> KinesisForwarder:
    return KinesisForwarder(
        make_client(cfg) if client is None else client,
        cfg.stream_name,
        per_device_order=cfg.ordering == "per_device",
        batch_max_records=cfg.batch_max_records,
        policy=RetryPolicy(
            cfg.retry_max, BackoffPolicy(base_s=cfg.backoff_base_ms / 1000, cap_s=cfg.backoff_cap_ms / 1000)
        ),
    )
