"""Forwarder sustained: gateway Mosquitto -> hop -> cloud Mosquitto -> counting subscriber.

The hop is ours (`python -m gateway`, crash-safe by construction) or Mosquitto's native bridge
in its default configuration (a) or its crash-safe one (b), run one after the other in every
run on fresh brokers. Publishers offer readings as fast as the gateway broker takes them; the
delivered rate is measured at the cloud while the count goes from 10% to 90%. CPU per message
is the hop's own CPU (the forwarder, or for a bridge the gateway broker) over delivered readings;
the gateway broker's CPU is reported beside it for ours, so the whole hop can be compared too.
"""

from __future__ import annotations

import math
import time

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.procstat import CpuMeter, memory_bytes
from bench.results import BenchReport, environment, figures_from_runs, load_reports, ratio
from bench.scenarios.topology import BRIDGE_CRASH_SAFE, BRIDGE_DEFAULT, OURS, SYSTEMS, start_hop
from bench.stats import rate_between

NAME = "forwarder"
TITLE = "sustained forwarding, ours vs Mosquitto's native bridge"
STALL_S = 5.0
MB = 1e6


def measure_once(system: str, total: int, cap_s: float) -> dict[str, float]:
    with Lab(f"{NAME}-{''.join(ch for ch in system if ch.isalnum())}") as lab:
        cloud = lab.broker("cloud")
        counter = Counter(CountPlan(cloud.port, "bench-counter", confirm=True))
        lab.track(counter)
        counter.start()
        hop = start_hop(lab, system, cloud.port)
        hop_cpu = CpuMeter.begin(hop.pid)
        gateway_cpu = CpuMeter.begin(hop.gateway_pid)
        publishers = Publishers(hop.gateway.port, "fwd", total=total, processes=1)
        lab.track(publishers)
        started = time.monotonic()
        publishers.start()
        complete = counter.wait_for(total, cap_s, f"{system} delivered", stall_s=STALL_S)
        elapsed = time.monotonic() - started
        hop_s, gateway_s = hop_cpu.elapsed(), gateway_cpu.elapsed()
        _rss, peak = memory_bytes(hop.pid)
        publishers.stop()
        counted = counter.finish()
    delivered = counted.unique
    return {
        "msg/s": rate_between(counted.timeline, delivered),
        "CPU/msg": 1e6 * hop_s / max(1, delivered),
        "gateway broker CPU/msg": 1e6 * gateway_s / max(1, delivered) if system == OURS else math.nan,
        "peak RSS": peak / MB,
        "delivered": delivered,
        "lost or late": total - delivered,
        "duplicates": counted.duplicates,
        "complete": 1.0 if complete else 0.0,
        "elapsed": elapsed,
    }


FIGURES = {
    "msg/s": ("msg/s", "delivered to the cloud subscriber, while the count went from 10% to 90% of what arrived"),
    "CPU/msg": ("us/msg", "forwarder process CPU; for a bridge the gateway broker's"),
    "gateway broker CPU/msg": ("us/msg", "ours only: the gateway broker feeding the forwarder"),
    "peak RSS": ("MB", "VmHWM of the process above"),
    "delivered": ("readings", "distinct readings counted at the cloud"),
    "lost or late": ("readings", "offered minus delivered when the run ended (dropped, or still queued at the cap)"),
    "duplicates": ("readings", ""),
    "elapsed": ("s", "first publish to last delivery, or to the time cap"),
}
SHORT = {OURS: "ours", BRIDGE_DEFAULT: "(a)", BRIDGE_CRASH_SAFE: "(b)"}


def run(options: BenchOptions) -> BenchReport:
    total = options.size(300_000, 40_000)
    cap_s = options.seconds(90, 20)
    runs: list[dict[str, float]] = []
    for i in range(options.runs):
        row: dict[str, float] = {}
        for system in SYSTEMS:
            print(f"  forwarder run {i + 1}/{options.runs}, {system}: {total:,} readings offered", flush=True)
            got = measure_once(system, total, cap_s)
            print(f"    {got['msg/s']:,.0f} msg/s, {got['CPU/msg']:.1f} us/msg, delivered {got['delivered']:,.0f}")
            row.update({f"{SHORT[system]} {name}": value for name, value in got.items()})
        runs.append(row)
    units = {f"{SHORT[s]} {name}": unit for s in SYSTEMS for name, (unit, _) in FIGURES.items()}
    notes = {f"{SHORT[s]} {name}": note for s in SYSTEMS for name, (_, note) in FIGURES.items()}
    figures = [f for f in figures_from_runs(runs, units, notes) if f.runs]
    report = BenchReport(NAME, TITLE, environment(options.quick), figures)

    ceiling = load_reports().get("ceiling")
    ceiling_fig = ceiling.figure("msg/s") if ceiling else None
    report.ratios += [
        ratio(
            "ours/(a) msg/s", report.value("ours msg/s"), report.value("(a) msg/s"), "throughput vs the default bridge"
        ),
        ratio(
            "ours/(b) msg/s",
            report.value("ours msg/s"),
            report.value("(b) msg/s"),
            "throughput vs the crash-safe bridge",
        ),
        ratio(
            "(b)/ours CPU/msg",
            report.value("(b) CPU/msg"),
            report.value("ours CPU/msg"),
            "CPU per message, crash-safe bridge / ours",
        ),
        ratio(
            "ours/ceiling msg/s",
            report.value("ours msg/s"),
            ceiling_fig.value if ceiling_fig else math.nan,
            "vs the ceiling bench (run before this one in `python -m bench`)",
        ),
    ]
    report.notes += [
        f"{total:,} readings offered by one publisher process (window 1000, QoS 1) per system per run; "
        f"a run ends when all arrive, when nothing new arrives for {STALL_S:.0f} s, or at {cap_s:.0f} s.",
        "(a) drops what exceeds its 1000-message queue; (b) rewrites its whole database on every change.",
        "Wall-clock rates share this 2-core machine with the brokers, publisher and counter (and anyone else "
        "using it); CPU per message is the process's own utime+stime and does not depend on that.",
    ]
    return report
