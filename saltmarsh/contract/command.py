"""The command, version 1: what the master sends a device, signed, on `saltmarsh/v1/{site}/{device}/cmd`.

The body is the only source of truth. Every hop takes the deadline, the address and the id from
it (MQTT 5 properties are set from it, never read instead of it), and the signature covers every
field but itself, so no broker or gateway can redirect, extend or alter a command unseen.

    {"v":1,"cmd_id":"01J…","rollout":"r-…","site":"marsh-1","device":"probe-7","op":"set_interval",
     "args":{"interval_s":30},"issued_at":…,"not_after":…,"run_timeout_s":60,"sig":"…"}

Parsing is pure, and stricter than the envelope's: an unknown field is refused, not ignored,
since a signed command must mean exactly what its signer saw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saltmarsh.contract.command_state import Scalar, check_cmd_id, check_name, check_scalars
from saltmarsh.contract.envelope import MAX_SEQ, VERSION, Limits, decode_json
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import BROADCAST, Channel, Topic, check_id

MAX_ARGS = 16
MAX_ARG_TEXT = 256
MAX_LIFETIME_MS = 30 * 86_400_000
MAX_RUN_TIMEOUT_S = 3600
MAX_SIGNATURE_TEXT = 128  # base64 of an Ed25519 signature is 88 characters
# Wire names in the order of the document, which is also the order of checks.
_REQUIRED = (
    "v", "cmd_id", "rollout", "site", "device", "op", "args", "issued_at", "not_after", "run_timeout_s", "sig",
)  # fmt: skip
_FIELDS = frozenset((*_REQUIRED, "coalesce"))
_DEFAULT_LIMITS = Limits()


def new_cmd_id(now_ms: int | None = None) -> str:
    """A fresh ULID: unique, and sortable by when it was made."""
    # Imported here: only the master mints command ids, and the import costs a device's agent
    # more than the rest of the contract does.
    from ulid import ULID

    return str(ULID() if now_ms is None else ULID.from_timestamp(now_ms))


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    cmd_id: str
    rollout: str
    site: str
    device: str  # a device id, or BROADCAST for every device of the site
    op: str
    args: Mapping[str, Scalar] = field(default_factory=dict)
    issued_at_ms: int
    not_after_ms: int
    run_timeout_s: float
    coalesce: str | None = None  # latest wins: a newer queued command with this key supersedes this one
    signature: str = ""  # base64 Ed25519 over signing_bytes(); "" until signed

    def __post_init__(self) -> None:
        """Refuse a command the contract would refuse on the wire, naming the field."""
        check_cmd_id("cmd_id", self.cmd_id)
        check_id("rollout", self.rollout)
        check_id("site", self.site)
        if self.device != BROADCAST:
            check_id("device", self.device)
        check_name("op", self.op)
        check_scalars("args", self.args, MAX_ARGS, MAX_ARG_TEXT)
        _int("issued_at", self.issued_at_ms)
        _int("not_after", self.not_after_ms)
        if self.not_after_ms <= self.issued_at_ms:
            raise ValidationError(
                Reason.INVALID_VALUE, "not_after", f"{self.not_after_ms} is not after issued_at {self.issued_at_ms}"
            )
        if self.not_after_ms - self.issued_at_ms > MAX_LIFETIME_MS:
            raise ValidationError(
                Reason.INVALID_VALUE, "not_after", f"more than {MAX_LIFETIME_MS // 86_400_000} days after issued_at"
            )
        _run_timeout(self.run_timeout_s)
        if self.coalesce is not None:
            check_id("coalesce", self.coalesce)
        if not isinstance(self.signature, str):
            raise ValidationError(Reason.WRONG_TYPE, "sig", f"expected string, got {type(self.signature).__name__}")
        if len(self.signature) > MAX_SIGNATURE_TEXT:
            raise ValidationError(Reason.INVALID_VALUE, "sig", f"longer than {MAX_SIGNATURE_TEXT} characters")

    @property
    def topic(self) -> Topic:
        return Topic(self.site, self.device, Channel.COMMAND)

    def to_json(self) -> dict[str, Any]:
        out = self._body()
        out["sig"] = self.signature
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()

    def signing_bytes(self) -> bytes:
        """What the signature covers: every field but `sig`, in one spelling whatever the input's.

        Values keep their JSON type (30 stays 30, 30.0 stays 30.0) and a float prints as the
        shortest text that reads back as itself, so a verifier that parsed the wire document
        rebuilds exactly the bytes the signer signed.
        """
        return json.dumps(
            self._body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()

    def _body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": VERSION,
            "cmd_id": self.cmd_id,
            "rollout": self.rollout,
            "site": self.site,
            "device": self.device,
            "op": self.op,
            "args": dict(self.args),
            "issued_at": self.issued_at_ms,
            "not_after": self.not_after_ms,
            "run_timeout_s": self.run_timeout_s,
        }
        if self.coalesce is not None:
            out["coalesce"] = self.coalesce
        return out


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(Reason.WRONG_TYPE, name, f"expected integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_SEQ:
        raise ValidationError(Reason.INVALID_VALUE, name, f"{value} is outside [0, {MAX_SEQ}]")
    return value


def _run_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(Reason.WRONG_TYPE, "run_timeout_s", f"expected number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(Reason.NON_FINITE, "run_timeout_s", f"{value!r} is not finite")
    if not 0 < value <= MAX_RUN_TIMEOUT_S:
        raise ValidationError(Reason.INVALID_VALUE, "run_timeout_s", f"{value} is outside (0, {MAX_RUN_TIMEOUT_S}]")
    return value


def from_json(doc: Mapping[str, Any], topic: Topic) -> Command:
    """Validate a decoded document against the contract and the topic it arrived on."""
    for key in doc:
        if key not in _FIELDS:
            raise ValidationError(Reason.UNKNOWN_FIELD, key[:80], f"{key[:80]!r} is not a field of a command")
    for key in _REQUIRED:
        if key not in doc:
            raise ValidationError(Reason.MISSING_FIELD, key, "is required")
    version = doc["v"]
    if type(version) is not int or version != VERSION:  # true == 1 and 1.0 == 1 in Python
        raise ValidationError(Reason.UNSUPPORTED_VERSION, "v", f"{version!r} is not {VERSION}")
    site = check_id("site", doc["site"])
    device = doc["device"]
    if device != BROADCAST:
        check_id("device", device)
    if site != topic.site:
        raise ValidationError(Reason.TOPIC_MISMATCH, "site", f"{site!r} differs from topic {topic.site!r}")
    if device != topic.device:
        raise ValidationError(Reason.TOPIC_MISMATCH, "device", f"{device!r} differs from topic {topic.device!r}")
    # Nulls mean absent, as in the envelope; the signature covers the field only when present.
    coalesce = doc.get("coalesce")
    return Command(
        cmd_id=doc["cmd_id"],
        rollout=doc["rollout"],
        site=site,
        device=device,
        op=doc["op"],
        args=doc["args"],
        issued_at_ms=doc["issued_at"],
        not_after_ms=doc["not_after"],
        run_timeout_s=doc["run_timeout_s"],
        coalesce=coalesce,
        signature=doc["sig"],
    )


def parse_command(topic: str, payload: bytes, limits: Limits = _DEFAULT_LIMITS) -> Command:
    """Topic string and raw payload to a validated (not yet verified) Command.

    The deadline and the signature are the caller's to check, with `check_deadline` and
    `signature.verify`: parsing needs no clock and no key.
    """
    parsed_topic = Topic.parse(topic)
    if parsed_topic.channel is not Channel.COMMAND:
        raise ValidationError(
            Reason.UNKNOWN_TOPIC, "topic.channel", f"{parsed_topic.channel.value!r} carries no commands"
        )
    return from_json(decode_json(payload, limits), parsed_topic)


def check_deadline(cmd: Command, now_ms: int) -> None:
    """Refuse a command whose deadline has passed: every hop calls this with its own clock."""
    if now_ms >= cmd.not_after_ms:
        late_s = (now_ms - cmd.not_after_ms) / 1000
        raise ValidationError(Reason.EXPIRED, "not_after", f"{cmd.not_after_ms} passed {late_s:.3f} s ago")


# MQTT 5 user property on the last hop: the time the gateway's clock says is left, in ms. MQTT's own
# message expiry counts whole seconds, and a broker restart may reset it (mosquitto#1464).
REMAINING_PROPERTY = "remaining_ms"


def parse_remaining(value: object) -> int | None:
    """A `remaining_ms` property's value, or None if it is not a plain count of milliseconds."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 12:
        return None
    return int(value)


def remaining_ms(cmd: Command, now_ms: int) -> int:
    """Time left before the deadline, never negative: what a gateway hands a device with no clock."""
    return max(0, cmd.not_after_ms - now_ms)


def check_addressed(cmd: Command, site: str, device: str) -> None:
    """Refuse a command that is not for this device: another device's, or another site's broadcast."""
    if cmd.site != site:
        raise ValidationError(Reason.NOT_ADDRESSED, "site", f"{cmd.site!r} is not this device's site {site!r}")
    if cmd.device not in (device, BROADCAST):
        raise ValidationError(Reason.NOT_ADDRESSED, "device", f"{cmd.device!r} is not this device {device!r}")
