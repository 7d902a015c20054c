"""Sensor agent at 1 Hz: `python -m sensor` (simulated driver) RSS and CPU over a window.

Side by side, in the same window on the same broker: the simplest paho-mqtt publisher at 1 Hz
(`bench.paho_sensor`), the brief's Pi + DHT11 peer, which keeps nothing on disk.
"""

from __future__ import annotations

import time

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.options import BenchOptions
from bench.procstat import CpuMeter, memory_bytes
from bench.results import BenchReport, environment, figures_from_runs, ratio
from bench.services import start_sensor
from saltmarsh.ops.localfleet.processes import ServiceProcess

NAME = "sensor"
TITLE = "sensor agent at 1 Hz, vs a bare paho-mqtt publisher"
DEVICE = "bench-s001"
WARMUP_S = 3.0
MB = 1e6


def measure_once(window_s: float) -> dict[str, float]:
    with Lab(NAME) as lab:
        gateway = lab.broker("gateway")
        # The forwarder's stand-in: without a subscriber the broker answers "no matching
        # subscribers" and the agent, rightly, sends again; it confirms what it counts, as the
        # forwarder does once its spool has it, so the agent deletes its readings as at a site.
        counter = Counter(CountPlan(gateway.port, "bench-counter", confirm=True))
        lab.track(counter)
        counter.start()
        sensor = start_sensor(lab, gateway.port, DEVICE, interval_s=1.0)
        peer = ServiceProcess.python_module(
            "paho-sensor", "bench.paho_sensor", [str(gateway.port), "bench-p001"], lab.logs / "paho-sensor.log"
        )
        lab.track(peer)
        peer.start()
        time.sleep(WARMUP_S)
        ours_cpu, peer_cpu = CpuMeter.begin(sensor.pid), CpuMeter.begin(peer.pid)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < window_s:
            time.sleep(min(10.0, window_s - elapsed))
            print(f"    sensor window: {time.monotonic() - started:.0f}/{window_s:.0f} s", flush=True)
        wall = time.monotonic() - started
        ours_s, peer_s = ours_cpu.elapsed(), peer_cpu.elapsed()
        ours_rss, ours_peak = memory_bytes(sensor.pid)
        peer_rss, peer_peak = memory_bytes(peer.pid)
        status = lab.status("sensor", DEVICE)
        acked = float(status.counters.get("acked_total", 0)) if status else 0.0
        counter.finish()
    return {
        "ours CPU": 100 * ours_s / wall,
        "ours RSS": ours_rss / MB,
        "ours peak RSS (VmHWM)": ours_peak / MB,
        "ours readings acked": acked,
        "peer CPU": 100 * peer_s / wall,
        "peer RSS": peer_rss / MB,
        "peer peak RSS (VmHWM)": peer_peak / MB,
    }


UNITS = {
    "ours CPU": "%",
    "ours RSS": "MB",
    "ours peak RSS (VmHWM)": "MB",
    "ours readings acked": "readings",
    "peer CPU": "%",
    "peer RSS": "MB",
    "peer peak RSS (VmHWM)": "MB",
}
NOTES = {"ours CPU": "utime+stime / wall over the window, of one core", "peer CPU": "bare paho-mqtt loop, no spool"}


def run(options: BenchOptions) -> BenchReport:
    window_s = options.seconds(60, 10)
    rows = []
    for i in range(options.runs):
        print(f"  sensor run {i + 1}/{options.runs}: {window_s:.0f} s at 1 Hz", flush=True)
        rows.append(measure_once(window_s))
        print(f"    ours {rows[-1]['ours CPU']:.2f}% CPU, {rows[-1]['ours peak RSS (VmHWM)']:.1f} MB", flush=True)
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_runs(rows, UNITS, NOTES))

    def value(name: str) -> float:
        fig = report.figure(name)
        assert fig is not None
        return fig.value

    report.ratios += [
        ratio(
            "ours/peer CPU", value("ours CPU"), value("peer CPU"), "the price of the spool, status file and presence"
        ),
        ratio("ours/peer peak RSS", value("ours peak RSS (VmHWM)"), value("peer peak RSS (VmHWM)"), ""),
    ]
    report.notes.append(
        f"{window_s:.0f} s window after {WARMUP_S:.0f} s of warm-up; simulated driver; both publish to the same broker."
    )
    return report
