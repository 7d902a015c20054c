"""Pure parts of the Elasticsearch sink: index names, stored documents, templates, timestamps."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from saltmarsh.contract.command_state import CommandOutcome, CommandState
from saltmarsh.contract.envelope import Envelope, Location
from saltmarsh.contract.errors import Reason
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.contract.topics import Channel
from saltmarsh.sinks.base import DEAD_LETTER_HEAD_BYTES, DeadLetter, Delivery
from saltmarsh.sinks.elasticsearch.sink import (
    dead_letter_doc,
    iso_ms,
    message_document,
    parse_ms,
    rejected_doc,
)
from saltmarsh.sinks.elasticsearch.templates import (
    DEAD_LETTER_MAPPINGS,
    DEAD_LETTERS,
    FLEET_EVENTS,
    READINGS,
    alias_name,
    delete_policy,
    index_pattern,
    index_template,
    monthly_index,
)

JAN_31_LAST_MS = 1_706_745_599_999  # 2024-01-31T23:59:59.999Z
FEB_1_FIRST_MS = 1_706_745_600_000  # 2024-02-01T00:00:00.000Z


@pytest.mark.parametrize(
    ("prefix", "family", "ts_ms", "expected"),
    [
        ("saltmarsh", READINGS, 0, "saltmarsh-readings-1970.01"),
        ("saltmarsh", READINGS, JAN_31_LAST_MS, "saltmarsh-readings-2024.01"),
        ("saltmarsh", READINGS, FEB_1_FIRST_MS, "saltmarsh-readings-2024.02"),
        ("saltmarsh", READINGS, 1_735_689_599_999, "saltmarsh-readings-2024.12"),  # 2024-12-31T23:59:59.999Z
        ("saltmarsh", READINGS, 1_735_689_600_000, "saltmarsh-readings-2025.01"),
        ("marsh.prod", DEAD_LETTERS, FEB_1_FIRST_MS, "marsh.prod-deadletter-2024.02"),
        ("saltmarsh", FLEET_EVENTS, JAN_31_LAST_MS, "saltmarsh-fleet-events-2024.01"),
    ],
)
def test_monthly_index_is_chosen_by_the_documents_own_utc_month(
    prefix: str, family: str, ts_ms: int, expected: str
) -> None:
    assert monthly_index(prefix, family, ts_ms) == expected


@pytest.mark.parametrize(
    ("ms", "iso"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (JAN_31_LAST_MS, "2024-01-31T23:59:59.999Z"),
        (FEB_1_FIRST_MS + 7, "2024-02-01T00:00:00.007Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
    ],
)
def test_timestamps_round_trip_exactly_to_the_millisecond(ms: int, iso: str) -> None:
    assert iso_ms(ms) == iso
    assert parse_ms(iso) == ms
    assert parse_ms(ms) == ms


FULL_EVENT = Envelope(
    Channel.ALERT,
    "probe-7",
    "marsh-2",
    "b9",
    42,
    1_700_000_000_123,
    metrics={"temperature": 41.5},
    name="threshold",
    detail="temperature above 40",
    units={"temperature": "C"},
    model="HW-MD202",
    firmware="1.0.0",
    location=Location(43.1, -8.4, "garden"),
)


CMDRES = mint_cmdres(
    device="probe-7",
    site="marsh-2",
    boot="b9",
    seq=43,
    ts_ms=1_700_000_000_123,
    outcome=CommandOutcome("01HF7YAT00XGHYZ3KT8V94F16P", "r-1", CommandState.SUCCEEDED, result={"interval_s": 30.0}),
)


@pytest.mark.parametrize(
    ("delivery", "expected"),
    [
        (
            Delivery(Envelope(Channel.READING, "probe-1", "marsh-1", "b1", 7, 1_700_000_000_000, {"humidity": 50.0}),
                     1_700_000_002_500),
            {
                "@timestamp": "2023-11-14T22:13:20.000Z",
                "event": {"kind": "metric", "dataset": "saltmarsh.reading", "ingested": "2023-11-14T22:13:22.500Z"},
                "device": {"id": "probe-1"},
                "site": {"id": "marsh-1"},
                "metrics": {"humidity": 50.0},
                "saltmarsh": {"key": "probe-1:b1:7", "boot": "b1", "seq": 7, "kind": "reading",
                              "delivery_delay_ms": 2500},
            },
        ),
        (
            Delivery(FULL_EVENT, 1_700_000_000_200, "gw-3"),
            {
                "@timestamp": "2023-11-14T22:13:20.123Z",
                "event": {"kind": "alert", "dataset": "saltmarsh.alert", "ingested": "2023-11-14T22:13:20.200Z",
                          "action": "threshold"},
                "message": "temperature above 40",
                "device": {"id": "probe-7", "model": {"identifier": "HW-MD202"}},
                "site": {"id": "marsh-2"},
                "metrics": {"temperature": 41.5},
                "location": {"lat": 43.1, "lon": -8.4},
                "location_name": "garden",
                "saltmarsh": {"key": "probe-7:b9:42", "boot": "b9", "seq": 42, "kind": "alert",
                              "delivery_delay_ms": 77, "firmware": "1.0.0", "units": {"temperature": "C"},
                              "gateway": "gw-3"},
            },
        ),
        (
            Delivery(CMDRES, 1_700_000_000_300),
            {
                "@timestamp": "2023-11-14T22:13:20.123Z",
                "event": {"kind": "event", "dataset": "saltmarsh.cmdres", "ingested": "2023-11-14T22:13:20.300Z",
                          "action": "succeeded"},
                "device": {"id": "probe-7"},
                "site": {"id": "marsh-2"},
                "metrics": {},
                "saltmarsh": {"key": "probe-7:b9:43", "boot": "b9", "seq": 43, "kind": "cmdres",
                              "delivery_delay_ms": 177,
                              "command": {"cmd_id": "01HF7YAT00XGHYZ3KT8V94F16P", "rollout": "r-1",
                                          "state": "succeeded", "result": {"interval_s": 30.0}}},
            },
        ),
    ],
    ids=["bare-reading", "full-alert", "cmdres"],
)  # fmt: skip
def test_message_document(delivery: Delivery, expected: dict[str, Any]) -> None:
    assert message_document(delivery) == expected


def test_a_dead_letter_keeps_reason_topic_and_raw_payload_with_a_stable_id() -> None:
    letter = DeadLetter.of(
        FEB_1_FIRST_MS,
        "saltmarsh/v1/marsh-1/probe-1/reading",
        b"\xff{",
        reason=Reason.WRONG_TYPE,
        field="seq",
        detail="expected integer",
    )
    doc = dead_letter_doc("saltmarsh", letter)
    assert doc.index == "saltmarsh-deadletter-2024.02"
    assert doc.source == {
        "@timestamp": "2024-02-01T00:00:00.000Z",
        "reason": "wrong_type",
        "field": "seq",
        "detail": "expected integer",
        "topic": "saltmarsh/v1/marsh-1/probe-1/reading",
        "payload_encoding": "base64",
        "payload": "/3s=",
        "payload_bytes": 2,
        "payload_sha256": hashlib.sha256(b"\xff{").hexdigest(),
        "event": {"kind": "pipeline_error", "ingested": "2024-02-01T00:00:00.000Z"},
        "device": {"id": "probe-1"},
        "site": {"id": "marsh-1"},
    }
    # Same letter, same id: a retried batch stores it once. Another arrival is another letter.
    assert dead_letter_doc("saltmarsh", letter).doc_id == doc.doc_id
    later = DeadLetter.of(
        FEB_1_FIRST_MS + 1, letter.topic, b"\xff{", reason=letter.reason, field=letter.field, detail=letter.detail
    )
    assert dead_letter_doc("saltmarsh", later).doc_id != doc.doc_id


def test_a_dead_letter_document_keeps_only_the_head_of_a_large_payload() -> None:
    body = b"y" * 10_000_000
    letter = DeadLetter.of(
        FEB_1_FIRST_MS, "saltmarsh/v1/s/d/reading", body, reason=Reason.OVERSIZED, field="payload", detail="big"
    )
    source = dead_letter_doc("saltmarsh", letter).source
    assert (source["payload"], source["payload_encoding"]) == ("y" * DEAD_LETTER_HEAD_BYTES, "utf-8")
    assert (source["payload_bytes"], source["payload_sha256"]) == (10_000_000, hashlib.sha256(body).hexdigest())


def test_the_dead_letter_mapping_indexes_the_size_and_the_hash() -> None:
    properties = DEAD_LETTER_MAPPINGS["properties"]
    assert (properties["payload_bytes"], properties["payload_sha256"]) == ({"type": "long"}, {"type": "keyword"})


def test_a_dead_letter_on_an_unparseable_topic_has_no_device() -> None:
    letter = DeadLetter.of(0, "nonsense/topic", b"{}", reason=Reason.UNKNOWN_TOPIC, field="topic", detail="bad")
    assert "device" not in dead_letter_doc("saltmarsh", letter).source


def test_a_rejected_message_is_keyed_and_routed_like_the_message() -> None:
    delivery = Delivery(FULL_EVENT, FEB_1_FIRST_MS, "gw-3")
    reason = "failed to parse field [metrics.temperature] of type [boolean]"
    doc = rejected_doc("saltmarsh", delivery, 400, "mapper_parsing_exception", reason)
    assert (doc.index, doc.doc_id) == ("saltmarsh-deadletter-2023.11", "sink_rejected:probe-7:b9:42")
    assert doc.source["reason"] == "sink_rejected"
    assert doc.source["field"] == "metrics.temperature"
    assert doc.source["detail"] == f"mapper_parsing_exception: {reason}"
    assert doc.source["payload"] == FULL_EVENT.encode().decode()
    assert doc.source["saltmarsh"] == {"key": "probe-7:b9:42", "gateway": "gw-3"}
    assert doc.source["error"] == {"type": "mapper_parsing_exception", "status": 400}


def test_templates_cover_their_family_with_an_alias_and_only_take_a_policy_when_given() -> None:
    for family in (READINGS, DEAD_LETTERS, FLEET_EVENTS):
        body = index_template("saltmarsh", family)
        assert body["index_patterns"] == [index_pattern("saltmarsh", family)] == [f"saltmarsh-{family}-*"]
        assert body["template"]["aliases"] == {alias_name("saltmarsh", family): {}}
        assert "index.lifecycle.name" not in body["template"].get("settings", {})
        with_policy = index_template("saltmarsh", family, "saltmarsh-retention")
        assert with_policy["template"]["settings"]["index.lifecycle.name"] == "saltmarsh-retention"
    assert delete_policy(30) == {"phases": {"delete": {"min_age": "30d", "actions": {"delete": {}}}}}


def test_readings_mapping_names_the_fields_dashboards_use() -> None:
    props = index_template("saltmarsh", READINGS)["template"]["mappings"]["properties"]
    assert props["@timestamp"]["type"] == "date"
    assert props["device"]["properties"]["id"]["type"] == "keyword"
    assert props["device"]["properties"]["model"]["properties"]["identifier"]["type"] == "keyword"
    assert props["site"]["properties"]["id"]["type"] == "keyword"
    assert props["saltmarsh"]["properties"]["seq"]["type"] == "long"
    assert props["saltmarsh"]["properties"]["boot"]["type"] == "keyword"
    assert props["saltmarsh"]["properties"]["gateway"]["type"] == "keyword"
    assert props["event"]["properties"]["ingested"]["type"] == "date"
    assert props["location"]["type"] == "geo_point"
    assert props["location_name"]["type"] == "keyword"
    fleet = index_template("saltmarsh", FLEET_EVENTS)["template"]["mappings"]["properties"]
    assert fleet["data"] == {"type": "object", "enabled": False}
    assert (fleet["success"]["type"], fleet["retcode"]["type"], fleet["minion_id"]["type"]) == (
        "boolean",
        "long",
        "keyword",
    )
