"""The lab's sink reader: what it writes inside the cloud node, read back on the host."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from saltmarsh.config.ingester import SinkConfig
from saltmarsh.contract import mint, mint_alert
from saltmarsh.contract.errors import SaltmarshError
from saltmarsh.ops.lab.sink_reader import SinkTotals, read_lines, write_records
from saltmarsh.sinks import SqliteSink, StoredKey
from saltmarsh.sinks.base import Delivery


def _fill(path: Path) -> None:
    sink = SqliteSink(path)
    envelopes = [
        mint(device="probe-1", site="s1", boot="b1", seq=n, ts_ms=1_000 + n, metrics={"t": 1.0}, units={})
        for n in (1, 2, 4)
    ]
    alert = mint_alert(
        device="probe-1",
        site="s1",
        boot="b1",
        seq=3,
        ts_ms=1_003,
        name="threshold_above",
        metrics={"t": 30.0},
        units={},
    )
    sink.write([Delivery(e, received_ms=2_000) for e in [*envelopes, alert]], [])
    sink.close()


def test_the_keys_dead_letters_and_alerts_come_back_as_written(tmp_path: Path) -> None:
    _fill(tmp_path / "sink.db")
    out = io.StringIO()
    write_records(SinkConfig(type="sqlite", path=tmp_path / "sink.db"), out)
    totals = SinkTotals()
    keys = list(read_lines(io.StringIO(out.getvalue()), totals))
    assert keys == [StoredKey("probe-1", "b1", n, 1_000 + n) for n in (1, 2, 3, 4)]
    assert (totals.dead_letters, totals.alerts, totals.complete) == ({}, 1, True)


@pytest.mark.parametrize(
    ("lines", "complete"),
    [
        (["k\ta\tb\t1\t5\n", "d\t{}\n", "a\t0\n"], True),
        (["k\ta\tb\t1\t5\n"], False),  # the reader died before its totals: not complete
    ],
)
def test_a_stream_cut_short_is_not_complete(lines: list[str], complete: bool) -> None:
    totals = SinkTotals()
    assert list(read_lines(lines, totals)) == [StoredKey("a", "b", 1, 5)]
    assert totals.complete is complete


def test_an_unknown_record_is_named() -> None:
    with pytest.raises(SaltmarshError, match="line 1: unknown record 'x'"):
        list(read_lines(["x\t1\n"], SinkTotals()))
