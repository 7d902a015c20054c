"""The benches' pure parts: statistics, reading templates, /proc parsing and RESULTS.md rendering."""

from __future__ import annotations

import math

import pytest

from bench.procstat import parse_stat_cpu_ticks, parse_status_kib
from bench.reading import TARGET_BYTES, ReadingTemplate, device_of, parse_seq_ts
from bench.results import BenchReport, Environment, Figure, cpu_model, render_markdown, render_report
from bench.stats import median, percentile, rate_between
from bench.targets import TARGETS, render_targets, verdicts
from saltmarsh.envelope import parse

ENV = Environment(2, "AMD EPYC", "3.11.7", "2.0.11", "2.2.0", "5.6.3", "3.40.1", "2026-01-01 00:00 UTC", "quick")

# A real line, with a command name holding a space and a parenthesis.
STAT_LINE = (
    "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 2211 0 0 0 157 43 0 0 20 0 3 0 123456 "
    "300000000 9000 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0 0 0 0"
)
STATUS_TEXT = "Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n"


@pytest.mark.parametrize(
    ("values", "expected"),
    [([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0, 2.0, 3.0], 2.5), ([7.0], 7.0)],
)
def test_median(values: list[float], expected: float) -> None:
    assert median(values) == expected


def test_median_and_percentile_of_nothing_are_nan() -> None:
    assert math.isnan(median([]))
    assert math.isnan(percentile([], 99))


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0


def test_rate_between_uses_the_middle_of_the_run() -> None:
    # 1000/s from t=10, after a slow start.
    timeline = [(0.0, 0), (10.0, 0), *[(10.0 + s, 1000 * s) for s in range(1, 11)]]
    assert rate_between(timeline, 10_000) == pytest.approx(1000.0)


def test_procstat_parses_cpu_ticks_and_memory() -> None:
    assert parse_stat_cpu_ticks(STAT_LINE) == 157 + 43
    assert parse_status_kib(STATUS_TEXT, "VmHWM") == 51200
    assert parse_status_kib(STATUS_TEXT, "VmRSS") == 40960
    assert parse_status_kib(STATUS_TEXT, "VmSwap") == 0


def test_reading_is_a_valid_envelope_of_the_briefs_size() -> None:
    template = ReadingTemplate.for_device("fwd0-d0007", "6650a1b2-0011aabb")
    payload = template.payload(123_456_789, 1_700_000_000_123)
    envelope = parse(template.topic.decode(), payload, now_ms=1_700_000_000_200)
    assert (envelope.device, envelope.seq, envelope.ts_ms) == ("fwd0-d0007", 123_456_789, 1_700_000_000_123)
    assert abs(len(payload) - TARGET_BYTES) <= 16
    assert parse_seq_ts(payload) == (123_456_789, 1_700_000_000_123)
    assert device_of(template.topic.decode()) == "fwd0-d0007"


def test_cpu_model_from_cpuinfo() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("") == "unknown"


def test_results_render_medians_runs_environment_and_targets() -> None:
    report = BenchReport(
        "forwarder",
        "sustained",
        ENV,
        figures=[Figure("ours msg/s", "msg/s", (21_000.0, 25_000.0, 22_000.0))],
        ratios=[Figure("ours/(a) msg/s", "x", (1.5,))],
        notes=["a note"],
    )
    text = render_report(report)
    assert "| ours msg/s | 22,000 | msg/s | 21,000, 25,000, 22,000 |" in text
    assert "| ours/(a) msg/s | 1.50x |" in text
    assert "2 cores, AMD EPYC" in text and "mosquitto 2.0.11" in text and "quick" in text
    reports = {"forwarder": report}
    items = verdicts(reports)
    assert len(items) == len(TARGETS)
    by_figure = {(v.target.bench, v.target.figure): v.status for v in items}
    assert by_figure[("forwarder", "ours msg/s")] == "pass"
    assert by_figure[("forwarder", "ours/(a) msg/s")] == "pass"
    assert by_figure[("drain", "ours drain time")] == "not measured"
    markdown = render_markdown(reports, render_targets(items), ["ceiling", "forwarder"])
    assert markdown.index("## Targets") < markdown.index("## forwarder")


def test_report_survives_a_json_round_trip() -> None:
    report = BenchReport("sensor", "1 Hz", ENV, [Figure("ours CPU", "%", (0.3,), "note")])
    assert BenchReport.from_json(report.to_json()) == report
