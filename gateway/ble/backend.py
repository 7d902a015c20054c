"""The one small interface every advertisement source implements, as bleak's own backends do.

`run` delivers advertisements to `emit` until `stop` is set (a replay also ends with its file),
calls `started` once it is listening, and raises `BleUnavailable` when the radio cannot be used.
`emit` is called on the event loop's thread, one advertisement at a time. Two backends:
`gateway.ble.bleak_backend.BleakBackend` (the real radio) and `gateway.ble.replay.ReplayBackend`
(recorded advertisements, for the tests, the demo and the lab); `keep_scanning` in
`gateway.ble.supervise` runs either with retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from gateway.ble.advertisement import Advertisement
from saltmarsh.contract.errors import DriverError

Emit = Callable[[Advertisement], None]
Started = Callable[[str], None]


class BleUnavailable(DriverError):
    """The radio cannot be used now; `reason` says why in words an operator acts on."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"ble: unavailable ({reason})")


class ScanBackend(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self, emit: Emit, stop: asyncio.Event, started: Started) -> None: ...
