"""What became of a command at one target: its state, the hop that expired it, and its result.

A state only moves forward. Every hop reports what it saw (the dispatcher SENT, the forwarder
AT_GATEWAY and DELIVERED, the device RUNNING and its result), and reports cross each other on
the way back: a DELIVERED that a slow forwarder sends after the device's SUCCEEDED must not
undo it. So each state has a rank, and `advances` keeps a report only if it ranks above what is
stored. TIMED_OUT is the cloud's guess that no result is coming; a late result outranks it and is
kept, since it is what actually happened. The five final states never change once stored.

This module is the lowest layer of the command contract (the envelope carries a
`CommandOutcome`), so the checks that the command itself shares live here too: the ULID
`cmd_id` and maps of JSON scalars.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import BROADCAST, check_id

# Crockford base32, uppercase, 26 characters: 128 bits, so the first character holds only 3 of
# them (0-7). \Z, not $, for the reason topics.ID_PATTERN gives.
ULID_PATTERN = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}\Z")
# Op, arg and result names: lowercase snake case, the same in JSON, on a command line and in Python.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
# As envelope.MAX_SEQ: integers any JSON reader, JavaScript's included, reads back exactly.
MAX_EXACT_INT = 2**53 - 1
MAX_RESULT_ITEMS = 32
MAX_RESULT_TEXT = 256
MAX_REASON = 256

Scalar = str | int | float | bool
_E = TypeVar("_E", bound=StrEnum)


class CommandState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    AT_GATEWAY = "at_gateway"
    DELIVERED = "delivered"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @property
    def terminal(self) -> bool:
        """Nothing more is awaited: the rollout counts the target as done (TIMED_OUT included)."""
        return self.rank > _RANKS[CommandState.RUNNING]

    @property
    def final(self) -> bool:
        """Terminal and never replaced: every terminal state but TIMED_OUT."""
        return self.rank == _FINAL_RANK


_FINAL_RANK = 70
_RANKS: dict[CommandState, int] = {
    CommandState.QUEUED: 10,
    CommandState.SENT: 20,
    CommandState.AT_GATEWAY: 30,
    CommandState.DELIVERED: 40,
    CommandState.RUNNING: 50,
    CommandState.TIMED_OUT: 60,
    # One rank for all of them, so that no final state replaces another: a device's SUCCEEDED
    # and a cancel that crossed it on the way are both true, and the first one stored stands.
    CommandState.SUCCEEDED: _FINAL_RANK,
    CommandState.FAILED: _FINAL_RANK,
    CommandState.REJECTED: _FINAL_RANK,
    CommandState.EXPIRED: _FINAL_RANK,
    CommandState.CANCELED: _FINAL_RANK,
}
assert set(_RANKS) == set(CommandState)


def advances(stored: CommandState | None, incoming: CommandState) -> bool:
    """Whether `incoming` replaces `stored` (None: nothing stored yet)."""
    if stored is None:
        return True
    return not stored.final and incoming.rank > stored.rank


class Hop(StrEnum):
    """Where an expired command was dropped: each hop checks `not_after` itself."""

    CLOUD = "cloud"
    GATEWAY = "gateway"
    DEVICE = "device"


def check_cmd_id(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected string, got {type(value).__name__}")
    if not ULID_PATTERN.fullmatch(value):
        raise ValidationError(
            Reason.INVALID_VALUE, name, f"{value[:40]!r} is not a ULID (26 uppercase Crockford base32)"
        )
    return value


def check_name(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected string, got {type(value).__name__}")
    if not NAME_PATTERN.fullmatch(value):
        raise ValidationError(Reason.INVALID_VALUE, name, f"{value[:80]!r} must match {NAME_PATTERN.pattern}")
    return value


def check_scalar(name: str, value: object, max_text: int) -> Scalar:
    """One JSON scalar: text, a boolean, an exact integer or a finite number; never null."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            raise ValidationError(Reason.INVALID_VALUE, name, f"outside [-{MAX_EXACT_INT}, {MAX_EXACT_INT}]")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(Reason.NON_FINITE, name, f"{value!r} is not finite")
        return value
    if isinstance(value, str):
        if len(value) > max_text:
            raise ValidationError(Reason.INVALID_VALUE, name, f"longer than {max_text} characters")
        return value
    raise ValidationError(Reason.WRONG_TYPE, name, f"expected a string, number or boolean, got {type(value).__name__}")


def check_scalars(name: str, value: object, max_items: int, max_text: int) -> dict[str, Scalar]:
    """A flat object of named JSON scalars, such as a command's args or an outcome's result."""
    if not isinstance(value, Mapping):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected object, got {type(value).__name__}")
    if len(value) > max_items:
        raise ValidationError(Reason.INVALID_VALUE, name, f"more than {max_items} entries")
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValidationError(Reason.WRONG_TYPE, name, f"expected string keys, got {type(key).__name__}")
        check_name(f"{name}.{key[:40]}", key)
        out[key] = check_scalar(f"{name}.{key}", item, max_text)
    return out


def _optional_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected string, got {type(value).__name__}")
    if len(value) > MAX_REASON:
        raise ValidationError(Reason.INVALID_VALUE, name, f"longer than {MAX_REASON} characters")
    return value


def _enum_value(kind: type[_E], name: str, value: object) -> _E:
    if isinstance(value, kind):
        return value
    if not isinstance(value, str):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected string, got {type(value).__name__}")
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise ValidationError(Reason.INVALID_VALUE, name, f"{value[:40]!r} is not one of {known}") from None


_OUTCOME_FIELDS = frozenset(("cmd_id", "rollout", "state", "hop", "reason", "result", "target"))


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """One target's report on one command, carried by a `cmdres` envelope's `cmd` field."""

    cmd_id: str
    rollout: str
    state: CommandState
    hop: Hop | None = None  # EXPIRED only: which hop dropped it
    reason: str | None = None  # why, for people: "interrupted", "superseded", a rejection naming the field
    result: Mapping[str, Scalar] = field(default_factory=dict)
    # The device this outcome is about, when another hop reports it (a gateway's AT_GATEWAY,
    # EXPIRED(hop=gateway), superseded) on its own (device, boot, seq); None: the envelope's
    # device. BROADCAST for a site-wide command held at the gateway.
    target: str | None = None

    def __post_init__(self) -> None:
        check_cmd_id("cmd.cmd_id", self.cmd_id)
        check_id("cmd.rollout", self.rollout)
        if self.target is not None and self.target != BROADCAST:
            check_id("cmd.target", self.target)
        if not isinstance(self.state, CommandState):
            raise ValidationError(Reason.WRONG_TYPE, "cmd.state", f"expected a CommandState, got {self.state!r}")
        if self.state is CommandState.EXPIRED:
            if self.hop is None:
                raise ValidationError(Reason.MISSING_FIELD, "cmd.hop", "is required when the state is expired")
            if not isinstance(self.hop, Hop):
                raise ValidationError(Reason.WRONG_TYPE, "cmd.hop", f"expected a Hop, got {self.hop!r}")
        elif self.hop is not None:
            raise ValidationError(
                Reason.INVALID_VALUE, "cmd.hop", f"only an expired command has one, not {self.state.value}"
            )
        _optional_text("cmd.reason", self.reason)
        check_scalars("cmd.result", self.result, MAX_RESULT_ITEMS, MAX_RESULT_TEXT)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cmd_id": self.cmd_id, "rollout": self.rollout, "state": self.state.value}
        if self.hop is not None:
            out["hop"] = self.hop.value
        if self.reason is not None:
            out["reason"] = self.reason
        if self.result:
            out["result"] = dict(self.result)
        if self.target is not None:
            out["target"] = self.target
        return out

    @classmethod
    def from_json(cls, doc: object) -> CommandOutcome:
        """A decoded `cmd` object to an outcome; errors name the field, as `cmd.state`."""
        if not isinstance(doc, Mapping):
            raise ValidationError(Reason.WRONG_TYPE, "cmd", f"expected object, got {type(doc).__name__}")
        for key in doc:
            if key not in _OUTCOME_FIELDS:
                raise ValidationError(Reason.UNKNOWN_FIELD, f"cmd.{str(key)[:40]}", "is not a field of an outcome")
        for key in ("cmd_id", "rollout", "state"):
            if key not in doc:
                raise ValidationError(Reason.MISSING_FIELD, f"cmd.{key}", "is required")
        raw_hop, raw_result = doc.get("hop"), doc.get("result")
        return cls(
            cmd_id=doc["cmd_id"],
            rollout=doc["rollout"],
            state=_enum_value(CommandState, "cmd.state", doc["state"]),
            hop=None if raw_hop is None else _enum_value(Hop, "cmd.hop", raw_hop),
            reason=doc.get("reason"),
            result={} if raw_result is None else raw_result,
            target=doc.get("target"),
        )
