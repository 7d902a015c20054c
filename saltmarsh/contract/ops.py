"""What a command can ask of each role: one table of ops, their typed args, and whether each is idempotent.

The master checks a command against this table before signing it, and the device checks it again
before running it (its table may be older or newer than the master's); an op or an arg that fails
here is REJECTED, with the error naming the field. Whether an op is idempotent decides what the
device's journal does after a crash between intent and result: run it again, or report
FAILED(interrupted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from saltmarsh.contract.command_state import Scalar, check_name
from saltmarsh.contract.errors import Reason, ValidationError

SENSOR = "sensor"
GATEWAY = "gateway"
ArgType = type[int] | type[float] | type[str] | type[bool]
_TYPE_NAMES: dict[type, str] = {int: "integer", float: "number", str: "string", bool: "boolean"}
_ACCEPTS: dict[type, type | tuple[type, ...]] = {int: int, float: (int, float), str: str, bool: bool}
_TRUE = frozenset(("true", "yes", "on", "1"))
_FALSE = frozenset(("false", "no", "off", "0"))


@dataclass(frozen=True, slots=True)
class ArgSpec:
    type: ArgType
    required: bool = False
    default: Scalar | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Scalar, ...] = ()
    summary: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"arg type {self.type!r} is not int, float, str or bool")
        if self.required and self.default is not None:
            raise ValueError("a required arg has no default")
        if self.default is not None:
            self.check("default", self.default)

    def check(self, name: str, value: object) -> Scalar:
        """`value` as this arg's type (an integer passes as a number), or an error naming `name`."""
        kind = self.type
        # bool is an int in Python, and an integer is a fine number in JSON, but true is not 1.
        if (
            not isinstance(value, str | int | float)
            or isinstance(value, bool) != (kind is bool)
            or not isinstance(value, _ACCEPTS[kind])
        ):
            raise ValidationError(Reason.WRONG_TYPE, name, f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__}")
        try:
            converted: Scalar = float(value) if kind is float else value
        except OverflowError:
            raise ValidationError(Reason.NON_FINITE, name, "integer too large for a number") from None
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ValidationError(Reason.NON_FINITE, name, f"{value!r} is not finite")
        if not isinstance(converted, bool | str):
            if self.min is not None and converted < self.min:
                raise ValidationError(Reason.INVALID_VALUE, name, f"{converted} is below the minimum {self.min}")
            if self.max is not None and converted > self.max:
                raise ValidationError(Reason.INVALID_VALUE, name, f"{converted} is above the maximum {self.max}")
        if self.choices and converted not in self.choices:
            raise ValidationError(Reason.INVALID_VALUE, name, f"{converted!r} is not one of {list(self.choices)}")
        return converted


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    role: str
    args: Mapping[str, ArgSpec] = field(default_factory=dict)
    idempotent: bool = False  # safe to run twice: the journal reruns it after a crash mid-run
    summary: str = ""

    def __post_init__(self) -> None:
        check_name("op", self.name)
        for arg in self.args:
            check_name(f"{self.name}.args", arg)


def _table(*specs: OpSpec) -> Mapping[str, OpSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


OPS: Mapping[str, Mapping[str, OpSpec]] = MappingProxyType(
    {
        SENSOR: _table(
            OpSpec(
                "set_interval",
                SENSOR,
                {"interval_s": ArgSpec(float, required=True, min=0.5, max=86_400, summary="seconds between readings")},
                idempotent=True,
                summary="change how often the sensor reads",
            ),
            OpSpec("read_now", SENSOR, summary="take and send one reading at once"),
            OpSpec(
                "identify",
                SENSOR,
                {"duration_s": ArgSpec(float, default=10.0, min=1, max=300, summary="how long to blink")},
                idempotent=True,
                summary="blink the device's LED so someone on site can find it",
            ),
            OpSpec("restart_agent", SENSOR, summary="restart the sensor agent"),
        ),
        GATEWAY: _table(
            OpSpec(
                "set_drain_rate",
                GATEWAY,
                {"messages_per_s": ArgSpec(int, required=True, min=1, max=100_000, summary="the uplink's limit")},
                idempotent=True,
                summary="change how fast the forwarder drains its backlog to the cloud",
            ),
            OpSpec("flush_backlog_now", GATEWAY, idempotent=True, summary="send the spooled backlog now"),
            OpSpec("restart_forwarder", GATEWAY, summary="restart the forwarder"),
        ),
    }
)
# One name, one op, whatever the role: `cmd send TARGET OP` finds the op before it knows the roles.
assert len({op for ops in OPS.values() for op in ops}) == sum(len(ops) for ops in OPS.values())


def find_op(op: str) -> OpSpec:
    """The op of this name, whichever role runs it."""
    for ops in OPS.values():
        spec = ops.get(op)
        if spec is not None:
            return spec
    known = ", ".join(sorted(name for ops in OPS.values() for name in ops))
    raise ValidationError(Reason.UNKNOWN_OP, "op", f"{op[:40]!r} is not an op; known: {known}")


def validate_op(role: str, op: str, args: Mapping[str, object]) -> tuple[OpSpec, dict[str, Scalar]]:
    """The op's spec and its args checked, typed and with defaults filled, or an error naming the field."""
    ops = OPS.get(role)
    if ops is None:
        raise ValidationError(Reason.UNKNOWN_OP, "op", f"no ops for role {role[:40]!r}")
    spec = ops.get(op)
    if spec is None:
        raise ValidationError(Reason.UNKNOWN_OP, "op", f"{op[:40]!r} is not a {role} op; known: {', '.join(ops)}")
    for name in args:
        if name not in spec.args:
            raise ValidationError(Reason.UNKNOWN_FIELD, f"args.{str(name)[:40]}", f"is not an arg of {op}")
    out: dict[str, Scalar] = {}
    for name, arg in spec.args.items():
        if name in args:
            out[name] = arg.check(f"args.{name}", args[name])
        elif arg.required:
            raise ValidationError(Reason.MISSING_FIELD, f"args.{name}", f"is required by {op}")
        elif arg.default is not None:
            out[name] = arg.default
    return spec, out


def parse_cli_args(spec: OpSpec, pairs: Sequence[str]) -> dict[str, Scalar]:
    """`["interval_s=30"]` to `{"interval_s": 30.0}`, typed by the op's spec; errors name the arg.

    Only types are checked here: ranges, required args and defaults are `validate_op`'s.
    """
    out: dict[str, Scalar] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name:
            raise ValidationError(Reason.INVALID_VALUE, "args", f"{pair[:80]!r} is not name=value")
        arg = spec.args.get(name)
        if arg is None:
            raise ValidationError(Reason.UNKNOWN_FIELD, f"args.{name[:40]}", f"is not an arg of {spec.name}")
        if name in out:
            raise ValidationError(Reason.INVALID_VALUE, f"args.{name}", "is given twice")
        out[name] = _typed(arg, f"args.{name}", text)
    return out


def _typed(arg: ArgSpec, name: str, text: str) -> Scalar:
    kind = arg.type
    if kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected true or false, got {text[:40]!r}")
    try:
        number = int(text) if kind is int else float(text)
    except ValueError:
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected {_TYPE_NAMES[kind]}, got {text[:40]!r}") from None
    if not math.isfinite(number):
        raise ValidationError(Reason.NON_FINITE, name, f"{text[:40]!r} is not finite")
    return number
