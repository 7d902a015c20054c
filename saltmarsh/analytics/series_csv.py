"""The one-series CSV the `saltmarsh anomaly score` verb reads and writes.

In: a header naming `timestamp` and `value` (other columns are ignored), then one row per step of
a fixed step, in increasing time. A timestamp is epoch seconds (`1704067200`, `1704067200.5`) or
ISO 8601 (`2024-01-01T09:00:00Z`, `2024-01-01 09:00:00+10:00`); an ISO time without an offset is
wall-clock time in the site's zone (`--tz`). An empty value is a step with no value (a dropout);
a missing row is a gap, not a dropout (its backlog may have been lost, not its sensor).
Out: `timestamp,value,anomaly_score,label`, the timestamp and value as they came, the score to six
decimals, and the label 1 if the score is at or above the detector's `THRESHOLD`, else 0.

A bad row is a `RowError` naming its line (1 is the header) and column.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from saltmarsh.analytics.detector import THRESHOLD, Assessment
from saltmarsh.contract.errors import SaltmarshError

HEADER_OUT = ("timestamp", "value", "anomaly_score", "label")
STEP_SAMPLE_ROWS = 1000


class RowError(SaltmarshError):
    """A row of a series CSV is wrong: `line` (1-based, the header is 1) and `column` name it."""

    def __init__(self, line: int, column: str, detail: str) -> None:
        self.line = line
        self.column = column
        self.detail = detail
        super().__init__(f"line {line}, column {column!r}: {detail}")


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    timestamp_text: str
    timestamp_s: float
    value_text: str
    value: float | None

    def __post_init__(self) -> None:
        if not math.isfinite(self.timestamp_s):
            raise RowError(self.line, "timestamp", f"{self.timestamp_text[:40]!r} is not a finite time")
        if self.value is not None and not math.isfinite(self.value):
            raise RowError(self.line, "value", f"{self.value_text[:40]!r} is not a finite number")


def parse_timestamp(text: str, zone: ZoneInfo, line: int) -> float:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise RowError(line, "timestamp", f"{stripped[:40]!r} is neither epoch seconds nor ISO 8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def parse_value(text: str, line: int) -> float | None:
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return float(stripped)
    except ValueError:
        raise RowError(line, "value", f"{stripped[:40]!r} is not a number") from None


def read_rows(lines: Iterable[str], zone: ZoneInfo) -> Iterator[Row]:
    """The rows of `lines` (a CSV with its header), checked one by one, times strictly increasing."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise RowError(1, "timestamp", "the file is empty: expected a header 'timestamp,value'")
    names = [name.strip().lower() for name in header]
    for name in ("timestamp", "value"):
        if name not in names:
            raise RowError(1, name, f"the header {','.join(header)[:80]!r} has no {name!r} column")
    at_time, at_value = names.index("timestamp"), names.index("value")
    previous: Row | None = None
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) <= max(at_time, at_value):
            missing = "timestamp" if len(fields) <= at_time else "value"
            raise RowError(line, missing, f"the row has {len(fields)} columns, no {missing!r}")
        row = Row(
            line,
            fields[at_time],
            parse_timestamp(fields[at_time], zone, line),
            fields[at_value],
            parse_value(fields[at_value], line),
        )
        if previous is not None and row.timestamp_s <= previous.timestamp_s:
            raise RowError(line, "timestamp", f"{row.timestamp_text[:40]!r} is not after line {previous.line}'s time")
        previous = row
        yield row


def infer_step(rows: Iterable[Row]) -> float:
    """The series' step: the commonest gap between the first rows (the smallest if tied), so
    that a missing row or two does not change it."""
    gaps: Counter[float] = Counter()
    previous: float | None = None
    for count, row in enumerate(rows):
        if count > STEP_SAMPLE_ROWS:
            break
        if previous is not None:
            gaps[round(row.timestamp_s - previous, 3)] += 1
        previous = row.timestamp_s
    if not gaps:
        raise RowError(2, "timestamp", "a series needs at least two rows to tell its step")
    return min(gaps, key=lambda gap: (-gaps[gap], gap))


def output_fields(row: Row, assessment: Assessment) -> tuple[str, str, str, str]:
    label = "1" if assessment.anomaly_score >= THRESHOLD else "0"
    return (row.timestamp_text, row.value_text, f"{assessment.anomaly_score:.6f}", label)
