"""The lab at scale: 20 sites of 50 simulated sensors at 1 Hz for 10 minutes, provisioned by real
Salt in network namespaces (`saltmarsh lab`), with one site's uplink cut for 2 minutes.

Reported: the cloud's throughput (the ingester's `written_total` over the window), each kind of
service's CPU and RSS (per process, the mean over the fleet's processes of that kind), the drain
time of the cut site's backlog, and the audit of everything the sensors produced.

No peer runs a whole fleet under Salt side by side on two cores: the ratio is the cloud's
throughput against the rate the sensors offered, which is 1.0 when nothing falls behind.
Opt-in (`python -m bench --only lab_scale`, root): it builds 41 nodes and runs for ~25 minutes.
`SALTMARSH_BENCH_LAB_SCALE=SITESxSENSORS` (e.g. `10x50`) runs another size: 20 x 50 does not fit
this 2-core machine with a thread-per-device swarm (bench/results.py, BOUNDS).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.options import BenchOptions
from bench.procstat import cpu_seconds, memory_bytes
from bench.results import BenchReport, Figure, environment, ratio
from saltmarsh.ops.lab import network
from saltmarsh.ops.lab.chaos import audit, expectations
from saltmarsh.ops.lab.fleet import generated_fleet
from saltmarsh.ops.lab.lab import Lab, down

NAME = "lab_scale"
TITLE = "the lab at scale: 20 sites x 50 sensors at 1 Hz, 10 minutes, one uplink cut for 2 minutes"
MB = 1e6
WARMUP_S = 30.0
SAMPLE_S = 10.0


def _written(lab: Lab) -> int:
    return sum(
        int(s.counters.get("written_total", 0)) for s in lab.statuses(lab.fleet.master.id) if s.service == "ingester"
    )


def _kind(node_id: str, unit: str, is_master: bool) -> str:
    name = unit.removesuffix(".service")
    if name == "mosquitto":
        return "cloud mosquitto" if is_master else "gateway mosquitto"
    return name.removeprefix("saltmarsh-").rstrip("-0123456789") or name


def _processes(lab: Lab) -> dict[int, str]:
    """pid -> kind of service, for every unit running in the lab."""
    out: dict[int, str] = {}
    for node in lab.fleet.nodes:
        for unit in lab.units(node.id):
            pid = lab.unit_pid(node.id, unit)
            if pid is not None:
                out[pid] = _kind(node.id, unit, node.id == lab.fleet.master.id)
    return out


def measure(sites: int, devices: int, window_s: float, cut_at_s: float, cut_for_s: float) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="saltmarsh-bench-lab-"))
    shutil.rmtree(base)
    began = time.monotonic()
    lab = Lab.up(base, generated_fleet(sites, 1), say=print, sensor_interval_s=1.0, swarm=devices)
    figures: dict[str, float] = {"lab up": time.monotonic() - began}
    try:
        time.sleep(WARMUP_S)
        processes = _processes(lab)
        cpu_start = {pid: cpu_seconds(pid) for pid in processes}
        written_start, started = _written(lab), time.monotonic()
        link = network.uplink_of(lab.fleet, lab.prefix, lab.fleet.gateway_of(lab.fleet.sites[0]).id)
        cut = mended = False
        produced_at_mend: dict[str, tuple[str, int]] = {}
        mended_at = 0.0
        while (elapsed := time.monotonic() - started) < window_s:
            if not cut and elapsed >= cut_at_s:
                network.run(network.link_state_commands(link, up=False))
                cut = True
                print(f"    [{elapsed:5.0f} s] uplink of {lab.fleet.sites[0]} cut", flush=True)
            if cut and not mended and elapsed >= cut_at_s + cut_for_s:
                network.run(network.link_state_commands(link, up=True))
                mended, mended_at = True, time.monotonic()
                produced_at_mend = expectations(lab)
                print(f"    [{elapsed:5.0f} s] uplink mended", flush=True)
            print(f"    [{elapsed:5.0f} s] cloud wrote {_written(lab) - written_start} readings", flush=True)
            time.sleep(SAMPLE_S)
        wall = time.monotonic() - started
        figures["cloud throughput"] = (_written(lab) - written_start) / wall
        figures["offered rate"] = float(sites * devices)
        usage: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for pid, kind in processes.items():
            try:
                cpu = 100 * (cpu_seconds(pid) - cpu_start[pid]) / wall
                rss, _ = memory_bytes(pid)
            except OSError:
                continue  # restarted during the window: not measured
            usage[kind].append((cpu, rss / MB))
        for kind, rows in sorted(usage.items()):
            figures[f"{kind} CPU (per process)"] = sum(c for c, _ in rows) / len(rows)
            figures[f"{kind} RSS (per process)"] = sum(r for _, r in rows) / len(rows)
            figures[f"{kind} processes"] = float(len(rows))
        # The cut site's backlog: from the mend until the sink holds what was produced by then.
        report = audit(lab, produced_at_mend)
        while report.lost and time.monotonic() - mended_at < 900:
            time.sleep(2.0)
            report = audit(lab, produced_at_mend)
        figures["drain after the cut"] = time.monotonic() - mended_at if not report.lost else float("nan")
        final = audit(lab)
        deadline = time.monotonic() + 300
        while final.lost and time.monotonic() < deadline:
            time.sleep(2.0)
            final = audit(lab)
        figures["readings audited"] = float(final.readings)
        figures["lost"] = float(final.lost)
        figures["duplicated"] = float(final.duplicated)
    finally:
        down(base)
    return figures


UNITS = {
    "lab up": "s",
    "cloud throughput": "msg/s",
    "offered rate": "msg/s",
    "drain after the cut": "s",
    "readings audited": "readings",
    "lost": "readings",
    "duplicated": "readings",
}


def size_from_env(default: tuple[int, int]) -> tuple[int, int]:
    text = os.environ.get("SALTMARSH_BENCH_LAB_SCALE", "")
    if not text:
        return default
    found = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if found is None or min(int(found[1]), int(found[2])) < 1:
        raise SystemExit(f"SALTMARSH_BENCH_LAB_SCALE={text!r}: expected SITESxSENSORS, e.g. 10x50")
    return int(found[1]), int(found[2])


def run(options: BenchOptions) -> BenchReport:
    if options.quick:
        (sites, devices), window_s, cut_at_s, cut_for_s = size_from_env((3, 10)), 120.0, 30.0, 30.0
    else:
        (sites, devices), window_s, cut_at_s, cut_for_s = size_from_env((20, 50)), 600.0, 240.0, 120.0
    print(f"  lab_scale: {sites} sites x {devices} sensors at 1 Hz, {window_s:.0f} s", flush=True)
    row = measure(sites, devices, window_s, cut_at_s, cut_for_s)
    figures = [
        Figure(name, UNITS.get(name, "%" if "CPU" in name else "MB" if "RSS" in name else ""), (value,))
        for name, value in row.items()
    ]
    title = TITLE.replace("20 sites x 50 sensors", f"{sites} sites x {devices} sensors")
    report = BenchReport(NAME, title, environment(options.quick), figures)
    report.ratios.append(
        ratio(
            "cloud throughput / offered rate",
            row["cloud throughput"],
            row["offered rate"],
            "no peer runs a Salt-provisioned fleet side by side here; 1.0 = the cloud keeps up",
        )
    )
    report.notes.append(
        f"{sites} gateways and {sites} swarm hosts of {devices} devices, each node a network namespace with a"
        f" real minion; {WARMUP_S:.0f} s warm-up; the first site's uplink cut at {cut_at_s:.0f} s for"
        f" {cut_for_s:.0f} s; CPU is utime+stime over the window, of one core, per process."
    )
    return report
