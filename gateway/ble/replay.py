"""Recorded advertisements: a JSON-lines file in, the same `Advertisement`s out, as the radio gave them.

One advertisement per line; bytes are hex, service data keys 128-bit UUIDs, manufacturer data
keys decimal company ids:

    {"t": 1709331995.518, "address": "A4:C1:38:8D:18:B2", "rssi": -60, "adapter": "hci0",
     "name": "ATC_8D18B2", "service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "4002ca0903bf13"},
     "manufacturer_data": {"1177": "0505a0..."}}

`name`, `service_data` and `manufacturer_data` may be left out. Parsing is pure (`parse_line`,
`parse_lines`) and strict: a record that is not an advertisement stops the load with a
`ReplayError` naming the line, because a fixture that is wrong must not pass for bad radio input.
`ReplayBackend` plays the records either as fast as the loop takes them or paced by their own
times divided by `speed`, and can move them to start now (`rebase=True`), so that a recording
replayed next year still makes readings of today.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.ble.advertisement import Advertisement
from gateway.ble.backend import Emit, Started
from saltmarsh.contract.errors import ReplayError, ValidationError

MAX_LINE_CHARS = 16384  # ten times the largest extended advertisement, in hex


def parse_line(text: str, source: str = "<replay>", line: int = 1) -> Advertisement:
    if len(text) > MAX_LINE_CHARS:
        raise ReplayError(source, line, None, f"longer than {MAX_LINE_CHARS} characters")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplayError(source, line, None, f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise ReplayError(source, line, None, f"expected an object, got {type(doc).__name__}")
    unknown = set(doc) - {"t", "address", "rssi", "adapter", "name", "service_data", "manufacturer_data"}
    if unknown:
        raise ReplayError(source, line, sorted(unknown)[0], "unknown field")
    try:
        return Advertisement.of(
            address=_required(doc, "address", source, line),
            rssi=_required(doc, "rssi", source, line),
            time_s=_required(doc, "t", source, line),
            adapter=_required(doc, "adapter", source, line),
            name=doc.get("name"),
            service_data={
                uuid: _hex(value, f"service_data.{uuid}", source, line)
                for uuid, value in _object(doc, "service_data", source, line).items()
            },
            manufacturer_data={
                _company(key, source, line): _hex(value, f"manufacturer_data.{key}", source, line)
                for key, value in _object(doc, "manufacturer_data", source, line).items()
            },
        )
    except ValidationError as exc:
        raise ReplayError(source, line, exc.field, exc.detail) from None


def parse_lines(lines: Iterable[str], source: str = "<replay>") -> list[Advertisement]:
    """Every advertisement of a file's lines; blank lines are skipped."""
    return [parse_line(text, source, number) for number, text in enumerate(lines, 1) if text.strip()]


def load(path: Path) -> list[Advertisement]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(str(path), 0, None, f"cannot read: {exc}") from None
    return parse_lines(text.splitlines(), str(path))


def dump(advertisement: Advertisement) -> str:
    """The JSON line of an advertisement, the inverse of `parse_line`."""
    doc: dict[str, Any] = {
        "t": advertisement.time_s,
        "address": advertisement.address,
        "rssi": advertisement.rssi,
        "adapter": advertisement.adapter,
    }
    if advertisement.name is not None:
        doc["name"] = advertisement.name
    if advertisement.service_data:
        doc["service_data"] = {uuid: data.hex() for uuid, data in advertisement.service_data}
    if advertisement.manufacturer_data:
        doc["manufacturer_data"] = {str(company): data.hex() for company, data in advertisement.manufacturer_data}
    return json.dumps(doc, separators=(",", ":"))


class ReplayBackend:
    """Plays recorded advertisements as a radio would deliver them.

    `speed` None: as fast as the loop takes them, times as recorded (or moved to now). With a
    `speed`, paced: the recording's clock runs `speed` times faster than the wall's, and a moved
    recording (`rebase`, or a fixed `start_at` wall time for its first record) has its times
    compressed to match, so that what it makes is consistent with the wall clock the sinks check.
    With `start_at`, what was due before the backend started is skipped (`missed`): a collector
    restarted in the middle does not hear again what went out while it was down.
    """

    def __init__(
        self,
        records: Sequence[Advertisement],
        *,
        speed: float | None = None,
        rebase: bool = False,
        start_at: float | None = None,
        source: str = "<replay>",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"replay speed {speed} must be above 0")
        self.records = tuple(records)
        self.speed = speed
        self.rebase = rebase or start_at is not None
        self.start_at = start_at
        self.source = source
        self._clock = clock
        self.delivered = 0
        self.missed = 0

    @classmethod
    def from_file(cls, path: Path, **options: Any) -> ReplayBackend:
        return cls(load(path), source=str(path), **options)

    @property
    def name(self) -> str:
        return f"replay of {self.source}"

    def _aired_at(self, record: Advertisement, first: float, origin: float | None) -> float:
        """The wall time a record goes on the air (or its own time, unmoved and unpaced)."""
        offset = record.time_s - first
        if self.speed is not None:
            offset /= self.speed
        return (first if origin is None else origin) + offset

    async def run(self, emit: Emit, stop: asyncio.Event, started: Started) -> None:
        started(f"{len(self.records)} advertisements from {self.source}")
        if not self.records:
            return
        first = self.records[0].time_s
        origin = self.start_at if self.start_at is not None else (self._clock() if self.rebase else None)
        began = self._clock()
        for record in self.records[self.delivered + self.missed :]:
            if stop.is_set():
                return
            aired = self._aired_at(record, first, origin)
            if self.start_at is not None and aired < began:
                self.missed += 1
                continue
            if self.speed is not None:
                wait_s = aired - self._clock() if origin is not None else aired - first - (self._clock() - began)
                if wait_s > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), wait_s)
                        return
                    except TimeoutError:
                        pass
            else:
                await asyncio.sleep(0)  # let the loop (and a stop) in between records
            emit(replace(record, time_s=aired) if origin is not None else record)
            self.delivered += 1


def _required(doc: dict[str, Any], key: str, source: str, line: int) -> Any:
    if key not in doc:
        raise ReplayError(source, line, key, "missing")
    return doc[key]


def _object(doc: dict[str, Any], key: str, source: str, line: int) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ReplayError(source, line, key, f"expected an object, got {type(value).__name__}")
    return value


def _hex(value: Any, field: str, source: str, line: int) -> bytes:
    if not isinstance(value, str):
        raise ReplayError(source, line, field, f"expected a hex string, got {type(value).__name__}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ReplayError(source, line, field, f"{value[:40]!r} is not hex") from None


def _company(key: str, source: str, line: int) -> int:
    if not key.isdigit():
        raise ReplayError(source, line, f"manufacturer_data.{key}", "a company id is a decimal integer")
    return int(key)
