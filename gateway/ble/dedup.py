"""The two duplicate filters of our own; bthome-ble's packet id filter runs inside its parser.

- `RepeatFilter`: the same bytes from the same address again within `window_s`, on any adapter.
  Two adapters hearing one advertisement deliver it twice a few milliseconds apart, and devices
  re-send a frame several times for reliability. The first copy's time opens the window and a
  copy does not extend it, so a device that sends identical frames for minutes still gives a
  reading per window. It runs before the parser, so the parser sees each advertisement once.
- `SequenceFilter`: Ruuvi data format 5 measurement sequences already turned into readings. A
  sequence counts as seen for `window_s`, so that a tag that reboots (and counts from 0 again)
  is not taken for a repeat for long.

Both are bounded, oldest out first, and take times from the advertisements, so a replay behaves
as the radio did.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.ble.advertisement import Advertisement, ManufacturerData, ServiceData

REPEAT_WINDOW_S = 1.0
SEQUENCE_WINDOW_S = 60.0
MAX_REPEAT_KEYS = 8192
MAX_SEQUENCES_PER_DEVICE = 32
MAX_SEQUENCE_DEVICES = 4096


class RepeatFilter:
    def __init__(self, window_s: float = REPEAT_WINDOW_S, max_keys: int = MAX_REPEAT_KEYS) -> None:
        self.window_s = window_s
        self._max_keys = max_keys
        self._first_heard: OrderedDict[tuple[str, ServiceData, ManufacturerData], float] = OrderedDict()

    def is_repeat(self, advertisement: Advertisement) -> bool:
        now = advertisement.time_s
        self._expire(now)
        key = advertisement.content
        first = self._first_heard.get(key)
        # abs(): with two adapters, the copy delivered second may carry the earlier time.
        if first is not None and abs(now - first) < self.window_s:
            return True
        self._first_heard[key] = now
        self._first_heard.move_to_end(key)
        while len(self._first_heard) > self._max_keys:
            self._first_heard.popitem(last=False)
        return False

    def _expire(self, now: float) -> None:
        while self._first_heard:
            key, first = next(iter(self._first_heard.items()))
            if now - first < self.window_s:
                return
            del self._first_heard[key]


class SequenceFilter:
    def __init__(
        self,
        window_s: float = SEQUENCE_WINDOW_S,
        per_device: int = MAX_SEQUENCES_PER_DEVICE,
        max_devices: int = MAX_SEQUENCE_DEVICES,
    ) -> None:
        self.window_s = window_s
        self._per_device = per_device
        self._max_devices = max_devices
        self._recent: OrderedDict[str, OrderedDict[int, float]] = OrderedDict()

    def is_duplicate(self, address: str, sequence: int, time_s: float) -> bool:
        """True if this device's `sequence` was seen within the window; otherwise it is recorded."""
        recent = self._recent.get(address)
        if recent is None:
            recent = self._recent[address] = OrderedDict()
            while len(self._recent) > self._max_devices:
                self._recent.popitem(last=False)
        self._recent.move_to_end(address)
        seen_at = recent.get(sequence)
        if seen_at is not None and abs(time_s - seen_at) < self.window_s:
            return True
        recent[sequence] = time_s
        recent.move_to_end(sequence)
        while len(recent) > self._per_device:
            recent.popitem(last=False)
        return False
