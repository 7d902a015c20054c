"""`saltmarsh anomaly score INPUT.csv --out OUTPUT.csv [--tz ZONE] [--step SECONDS]`.

Scores one series with the very detector a service runs (`saltmarsh.analytics`), causally, row
by row: each row is scored against the rows before it only. The file formats are in
`saltmarsh.analytics.series_csv`. The step is the commonest gap between the first rows unless
`--step` says it. Progress goes to stderr every `--progress-every` rows.

Exits 0 when every row was scored (whether or not any is an anomaly: the labels say that), 2 on
bad input: a missing file, a bad option, or a bad row (the message names its line and column),
and then no output file is left behind.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from saltmarsh.analytics.detector import THRESHOLD, SeriesDetector
from saltmarsh.analytics.series_csv import HEADER_OUT, RowError, infer_step, output_fields, read_rows
from saltmarsh.analytics.week_clock import site_zone
from saltmarsh.contract.errors import SaltmarshError

PROGRESS_EVERY_ROWS = 100_000


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def register(verbs: argparse._SubParsersAction[Any]) -> None:
    """Adds `anomaly score` to the `saltmarsh` command's verbs."""
    anomaly = verbs.add_parser("anomaly", help="time-of-week anomaly scores for a series")
    anomaly_verbs = anomaly.add_subparsers(dest="anomaly_verb", required=True)
    score = anomaly_verbs.add_parser("score", help="score a timestamp,value CSV row by row")
    score.add_argument("input", metavar="INPUT.csv", help="a header, then timestamp,value rows at a fixed step")
    score.add_argument("--out", required=True, metavar="OUTPUT.csv", help="timestamp,value,anomaly_score,label")
    score.add_argument("--tz", default="UTC", help="the site's time zone, for hour-of-week buckets (default UTC)")
    score.add_argument("--step", type=_positive, help="seconds between rows (default: the commonest gap)")
    score.add_argument(
        "--progress-every", type=_count, default=PROGRESS_EVERY_ROWS, help="rows between progress lines on stderr"
    )
    score.set_defaults(func=cmd_anomaly_score)


def progress_line(done: int, total: int, anomalies: int, elapsed_s: float) -> str:
    share = 100.0 * done / total if total else 100.0
    return f"anomaly score: {done:,}/{total:,} rows ({share:.0f}%) {anomalies:,} anomalies, {elapsed_s:.1f}s"


def cmd_anomaly_score(args: argparse.Namespace, stderr: TextIO | None = None) -> int:
    err = stderr if stderr is not None else sys.stderr
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    try:
        zone = site_zone(args.tz)
        source = Path(args.input)
        with source.open(newline="", encoding="utf-8") as first_pass:
            total = max(0, sum(1 for _ in first_pass) - 1)
        with source.open(newline="", encoding="utf-8") as head:
            step_s = args.step if args.step is not None else infer_step(read_rows(head, zone))
        detector = SeriesDetector(step_s, zone)
        started, done, anomalies = time.monotonic(), 0, 0
        with source.open(newline="", encoding="utf-8") as rows_in, partial.open("w", newline="") as rows_out:
            writer = csv.writer(rows_out, lineterminator="\n")
            writer.writerow(HEADER_OUT)
            for row in read_rows(rows_in, zone):
                assessment = detector.observe(row.timestamp_s, row.value)
                writer.writerow(output_fields(row, assessment))
                done += 1
                anomalies += assessment.anomaly_score >= THRESHOLD
                if done % args.progress_every == 0:
                    print(progress_line(done, total, anomalies, time.monotonic() - started), file=err, flush=True)
        os.replace(partial, out)
    except (RowError, SaltmarshError) as failure:
        partial.unlink(missing_ok=True)
        print(f"saltmarsh anomaly score: {args.input}: {failure}", file=err)
        return 2
    except OSError as failure:
        partial.unlink(missing_ok=True)
        where = f"{failure.filename}: " if failure.filename else ""
        print(f"saltmarsh anomaly score: {where}{failure.strerror or failure}", file=err)
        return 2
    print(progress_line(done, total, anomalies, time.monotonic() - started), file=err, flush=True)
    return 0
