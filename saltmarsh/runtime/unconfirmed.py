"""What a sender has published and the next durable owner has not yet confirmed, and when to resend.

One implementation for the sensor's sender and the forwarder's uplink. The sender numbers every
copy it publishes (`sent` for the first, `copy` for each resend), and lets go of a message only
when a confirmation names one of its copies (`confirm`), or, with `acknowledgement = "broker"`,
on a successful PUBACK (`settle`). A number is never reused within a run, and the run is new at
every start, so a late confirmation can never release the wrong message.

Every copy has its own number so that a confirmation says *which* copy the owner committed, and
so when: the owner has then seen everything this sender published before that copy, since a
broker delivers one publisher's messages in order. That is what the resend rules stand on
(`due`), and why they do not pile copies up in a broker's queue:
- *Overtaken*: a message whose last copy went out `overtaken_s` or more before a copy that has
  been confirmed, and that is itself unconfirmed. It was lost, or its confirmation was, or it
  sits with an ingester that died: the owner is up and will take the copy.
- *Silence*: nothing at all confirmed for `silence` (capped exponential, reset by any
  confirmation): the oldest message alone goes again, as a probe. An owner or a sink that is
  down confirms nothing, and what we sent waits in the broker's queue, so resending it all
  would only double it; one probe per round costs nothing. When the probe's copy is confirmed,
  everything published before it is overtaken: after lost confirmations, all of it goes again
  at once; after a sink outage, the first copies are confirmed in order long before that.
- *Reconnected*: `resend_all` after the sender's own link to the broker came back, since the
  broker may have restarted without what it held.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from typing import Generic, TypeVar

from saltmarsh.contract.confirmation import Confirmation
from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from saltmarsh.runtime.spool import Record, Segment

K = TypeVar("K")

log = logging.getLogger(__name__)


class _Entry(Generic[K]):
    __slots__ = ("copy_at", "first_at", "key", "nbytes", "number", "older", "origin")

    def __init__(self, key: K, nbytes: int, number: int, now: float) -> None:
        self.key = key
        self.nbytes = nbytes
        self.origin = number  # the first copy's number: the sender's handle on the record
        self.number = number  # the newest copy's
        self.copy_at = now  # when the newest copy went out
        self.first_at = now
        self.older: list[int] | None = None  # earlier copies' numbers, still confirmable


class Unconfirmed(Generic[K]):
    """Numbered copies in flight to the next durable owner; owned by one thread.

    `count`, `nbytes`, the totals and `oldest_first_sent` are plain attributes, safe for a status
    thread to read; `refresh_oldest` is the owner's to call.
    """

    def __init__(
        self,
        *,
        overtaken_s: float,
        silence: BackoffPolicy,
        run: str | None = None,
    ) -> None:
        self.run = run or new_boot_id()
        self._overtaken_s = overtaken_s
        self._silence = silence
        self._next = 0
        # Newest copies, in the order they went out: the front has waited longest.
        self._entries: dict[int, _Entry[K]] = {}
        # Picked by `due` or `resend_all`, waiting for the sender to publish the next copy.
        self._waiting: dict[int, _Entry[K]] = {}
        # Earlier copies: a confirmation of one still releases its message. Resends are rare.
        self._older: dict[int, tuple[_Entry[K], float]] = {}
        self._frontier = float("-inf")  # when the newest confirmed copy went out
        self._silent_rounds = 0
        self._last_progress = float("-inf")
        self.count = 0
        self.nbytes = 0
        self.oldest_first_sent: float | None = None
        self.confirmed_total = 0
        self.resent_total = 0
        self.stale_total = 0  # confirmations naming numbers not held: copies already released
        self.foreign_total = 0  # confirmations for another run of this sender
        self.bad_total = 0  # unreadable confirmations, or on a topic not ours: counted, logged, ignored

    def __len__(self) -> int:
        return self.count

    def reserve(self, count: int) -> int:
        """The first of `count` consecutive new numbers, for first copies."""
        first = self._next + 1
        self._next += count
        return first

    def full(self, max_messages: int, max_bytes: int) -> bool:
        return self.count >= max_messages or (max_bytes > 0 and self.nbytes >= max_bytes)

    def sent(self, number: int, key: K, nbytes: int, now: float) -> None:
        """A message's first copy went out, numbered `number` (from `reserve`)."""
        if not self.count:
            # Silence counts from when there was something to confirm, not from the last idle spell.
            self._last_progress = now
            self.oldest_first_sent = now
        self._entries[number] = _Entry(key, nbytes, number, now)
        self.count += 1
        self.nbytes += nbytes

    def copy(self, number: int, now: float) -> tuple[int, K, int] | None:
        """Publish a waiting message again: (the new copy's number, key, origin); None if confirmed meanwhile."""
        entry = self._waiting.pop(number, None)
        if entry is None:
            return None
        self._next += 1
        new = self._next
        self._older[number] = (entry, entry.copy_at)
        if entry.older is None:
            entry.older = [number]
        else:
            entry.older.append(number)
        entry.number = new
        entry.copy_at = now
        self._entries[new] = entry
        self.resent_total += 1
        return new, entry.key, entry.origin

    def receive(self, topic: str, payload: bytes, now: float, *, ours: bool) -> list[tuple[int, K]]:
        """A confirmation as it arrived (`ours`: on this sender's ack topic), applied as `confirm`
        does; anything unreadable is counted and logged, never raised."""
        try:
            if not ours:
                raise ValidationError(Reason.UNKNOWN_TOPIC, "topic", f"{topic[:200]!r} is not this sender's ack topic")
            confirmation = Confirmation.parse(payload)
        except ValidationError as err:
            self.bad_total += 1
            log.warning(
                "unreadable confirmation ignored",
                extra={
                    "event": "bad_confirmation",
                    "topic": topic[:200],
                    "field": err.field,
                    "reason": err.reason.value,
                    "detail": err.detail,
                    "bad_confirmations_total": self.bad_total,
                },
            )
            return []
        return self.confirm(confirmation, now)

    def confirm(self, confirmation: Confirmation, now: float) -> list[tuple[int, K]]:
        """(origin, key) of each held message a confirmation names, released; another run's release nothing."""
        if confirmation.run != self.run:
            self.foreign_total += 1
            return []
        held = len(self._entries) + len(self._waiting) + len(self._older)
        named: list[int] = []
        if confirmation.count <= held:
            for first, last in confirmation.ranges:
                named += range(first, last + 1)
        else:
            # Ranges wider in all than what is held: look up what is held, not every number named,
            # so that no confirmation costs more than the window it confirms.
            candidates = sorted((*self._entries, *self._waiting, *self._older))
            for first, last in confirmation.ranges:
                named += candidates[bisect.bisect_left(candidates, first) : bisect.bisect_right(candidates, last)]
        released = self.settle(named, now)
        self.stale_total += max(0, confirmation.count - len(released))
        return released

    def settle(self, numbers: Iterable[int], now: float) -> list[tuple[int, K]]:
        """Release the messages of these copy numbers (a confirmation's, or PUBACKed in broker mode)."""
        entries, waiting, older = self._entries, self._waiting, self._older
        out: list[tuple[int, K]] = []
        frontier = self._frontier
        freed = 0
        for n in numbers:
            entry = entries.pop(n, None)
            if entry is not None:
                copy_at = entry.copy_at
            else:
                entry = waiting.pop(n, None)
                if entry is not None:
                    copy_at = entry.copy_at
                else:
                    found = older.pop(n, None)
                    if found is None:
                        continue
                    entry, copy_at = found
                    if entries.pop(entry.number, None) is None and waiting.pop(entry.number, None) is None:
                        continue  # released already, by another copy
            if entry.older is not None:
                for earlier in entry.older:
                    older.pop(earlier, None)
            frontier = max(frontier, copy_at)
            out.append((entry.origin, entry.key))
            freed += entry.nbytes
        if not out:
            return out
        self._frontier = frontier
        self.count -= len(out)
        self.nbytes -= freed
        self.confirmed_total += len(out)
        self._silent_rounds = 0
        self._last_progress = now
        if not self.count:
            self.oldest_first_sent = None
        return out

    def silence_s(self) -> float:
        """How long without any confirmation before the next probe."""
        return backoff_delay(self._silent_rounds + 1, self._silence, 0.5)

    def due(self, now: float) -> list[int]:
        """Numbers of messages to send again now (overtaken, or a probe after a silence), for `copy`."""
        entries = self._entries
        if not entries:
            return []
        overtaken_before = self._frontier - self._overtaken_s
        picked: list[int] = []
        for n, entry in entries.items():
            if entry.copy_at > overtaken_before:
                break
            picked.append(n)
        if not picked and not self._waiting and now - self._last_progress >= self.silence_s():
            picked = [next(iter(entries))]
            self._silent_rounds += 1
            self._last_progress = now
        return self._wait(picked)

    def resend_all(self) -> list[int]:
        """Every held message, for `copy` (the link to the broker came back)."""
        self._wait(list(self._entries))
        return list(self._waiting)

    def requeue(self, number: int) -> bool:
        """Send this copy's message again (the broker refused the copy); False if it is not current."""
        return bool(self._wait([number])) if number in self._entries else False

    def _wait(self, numbers: list[int]) -> list[int]:
        entries, waiting = self._entries, self._waiting
        for n in numbers:
            waiting[n] = entries.pop(n)
        return numbers

    def refresh_oldest(self) -> None:
        """Recompute `oldest_first_sent` (a walk of what is held: call it about once a second)."""
        held = (*self._entries.values(), *self._waiting.values())
        self.oldest_first_sent = min((e.first_at for e in held), default=None)


class OpenSegment:
    """A leased spool segment on its way out: its numbers, how far it is published, what is unconfirmed.

    The records stay in memory until the segment is confirmed, for resends; the unconfirmed
    window bounds how many that is.
    """

    __slots__ = ("base", "records", "seg", "sent", "unconfirmed")

    def __init__(self, seg: Segment, records: list[Record], base: int) -> None:
        self.seg = seg
        self.records = records
        self.base = base  # the number of records[0]; records[i] is base + i
        self.sent = 0  # records published at least once
        self.unconfirmed = len(records)

    @property
    def remaining(self) -> int:
        return len(self.records) - self.sent

    def record(self, number: int) -> Record:
        return self.records[number - self.base]

    def release(self, count: int = 1) -> bool:
        """`count` more of its messages are confirmed; True once all are, and all were sent."""
        self.unconfirmed -= count
        return self.unconfirmed == 0 and self.sent == len(self.records)
