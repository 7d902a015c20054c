"""Replay driver: CSV parsing as a pure function with errors naming line and column, and pacing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saltmarsh.config.sensor import DriverConfig
from saltmarsh.contract.errors import ReplayError
from sensor.drivers import DriverError, ReplayDriver, Sample, open_driver, parse_replay
from sensor.drivers.replay import pacing_delays

H = "timestamp,temperature\n"
T21 = {"temperature": 21.0}

# name, CSV text, expected rows as (epoch seconds, metrics)
GOOD_TABLE: list[tuple[str, str, list[tuple[float, dict[str, float]]]]] = [
    (
        "epoch seconds",
        "timestamp,temperature,humidity\n1700000000,21,40\n1700000001,22,41\n",
        [(1700000000.0, {"temperature": 21, "humidity": 40}), (1700000001.0, {"temperature": 22, "humidity": 41})],
    ),
    ("fractional seconds", H + "1700000000.25,21\n", [(1700000000.25, T21)]),
    ("epoch milliseconds", H + "1700000000500,21\n", [(1700000000.5, T21)]),
    ("ISO 8601 with Z", H + "2024-01-01T00:00:00Z,21\n", [(1704067200.0, T21)]),
    ("ISO 8601 naive is UTC", H + "2024-01-01 00:00:00,21\n", [(1704067200.0, T21)]),
    ("ISO 8601 with offset", H + "2024-01-01T01:00:00+01:00,21\n", [(1704067200.0, T21)]),
    ("timestamp need not be first", "temperature,timestamp\n21,5\n", [(5.0, T21)]),
    ("empty cell: metric absent", "timestamp,temperature,humidity\n1,,40\n", [(1.0, {"humidity": 40.0})]),
    ("row of empty cells: a dropout", H + "1,\n", [(1.0, {})]),
    ("blank lines and spaces", " timestamp , temperature \n\n1, 21 \n\n", [(1.0, T21)]),
    ("CRLF and negative values", "timestamp,temperature\r\n1,-4.5\r\n", [(1.0, {"temperature": -4.5})]),
    ("byte-order mark", "\ufefftimestamp,temperature\n1,21\n", [(1.0, T21)]),
    ("field at the limit", H + "1," + "0" * 1023 + "5\n", [(1.0, {"temperature": 5.0})]),
]


@pytest.mark.parametrize(("text", "expected"), [row[1:] for row in GOOD_TABLE], ids=[row[0] for row in GOOD_TABLE])
def test_parse_good(text: str, expected: list[tuple[float, dict[str, float]]]) -> None:
    assert [(row.ts_s, row.metrics) for row in parse_replay(text)] == expected


# name, CSV text, line, column, words in the message
BAD_TABLE: list[tuple[str, str, int, str | None, str]] = [
    ("empty file", "", 1, None, "empty file"),
    ("no timestamp column", "time,temperature\n1,21\n", 1, None, "no 'timestamp' column"),
    ("header only", "timestamp,temperature\n", 1, None, "no data rows"),
    ("bad metric name", "timestamp,temp C\n1,2\n", 1, "temp C", "metric names"),
    ("duplicate column", "timestamp,t,t\n1,2,3\n", 1, "t", "twice"),
    ("not a number", "timestamp,temperature\n1,21\n2,warm\n", 3, "temperature", "warm"),
    ("not finite", "timestamp,temperature\n1,nan\n", 2, "temperature", "not finite"),
    ("infinite time", "timestamp,temperature\ninf,1\n", 2, "timestamp", "not a finite time"),
    ("bad timestamp", "timestamp,temperature\nyesterday,21\n", 2, "timestamp", "ISO 8601"),
    ("too many fields", "timestamp,temperature\n1,21,5\n", 2, None, "expected 2 fields, got 3"),
    ("too few fields", "timestamp,temperature,humidity\n1,21\n", 2, None, "expected 3 fields, got 2"),
    ("line counts blank lines", "timestamp,temperature\n\n1,21\n\n2,x\n", 5, "temperature", "x"),
    ("field over the limit", H + "1,21\n2," + "0" * 1025 + "\n", 3, None, "a field is longer than 1024 characters"),
    ("field over csv's limit", H + "1," + "0" * 131_073 + "\n", 2, None, "a field is longer than 1024 characters"),
    ("header field over the limit", "timestamp," + "t" * 2000 + "\n1,2\n", 1, None, "longer than 1024"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "words"), [row[1:] for row in BAD_TABLE], ids=[row[0] for row in BAD_TABLE]
)
def test_parse_bad(text: str, line: int, column: str | None, words: str) -> None:
    with pytest.raises(ReplayError) as err:
        parse_replay(text, "rooms.csv")
    assert (err.value.line, err.value.column) == (line, column)
    assert words in str(err.value)
    assert str(err.value).startswith(f"rooms.csv: line {line}")


def rows(*times: float) -> str:
    return "timestamp,temperature\n" + "".join(f"{t},{20 + i}\n" for i, t in enumerate(times))


@pytest.mark.parametrize(
    ("times", "speed", "delays"),
    [
        ((0, 1, 3, 3), 1.0, [1.0, 2.0, 0.0]),
        ((0, 1, 3, 3), 2.0, [0.5, 1.0, 0.0]),
        ((100, 160), 60.0, [1.0]),
        ((5,), 1.0, []),
    ],
)
def test_pacing_by_the_files_own_timestamps(times: tuple[float, ...], speed: float, delays: list[float]) -> None:
    assert pacing_delays(parse_replay(rows(*times)), speed) == delays


def test_pacing_refuses_time_going_backwards() -> None:
    with pytest.raises(ReplayError) as err:
        pacing_delays(parse_replay(rows(0, 10, 5)), 1.0, "f.csv")
    assert (err.value.line, err.value.column) == (4, "timestamp")


def test_timestamps_mode_reads_each_row_then_is_exhausted() -> None:
    driver = ReplayDriver(parse_replay(rows(0, 2, 3)), mode="timestamps", speed=2.0)
    got = []
    while not driver.exhausted:
        got.append((driver.read(0.0), driver.next_delay_s(0.25)))
    assert got == [
        (Sample({"temperature": 20.0}, {"temperature": "°C"}), 1.0),
        (Sample({"temperature": 21.0}, {"temperature": "°C"}), 0.5),
        (Sample({"temperature": 22.0}, {"temperature": "°C"}), 0.25),
    ]
    assert driver.read(0.0) is None


def test_constant_mode_uses_the_agents_interval_and_ignores_order() -> None:
    driver = ReplayDriver(parse_replay(rows(10, 0)), mode="constant")
    assert driver.read(0.0) is not None
    assert driver.next_delay_s(0.25) == 0.25


def test_a_row_without_values_is_a_dropout() -> None:
    driver = ReplayDriver(parse_replay("timestamp,temperature\n1,\n2,5\n"))
    assert driver.read(0.0) is None
    assert driver.read(0.0) == Sample({"temperature": 5.0}, {"temperature": "°C"})


def test_open_driver_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "room.csv"
    path.write_text(rows(0, 1))
    driver = open_driver(DriverConfig(type="replay", replay_file=path, replay_mode="timestamps", replay_speed=4.0))
    try:
        assert driver.read(0.0) == Sample({"temperature": 20.0}, {"temperature": "°C"})
        assert driver.next_delay_s(1.0) == 0.25
        assert driver.read(0.0) == Sample({"temperature": 21.0}, {"temperature": "°C"})
        assert driver.exhausted
    finally:
        driver.close()


def test_open_driver_checks_the_whole_file_before_replaying(tmp_path: Path) -> None:
    path = tmp_path / "room.csv"
    path.write_text(rows(0, 1, 2) + "1,99\n")  # a clock step back on the last line
    with pytest.raises(ReplayError, match=rf"{path}: line 5, column 'timestamp': goes back 1 s"):
        open_driver(DriverConfig(type="replay", replay_file=path, replay_mode="timestamps"))
    constant = open_driver(DriverConfig(type="replay", replay_file=path, replay_mode="constant"))
    assert constant.read(0.0) is not None  # order does not matter when the agent sets the pace
    constant.close()


def test_open_driver_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(DriverError, match=str(missing)):
        open_driver(DriverConfig(type="replay", replay_file=missing))


def test_open_driver_names_the_bad_line_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "room.csv"
    path.write_text("timestamp,temperature\n1,21\n2,oops\n")
    with pytest.raises(ReplayError, match=rf"{path}: line 3, column 'temperature'"):
        open_driver(DriverConfig(type="replay", replay_file=path))


def test_a_file_with_a_byte_order_mark_replays(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + rows(0, 1).encode())
    driver = open_driver(DriverConfig(type="replay", replay_file=path))
    try:
        assert driver.read(0.0) == Sample({"temperature": 20.0}, {"temperature": "°C"})
    finally:
        driver.close()


def test_an_oversized_field_stops_the_sensor_at_start_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text(rows(0, 1) + "2," + "1" * 200_000 + "\n")
    config = tmp_path / "sensor.toml"
    config.write_text(
        f'device = "d1"\nsite = "s1"\nstate_dir = "{tmp_path}/state"\nstatus_dir = "{tmp_path}/status"\n'
        f'[driver]\ntype = "replay"\nreplay_file = "{path}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "sensor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{path}: line 4: a field is longer than 1024 characters" in done.stderr
    assert "Traceback" not in done.stderr
