"""The op registry: each role's ops, their typed args, and errors that name the arg."""

from __future__ import annotations

from typing import Any

import pytest

from saltmarsh.contract.command_state import Scalar
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.ops import GATEWAY, OPS, SENSOR, ArgSpec, OpSpec, find_op, parse_cli_args, validate_op

# role, op, idempotent: the issue's list, and whether the journal may run it again after a crash.
REGISTRY = [
    (SENSOR, "set_interval", True),
    (SENSOR, "read_now", False),
    (SENSOR, "identify", True),
    (SENSOR, "restart_agent", False),
    (GATEWAY, "set_drain_rate", True),
    (GATEWAY, "flush_backlog_now", True),
    (GATEWAY, "restart_forwarder", False),
]


def test_the_registry_is_the_issues_list() -> None:
    assert sorted((role, op, spec.idempotent) for role, ops in OPS.items() for op, spec in ops.items()) == sorted(
        REGISTRY
    )
    assert all(
        spec.role == role and spec.name == op and spec.summary for role, ops in OPS.items() for op, spec in ops.items()
    )


R = Reason
ACCEPTED: list[tuple[str, str, dict[str, Any], dict[str, Scalar]]] = [
    (SENSOR, "set_interval", {"interval_s": 30}, {"interval_s": 30.0}),
    (SENSOR, "set_interval", {"interval_s": 0.5}, {"interval_s": 0.5}),
    (SENSOR, "set_interval", {"interval_s": 86_400}, {"interval_s": 86_400.0}),
    (SENSOR, "read_now", {}, {}),
    (SENSOR, "identify", {}, {"duration_s": 10.0}),
    (SENSOR, "identify", {"duration_s": 300}, {"duration_s": 300.0}),
    (SENSOR, "restart_agent", {}, {}),
    (GATEWAY, "set_drain_rate", {"messages_per_s": 1}, {"messages_per_s": 1}),
    (GATEWAY, "set_drain_rate", {"messages_per_s": 100_000}, {"messages_per_s": 100_000}),
    (GATEWAY, "flush_backlog_now", {}, {}),
    (GATEWAY, "restart_forwarder", {}, {}),
]


@pytest.mark.parametrize(("role", "op", "args", "expected"), ACCEPTED, ids=[f"{c[1]}{c[2]}" for c in ACCEPTED])
def test_accepted(role: str, op: str, args: dict[str, Any], expected: dict[str, Scalar]) -> None:
    spec, checked = validate_op(role, op, args)
    assert spec is OPS[role][op]
    assert checked == expected and [type(v) for v in checked.values()] == [type(v) for v in expected.values()]


REJECTED: list[tuple[str, str, str, dict[str, Any], Reason, str]] = [
    ("unknown op", SENSOR, "self_destruct", {}, R.UNKNOWN_OP, "op"),
    ("gateway op on a sensor", SENSOR, "set_drain_rate", {"messages_per_s": 5}, R.UNKNOWN_OP, "op"),
    ("sensor op on a gateway", GATEWAY, "set_interval", {"interval_s": 5}, R.UNKNOWN_OP, "op"),
    ("unknown role", "toaster", "read_now", {}, R.UNKNOWN_OP, "op"),
    ("missing required arg", SENSOR, "set_interval", {}, R.MISSING_FIELD, "args.interval_s"),
    ("unknown arg", SENSOR, "set_interval", {"interval_s": 5, "jitter": 1}, R.UNKNOWN_FIELD, "args.jitter"),
    ("arg to an op with none", SENSOR, "read_now", {"now": True}, R.UNKNOWN_FIELD, "args.now"),
    ("number as text", SENSOR, "set_interval", {"interval_s": "30"}, R.WRONG_TYPE, "args.interval_s"),
    ("number as bool", SENSOR, "set_interval", {"interval_s": True}, R.WRONG_TYPE, "args.interval_s"),
    ("number as null", SENSOR, "set_interval", {"interval_s": None}, R.WRONG_TYPE, "args.interval_s"),
    ("NaN number", SENSOR, "set_interval", {"interval_s": float("nan")}, R.NON_FINITE, "args.interval_s"),
    ("huge integer number", SENSOR, "set_interval", {"interval_s": 10**400}, R.NON_FINITE, "args.interval_s"),
    ("below the minimum", SENSOR, "set_interval", {"interval_s": 0.49}, R.INVALID_VALUE, "args.interval_s"),
    ("above the maximum", SENSOR, "set_interval", {"interval_s": 86_401}, R.INVALID_VALUE, "args.interval_s"),
    ("zero", SENSOR, "set_interval", {"interval_s": 0}, R.INVALID_VALUE, "args.interval_s"),
    ("identify too long", SENSOR, "identify", {"duration_s": 301}, R.INVALID_VALUE, "args.duration_s"),
    ("identify too short", SENSOR, "identify", {"duration_s": 0.5}, R.INVALID_VALUE, "args.duration_s"),
    ("integer as float", GATEWAY, "set_drain_rate", {"messages_per_s": 5.0}, R.WRONG_TYPE, "args.messages_per_s"),
    ("integer as bool", GATEWAY, "set_drain_rate", {"messages_per_s": True}, R.WRONG_TYPE, "args.messages_per_s"),
    ("integer as text", GATEWAY, "set_drain_rate", {"messages_per_s": "5"}, R.WRONG_TYPE, "args.messages_per_s"),
    ("drain rate zero", GATEWAY, "set_drain_rate", {"messages_per_s": 0}, R.INVALID_VALUE, "args.messages_per_s"),
    (
        "drain rate too high",
        GATEWAY,
        "set_drain_rate",
        {"messages_per_s": 100_001},
        R.INVALID_VALUE,
        "args.messages_per_s",
    ),
]


@pytest.mark.parametrize(
    ("role", "op", "args", "reason", "field"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejected(role: str, op: str, args: dict[str, Any], reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_op(role, op, args)
    assert (caught.value.reason, caught.value.field) == (reason, field)


# `saltmarsh cmd send TARGET OP k=v ...`: text to typed args, by the op's spec.

CLI_ACCEPTED: list[tuple[str, list[str], dict[str, Scalar]]] = [
    ("set_interval", ["interval_s=30"], {"interval_s": 30.0}),
    ("set_interval", ["interval_s=0.5"], {"interval_s": 0.5}),
    ("set_interval", ["interval_s=1e3"], {"interval_s": 1000.0}),
    ("identify", [], {}),
    ("set_drain_rate", ["messages_per_s=250"], {"messages_per_s": 250}),
    ("read_now", [], {}),
]


@pytest.mark.parametrize(("op", "pairs", "expected"), CLI_ACCEPTED, ids=[f"{c[0]}{c[1]}" for c in CLI_ACCEPTED])
def test_cli_args(op: str, pairs: list[str], expected: dict[str, Scalar]) -> None:
    parsed = parse_cli_args(find_op(op), pairs)
    assert parsed == expected and [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]


CLI_REJECTED: list[tuple[str, str, list[str], Reason, str]] = [
    ("no equals sign", "set_interval", ["interval_s"], R.INVALID_VALUE, "args"),
    ("no name", "set_interval", ["=30"], R.INVALID_VALUE, "args"),
    ("unknown arg", "set_interval", ["interval=30"], R.UNKNOWN_FIELD, "args.interval"),
    ("given twice", "set_interval", ["interval_s=30", "interval_s=40"], R.INVALID_VALUE, "args.interval_s"),
    ("not a number", "set_interval", ["interval_s=30s"], R.WRONG_TYPE, "args.interval_s"),
    ("empty number", "set_interval", ["interval_s="], R.WRONG_TYPE, "args.interval_s"),
    ("nan", "set_interval", ["interval_s=nan"], R.NON_FINITE, "args.interval_s"),
    ("inf", "set_interval", ["interval_s=inf"], R.NON_FINITE, "args.interval_s"),
    ("float for an integer", "set_drain_rate", ["messages_per_s=2.5"], R.WRONG_TYPE, "args.messages_per_s"),
    ("arg to an op with none", "read_now", ["x=1"], R.UNKNOWN_FIELD, "args.x"),
]


@pytest.mark.parametrize(
    ("op", "pairs", "reason", "field"), [c[1:] for c in CLI_REJECTED], ids=[c[0] for c in CLI_REJECTED]
)
def test_cli_args_rejected(op: str, pairs: list[str], reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_cli_args(find_op(op), pairs)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_cli_args_then_validate_checks_the_range() -> None:
    spec = find_op("set_interval")
    with pytest.raises(ValidationError) as caught:
        validate_op(spec.role, spec.name, parse_cli_args(spec, ["interval_s=0.1"]))
    assert (caught.value.reason, caught.value.field) == (R.INVALID_VALUE, "args.interval_s")


def test_find_op_knows_every_role() -> None:
    assert find_op("set_drain_rate").role == GATEWAY and find_op("identify").role == SENSOR
    with pytest.raises(ValidationError) as caught:
        find_op("SetInterval")
    assert (caught.value.reason, caught.value.field) == (R.UNKNOWN_OP, "op")


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [(bool, "true", True), (bool, "No", False), (bool, "1", True), (str, "a=b", "a=b"), (int, "-3", -3)],
)
def test_cli_text_for_each_type(kind: Any, text: str, expected: Scalar) -> None:
    spec = OpSpec("probe", SENSOR, {"x": ArgSpec(kind)})
    assert parse_cli_args(spec, [f"x={text}"]) == {"x": expected}
    with pytest.raises(ValidationError):
        validate_op(SENSOR, "probe", {"x": expected})  # not in the registry


def test_bool_and_choices_args() -> None:
    flag, mode = ArgSpec(bool), ArgSpec(str, choices=("fast", "slow"))
    assert flag.check("args.f", False) is False and mode.check("args.m", "fast") == "fast"
    for spec, value, reason in [
        (flag, 1, R.WRONG_TYPE),
        (flag, "true", R.WRONG_TYPE),
        (mode, "medium", R.INVALID_VALUE),
    ]:
        with pytest.raises(ValidationError) as caught:
            spec.check("args.x", value)
        assert (caught.value.reason, caught.value.field) == (reason, "args.x")


def test_a_spec_refuses_a_default_it_would_reject() -> None:
    with pytest.raises(ValidationError):
        ArgSpec(float, default=0.0, min=1)
    with pytest.raises(ValueError, match="required"):
        ArgSpec(float, required=True, default=1.0)
