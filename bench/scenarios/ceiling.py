"""Ceiling: publishers -> cloud Mosquitto -> counting subscriber, no gateway in between.

This is the most any hop behind it could be measured at on this machine, and the proof that
the load generator and counter are not the bottleneck: they must reach at least twice the
forwarder's target. Delivery is verified: every reading counted once, none missing.
"""

from __future__ import annotations

import math

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.procstat import CpuMeter
from bench.results import BenchReport, environment, figures_from_runs, ratio
from bench.stats import rate_between

NAME = "ceiling"
TITLE = "load generator -> cloud Mosquitto -> counting subscriber (no gateway)"
FORWARDER_TARGET = 20_000.0
PUBLISHERS = 2
WINDOW = 1000

UNITS = {
    "msg/s": "msg/s",
    "end-to-end msg/s": "msg/s",
    "delivered": "readings",
    "lost": "readings",
    "duplicates": "readings",
    "publisher CPU/msg": "us/msg",
    "counter CPU/msg": "us/msg",
    "counter busy": "% of a core",
    "broker CPU/msg": "us/msg",
    "broker busy": "% of a core",
}
NOTES = {
    "msg/s": "delivered, while the count went from 10% to 90%",
    "end-to-end msg/s": "all readings / (last received - first published)",
    "publisher CPU/msg": f"{PUBLISHERS} publisher processes together, window {WINDOW}",
    "counter busy": "counter CPU / its run time: below 100% means it kept up",
    "broker busy": "Mosquitto is single-threaded: near 100% means the broker is the limit",
}


def measure_once(total: int) -> dict[str, float]:
    with Lab(NAME) as lab:
        broker = lab.broker("cloud")
        counter = Counter(CountPlan(broker.port, "bench-counter", expect=total))
        lab.track(counter)
        counter.start()
        assert broker.process is not None
        broker_cpu = CpuMeter.begin(broker.process.pid)
        publishers = Publishers(broker.port, "ceil", total=total, processes=PUBLISHERS, window=WINDOW)
        lab.track(publishers)
        publishers.start()
        counter.wait_for(total, timeout_s=max(60.0, total / 2000), progress_label="ceiling delivered")
        published = publishers.results(60)
        counted = counter.finish()
        broker_s = broker_cpu.elapsed()
    started = min(p.started_s for p in published)
    last = counted.last_s
    run_s = (last - counted.first_s) if not math.isnan(last) else math.nan
    return {
        "msg/s": rate_between(counted.timeline, total),
        "end-to-end msg/s": counted.unique / (last - started) if counted.unique else 0.0,
        "delivered": counted.unique,
        "lost": total - counted.unique,
        "duplicates": counted.duplicates,
        "publisher CPU/msg": 1e6 * sum(p.cpu_s for p in published) / total,
        "counter CPU/msg": 1e6 * counted.cpu_s / max(1, counted.unique),
        "counter busy": 100 * counted.cpu_s / run_s if run_s and run_s > 0 else math.nan,
        "broker CPU/msg": 1e6 * broker_s / max(1, counted.unique),
        "broker busy": 100 * broker_s / run_s if run_s and run_s > 0 else math.nan,
    }


def run(options: BenchOptions) -> BenchReport:
    total = options.size(400_000, 60_000)
    runs = []
    for i in range(options.runs):
        print(f"  ceiling run {i + 1}/{options.runs}: {total:,} readings, {PUBLISHERS} publishers", flush=True)
        runs.append(measure_once(total))
        print(f"    {runs[-1]['msg/s']:,.0f} msg/s, lost {runs[-1]['lost']:.0f}", flush=True)
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_runs(runs, UNITS, NOTES))
    rate = report.figure("msg/s")
    assert rate is not None
    report.ratios.append(
        ratio("ceiling/forwarder target", rate.value, FORWARDER_TARGET, "must be >= 2 for the benches to mean anything")
    )
    costs = [report.figure(name) for name in ("broker CPU/msg", "publisher CPU/msg", "counter CPU/msg")]
    broker_us, *bench_us = [fig.value if fig is not None else math.nan for fig in costs]
    report.ratios.append(
        ratio(
            "broker/(publishers + counter) CPU/msg",
            broker_us,
            sum(bench_us),
            "how much more the broker costs per message than the load generator and counter together",
        )
    )
    report.notes.append(
        f"{total:,} readings of about 321 bytes, QoS 1 in and out; the counter subscribes at QoS 1 and acks each."
    )
    return report
