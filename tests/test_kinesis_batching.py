"""The pure parts of the Kinesis forwarder: call packing at the PutRecords limits, and backoff."""

from __future__ import annotations

import pytest

from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from saltmarsh.sinks.kinesis.sink import (
    MAX_CALL_BYTES,
    MAX_RECORD_BYTES,
    KinesisRecord,
    RetryPolicy,
    count_overtakes,
    plan_call,
)

MiB = 1024 * 1024


def record(key: str, size: int) -> KinesisRecord:
    """A record whose size, partition key included, is exactly `size`."""
    return KinesisRecord(key, b"x" * (size - len(key)))


def test_at_most_500_records_per_call() -> None:
    records = [record(f"d{i % 7}", 100) for i in range(1200)]
    assert plan_call(records) == list(range(500))
    assert plan_call(records[1000:]) == list(range(200))
    assert plan_call(records, max_records=10) == list(range(10))


def test_at_most_5_mib_per_call_counting_partition_keys() -> None:
    # Five records of exactly 1 MiB, key included, fill a call to the byte.
    full = [record(f"d{i}", MiB) for i in range(6)]
    assert plan_call(full) == [0, 1, 2, 3, 4]
    assert sum(full[i].size for i in plan_call(full)) == MAX_CALL_BYTES
    # A 100-byte record ahead of them pushes the fifth out; a small record of another key still fits.
    shifted = [record("a", 100), *full[:5], record("z", 50)]
    assert plan_call(shifted) == [0, 1, 2, 3, 4, 6]


def test_a_key_that_does_not_fit_holds_back_its_later_records() -> None:
    # d1's big record misses this call, so d1's small record must wait behind it.
    records = [record("d0", 3 * MiB), record("d1", 3 * MiB), record("d1", 10), record("d2", 10)]
    assert plan_call(records) == [0, 3]


def test_record_limit_is_one_mib_including_the_key() -> None:
    assert record("dev-1", MAX_RECORD_BYTES).size == MAX_RECORD_BYTES
    assert KinesisRecord("dev-1", b"x" * MAX_RECORD_BYTES).size == MAX_RECORD_BYTES + 5


def test_partition_key_length() -> None:
    KinesisRecord("k" * 256, b"")
    with pytest.raises(ValueError, match="partition key"):
        KinesisRecord("k" * 257, b"")
    with pytest.raises(ValueError, match="partition key"):
        KinesisRecord("", b"")


def test_empty_input_plans_nothing() -> None:
    assert plan_call([]) == []


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([("a", True), ("a", True)], 0),
        ([("a", False), ("a", True), ("b", True), ("a", True)], 2),
        ([("a", True), ("a", False)], 0),  # only what follows a failure overtakes it
        ([("a", False), ("b", True), ("b", True)], 0),
    ],
)
def test_count_overtakes(outcomes: list[tuple[str, bool]], expected: int) -> None:
    assert count_overtakes(outcomes) == expected


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(retry_max=10, backoff=BackoffPolicy(base_s=0.1, cap_s=1.0)).backoff
    assert [backoff_delay(n, policy, 1.0) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert [backoff_delay(n, policy, 0.0) for n in range(1, 6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])
    assert backoff_delay(1000, policy, 0.5) == pytest.approx(0.75)  # no overflow far past the cap
