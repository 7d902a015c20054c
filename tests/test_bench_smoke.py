"""The benches' pure parts: statistics, reading templates, /proc parsing, RESULTS.md rendering, the
Elasticsearch and relay benches' documents, events and notes, the site-rate and sink-outage
benches' arithmetic, and the BLE bench's window, config and peer."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from bench.__main__ import BENCHES
from bench.counter import CountResult, Tally
from bench.lab import Lab
from bench.loadgen import PacketMint, count_pubacks
from bench.osmem import ready_url
from bench.procstat import Usage, parse_field, parse_schedstat_ns, parse_stat_cpu_ticks, parse_status_kib
from bench.reading import TARGET_BYTES, ReadingTemplate, device_id, device_of, parse_seq_ts
from bench.results import BenchReport, Environment, Figure, cpu_model, render_markdown, render_report
from bench.salt_events import MINIONS, job_return, job_returns
from bench.scenarios import ble, es, relay, sink_outage, site_rate
from bench.services import BLE_COLLECTOR_ID, ble_doc
from bench.stats import median, percentile, rate_between
from bench.targets import TARGETS, render_targets, verdicts
from gateway.ble.recording import sim_devices
from saltmarsh.config.ble import load_ble_config
from saltmarsh.config.relay import DEFAULT_RELAY_TAGS
from saltmarsh.contract.envelope import parse
from saltmarsh.contract.errors import ProtocolError
from saltmarsh.mqtt.codec import DISCONNECT_PACKET, encode_puback, encode_publish, parse_stream
from saltmarsh.ops.localfleet.processes import ServiceProcess
from saltmarsh.relay.documents import event_document, event_id, fleet_event
from saltmarsh.relay.sender import ELASTICSEARCH, Router
from saltmarsh.sinks.elasticsearch.bulk import encode
from saltmarsh.sinks.elasticsearch.templates import READINGS, monthly_index
from saltmarsh.sinks.kinesis.selection import Globs, Selection

BOOT = "6650a1b2-0011aabb"
TS = 1_700_000_000_123
ENV = Environment(2, "AMD EPYC", "3.11.7", "2.0.11", "2.2.0", "5.6.3", "3.40.1", "2026-01-01 00:00 UTC", "quick")

# A real line, with a command name holding a space and a parenthesis.
STAT_LINE = (
    "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 2211 0 0 0 157 43 0 0 20 0 3 0 123456 "
    "300000000 9000 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0 0 0 0"
)
STATUS_TEXT = "Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n"
TASK_STATUS_TEXT = "Name:\tpython\nvoluntary_ctxt_switches:\t8495\nnonvoluntary_ctxt_switches:\t2276\n"
IO_TEXT = "rchar: 6976\nwchar: 124159763\nsyscw: 60244\nwrite_bytes: 155107328\ncancelled_write_bytes: 36864\n"


@pytest.mark.parametrize(
    ("values", "expected"),
    [([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0, 2.0, 3.0], 2.5), ([7.0], 7.0)],
)
def test_median(values: list[float], expected: float) -> None:
    assert median(values) == expected


def test_median_and_percentile_of_nothing_are_nan() -> None:
    assert math.isnan(median([]))
    assert math.isnan(percentile([], 99))


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0


def test_rate_between_uses_the_middle_of_the_run() -> None:
    # 1000/s from t=10, after a slow start.
    timeline = [(0.0, 0), (10.0, 0), *[(10.0 + s, 1000 * s) for s in range(1, 11)]]
    assert rate_between(timeline, 10_000) == pytest.approx(1000.0)


def test_procstat_parses_cpu_ticks_and_memory() -> None:
    assert parse_stat_cpu_ticks(STAT_LINE) == 157 + 43
    assert parse_status_kib(STATUS_TEXT, "VmHWM") == 51200
    assert parse_status_kib(STATUS_TEXT, "VmRSS") == 40960
    assert parse_status_kib(STATUS_TEXT, "VmSwap") == 0


def test_procstat_parses_wakeups_and_disk_writes_and_subtracts_usage() -> None:
    assert parse_field(TASK_STATUS_TEXT, "voluntary_ctxt_switches") == 8495
    assert parse_field(IO_TEXT, "write_bytes") == 155_107_328
    assert parse_field(IO_TEXT, "read_bytes") == 0
    assert parse_schedstat_ns("254898264 6709785 601\n") == 254_898_264
    assert Usage(1.5, 300, 8192, 2.0) - Usage(0.5, 100, 4096, 1.5) == Usage(1.0, 200, 4096, 0.5)


def test_reading_is_a_valid_envelope_of_the_briefs_size() -> None:
    template = ReadingTemplate.for_device("fwd0-d0007", "6650a1b2-0011aabb")
    payload = template.payload(123_456_789, 1_700_000_000_123)
    envelope = parse(template.topic.decode(), payload, now_ms=1_700_000_000_200)
    assert (envelope.device, envelope.seq, envelope.ts_ms) == ("fwd0-d0007", 123_456_789, 1_700_000_000_123)
    assert abs(len(payload) - TARGET_BYTES) <= 16
    assert parse_seq_ts(payload) == (123_456_789, 1_700_000_000_123)
    assert device_of(template.topic.decode()) == "fwd0-d0007"


def test_cpu_model_from_cpuinfo() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("") == "unknown"


def test_results_render_medians_runs_environment_and_targets() -> None:
    report = BenchReport(
        "forwarder",
        "sustained",
        ENV,
        figures=[Figure("ours msg/s", "msg/s", (21_000.0, 25_000.0, 22_000.0))],
        ratios=[Figure("ours/(a) msg/s", "x", (1.5,))],
        notes=["a note"],
    )
    text = render_report(report)
    assert "| ours msg/s | 22,000 | msg/s | 21,000, 25,000, 22,000 |" in text
    assert "| ours/(a) msg/s | 1.50x |" in text
    assert "2 cores, AMD EPYC" in text and "mosquitto 2.0.11" in text and "quick" in text
    reports = {"forwarder": report}
    items = verdicts(reports)
    assert len(items) == len(TARGETS)
    by_figure = {(v.target.bench, v.target.figure): v.status for v in items}
    assert by_figure[("forwarder", "ours msg/s")] == "pass"
    assert by_figure[("forwarder", "ours/(a) msg/s")] == "pass"
    assert by_figure[("drain", "ours drain time")] == "not measured"
    markdown = render_markdown(reports, render_targets(items), ["ceiling", "forwarder"])
    assert markdown.index("## Targets") < markdown.index("## forwarder")


def test_report_survives_a_json_round_trip() -> None:
    report = BenchReport("sensor", "1 Hz", ENV, [Figure("ours CPU", "%", (0.3,), "note")])
    assert BenchReport.from_json(report.to_json()) == report


def _templates(*devices: str) -> list[ReadingTemplate]:
    return [ReadingTemplate.for_device(device, BOOT) for device in devices]


def test_minted_packets_are_the_codecs_publishes_with_cycling_packet_ids() -> None:
    templates = _templates("ceil0-d0000", "ceil0-d0001", "ceil0-d0002")
    mint = PacketMint(templates)
    # Across seq 9 -> 10 (a longer packet) and packet id 65535 -> 1.
    first, count = 65_500, 100
    data = mint.packets(first, count, TS)
    publishes, _, _, consumed = parse_stream(data)
    assert consumed == len(data) and len(publishes) == count
    for i, publish in enumerate(publishes, start=first):
        template = templates[i % 3]
        assert (publish.topic, publish.qos, publish.packet_id) == (template.topic.decode(), 1, i % 65_535 + 1)
        assert publish.payload == template.payload(i // 3 + 1, TS)
    assert mint.packets(4, 1, TS) == encode_publish(templates[1].topic, templates[1].payload(2, TS), 1, 5)
    assert mint.packets(27, 1, TS) == encode_publish(templates[0].topic, templates[0].payload(10, TS), 1, 28)


def _acks(first: int, count: int) -> bytes:
    return b"".join(encode_puback(i % 65_535 + 1) for i in range(first, first + count))


@pytest.mark.parametrize(
    ("data", "done", "expected"),
    [
        (_acks(0, 70_000), 0, (70_000, 0, 280_000)),  # more than one turn of the packet ids
        (_acks(65_530, 10), 65_530, (10, 0, 40)),  # ids wrap from 65535 to 1
        (_acks(0, 3)[:-1], 0, (2, 0, 8)),  # the last PUBACK still arriving
        (encode_puback(1) + b"\x40\x03\x00\x02\x87" + encode_puback(3), 0, (2, 1, 13)),  # one refused
        (b"\x40\x03\x00\x01\x10" + encode_puback(2), 0, (2, 0, 9)),  # no subscribers: success-class
        (b"\xd0\x00" + encode_puback(8), 7, (1, 0, 6)),  # a PINGRESP among them
    ],
)
def test_pubacks_are_counted_in_bulk(data: bytes, done: int, expected: tuple[int, int, int]) -> None:
    assert count_pubacks(data, done) == expected


def test_pubacks_out_of_order_or_a_disconnect_raise() -> None:
    with pytest.raises(ProtocolError, match="expected 1"):
        count_pubacks(encode_puback(2), 0)
    with pytest.raises(ConnectionError, match="disconnected"):
        count_pubacks(encode_puback(1) + DISCONNECT_PACKET, 0)


def test_tally_counts_dedups_and_times_live_readings() -> None:
    templates = _templates("ceil0-d0000", "ceil0-d0001", "live0-d0000")
    data = PacketMint(templates).packets(0, 3000, TS)
    result = CountResult()
    tally = Tally(result)
    cut = len(data) - 5  # the last packet arrives in two reads
    consumed, ids, new = tally.scan(data[:cut], TS + 7)
    assert (result.received, new, result.live_unique) == (2999, 2000, 999)
    assert ids == [(i + 1).to_bytes(2, "big") for i in range(2999)]
    assert result.live_latency[:2] == [(TS, 7), (TS, 7)]
    rest, ids, new = tally.scan(data[consumed:], TS + 7)
    assert (consumed + rest, ids, new, result.live_unique) == (len(data), [(3000).to_bytes(2, "big")], 0, 1000)
    tally.scan(data[:1000], TS)  # the same readings again: all repeats
    assert (result.unique, result.duplicates) == (2000, len(parse_stream(data[:1000])[0]))


def test_tally_reads_publishes_laid_out_otherwise() -> None:
    result = CountResult()
    tally = Tally(result)
    topic = b"saltmarsh/v1/bench/fwd0-d0001/reading"
    usual = ReadingTemplate.for_device("fwd0-d0001", BOOT).payload(5, TS)
    reordered = b'{"ts":%d,"seq":6,"device":"fwd0-d0001"}' % TS
    spaced = b'{"seq": 7, "ts": %d}' % TS
    with_props = encode_publish(topic, usual.replace(b'"seq":5', b'"seq":8'), 1, 9, props=b"\x02\x01\x01")
    data = b"".join(
        (
            encode_publish(topic, usual, 1, 1),
            encode_publish(topic, reordered, 1, 2),
            encode_publish(topic, spaced, 0),
            with_props,
            encode_publish(topic, usual, 1, 3, dup=True),  # a resend
        )
    )
    consumed, ids, new = tally.scan(data, TS)
    assert (consumed, new, result.duplicates) == (len(data), 4, 1)
    assert ids == [b"\x00\x01", b"\x00\x02", b"\x00\x09", b"\x00\x03"]
    with pytest.raises(ConnectionError, match="disconnected"):
        tally.scan(DISCONNECT_PACKET, TS)


def test_es_and_relay_benches_are_registered() -> None:
    assert {"es", "relay"} <= set(BENCHES)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"url": "http://127.0.0.1:40123", "pid": 7}\n', "http://127.0.0.1:40123"),
        ("osmem-server listening\n", None),
        ('{"status": "ready"}\n', None),
        ('["http://127.0.0.1:1"]\n', None),
    ],
)
def test_osmem_ready_line(line: str, expected: str | None) -> None:
    assert ready_url(line) == expected


def test_es_bench_readings_are_valid_and_the_peer_writes_them_where_ours_does() -> None:
    now_ms = TS + 5000
    deliveries = es.mint_deliveries(7, BOOT, now_ms, devices=3)
    keys = [d.envelope.key for d in deliveries]
    assert len(set(keys)) == 7
    assert [d.envelope.device for d in deliveries[:4]] == ["es-d0000", "es-d0001", "es-d0002", "es-d0000"]
    assert [d.envelope.seq for d in deliveries[:4]] == [0, 0, 0, 1]
    assert all(d.received_ms == now_ms and d.gateway == es.GATEWAY for d in deliveries)
    actions = list(es.peer_actions("bench-peer", deliveries))
    assert [a["_id"] for a in actions] == keys
    assert {a["_op_type"] for a in actions} == {"index"}
    assert actions[0]["_index"] == monthly_index("bench-peer", READINGS, deliveries[0].envelope.ts_ms)
    assert actions[0]["_source"]["saltmarsh"]["key"] == keys[0]
    assert [len(b) for b in es.batches(deliveries, 3)] == [3, 3, 1]


def test_es_bound_note_names_the_process_that_spends_more_per_reading() -> None:
    assert "the emulator, not the sink, is the bound" in es.bound_note(40.0, 400.0, 98.0, 2300.0)
    assert "the sink, not the emulator, is the bound" in es.bound_note(400.0, 40.0, 20.0, 2300.0)
    assert "no CPU figures" in es.bound_note(math.nan, 1.0, 1.0, 1.0)


def test_job_returns_are_relayed_distinct_events_with_their_minion_and_jid() -> None:
    stamp = "2026-01-01T10:00:00.123456"
    router = Router(Globs(DEFAULT_RELAY_TAGS), Selection())
    events = job_returns(MINIONS + 1, stamp)
    docs = [event_document(tag, data, TS) for tag, data in events]
    assert all(router.sinks(tag) == {ELASTICSEARCH} for tag, _ in events)
    assert len({event_id(doc) for doc in docs}) == len(events)
    tag, data = job_return(MINIONS + 1, stamp)
    doc = event_document(tag, data, TS)
    assert tag == f"salt/job/{data['jid']}/ret/gw-0001"
    assert (doc["minion_id"], doc["jid"], doc["fun"], doc["success"], doc["retcode"]) == (
        "gw-0001",
        data["jid"],
        "state.apply",
        True,
        0,
    )
    # Dots in state ids become '_' in the stored form; the shared return is left as it was.
    assert all("." not in key for key in doc["data"]["return"])
    assert any("." in key for key in data["return"])
    assert 600 < len(encode(0, fleet_event("p", doc)).lines) < 2500


def test_relay_bench_uses_the_engine_defaults_and_a_fake_store_that_encodes() -> None:
    cfg = relay.bench_config(Path("/tmp/spool"), 50_000, "http://127.0.0.1:9")
    assert (cfg.queue_max, cfg.batch_max_events, cfg.flush_interval_ms) == (50_000, 1000, 500)
    assert cfg.elasticsearch.hosts == ("http://127.0.0.1:9",) and cfg.elasticsearch.plain_json
    assert cfg.kinesis is None
    store = relay.EncodingStore()
    docs = [fleet_event("p", event_document(tag, data, TS)) for tag, data in job_returns(3, "2026-01-01T10:00:00")]
    assert store.index_documents(docs).created == 3
    assert store.created == 3 and store.encoded_bytes == sum(len(encode(i, d).lines) for i, d in enumerate(docs))


def test_relay_bus_note_compares_with_the_bus_rate() -> None:
    assert "not the bound" in relay.bus_note(2000.0)
    assert "IS the bound" in relay.bus_note(100.0)
    assert "~300 events/s" in relay.bus_note(math.nan)


def test_site_rate_window_divides_what_each_process_used_by_the_readings_published() -> None:
    usage = {"forwarder": Usage(0.01, 250, 409_600, 0.011), "gateway broker": Usage(0.005, 100, 0, 0.004)}
    window = site_rate.Window(published=100, wall_s=2.0, usage=usage, total=103)
    assert window.cpu_us("forwarder") == pytest.approx(100.0)
    assert window.cpu_us("forwarder", "gateway broker") == pytest.approx(150.0)
    assert (window.wakeups("forwarder"), window.disk_bytes("forwarder"), window.offered) == (2.5, 4096.0, 50.0)


def test_site_rate_targets_name_figures_and_ratios_the_bench_reports() -> None:
    assert "site_rate" in BENCHES
    figures = {"gateway total CPU/msg at 100/s": 300.0, "native bridge CPU/msg at 100/s": 100.0}
    ratios = {f.name: f.value for f in site_rate.gateway_ratios(lambda name: figures.get(name, math.nan))}
    assert ratios["gateway total/native at 100/s"] == pytest.approx(3.0)
    assert math.isnan(ratios["gateway total/native at 1,000/s"])
    reported = set(site_rate.figure_table()) | set(ratios)
    assert {t.figure for t in TARGETS if t.bench == "site_rate"} <= reported


def test_site_rate_says_where_the_sensor_agent_fell_short() -> None:
    report = BenchReport(
        "site_rate",
        "site",
        ENV,
        [
            Figure("sensor readings/s at 100/s", "readings/s", (100.0,)),
            Figure("sensor readings/s at 1,000/s", "", (900.0,)),
        ],
    )
    [note] = site_rate.sensor_notes(report)
    assert "asked for 1,000 readings/s" in note and "reached only 900/s" in note


def test_sink_outage_counts_the_rows_of_readings_published_before_the_sink_came_back() -> None:
    # 3 devices, 7 acknowledged: reading i is device i % 3, seq i // 3 + 1, as the load generator mints it.
    published = sink_outage.Published("so0", 3, 7)
    minted = [(i % 3, i // 3 + 1) for i in range(10)]
    assert [published.holds(d, seq) for d, seq in minted] == [True] * 7 + [False] * 3
    backlog = sink_outage.Backlog([published, sink_outage.Published("so1", 3, 0)])
    backlog.add([(device_id("so0", d), seq) for d, seq in minted[5:]] + [(device_id("so1", 0), 1), ("x-d0000", 1)])
    assert (backlog.expected, backlog.stored, backlog.done) == (7, 2, False)
    backlog.add([(device_id("so0", d), seq) for d, seq in minted[:5]])
    assert (backlog.stored, backlog.done) == (7, True)


def test_sink_outage_memory_is_the_peak_after_the_warm_up_against_its_last_sample() -> None:
    samples = [
        sink_outage.Sample(sink_outage.WARM_UP, 9_000_000, 4_000_000),
        sink_outage.Sample(sink_outage.WARM_UP, 10_000_000, 5_000_000),
        sink_outage.Sample(sink_outage.OUTAGE, 22_000_000, 5_500_000, 30_000, 20_000),
        sink_outage.Sample(sink_outage.AFTER, 18_000_000, 5_000_000),
    ]
    assert sink_outage.memory_figures("ours", samples) == pytest.approx(
        {
            "ours cloud broker RSS before": 10.0,
            "ours cloud broker RSS peak": 22.0,
            "ours cloud broker RSS growth": 12.0,
            "ours gateway broker RSS growth": 0.5,
        }
    )


def test_sink_outage_targets_name_figures_and_ratios_the_bench_reports() -> None:
    assert "sink_outage" in BENCHES
    figures = {
        "ours cloud broker RSS growth": 10.0,
        "(b) cloud broker RSS growth": 200.0,
        "(a) delivered after the counter came back": 1_000.0,
        "(a) published after the counter stopped": 40_000.0,
    }
    ratios = {f.name: f.value for f in sink_outage.outage_ratios(lambda name: figures.get(name, math.nan))}
    assert ratios["ours/(b) cloud broker RSS growth"] == pytest.approx(0.05)
    assert ratios["(a) delivered/published after the stop"] == pytest.approx(0.025)
    assert math.isnan(ratios["ours/(a) cloud broker RSS growth"])
    report = BenchReport("sink_outage", "outage", ENV, [Figure("ours drain time", "s", (61.0, 63.0))])
    [drain] = sink_outage.target_figures(report)
    assert (drain.name, drain.runs) == ("drain time after a 5 min outage", (61.0, 63.0))
    reported = set(sink_outage.figure_table()) | set(ratios) | set(sink_outage.TARGET_FIGURES.values())
    assert {t.figure for t in TARGETS if t.bench == "sink_outage"} <= reported


def test_ble_bench_counts_what_the_recording_airs_in_a_window_and_names_its_targets_figures() -> None:
    assert ble.ISSUE_RATE.label == "at 200 devices / 2 s"
    assert ble.ISSUE_RATE.advertisements_per_s == 200.0 and ble.SITE_RATE.advertisements_per_s == 8.0
    air = ble.Air((0.0, 0.1, 1.0, 1.1, 2.5), measurements=3)
    assert air.aired_between(100.0, 100.0, 101.0) == 2  # [t0, t1): 1.0 is the next window's
    assert air.aired_between(100.0, 100.05, 102.6) == 4
    assert air.aired_between(100.0, 90.0, 99.0) == 0
    window = ble.Window(advertisements=200, wall_s=1.0, ours_cpu_s=0.1, peer_cpu_s=0.05, readings=100)
    assert (window.cpu_us(window.ours_cpu_s), window.percent(window.peer_cpu_s)) == pytest.approx((500.0, 5.0))
    assert window.readings_per_advertisement == 0.5
    figures = {
        "ours CPU/advertisement at 200 devices / 2 s": 600.0,
        "peer CPU/advertisement at 200 devices / 2 s": 200.0,
    }
    ratios = {f.name: f.value for f in ble.ble_ratios(lambda name: figures.get(name, math.nan))}
    assert ratios["ours/peer CPU/advertisement at 200 devices / 2 s"] == pytest.approx(3.0)
    assert math.isnan(ratios["ours/peer RSS at 20 devices / 5 s"])
    assert {t.figure for t in TARGETS if t.bench == "ble"} <= set(ble.figure_table()) | set(ratios)
    assert "ble" in BENCHES


def test_ble_bench_config_is_one_the_collector_loads(tmp_path: Path) -> None:
    devices = sim_devices(4, interval_s=2.0)  # the 4th is encrypted: its bindkey goes in a 0600 file
    with Lab("smoke-ble") as lab:
        doc = ble_doc(lab, 1883, devices, tmp_path / "air.jsonl", start_s=1_800_000_000.0, expected_interval_s=60.0)
        cfg = load_ble_config(lab.config("ble", doc))
    assert cfg.collector == BLE_COLLECTOR_ID and len(cfg.devices) == 4
    assert (cfg.scan.backend, cfg.scan.replay_speed, cfg.scan.replay_start_s) == ("replay", 1.0, 1_800_000_000.0)
    assert [d.bindkey_bytes is not None for d in cfg.devices] == [False, False, False, True]


def test_ble_peer_counts_a_replay_it_plays_in_real_time(tmp_path: Path) -> None:
    recording = tmp_path / "air.jsonl"
    air = ble.write_air(recording, ble.Rate(10, 1.0), duration_s=1.0)
    log = tmp_path / "peer.log"
    peer = ServiceProcess.python_module("ble-peer", "bench.ble_peer", [str(recording), repr(time.time() + 0.5)], log)
    assert peer.start().wait(15.0) == 0, peer.log_tail()
    result = ble.peer_result(log)
    assert (result["counted"], result["missed"]) == (air.advertisements, 0) and air.advertisements == 20
    assert ble.peer_result(tmp_path / "absent.log") == {}
