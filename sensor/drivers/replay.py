"""Replay of a CSV file: a `timestamp` column plus one column per metric.

The file is UTF-8, with or without a byte-order mark, and no field is longer than MAX_FIELD_CHARS.
Timestamps may be epoch seconds, epoch milliseconds or ISO 8601 (naive means UTC). The file is
replayed either one row per agent interval, or paced by its own timestamps divided by a speed
factor. Parsing is pure: text in, rows or a `ReplayError` naming the line and column out.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from saltmarsh.config.sensor import DriverConfig
from saltmarsh.contract.errors import DriverError, ReplayError, ValidationError
from saltmarsh.contract.topics import check_id
from sensor.drivers.base import Driver, Sample

TIMESTAMP_COLUMN = "timestamp"
# 1e11 seconds is the year 5138 and 1e11 milliseconds is 1973, so the two cannot be confused.
EPOCH_MS_ABOVE = 1e11
KNOWN_UNITS = {"temperature": "°C", "humidity": "%", "pressure": "hPa", "light": "lx"}
# A timestamp or a number fits in a few dozen characters; a longer field is not a reading. (The
# csv module's own limit, 131,072, is reported with the same message.)
MAX_FIELD_CHARS = 1024
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class ReplayRow:
    line: int
    ts_s: float
    metrics: dict[str, float]


def parse_timestamp(text: str) -> float:
    """Epoch seconds, epoch milliseconds or ISO 8601 to epoch seconds; ValueError if none of them."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite time")
        return number / 1000 if abs(number) >= EPOCH_MS_ABOVE else number
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not epoch seconds, epoch milliseconds or ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_value(text: str) -> float:
    value = float(text)  # ValueError names the text already
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return value


def _records(lines: Iterable[str], source: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) per CSV record; a field too long, or CSV the reader refuses, is a ReplayError."""
    reader = csv.reader(lines)
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as err:
            line = reader.line_num or 1
            if "field limit" in str(err):
                raise ReplayError(source, line, None, f"a field is longer than {MAX_FIELD_CHARS} characters") from None
            raise ReplayError(source, line, None, f"not valid CSV: {err}") from None
        if cells is None:
            return
        if any(len(cell) > MAX_FIELD_CHARS for cell in cells):
            raise ReplayError(source, reader.line_num, None, f"a field is longer than {MAX_FIELD_CHARS} characters")
        yield reader.line_num, cells


def iter_replay(lines: Iterable[str], source: str = "<replay>") -> Iterator[ReplayRow]:
    """CSV lines to rows in file order, lazily. Empty cells mean that metric is absent from that row."""
    records = _records(lines, source)
    first = next(records, None)
    if first is None:
        raise ReplayError(source, 1, None, "empty file: expected a header with a timestamp column")
    header = [name.strip() for name in first[1]]
    if header and header[0].startswith(_BOM):  # text handed in already decoded, BOM and all
        header[0] = header[0][1:].strip()
    if TIMESTAMP_COLUMN not in header:
        raise ReplayError(source, 1, None, f"no {TIMESTAMP_COLUMN!r} column in header {header!r}")
    for name in header:
        if header.count(name) > 1:
            raise ReplayError(source, 1, name, "column appears twice")
        try:
            check_id(name, name)
        except ValidationError:
            raise ReplayError(source, 1, name, "metric names are letters, digits, '_', '.' or '-'") from None
    ts_index = header.index(TIMESTAMP_COLUMN)
    any_rows = False
    line = first[0]
    for line, cells in records:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise ReplayError(source, line, None, f"expected {len(header)} fields, got {len(cells)}")
        try:
            ts_s = parse_timestamp(cells[ts_index])
        except ValueError as err:
            raise ReplayError(source, line, TIMESTAMP_COLUMN, str(err)) from None
        metrics: dict[str, float] = {}
        for name, cell in zip(header, cells, strict=True):
            if name == TIMESTAMP_COLUMN or not cell.strip():
                continue
            try:
                metrics[name] = _parse_value(cell)
            except ValueError as err:
                raise ReplayError(source, line, name, str(err)) from None
        any_rows = True
        yield ReplayRow(line, ts_s, metrics)
    if not any_rows:
        raise ReplayError(source, line, None, "no data rows")


def parse_replay(text: str, source: str = "<replay>") -> list[ReplayRow]:
    return list(iter_replay(io.StringIO(text), source))


def pacing_gap_s(before: ReplayRow, after: ReplayRow, speed: float, source: str = "<replay>") -> float:
    """Seconds to wait between two rows when replaying by the file's own timestamps."""
    gap = after.ts_s - before.ts_s
    if gap < 0:
        raise ReplayError(source, after.line, TIMESTAMP_COLUMN, f"goes back {-gap:g} s from line {before.line}")
    return gap / speed


def pacing_delays(rows: Sequence[ReplayRow], speed: float, source: str = "<replay>") -> list[float]:
    """Seconds to wait after each row but the last."""
    return [pacing_gap_s(before, after, speed, source) for before, after in itertools.pairwise(rows)]


def units_for(metric_names: Iterable[str]) -> dict[str, str]:
    names = set(metric_names)
    return {name: unit for name, unit in KNOWN_UNITS.items() if name in names}


def _open(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8-sig", newline="")  # a BOM, if there is one, is not the header
    except OSError as err:
        raise DriverError(f"replay file {path}: cannot read: {err.strerror}") from None


def check_replay_file(path: Path, mode: str, speed: float) -> set[str]:
    """Parse the whole file once, in constant memory, so a bad line stops the agent at start.

    Returns the metric names that have values.
    """
    names: set[str] = set()
    previous: ReplayRow | None = None
    with _open(path) as fh:
        try:
            for row in iter_replay(fh, str(path)):
                names.update(row.metrics)
                if mode == "timestamps" and previous is not None:
                    pacing_gap_s(previous, row, speed, str(path))
                previous = row
        except UnicodeDecodeError as err:
            raise DriverError(f"replay file {path}: not UTF-8: {err}") from None
    return names


class ReplayDriver(Driver):
    """Gives one row per read, then is exhausted; a row with no values is a dropout (None).

    Rows are streamed with one row of lookahead, so a week-long file costs no more memory than a
    minute-long one.
    """

    def __init__(
        self,
        rows: Iterable[ReplayRow],
        *,
        mode: str = "constant",
        speed: float = 1.0,
        source: str = "<replay>",
        units: dict[str, str] | None = None,
        owned_file: TextIO | None = None,
    ) -> None:
        super().__init__()
        if units is None:
            rows = list(rows)
            units = units_for(name for row in rows for name in row.metrics)
        self.mode = mode
        self.speed = speed
        self.source = source
        self._units = units
        self._file = owned_file
        self._rows = iter(rows)
        self._last: ReplayRow | None = None
        self._ahead: ReplayRow | None = next(self._rows, None)

    @classmethod
    def from_config(cls, cfg: DriverConfig) -> ReplayDriver:
        path = cfg.replay_file
        if path is None:
            raise DriverError("driver.replay_file is required for driver type 'replay'")
        units = units_for(check_replay_file(path, cfg.replay_mode, cfg.replay_speed))
        fh = _open(path)
        return cls(
            iter_replay(fh, str(path)),
            mode=cfg.replay_mode,
            speed=cfg.replay_speed,
            source=str(path),
            units=units,
            owned_file=fh,
        )

    def read(self, now_s: float) -> Sample | None:
        row = self._ahead
        if row is None:
            return None
        self._last, self._ahead = row, next(self._rows, None)
        if not row.metrics:
            return None
        return Sample(dict(row.metrics), {k: v for k, v in self._units.items() if k in row.metrics})

    def next_delay_s(self, interval_s: float) -> float:
        if self.mode == "timestamps" and self._last is not None and self._ahead is not None:
            return pacing_gap_s(self._last, self._ahead, self.speed, self.source)
        return interval_s

    @property
    def exhausted(self) -> bool:
        return self._ahead is None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
