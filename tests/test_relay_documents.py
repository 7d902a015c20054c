"""The relay's pure parts: Salt events as fleet-event documents, their ids, JSON safety, routing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from saltmarsh.config.relay import DEFAULT_RELAY_TAGS
from saltmarsh.relay.documents import (
    event_document,
    event_id,
    fleet_event,
    jid_of,
    json_safe,
    kinesis_record,
    minion_of,
    stamp_ms,
)
from saltmarsh.relay.sender import ELASTICSEARCH, KINESIS, Router
from saltmarsh.sinks.kinesis.selection import Globs, Match, Selection, TagRule

RECEIVED_MS = 1_717_200_000_000  # 2024-06-01T00:00:00.000Z
STAMP = "2024-05-31T23:59:59.250000+00:00"
JOB_RET = {
    "cmd": "_return",
    "id": "gw1",
    "fun": "state.apply",
    "jid": "20240531235959123456",
    "success": True,
    "retcode": 0,
    "return": {"test_|-relay_ok_|-relay_ok_|-succeed_without_changes": {"result": True}},
    "_stamp": STAMP,
}
MINION_EVENT = {
    "cmd": "_minion_event",
    "id": "sensor-7",
    "tag": "saltmarsh/door/open",
    "data": {"door": "north", "fun": "event.send"},
    "pretag": None,
    "_stamp": STAMP,
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a.b": 1}, {"a_b": 1}),
        ({"a": {"b.c.d": [{"e.f": 2}]}}, {"a": {"b_c_d": [{"e_f": 2}]}}),
        ({1: "x", b"k.y": "z"}, {"1": "x", "k_y": "z"}),
        ({"raw": b"caf\xc3\xa9"}, {"raw": "café"}),
        ({"raw": b"\xff\x00"}, {"raw": "/wA="}),  # not UTF-8: base64
        ({"s": {3, 1, 2}}, {"s": [1, 2, 3]}),
        ({"s": frozenset({"b", "a"})}, {"s": ["a", "b"]}),
        ({"t": (1, (2, 3))}, {"t": [1, [2, 3]]}),
        ({"f": float("nan"), "g": float("inf"), "h": 1.5}, {"f": "nan", "g": "inf", "h": 1.5}),
        ({"o": ValueError("boom")}, {"o": "boom"}),  # anything else: its str()
        ({"n": None, "b": False}, {"n": None, "b": False}),
    ],
)
def test_json_safe(value: Any, expected: Any) -> None:
    safe = json_safe(value)
    assert safe == expected
    assert json_safe(safe) == safe  # idempotent: a spooled event keeps its id
    json.dumps(safe, allow_nan=False)


@pytest.mark.parametrize(
    ("stamp", "ms"),
    [
        ("2024-05-31T23:59:59.250000+00:00", 1_717_199_999_250),
        ("2024-05-31T23:59:59.250000", 1_717_199_999_250),  # naive: UTC, as older Salt writes it
        ("2024-06-01T01:59:59.250+02:00", 1_717_199_999_250),
        ("yesterday", None),
        (1_717_199_999, None),
        (None, None),
    ],
)
def test_stamp_ms(stamp: object, ms: int | None) -> None:
    assert stamp_ms(stamp) == ms


@pytest.mark.parametrize(
    ("tag", "data", "minion", "jid"),
    [
        (
            "salt/job/20240531235959123456/ret/gw1",
            {"id": "gw1", "jid": "20240531235959123456"},
            "gw1",
            "20240531235959123456",
        ),
        ("salt/job/20240531235959123456/ret/gw1", {}, "gw1", "20240531235959123456"),
        ("salt/job/20240531235959123456/new", {"minions": ["a"]}, None, "20240531235959123456"),
        ("saltmarsh/door/open", {"id": "sensor-7", "data": {}}, "sensor-7", None),
        ("saltmarsh/door/open", {"data": {"id": "sensor-8", "jid": "42"}}, "sensor-8", "42"),
        ("salt/beacon/gw2/status/2024-05-31T23:59:59", {"data": {"loadavg": {}}}, "gw2", None),
        ("salt/minion/gw3/start", {"cmd": "_minion_event"}, "gw3", None),
        ("salt/presence/change/gw4", {}, "gw4", None),
        ("salt/run/20240531235959654321/new", {"fun": "runner.event.send"}, None, "20240531235959654321"),
        ("salt/auth", {"id": "gw5", "act": "accept"}, "gw5", None),
        ("minion_start", {"id": 7}, None, None),  # an id that is not a string is not trusted
    ],
)
def test_minion_and_jid(tag: str, data: dict[str, Any], minion: str | None, jid: str | None) -> None:
    assert (minion_of(tag, data), jid_of(tag, data)) == (minion, jid)


def test_job_return_document() -> None:
    doc = event_document("salt/job/20240531235959123456/ret/gw1", JOB_RET, RECEIVED_MS)
    assert doc == {
        "@timestamp": "2024-05-31T23:59:59.250Z",
        "tag": "salt/job/20240531235959123456/ret/gw1",
        "minion_id": "gw1",
        "fun": "state.apply",
        "jid": "20240531235959123456",
        "success": True,
        "retcode": 0,
        "data": JOB_RET,
    }


def test_minion_event_document_reads_the_nested_payload() -> None:
    doc = event_document("saltmarsh/door/open", MINION_EVENT, RECEIVED_MS)
    assert (doc["minion_id"], doc["fun"], doc["jid"], doc["success"], doc["retcode"]) == (
        "sensor-7",
        "event.send",
        None,
        None,
        None,
    )
    assert doc["data"]["data"] == {"door": "north", "fun": "event.send"}


@pytest.mark.parametrize(
    ("data", "success", "retcode"),
    [
        ({"success": False, "retcode": 2}, False, 2),
        ({"success": "yes", "retcode": True}, None, None),  # wrong types are left out, not coerced
        ({"data": {"success": True, "retcode": 1}}, True, 1),
        ({"success": True, "data": {"success": False}}, True, None),  # the outer value wins
    ],
)
def test_success_and_retcode(data: dict[str, Any], success: bool | None, retcode: int | None) -> None:
    doc = event_document("saltmarsh/x", data, RECEIVED_MS)
    assert (doc["success"], doc["retcode"]) == (success, retcode)


def test_timestamp_falls_back_to_the_time_received() -> None:
    assert event_document("saltmarsh/x", {}, RECEIVED_MS)["@timestamp"] == "2024-06-01T00:00:00.000Z"
    assert event_document("saltmarsh/x", {"_stamp": "garbage"}, RECEIVED_MS)["@timestamp"] == (
        "2024-06-01T00:00:00.000Z"
    )


def test_fleet_event_is_routed_by_the_events_own_month() -> None:
    doc = event_document("salt/job/20240531235959123456/ret/gw1", JOB_RET, RECEIVED_MS)
    bulk = fleet_event("saltmarsh", doc)
    assert bulk.index == "saltmarsh-fleet-events-2024.05"  # stamped in May, received in June
    assert bulk.doc_id == event_id(doc)
    assert len(bulk.doc_id) == 40


def _id(tag: str, data: dict[str, Any], received_ms: int = RECEIVED_MS) -> str:
    return event_id(event_document(tag, data, received_ms))


def test_id_is_the_same_for_the_same_event_however_it_travelled() -> None:
    raw = {"id": "gw1", "blob": b"\x00\xff", "keys": {"a.b": {1, 2}}, "_stamp": STAMP}
    spooled = json.loads(json.dumps(json_safe(raw)))  # what comes back out of the spool
    assert _id("saltmarsh/x", raw) == _id("saltmarsh/x", spooled)
    assert _id("saltmarsh/x", raw) == _id("saltmarsh/x", raw, RECEIVED_MS + 60_000)  # _stamp decides, not arrival


@pytest.mark.parametrize(
    ("tag", "data"),
    [
        ("saltmarsh/y", {"id": "gw1", "_stamp": STAMP}),  # another tag
        ("saltmarsh/x", {"id": "gw2", "_stamp": STAMP}),  # another minion
        ("saltmarsh/x", {"id": "gw1", "_stamp": "2024-05-31T23:59:59.250001+00:00"}),  # a microsecond later
        ("saltmarsh/x", {"id": "gw1", "_stamp": STAMP, "n": 2}),  # same instant, other payload
    ],
)
def test_id_differs_when_anything_differs(tag: str, data: dict[str, Any]) -> None:
    assert _id(tag, data) != _id("saltmarsh/x", {"id": "gw1", "_stamp": STAMP})


def test_id_without_stamp_or_jid_uses_the_time_received() -> None:
    assert _id("saltmarsh/x", {}) != _id("saltmarsh/x", {}, RECEIVED_MS + 1)


def test_kinesis_record() -> None:
    doc = event_document("salt/job/20240531235959123456/ret/gw1", JOB_RET, RECEIVED_MS)
    record = kinesis_record(doc, Match("forward_tags", "tag ~ salt/job/*/ret/*"))
    assert record.partition_key == "gw1"
    body = json.loads(record.data)
    assert body["_id"] == event_id(doc)
    assert body["selected_by"] == {"rule": "forward_tags", "why": "tag ~ salt/job/*/ret/*"}
    assert body["tag"] == doc["tag"]
    master_doc = event_document("saltmarsh/relay/health", {"received": 1}, RECEIVED_MS)
    assert kinesis_record(master_doc, Match("r", "w")).partition_key == "saltmarsh/relay/health"


FORWARD = Selection(tag_rules=(TagRule("forward_tags", Globs(("salt/job/*/ret/*", "saltmarsh/alert/*"))),))
ROUTER = Router(Globs(DEFAULT_RELAY_TAGS), FORWARD)
BOTH = frozenset({ELASTICSEARCH, KINESIS})
ES = frozenset({ELASTICSEARCH})


@pytest.mark.parametrize(
    ("tag", "sinks"),
    [
        ("salt/job/20240531235959123456/ret/gw1", BOTH),
        ("salt/job/20240531235959123456/new", frozenset()),
        ("salt/beacon/gw1/status/2024", ES),
        ("salt/beacon/gw1/saltmarsh_spool/gw1", ES),
        ("saltmarsh/relay/health", ES),
        ("saltmarsh/alert/door", BOTH),
        ("salt/auth", ES),
        ("minion_start", ES),
        ("salt/minion/gw1/start", ES),
        ("salt/key", frozenset()),
        ("salt/run/20240531235959123456/ret", frozenset()),
        ("Saltmarsh/x", frozenset()),  # globs are case-sensitive
    ],
)
def test_router(tag: str, sinks: frozenset[str]) -> None:
    assert ROUTER.sinks(tag) == sinks


def test_forward_only_tags_skip_elasticsearch() -> None:
    router = Router(Globs(("saltmarsh/*",)), Selection(tag_rules=(TagRule("jobs", Globs(("salt/job/*",))),)))
    assert router.sinks("salt/job/1/ret/gw1") == frozenset({KINESIS})
