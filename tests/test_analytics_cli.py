"""`saltmarsh anomaly score`: the same detector over a CSV, bad rows named by line and column."""

from __future__ import annotations

import argparse
import csv
import io
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saltmarsh.analytics import THRESHOLD, SeriesDetector
from saltmarsh.ops import anomaly_cli

MONDAY = 1_704_067_200  # 2024-01-01T00:00:00Z
STEP = 600
WEEK = 7 * 86_400


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="saltmarsh")
    anomaly_cli.register(built.add_subparsers(dest="verb", required=True))
    return built


def run(argv: list[str]) -> tuple[int, str]:
    args = parser().parse_args(argv)
    err = io.StringIO()
    return anomaly_cli.cmd_anomaly_score(args, stderr=err), err.getvalue()


def office(t: int, rng: random.Random) -> float:
    moment = datetime.fromtimestamp(t, UTC)
    working = moment.weekday() < 5 and 9 <= moment.hour < 17
    return round((22.0 if working else 18.0) + rng.gauss(0, 0.1), 2)


def series(weeks: int) -> list[tuple[int, float]]:
    rng = random.Random(8)
    rows = [(t, office(t, rng)) for t in range(MONDAY, MONDAY + weeks * WEEK, STEP)]
    sunday_10 = MONDAY + (weeks - 1) * WEEK + 6 * 86_400 + 10 * 3600
    return [(t, 22.0 if t == sunday_10 else v) for t, v in rows]


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("stamp", [str, iso], ids=["epoch-seconds", "iso-8601"])
def test_scores_every_row_with_the_detector_itself(tmp_path: Path, stamp: Callable[[int], str]) -> None:
    rows = series(4)
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("timestamp,value\n" + "".join(f"{stamp(t)},{v}\n" for t, v in rows))
    code, err = run(["anomaly", "score", str(source), "--out", str(out), "--progress-every", "1000"])
    assert code == 0, err
    written = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(written[0]) == ["timestamp", "value", "anomaly_score", "label"]
    detector = SeriesDetector(STEP)
    expected = [detector.observe(float(t), v).anomaly_score for t, v in rows]
    assert [float(r["anomaly_score"]) for r in written] == pytest.approx(expected, abs=1e-6)
    assert [r["label"] for r in written] == ["1" if s >= THRESHOLD else "0" for s in expected]
    sunday_10 = MONDAY + 3 * WEEK + 6 * 86_400 + 10 * 3600
    assert written[[t for t, _ in rows].index(sunday_10)]["label"] == "1"  # the 22 °C Sunday 10:00
    assert "1,000/4,032 rows (25%)" in err


BAD_ROWS = [
    # (file text, line, column)
    pytest.param("", 1, "timestamp", id="empty-file"),
    pytest.param("time,reading\n1,2\n", 1, "timestamp", id="no-timestamp-column"),
    pytest.param("timestamp,reading\n1,2\n", 1, "value", id="no-value-column"),
    pytest.param("timestamp,value\n1704067200,20\n1704067800,warm\n", 3, "value", id="value-not-a-number"),
    pytest.param("timestamp,value\n1704067200,20\n1704067800,nan\n", 3, "value", id="value-nan"),
    pytest.param("timestamp,value\n1704067200,20\n1704067800,inf\n", 3, "value", id="value-infinite"),
    pytest.param("timestamp,value\n1704067200,20\nyesterday,21\n", 3, "timestamp", id="timestamp-not-a-time"),
    pytest.param("timestamp,value\n1704067200,20\n1704067200,21\n", 3, "timestamp", id="timestamp-repeated"),
    pytest.param("timestamp,value\n1704067800,20\n1704067200,21\n", 3, "timestamp", id="timestamp-backwards"),
    pytest.param("timestamp,value\n1704067200,20\n1704067800\n", 3, "value", id="row-too-short"),
    pytest.param("timestamp,value\n1704067200,20\n", 2, "timestamp", id="one-row-no-step"),
    pytest.param("timestamp,value\n2024-01-01T00:00:00Z,20\n2024-13-01T00:00:00Z,20\n", 3, "timestamp", id="bad-iso"),
]


@pytest.mark.parametrize(("text", "line", "column"), BAD_ROWS)
def test_a_bad_row_is_named_by_line_and_column_and_exits_2(tmp_path: Path, text: str, line: int, column: str) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text(text)
    code, err = run(["anomaly", "score", str(source), "--out", str(out)])
    assert code == 2
    assert f"line {line}, column {column!r}" in err
    assert not out.exists() and not (tmp_path / "out.csv.partial").exists()


def test_an_empty_value_is_a_missing_step_and_a_missing_file_exits_2(tmp_path: Path) -> None:
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    rows = [f"{MONDAY + 60 * i},{'' if 100 <= i < 110 else 20 + i % 3 / 10}\n" for i in range(200)]
    source.write_text("timestamp,value\n" + "".join(rows))
    assert run(["anomaly", "score", str(source), "--out", str(out), "--tz", "Australia/Brisbane"])[0] == 0
    labels = [r["label"] for r in csv.DictReader(io.StringIO(out.read_text()))]
    assert labels[100:104] == ["0"] * 4 and labels[104:110] == ["1"] * 6 and labels[110] == "0"
    code, err = run(["anomaly", "score", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert code == 2 and "nope.csv" in err


def test_a_zone_that_is_not_one_exits_2(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("timestamp,value\n1,2\n2,3\n")
    code, err = run(["anomaly", "score", str(source), "--out", str(tmp_path / "o.csv"), "--tz", "Mars/Olympus"])
    assert code == 2 and "'tz'" in err
