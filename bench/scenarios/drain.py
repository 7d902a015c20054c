"""Backlog drain: readings buffered while the cloud is down, then drained with live traffic on top.

Ours: the cloud broker is stopped, `backlog` readings are published into the gateway broker and
the forwarder spools them all (its status file's `spool_depth`). Then the cloud broker comes
back and a paced publisher sends live readings (devices `live*`) at 1,000/s through the drain.
Measured: time from the cloud's return until the last backlog reading arrives; live readings'
end-to-end latency (receive time - `ts` stamped at send) for those sent during the drain; the
forwarder's RSS before and at the full backlog; disk bytes per buffered reading.

Peer: Mosquitto's bridge in its crash-safe configuration (b), with backlogs growing 1k, 2k, 5k,
... until a step exceeds the time budget, to show how its drain scales with backlog size.
"""

from __future__ import annotations

import math
import time

from bench.counter import Counter, CountPlan, CountResult
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.procstat import CpuMeter, disk_bytes, memory_bytes
from bench.progress import Progress
from bench.results import BenchReport, Figure, environment, figures_from_runs, ratio
from bench.scenarios.topology import BRIDGE_CRASH_SAFE, OURS, start_hop
from bench.services import GATEWAY_ID
from bench.stats import median, percentile

NAME = "drain"
TITLE = "1M-reading backlog drained with live traffic on top, ours vs the crash-safe bridge"
LIVE_RATE = 1000.0
DRAIN_RATE_LIMIT = 50_000.0
MB = 1e6
TARGET_FIGURES = {
    "drain time": "ours drain time",
    "live latency p99": "live latency p99",
    "forwarder RSS at full backlog": "forwarder RSS at 1M buffered",
    "forwarder peak RSS (VmHWM)": "forwarder peak RSS (VmHWM)",
}
BRIDGE_STEPS = (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000)


def _live_latencies(counted: CountResult, from_s: float, to_s: float) -> list[float]:
    lo, hi = from_s * 1000, to_s * 1000
    return [float(latency) for sent_ms, latency in counted.live_latency if lo <= sent_ms <= hi]


def _publish_backlog(lab: Lab, port: int, backlog: int, label: str, timeout_s: float) -> float:
    """Publish `backlog` readings; seconds it took (until every PUBACK), or NaN past the timeout."""
    publishers = Publishers(port, "drain", total=backlog, processes=1)
    lab.track(publishers)
    started = time.monotonic()
    publishers.start()
    meter = Progress(label, backlog)
    while publishers.acked() < backlog:
        if time.monotonic() - started > timeout_s:
            publishers.stop()
            return math.nan
        meter.update(publishers.acked())
        time.sleep(0.05)
    publishers.results(30)
    return time.monotonic() - started


def measure_ours(backlog: int, cap_s: float) -> dict[str, float]:
    with Lab(f"{NAME}-ours") as lab:
        cloud = lab.broker("cloud")
        counter = Counter(CountPlan(cloud.port, "bench-drain-counter", expect=backlog, persistent=True, confirm=True))
        lab.track(counter)
        counter.start()
        hop = start_hop(lab, OURS, cloud.port, drain_rate_limit=DRAIN_RATE_LIMIT)
        assert hop.forwarder is not None
        rss_empty, _ = memory_bytes(hop.pid)
        cloud.stop()
        lab.wait_status("forwarder", GATEWAY_ID, lambda c: not c.get("uplink_connected"), 30, hop.forwarder.alive)
        publish_s = _publish_backlog(lab, hop.gateway.port, backlog, "backlog published", cap_s)
        meter = Progress("backlog spooled", backlog)

        def spooled(counters: object) -> bool:
            assert isinstance(counters, dict)
            depth = int(counters.get("spool_depth", 0))
            meter.update(depth)
            return depth >= backlog

        lab.wait_status("forwarder", GATEWAY_ID, spooled, cap_s, hop.forwarder.alive)
        rss_full, _ = memory_bytes(hop.pid)
        spool_disk = disk_bytes(lab.base / "state" / "forwarder" / "spool")
        cpu = CpuMeter.begin(hop.pid)
        cloud.start()
        returned = time.time()
        live = Publishers(hop.gateway.port, "live", total=0, processes=1, devices=10, rate=LIVE_RATE)
        lab.track(live)
        live.start()
        complete = counter.wait_for(backlog, cap_s, "backlog delivered", stall_s=60)
        drain_cpu = cpu.elapsed()
        live.finish()
        counted = counter.finish()
        _, peak = memory_bytes(hop.pid)
    done = counted.done_s if complete else math.nan
    latencies = _live_latencies(counted, returned, done if complete else time.time())
    return {
        "drain time": done - returned,
        "drain msg/s": backlog / (done - returned),
        "first delivery after return": counted.first_s - returned,
        "live latency p50": percentile(latencies, 50),
        "live latency p99": percentile(latencies, 99),
        "live latency max": max(latencies) if latencies else math.nan,
        "live readings during drain": len(latencies),
        "forwarder RSS empty": rss_empty / MB,
        "forwarder RSS at full backlog": rss_full / MB,
        "forwarder peak RSS (VmHWM)": peak / MB,
        "disk bytes per buffered reading": spool_disk / backlog,
        "drain CPU/msg": 1e6 * drain_cpu / max(1, counted.unique + counted.live_unique),
        "backlog publish time": publish_s,
        "duplicates": counted.duplicates,
        "delivered": counted.unique,
    }


OURS_FIGURES = {
    "drain time": ("s", "cloud back -> last backlog reading at the cloud subscriber"),
    "drain msg/s": ("msg/s", "backlog / drain time"),
    "first delivery after return": ("s", "includes the forwarder's reconnect delay"),
    "live latency p50": ("ms", f"live readings at {LIVE_RATE:.0f}/s sent during the drain, send -> cloud subscriber"),
    "live latency p99": ("ms", ""),
    "live latency max": ("ms", ""),
    "live readings during drain": ("readings", ""),
    "forwarder RSS empty": ("MB", "VmRSS, connected, nothing buffered"),
    "forwarder RSS at full backlog": ("MB", "VmRSS with the whole backlog spooled"),
    "forwarder peak RSS (VmHWM)": ("MB", "over spooling and draining"),
    "disk bytes per buffered reading": ("bytes", "du of the spool dir / backlog"),
    "drain CPU/msg": ("us/msg", "forwarder CPU during the drain / readings delivered"),
    "backlog publish time": ("s", "publishing the backlog into the gateway broker (PUBACKed)"),
    "delivered": ("readings", "distinct backlog readings at the cloud"),
    "duplicates": ("readings", ""),
}


def measure_bridge(backlog: int, budget_s: float) -> dict[str, float]:
    with Lab(f"{NAME}-bridge") as lab:
        cloud = lab.broker("cloud")
        counter = Counter(CountPlan(cloud.port, "bench-drain-counter", expect=backlog, persistent=True, confirm=True))
        lab.track(counter)
        counter.start()
        hop = start_hop(lab, BRIDGE_CRASH_SAFE, cloud.port)
        cloud.stop()
        time.sleep(1.0)  # the bridge notices at once (its socket closes); this is margin
        queue_s = _publish_backlog(lab, hop.gateway.port, backlog, "bridge backlog queued", budget_s)
        if math.isnan(queue_s):
            return {"queue time": math.nan, "drain time": math.nan, "within budget": 0.0}
        cloud.start()
        returned = time.time()
        complete = counter.wait_for(backlog, max(1.0, budget_s - queue_s), "bridge backlog delivered", stall_s=60)
        counted = counter.finish()
    drain_s = counted.done_s - returned if complete else math.nan
    return {
        "queue time": queue_s,
        "drain time": drain_s,
        "first delivery after return": counted.first_s - returned,
        "within budget": 1.0 if complete else 0.0,
        "delivered": counted.unique,
    }


def _bridge_scaling(options: BenchOptions, report: BenchReport) -> tuple[int, float]:
    """Grow the bridge's backlog until a step exceeds the budget; (largest size handled, its drain s)."""
    budget_s = options.seconds(300, 40)
    steps = BRIDGE_STEPS if not options.quick else BRIDGE_STEPS[:3]
    largest, largest_drain = 0, math.nan
    previous: tuple[int, float] | None = None
    for size in steps:
        rows = []
        for i in range(options.runs):
            print(f"  bridge (b) backlog {size:,}, run {i + 1}/{options.runs} (budget {budget_s:.0f} s)", flush=True)
            rows.append(measure_bridge(size, budget_s))
            print(f"    queued in {rows[-1]['queue time']:.1f} s, drained in {rows[-1]['drain time']:.1f} s")
            if not rows[-1]["within budget"]:
                break
        within = all(r["within budget"] for r in rows)
        queue_s = median([r["queue time"] for r in rows]) if within else math.nan
        for key in ("queue time", "drain time", "first delivery after return"):
            values = tuple(r[key] for r in rows if key in r and not math.isnan(r[key]))
            if values:
                report.figures.append(Figure(f"(b) {size:,} {key}", "s", values))
        if not within:
            report.notes.append(
                f"bridge (b) with a {size:,}-reading backlog exceeded the {budget_s:.0f} s budget: stopped"
            )
            break
        largest, largest_drain = size, median([r["drain time"] for r in rows])
        if previous is not None and previous[1] > 0:
            # Queue time, not drain time: the drain is dominated by the bridge's reconnect backoff.
            exponent = math.log(queue_s / previous[1]) / math.log(size / previous[0])
            report.notes.append(
                f"bridge (b) time to queue the backlog grows as backlog^{exponent:.2f} from {previous[0]:,} to {size:,}"
            )
        previous = (size, queue_s)
    return largest, largest_drain


def run(options: BenchOptions) -> BenchReport:
    backlog = options.size(1_000_000, 50_000)
    cap_s = options.seconds(900, 180)
    rows = []
    failures: list[str] = []
    for i in range(options.runs):
        print(f"  drain run {i + 1}/{options.runs}, ours: {backlog:,}-reading backlog", flush=True)
        try:
            got = measure_ours(backlog, cap_s)
        except (RuntimeError, TimeoutError) as err:
            # The bridge's scaling is still worth measuring when ours fails; the report says why.
            print(f"    failed: {err}", flush=True)
            failures.append(f"ours run {i + 1} failed: {err}")
            continue
        rows.append(got)
        print(f"    drained in {got['drain time']:.1f} s, live p99 {got['live latency p99']:.0f} ms", flush=True)
    units = {f"ours {k}": u for k, (u, _) in OURS_FIGURES.items()}
    notes = {f"ours {k}": n for k, (_, n) in OURS_FIGURES.items()}
    prefixed = [{f"ours {k}": v for k, v in r.items()} for r in rows]
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_runs(prefixed, units, notes))
    # The targets are about a 1M backlog: only a full-size run feeds them.
    if backlog == 1_000_000:
        for key, target_name in TARGET_FIGURES.items():
            fig = report.figure(f"ours {key}")
            if fig is not None:
                report.figures.append(Figure(target_name, fig.unit, fig.runs, "for the targets table"))
    largest, largest_drain = _bridge_scaling(options, report)
    ours = report.figure("ours drain msg/s")
    ours_rate = ours.value if ours is not None else math.nan
    bridge_rate = largest / largest_drain if largest and largest_drain > 0 else math.nan
    report.ratios.append(
        ratio(
            "ours/(b) drain msg/s",
            ours_rate,
            bridge_rate,
            f"ours at {backlog:,} with live traffic vs the bridge at its largest backlog within budget ({largest:,})",
        )
    )
    report.notes += failures
    report.notes += [
        f"ours: drain_rate_limit {DRAIN_RATE_LIMIT:,.0f}/s; live readings at {LIVE_RATE:,.0f}/s during the drain.",
        "bridge (b) drains without live traffic: it sustains far less than 1,000 msg/s in this configuration "
        "(see the forwarder bench), so live traffic would only grow its backlog. This favours the bridge.",
        "bridge (b) reconnects after its default restart_timeout; its drain time includes that, as ours includes ours.",
    ]
    return report
