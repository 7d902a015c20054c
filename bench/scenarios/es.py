"""Elasticsearch sink: `ElasticsearchSink.write` into osmem-server, vs the client's own `helpers.bulk`.

Ours: valid reading envelopes, parsed before the clock starts, written through
`ElasticsearchSink.write` in ingester-sized batches (`create` ops, ids `device:boot:seq`, the
sink's own encoding, filter_path and per-item accounting). Peer, in the same run: the official
client's `elasticsearch.helpers.bulk` indexing the same readings as the same documents
(`message_document`, built inside its action generator as ours builds them inside `write`) with
plain `index` ops, same batch size. Each side writes into a fresh osmem-server, started from the
same binary, so neither pays for the other's stored documents; the order alternates per run.

osmem-server is an in-memory OpenSearch-API emulator, not Elasticsearch: it fsyncs nothing and
indexes at a few thousand documents a second, so it bounds both sides. Its CPU share, read from
/proc by PID while each side runs, says how much.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from elasticsearch import Elasticsearch, helpers

from bench.options import BenchOptions
from bench.osmem import Emulator, versions_line
from bench.procstat import CpuMeter
from bench.progress import Progress
from bench.reading import ReadingTemplate, boot_id, device_id
from bench.results import BenchReport, environment, figures_from_runs, fmt, ratio
from bench.stats import rate_between
from saltmarsh.config.elasticsearch import ElasticsearchConfig
from saltmarsh.contract.envelope import parse
from saltmarsh.sinks.base import Delivery
from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink, message_document
from saltmarsh.sinks.elasticsearch.templates import READINGS, index_pattern, install_templates, monthly_index

NAME = "es"
TITLE = "Elasticsearch sink into osmem-server (emulator, not Elasticsearch), vs elasticsearch.helpers.bulk"
BATCH = 2000  # the ingester's default batch
DEVICES = 50
GATEWAY = "bench-gw"
OURS_PREFIX = "bench-ours"
PEER_PREFIX = "bench-peer"
EARLIER_EMULATOR_RATE = 2300  # docs/s, measured against osmem-server before this bench existed

T = TypeVar("T")


def mint_deliveries(count: int, boot: str, now_ms: int, devices: int = DEVICES) -> list[Delivery]:
    """`count` valid readings as the ingester hands them to a sink: parsed, keyed, one gateway."""
    templates = [ReadingTemplate.for_device(device_id("es", d), boot) for d in range(devices)]
    out = []
    for i in range(count):
        template = templates[i % devices]
        payload = template.payload(i // devices, now_ms - 1000)
        out.append(Delivery(parse(template.topic.decode(), payload, now_ms), now_ms, GATEWAY))
    return out


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def peer_actions(prefix: str, deliveries: Sequence[Delivery]) -> Iterator[dict[str, Any]]:
    """What a user of the client writes: one `index` op per reading, same index and id as ours."""
    for delivery in deliveries:
        env = delivery.envelope
        yield {
            "_op_type": "index",
            "_index": monthly_index(prefix, READINGS, env.ts_ms),
            "_id": env.key,
            "_source": message_document(delivery),
        }


def _count(client: Elasticsearch, prefix: str) -> int:
    pattern = index_pattern(prefix, READINGS)
    client.indices.refresh(index=pattern, allow_no_indices=True)
    return int(client.count(index=pattern, allow_no_indices=True)["count"])


def _timed(
    label: str, write_batch: Callable[[Sequence[Delivery]], int], deliveries: Sequence[Delivery], emulator_pid: int
) -> dict[str, float]:
    """Write every batch; rate over the middle of the run, CPU of both processes over all of it."""
    emulator_cpu = CpuMeter.begin(emulator_pid)
    meter = Progress(label, len(deliveries))
    cpu_start, started = time.process_time(), time.perf_counter()
    timeline: list[tuple[float, int]] = [(started, 0)]
    done = 0
    for batch in batches(deliveries, BATCH):
        done += write_batch(batch)
        timeline.append((time.perf_counter(), done))
        meter.update(done)
    wall_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_start
    emulator_s = emulator_cpu.elapsed()
    per = 1e6 / max(1, done)
    return {
        "readings/s": rate_between(timeline, done),
        "CPU/reading": cpu_s * per,
        "process CPU": 100 * cpu_s / wall_s,
        "emulator CPU/reading": emulator_s * per,
        "emulator CPU": 100 * emulator_s / wall_s,
        "acknowledged": done,
    }


def measure_ours(deliveries: Sequence[Delivery]) -> dict[str, float]:
    emulator = Emulator.start()
    try:
        cfg = ElasticsearchConfig(
            hosts=(emulator.url,), index_prefix=OURS_PREFIX, batch_max_docs=BATCH, plain_json=True
        )
        sink = ElasticsearchSink(cfg)  # installs the index templates, before the clock starts
        try:
            got = _timed("ours written", lambda batch: sink.write(batch, ()).written, deliveries, emulator.pid)
            got["stored"] = _count(sink.client, OURS_PREFIX)
        finally:
            sink.close()
    finally:
        emulator.stop()
    return got


def measure_peer(deliveries: Sequence[Delivery]) -> dict[str, float]:
    emulator = Emulator.start()
    try:
        with contextlib.closing(emulator.client()) as client:
            install_templates(client, PEER_PREFIX)  # the same mappings as ours

            def write(batch: Sequence[Delivery]) -> int:
                ok, _errors = helpers.bulk(client, peer_actions(PEER_PREFIX, batch), chunk_size=BATCH, refresh=False)
                return ok

            got = _timed("peer indexed", write, deliveries, emulator.pid)
            got["stored"] = _count(client, PEER_PREFIX)
    finally:
        emulator.stop()
    return got


SIDE_UNITS = {
    "readings/s": "readings/s",
    "CPU/reading": "us/reading",
    "process CPU": "% of a core",
    "emulator CPU/reading": "us/reading",
    "emulator CPU": "% of a core",
    "stored": "readings",
}
SIDE_NOTES = {
    "readings/s": "acknowledged, while the count went from 10% to 90%",
    "CPU/reading": "this process (the writer), whole run",
    "process CPU": "this process while writing",
    "emulator CPU/reading": "osmem-server, from /proc",
    "emulator CPU": "osmem-server while this side wrote, from /proc",
    "stored": "counted back after a refresh",
}


def bound_note(ours_cpu_us: float, emulator_cpu_us: float, emulator_share: float, rate: float) -> str:
    """Which process bounds the rate, from CPU per reading on each side of the socket."""
    if math.isnan(ours_cpu_us) or math.isnan(emulator_cpu_us):
        return "no CPU figures to say which process bounds the rate"
    if emulator_cpu_us >= ours_cpu_us:
        who = "the emulator, not the sink, is the bound"
    else:
        who = "the sink, not the emulator, is the bound"
    return (
        f"osmem-server spent {fmt(emulator_cpu_us)} us of CPU per reading against ours' {fmt(ours_cpu_us)} us "
        f"({fmt(emulator_share)}% of one core while ours ran, at {fmt(rate)} readings/s): {who}. "
        f"~{EARLIER_EMULATOR_RATE:,} docs/s was measured against it before this bench."
    )


def run(options: BenchOptions) -> BenchReport:
    total = options.size(60_000, 10_000)
    now_ms = int(time.time() * 1000)
    deliveries = mint_deliveries(total, boot_id(), now_ms)
    rows = []
    for i in range(options.runs):
        row: dict[str, float] = {}
        sides = [("ours", measure_ours), ("peer", measure_peer)]
        for side, measure in sides if i % 2 == 0 else reversed(sides):
            print(f"  es run {i + 1}/{options.runs}, {side}: {total:,} readings in batches of {BATCH}", flush=True)
            got = measure(deliveries)
            print(
                f"    {got['readings/s']:,.0f} readings/s, {got['CPU/reading']:.1f} us/reading here, "
                f"emulator {got['emulator CPU']:.0f}% of a core",
                flush=True,
            )
            row.update({f"{side} {k}": v for k, v in got.items()})
        rows.append(row)
    units = {f"{side} {k}": u for side in ("ours", "peer") for k, u in SIDE_UNITS.items()}
    notes = {f"{side} {k}": n for side in ("ours", "peer") for k, n in SIDE_NOTES.items()}
    report = BenchReport(NAME, TITLE, environment(options.quick), figures_from_runs(rows, units, notes))

    report.ratios += [
        ratio(
            "ours/peer readings/s",
            report.value("ours readings/s"),
            report.value("peer readings/s"),
            "ElasticsearchSink.write vs helpers.bulk, same emulator, same batches",
        ),
        ratio(
            "ours/peer CPU/reading",
            report.value("ours CPU/reading"),
            report.value("peer CPU/reading"),
            "below 1: ours spends less of this process per reading",
        ),
    ]
    report.notes += [
        "osmem-server is an in-memory OpenSearch-API emulator, NOT Elasticsearch: it keeps documents in "
        "memory and fsyncs nothing, so these rates say nothing about a real cluster's; they compare two "
        "writers against the same server.",
        bound_note(
            report.value("ours CPU/reading"),
            report.value("ours emulator CPU/reading"),
            report.value("ours emulator CPU"),
            report.value("ours readings/s"),
        ),
        f"{total:,} valid reading envelopes (~321 B, {DEVICES} devices), parsed before the clock starts; "
        f"batches of {BATCH:,}. Ours: `ElasticsearchSink.write` (create ops, plain_json). Peer: "
        f"`elasticsearch.helpers.bulk(chunk_size={BATCH})` with index ops and the same `message_document` "
        "bodies, built in its generator. A fresh osmem-server per side; the order alternates per run.",
        f"{versions_line()}.",
    ]
    stored = [(s, report.value(f"{s} stored")) for s in ("ours", "peer")]
    short = [f"{s} {fmt(v)}" for s, v in stored if v != total]
    if short:
        report.notes.append(f"stored counts differ from the {total:,} written: {', '.join(short)}")
    return report
