"""Minting: where a reading, an alert or a command's result gets its identity `(device, boot, seq)`.

The sensor agent mints its own readings and threshold alerts; the gateway will mint readings for
BLE devices that cannot run an agent. Both use these functions, so an id means the same thing
wherever it was made. `boot` is new at every start of whatever mints, and `seq` counts from 1
within it: one sequence per (device, boot), shared by its readings and alerts, so that the audit
finds a lost alert as it finds a lost reading. A command's result (`mint_cmdres`) takes the next
seq of the same sequence, for the same reason.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from saltmarsh.contract.command_state import CommandOutcome
from saltmarsh.contract.envelope import Envelope, Location
from saltmarsh.contract.topics import Channel


def new_boot_id(now_s: float | None = None) -> str:
    """Hex boot time, then randomness: unique per start and sortable by when the minter started."""
    started = int(time.time() if now_s is None else now_s)
    return f"{started:x}-{secrets.token_hex(4)}"


def mint(
    *,
    device: str,
    site: str,
    boot: str,
    seq: int,
    ts_ms: int,
    metrics: Mapping[str, float],
    units: Mapping[str, str],
    model: str | None = None,
    firmware: str | None = None,
    location: Location | None = None,
) -> Envelope:
    """A reading envelope with its identity; the envelope validates itself."""
    return Envelope(
        kind=Channel.READING,
        device=device,
        site=site,
        boot=boot,
        seq=seq,
        ts_ms=ts_ms,
        metrics=dict(metrics),
        units=dict(units),
        model=model,
        firmware=firmware,
        location=location,
    )


def mint_alert(
    *,
    device: str,
    site: str,
    boot: str,
    seq: int,
    ts_ms: int,
    name: str,
    metrics: Mapping[str, float],
    units: Mapping[str, str],
    detail: str | None = None,
    model: str | None = None,
    firmware: str | None = None,
    location: Location | None = None,
    kind: Channel = Channel.ALERT,
) -> Envelope:
    """An alert envelope with its identity, on the device's `alert` topic; it validates itself.
    With `kind` EVENT, the same named envelope on the `event` topic (a BLE device gone stale)."""
    return Envelope(
        kind=kind,
        device=device,
        site=site,
        boot=boot,
        seq=seq,
        ts_ms=ts_ms,
        metrics=dict(metrics),
        name=name,
        detail=detail,
        units=dict(units),
        model=model,
        firmware=firmware,
        location=location,
    )


def mint_cmdres(*, device: str, site: str, boot: str, seq: int, ts_ms: int, outcome: CommandOutcome) -> Envelope:
    """A command's outcome at this device, on its `cmdres` topic, named by its state; it validates itself."""
    return Envelope(
        kind=Channel.CMDRES,
        device=device,
        site=site,
        boot=boot,
        seq=seq,
        ts_ms=ts_ms,
        name=outcome.state.value,
        cmd=outcome,
    )
