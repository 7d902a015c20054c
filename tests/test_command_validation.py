"""The command contract as a table: one raw command in, the exact Command or Reason and field out."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltmarsh.contract.command import (
    MAX_ARG_TEXT,
    MAX_ARGS,
    MAX_LIFETIME_MS,
    Command,
    check_addressed,
    check_deadline,
    new_cmd_id,
    parse_command,
    remaining_ms,
)
from saltmarsh.contract.command_state import ULID_PATTERN
from saltmarsh.contract.envelope import MAX_SEQ, Limits
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import BROADCAST

NOW_MS = 1_700_000_000_000
LIMITS = Limits(max_payload_bytes=4096)
TOPIC = "saltmarsh/v1/marsh-1/probe-7/cmd"
ALL_TOPIC = "saltmarsh/v1/marsh-1/_all/cmd"
CMD_ID = "01HF7YAT00XGHYZ3KT8V94F16P"
SIG = "A" * 86 + "=="
_DROP = object()


def body(**changes: Any) -> dict[str, Any]:
    """A valid command document with `changes` applied; a value of _DROP removes the field."""
    base: dict[str, Any] = {
        "v": 1,
        "cmd_id": CMD_ID,
        "rollout": "r-20231114",
        "site": "marsh-1",
        "device": "probe-7",
        "op": "set_interval",
        "args": {"interval_s": 30},
        "issued_at": NOW_MS,
        "not_after": NOW_MS + 600_000,
        "run_timeout_s": 60,
        "sig": SIG,
    }
    for key, value in changes.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def doc(**changes: Any) -> bytes:
    return json.dumps(body(**changes)).encode()


def raw(text: str) -> bytes:
    """A valid command with run_timeout_s replaced by literal JSON text."""
    return doc(run_timeout_s="@@").replace(b'"@@"', text.encode())


def twice(key: str, value: str, payload: bytes | None = None) -> bytes:
    """`payload` (default: a valid command) with `key` once more before itself, set to literal `value`."""
    return (payload or doc()).replace(f'"{key}": '.encode(), f'"{key}": {value}, "{key}": '.encode(), 1)


@dataclass(frozen=True)
class Rejected:
    name: str
    topic: str
    payload: bytes
    reason: Reason
    field: str


R = Reason
REJECTED = [
    # bytes and JSON
    Rejected("malformed json", TOPIC, b'{"v": 1, "cmd_id": ', R.MALFORMED_JSON, "payload"),
    Rejected("empty payload", TOPIC, b"", R.MALFORMED_JSON, "payload"),
    Rejected("not utf-8", TOPIC, b'{"v": 1, "op": "\xff"}', R.NOT_UTF8, "payload"),
    Rejected("json array", TOPIC, b"[1, 2]", R.WRONG_TYPE, "payload"),
    Rejected("json null", TOPIC, b"null", R.WRONG_TYPE, "payload"),
    Rejected("nested too deep", TOPIC, b"[" * 3000, R.MALFORMED_JSON, "payload"),
    Rejected("oversized", TOPIC, doc(args={"text": "x" * 5000}), R.OVERSIZED, "payload"),
    Rejected("NaN literal", TOPIC, raw("NaN"), R.NON_FINITE, "payload"),
    Rejected("Infinity literal", TOPIC, raw("Infinity"), R.NON_FINITE, "payload"),
    Rejected("duplicate cmd_id", TOPIC, twice("cmd_id", '"01HF7YAT00XGHYZ3KT8V94F16Q"'), R.MALFORMED_JSON, "cmd_id"),
    Rejected("duplicate not_after", TOPIC, twice("not_after", "9"), R.MALFORMED_JSON, "not_after"),
    Rejected("duplicate arg", TOPIC, twice("interval_s", "1"), R.MALFORMED_JSON, "interval_s"),
    # unknown fields: a signed command means exactly what it says, nothing more
    Rejected("unknown field", TOPIC, doc(priority=1), R.UNKNOWN_FIELD, "priority"),
    Rejected("envelope field kind", TOPIC, doc(kind="cmd"), R.UNKNOWN_FIELD, "kind"),
    Rejected("misspelt not_after", TOPIC, doc(not_after=_DROP, notafter=NOW_MS + 1), R.UNKNOWN_FIELD, "notafter"),
    Rejected("ms suffix of python names", TOPIC, doc(issued_at_ms=NOW_MS), R.UNKNOWN_FIELD, "issued_at_ms"),
    # missing fields, one per required field
    Rejected("missing v", TOPIC, doc(v=_DROP), R.MISSING_FIELD, "v"),
    Rejected("missing cmd_id", TOPIC, doc(cmd_id=_DROP), R.MISSING_FIELD, "cmd_id"),
    Rejected("missing rollout", TOPIC, doc(rollout=_DROP), R.MISSING_FIELD, "rollout"),
    Rejected("missing site", TOPIC, doc(site=_DROP), R.MISSING_FIELD, "site"),
    Rejected("missing device", TOPIC, doc(device=_DROP), R.MISSING_FIELD, "device"),
    Rejected("missing op", TOPIC, doc(op=_DROP), R.MISSING_FIELD, "op"),
    Rejected("missing args", TOPIC, doc(args=_DROP), R.MISSING_FIELD, "args"),
    Rejected("missing issued_at", TOPIC, doc(issued_at=_DROP), R.MISSING_FIELD, "issued_at"),
    Rejected("missing not_after", TOPIC, doc(not_after=_DROP), R.MISSING_FIELD, "not_after"),
    Rejected("missing run_timeout_s", TOPIC, doc(run_timeout_s=_DROP), R.MISSING_FIELD, "run_timeout_s"),
    Rejected("missing sig", TOPIC, doc(sig=_DROP), R.MISSING_FIELD, "sig"),
    # version
    Rejected("version 2", TOPIC, doc(v=2), R.UNSUPPORTED_VERSION, "v"),
    Rejected("v as string", TOPIC, doc(v="1"), R.UNSUPPORTED_VERSION, "v"),
    Rejected("v as float", TOPIC, doc(v=1.0), R.UNSUPPORTED_VERSION, "v"),
    Rejected("v as true", TOPIC, doc(v=True), R.UNSUPPORTED_VERSION, "v"),
    # ids
    Rejected("cmd_id as int", TOPIC, doc(cmd_id=7), R.WRONG_TYPE, "cmd_id"),
    Rejected("cmd_id lowercase", TOPIC, doc(cmd_id=CMD_ID.lower()), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id 25 chars", TOPIC, doc(cmd_id=CMD_ID[:-1]), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id 27 chars", TOPIC, doc(cmd_id=CMD_ID + "0"), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id with U", TOPIC, doc(cmd_id="U" + CMD_ID[1:]), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id with I", TOPIC, doc(cmd_id=CMD_ID[:-1] + "I"), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id beyond 128 bits", TOPIC, doc(cmd_id="8" + CMD_ID[1:]), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id a uuid", TOPIC, doc(cmd_id="6f1c2b4e-8a3d-4c55-9e0f-2b7a1d3c4e5f"), R.INVALID_VALUE, "cmd_id"),
    Rejected("cmd_id with newline", TOPIC, doc(cmd_id=CMD_ID[:-1] + "\n"), R.INVALID_VALUE, "cmd_id"),
    Rejected("rollout as int", TOPIC, doc(rollout=1), R.WRONG_TYPE, "rollout"),
    Rejected("rollout with space", TOPIC, doc(rollout="r 1"), R.INVALID_VALUE, "rollout"),
    Rejected("empty rollout", TOPIC, doc(rollout=""), R.INVALID_VALUE, "rollout"),
    Rejected("site as list", TOPIC, doc(site=["marsh-1"]), R.WRONG_TYPE, "site"),
    Rejected("site with slash", TOPIC, doc(site="marsh/1"), R.INVALID_VALUE, "site"),
    Rejected("device as int", TOPIC, doc(device=7), R.WRONG_TYPE, "device"),
    Rejected("device with space", TOPIC, doc(device="probe 7"), R.INVALID_VALUE, "device"),
    Rejected("device wildcard", TOPIC, doc(device="+"), R.INVALID_VALUE, "device"),
    Rejected("coalesce as int", TOPIC, doc(coalesce=5), R.WRONG_TYPE, "coalesce"),
    Rejected("coalesce with slash", TOPIC, doc(coalesce="a/b"), R.INVALID_VALUE, "coalesce"),
    # op
    Rejected("op as int", TOPIC, doc(op=3), R.WRONG_TYPE, "op"),
    Rejected("op in camel case", TOPIC, doc(op="setInterval"), R.INVALID_VALUE, "op"),
    Rejected("op with dash", TOPIC, doc(op="set-interval"), R.INVALID_VALUE, "op"),
    Rejected("empty op", TOPIC, doc(op=""), R.INVALID_VALUE, "op"),
    Rejected("op a shell command", TOPIC, doc(op="reboot; rm -rf /"), R.INVALID_VALUE, "op"),
    Rejected("op too long", TOPIC, doc(op="x" * 65), R.INVALID_VALUE, "op"),
    # args: a flat object of JSON scalars
    Rejected("args as list", TOPIC, doc(args=[30]), R.WRONG_TYPE, "args"),
    Rejected("args as null", TOPIC, doc(args=None), R.WRONG_TYPE, "args"),
    Rejected("args as string", TOPIC, doc(args="interval_s=30"), R.WRONG_TYPE, "args"),
    Rejected("arg as object", TOPIC, doc(args={"interval_s": {"value": 30}}), R.WRONG_TYPE, "args.interval_s"),
    Rejected("arg as list", TOPIC, doc(args={"interval_s": [30]}), R.WRONG_TYPE, "args.interval_s"),
    Rejected("arg as null", TOPIC, doc(args={"interval_s": None}), R.WRONG_TYPE, "args.interval_s"),
    Rejected("arg beyond 2**53-1", TOPIC, doc(args={"n": MAX_SEQ + 1}), R.INVALID_VALUE, "args.n"),
    Rejected("huge float arg", TOPIC, doc(args={"n": "@@"}).replace(b'"@@"', b"1e999"), R.NON_FINITE, "args.n"),
    Rejected("arg text too long", TOPIC, doc(args={"t": "x" * (MAX_ARG_TEXT + 1)}), R.INVALID_VALUE, "args.t"),
    Rejected("too many args", TOPIC, doc(args={f"a{i}": i for i in range(MAX_ARGS + 1)}), R.INVALID_VALUE, "args"),
    Rejected("arg name uppercase", TOPIC, doc(args={"Interval": 1}), R.INVALID_VALUE, "args.Interval"),
    Rejected("arg name with dot", TOPIC, doc(args={"a.b": 1}), R.INVALID_VALUE, "args.a.b"),
    Rejected("empty arg name", TOPIC, doc(args={"": 1}), R.INVALID_VALUE, "args."),
    # time: absolute UTC ms, a deadline after the issue, a bounded lifetime
    Rejected("issued_at as string", TOPIC, doc(issued_at="2023-11-14T22:13:20Z"), R.WRONG_TYPE, "issued_at"),
    Rejected("issued_at as float", TOPIC, doc(issued_at=float(NOW_MS)), R.WRONG_TYPE, "issued_at"),
    Rejected("issued_at as true", TOPIC, doc(issued_at=True), R.WRONG_TYPE, "issued_at"),
    Rejected("negative issued_at", TOPIC, doc(issued_at=-1), R.INVALID_VALUE, "issued_at"),
    Rejected("issued_at beyond 2**53-1", TOPIC, doc(issued_at=MAX_SEQ + 1), R.INVALID_VALUE, "issued_at"),
    Rejected("not_after as string", TOPIC, doc(not_after="10m"), R.WRONG_TYPE, "not_after"),
    Rejected("not_after as null", TOPIC, doc(not_after=None), R.WRONG_TYPE, "not_after"),
    Rejected("not_after in seconds", TOPIC, doc(not_after=(NOW_MS + 600_000) // 1000), R.INVALID_VALUE, "not_after"),
    Rejected("deadline before issued_at", TOPIC, doc(not_after=NOW_MS - 1), R.INVALID_VALUE, "not_after"),
    Rejected("deadline at issued_at", TOPIC, doc(not_after=NOW_MS), R.INVALID_VALUE, "not_after"),
    Rejected(
        "lifetime beyond 30 days", TOPIC, doc(not_after=NOW_MS + MAX_LIFETIME_MS + 1), R.INVALID_VALUE, "not_after"
    ),
    Rejected("not_after beyond 2**53-1", TOPIC, doc(not_after=MAX_SEQ + 1), R.INVALID_VALUE, "not_after"),
    Rejected("run_timeout_s as string", TOPIC, doc(run_timeout_s="60s"), R.WRONG_TYPE, "run_timeout_s"),
    Rejected("run_timeout_s as true", TOPIC, doc(run_timeout_s=True), R.WRONG_TYPE, "run_timeout_s"),
    Rejected("run_timeout_s as null", TOPIC, doc(run_timeout_s=None), R.WRONG_TYPE, "run_timeout_s"),
    Rejected("zero run_timeout_s", TOPIC, doc(run_timeout_s=0), R.INVALID_VALUE, "run_timeout_s"),
    Rejected("negative run_timeout_s", TOPIC, doc(run_timeout_s=-0.5), R.INVALID_VALUE, "run_timeout_s"),
    Rejected("run_timeout_s beyond an hour", TOPIC, doc(run_timeout_s=3600.5), R.INVALID_VALUE, "run_timeout_s"),
    Rejected("huge run_timeout_s", TOPIC, raw("1e999"), R.NON_FINITE, "run_timeout_s"),
    # the signature's shape (its validity is signature.verify's)
    Rejected("sig as int", TOPIC, doc(sig=0), R.WRONG_TYPE, "sig"),
    Rejected("sig as null", TOPIC, doc(sig=None), R.WRONG_TYPE, "sig"),
    Rejected("sig too long", TOPIC, doc(sig="A" * 200), R.INVALID_VALUE, "sig"),
    # the body disagrees with its topic: nobody may redirect a command by republishing it
    Rejected("site differs", "saltmarsh/v1/marsh-2/probe-7/cmd", doc(), R.TOPIC_MISMATCH, "site"),
    Rejected("device differs", "saltmarsh/v1/marsh-1/probe-8/cmd", doc(), R.TOPIC_MISMATCH, "device"),
    Rejected("one device's command broadcast", ALL_TOPIC, doc(), R.TOPIC_MISMATCH, "device"),
    Rejected("a broadcast sent to one device", TOPIC, doc(device=BROADCAST), R.TOPIC_MISMATCH, "device"),
    # topics and channels
    Rejected("reading topic", "saltmarsh/v1/marsh-1/probe-7/reading", doc(), R.UNKNOWN_TOPIC, "topic.channel"),
    Rejected("cmdres topic", "saltmarsh/v1/marsh-1/probe-7/cmdres", doc(), R.UNKNOWN_TOPIC, "topic.channel"),
    Rejected("_all on a reading topic", "saltmarsh/v1/marsh-1/_all/reading", doc(), R.UNKNOWN_TOPIC, "topic.device"),
    Rejected("_all as a site", "saltmarsh/v1/_all/probe-7/cmd", doc(), R.UNKNOWN_TOPIC, "topic.site"),
    Rejected("wildcard device level", "saltmarsh/v1/marsh-1/+/cmd", doc(), R.UNKNOWN_TOPIC, "topic.device"),
    Rejected("too few levels", "saltmarsh/v1/marsh-1/cmd", doc(), R.UNKNOWN_TOPIC, "topic"),
    Rejected("other version", "saltmarsh/v2/marsh-1/probe-7/cmd", doc(), R.UNKNOWN_TOPIC, "topic"),
    Rejected("bad topic and payload", "saltmarsh/v1/marsh-1/probe-7/status", b"\xff", R.UNKNOWN_TOPIC, "topic.channel"),
]


@pytest.mark.parametrize("case", REJECTED, ids=[c.name for c in REJECTED])
def test_rejected(case: Rejected) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_command(case.topic, case.payload, LIMITS)
    assert (caught.value.reason, caught.value.field) == (case.reason, case.field)


def test_case_names_are_unique_and_many() -> None:
    assert len({c.name for c in REJECTED}) == len(REJECTED) >= 50


BASE = Command(
    cmd_id=CMD_ID,
    rollout="r-20231114",
    site="marsh-1",
    device="probe-7",
    op="set_interval",
    args={"interval_s": 30},
    issued_at_ms=NOW_MS,
    not_after_ms=NOW_MS + 600_000,
    run_timeout_s=60,
    signature=SIG,
)

ACCEPTED: list[tuple[str, str, bytes, Command]] = [
    ("minimal", TOPIC, doc(), BASE),
    ("broadcast", ALL_TOPIC, doc(device=BROADCAST), replace(BASE, device=BROADCAST)),
    ("with coalesce", TOPIC, doc(coalesce="interval"), replace(BASE, coalesce="interval")),
    ("null coalesce means absent", TOPIC, doc(coalesce=None), BASE),
    ("unsigned", TOPIC, doc(sig=""), replace(BASE, signature="")),
    ("no args", TOPIC, doc(op="read_now", args={}), replace(BASE, op="read_now", args={})),
    (
        "every scalar type",
        TOPIC,
        doc(args={"t": "ü", "i": -3, "f": 0.5, "b": False}),
        replace(BASE, args={"t": "ü", "i": -3, "f": 0.5, "b": False}),
    ),
    ("float run_timeout_s", TOPIC, doc(run_timeout_s=0.25), replace(BASE, run_timeout_s=0.25)),
    ("run_timeout_s at an hour", TOPIC, doc(run_timeout_s=3600), replace(BASE, run_timeout_s=3600)),
    (
        "lifetime exactly 30 days",
        TOPIC,
        doc(not_after=NOW_MS + MAX_LIFETIME_MS),
        replace(BASE, not_after_ms=NOW_MS + MAX_LIFETIME_MS),
    ),
    (
        "a deadline already past parses",
        TOPIC,
        doc(issued_at=1, not_after=2),
        replace(BASE, issued_at_ms=1, not_after_ms=2),
    ),
]


@pytest.mark.parametrize(("topic", "payload", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted(topic: str, payload: bytes, expected: Command) -> None:
    assert parse_command(topic, payload, LIMITS) == expected


@pytest.mark.parametrize("expected", [c[3] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_encode_parses_back_to_the_same_command(expected: Command) -> None:
    parsed = parse_command(str(expected.topic), expected.encode(), LIMITS)
    assert parsed == expected
    assert parsed.signing_bytes() == expected.signing_bytes()
    assert parsed.encode() == expected.encode()


def test_the_wire_names_every_field_in_the_documented_order() -> None:
    cmd = replace(BASE, coalesce="interval")
    assert list(cmd.to_json()) == [
        "v", "cmd_id", "rollout", "site", "device", "op", "args",
        "issued_at", "not_after", "run_timeout_s", "coalesce", "sig",
    ]  # fmt: skip
    assert "coalesce" not in BASE.to_json()


# What the signature covers: one spelling of every field but `sig`, whatever the input's spelling.

GOLDEN_SIGNING_BYTES = (
    b'{"args":{"interval_s":30},"cmd_id":"01HF7YAT00XGHYZ3KT8V94F16P","device":"probe-7",'
    b'"issued_at":1700000000000,"not_after":1700000600000,"op":"set_interval","rollout":"r-20231114",'
    b'"run_timeout_s":60,"site":"marsh-1","v":1}'
)


def test_signing_bytes_are_canonical_and_stable() -> None:
    # Pinned: a change here breaks every signature already issued, and any other implementation.
    assert BASE.signing_bytes() == GOLDEN_SIGNING_BYTES


def test_signing_bytes_do_not_depend_on_the_input_spelling() -> None:
    fields = list(body(coalesce="k", args={"b": 1, "a": "é"}).items())
    spellings = [
        json.dumps(dict(fields)).encode(),
        json.dumps(dict(reversed(fields))).encode(),
        json.dumps(dict(fields), indent=4, ensure_ascii=False).encode(),
        json.dumps(dict(fields), separators=(",", ":"), sort_keys=True).encode(),
        json.dumps(dict(fields)).replace('"\\u00e9"', '"\\u00E9"').encode(),
    ]
    signed = {parse_command(TOPIC, payload, LIMITS).signing_bytes() for payload in spellings}
    assert len(signed) == 1
    (only,) = signed
    assert only.isascii() and b"\\u00e9" in only and b" " not in only


def test_signing_bytes_leave_out_the_signature_and_nothing_else() -> None:
    assert replace(BASE, signature="").signing_bytes() == BASE.signing_bytes()
    changed = [
        replace(BASE, cmd_id="01HF7YAT00XGHYZ3KT8V94F16Q"),
        replace(BASE, rollout="r-2"),
        replace(BASE, site="marsh-2"),
        replace(BASE, device="probe-8"),
        replace(BASE, device=BROADCAST),
        replace(BASE, op="identify"),
        replace(BASE, args={"interval_s": 31}),
        replace(BASE, args={"interval_s": 30.0}),  # a number keeps its JSON spelling
        replace(BASE, issued_at_ms=NOW_MS - 1),
        replace(BASE, not_after_ms=NOW_MS + 600_001),
        replace(BASE, run_timeout_s=61),
        replace(BASE, coalesce="k"),
    ]
    assert len({c.signing_bytes() for c in [BASE, *changed]}) == len(changed) + 1


def test_a_float_keeps_its_value_and_type_through_the_wire() -> None:
    payload = doc(run_timeout_s=60.0, args={"interval_s": 0.1})
    parsed = parse_command(TOPIC, payload, LIMITS)
    assert type(parsed.run_timeout_s) is float and b'"run_timeout_s":60.0' in parsed.signing_bytes()
    assert parse_command(TOPIC, parsed.encode(), LIMITS).signing_bytes() == parsed.signing_bytes()


# A Command validates itself however it is made, with the wire's field names.

BAD_COMMANDS: list[tuple[str, dict[str, Any], Reason, str]] = [
    ("cmd_id lowercase", {"cmd_id": CMD_ID.lower()}, R.INVALID_VALUE, "cmd_id"),
    ("device broadcast misspelt", {"device": "_ALL"}, R.INVALID_VALUE, "device"),
    ("op as None", {"op": None}, R.WRONG_TYPE, "op"),
    ("args as tuple", {"args": (("a", 1),)}, R.WRONG_TYPE, "args"),
    ("arg key as int", {"args": {1: 2}}, R.WRONG_TYPE, "args"),
    ("NaN arg", {"args": {"x": float("nan")}}, R.NON_FINITE, "args.x"),
    ("bytes arg", {"args": {"x": b"1"}}, R.WRONG_TYPE, "args.x"),
    ("issued_at as float", {"issued_at_ms": 1.5}, R.WRONG_TYPE, "issued_at"),
    ("deadline before issue", {"not_after_ms": NOW_MS - 1}, R.INVALID_VALUE, "not_after"),
    ("infinite run_timeout_s", {"run_timeout_s": float("inf")}, R.NON_FINITE, "run_timeout_s"),
    ("NaN run_timeout_s", {"run_timeout_s": float("nan")}, R.NON_FINITE, "run_timeout_s"),
    ("signature as bytes", {"signature": b"AAAA"}, R.WRONG_TYPE, "sig"),
    ("empty coalesce", {"coalesce": ""}, R.INVALID_VALUE, "coalesce"),
]


@pytest.mark.parametrize(
    ("changes", "reason", "field"), [c[1:] for c in BAD_COMMANDS], ids=[c[0] for c in BAD_COMMANDS]
)
def test_command_refuses_bad_fields(changes: dict[str, Any], reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        replace(BASE, **changes)
    assert (caught.value.reason, caught.value.field) == (reason, field)


# Deadlines and addresses: each hop's own checks of a parsed command.


@pytest.mark.parametrize(
    ("now_ms", "left_ms"),
    [(NOW_MS, 600_000), (NOW_MS + 599_999, 1), (NOW_MS + 600_000, None), (NOW_MS + 10**9, None), (0, None)],
)
def test_deadline(now_ms: int, left_ms: int | None) -> None:
    if now_ms == 0:
        # A device whose clock never synced reads 1970: the deadline has not passed for it.
        check_deadline(BASE, now_ms)
        assert remaining_ms(BASE, now_ms) == BASE.not_after_ms
        return
    if left_ms is None:
        with pytest.raises(ValidationError) as caught:
            check_deadline(BASE, now_ms)
        assert (caught.value.reason, caught.value.field) == (R.EXPIRED, "not_after")
        assert remaining_ms(BASE, now_ms) == 0
    else:
        check_deadline(BASE, now_ms)
        assert remaining_ms(BASE, now_ms) == left_ms


@pytest.mark.parametrize(
    ("cmd_site", "cmd_device", "site", "device", "field"),
    [
        ("marsh-1", "probe-7", "marsh-1", "probe-7", None),
        ("marsh-1", BROADCAST, "marsh-1", "probe-7", None),
        ("marsh-1", "probe-8", "marsh-1", "probe-7", "device"),
        ("marsh-2", "probe-7", "marsh-1", "probe-7", "site"),
        ("marsh-2", BROADCAST, "marsh-1", "probe-7", "site"),
    ],
)
def test_addressed(cmd_site: str, cmd_device: str, site: str, device: str, field: str | None) -> None:
    cmd = replace(BASE, site=cmd_site, device=cmd_device)
    if field is None:
        check_addressed(cmd, site, device)
        return
    with pytest.raises(ValidationError) as caught:
        check_addressed(cmd, site, device)
    assert (caught.value.reason, caught.value.field) == (R.NOT_ADDRESSED, field)


def test_new_cmd_ids_are_ulids_sorted_by_time() -> None:
    ids = [new_cmd_id(NOW_MS + step) for step in (0, 1, 1000, 86_400_000)]
    assert all(ULID_PATTERN.fullmatch(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ULID_PATTERN.fullmatch(new_cmd_id())
    assert replace(BASE, cmd_id=ids[0]).cmd_id == ids[0]


# Fuzzing: whatever arrives, parse_command answers with a Command or a ValidationError.

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from([*body(), "coalesce", "extra"])


def _parses_or_rejects(topic: str, payload: bytes) -> None:
    try:
        result = parse_command(topic, payload, LIMITS)
    except ValidationError as err:
        assert isinstance(err.reason, Reason)
        assert err.field
    else:
        assert isinstance(result, Command)
        assert parse_command(topic, result.encode(), LIMITS) == result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(payload: bytes) -> None:
    _parses_or_rejects(TOPIC, payload)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=4))
def test_fuzz_valid_commands_with_fields_replaced(changes: dict[str, Any]) -> None:
    _parses_or_rejects(TOPIC, doc(**changes))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), json_scalars, max_size=6))
def test_fuzz_args_round_trip_with_stable_signing_bytes(args: dict[str, Any]) -> None:
    try:
        cmd = parse_command(TOPIC, doc(args=args), LIMITS)
    except ValidationError as err:
        assert err.field.startswith(("args", "payload"))
        return
    again = parse_command(TOPIC, json.dumps(body(args=dict(reversed(args.items()))), indent=1).encode(), LIMITS)
    assert again.signing_bytes() == cmd.signing_bytes()
