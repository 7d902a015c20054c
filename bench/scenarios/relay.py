"""The Salt engine's relay: events per second through `saltmarsh.relay`, vs one sink call per event.

Ours is the code the engine runs, minus the bus: `Relay.offer` (route, bounded queue) on this
thread, the sender thread taking batches of `batch_max_docs`, flattening (`event_document`),
keying (`fleet_event`) and handing each batch to the store. Engine defaults, except a queue
that holds the whole stream, so nothing spills to the spool and the figure is the sender's.
Peer, in the same run: the same events flattened and stored by a loop that calls the store once
per event, as Salt's own elasticsearch returner does.

Two stores: a fast in-process fake that NDJSON-encodes each document as the real bulk writer
does and keeps nothing (what the relay itself costs), and the real `ElasticsearchSink` behind
the engine's `FleetEventStore` against osmem-server (an emulator, not Elasticsearch), where
one request per event meets one request per batch.

No salt-master is started: its bus fires ~300 events/s on this machine (the flood in
tests/test_relay_salt.py), far below either figure, so the bus, not the relay, bounds the engine.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import BenchOptions
from bench.osmem import Emulator, versions_line
from bench.procstat import CpuMeter
from bench.progress import Progress
from bench.results import BenchReport, environment, figures_from_runs, fmt, ratio
from bench.salt_events import job_returns
from bench.stats import rate_between
from saltmarsh.config.relay import RelayConfig, relay_config
from saltmarsh.relay.documents import event_document, fleet_event
from saltmarsh.relay.sender import EventStore, Relay
from saltmarsh.relay.service import FleetEventStore
from saltmarsh.runtime.spool import Spool
from saltmarsh.sinks.elasticsearch.bulk import BulkDoc, BulkResult, encode
from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink

NAME = "relay"
TITLE = "Salt engine relay (queue, sender thread, bulk) vs one store call per event"
PREFIX = "bench-relay"
BUS_EVENTS_PER_S = 300  # what the salt-master's bus fires here (tests/test_relay_salt.py flood)
SAMPLE_EVERY = 500  # events between timeline samples while offering
Event = tuple[str, dict[str, Any]]


@dataclass
class EncodingStore:
    """The fake store: encodes each document's bulk lines, as `BulkWriter` does, and keeps nothing."""

    created: int = 0
    encoded_bytes: int = 0

    def index_documents(self, docs: Sequence[BulkDoc]) -> BulkResult:
        for position, doc in enumerate(docs):
            self.encoded_bytes += len(encode(position, doc).lines)
        self.created += len(docs)
        return BulkResult(len(docs), 0)


def bench_config(spool_dir: Path, queue_max: int, url: str | None) -> RelayConfig:
    """The engine's defaults, with a queue that holds `queue_max` events and the emulator's URL."""
    es: dict[str, Any] = {"index_prefix": PREFIX, "plain_json": True}
    if url is not None:
        es["hosts"] = [url]
    return relay_config({"spool_dir": str(spool_dir), "queue_max": queue_max, "elasticsearch": es})


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix=f"saltmarsh-bench-{NAME}-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Meters:
    """CPU of this process (reader, sender and store) and, when there is one, of the emulator."""

    emulator: CpuMeter | None
    cpu_start: float
    started: float

    @classmethod
    def begin(cls, emulator_pid: int | None) -> Meters:
        emulator = CpuMeter.begin(emulator_pid) if emulator_pid is not None else None
        return cls(emulator, time.process_time(), time.perf_counter())

    def figures(self, timeline: list[tuple[float, int]], done: int) -> dict[str, float]:
        wall_s = time.perf_counter() - self.started
        per = 1e6 / max(1, done)
        got = {
            "events/s": rate_between(timeline, done),
            "CPU/event": (time.process_time() - self.cpu_start) * per,
            "relayed": done,
        }
        if self.emulator is not None:
            emulator_s = self.emulator.elapsed()
            got["emulator CPU/event"] = emulator_s * per
            got["emulator CPU"] = 100 * emulator_s / wall_s
        return got


def measure_ours(
    events: Sequence[Event], store: EventStore, cfg: RelayConfig, cap_s: float, pid: int | None
) -> dict[str, float]:
    total = len(events)
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    relay = Relay(cfg, store, None, spool)
    meter = Progress("ours relayed", total)
    try:
        meters = Meters.begin(pid)
        timeline: list[tuple[float, int]] = [(meters.started, 0)]
        relay.start()
        for i, (tag, data) in enumerate(events):
            relay.offer(tag, data)
            if i % SAMPLE_EVERY == 0:
                timeline.append((time.perf_counter(), relay.counters.relayed))
        deadline = time.monotonic() + cap_s
        while (relayed := relay.counters.relayed) < total and time.monotonic() < deadline:
            timeline.append((time.perf_counter(), relayed))
            meter.update(relayed)
            time.sleep(0.01)
        timeline.append((time.perf_counter(), relay.counters.relayed))
        got = meters.figures(timeline, relay.counters.relayed)
    finally:
        relay.stop()
        spool.close()
    got["spooled"] = relay.counters.spooled
    return got


def measure_peer(events: Sequence[Event], store: EventStore, cap_s: float, pid: int | None) -> dict[str, float]:
    """The naive relay: flatten an event, store it, next; no queue, no thread, no batch."""
    meter = Progress("peer stored", len(events))
    meters = Meters.begin(pid)
    timeline: list[tuple[float, int]] = [(meters.started, 0)]
    deadline = time.monotonic() + cap_s
    done = 0
    for tag, data in events:
        doc = event_document(tag, data, int(time.time() * 1000))
        result = store.index_documents([fleet_event(PREFIX, doc)])
        done += result.created + result.duplicates
        if done % SAMPLE_EVERY == 0:
            timeline.append((time.perf_counter(), done))
            meter.update(done)
            if time.monotonic() > deadline:
                break
    timeline.append((time.perf_counter(), done))
    return meters.figures(timeline, done)


def fake_sides(events: Sequence[Event], cap_s: float) -> dict[str, dict[str, float]]:
    with scratch() as base:
        ours = measure_ours(events, EncodingStore(), bench_config(base / "spool", len(events), None), cap_s, None)
    return {"ours": ours, "peer": measure_peer(events, EncodingStore(), cap_s, None)}


def osmem_side(side: str, events: Sequence[Event], cap_s: float) -> dict[str, float]:
    """One side against its own fresh emulator, through the engine's store."""
    with scratch() as base:
        emulator = Emulator.start()
        try:
            cfg = bench_config(base / "spool", len(events), emulator.url)
            store = FleetEventStore(ElasticsearchSink(cfg.elasticsearch))  # templates installed here
            try:
                if side == "ours":
                    return measure_ours(events, store, cfg, cap_s, emulator.pid)
                return measure_peer(events, store, cap_s, emulator.pid)
            finally:
                store.close()
        finally:
            emulator.stop()


SIDE_UNITS = {
    "events/s": "events/s",
    "CPU/event": "us/event",
    "relayed": "events",
}
OSMEM_UNITS = {**SIDE_UNITS, "emulator CPU/event": "us/event", "emulator CPU": "% of a core"}
NOTES = {
    "events/s": "stored, while the count went from 10% to 90%",
    "CPU/event": "this process, whole run",
    "emulator CPU/event": "osmem-server, from /proc",
    "emulator CPU": "osmem-server while this side ran, from /proc",
}


def bus_note(ours_rate: float) -> str:
    if math.isnan(ours_rate):
        return f"the salt-master's bus fires ~{BUS_EVENTS_PER_S} events/s on this machine (tests/test_relay_salt.py)"
    verdict = "so the relay is not the bound" if ours_rate > BUS_EVENTS_PER_S else "so the relay IS the bound"
    return (
        f"No salt-master here: its bus fires ~{BUS_EVENTS_PER_S} events/s on this machine (measured by the "
        f"flood in tests/test_relay_salt.py), against {fmt(ours_rate)} events/s relayed into the slowest "
        f"store benched above, {verdict}."
    )


def run(options: BenchOptions) -> BenchReport:
    fake_total = options.size(100_000, 20_000)
    osmem_total = options.size(20_000, 4_000)
    cap_s = options.seconds(120, 30)
    peer_osmem_cap_s = options.seconds(30, 10)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime())
    fake_events = job_returns(fake_total, stamp)
    osmem_events = fake_events[:osmem_total]
    rows = []
    for i in range(options.runs):
        row: dict[str, float] = {}
        print(f"  relay run {i + 1}/{options.runs}, fake store: {fake_total:,} job returns each side", flush=True)
        for side, got in fake_sides(fake_events, cap_s).items():
            print(f"    {side}: {got['events/s']:,.0f} events/s, {got['CPU/event']:.1f} us/event", flush=True)
            row.update({f"fake store {side} {k}": v for k, v in got.items()})
        sides = ["ours", "peer"] if i % 2 == 0 else ["peer", "ours"]
        for side in sides:
            print(f"  relay run {i + 1}/{options.runs}, osmem, {side}: {osmem_total:,} job returns", flush=True)
            got = osmem_side(side, osmem_events, cap_s if side == "ours" else peer_osmem_cap_s)
            print(f"    {got['events/s']:,.0f} events/s, {got['CPU/event']:.1f} us/event", flush=True)
            row.update({f"osmem {side} {k}": v for k, v in got.items()})
        rows.append(row)
    units: dict[str, str] = {}
    notes: dict[str, str] = {}
    for store, store_units in (("fake store", SIDE_UNITS), ("osmem", OSMEM_UNITS)):
        for side in ("ours", "peer"):
            units |= {f"{store} {side} {k}": u for k, u in store_units.items()}
            notes |= {f"{store} {side} {k}": n for k, n in NOTES.items() if k in store_units}
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_runs(rows, units, notes))

    for store in ("fake store", "osmem"):
        report.ratios.append(
            ratio(
                f"{store}: ours/peer events/s",
                report.value(f"{store} ours events/s"),
                report.value(f"{store} peer events/s"),
                "relay (queue, sender thread, batches) vs one store call per event",
            )
        )
        report.ratios.append(
            ratio(
                f"{store}: ours/peer CPU/event",
                report.value(f"{store} ours CPU/event"),
                report.value(f"{store} peer CPU/event"),
                "below 1: the relay spends less CPU per event",
            )
        )
    spooled = [s.get(f"{store} ours spooled", 0.0) for s in rows for store in ("fake store", "osmem")]
    report.notes += [
        f"{fake_total:,} distinct `salt/job/<jid>/ret/<minion>` state.apply returns (~1 KB) through the fake "
        f"store, the first {osmem_total:,} through osmem-server; the peer against osmem stops after "
        f"{fmt(peer_osmem_cap_s)} s. Engine defaults (batch 1,000, flush 500 ms), queue_max = the stream, "
        f"so nothing spilled: {fmt(max(spooled, default=0.0))} events spooled.",
        "Fake store: NDJSON-encodes each document (the bulk writer's `encode`) and keeps nothing, so its "
        "ratio is the relay's own cost: the queue and sender thread against a plain loop.",
        "osmem-server is an in-memory OpenSearch-API emulator, NOT Elasticsearch; each side gets a fresh one, "
        "and the order alternates per run.",
        bus_note(report.value("osmem ours events/s")),
        f"{versions_line()}.",
    ]
    return report
