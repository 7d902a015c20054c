"""The cmdres envelope: a command's outcome at one device, sequenced and validated like a reading."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop
from saltmarsh.contract.envelope import Envelope, Limits, _parse_common, parse
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.contract.topics import Channel

NOW_MS = 1_700_000_000_000
LIMITS = Limits(max_payload_bytes=4096)
TOPIC = "saltmarsh/v1/marsh-1/probe-7/cmdres"
READING_TOPIC = "saltmarsh/v1/marsh-1/probe-7/reading"
CMD_ID = "01HF7YAT00XGHYZ3KT8V94F16P"
OUTCOME = {"cmd_id": CMD_ID, "rollout": "r-1", "state": "succeeded", "result": {"interval_s": 30.0}}
_DROP = object()


def doc(**changes: Any) -> bytes:
    """A valid cmdres document with `changes` applied; a value of _DROP removes the field."""
    base: dict[str, Any] = {
        "v": 1,
        "kind": "cmdres",
        "device": "probe-7",
        "site": "marsh-1",
        "boot": "b-20240101",
        "seq": 43,
        "ts": NOW_MS - 1000,
        "name": "succeeded",
        "cmd": OUTCOME,
    }
    for key, value in changes.items():
        if value is _DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return json.dumps(base).encode()


def reading(**changes: Any) -> bytes:
    base = json.loads(doc(kind="reading", name=_DROP, cmd=_DROP, metrics={"t": 1.0}))
    return json.dumps({**base, **changes}).encode()


R = Reason
REJECTED: list[tuple[str, str, bytes, Reason, str]] = [
    ("missing cmd", TOPIC, doc(cmd=_DROP), R.MISSING_FIELD, "cmd"),
    ("cmd as null", TOPIC, doc(cmd=None), R.MISSING_FIELD, "cmd"),
    ("cmd as string", TOPIC, doc(cmd="succeeded"), R.WRONG_TYPE, "cmd"),
    ("missing name", TOPIC, doc(name=_DROP), R.MISSING_FIELD, "name"),
    ("name is not the state", TOPIC, doc(name="failed"), R.INVALID_VALUE, "name"),
    ("name in capitals", TOPIC, doc(name="SUCCEEDED"), R.INVALID_VALUE, "name"),
    (
        "cmd without state",
        TOPIC,
        doc(cmd={k: v for k, v in OUTCOME.items() if k != "state"}),
        R.MISSING_FIELD,
        "cmd.state",
    ),
    ("cmd state unknown", TOPIC, doc(cmd={**OUTCOME, "state": "done"}, name="done"), R.INVALID_VALUE, "cmd.state"),
    ("cmd with unknown field", TOPIC, doc(cmd={**OUTCOME, "rc": 0}), R.UNKNOWN_FIELD, "cmd.rc"),
    ("cmd bad cmd_id", TOPIC, doc(cmd={**OUTCOME, "cmd_id": "1"}), R.INVALID_VALUE, "cmd.cmd_id"),
    (
        "cmd missing rollout",
        TOPIC,
        doc(cmd={k: v for k, v in OUTCOME.items() if k != "rollout"}),
        R.MISSING_FIELD,
        "cmd.rollout",
    ),
    (
        "expired without hop",
        TOPIC,
        doc(cmd={**OUTCOME, "state": "expired"}, name="expired"),
        R.MISSING_FIELD,
        "cmd.hop",
    ),
    ("result nested", TOPIC, doc(cmd={**OUTCOME, "result": {"a": [1]}}), R.WRONG_TYPE, "cmd.result.a"),
    ("cmd on a reading", READING_TOPIC, reading(cmd=OUTCOME), R.INVALID_VALUE, "cmd"),
    (
        "cmd on an alert",
        "saltmarsh/v1/marsh-1/probe-7/alert",
        reading(kind="alert", name="threshold", cmd=OUTCOME),
        R.INVALID_VALUE,
        "cmd",
    ),
    ("reading kind on cmdres", TOPIC, doc(kind="reading"), R.TOPIC_MISMATCH, "kind"),
    ("cmdres kind on reading", READING_TOPIC, doc(), R.TOPIC_MISMATCH, "kind"),
    ("no kind on cmdres", TOPIC, doc(kind=_DROP), R.TOPIC_MISMATCH, "kind"),
    ("device differs", "saltmarsh/v1/marsh-1/probe-8/cmdres", doc(), R.TOPIC_MISMATCH, "device"),
    ("from the whole site", "saltmarsh/v1/marsh-1/_all/cmdres", doc(device="_all"), R.UNKNOWN_TOPIC, "topic.device"),
    ("missing seq", TOPIC, doc(seq=_DROP), R.MISSING_FIELD, "seq"),
    ("metric as text", TOPIC, doc(metrics={"t": "1"}), R.WRONG_TYPE, "metrics.t"),
    ("ts beyond skew", TOPIC, doc(ts=NOW_MS + 300_001), R.FUTURE_TIMESTAMP, "ts"),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "field"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejected(topic: str, payload: bytes, reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(topic, payload, NOW_MS, LIMITS)
    assert (caught.value.reason, caught.value.field) == (reason, field)
    assert _parse_common(topic, payload, NOW_MS, LIMITS) is None


BASE = Envelope(
    kind=Channel.CMDRES,
    device="probe-7",
    site="marsh-1",
    boot="b-20240101",
    seq=43,
    ts_ms=NOW_MS - 1000,
    name="succeeded",
    cmd=CommandOutcome(CMD_ID, "r-1", CommandState.SUCCEEDED, result={"interval_s": 30.0}),
)
EXPIRED = CommandOutcome(CMD_ID, "r-1", CommandState.EXPIRED, Hop.DEVICE, "not_after passed 2 s ago")

ACCEPTED: list[tuple[str, bytes, Envelope]] = [
    ("succeeded", doc(), BASE),
    (
        "expired at the device",
        doc(name="expired", cmd=EXPIRED.to_json()),
        replace(BASE, name="expired", cmd=EXPIRED),
    ),
    ("with metrics and detail", doc(metrics={"t": 1}, detail="ok"), replace(BASE, metrics={"t": 1.0}, detail="ok")),
    ("unknown top-level fields are ignored", doc(extra=1), BASE),
]


@pytest.mark.parametrize(("payload", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted(payload: bytes, expected: Envelope) -> None:
    parsed = parse(TOPIC, payload, NOW_MS, LIMITS)
    assert parsed == expected
    assert parse(str(parsed.topic), parsed.encode(), NOW_MS, LIMITS) == expected
    # Every cmdres takes the detailed validator, which alone checks the outcome.
    assert _parse_common(TOPIC, payload, NOW_MS, LIMITS) is None and parsed.raw_json is None


def test_mint_cmdres_names_it_by_its_state() -> None:
    assert BASE.cmd is not None
    minted = mint_cmdres(
        device="probe-7", site="marsh-1", boot="b-20240101", seq=43, ts_ms=NOW_MS - 1000, outcome=BASE.cmd
    )
    assert minted == BASE
    assert str(minted.topic) == TOPIC and minted.key == "probe-7:b-20240101:43"
    assert minted.to_json()["cmd"] == OUTCOME


def test_a_reading_with_a_cmd_key_leaves_the_fast_path() -> None:
    assert _parse_common(READING_TOPIC, reading(), NOW_MS, LIMITS) is not None
    assert _parse_common(READING_TOPIC, reading(cmd=None), NOW_MS, LIMITS) is None
    assert parse(READING_TOPIC, reading(cmd=None), NOW_MS, LIMITS).cmd is None  # null means absent


BAD_ENVELOPES: list[tuple[str, dict[str, Any], Reason, str]] = [
    ("cmdres without cmd", {"cmd": None}, R.MISSING_FIELD, "cmd"),
    ("cmd as dict", {"cmd": OUTCOME}, R.WRONG_TYPE, "cmd"),
    ("name not the state", {"name": "failed"}, R.INVALID_VALUE, "name"),
    ("no name", {"name": None}, R.MISSING_FIELD, "name"),
    ("reading with cmd", {"kind": Channel.READING, "metrics": {"t": 1.0}}, R.INVALID_VALUE, "cmd"),
    ("event with cmd", {"kind": Channel.EVENT}, R.INVALID_VALUE, "cmd"),
]


@pytest.mark.parametrize(
    ("changes", "reason", "field"), [c[1:] for c in BAD_ENVELOPES], ids=[c[0] for c in BAD_ENVELOPES]
)
def test_envelope_refuses_bad_fields(changes: dict[str, Any], reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        replace(BASE, **changes)
    assert (caught.value.reason, caught.value.field) == (reason, field)
