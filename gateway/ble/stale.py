"""A device that has gone quiet: unseen for longer than its expected interval times `stale_factor`.

Each quiet spell raises one `stale` event (the collector mints it on the device's `event`
topic, so it is in the sink and the audit like a reading); the device is fresh again when it is
next heard, and a later spell raises another. A device never heard since the collector started
counts from the start: a sensor whose battery died while the gateway was down is reported too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stale:
    mac: str
    unseen_s: float
    limit_s: float

    @property
    def detail(self) -> str:
        return f"not heard for {self.unseen_s:.0f} s (expected every {self.limit_s:.0f} s at the most)"


class StaleWatch:
    def __init__(self, factor: float, started_s: float) -> None:
        self.factor = factor
        self.started_s = started_s
        self.stale: set[str] = set()
        self.raised = 0

    def check(self, now_s: float, devices: Iterable[tuple[str, float, float | None]]) -> list[Stale]:
        """The devices that went stale since the last check: (mac, expected interval, last seen or None)."""
        out: list[Stale] = []
        for mac, interval_s, last_seen_s in devices:
            seen = self.started_s if last_seen_s is None else max(last_seen_s, self.started_s)
            limit_s = interval_s * self.factor
            unseen_s = now_s - seen
            if unseen_s <= limit_s:
                self.stale.discard(mac)
            elif mac not in self.stale:
                self.stale.add(mac)
                self.raised += 1
                out.append(Stale(mac, unseen_s, limit_s))
        return out
