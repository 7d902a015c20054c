"""The wire contract as a table: one raw message in, the exact Envelope or Reason and field out."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltmarsh.contract.envelope import (
    MAX_METRICS,
    MAX_SEQ,
    Envelope,
    Limits,
    Location,
    _parse_common,
    decode_json,
    from_json,
    parse,
)
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import Channel, Topic

NOW_MS = 1_700_000_000_000
LIMITS = Limits(max_payload_bytes=4096, max_future_skew_ms=300_000)
READING_TOPIC = "saltmarsh/v1/marsh-1/probe-7/reading"
EVENT_TOPIC = "saltmarsh/v1/marsh-1/probe-7/event"
ALERT_TOPIC = "saltmarsh/v1/marsh-1/probe-7/alert"
_DROP = object()


def doc(**changes: Any) -> bytes:
    """A valid reading document with `changes` applied; a value of _DROP removes the field."""
    base: dict[str, Any] = {
        "v": 1,
        "kind": "reading",
        "device": "probe-7",
        "site": "marsh-1",
        "boot": "b-20240101",
        "seq": 42,
        "ts": NOW_MS - 1000,
        "metrics": {"temperature": 21.5, "humidity": 50},
    }
    for key, value in changes.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return json.dumps(base).encode()


def raw(text: str) -> bytes:
    """A valid reading with one metric's value replaced by literal JSON text."""
    return doc(metrics={"temperature": "@@"}).replace(b'"@@"', text.encode())


def twice(key: str, value: str, payload: bytes | None = None, key_text: str | None = None) -> bytes:
    """`payload` (default: a valid reading) with `key` once more before itself, set to literal `value`."""
    spelled = key if key_text is None else key_text
    return (payload or doc()).replace(f'"{key}": '.encode(), f'"{spelled}": {value}, "{key}": '.encode(), 1)


@dataclass(frozen=True)
class Rejected:
    name: str
    topic: str
    payload: bytes
    reason: Reason
    field: str


REJECTED = [
    # bytes and JSON
    Rejected("malformed json", READING_TOPIC, b'{"v": 1, "device": ', Reason.MALFORMED_JSON, "payload"),
    Rejected("empty payload", READING_TOPIC, b"", Reason.MALFORMED_JSON, "payload"),
    Rejected("not utf-8", READING_TOPIC, b'{"v": 1, "device": "\xff\xfe"}', Reason.NOT_UTF8, "payload"),
    Rejected("json array", READING_TOPIC, b"[1, 2]", Reason.WRONG_TYPE, "payload"),
    Rejected("json string", READING_TOPIC, b'"reading"', Reason.WRONG_TYPE, "payload"),
    Rejected("nested too deep", READING_TOPIC, b"[" * 3000, Reason.MALFORMED_JSON, "payload"),
    Rejected("oversized", READING_TOPIC, doc(detail="x" * 5000), Reason.OVERSIZED, "payload"),
    # missing required fields
    Rejected("missing v", READING_TOPIC, doc(v=_DROP), Reason.MISSING_FIELD, "v"),
    Rejected("missing device", READING_TOPIC, doc(device=_DROP), Reason.MISSING_FIELD, "device"),
    Rejected("missing site", READING_TOPIC, doc(site=_DROP), Reason.MISSING_FIELD, "site"),
    Rejected("missing boot", READING_TOPIC, doc(boot=_DROP), Reason.MISSING_FIELD, "boot"),
    Rejected("missing seq", READING_TOPIC, doc(seq=_DROP), Reason.MISSING_FIELD, "seq"),
    Rejected("missing ts", READING_TOPIC, doc(ts=_DROP), Reason.MISSING_FIELD, "ts"),
    Rejected("missing metrics", READING_TOPIC, doc(metrics=_DROP), Reason.MISSING_FIELD, "metrics"),
    Rejected("event without name", EVENT_TOPIC, doc(kind="event"), Reason.MISSING_FIELD, "name"),
    Rejected("alert without name", ALERT_TOPIC, doc(kind="alert"), Reason.MISSING_FIELD, "name"),
    Rejected("location without lon", READING_TOPIC, doc(location={"lat": 1.0}), Reason.MISSING_FIELD, "location.lon"),
    # duplicate keys, anywhere: parsers disagree on which one wins
    Rejected("duplicate seq", READING_TOPIC, twice("seq", "3"), Reason.MALFORMED_JSON, "seq"),
    Rejected("duplicate v", READING_TOPIC, twice("v", "1"), Reason.MALFORMED_JSON, "v"),
    Rejected("duplicate metric", READING_TOPIC, twice("temperature", "1"), Reason.MALFORMED_JSON, "temperature"),
    Rejected("duplicate unknown key", READING_TOPIC, twice("x", "2", doc(x=1)), Reason.MALFORMED_JSON, "x"),
    Rejected("duplicate with escapes", READING_TOPIC, twice("seq", "3", doc(detail="°")), Reason.MALFORMED_JSON, "seq"),
    Rejected(
        "duplicate escaped key", READING_TOPIC, twice("seq", "3", key_text="s\\u0065q"), Reason.MALFORMED_JSON, "seq"
    ),
    Rejected(
        "duplicate in location",
        READING_TOPIC,
        twice("lat", "1", doc(location={"lat": 1, "lon": 2})),
        Reason.MALFORMED_JSON,
        "lat",
    ),
    # wrong types, one per field
    Rejected("v as string", READING_TOPIC, doc(v="1"), Reason.UNSUPPORTED_VERSION, "v"),
    Rejected("v as float", READING_TOPIC, doc(v=1.0), Reason.UNSUPPORTED_VERSION, "v"),
    Rejected("device as int", READING_TOPIC, doc(device=7), Reason.WRONG_TYPE, "device"),
    Rejected("site as list", READING_TOPIC, doc(site=["marsh-1"]), Reason.WRONG_TYPE, "site"),
    Rejected("boot as int", READING_TOPIC, doc(boot=20240101), Reason.WRONG_TYPE, "boot"),
    Rejected("seq as string", READING_TOPIC, doc(seq="42"), Reason.WRONG_TYPE, "seq"),
    Rejected("seq as float", READING_TOPIC, doc(seq=42.0), Reason.WRONG_TYPE, "seq"),
    Rejected("ts as string", READING_TOPIC, doc(ts="2024-01-01T00:00:00Z"), Reason.WRONG_TYPE, "ts"),
    Rejected("ts as null", READING_TOPIC, doc(ts=None), Reason.WRONG_TYPE, "ts"),
    Rejected("metrics as list", READING_TOPIC, doc(metrics=[21.5]), Reason.WRONG_TYPE, "metrics"),
    Rejected("metric as string", READING_TOPIC, doc(metrics={"light": "on"}), Reason.WRONG_TYPE, "metrics.light"),
    Rejected("metric as null", READING_TOPIC, doc(metrics={"t": None}), Reason.WRONG_TYPE, "metrics.t"),
    Rejected("name as int", EVENT_TOPIC, doc(kind="event", name=3), Reason.WRONG_TYPE, "name"),
    Rejected("detail as object", READING_TOPIC, doc(detail={"a": 1}), Reason.WRONG_TYPE, "detail"),
    Rejected("model as int", READING_TOPIC, doc(model=202), Reason.WRONG_TYPE, "model"),
    Rejected("firmware as float", READING_TOPIC, doc(firmware=1.0), Reason.WRONG_TYPE, "firmware"),
    Rejected("units as list", READING_TOPIC, doc(units=["C"]), Reason.WRONG_TYPE, "units"),
    Rejected("unit as int", READING_TOPIC, doc(units={"temperature": 1}), Reason.WRONG_TYPE, "units.temperature"),
    Rejected("location as string", READING_TOPIC, doc(location="garden"), Reason.WRONG_TYPE, "location"),
    Rejected("lat as string", READING_TOPIC, doc(location={"lat": "1", "lon": 2}), Reason.WRONG_TYPE, "location.lat"),
    Rejected(
        "place as int",
        READING_TOPIC,
        doc(location={"lat": 1, "lon": 2, "place": 3}),
        Reason.WRONG_TYPE,
        "location.place",
    ),
    # booleans are ints in Python and must not pass as numbers
    Rejected("v as true", READING_TOPIC, doc(v=True), Reason.UNSUPPORTED_VERSION, "v"),
    Rejected("seq as true", READING_TOPIC, doc(seq=True), Reason.WRONG_TYPE, "seq"),
    Rejected("ts as false", READING_TOPIC, doc(ts=False), Reason.WRONG_TYPE, "ts"),
    Rejected("metric as true", READING_TOPIC, doc(metrics={"on": True}), Reason.WRONG_TYPE, "metrics.on"),
    Rejected("lat as true", READING_TOPIC, doc(location={"lat": True, "lon": 2}), Reason.WRONG_TYPE, "location.lat"),
    # non-finite numbers: literals, and values that overflow a float
    Rejected("NaN literal", READING_TOPIC, raw("NaN"), Reason.NON_FINITE, "payload"),
    Rejected("Infinity literal", READING_TOPIC, raw("Infinity"), Reason.NON_FINITE, "payload"),
    Rejected("-Infinity literal", READING_TOPIC, raw("-Infinity"), Reason.NON_FINITE, "payload"),
    Rejected("huge float", READING_TOPIC, raw("1e999"), Reason.NON_FINITE, "metrics.temperature"),
    Rejected("huge negative float", READING_TOPIC, raw("-1e400"), Reason.NON_FINITE, "metrics.temperature"),
    Rejected("huge integer", READING_TOPIC, raw("1" + "0" * 400), Reason.NON_FINITE, "metrics.temperature"),
    Rejected(
        "huge lat",
        READING_TOPIC,
        doc(location={"lat": 1, "lon": 2}).replace(b'"lat": 1', b'"lat": 1e999'),
        Reason.NON_FINITE,
        "location.lat",
    ),
    # values out of range
    Rejected("version 2", READING_TOPIC, doc(v=2), Reason.UNSUPPORTED_VERSION, "v"),
    Rejected("negative seq", READING_TOPIC, doc(seq=-1), Reason.INVALID_VALUE, "seq"),
    Rejected("seq beyond 2**53-1", READING_TOPIC, doc(seq=MAX_SEQ + 1), Reason.INVALID_VALUE, "seq"),
    Rejected("seq at int64 max", READING_TOPIC, doc(seq=2**63 - 1), Reason.INVALID_VALUE, "seq"),
    Rejected("ts beyond 2**53-1", READING_TOPIC, doc(ts=2**53), Reason.INVALID_VALUE, "ts"),
    Rejected("negative ts", READING_TOPIC, doc(ts=-5), Reason.INVALID_VALUE, "ts"),
    Rejected("reading without metrics", READING_TOPIC, doc(metrics={}), Reason.INVALID_VALUE, "metrics"),
    Rejected(
        "too many metrics",
        READING_TOPIC,
        doc(metrics={f"m{i}": i for i in range(MAX_METRICS + 1)}),
        Reason.INVALID_VALUE,
        "metrics",
    ),
    Rejected("metric name with space", READING_TOPIC, doc(metrics={"a b": 1}), Reason.INVALID_VALUE, "metrics.a b"),
    Rejected("device id with space", READING_TOPIC, doc(device="probe 7"), Reason.INVALID_VALUE, "device"),
    Rejected("empty boot", READING_TOPIC, doc(boot=""), Reason.INVALID_VALUE, "boot"),
    Rejected("name too long", EVENT_TOPIC, doc(kind="event", name="x" * 300), Reason.INVALID_VALUE, "name"),
    Rejected("lat beyond 90", READING_TOPIC, doc(location={"lat": 91, "lon": 0}), Reason.INVALID_VALUE, "location.lat"),
    Rejected(
        "lon beyond 180",
        READING_TOPIC,
        doc(location={"lat": 0, "lon": -181}),
        Reason.INVALID_VALUE,
        "location.lon",
    ),
    # time
    Rejected("ts beyond skew", READING_TOPIC, doc(ts=NOW_MS + 300_001), Reason.FUTURE_TIMESTAMP, "ts"),
    Rejected("ts a year ahead", READING_TOPIC, doc(ts=NOW_MS + 365 * 86_400_000), Reason.FUTURE_TIMESTAMP, "ts"),
    # payload disagrees with its topic
    Rejected("device differs", "saltmarsh/v1/marsh-1/probe-8/reading", doc(), Reason.TOPIC_MISMATCH, "device"),
    Rejected("site differs", "saltmarsh/v1/marsh-2/probe-7/reading", doc(), Reason.TOPIC_MISMATCH, "site"),
    Rejected("event kind on reading", READING_TOPIC, doc(kind="event", name="x"), Reason.TOPIC_MISMATCH, "kind"),
    Rejected("reading kind on alert", ALERT_TOPIC, doc(name="x"), Reason.TOPIC_MISMATCH, "kind"),
    Rejected("no kind on event", EVENT_TOPIC, doc(kind=_DROP, name="x"), Reason.TOPIC_MISMATCH, "kind"),
    Rejected("unknown kind", READING_TOPIC, doc(kind="telemetry"), Reason.TOPIC_MISMATCH, "kind"),
    # topics and channels
    Rejected("status channel", "saltmarsh/v1/marsh-1/probe-7/status", doc(), Reason.UNKNOWN_TOPIC, "topic.channel"),
    Rejected("command channel", "saltmarsh/v1/marsh-1/probe-7/cmd", doc(), Reason.UNKNOWN_TOPIC, "topic.channel"),
    Rejected("unknown channel", "saltmarsh/v1/marsh-1/probe-7/telemetry", doc(), Reason.UNKNOWN_TOPIC, "topic.channel"),
    Rejected("too few levels", "saltmarsh/v1/marsh-1/probe-7", doc(), Reason.UNKNOWN_TOPIC, "topic"),
    Rejected("too many levels", READING_TOPIC + "/x", doc(), Reason.UNKNOWN_TOPIC, "topic"),
    Rejected("other root", "sensors/v1/marsh-1/probe-7/reading", doc(), Reason.UNKNOWN_TOPIC, "topic"),
    Rejected("other version", "saltmarsh/v2/marsh-1/probe-7/reading", doc(), Reason.UNKNOWN_TOPIC, "topic"),
    Rejected("empty topic", "", doc(), Reason.UNKNOWN_TOPIC, "topic"),
    Rejected("empty site level", "saltmarsh/v1//probe-7/reading", doc(), Reason.UNKNOWN_TOPIC, "topic.site"),
    Rejected("bad device level", "saltmarsh/v1/marsh-1/+/reading", doc(), Reason.UNKNOWN_TOPIC, "topic.device"),
    # the order of checks: a bad topic wins over a bad payload
    Rejected(
        "bad topic and payload", "saltmarsh/v1/marsh-1/probe-7/status", b"\xff", Reason.UNKNOWN_TOPIC, "topic.channel"
    ),
]


@pytest.mark.parametrize("case", REJECTED, ids=[c.name for c in REJECTED])
def test_rejected(case: Rejected) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(case.topic, case.payload, NOW_MS, LIMITS)
    assert (caught.value.reason, caught.value.field) == (case.reason, case.field)


def test_case_names_are_unique() -> None:
    assert len({c.name for c in REJECTED}) == len(REJECTED)


BASE = Envelope(
    kind=Channel.READING,
    device="probe-7",
    site="marsh-1",
    boot="b-20240101",
    seq=42,
    ts_ms=NOW_MS - 1000,
    metrics={"temperature": 21.5, "humidity": 50.0},
)

ACCEPTED: list[tuple[str, str, bytes, Envelope]] = [
    ("minimal reading", READING_TOPIC, doc(), BASE),
    ("kind defaults to reading", READING_TOPIC, doc(kind=_DROP), BASE),
    ("nulls mean absent", READING_TOPIC, doc(name=None, detail=None, units=None, location=None), BASE),
    ("ts exactly at the skew limit", READING_TOPIC, doc(ts=NOW_MS + 300_000), replace(BASE, ts_ms=NOW_MS + 300_000)),
    ("seq zero", READING_TOPIC, doc(seq=0), replace(BASE, seq=0)),
    (
        "negative and integer metrics",
        READING_TOPIC,
        doc(metrics={"t": -3, "p": 1e300}),
        replace(BASE, metrics={"t": -3.0, "p": 1e300}),
    ),
    ("unknown fields are ignored", READING_TOPIC, doc(extra={"x": [1, 2]}), BASE),
    (
        "reading with every optional field",
        READING_TOPIC,
        doc(
            name="periodic",
            detail="ok",
            units={"temperature": "C", "humidity": "%"},
            model="HW-MD202",
            firmware="1.0.0",
            location={"lat": 36.72, "lon": -4.42, "place": "garden"},
        ),
        replace(
            BASE,
            name="periodic",
            detail="ok",
            units={"temperature": "C", "humidity": "%"},
            model="HW-MD202",
            firmware="1.0.0",
            location=Location(36.72, -4.42, "garden"),
        ),
    ),
    (
        "event without metrics",
        EVENT_TOPIC,
        doc(kind="event", name="door_open", metrics=_DROP, detail="north gate"),
        replace(BASE, kind=Channel.EVENT, name="door_open", metrics={}, detail="north gate"),
    ),
    (
        "alert with metrics and location",
        ALERT_TOPIC,
        doc(kind="alert", name="threshold", metrics={"temperature": 45.0}, location={"lat": -90, "lon": 180}),
        replace(
            BASE, kind=Channel.ALERT, name="threshold", metrics={"temperature": 45.0}, location=Location(-90.0, 180.0)
        ),
    ),
]


@pytest.mark.parametrize(("topic", "payload", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted(topic: str, payload: bytes, expected: Envelope) -> None:
    assert parse(topic, payload, NOW_MS, LIMITS) == expected


@pytest.mark.parametrize("expected", [c[3] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_encode_parses_back_to_the_same_envelope(expected: Envelope) -> None:
    assert parse(str(expected.topic), expected.encode(), NOW_MS, LIMITS) == expected


def test_payload_exactly_at_the_size_limit_is_accepted() -> None:
    payload = doc(detail="x" * 200)
    exact = Limits(max_payload_bytes=len(payload))
    assert parse(READING_TOPIC, payload, NOW_MS, exact).detail == "x" * 200
    with pytest.raises(ValidationError) as caught:
        parse(READING_TOPIC, payload, NOW_MS, Limits(max_payload_bytes=len(payload) - 1))
    assert (caught.value.reason, caught.value.field) == (Reason.OVERSIZED, "payload")


# Fuzzing: whatever arrives, parse answers with an Envelope or a ValidationError, nothing else.

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["v", "kind", "device", "site", "boot", "seq", "ts", "metrics", "name", "detail", "units", "model", "location"]
)


def _parses_or_rejects(topic: str, payload: bytes) -> None:
    try:
        result = parse(topic, payload, NOW_MS, LIMITS)
    except ValidationError as err:
        assert isinstance(err.reason, Reason)
        assert err.field
    else:
        assert isinstance(result, Envelope)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(payload: bytes) -> None:
    _parses_or_rejects(READING_TOPIC, payload)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_fuzz_arbitrary_json_objects(obj: dict[str, Any]) -> None:
    # json.dumps writes NaN/Infinity literals for non-finite floats: the parser must refuse those too.
    _parses_or_rejects(READING_TOPIC, json.dumps(obj).encode())


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=4), st.sampled_from([READING_TOPIC, EVENT_TOPIC]))
def test_fuzz_valid_documents_with_fields_replaced(changes: dict[str, Any], topic: str) -> None:
    # Starting from a valid document reaches the checks deep inside the contract.
    _parses_or_rejects(topic, doc(**changes))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.builds("saltmarsh/v1/{}/{}/{}".format, st.text(), st.text(), st.text()))
def test_fuzz_arbitrary_topics(topic: str) -> None:
    _parses_or_rejects(topic, doc())


# The fast path for common messages must agree with the detailed validator on everything it
# accepts, and must only hand a sink payload text that says exactly what the envelope says.


EVERY_FIELD = {"v", "kind", *next(e for n, _, _, e in ACCEPTED if n == "reading with every optional field").to_json()}


def _detailed(topic: str, payload: bytes) -> Envelope | ValidationError:
    try:
        parsed_topic = Topic.parse(topic)
        return from_json(decode_json(payload, LIMITS), parsed_topic, NOW_MS, LIMITS)
    except ValidationError as err:
        return err


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(set(keys)) == len(keys), f"duplicate keys stored as raw_json: {keys}"
    return dict(pairs)


def _agrees_with_the_detailed_validator(topic: str, payload: bytes) -> None:
    fast = _parse_common(topic, payload, NOW_MS, LIMITS)
    if fast is None:
        return
    detailed = _detailed(topic, payload)
    assert isinstance(detailed, Envelope), f"fast path accepted what the validator rejects: {detailed}"
    assert fast == detailed
    assert {k: type(v) for k, v in fast.metrics.items()} == dict.fromkeys(detailed.metrics, float)
    if fast.raw_json is not None:
        assert fast.raw_json == payload.decode()
        stored = json.loads(fast.raw_json, object_pairs_hook=_unique_keys)
        assert from_json(stored, fast.topic, NOW_MS, LIMITS) == fast
        assert set(stored) <= EVERY_FIELD, "unknown fields stored as raw_json"


def test_common_messages_take_the_fast_path_and_keep_their_text() -> None:
    for name, topic, payload, expected in ACCEPTED:
        env = _parse_common(topic, payload, NOW_MS, LIMITS)
        if name == "unknown fields are ignored":
            assert env is None
        else:
            assert env == expected and env.raw_json == payload.decode(), name
    common = _parse_common(READING_TOPIC, doc(), NOW_MS, LIMITS)
    assert common is not None and common.raw_json == doc().decode()
    # Text the fast path cannot vouch for is parsed, but stored re-encoded.
    assert parse(READING_TOPIC, doc(extra=1), NOW_MS, LIMITS).raw_json is None
    assert parse(READING_TOPIC, doc(detail='say "hi"'), NOW_MS, LIMITS).raw_json is None
    assert parse(READING_TOPIC, doc(units={"temperature": "\u00b0C"}), NOW_MS, LIMITS).raw_json is None
    duplicate = doc().replace(b'"seq": 42', b'"seq": 41, "seq": 42')
    assert _parse_common(READING_TOPIC, duplicate, NOW_MS, LIMITS) is None
    with pytest.raises(ValidationError, match="duplicate key 'seq'"):
        parse(READING_TOPIC, duplicate, NOW_MS, LIMITS)
    # replace() builds a different envelope: it must not carry the old text along.
    assert replace(common, seq=43).raw_json is None


@pytest.mark.parametrize("case", REJECTED, ids=[c.name for c in REJECTED])
def test_fast_path_leaves_every_rejection_to_the_detailed_validator(case: Rejected) -> None:
    assert _parse_common(case.topic, case.payload, NOW_MS, LIMITS) is None


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=4), st.sampled_from([READING_TOPIC, EVENT_TOPIC]))
def test_fuzz_fast_path_agrees_on_replaced_fields(changes: dict[str, Any], topic: str) -> None:
    _agrees_with_the_detailed_validator(topic, doc(**changes))


valid_metrics = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=5,
)
texts = st.none() | st.text(max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    valid_metrics,
    st.fixed_dictionaries(
        {},
        optional={
            "name": texts,
            "detail": texts,
            "model": texts,
            "firmware": texts,
            "units": st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            "location": st.none()
            | st.fixed_dictionaries(
                {"lat": st.floats(-90, 90), "lon": st.integers(-180, 180)}, optional={"place": texts}
            ),
        },
    ),
    st.booleans(),
    st.booleans(),
)
def test_fuzz_fast_path_agrees_on_well_formed_readings(
    metrics: dict[str, float], optional: dict[str, Any], compact: bool, duplicate_last: bool
) -> None:
    body = json.dumps({**json.loads(doc()), "metrics": metrics, **optional}, separators=(",", ":") if compact else None)
    if duplicate_last:
        body = body[:-1] + ', "seq": 7}'
    _agrees_with_the_detailed_validator(READING_TOPIC, body.encode())


# An Envelope validates itself, however it is made (mint, replace, a test): the same rules as the
# wire, named by the same fields. (The parsers build through a trusted constructor instead, since
# they have just checked every field; the fuzz tests above hold them to the same rules.)

BAD_ENVELOPES: list[tuple[str, dict[str, Any], Reason, str]] = [
    ("status kind", {"kind": Channel.STATUS}, Reason.INVALID_VALUE, "kind"),
    ("kind as text", {"kind": "reading"}, Reason.INVALID_VALUE, "kind"),
    ("device with space", {"device": "probe 7"}, Reason.INVALID_VALUE, "device"),
    ("device as int", {"device": 7}, Reason.WRONG_TYPE, "device"),
    ("empty site", {"site": ""}, Reason.INVALID_VALUE, "site"),
    ("boot with slash", {"boot": "b/1"}, Reason.INVALID_VALUE, "boot"),
    ("negative seq", {"seq": -1}, Reason.INVALID_VALUE, "seq"),
    ("seq beyond 2**53-1", {"seq": MAX_SEQ + 1}, Reason.INVALID_VALUE, "seq"),
    ("seq as float", {"seq": 1.0}, Reason.WRONG_TYPE, "seq"),
    ("seq as bool", {"seq": True}, Reason.WRONG_TYPE, "seq"),
    ("negative ts", {"ts_ms": -1}, Reason.INVALID_VALUE, "ts"),
    ("ts beyond 2**53-1", {"ts_ms": MAX_SEQ + 1}, Reason.INVALID_VALUE, "ts"),
    ("reading without metrics", {"metrics": {}}, Reason.INVALID_VALUE, "metrics"),
    ("metrics as list", {"metrics": [1.0]}, Reason.WRONG_TYPE, "metrics"),
    ("NaN metric", {"metrics": {"t": float("nan")}}, Reason.NON_FINITE, "metrics.t"),
    ("infinite metric", {"metrics": {"t": float("inf")}}, Reason.NON_FINITE, "metrics.t"),
    ("huge int metric", {"metrics": {"t": 10**400}}, Reason.NON_FINITE, "metrics.t"),
    ("bool metric", {"metrics": {"t": True}}, Reason.WRONG_TYPE, "metrics.t"),
    ("metric name with space", {"metrics": {"a b": 1.0}}, Reason.INVALID_VALUE, "metrics.a b"),
    ("too many metrics", {"metrics": {f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}}, Reason.INVALID_VALUE, "metrics"),
    ("event without name", {"kind": Channel.EVENT}, Reason.MISSING_FIELD, "name"),
    ("alert without name", {"kind": Channel.ALERT}, Reason.MISSING_FIELD, "name"),
    ("name too long", {"name": "x" * 257}, Reason.INVALID_VALUE, "name"),
    ("detail as int", {"detail": 3}, Reason.WRONG_TYPE, "detail"),
    ("model too long", {"model": "m" * 257}, Reason.INVALID_VALUE, "model"),
    ("firmware as float", {"firmware": 1.0}, Reason.WRONG_TYPE, "firmware"),
    ("unit as int", {"units": {"t": 1}}, Reason.WRONG_TYPE, "units.t"),
    ("unit key as int", {"units": {1: "C"}}, Reason.WRONG_TYPE, "units"),
    ("location as tuple", {"location": (1.0, 2.0)}, Reason.WRONG_TYPE, "location"),
]

BAD_LOCATIONS: list[tuple[str, tuple[Any, ...], Reason, str]] = [
    ("lat beyond 90", (90.5, 0.0), Reason.INVALID_VALUE, "location.lat"),
    ("lon beyond 180", (0.0, -180.5), Reason.INVALID_VALUE, "location.lon"),
    ("NaN lat", (float("nan"), 0.0), Reason.NON_FINITE, "location.lat"),
    ("lat as text", ("1", 0.0), Reason.WRONG_TYPE, "location.lat"),
    ("place too long", (0.0, 0.0, "p" * 257), Reason.INVALID_VALUE, "location.place"),
]


@pytest.mark.parametrize(
    ("changes", "reason", "field"), [c[1:] for c in BAD_ENVELOPES], ids=[c[0] for c in BAD_ENVELOPES]
)
def test_envelope_refuses_bad_fields(changes: dict[str, Any], reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        replace(BASE, **changes)
    assert (caught.value.reason, caught.value.field) == (reason, field)


@pytest.mark.parametrize(("args", "reason", "field"), [c[1:] for c in BAD_LOCATIONS], ids=[c[0] for c in BAD_LOCATIONS])
def test_location_refuses_bad_fields(args: tuple[Any, ...], reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Location(*args)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_mint_validates_and_the_largest_seq_is_accepted() -> None:
    from saltmarsh.contract.mint import mint

    kwargs: dict[str, Any] = {"device": "probe-7", "site": "marsh-1", "boot": "b1", "ts_ms": NOW_MS, "units": {}}
    assert mint(seq=MAX_SEQ, metrics={"t": 1}, **kwargs).seq == 2**53 - 1
    with pytest.raises(ValidationError, match=r"'metrics\.t'"):
        mint(seq=1, metrics={"t": float("nan")}, **kwargs)
    assert parse(READING_TOPIC, doc(seq=MAX_SEQ), NOW_MS, LIMITS).seq == MAX_SEQ
