"""Confirmations: how the next durable owner tells a sender exactly what it has committed.

MQTT's QoS 1 is hop by hop: a PUBACK says the next *broker* has a message, and a broker is
never its owner. So each sender numbers the messages it publishes, per run of the sender, in the
MQTT 5 user property `msg` = "<run>:<n>", and keeps each one until a confirmation names it:

    sensor    --reading, msg=<run>:<n>-->  gateway Mosquitto  -->  forwarder (spool commit)
    sensor   <--saltmarsh/v1/<site>/<device>/ack  {"run": ..., "ranges": [[first, last], ...]}
    forwarder --reading, gw=<id>, msg=...-->  cloud Mosquitto  -->  ingester (sink commit)
    forwarder <--saltmarsh/v1/<site>/<gateway>/ack  {"run": ..., "ranges": ...}

The confirmation's topic is derived from where the message came from (the device level of its
topic on the site, the `gw` property on the cloud), never from anything the sender names, and
the brokers' ACLs let exactly that device or gateway read it. Ranges are inclusive and batched:
one confirmation per sender and commit, a few dozen bytes for thousands of messages. Several
ingesters commit out of order; each confirms exactly the numbers it committed.

A confirmation is sent at QoS 0: losing one costs a resend (the sink's create semantics absorb
the copy, and count it), never a reading. Pure code, like the rest of `saltmarsh.contract`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from saltmarsh.contract.envelope import MAX_SEQ
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import ID_PATTERN, Channel, Topic

MESSAGE_PROPERTY = "msg"  # MQTT 5 user property: "<run>:<n>", the sender's number for a message
MAX_RANGES = 10_000  # one commit's worth of gaps is far fewer; bounds what a bad peer can send
MAX_CONFIRMATION_BYTES = 512 * 1024


def message_id(run: str, number: int) -> str:
    return f"{run}:{number}"


def parse_message_id(text: str) -> tuple[str, int] | None:
    """(run, number) of a `msg` property, or None when it is not one (the message is still kept)."""
    run, sep, digits = text.rpartition(":")
    # isascii: str.isdigit is true of superscripts, which int() refuses, and of other scripts' digits.
    if not sep or not (digits.isascii() and digits.isdigit()) or len(digits) > 16 or not ID_PATTERN.match(run):
        return None
    number = int(digits)
    return (run, number) if 0 < number <= MAX_SEQ else None


def ack_topic(site: str, device: str) -> str:
    """Where the owner confirms to a sender: its own `ack` channel."""
    return str(Topic(site, device, Channel.ACK))


def ranges_of(numbers: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Inclusive runs of consecutive numbers, in order; duplicates collapse."""
    out: list[tuple[int, int]] = []
    first = last = -1
    for n in sorted(set(numbers)):
        if n == last + 1 and first >= 0:
            last = n
            continue
        if first >= 0:
            out.append((first, last))
        first = last = n
    if first >= 0:
        out.append((first, last))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The numbers of one sender's run that the next durable owner has committed."""

    run: str
    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.run, str) or not ID_PATTERN.match(self.run):
            raise ValidationError(Reason.INVALID_VALUE, "confirmation.run", f"{str(self.run)[:80]!r} is not a run id")
        if not self.ranges:
            raise ValidationError(Reason.MISSING_FIELD, "confirmation.ranges", "confirms nothing")
        if len(self.ranges) > MAX_RANGES:
            raise ValidationError(
                Reason.OVERSIZED, "confirmation.ranges", f"{len(self.ranges)} ranges, limit {MAX_RANGES}"
            )
        previous = 0
        for i, pair in enumerate(self.ranges):
            field = f"confirmation.ranges[{i}]"
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValidationError(Reason.WRONG_TYPE, field, "expected [first, last]")
            first, last = pair
            if not all(type(v) is int for v in pair):
                raise ValidationError(Reason.WRONG_TYPE, field, f"expected integers, got {list(pair)!r}"[:120])
            if not 0 < first <= last <= MAX_SEQ:
                raise ValidationError(Reason.INVALID_VALUE, field, f"{first}..{last} is not 1 <= first <= last")
            if first <= previous:
                raise ValidationError(Reason.INVALID_VALUE, field, f"starts at {first}, not after {previous}")
            previous = last

    @classmethod
    def of(cls, run: str, numbers: Iterable[int]) -> Confirmation:
        return cls(run, ranges_of(numbers))

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    def encode(self) -> bytes:
        doc = {"v": 1, "run": self.run, "ranges": [list(r) for r in self.ranges]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, payload: bytes) -> Confirmation:
        """The confirmation in an `ack` payload, or a ValidationError naming what is wrong."""
        if len(payload) > MAX_CONFIRMATION_BYTES:
            raise ValidationError(Reason.OVERSIZED, "payload", f"{len(payload)} bytes, limit {MAX_CONFIRMATION_BYTES}")
        try:
            # Decoded first: json.loads would guess UTF-16 or UTF-32 from bytes.
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValidationError(Reason.NOT_UTF8, "payload", str(err)[:120]) from None
        try:
            doc: Any = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise ValidationError(Reason.MALFORMED_JSON, "payload", str(err)[:120] or "nested too deep") from None
        if not isinstance(doc, dict):
            raise ValidationError(Reason.WRONG_TYPE, "payload", f"expected an object, got {type(doc).__name__}")
        if type(doc.get("v")) is not int or doc.get("v") != 1:
            raise ValidationError(Reason.UNSUPPORTED_VERSION, "confirmation.v", f"{doc.get('v')!r} is not 1"[:80])
        for name in ("run", "ranges"):
            if name not in doc:
                raise ValidationError(Reason.MISSING_FIELD, f"confirmation.{name}", "required")
        ranges = doc["ranges"]
        if not isinstance(ranges, list):
            raise ValidationError(Reason.WRONG_TYPE, "confirmation.ranges", "expected a list of [first, last]")
        pairs = tuple(tuple(r) if isinstance(r, list) else r for r in ranges)
        return cls(doc["run"], pairs)  # validated by __post_init__


class ConfirmationBatch:
    """What one commit made durable, grouped by where each confirmation goes and the sender's run."""

    __slots__ = ("_numbers", "count", "largest")

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str], list[int]] = {}
        self.count = 0
        self.largest = 0  # the most numbers held for one sender run

    def __bool__(self) -> bool:
        return bool(self._numbers)

    def add(self, topic: str, run: str, number: int) -> None:
        self.count += 1
        numbers = self._numbers.get((topic, run))
        if numbers is None:
            numbers = self._numbers[(topic, run)] = []
        numbers.append(number)
        self.largest = max(self.largest, len(numbers))

    def extend(self, other: ConfirmationBatch) -> None:
        for key, numbers in other._numbers.items():
            mine = self._numbers.setdefault(key, [])
            mine.extend(numbers)
            self.largest = max(self.largest, len(mine))
        self.count += other.count

    def messages(self) -> list[tuple[str, bytes]]:
        """(topic, payload) per sender run, each at most MAX_RANGES ranges."""
        out: list[tuple[str, bytes]] = []
        for (topic, run), numbers in self._numbers.items():
            ranges = ranges_of(numbers)
            for start in range(0, len(ranges), MAX_RANGES):
                out.append((topic, Confirmation(run, ranges[start : start + MAX_RANGES]).encode()))
        return out
