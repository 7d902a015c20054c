"""Keep a scan backend running: report its state, retry with the one backoff, never raise.

No Bluetooth is a normal state of a gateway (no adapter, bluetoothd stopped, no D-Bus in a
container): the BLE side reports `ble: unavailable (<reason>)` in its status and log, waits
(`saltmarsh.runtime.backoff`, 1 s doubling to 5 min) and tries again, while the forwarder beside
it goes on forwarding. A backend that raises something unexpected is reported and retried the
same way rather than taking the collector down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.ble.backend import BleUnavailable, Emit, ScanBackend
from saltmarsh.runtime.backoff import Backoff, BackoffPolicy

log = logging.getLogger(__name__)

RETRY = BackoffPolicy(base_s=1.0, cap_s=300.0)


class ScanState(StrEnum):
    STARTING = "starting"
    SCANNING = "scanning"
    UNAVAILABLE = "unavailable"
    FINISHED = "finished"  # a replay played its whole file
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ScanStatus:
    state: ScanState
    detail: str = ""
    failures: int = 0  # failed starts in a row
    retry_in_s: float | None = None

    @property
    def message(self) -> str:
        """`ble: unavailable (no D-Bus system bus; is bluetoothd running?)`: the status and log line."""
        return f"ble: {self.state.value} ({self.detail})" if self.detail else f"ble: {self.state.value}"


async def keep_scanning(
    backend: ScanBackend,
    emit: Emit,
    stop: asyncio.Event,
    report: Callable[[ScanStatus], None],
    *,
    policy: BackoffPolicy = RETRY,
    rand: Callable[[], float] = random.random,
) -> None:
    backoff = Backoff(policy, rand)

    def started(detail: str) -> None:
        backoff.reset()
        status = ScanStatus(ScanState.SCANNING, detail)
        log.info(status.message, extra={"event": "ble_scanning", "backend": backend.name})
        report(status)

    report(ScanStatus(ScanState.STARTING, backend.name))
    while not stop.is_set():
        try:
            await backend.run(emit, stop, started)
        except BleUnavailable as exc:
            reason = exc.reason
        except Exception as exc:  # the collector outlives a backend bug; the log keeps the traceback
            log.exception("ble: %s failed", backend.name)
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            if not stop.is_set():
                report(ScanStatus(ScanState.FINISHED, backend.name))
                return
            break
        delay = backoff.next_delay()
        status = ScanStatus(ScanState.UNAVAILABLE, reason, backoff.attempts, round(delay, 1))
        log.warning(
            status.message,
            extra={
                "event": "ble_unavailable",
                "backend": backend.name,
                "failures": backoff.attempts,
                "retry_in_s": delay,
            },
        )
        report(status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    report(ScanStatus(ScanState.STOPPED))
