"""Command states only move forward: the transition table, and the outcome a device reports."""

from __future__ import annotations

from typing import Any

import pytest

from saltmarsh.contract.command_state import MAX_REASON, MAX_RESULT_ITEMS, CommandOutcome, CommandState, Hop, advances
from saltmarsh.contract.errors import Reason, ValidationError

S = CommandState
FINAL = "succeeded failed rejected expired canceled"

# stored state: every incoming state that replaces it (and no other does). Read a row as "after
# <stored>, a report of any of these is kept".
REPLACED_BY = {
    None: f"queued sent at_gateway delivered running timed_out {FINAL}",
    S.QUEUED: f"sent at_gateway delivered running timed_out {FINAL}",
    S.SENT: f"at_gateway delivered running timed_out {FINAL}",
    S.AT_GATEWAY: f"delivered running timed_out {FINAL}",
    S.DELIVERED: f"running timed_out {FINAL}",
    S.RUNNING: f"timed_out {FINAL}",
    S.TIMED_OUT: FINAL,  # a late result is what happened: kept
    S.SUCCEEDED: "",
    S.FAILED: "",
    S.REJECTED: "",
    S.EXPIRED: "",
    S.CANCELED: "",
}
TRANSITIONS = [
    (stored, incoming, incoming.value in REPLACED_BY[stored].split())
    for stored in REPLACED_BY
    for incoming in CommandState
]


def test_the_table_covers_every_state() -> None:
    assert set(REPLACED_BY) == {None, *CommandState}
    assert all(set(row.split()) <= {s.value for s in CommandState} for row in REPLACED_BY.values())


@pytest.mark.parametrize(
    ("stored", "incoming", "replaces"),
    TRANSITIONS,
    ids=[f"{getattr(s, 'value', 'nothing')}<-{i.value}" for s, i, _ in TRANSITIONS],
)
def test_transition(stored: CommandState | None, incoming: CommandState, replaces: bool) -> None:
    assert advances(stored, incoming) is replaces


def test_the_normal_path_ranks_upward_and_every_terminal_above_running() -> None:
    path = [S.QUEUED, S.SENT, S.AT_GATEWAY, S.DELIVERED, S.RUNNING]
    assert [s.rank for s in path] == sorted({s.rank for s in path})
    assert all(s.rank > S.RUNNING.rank for s in CommandState if s.terminal)
    assert {s for s in CommandState if s.terminal} == {*(S(v) for v in FINAL.split()), S.TIMED_OUT}
    assert {s for s in CommandState if s.final} == {S(v) for v in FINAL.split()}
    assert not any(s.terminal for s in path)


def test_a_stream_of_crossed_reports_ends_in_the_true_outcome() -> None:
    stored: CommandState | None = None
    for report in [S.QUEUED, S.SENT, S.DELIVERED, S.AT_GATEWAY, S.TIMED_OUT, S.RUNNING, S.SUCCEEDED, S.CANCELED]:
        if advances(stored, report):
            stored = report
    assert stored is S.SUCCEEDED


# The outcome, as a cmdres envelope's `cmd` field carries it.

CMD_ID = "01HF7YAT00XGHYZ3KT8V94F16P"
GOOD = {"cmd_id": CMD_ID, "rollout": "r-1", "state": "succeeded"}

OUTCOMES: list[tuple[str, dict[str, Any], CommandOutcome]] = [
    ("succeeded", GOOD, CommandOutcome(CMD_ID, "r-1", S.SUCCEEDED)),
    (
        "with a result",
        {**GOOD, "result": {"interval_s": 30.0, "ok": True, "n": 3, "note": "x"}},
        CommandOutcome(CMD_ID, "r-1", S.SUCCEEDED, result={"interval_s": 30.0, "ok": True, "n": 3, "note": "x"}),
    ),
    (
        "failed, interrupted",
        {**GOOD, "state": "failed", "reason": "interrupted"},
        CommandOutcome(CMD_ID, "r-1", S.FAILED, reason="interrupted"),
    ),
    (
        "expired at the gateway",
        {**GOOD, "state": "expired", "hop": "gateway"},
        CommandOutcome(CMD_ID, "r-1", S.EXPIRED, Hop.GATEWAY),
    ),
    (
        "canceled, superseded",
        {**GOOD, "state": "canceled", "reason": "superseded"},
        CommandOutcome(CMD_ID, "r-1", S.CANCELED, reason="superseded"),
    ),
    (
        "nulls mean absent",
        {**GOOD, "hop": None, "reason": None, "result": None},
        CommandOutcome(CMD_ID, "r-1", S.SUCCEEDED),
    ),
]


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in OUTCOMES], ids=[c[0] for c in OUTCOMES])
def test_outcome_round_trip(doc: dict[str, Any], expected: CommandOutcome) -> None:
    assert CommandOutcome.from_json(doc) == expected
    assert CommandOutcome.from_json(expected.to_json()) == expected


R = Reason
BAD_OUTCOMES: list[tuple[str, Any, Reason, str]] = [
    ("not an object", ["succeeded"], R.WRONG_TYPE, "cmd"),
    ("unknown field", {**GOOD, "exit_code": 0}, R.UNKNOWN_FIELD, "cmd.exit_code"),
    ("missing cmd_id", {"rollout": "r-1", "state": "failed"}, R.MISSING_FIELD, "cmd.cmd_id"),
    ("missing rollout", {"cmd_id": CMD_ID, "state": "failed"}, R.MISSING_FIELD, "cmd.rollout"),
    ("missing state", {"cmd_id": CMD_ID, "rollout": "r-1"}, R.MISSING_FIELD, "cmd.state"),
    ("bad cmd_id", {**GOOD, "cmd_id": "x"}, R.INVALID_VALUE, "cmd.cmd_id"),
    ("bad rollout", {**GOOD, "rollout": "r 1"}, R.INVALID_VALUE, "cmd.rollout"),
    ("state unknown", {**GOOD, "state": "done"}, R.INVALID_VALUE, "cmd.state"),
    ("state uppercase", {**GOOD, "state": "SUCCEEDED"}, R.INVALID_VALUE, "cmd.state"),
    ("state as int", {**GOOD, "state": 6}, R.WRONG_TYPE, "cmd.state"),
    ("expired without hop", {**GOOD, "state": "expired"}, R.MISSING_FIELD, "cmd.hop"),
    ("hop unknown", {**GOOD, "state": "expired", "hop": "broker"}, R.INVALID_VALUE, "cmd.hop"),
    ("hop when not expired", {**GOOD, "hop": "device"}, R.INVALID_VALUE, "cmd.hop"),
    ("reason as int", {**GOOD, "reason": 1}, R.WRONG_TYPE, "cmd.reason"),
    ("reason too long", {**GOOD, "reason": "x" * (MAX_REASON + 1)}, R.INVALID_VALUE, "cmd.reason"),
    ("result as list", {**GOOD, "result": [1]}, R.WRONG_TYPE, "cmd.result"),
    ("result value nested", {**GOOD, "result": {"a": {"b": 1}}}, R.WRONG_TYPE, "cmd.result.a"),
    (
        "result too big",
        {**GOOD, "result": {f"k{i}": i for i in range(MAX_RESULT_ITEMS + 1)}},
        R.INVALID_VALUE,
        "cmd.result",
    ),
    ("result key bad", {**GOOD, "result": {"A B": 1}}, R.INVALID_VALUE, "cmd.result.A B"),
]


@pytest.mark.parametrize(("doc", "reason", "field"), [c[1:] for c in BAD_OUTCOMES], ids=[c[0] for c in BAD_OUTCOMES])
def test_outcome_refused(doc: Any, reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CommandOutcome.from_json(doc)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_an_outcome_validates_itself() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"state": S.EXPIRED}, "cmd.hop"),
        ({"state": "succeeded"}, "cmd.state"),
        ({"state": S.SUCCEEDED, "result": {"x": float("nan")}}, "cmd.result.x"),
        ({"state": S.SUCCEEDED, "hop": "device"}, "cmd.hop"),
        ({"state": S.EXPIRED, "hop": "device"}, "cmd.hop"),
    ]
    for fields, field in bad:
        with pytest.raises(ValidationError) as caught:
            CommandOutcome(CMD_ID, "r-1", **fields)
        assert caught.value.field == field
