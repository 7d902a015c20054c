"""Site rates: CPU per message at 100 and 1,000 msg/s, ours end to end vs Mosquitto's native bridge.

The forwarder bench runs flat out, where every fixed cost is shared by a large batch. A real
site offers 100 to 1,000 readings a second, one a second from each of 100 to 1,000 devices, and
there each wake-up, commit and status write is paid for by a few messages. So here publishers
are paced at a site's rate, and what each process spends during a fixed publishing window is
divided by the readings published in it:

- ours: paced publishers -> gateway Mosquitto -> `python -m gateway` -> cloud Mosquitto ->
  `python -m cloud_ingester` -> SQLite; every reading is counted in the sink afterwards. A real
  ingester, so the path is whole whichever way the forwarder is told to acknowledge.
- native: the same publishers -> gateway Mosquitto running its native bridge in Mosquitto's
  default configuration (the forwarder bench's bridge (a)) -> cloud Mosquitto -> the counting
  subscriber.

At each rate the two run one after the other, never at once (the machine has 2 cores). CPU is
utime+stime from /proc/PID/stat, sampled at the window's start and end. Also measured: the
forwarder's CPU while connected with no traffic, and the sensor agent's CPU per reading at the
same rates (simulated driver), sending into our whole path on its own, counted in the sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.procstat import CLOCK_TICKS, Usage
from bench.results import BenchReport, Figure, environment, figures_from_table, ratio
from bench.scenarios.ingester import SINK_BENCHES
from bench.scenarios.topology import BRIDGE_DEFAULT, OURS, Hop, start_hop
from bench.services import start_ingester, start_sensor
from saltmarsh.ops.localfleet.mosquitto import Mosquitto
from saltmarsh.ops.localfleet.processes import ServiceProcess

NAME = "site_rate"
TITLE = "CPU per message at a site's rates, ours end to end vs Mosquitto's native bridge"
RATES = (100.0, 1000.0)
PUBLISHER_PROCESSES = 2
SENSOR_DEVICE = "bench-s001"
SETTLE_S = 2.0  # after everything is connected, before any window: start-up work is not counted
DELIVERY_TIMEOUT_S = 30.0
STALL_S = 5.0


def at(rate: float) -> str:
    """A figure's rate suffix: 'at 100/s'."""
    return f"at {rate:,.0f}/s"


@dataclass(frozen=True, slots=True)
class Window:
    """One publishing window: readings the gateway broker acknowledged in it, and what each process used."""

    published: int
    wall_s: float
    usage: Mapping[str, Usage]  # by role: "forwarder", "gateway broker", ...
    total: int  # every reading acknowledged, window or not: what must arrive

    def cpu_us(self, *roles: str) -> float:
        """CPU per message of these processes together."""
        return 1e6 * sum(self.usage[role].cpu_s for role in roles) / max(1, self.published)

    def wakeups(self, role: str) -> float:
        return self.usage[role].wakeups / max(1, self.published)

    def disk_bytes(self, role: str) -> float:
        return self.usage[role].disk_write_bytes / max(1, self.published)

    @property
    def offered(self) -> float:
        return self.published / self.wall_s


def broker_pid(broker: Mosquitto) -> int:
    assert broker.process is not None
    return broker.process.pid


def usage_over(pids: Mapping[str, int], seconds: float) -> dict[str, Usage]:
    """What each process uses over the next `seconds`."""
    before = {role: Usage.of(pid) for role, pid in pids.items()}
    time.sleep(seconds)
    return {role: Usage.of(pid) - before[role] for role, pid in pids.items()}


def publish_window(lab: Lab, port: int, rate: float, window_s: float, pids: Mapping[str, int]) -> Window:
    """Publishers paced at `rate`, one device per reading a second; CPU of `pids` over `window_s` of it.

    The window opens once every publisher has had a PUBACK, so it holds no connecting and no
    spawning, only the paced flow; it is counted in PUBACKs from the gateway broker.
    """
    publishers = lab.track(
        Publishers(port, "site", total=0, processes=PUBLISHER_PROCESSES, devices=int(rate), rate=rate)
    )
    publishers.start()
    publishers.wait_publishing()
    before, started = publishers.acked(), time.monotonic()
    usage = usage_over(pids, window_s)
    published, wall_s = publishers.acked() - before, time.monotonic() - started
    total = sum(result.acked for result in publishers.finish())
    return Window(published, wall_s, usage, total)


def wait_stored(site: Site, total: int) -> int:
    """Rows in the sink once `total` are there, or nothing new came for STALL_S, or the timeout passed."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    stored, changed = 0, time.monotonic()
    while stored < total and site.ingester.alive() and time.monotonic() < min(deadline, changed + STALL_S):
        time.sleep(0.05)
        got = site.stored()
        if got != stored:
            stored, changed = got, time.monotonic()
    return stored


@dataclass(frozen=True, slots=True)
class Site:
    """Our whole path, running: gateway broker -> forwarder -> cloud broker -> ingester -> SQLite."""

    lab: Lab
    hop: Hop
    ingester: ServiceProcess
    pids: Mapping[str, int]  # by role

    def stored(self) -> int:
        return SINK_BENCHES["sqlite"].stored(self.lab)


@contextmanager
def saltmarsh_site() -> Iterator[Site]:
    with Lab(f"{NAME}-ours") as lab:
        cloud = lab.broker("cloud")
        ingester = start_ingester(lab, cloud.port, SINK_BENCHES["sqlite"].sink_table(lab))
        hop = start_hop(lab, OURS, cloud.port)
        pids = {
            "forwarder": hop.pid,
            "gateway broker": hop.gateway_pid,
            "ingester": ingester.pid,
            "cloud broker": broker_pid(cloud),
        }
        yield Site(lab, hop, ingester, pids)


def measure_ours(rate: float, window_s: float, idle_s: float) -> dict[str, float]:
    with saltmarsh_site() as site:
        time.sleep(SETTLE_S)
        row: dict[str, float] = {}
        if idle_s:
            row |= idle_figures(usage_over(site.pids, idle_s), idle_s)
        window = publish_window(site.lab, site.hop.gateway.port, rate, window_s, site.pids)
        stored = wait_stored(site, window.total)
    return row | {
        f"ours offered msg/s {at(rate)}": window.offered,
        f"forwarder CPU/msg {at(rate)}": window.cpu_us("forwarder"),
        f"gateway broker CPU/msg {at(rate)}": window.cpu_us("gateway broker"),
        f"gateway total CPU/msg {at(rate)}": window.cpu_us("forwarder", "gateway broker"),
        f"forwarder wake-ups/msg {at(rate)}": window.wakeups("forwarder"),
        f"gateway broker wake-ups/msg {at(rate)}": window.wakeups("gateway broker"),
        f"forwarder disk bytes/msg {at(rate)}": window.disk_bytes("forwarder"),
        f"ingester CPU/msg {at(rate)}": window.cpu_us("ingester"),
        f"ours cloud broker CPU/msg {at(rate)}": window.cpu_us("cloud broker"),
        f"ours lost {at(rate)}": window.total - stored,
    }


def measure_native(rate: float, window_s: float) -> dict[str, float]:
    with Lab(f"{NAME}-native") as lab:
        cloud = lab.broker("cloud")
        counter = lab.track(Counter(CountPlan(cloud.port, "bench-counter")))
        counter.start()
        hop = start_hop(lab, BRIDGE_DEFAULT, cloud.port)
        time.sleep(SETTLE_S)
        pids = {"gateway broker": hop.gateway_pid, "cloud broker": broker_pid(cloud)}
        window = publish_window(lab, hop.gateway.port, rate, window_s, pids)
        counter.wait_for(window.total, DELIVERY_TIMEOUT_S, stall_s=STALL_S)
        counted = counter.finish()
    return {
        f"native offered msg/s {at(rate)}": window.offered,
        f"native bridge CPU/msg {at(rate)}": window.cpu_us("gateway broker"),
        f"native bridge wake-ups/msg {at(rate)}": window.wakeups("gateway broker"),
        f"native cloud broker CPU/msg {at(rate)}": window.cpu_us("cloud broker"),
        f"native lost {at(rate)}": window.total - counted.unique,
    }


def measure_sensor(rate: float, window_s: float) -> dict[str, float]:
    """The sensor agent asked for `rate` readings a second; what it achieved and what each cost.

    It sends into our whole path, as at a site: the forwarder is what confirms its readings
    (end to end), and the readings it managed are counted in the sink.
    """
    with saltmarsh_site() as site:
        sensor = start_sensor(site.lab, site.hop.gateway.port, SENSOR_DEVICE, interval_s=1.0 / rate)
        time.sleep(SETTLE_S)
        before, started = site.stored(), time.monotonic()
        used = usage_over({"sensor": sensor.pid}, window_s)["sensor"]
        readings, wall_s = site.stored() - before, time.monotonic() - started
    return {
        f"sensor readings/s {at(rate)}": readings / wall_s,
        f"sensor CPU/reading {at(rate)}": 1e6 * used.cpu_s / max(1, readings),
        f"sensor CPU {at(rate)}": 100 * used.cpu_s / wall_s,
        f"sensor wake-ups/reading {at(rate)}": used.wakeups / max(1, readings),
        f"sensor disk bytes/reading {at(rate)}": used.disk_write_bytes / max(1, readings),
    }


def idle_figures(idle: Mapping[str, Usage], idle_s: float) -> dict[str, float]:
    return {
        # Run time, not clock ticks: an idle forwarder runs for a few ms a second, and ticks (10 ms,
        # charged to whoever runs when one fires) would give a handful of them, mostly noise.
        "forwarder idle CPU": 100 * idle["forwarder"].run_s / idle_s,
        "forwarder idle wake-ups/s": idle["forwarder"].wakeups / idle_s,
        "gateway broker idle CPU": 100 * idle["gateway broker"].run_s / idle_s,
    }


IDLE_FIGURES = {
    "forwarder idle CPU": ("%", "of one core, connected at both ends, no traffic; run time from schedstat"),
    "forwarder idle wake-ups/s": ("wake-ups/s", "voluntary context switches, all threads"),
    "gateway broker idle CPU": ("%", "its Mosquitto over the same seconds"),
}
RATE_FIGURES = {
    "ours offered msg/s": ("msg/s", "PUBACKed by the gateway broker over the window"),
    "forwarder CPU/msg": ("us/msg", "`python -m gateway`"),
    "gateway broker CPU/msg": ("us/msg", "the gateway Mosquitto feeding the forwarder"),
    "gateway total CPU/msg": ("us/msg", "forwarder + its gateway Mosquitto: the gateway's cost"),
    "forwarder wake-ups/msg": ("wake-ups", "voluntary context switches of all its threads: select, GIL, fsync, sleep"),
    "gateway broker wake-ups/msg": ("wake-ups", ""),
    "forwarder disk bytes/msg": ("bytes", "write_bytes from /proc/PID/io: spool commits and status file"),
    "ingester CPU/msg": ("us/msg", "`python -m cloud_ingester` into SQLite"),
    "ours cloud broker CPU/msg": ("us/msg", ""),
    "ours lost": ("readings", "acknowledged at the gateway, not in SQLite at the end"),
    "native offered msg/s": ("msg/s", ""),
    "native bridge CPU/msg": ("us/msg", "the gateway Mosquitto, which runs the bridge: the gateway's cost"),
    "native bridge wake-ups/msg": ("wake-ups", ""),
    "native cloud broker CPU/msg": ("us/msg", ""),
    "native lost": ("readings", "acknowledged at the gateway, not counted at the cloud"),
    "sensor readings/s": ("readings/s", "its readings that reached the sink over the window, asked for the rate"),
    "sensor CPU/reading": ("us/reading", "simulated driver"),
    "sensor CPU": ("%", "of one core"),
    "sensor wake-ups/reading": ("wake-ups", ""),
    "sensor disk bytes/reading": ("bytes", "write_bytes: spool append and delete commits"),
}


def figure_table() -> dict[str, tuple[str, str]]:
    """(unit, note) of every figure, in report order."""
    table = dict(IDLE_FIGURES)
    for rate in RATES:
        table |= {f"{name} {at(rate)}": spec for name, spec in RATE_FIGURES.items()}
    return table


def measure_run(run: int, runs: int, window_s: float, idle_s: float, sensor_s: float) -> dict[str, float]:
    row: dict[str, float] = {}
    for rate in RATES:
        print(f"  site_rate run {run}/{runs} {at(rate)}: ours, then native, then the sensor agent", flush=True)
        # The idle window once a run, in the first lab: connected is connected, whatever the rate.
        row |= measure_ours(rate, window_s, idle_s if rate == RATES[0] else 0.0)
        row |= measure_native(rate, window_s)
        row |= measure_sensor(rate, sensor_s)
        print(f"    {summary(row, rate)}", flush=True)
    print(f"    forwarder idle {row['forwarder idle CPU']:.2f}% of a core", flush=True)
    return row


def summary(row: Mapping[str, float], rate: float) -> str:
    def get(name: str) -> float:
        return row[f"{name} {at(rate)}"]

    return (
        f"forwarder {get('forwarder CPU/msg'):.1f} + gateway broker {get('gateway broker CPU/msg'):.1f} "
        f"= {get('gateway total CPU/msg'):.1f} us/msg vs native bridge {get('native bridge CPU/msg'):.1f}; "
        f"forwarder {get('forwarder wake-ups/msg'):.1f} wake-ups/msg, "
        f"{get('forwarder disk bytes/msg'):,.0f} disk bytes/msg; "
        f"ingester {get('ingester CPU/msg'):.1f} us/msg; lost {get('ours lost'):.0f} / {get('native lost'):.0f}; "
        f"sensor {get('sensor readings/s'):,.0f} readings/s at {get('sensor CPU/reading'):.0f} us/reading"
    )


def sensor_notes(report: BenchReport) -> list[str]:
    """Say so where the agent could not reach a rate: its figure is then at the rate it managed."""
    notes = []
    for rate in RATES:
        fig = report.figure(f"sensor readings/s {at(rate)}")
        if fig is not None and fig.value < 0.95 * rate:
            notes.append(
                f"The sensor agent, asked for {rate:,.0f} readings/s (interval_s {1 / rate:g}; its config takes "
                f"down to 0.0001), reached only {fig.value:,.0f}/s: the agent falls behind, and its figures "
                f"{at(rate)} are at the rate it reached."
            )
    return notes


def gateway_ratios(value: Callable[[str], float]) -> list[Figure]:
    """The gateway's CPU per message, ours over native, at each rate; `value` gives a figure's median."""
    out = []
    for rate in RATES:
        native = value(f"native bridge CPU/msg {at(rate)}")
        out += [
            ratio(
                f"gateway total/native {at(rate)}",
                value(f"gateway total CPU/msg {at(rate)}"),
                native,
                "CPU per message at the gateway: forwarder + its Mosquitto / Mosquitto running the bridge",
            ),
            ratio(
                f"forwarder/native {at(rate)}", value(f"forwarder CPU/msg {at(rate)}"), native, "the forwarder alone"
            ),
        ]
    return out


def run(options: BenchOptions) -> BenchReport:
    window_s = options.seconds(30, 8)
    idle_s = options.seconds(20, 5)
    sensor_s = options.seconds(30, 8)
    rows = [measure_run(i + 1, options.runs, window_s, idle_s, sensor_s) for i in range(options.runs)]
    table = figure_table()
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_table(rows, table))

    report.ratios += gateway_ratios(report.value)
    report.notes += [
        f"{PUBLISHER_PROCESSES} publisher processes paced at the rate in total, one device per reading a "
        f"second (100 or 1,000 devices), ~321-byte readings at QoS 1; a {window_s:.0f} s window per rate "
        f"per side, opened {SETTLE_S:.0f} s after everything connected; the forwarder's idle window is "
        f"{idle_s:.0f} s, the sensor agent's {sensor_s:.0f} s.",
        "native is Mosquitto's bridge in its default configuration (no persistence, 1000 queued, 20 in "
        "flight), which is not crash-safe; ours is, and goes on to a real ingester into SQLite.",
        "CPU per message is each process's own utime+stime over the window, whatever else the machine runs, "
        f"counted in {1000 / CLOCK_TICKS:.0f} ms ticks. Idle CPU is its threads' run time from "
        "/proc/PID/task/*/schedstat instead, to the nanosecond: in ticks it would be a handful, mostly noise.",
        *sensor_notes(report),
    ]
    return report
