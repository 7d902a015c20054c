"""The forwarder's retry, backoff and ordering rules against an in-memory stream with injected faults."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError  # type: ignore[import-untyped]

from saltmarsh.contract.errors import KinesisUnavailable, Reason
from saltmarsh.contract.topics import Channel
from saltmarsh.runtime.backoff import BackoffPolicy
from saltmarsh.sinks.base import DeadLetter
from saltmarsh.sinks.kinesis.selection import Globs, Rule, Selection
from saltmarsh.sinks.kinesis.sink import (
    MAX_RECORD_BYTES,
    KinesisForwarder,
    KinesisRecord,
    KinesisSink,
    RetryPolicy,
)
from tests.kinesis_support import (
    THROTTLED,
    FlakyClient,
    MemoryKinesis,
    delivery,
    envelope,
    fail_first_time,
    throttle_error,
)

POLICY = RetryPolicy(retry_max=3, backoff=BackoffPolicy(base_s=0.1, cap_s=0.4))


def records(*pairs: tuple[str, int]) -> list[KinesisRecord]:
    return [KinesisRecord.of_json(device, {"device": device, "seq": seq}) for device, seq in pairs]


def seqs(calls: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(doc["device"], doc["seq"]) for doc in calls]


class Rig:
    def __init__(self, per_device_order: bool = True, **flaky: Any) -> None:
        self.stream = MemoryKinesis(shards=3)
        self.client = FlakyClient(self.stream, **flaky)
        self.sleeps: list[float] = []
        self.forwarder = KinesisForwarder(
            self.client,
            "events",
            per_device_order=per_device_order,
            policy=POLICY,
            sleep=self.sleeps.append,
            rand=lambda: 1.0,  # the top of each jitter range, so sleeps are exact
        )

    def stored_seqs(self, device: str) -> list[int]:
        return [doc["seq"] for doc in self.stream.by_key().get(device, [])]


def test_partial_failure_resends_only_failed_records_in_their_order() -> None:
    rig = Rig(per_device_order=False, fail_record=fail_first_time({("a", 2), ("b", 5), ("a", 6)}))
    batch = records(*[("a" if i % 2 == 0 else "b", i) for i in range(10)])
    outcome = rig.forwarder.put_all(batch)
    assert outcome.committed == 10 and outcome.rejected == ()
    assert len(rig.client.calls) == 2
    assert seqs(rig.client.calls[1]) == [("a", 2), ("b", 5), ("a", 6)]
    counters = rig.forwarder.counters
    assert (counters.records_sent, counters.records_retried, counters.throttled, counters.batches) == (10, 3, 1, 2)
    assert counters.last_error is not None and THROTTLED in counters.last_error
    assert rig.sleeps == [pytest.approx(0.1)]


def test_per_device_order_survives_a_partial_failure() -> None:
    rig = Rig(fail_record=fail_first_time({("d", 3), ("e", 0)}))
    rig.forwarder.put_all(records(*[("d", i) for i in range(8)], *[("e", i) for i in range(3)], ("f", 0)))
    assert rig.stored_seqs("d") == list(range(8))
    assert rig.stored_seqs("e") == [0, 1, 2]
    assert rig.stored_seqs("f") == [0]
    for call in rig.client.calls:  # never two records of one device in flight together
        devices = [doc["device"] for doc in call]
        assert len(devices) == len(set(devices))
    assert rig.forwarder.counters.out_of_order == 0


def test_relaxed_order_lets_later_records_overtake_and_counts_it() -> None:
    rig = Rig(per_device_order=False, fail_record=fail_first_time({("d", 3)}))
    rig.forwarder.put_all(records(*[("d", i) for i in range(8)]))
    assert len(rig.client.calls) == 2
    assert rig.stored_seqs("d") == [0, 1, 2, 4, 5, 6, 7, 3]
    assert rig.forwarder.counters.out_of_order == 4


def test_whole_call_throttling_backs_off_exponentially_then_succeeds() -> None:
    rig = Rig(fail_calls=[throttle_error(), throttle_error(), throttle_error()])
    outcome = rig.forwarder.put_all(records(("a", 0), ("b", 0)))
    assert outcome.committed == 2
    assert rig.sleeps == pytest.approx([0.1, 0.2, 0.4])
    counters = rig.forwarder.counters
    assert (counters.throttled, counters.batches, counters.records_retried, counters.records_sent) == (3, 4, 6, 2)
    assert rig.stored_seqs("a") == [0] and rig.stored_seqs("b") == [0]


def test_backoff_is_capped() -> None:
    rig = Rig(fail_calls=[throttle_error() for _ in range(3)])
    rig.forwarder.policy = RetryPolicy(retry_max=5, backoff=BackoffPolicy(base_s=0.1, cap_s=0.15))
    rig.forwarder.put_all(records(("a", 0)))
    assert rig.sleeps == pytest.approx([0.1, 0.15, 0.15])


def test_gives_up_after_retry_max_and_says_what_committed() -> None:
    def always_fail_a1(doc: dict[str, Any], sent_before: int) -> str | None:
        return "InternalFailure" if (doc["device"], doc["seq"]) == ("a", 1) else None

    rig = Rig(fail_record=always_fail_a1)
    batch = records(("a", 0), ("a", 1), ("a", 2), ("b", 0))
    with pytest.raises(KinesisUnavailable, match="still failing after 3 retries") as caught:
        rig.forwarder.put_all(batch)
    assert sorted(caught.value.committed) == [0, 3]  # a2 never left: it waits behind a1
    assert rig.stored_seqs("a") == [0]
    assert len(rig.sleeps) == 3  # no sleep before giving up


def test_whole_call_failures_exhaust_too() -> None:
    rig = Rig(fail_calls=[throttle_error() for _ in range(10)])
    with pytest.raises(KinesisUnavailable, match=THROTTLED) as caught:
        rig.forwarder.put_all(records(("a", 0)))
    assert caught.value.committed == ()
    assert rig.forwarder.counters.batches == POLICY.retry_max + 1


def test_errors_a_retry_cannot_fix_raise_at_once() -> None:
    missing = ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "no stream"}}, "PutRecords")
    rig = Rig(fail_calls=[missing])
    with pytest.raises(KinesisUnavailable, match="ResourceNotFoundException"):
        rig.forwarder.put_all(records(("a", 0)))
    assert rig.sleeps == []


def test_connection_errors_are_retried() -> None:
    rig = Rig(fail_calls=[EndpointConnectionError(endpoint_url="http://127.0.0.1:1")])
    assert rig.forwarder.put_all(records(("a", 0))).committed == 1
    assert rig.forwarder.counters.throttled == 0
    assert "EndpointConnectionError" in str(rig.forwarder.counters.last_error)


def test_a_response_without_one_result_per_record_is_retried() -> None:
    class ShortAnswer(MemoryKinesis):
        answered = False

        def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
            response = super().put_records(StreamName=StreamName, Records=Records)
            if not self.answered:
                self.answered = True
                return {"FailedRecordCount": 0, "Records": response["Records"][:-1]}
            return response

    stream = ShortAnswer()
    forwarder = KinesisForwarder(stream, "events", policy=POLICY, sleep=lambda s: None)
    assert forwarder.put_all(records(("a", 0), ("b", 0))).committed == 2
    assert "MalformedResponse" in str(forwarder.counters.last_error)


def test_oversize_records_are_refused_up_front() -> None:
    rig = Rig()
    big = KinesisRecord("a", b"x" * MAX_RECORD_BYTES)  # one byte over, with the key
    outcome = rig.forwarder.put_all([*records(("a", 0)), big, *records(("a", 2))])
    assert outcome.rejected == (1,) and outcome.committed == 2
    assert all(len(call) == 1 for call in rig.client.calls)
    assert rig.forwarder.counters.rejected_oversize == 1


SELECT_ALERTS = Selection((Rule("alerts", kinds=frozenset({Channel.ALERT})), Rule("hot", devices=Globs(("hot-*",)))))


def test_sink_forwards_only_selected_envelopes_and_ignores_dead_letters() -> None:
    stream = MemoryKinesis()
    sink = KinesisSink(KinesisForwarder(stream, "events"), SELECT_ALERTS)
    deliveries = [
        delivery(envelope("d1", 0)),
        delivery(envelope("d1", 1, Channel.ALERT, name="overheat")),
        delivery(envelope("hot-2", 0)),
    ]
    dead = DeadLetter.of(
        1, "saltmarsh/v1/marsh/d1/reading", b"{", reason=Reason.MALFORMED_JSON, field="payload", detail="bad"
    )
    result = sink.write(deliveries, [dead])
    assert (result.written, result.duplicates, result.dead_letters) == (2, 0, 0)
    stored = stream.by_key()
    assert set(stored) == {"d1", "hot-2"}
    assert stored["d1"][0]["selected_by"] == {"rule": "alerts", "why": "kind alert"}
    assert stored["d1"][0]["kind"] == "alert" and stored["d1"][0]["name"] == "overheat"
    assert stored["hot-2"][0]["selected_by"]["rule"] == "hot"


def test_sink_does_not_resend_what_a_failed_write_committed() -> None:
    def fail_b(doc: dict[str, Any], sent_before: int) -> str | None:
        return "InternalFailure" if doc["device"] == "b" and sent_before < 2 else None

    stream = MemoryKinesis()
    client = FlakyClient(stream, fail_record=fail_b)
    forwarder = KinesisForwarder(client, "events", policy=RetryPolicy(retry_max=1), sleep=lambda s: None)
    sink = KinesisSink(forwarder, SELECT_ALERTS)
    batch = [delivery(envelope(device, 0, Channel.ALERT)) for device in ("a", "b", "c")]
    with pytest.raises(KinesisUnavailable):
        sink.write(batch, [])
    result = sink.write([*batch, batch[1]], [])  # the ingester retries the batch, with a redelivery inside
    assert (result.written, result.duplicates) == (1, 3)
    assert {key: len(docs) for key, docs in stream.by_key().items()} == {"a": 1, "b": 1, "c": 1}


def test_sink_reports_oversize_envelopes_as_sink_rejected_dead_letters() -> None:
    stream = MemoryKinesis()
    sink = KinesisSink(KinesisForwarder(stream, "events"), SELECT_ALERTS)
    # With a raised max_payload_bytes a big `units` table can carry an envelope past 1 MiB: each
    # unit is within the text limit, the table as a whole is not bounded.
    units = {f"u{i}": "y" * 250 for i in range(MAX_RECORD_BYTES // 250 + 10)}
    huge = replace(envelope("a", 1, Channel.ALERT), units=units)
    result = sink.write([delivery(envelope("a", 0, Channel.ALERT)), delivery(huge)], [])
    assert (result.written, result.dead_letters) == (1, 1)
    (letter,) = sink.last_rejected
    assert letter.reason is Reason.SINK_REJECTED
    assert letter.topic == "saltmarsh/v1/marsh/a/alert"
    assert "record limit" in letter.detail
    assert sink.counters.rejected_oversize == 1
    assert sink.write([], []).dead_letters == 0 and sink.last_rejected == ()
