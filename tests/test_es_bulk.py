"""The bulk writer's rules, against a scripted client: chunking, per-item classification, retries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import ApiError, Elasticsearch

from saltmarsh.config.elasticsearch import ElasticsearchConfig
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from saltmarsh.sinks.elasticsearch.bulk import (
    BulkDoc,
    BulkPolicy,
    BulkResult,
    BulkWriter,
    chunked,
    encode,
)

# One scripted answer per bulk request: a list of item statuses, or an exception to raise.
Answer = list[int] | Exception


@dataclass
class _Response:
    body: dict[str, Any]


def api_error(status: int) -> ApiError:
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "127.0.0.1", 9200))
    return ApiError(f"status {status}", meta, {"error": {"type": "scripted"}})


class ScriptedClient:
    """Stands in for Elasticsearch.bulk: answers each request from a script, records what was sent."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.sent_ids: list[list[str]] = []

    def bulk(self, *, operations: bytes, refresh: bool, filter_path: str) -> _Response:
        assert refresh is False
        lines = operations.decode().splitlines()
        ids = [json.loads(line)["create"]["_id"] for line in lines[0::2]]
        self.sent_ids.append(ids)
        answer = self.answers.pop(0) if self.answers else [201] * len(ids)
        if isinstance(answer, Exception):
            raise answer
        items = []
        for status in answer:
            item: dict[str, Any] = {"status": status}
            if status >= 300:
                item["error"] = {"type": f"t{status}", "reason": f"r{status}", "caused_by": {"reason": "why"}}
            items.append({"create": item})
        return _Response({"errors": any(s >= 300 for s in answer), "items": items})


def docs(n: int, size: int = 10) -> list[BulkDoc]:
    return [BulkDoc("idx", f"d{i}", {"pad": "x" * size}) for i in range(n)]


def writer(client: ScriptedClient, sleeps: list[float], **policy: Any) -> BulkWriter:
    settings: dict[str, Any] = {
        "max_docs": 100,
        "max_bytes": 1_000_000,
        "retry_max": 3,
        "backoff": BackoffPolicy(base_s=1.0, cap_s=4.0),
    }
    settings.update(policy)
    return BulkWriter(cast(Elasticsearch, client), BulkPolicy(**settings), sleep=sleeps.append, jitter=lambda: 0.5)


@pytest.mark.parametrize(
    ("answers", "expected_sent", "created", "duplicates", "refused"),
    [
        ([[201, 201, 201]], [["d0", "d1", "d2"]], 3, 0, []),
        ([[201, 409, 409]], [["d0", "d1", "d2"]], 1, 2, []),
        ([[201, 400, 201]], [["d0", "d1", "d2"]], 2, 0, [(1, 400)]),
        ([[404, 201, 201]], [["d0", "d1", "d2"]], 2, 0, [(0, 404)]),
        ([[201, 429, 503], [201, 201]], [["d0", "d1", "d2"], ["d1", "d2"]], 3, 0, []),
        ([[429, 201, 201], [429], [409]], [["d0", "d1", "d2"], ["d0"], ["d0"]], 2, 1, []),
        ([[500, 400, 201], [201]], [["d0", "d1", "d2"], ["d0"]], 2, 0, [(1, 400)]),
        ([api_error(429), [201, 201, 201]], [["d0", "d1", "d2"]] * 2, 3, 0, []),
        ([api_error(503), api_error(502), [201, 409, 201]], [["d0", "d1", "d2"]] * 3, 2, 1, []),
    ],
    ids=["all-new", "duplicates", "refused", "not-found", "retry-only-failed", "retry-then-dup",
         "mixed", "request-429", "request-5xx"],
)  # fmt: skip
def test_item_classification_and_retry(
    answers: list[Answer],
    expected_sent: list[list[str]],
    created: int,
    duplicates: int,
    refused: list[tuple[int, int]],
) -> None:
    client = ScriptedClient(answers)
    sleeps: list[float] = []
    result = writer(client, sleeps).index_documents(docs(3))
    assert client.sent_ids == expected_sent
    assert (result.created, result.duplicates) == (created, duplicates)
    assert [(r.position, r.status) for r in result.refused] == refused
    for r in result.refused:
        assert (r.error_type, r.reason) == (f"t{r.status}", f"r{r.status}: why")
    assert sleeps == [0.75, 1.5, 3.0][: len(expected_sent) - 1]


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([[429, 201]] + [[429]] * 3, "1 of 2 documents still not stored after 3 retries (last: 429 t429: r429: why)"),
        ([api_error(503)] * 4, "2 of 2 documents still not stored after 3 retries"),
        ([api_error(401)], "refused a bulk request: 401"),
        ([api_error(413)], "lower batch_max_bytes"),
        ([TransportConnectionError("refused")], "unreachable: ConnectionError"),
        ([[201]], "1 items for 2 documents"),
    ],
)
def test_failures_that_leave_the_batch_to_the_caller(answers: list[Answer], message: str) -> None:
    with pytest.raises(SinkUnavailable, match=message.replace("(", r"\(").replace(")", r"\)")):
        writer(ScriptedClient(answers), []).index_documents(docs(2))


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(0, 0.0, 0.1), (0, 0.999, 0.1999), (1, 0.0, 0.2), (3, 0.5, 1.2), (6, 0.0, 2.5), (30, 1.0, 5.0)],
)
def test_backoff_is_exponential_capped_and_jittered(attempt: int, jitter: float, expected: float) -> None:
    # The shared helper counts retries from 1; `attempt` here is the 0-based retry index.
    assert backoff_delay(attempt + 1, BackoffPolicy(base_s=0.2, cap_s=5.0), jitter) == pytest.approx(expected)


def test_the_config_keys_become_the_shared_backoff_policy() -> None:
    policy = BulkPolicy.from_config(ElasticsearchConfig(retry_backoff_base_s=0.5, retry_backoff_cap_s=8.0))
    assert policy.backoff == BackoffPolicy(base_s=0.5, cap_s=8.0)


@pytest.mark.parametrize(
    ("sizes", "max_docs", "max_bytes", "expected"),
    [
        ([10] * 5, 2, 10_000, [2, 2, 1]),
        ([10] * 5, 100, 10_000, [5]),
        ([100] * 5, 100, 300, [2, 2, 1]),  # each doc encodes to a bit over 100 bytes
        ([1000, 10, 10], 100, 300, [1, 2]),  # an oversized doc goes alone
        ([10, 1000, 10], 100, 300, [1, 1, 1]),
        ([], 10, 10_000, []),
    ],
)
def test_chunks_are_bounded_by_count_and_bytes(
    sizes: list[int], max_docs: int, max_bytes: int, expected: list[int]
) -> None:
    encoded = [encode(i, BulkDoc("i", str(i), {"p": "x" * size})) for i, size in enumerate(sizes)]
    chunks = list(chunked(encoded, max_docs, max_bytes))
    assert [len(c) for c in chunks] == expected
    assert [e.position for c in chunks for e in c] == list(range(len(sizes)))
    for chunk in chunks:
        assert len(chunk) == 1 or sum(len(e.lines) for e in chunk) <= max_bytes


def test_a_large_input_is_sent_in_bounded_requests() -> None:
    client = ScriptedClient([])
    result = writer(client, [], max_docs=40).index_documents(iter(docs(100)))
    assert [len(ids) for ids in client.sent_ids] == [40, 40, 20]
    assert result == BulkResult(100, 0)
