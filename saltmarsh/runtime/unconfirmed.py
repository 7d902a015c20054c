"""What a sender has published and the next durable owner has not yet confirmed, and when to resend.

One implementation for the sensor's sender and the forwarder's uplink. The sender numbers each
message (`number`), records it when it goes out (`sent`), and lets go of it only when a
confirmation names it (`confirm`) — or, with `acknowledgement = "broker"`, a successful PUBACK
(`settle`). A number is never reused within a run, and the run is new at every start, so a
late confirmation can never release the wrong message.

When to send a message again (`due`), without piling copies up in a broker's queue:
- *Overtaken*: a message sent `overtaken_s` or more after it has been confirmed and it has not.
  Brokers deliver one publisher's messages in order, so it was lost, or its confirmation was, or
  it sits with an ingester that died: the owner is up, and the copy will be taken.
- *Silence*: nothing at all confirmed for `silence` (capped exponential, reset by any
  confirmation). An owner that is down, or a sink that is down, confirms nothing; its copies are
  in the broker's queue, so resending at once would only double them. The slow, backing-off
  round covers the last message before a quiet spell, whose lost confirmation nothing overtakes.
- *Reconnected*: `resend_all` after the sender's own link to the broker came back, since the
  broker may have restarted without what it held.
A resend keeps the message's number, so a confirmation of either copy releases it.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from saltmarsh.contract.confirmation import Confirmation
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.runtime.backoff import BackoffPolicy, backoff_delay
from saltmarsh.runtime.spool import Record, Segment

K = TypeVar("K")


class _Entry(Generic[K]):
    __slots__ = ("first_at", "key", "nbytes", "sent_at")

    def __init__(self, key: K, nbytes: int, now: float) -> None:
        self.key = key
        self.nbytes = nbytes
        self.sent_at = now  # last sent
        self.first_at = now


class Unconfirmed(Generic[K]):
    """Numbered messages in flight to the next durable owner; owned by one thread.

    `count`, `nbytes`, the totals and `oldest_first_sent` are plain attributes, safe for a status
    thread to read; `refresh_oldest` is the owner's to call.
    """

    def __init__(
        self,
        *,
        overtaken_s: float,
        silence: BackoffPolicy,
        run: str | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.run = run or new_boot_id()
        self._overtaken_s = overtaken_s
        self._silence = silence
        self._rand = rand
        self._next = 0
        # In order of last send, because a resend moves an entry to the end: the front is always
        # the one waiting longest.
        self._entries: dict[int, _Entry[K]] = {}
        self._frontier = float("-inf")  # last-sent time of the newest-sent message confirmed
        self._silent_rounds = 0
        self._last_progress = float("-inf")
        self.count = 0
        self.nbytes = 0
        self.oldest_first_sent: float | None = None
        self.confirmed_total = 0
        self.resent_total = 0
        self.stale_total = 0  # confirmations naming numbers not held: copies, or an earlier run
        self.foreign_total = 0  # confirmations for another run of this sender

    def __len__(self) -> int:
        return self.count

    def __contains__(self, number: int) -> bool:
        return number in self._entries

    def number(self) -> int:
        self._next += 1
        return self._next

    def reserve(self, count: int) -> int:
        """The first of `count` consecutive new numbers."""
        first = self._next + 1
        self._next += count
        return first

    def get(self, number: int) -> K | None:
        entry = self._entries.get(number)
        return None if entry is None else entry.key

    def full(self, max_messages: int, max_bytes: int) -> bool:
        return self.count >= max_messages or (max_bytes > 0 and self.nbytes >= max_bytes)

    def sent(self, number: int, key: K, nbytes: int, now: float) -> None:
        """A message went out for the first time."""
        if not self._entries:
            # Silence counts from when there was something to confirm, not from the last idle spell.
            self._last_progress = now
            self.oldest_first_sent = now
        self._entries[number] = _Entry(key, nbytes, now)
        self.count += 1
        self.nbytes += nbytes

    def confirm(self, confirmation: Confirmation, now: float) -> list[tuple[int, K]]:
        """The held messages a confirmation names, released; other runs' confirmations release nothing."""
        if confirmation.run != self.run:
            self.foreign_total += 1
            return []
        entries = self._entries
        wanted: list[int] = []
        held: list[int] | None = None
        for first, last in confirmation.ranges:
            if last - first < len(entries):
                wanted += [n for n in range(first, last + 1) if n in entries]
            else:
                # A range wider than what is held: look up what is held, not the whole range.
                if held is None:
                    held = sorted(entries)
                wanted += held[bisect.bisect_left(held, first) : bisect.bisect_right(held, last)]
        released = self._release(wanted, now)
        self.stale_total += max(0, confirmation.count - len(released))
        return released

    def settle(self, numbers: Iterable[int], now: float) -> list[tuple[int, K]]:
        """Release numbers confirmed some other way (a PUBACK, when the broker is the owner)."""
        return self._release([n for n in numbers if n in self._entries], now)

    def _release(self, numbers: list[int], now: float) -> list[tuple[int, K]]:
        if not numbers:
            return []
        entries = self._entries
        out: list[tuple[int, K]] = []
        frontier = self._frontier
        freed = 0
        for n in numbers:
            entry = entries.pop(n)
            out.append((n, entry.key))
            freed += entry.nbytes
            frontier = max(frontier, entry.sent_at)
        self._frontier = frontier
        self.count -= len(out)
        self.nbytes -= freed
        self.confirmed_total += len(out)
        self._silent_rounds = 0
        self._last_progress = now
        if not entries:
            self.oldest_first_sent = None
        return out

    def silence_s(self) -> float:
        """How long without any confirmation before the next silent round."""
        return backoff_delay(self._silent_rounds + 1, self._silence, 0.5)

    def due(self, now: float) -> list[tuple[int, K]]:
        """Messages to send again now (overtaken, or the round after a silence); each is restamped."""
        entries = self._entries
        if not entries:
            return []
        overtaken_before = self._frontier - self._overtaken_s
        silent = now - self._last_progress >= self.silence_s()
        picked: list[int] = []
        if silent:
            picked = list(entries)
            self._silent_rounds += 1
            self._last_progress = now
        else:
            for n, entry in entries.items():
                if entry.sent_at > overtaken_before:
                    break
                picked.append(n)
        return self._restamp(picked, now)

    def resend_all(self, now: float) -> list[tuple[int, K]]:
        """Every held message, restamped (the link to the broker came back)."""
        return self._restamp(list(self._entries), now)

    def _restamp(self, numbers: list[int], now: float) -> list[tuple[int, K]]:
        entries = self._entries
        out: list[tuple[int, K]] = []
        for n in numbers:
            entry = entries.pop(n)
            entry.sent_at = now
            entries[n] = entry
            out.append((n, entry.key))
        self.resent_total += len(out)
        return out

    def discard(self, numbers: Iterable[int]) -> None:
        """Stop tracking messages that will not be sent again (their segment is gone)."""
        entries = self._entries
        for n in numbers:
            entry = entries.pop(n, None)
            if entry is not None:
                self.count -= 1
                self.nbytes -= entry.nbytes
        if not entries:
            self.oldest_first_sent = None

    def refresh_oldest(self) -> None:
        """Recompute `oldest_first_sent` (a walk of what is held: call it about once a second)."""
        self.oldest_first_sent = min((e.first_at for e in self._entries.values()), default=None)


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
