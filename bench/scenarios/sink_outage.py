"""Sink outage: the sink down for 5 minutes at 1,000 msg/s, where the backlog waits, and the drain after.

Ours is the site-rate bench's whole path: paced publishers -> gateway Mosquitto -> `python -m
gateway` -> cloud Mosquitto -> `python -m cloud_ingester` -> SQLite. After a warm-up, another
connection holds the SQLite file's write lock (`SinkHeld`), so the ingester cannot commit and
confirms nothing, while the publishers go on at 1,000 msg/s. The forwarder may have at most its
unconfirmed window out in the cloud; the rest of the outage waits in its spool. Then the lock is
let go and the drain is timed: from the sink's return until every reading published before it is
a row in SQLite, with live readings still coming at 1,000 msg/s. Every 2 s both brokers' RSS
(VmRSS) is sampled, and the forwarder's `spool_depth` and `unconfirmed` from its status file.

Peer: Mosquitto's native bridge, the cloud broker's consumer (the counting subscriber, with a
persistent session) away for the same outage. The bridge stays connected, since the cloud broker
is up, so the outage lands in the cloud broker's queue for the consumer, and that queue's limit
decides what happens to it:
- bridge (a): Mosquitto's defaults on both brokers. The cloud broker keeps 1,000 queued
  messages per client (`max_queued_messages`) and drops the rest.
- bridge (b): the crash-safe bridge into the same cloud broker as ours (no queue limit,
  persistence): the cloud broker holds the whole outage in memory.

The three run one after the other, never at once (the machine has 2 cores).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.counter import Counter, CountPlan
from bench.lab import Lab
from bench.loadgen import Publishers
from bench.options import BenchOptions
from bench.procstat import memory_bytes
from bench.results import BenchReport, Figure, environment, figures_from_table, ratio
from bench.scenarios.ingester import SINK_BENCHES
from bench.scenarios.site_rate import broker_pid, saltmarsh_site, wait_stored
from bench.scenarios.topology import BRIDGE_CRASH_SAFE, BRIDGE_DEFAULT, OURS, start_hop
from bench.services import GATEWAY_ID, INGESTER_ID
from saltmarsh.config.gateway import FORWARDER_CONFIRMATIONS

NAME = "sink_outage"
TITLE = "5 minutes of sink outage at 1,000 msg/s: cloud broker memory, gateway spool, drain; ours vs the bridge"
RATE = 1000.0
PUBLISHER_PROCESSES = 2
FULL_OUTAGE_S = 300.0
SAMPLE_EVERY_S = 2.0
POLL_S = 0.5  # how often the drain checks the sink
DELIVERY_TIMEOUT_S = 120.0
STALL_S = 5.0
STATUS_S = 1.5  # a service rewrites its status file every second while its counters change
MB = 1e6
WARM_UP, OUTAGE, AFTER = "warm-up", "outage", "after"
PEERS = {BRIDGE_DEFAULT: "(a)", BRIDGE_CRASH_SAFE: "(b)"}
# The peers' cloud broker: Mosquitto's defaults for (a); for (b) the lab's, which is ours.
CLOUD_SPECS: dict[str, dict[str, object]] = {
    BRIDGE_DEFAULT: {"persistence": False, "max_queued_messages": 1000, "max_inflight_messages": 20},
    BRIDGE_CRASH_SAFE: {},
}
COUNTER_ID = "bench-outage-counter"
WINDOW = FORWARDER_CONFIRMATIONS.max_messages


class SinkHeld:
    """The SQLite sink made unavailable: another connection holds its write lock, as a dead disk would.

    The twin of the confirmation tests' `tests.confirm_support.SinkHeld`, which the bench does
    not import.
    """

    def __init__(self, path: Path) -> None:
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        """Let the sink write again; a second call does nothing."""
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


@dataclass(frozen=True, slots=True)
class Published:
    """What one publisher had had acknowledged at a moment: its readings 0 .. acked - 1.

    Reading i goes to device i % devices with seq i // devices + 1 (`bench.loadgen`), and
    PUBACKs come in order, so (device d, seq s) is among them if s <= q, or s == q + 1 and
    d < r, where q, r = divmod(acked, devices).
    """

    prefix: str
    devices: int
    acked: int

    def holds(self, device_index: int, seq: int) -> bool:
        rounds, rest = divmod(self.acked, self.devices)
        return seq <= rounds or (seq == rounds + 1 and device_index < rest)


def published_now(publishers: Publishers) -> list[Published]:
    return [
        Published(plan.device_prefix, plan.devices, int(progress.value))
        for plan, progress in zip(publishers.plans, publishers.progress, strict=True)
    ]


class Backlog:
    """Counts, as the sink's rows come in, those of the readings `published` before a moment."""

    def __init__(self, published: Sequence[Published]) -> None:
        self._by_prefix = {p.prefix: p for p in published}
        self.expected = sum(p.acked for p in published)
        self.stored = 0

    def add(self, rows: Iterable[tuple[str, int]]) -> None:
        """`rows` are (device, seq), each new to the sink (`bench.reading.device_id` names devices)."""
        for device, seq in rows:
            prefix, _, index = device.rpartition("-d")
            published = self._by_prefix.get(prefix)
            if published is not None and published.holds(int(index), seq):
                self.stored += 1

    @property
    def done(self) -> bool:
        return self.stored >= self.expected


class SinkRows:
    """The sink's new rows since the last call, in rowid order: each row read once, as committed.

    One writer, no deletes: rowids only grow, so `rowid > last` is everything new, read off the
    table's own b-tree without a scan of what was read before.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        self._last = 0

    def new(self) -> list[tuple[str, int]]:
        try:
            rows = self._conn.execute(
                "SELECT rowid, device, seq FROM messages WHERE rowid > ? ORDER BY rowid", (self._last,)
            ).fetchall()
        except sqlite3.Error:
            return []  # the next poll reads them
        if rows:
            self._last = int(rows[-1][0])
        return [(str(device), int(seq)) for _, device, seq in rows]

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True, slots=True)
class Sample:
    phase: str  # WARM_UP, OUTAGE or AFTER
    cloud_rss: int  # bytes, VmRSS
    gateway_rss: int
    spool_depth: int = 0  # the forwarder's, from its status file; 0 for a bridge
    unconfirmed: int = 0


class Watch:
    """Every SAMPLE_EVERY_S: both brokers' RSS and (with `forwarder`) the forwarder's spool and window."""

    def __init__(
        self, lab: Lab, cloud_pid: int, gateway_pid: int, alive: Callable[[], bool], forwarder: bool = False
    ) -> None:
        self.lab = lab
        self.cloud_pid = cloud_pid
        self.gateway_pid = gateway_pid
        self.alive = alive
        self.forwarder = forwarder
        self.samples: list[Sample] = []

    def sample(self, phase: str) -> Sample:
        counters: Mapping[str, Any] = {}
        if self.forwarder:
            status = self.lab.status("forwarder", GATEWAY_ID)
            counters = status.counters if status is not None else {}
        taken = Sample(
            phase,
            memory_bytes(self.cloud_pid)[0],
            memory_bytes(self.gateway_pid)[0],
            int(counters.get("spool_depth", 0)),
            int(counters.get("unconfirmed", 0)),
        )
        self.samples.append(taken)
        return taken

    def watch(self, phase: str, seconds: float, done: Callable[[], bool] | None = None) -> bool:
        """Sample for `seconds`, or until `done()` (asked every POLL_S); whether it was done."""
        started = time.monotonic()
        next_sample = started
        while True:
            now = time.monotonic()
            if not self.alive():
                raise RuntimeError(f"a process of the run exited during the {phase}; see {self.lab.logs}")
            if now >= next_sample:
                self.sample(phase)
                next_sample += SAMPLE_EVERY_S
            if done is not None and done():
                return True
            if now - started >= seconds:
                return False
            wake = min(next_sample, started + seconds, now + POLL_S if done is not None else math.inf)
            time.sleep(max(0.0, wake - time.monotonic()))


def memory_figures(key: str, samples: Sequence[Sample]) -> dict[str, float]:
    """Both brokers' RSS: the last sample of the warm-up, and the peak over the outage and after it."""
    before = next(s for s in reversed(samples) if s.phase == WARM_UP)
    later = [s for s in samples if s.phase != WARM_UP] or [before]
    cloud_peak = max(s.cloud_rss for s in later)
    return {
        f"{key} cloud broker RSS before": before.cloud_rss / MB,
        f"{key} cloud broker RSS peak": cloud_peak / MB,
        f"{key} cloud broker RSS growth": (cloud_peak - before.cloud_rss) / MB,
        f"{key} gateway broker RSS growth": (max(s.gateway_rss for s in later) - before.gateway_rss) / MB,
    }


def measure_ours(warmup_s: float, outage_s: float, drain_cap_s: float) -> dict[str, float]:
    with saltmarsh_site() as site:
        lab, hop = site.lab, site.hop
        assert hop.forwarder is not None
        forwarder = hop.forwarder
        path = Path(str(SINK_BENCHES["sqlite"].sink_table(lab)["path"]))
        cloud_pid, gateway_pid = site.pids["cloud broker"], site.pids["gateway broker"]

        def alive() -> bool:
            return site.ingester.alive() and forwarder.alive()

        watch = Watch(lab, cloud_pid, gateway_pid, alive, forwarder=True)
        publishers = lab.track(
            Publishers(hop.gateway.port, "so", processes=PUBLISHER_PROCESSES, devices=int(RATE), rate=RATE)
        )
        publishers.start()
        publishers.wait_publishing()
        watch.watch(WARM_UP, warmup_s)
        held = SinkHeld(path)
        held_at, acked_at_hold = time.monotonic(), publishers.acked()
        rows = SinkRows(path)
        try:
            watch.watch(OUTAGE, outage_s)
            spool_at_end = watch.sample(OUTAGE).spool_depth
            offered = (publishers.acked() - acked_at_hold) / (time.monotonic() - held_at)
            backlog = Backlog(published_now(publishers))
            backlog.add(rows.new())  # everything stored before the hold
            waiting = backlog.expected - backlog.stored
            held.release()
            released = time.monotonic()

            def drained() -> bool:
                backlog.add(rows.new())
                return backlog.done

            complete = watch.watch(AFTER, drain_cap_s, drained)
            drain_s = time.monotonic() - released if complete else math.nan
        finally:
            rows.close()
            held.release()  # after a failure too: the ingester then stops without waiting on the lock
        total = sum(result.acked for result in publishers.finish())
        stored = wait_stored(site, total)
        time.sleep(STATUS_S)  # the last batch's counters in the status files
        ingester = lab.status("ingester", INGESTER_ID)
        status = lab.status("forwarder", GATEWAY_ID)
        _, forwarder_peak = memory_bytes(forwarder.pid)
    return memory_figures("ours", watch.samples) | {
        "ours offered msg/s": offered,
        "forwarder unconfirmed max": max(s.unconfirmed for s in watch.samples),
        "forwarder spool depth at the end of the outage": spool_at_end,
        "forwarder peak RSS (VmHWM)": forwarder_peak / MB,
        "ours backlog when the sink came back": waiting,
        "ours drain time": drain_s,
        "ours drain msg/s": waiting / drain_s,
        "ours published": total,
        "ours lost": total - stored,
        "ours duplicates": _counter(ingester.counters if ingester else {}, "duplicates_total"),
        "forwarder resent": _counter(status.counters if status else {}, "resent_total"),
    }


def _counter(counters: Mapping[str, Any], key: str) -> float:
    value = counters.get(key)
    return float(value) if value is not None else math.nan


def measure_bridge(system: str, warmup_s: float, outage_s: float, after_s: float) -> dict[str, float]:
    """The bridge `system` with the cloud's consumer away for `outage_s`, then back for `after_s`."""
    key = PEERS[system]
    with Lab(f"{NAME}-bridge") as lab:
        cloud = lab.broker("cloud", **CLOUD_SPECS[system])
        plan = CountPlan(cloud.port, COUNTER_ID, persistent=True)
        first = lab.track(Counter(plan)).start()
        hop = start_hop(lab, system, cloud.port)
        watch = Watch(lab, broker_pid(cloud), hop.gateway_pid, lambda: cloud.alive() and hop.gateway.alive())
        publishers = lab.track(
            Publishers(hop.gateway.port, "so", processes=PUBLISHER_PROCESSES, devices=int(RATE), rate=RATE)
        )
        publishers.start()
        publishers.wait_publishing()
        watch.watch(WARM_UP, warmup_s)
        # The consumer goes away; its session, and whatever the broker queues for it, stays.
        away_at, acked_at_stop = time.monotonic(), publishers.acked()
        before = first.finish()
        watch.watch(OUTAGE, outage_s)
        acked_at_return = publishers.acked()
        offered = (acked_at_return - acked_at_stop) / (time.monotonic() - away_at)
        back = lab.track(Counter(plan)).start()
        watch.watch(AFTER, after_s)
        total = sum(result.acked for result in publishers.finish())
        back.wait_for(total - before.unique, DELIVERY_TIMEOUT_S, stall_s=STALL_S)
        after = back.finish()
    return memory_figures(key, watch.samples) | {
        f"{key} offered msg/s": offered,
        f"{key} published during the outage": acked_at_return - acked_at_stop,
        f"{key} published after the counter stopped": total - acked_at_stop,
        f"{key} delivered after the counter came back": after.unique,
        f"{key} lost": total - before.unique - after.unique,
    }


def memory_table(key: str) -> dict[str, tuple[str, str]]:
    return {
        f"{key} cloud broker RSS before": ("MB", "VmRSS, the last 2 s sample of the warm-up"),
        f"{key} cloud broker RSS peak": ("MB", "VmRSS sampled every 2 s over the outage and after it"),
        f"{key} cloud broker RSS growth": ("MB", "peak - before: what the outage left in the cloud broker"),
        f"{key} gateway broker RSS growth": ("MB", "the gateway Mosquitto, the same samples"),
    }


OURS_FIGURES = {
    "ours offered msg/s": ("msg/s", "PUBACKed by the gateway broker during the outage"),
    **memory_table("ours"),
    "forwarder unconfirmed max": ("messages", f"its status file, every 2 s; its window is {WINDOW:,}"),
    "forwarder spool depth at the end of the outage": ("messages", "spool_depth from its status file"),
    "forwarder peak RSS (VmHWM)": ("MB", ""),
    "ours backlog when the sink came back": ("readings", "published before the sink came back, not yet in SQLite"),
    "ours drain time": ("s", "sink back -> every reading published before it in SQLite; 1,000/s live on top"),
    "ours drain msg/s": (
        "readings/s",
        "backlog when the sink came back / drain time: the window at once, then the spool",
    ),
    "ours published": ("readings", "PUBACKed by the gateway broker over the whole run"),
    "ours lost": ("readings", "published, not in SQLite at the end"),
    "ours duplicates": ("readings", "the ingester's duplicates_total: copies it found already stored"),
    "forwarder resent": ("messages", "its resent_total: the probes of each silent round, then any overtaken"),
}


def peer_table(key: str) -> dict[str, tuple[str, str]]:
    return {
        f"{key} offered msg/s": ("msg/s", "PUBACKed by the gateway broker during the outage"),
        **memory_table(key),
        f"{key} published during the outage": ("readings", "while the cloud's consumer was away"),
        f"{key} published after the counter stopped": ("readings", "the outage's readings and the live ones after it"),
        f"{key} delivered after the counter came back": (
            "readings",
            "distinct readings the returning consumer got: what its session kept, then live ones",
        ),
        f"{key} lost": ("readings", "published, counted by neither the consumer before nor after the outage"),
    }


def figure_table() -> dict[str, tuple[str, str]]:
    """(unit, note) of every figure, in report order."""
    table = dict(OURS_FIGURES)
    for key in PEERS.values():
        table |= peer_table(key)
    return table


# The targets are about a 5 minute outage: only a full run's figures feed them.
TARGET_FIGURES = {
    "ours cloud broker RSS growth": "cloud broker RSS growth in a 5 min outage",
    "ours drain time": "drain time after a 5 min outage",
}


def target_figures(report: BenchReport) -> list[Figure]:
    out = []
    for name, target_name in TARGET_FIGURES.items():
        fig = report.figure(name)
        if fig is not None:
            out.append(Figure(target_name, fig.unit, fig.runs, "for the targets table"))
    return out


def outage_ratios(value: Callable[[str], float]) -> list[Figure]:
    """Ours against each bridge; `value` gives a figure's median."""
    out = []
    for key in PEERS.values():
        out += [
            ratio(
                f"ours/{key} cloud broker RSS growth",
                value("ours cloud broker RSS growth"),
                value(f"{key} cloud broker RSS growth"),
                "what the outage left in the cloud broker's memory, ours over the bridge's",
            ),
            ratio(
                f"{key} delivered/published after the stop",
                value(f"{key} delivered after the counter came back"),
                value(f"{key} published after the counter stopped"),
                "of what was published from the consumer's stop on, what reached it (ours: lost 0 is 1x)",
            ),
        ]
    return out


def summary(row: Mapping[str, float], key: str) -> str:
    if key == "ours":
        return (
            f"cloud broker RSS +{row['ours cloud broker RSS growth']:.1f} MB, "
            f"unconfirmed max {row['forwarder unconfirmed max']:,.0f}, "
            f"spool {row['forwarder spool depth at the end of the outage']:,.0f} at the end of the outage, "
            f"drained in {row['ours drain time']:.1f} s ({row['ours drain msg/s']:,.0f}/s), "
            f"lost {row['ours lost']:.0f}, duplicates {row['ours duplicates']:.0f}"
        )
    return (
        f"cloud broker RSS +{row[f'{key} cloud broker RSS growth']:.1f} MB; "
        f"{row[f'{key} delivered after the counter came back']:,.0f} delivered after the counter came back "
        f"of {row[f'{key} published after the counter stopped']:,.0f} published; lost {row[f'{key} lost']:,.0f}"
    )


def measure_run(
    run: int, runs: int, warmup_s: float, outage_s: float, after_s: float
) -> tuple[dict[str, float], list[str]]:
    row: dict[str, float] = {}
    failures: list[str] = []
    drain_cap_s = max(180.0, 2 * outage_s)
    for system in (OURS, *PEERS):
        key = PEERS.get(system, "ours")
        print(
            f"  {NAME} run {run}/{runs}, {system}: {warmup_s:.0f} s warm-up, {outage_s:.0f} s outage at "
            f"{RATE:,.0f} msg/s",
            flush=True,
        )
        try:
            if system == OURS:
                row |= measure_ours(warmup_s, outage_s, drain_cap_s)
            else:
                row |= measure_bridge(system, warmup_s, outage_s, after_s)
        except (RuntimeError, TimeoutError) as err:
            # The other sides are still worth measuring; the report says why this one is missing.
            print(f"    failed: {err}", flush=True)
            failures.append(f"{system} run {run} failed: {err}")
            continue
        print(f"    {summary(row, key)}", flush=True)
    return row, failures


def run(options: BenchOptions) -> BenchReport:
    warmup_s = options.seconds(30, 10)
    outage_s = options.seconds(FULL_OUTAGE_S, 30)
    after_s = options.seconds(30, 10)
    rows: list[dict[str, float]] = []
    failures: list[str] = []
    for i in range(options.runs):
        row, failed = measure_run(i + 1, options.runs, warmup_s, outage_s, after_s)
        rows.append(row)
        failures += failed
    table = figure_table()
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_table(rows, table))
    if outage_s == FULL_OUTAGE_S:
        report.figures += target_figures(report)

    report.ratios += outage_ratios(report.value)
    report.notes += failures
    report.notes += [
        f"{PUBLISHER_PROCESSES} publisher processes paced at {RATE:,.0f} msg/s in all, one reading a second from "
        f"each of {RATE:,.0f} devices, ~321-byte readings at QoS 1, throughout: {warmup_s:.0f} s warm-up, "
        f"{outage_s:.0f} s outage, and on through the drain (ours) or {after_s:.0f} s after the consumer came "
        "back (the bridges).",
        "ours: the sink is down while another connection holds the SQLite file's write lock (BEGIN EXCLUSIVE); "
        "the ingester's writes fail after its 5 s busy timeout and are retried with backoff (up to 5 s), which "
        f"the drain time includes. What the forwarder has out unconfirmed (its window, up to {WINDOW:,}) is already "
        "in the cloud broker and is written at once; the rest comes from its spool at drain_rate_limit (5,000/s, "
        "its default; live readings are not limited), so a backlog of N drains in about "
        f"(N - {WINDOW:,}) / 5,000 s.",
        "ours holds at most that window in the cloud broker however long the outage; a bridge's cloud queue "
        f"grows with the outage ({outage_s:.0f} s at {RATE:,.0f} msg/s: {outage_s * RATE:,.0f} readings), so "
        "ours/(b) cloud broker RSS growth falls as the outage lengthens.",
        "The bridges stay connected throughout, since the cloud broker is up and only its consumer is away, so "
        "neither queues at the gateway: the cloud broker's queue limit is what decides between (a) and (b). "
        "(a) is Mosquitto's defaults on both brokers (max_queued_messages 1000, max_inflight_messages 20, no "
        "persistence); (b) is the crash-safe bridge into the same cloud broker as ours.",
        "A bridge's lost counts the two consumer sessions' distinct readings against every one published; the "
        "few in flight when the consumer stopped may be counted by both, so it can be short by those.",
    ]
    return report
