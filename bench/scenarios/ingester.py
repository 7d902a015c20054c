"""Ingester: cloud Mosquitto -> `python -m cloud_ingester` -> sink, readings per second and CPU per reading.

One publisher streams readings into the cloud broker as fast as it takes them; the ingester's
rate is read from the sink itself (rows stored, sampled every 50 ms) while the count goes from
10% to 90%. Beside it, in the same run, the counting subscriber takes the same stream from a
fresh broker: what the broker can hand any consumer on this machine.

Sinks are benched through `SINK_BENCHES`: one entry per backend, saying how to configure the
ingester's `[sink]` table and how to count what the sink stored.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.procstat import CpuMeter, memory_bytes
from bench.progress import Progress
from bench.results import BenchReport, environment, figures_from_runs, ratio
from bench.services import start_ingester
from bench.stats import rate_between
from saltmarsh.ops.localfleet.configs import sqlite_sink

NAME = "ingester"
TITLE = "cloud ingester into its sinks, vs a bare counting subscriber"
MB = 1e6


@dataclass(frozen=True, slots=True)
class SinkBench:
    """How to bench one sink backend: its `[sink]` config table and a count of stored readings."""

    name: str
    sink_table: Callable[[Lab], dict[str, object]]
    stored: Callable[[Lab], int]


def _sqlite_path(lab: Lab) -> Path:
    return lab.base / "sink" / "saltmarsh.db"


def _sqlite_stored(lab: Lab) -> int:
    path = _sqlite_path(lab)
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT max(rowid) FROM messages").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0)


SINK_BENCHES: dict[str, SinkBench] = {
    "sqlite": SinkBench("sqlite", lambda lab: sqlite_sink(_sqlite_path(lab)), _sqlite_stored),
    # "elasticsearch": osmem-server on a free port (`osmem-server -addr 127.0.0.1:PORT -no-stdin-watch`),
    #     stored = GET /saltmarsh-readings-*/_count after a refresh.
    # "kinesis": moto_server or kinesalite on a free port, stored = records read back from the stream.
    # Each needs only its `[sink]` table here once saltmarsh.config.ingester.SINK_TYPES accepts it.
}


def measure_sink(bench: SinkBench, total: int, cap_s: float) -> dict[str, float]:
    with Lab(f"{NAME}-{bench.name}") as lab:
        (lab.base / "sink").mkdir()
        cloud = lab.broker("cloud")
        ingester = start_ingester(lab, cloud.port, bench.sink_table(lab))
        cpu = CpuMeter.begin(ingester.pid)
        publishers = Publishers(cloud.port, "ing", total=total, processes=1)
        lab.track(publishers)
        publishers.start()
        timeline: list[tuple[float, int]] = []
        meter = Progress(f"{bench.name} stored", total)
        deadline = time.monotonic() + cap_s
        stored = 0
        while stored < total and time.monotonic() < deadline and ingester.alive():
            stored = bench.stored(lab)
            timeline.append((time.time(), stored))
            meter.update(stored)
            time.sleep(0.05)
        cpu_s = cpu.elapsed()
        _, peak = memory_bytes(ingester.pid)
        publishers.stop()
    return {
        "readings/s": rate_between(timeline, stored),
        "CPU/reading": 1e6 * cpu_s / max(1, stored),
        "peak RSS": peak / MB,
        "stored": stored,
    }


def measure_counter(total: int) -> float:
    with Lab(f"{NAME}-counter") as lab:
        cloud = lab.broker("cloud")
        counter = Counter(CountPlan(cloud.port, "bench-counter", expect=total))
        lab.track(counter)
        counter.start()
        publishers = Publishers(cloud.port, "ing", total=total, processes=1)
        lab.track(publishers)
        publishers.start()
        counter.wait_for(total, max(60.0, total / 1000), "counter delivered")
        publishers.stop()
        counted = counter.finish()
    return rate_between(counted.timeline, counted.unique)


UNITS = {"readings/s": "readings/s", "CPU/reading": "us/reading", "peak RSS": "MB", "stored": "readings"}


def run(options: BenchOptions) -> BenchReport:
    total = options.size(300_000, 40_000)
    cap_s = options.seconds(300, 120)
    rows = []
    for i in range(options.runs):
        row: dict[str, float] = {}
        for bench in SINK_BENCHES.values():
            print(f"  ingester run {i + 1}/{options.runs}, sink {bench.name}: {total:,} readings", flush=True)
            got = measure_sink(bench, total, cap_s)
            print(f"    {got['readings/s']:,.0f} readings/s, {got['CPU/reading']:.1f} us/reading", flush=True)
            row.update({f"{bench.name} {k}": v for k, v in got.items()})
        print(f"  ingester run {i + 1}/{options.runs}, peer: counting subscriber", flush=True)
        row["counting subscriber msg/s"] = measure_counter(total)
        rows.append(row)
    units = {f"{s} {k}": u for s in SINK_BENCHES for k, u in UNITS.items()}
    units["counting subscriber msg/s"] = "msg/s"
    notes = {f"{s} readings/s": "rows stored, while the count went from 10% to 90%" for s in SINK_BENCHES} | {
        "counting subscriber msg/s": "same stream, same broker settings, no sink"
    }
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_runs(rows, units, notes))
    peer = report.figure("counting subscriber msg/s")
    for sink in SINK_BENCHES:
        fig = report.figure(f"{sink} readings/s")
        if fig is not None and peer is not None:
            report.ratios.append(
                ratio(
                    f"{sink}/counting subscriber", fig.value, peer.value, "ingester vs a consumer that stores nothing"
                )
            )
    report.notes.append(
        f"{total:,} readings streamed by one publisher (window 1000, QoS 1) into the cloud broker; "
        "ingester defaults (batch 2000, 20 ms); CPU counted from subscribed to the last row stored."
    )
    if any(math.isnan(f.value) for f in report.figures):
        report.notes.append("some runs produced no figure; see the progress lines")
    return report
