"""Progress lines for long bench steps: at most one every few seconds, on stdout."""

from __future__ import annotations

import time

_EVERY_S = 3.0


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self._started = time.monotonic()
        self._next = self._started + _EVERY_S

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + _EVERY_S
        elapsed = now - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        print(f"    {self.label}: {done:,}/{self.total:,} ({rate:,.0f}/s, {elapsed:.0f} s)", flush=True)
