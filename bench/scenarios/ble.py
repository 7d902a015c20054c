"""The BLE collector: CPU per advertisement and RSS at 200 devices every 2 s, vs a bare bleak loop.

A simulated site's air (`gateway.ble.recording`: BTHome plain and encrypted and RuuviTags, each
measurement sent twice, one adapter) is written once as a replay file and played in real time,
from the same wall time, by two processes side by side:

- ours: `python -m gateway.ble` (replay backend) -> the site Mosquitto -> the counting
  subscriber, which confirms each reading on its device's `ack` topic as the forwarder would,
  so the collector's spool empties as at a site;
- peer: `bench.ble_peer`, the same replay on one asyncio loop whose callback only counts: a
  bleak detection callback that counts, and the replay's cost, which ours pays too.

After a warm-up, each process's CPU (utime+stime) over a window is divided by the advertisements
the recording aired in it; RSS is read at the window's end. Then the replay plays out and the
totals are checked: every advertisement heard by both, one reading per measurement (so about
half a reading per advertisement), every reading confirmed and the spool back to empty.

At 200 devices every 2 s (the issue's figure, 200 advertisements a second) and at 20 devices
every 5 s (8 a second), a site's usual rate, where fixed costs per wake-up decide.
"""

from __future__ import annotations

import bisect
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.options import BenchOptions
from bench.procstat import CLOCK_TICKS, CpuMeter, memory_bytes
from bench.results import BenchReport, Figure, environment, figures_from_table, ratio
from bench.services import BLE_COLLECTOR_ID, start_ble_collector
from gateway.ble.advertisement import Advertisement
from gateway.ble.recording import sim_devices, site_recording
from gateway.ble.replay import dump
from saltmarsh.ops.localfleet.processes import ServiceProcess

NAME = "ble"
TITLE = "BLE collector at 200 devices every 2 s, vs a bare bleak-callback loop that only counts"
REPEATS = 2  # each measurement sent twice, as BTHome and Ruuvi firmware do
ADAPTERS = ("hci0",)
LEAD_S = 6.0  # the replay starts this long after the processes are launched: both load it first
WARMUP_S = 5.0
TAIL_S = 3.0  # recorded after the window, so that the window's end is not the recording's
# Stale detection is not under test: a device unheard for 3 x 60 s raises an event that the
# counter (readings only) would never confirm; none goes that quiet here.
EXPECTED_INTERVAL_S = 60.0
# The counter confirms as the forwarder does, each device's readings once every 5 s (its default
# `confirm_interval_ms`), not one confirmation per reading, which no site sends.
CONFIRM_INTERVAL_S = 5.0
SAMPLE_S = 1.0
PRINT_EVERY_S = 10.0
PLAYED_OUT_TIMEOUT_S = 30.0
SNAPSHOT_S = 1.5
MB = 1e6


@dataclass(frozen=True, slots=True)
class Rate:
    devices: int
    interval_s: float

    @property
    def label(self) -> str:
        """A figure's rate suffix: 'at 200 devices / 2 s'."""
        return f"at {self.devices} devices / {self.interval_s:g} s"

    @property
    def advertisements_per_s(self) -> float:
        return self.devices * REPEATS * len(ADAPTERS) / self.interval_s


ISSUE_RATE = Rate(200, 2.0)
SITE_RATE = Rate(20, 5.0)
RATES = (ISSUE_RATE, SITE_RATE)


@dataclass(frozen=True, slots=True)
class Air:
    """A recording as played: each advertisement's offset from the first, and the measurements in it."""

    offsets_s: tuple[float, ...]  # sorted
    measurements: int

    @classmethod
    def of(cls, records: Sequence[Advertisement], measurements: int) -> Air:
        first = records[0].time_s if records else 0.0
        return cls(tuple(r.time_s - first for r in records), measurements)

    @property
    def advertisements(self) -> int:
        return len(self.offsets_s)

    def aired_between(self, start_s: float, t0: float, t1: float) -> int:
        """Advertisements on the air in wall times [t0, t1) of a replay started at `start_s`."""
        return bisect.bisect_left(self.offsets_s, t1 - start_s) - bisect.bisect_left(self.offsets_s, t0 - start_s)


def write_air(path: Path, rate: Rate, duration_s: float) -> Air:
    devices = sim_devices(rate.devices, interval_s=rate.interval_s)
    records, taken = site_recording(devices, duration_s, adapters=ADAPTERS, repeats=REPEATS)
    path.write_text("".join(dump(a) + "\n" for a in records))
    return Air.of(records, sum(len(m) for m in taken.values()))


@dataclass(frozen=True, slots=True)
class Window:
    """What each side used over the window, and what the collector's status said at its two ends."""

    advertisements: int
    wall_s: float
    ours_cpu_s: float
    peer_cpu_s: float
    readings: int  # the collector's readings_total over the window

    def cpu_us(self, cpu_s: float) -> float:
        return 1e6 * cpu_s / max(1, self.advertisements)

    def percent(self, cpu_s: float) -> float:
        return 100 * cpu_s / self.wall_s

    @property
    def readings_per_advertisement(self) -> float:
        return self.readings / max(1, self.advertisements)


# What the parser libraries the collector must use cost in memory before it does anything: a
# Python that imports bthome-ble (which loads habluetooth, bleak, dbus-fast and cryptography)
# and ruuvitag-ble, and nothing of ours. No collector built on them can hold less.
LIBRARY_FLOOR_CODE = (
    "import os, bthome_ble, ruuvitag_ble\nfrom bench.procstat import memory_bytes\nprint(memory_bytes(os.getpid())[0])"
)


def library_floor_bytes() -> int:
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_FLOOR_CODE], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout.strip())


def peer_result(log: Path) -> dict[str, Any]:
    """The peer's last output line, a JSON object; {} if it never printed one."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    for line in reversed(lines):
        if line.startswith("{"):
            doc = json.loads(line)
            return doc if isinstance(doc, dict) else {}
    return {}


def counters_of(lab: Lab) -> Mapping[str, Any]:
    status = lab.status("ble", BLE_COLLECTOR_ID)
    return status.counters if status is not None else {}


def sleep_until(wall_s: float) -> None:
    while (left := wall_s - time.time()) > 0:
        time.sleep(min(left, 0.5))


def measure_once(rate: Rate, window_s: float) -> dict[str, float]:
    label = rate.label
    with Lab(NAME) as lab:
        broker = lab.broker("gateway")
        counter = lab.track(
            Counter(CountPlan(broker.port, "bench-counter", confirm=True, confirm_interval_s=CONFIRM_INTERVAL_S))
        )
        counter.start()
        recording = lab.base / "air.jsonl"
        air = write_air(recording, rate, WARMUP_S + window_s + TAIL_S)
        devices = sim_devices(rate.devices, interval_s=rate.interval_s)
        start_s = time.time() + LEAD_S
        peer_log = lab.logs / "ble-peer.log"
        peer = lab.track(
            ServiceProcess.python_module("ble-peer", "bench.ble_peer", [str(recording), repr(start_s)], peer_log)
        )
        peer.start()
        collector = start_ble_collector(
            lab, broker.port, devices, recording, start_s=start_s, expected_interval_s=EXPECTED_INTERVAL_S
        )
        sleep_until(start_s + WARMUP_S)
        if not (collector.alive() and peer.alive()):
            raise RuntimeError(f"ble: the collector or the peer exited before the window; see {lab.logs}")

        readings_before = int(counters_of(lab).get("readings_total", 0))
        ours_cpu, peer_cpu = CpuMeter.begin(collector.pid), CpuMeter.begin(peer.pid)
        t0 = time.time()
        depth_max, next_print = 0, t0 + PRINT_EVERY_S
        while (elapsed := time.time() - t0) < window_s:
            time.sleep(min(SAMPLE_S, window_s - elapsed))
            depth_max = max(depth_max, int(counters_of(lab).get("spool_depth", 0)))
            if time.time() >= next_print:
                next_print += PRINT_EVERY_S
                print(f"    ble window {label}: {time.time() - t0:.0f}/{window_s:.0f} s", flush=True)
        ours_s, peer_s = ours_cpu.elapsed(), peer_cpu.elapsed()
        t1 = time.time()
        ours_rss, ours_peak = memory_bytes(collector.pid)
        peer_rss, _ = memory_bytes(peer.pid)
        end = counters_of(lab)
        window = Window(
            air.aired_between(start_s, t0, t1),
            t1 - t0,
            ours_s,
            peer_s,
            int(end.get("readings_total", 0)) - readings_before,
        )

        def played_out() -> bool:
            c = counters_of(lab)
            return c.get("scan_state") == "finished" and c.get("spool_depth") == 0 and c.get("unconfirmed") == 0

        sleep_until(start_s + air.offsets_s[-1])
        lab.wait_status("ble", BLE_COLLECTOR_ID, lambda c: played_out(), PLAYED_OUT_TIMEOUT_S, collector.alive)
        # The counters in a collector's status come from a snapshot taken once a second: one more.
        time.sleep(SNAPSHOT_S)
        peer.wait(PLAYED_OUT_TIMEOUT_S)
        final = counters_of(lab)
        confirmed = counter.finish().unique
        peer_said = peer_result(peer_log)

    heard = int(final.get("intake", {}).get("heard", 0))
    readings = int(final.get("readings_total", 0))
    recording_mb = float(peer_said.get("recording_rss_bytes", math.nan)) / MB
    return {
        f"advertisements/s {label}": window.advertisements / window.wall_s,
        f"ours CPU/advertisement {label}": window.cpu_us(window.ours_cpu_s),
        f"peer CPU/advertisement {label}": window.cpu_us(window.peer_cpu_s),
        f"ours CPU {label}": window.percent(window.ours_cpu_s),
        f"peer CPU {label}": window.percent(window.peer_cpu_s),
        f"ours RSS {label}": ours_rss / MB,
        f"ours peak RSS (VmHWM) {label}": ours_peak / MB,
        f"peer RSS {label}": peer_rss / MB,
        f"recording in memory {label}": recording_mb,
        f"ours RSS less the recording {label}": ours_rss / MB - recording_mb,
        f"parser libraries imported alone {label}": library_floor_bytes() / MB,
        f"ours readings/advertisement {label}": window.readings_per_advertisement,
        f"ours spool depth max {label}": depth_max,
        f"ours spool depth at end {label}": int(end.get("spool_depth", 0)),
        f"ours advertisements not heard {label}": air.advertisements - heard,
        f"peer advertisements not counted {label}": air.advertisements - int(peer_said.get("counted", 0)),
        f"ours readings short {label}": air.measurements - readings,
        f"ours readings not confirmed {label}": readings - confirmed,
    }


RATE_FIGURES = {
    "advertisements/s": ("adv/s", "aired by the recording over the window; both sides hear each one"),
    "ours CPU/advertisement": ("us/adv", "`python -m gateway.ble`, utime+stime over the window / advertisements"),
    "peer CPU/advertisement": ("us/adv", "the replay and a callback that counts"),
    "ours CPU": ("%", "of one core"),
    "peer CPU": ("%", "of one core"),
    "ours RSS": ("MB", "VmRSS at the window's end, the loaded recording included"),
    "ours peak RSS (VmHWM)": ("MB", ""),
    "peer RSS": ("MB", "bleak loaded, the recording included"),
    "recording in memory": ("MB", "the peer's RSS growth loading the recording; ours holds the same"),
    "ours RSS less the recording": ("MB", "what a collector on a radio would hold, about"),
    "parser libraries imported alone": (
        "MB",
        "VmRSS of a Python that imports bthome-ble and ruuvitag-ble only: the floor under any collector using them",
    ),
    "ours readings/advertisement": ("readings", "readings_total over the window / advertisements: ~0.5, 2 copies each"),
    "ours spool depth max": ("messages", "sampled once a second over the window"),
    "ours spool depth at end": ("messages", "at the window's end"),
    "ours advertisements not heard": ("adv", "the recording's minus intake.heard once played out"),
    "peer advertisements not counted": ("adv", "the recording's minus the peer's count"),
    "ours readings short": ("readings", "measurements in the recording minus readings_total: one reading each"),
    "ours readings not confirmed": ("readings", "readings_total minus those the counter confirmed"),
}


def figure_table() -> dict[str, tuple[str, str]]:
    """(unit, note) of every figure, in report order."""
    return {f"{name} {rate.label}": spec for rate in RATES for name, spec in RATE_FIGURES.items()}


def ble_ratios(value: Callable[[str], float]) -> list[Figure]:
    """Ours over the peer at each rate; `value` gives a figure's median."""
    out = []
    for rate in RATES:
        out += [
            ratio(
                f"ours/peer CPU/advertisement {rate.label}",
                value(f"ours CPU/advertisement {rate.label}"),
                value(f"peer CPU/advertisement {rate.label}"),
                "the price of decoding, dedup, health, minting, the spool and its sender",
            ),
            ratio(
                f"ours/peer RSS {rate.label}",
                value(f"ours RSS {rate.label}"),
                value(f"peer RSS {rate.label}"),
                "both hold the recording",
            ),
        ]
    return out


def summary(row: Mapping[str, float], rate: Rate) -> str:
    def get(name: str) -> float:
        return row[f"{name} {rate.label}"]

    return (
        f"{get('advertisements/s'):.0f} adv/s: ours {get('ours CPU/advertisement'):.0f} us/adv "
        f"({get('ours CPU'):.1f}%), peer {get('peer CPU/advertisement'):.0f} us/adv ({get('peer CPU'):.2f}%); "
        f"RSS ours {get('ours RSS'):.1f} MB, peer {get('peer RSS'):.1f} MB, recording {get('recording in memory'):.1f}"
        f" MB; {get('ours readings/advertisement'):.2f} readings/adv, spool depth max "
        f"{get('ours spool depth max'):.0f}, at end {get('ours spool depth at end'):.0f}; not heard "
        f"{get('ours advertisements not heard'):.0f}/{get('peer advertisements not counted'):.0f}, readings short "
        f"{get('ours readings short'):.0f}, not confirmed {get('ours readings not confirmed'):.0f}"
    )


def tick_note(report: BenchReport, window_s: float) -> str:
    """How many clock ticks the least busy figure rests on: the peer's at the site rate."""
    ticks = report.value(f"peer CPU {SITE_RATE.label}") / 100 * window_s * CLOCK_TICKS
    return (
        f"CPU is counted in {1000 / CLOCK_TICKS:.0f} ms clock ticks: {SITE_RATE.label} the peer used about "
        f"{ticks:.0f} in the window, so its figure, and the ratio there, is good to about 1 in {max(1.0, ticks):.0f}."
    )


def run(options: BenchOptions) -> BenchReport:
    window_s = options.seconds(60, 15)
    rows = []
    for i in range(options.runs):
        row: dict[str, float] = {}
        for rate in RATES:
            print(f"  ble run {i + 1}/{options.runs} {rate.label}: {window_s:.0f} s window", flush=True)
            row |= measure_once(rate, window_s)
            print(f"    {summary(row, rate)}", flush=True)
        rows.append(row)
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_table(rows, figure_table()))
    report.ratios += ble_ratios(report.value)
    report.notes += [
        f"A {window_s:.0f} s window per rate, opened {WARMUP_S:.0f} s after the replay started; both sides play "
        f"one recording in real time from the same wall time ({REPEATS} copies of each measurement, "
        f"{len(ADAPTERS)} adapter; every 3rd device a RuuviTag, every 4th other one BTHome encrypted).",
        "The peer is a bleak detection callback that only counts, fed by the same replay backend: the replay's "
        "own cost (a timed wait per advertisement on the asyncio loop) is in both figures, so the ratio "
        "understates what ours adds over a radio's callback.",
        "Both hold the whole recording in memory (the replay loads it at start); a collector on a radio does "
        "not: `ours RSS less the recording` subtracts the peer's measured share.",
        "The counting subscriber stands for the forwarder: it confirms the readings on each device's `ack` "
        f"topic once every {CONFIRM_INTERVAL_S:g} s, as the forwarder does by default, so the collector's spool "
        "empties as at a site.",
        "`parser libraries imported alone` is a Python that imports bthome-ble and ruuvitag-ble and nothing "
        "else: habluetooth, bleak, dbus-fast and cryptography come with them. The 40 MB goal is at that floor.",
        tick_note(report, window_s),
    ]
    return report
