"""The Elasticsearch sink against a live backend: osmem-server always, a real cluster when
SALTMARSH_TEST_ES_URL is set. Faults (busy cluster, refused items, outages) come from a proxy
in front of the backend, so every count below is checked against what the cluster really holds."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from saltmarsh.contract.command_state import CommandOutcome, CommandState
from saltmarsh.contract.envelope import Envelope, Location
from saltmarsh.contract.errors import Reason, SinkUnavailable
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.contract.topics import Channel
from saltmarsh.ops.audit import run_audit
from saltmarsh.sinks.base import AuditSource, DeadLetter, Delivery, Sink, StoredKey, WriteResult
from saltmarsh.sinks.elasticsearch.bulk import BulkDoc
from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink
from saltmarsh.sinks.elasticsearch.templates import FLEET_EVENTS, monthly_index, policy_name
from tests import es_support
from tests.es_support import EsBackend, FaultProxy

# Bound here so pytest finds them: es_backend is osmem, plus a real cluster when
# SALTMARSH_TEST_ES_URL is set; es_prefix and es_client are per test.
es_backend = es_support.es_backend
es_prefix = es_support.es_prefix
es_client = es_support.es_client

JAN_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
FEB_MS = 1_706_745_600_000  # 2024-02-01T00:00:00Z


def reading(device: str, seq: int, ts_ms: int, boot: str = "b1", metrics: dict[str, float] | None = None) -> Envelope:
    return Envelope(Channel.READING, device, "marsh-1", boot, seq, ts_ms, metrics or {"temperature": 20.0 + seq / 10})


def deliver(*envelopes: Envelope, gateway: str = "gw-1") -> list[Delivery]:
    return [Delivery(env, env.ts_ms + 1500, gateway) for env in envelopes]


def batch(device: str, seqs: range, ts_ms: int = JAN_MS) -> list[Delivery]:
    return deliver(*(reading(device, seq, ts_ms + seq * 1000) for seq in seqs))


def count(client: Elasticsearch, index: str) -> int:
    client.indices.refresh(index=index, allow_no_indices=True)
    return int(client.count(index=index, allow_no_indices=True)["count"])


def ids_in(client: Elasticsearch, index: str) -> list[str]:
    client.indices.refresh(index=index, allow_no_indices=True)
    hits = client.search(index=index, size=10_000, query={"match_all": {}})["hits"]["hits"]
    return sorted(str(hit["_id"]) for hit in hits)


@pytest.fixture
def open_sink(es_backend: EsBackend, es_prefix: str) -> Iterator[Any]:
    """Opens sinks on this test's prefix, directly or through a proxy; all closed at teardown."""
    opened: list[ElasticsearchSink] = []

    def make(proxy: FaultProxy | None = None, **overrides: Any) -> ElasticsearchSink:
        url = es_backend.behind_proxy(proxy) if proxy is not None else None
        cfg = es_backend.config(es_prefix, url, **overrides)
        sink = ElasticsearchSink(cfg, client=es_backend.client(cfg.hosts[0]))
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        sink.client.close()


@pytest.fixture
def proxy(es_backend: EsBackend) -> Iterator[FaultProxy]:
    relay = FaultProxy(es_backend.url)
    yield relay
    relay.stop()


def test_templates_mappings_and_aliases_are_in_place(open_sink: Any, es_client: Elasticsearch, es_prefix: str) -> None:
    sink = open_sink()
    for family in ("readings", "deadletter", "fleet-events"):
        found = es_client.indices.get_index_template(name=f"{es_prefix}-{family}")["index_templates"]
        assert found[0]["index_template"]["index_patterns"] == [f"{es_prefix}-{family}-*"]
    alert = Envelope(
        Channel.ALERT, "probe-1", "marsh-1", "b1", 2, JAN_MS, {"temperature": 41.0}, name="threshold",
        model="HW-MD202", location=Location(43.1, -8.4, "garden"),
    )  # fmt: skip
    assert sink.write(deliver(reading("probe-1", 1, JAN_MS), alert), []) == WriteResult(2, 0, 0)
    index = f"{es_prefix}-readings-2024.01"
    props = es_client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert props["metrics"]["properties"]["temperature"]["type"] == "float"
    assert props["@timestamp"]["type"] == "date"
    assert props["location"]["type"] == "geo_point"
    assert props["device"]["properties"]["id"]["type"] == "keyword"
    assert props["saltmarsh"]["properties"]["seq"]["type"] == "long"
    # The alias spans every month, for a Kibana data view.
    assert count(es_client, f"{es_prefix}-readings") == 2
    stored = es_client.get(index=index, id="probe-1:b1:2")["_source"]
    assert stored["event"] == {
        "kind": "alert",
        "dataset": "saltmarsh.alert",
        "action": "threshold",
        "ingested": "2024-01-01T00:00:01.500Z",
    }
    assert (stored["location"], stored["location_name"]) == ({"lat": 43.1, "lon": -8.4}, "garden")
    assert (stored["saltmarsh"]["gateway"], stored["saltmarsh"]["delivery_delay_ms"]) == ("gw-1", 1500)


def test_retention_policy_is_used_where_the_cluster_has_ilm(
    open_sink: Any, es_backend: EsBackend, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink(ilm_delete_after_days=30)
    assert sink.why == ""
    template = es_client.indices.get_index_template(name=f"{es_prefix}-readings")["index_templates"][0]
    settings = template["index_template"]["template"].get("settings", {})
    lifecycle = settings.get("index", {}).get("lifecycle", {}).get("name")
    if es_backend.name == "osmem":
        assert lifecycle is None  # no ILM in the emulator: templates go in without a policy
    else:
        assert lifecycle == policy_name(es_prefix)
        assert policy_name(es_prefix) in es_client.ilm.get_lifecycle(name=policy_name(es_prefix))


def test_readings_land_in_the_month_of_their_own_timestamp(
    open_sink: Any, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink()
    # Written in one batch, interleaved: the index follows each reading's ts, not the write time.
    late_and_early = deliver(
        reading("probe-1", 1, FEB_MS - 1), reading("probe-1", 2, FEB_MS), reading("probe-2", 1, FEB_MS - 86_400_000)
    )
    assert sink.write(late_and_early, []) == WriteResult(3, 0, 0)
    assert ids_in(es_client, f"{es_prefix}-readings-2024.01") == ["probe-1:b1:1", "probe-2:b1:1"]
    assert ids_in(es_client, f"{es_prefix}-readings-2024.02") == ["probe-1:b1:2"]
    # A late duplicate of a January reading arrives in February: same index, same _id, no copy.
    assert sink.write(deliver(reading("probe-1", 1, FEB_MS - 1)), []) == WriteResult(0, 1, 0)
    assert count(es_client, f"{es_prefix}-readings-*") == 3


@pytest.mark.parametrize(
    ("first", "second", "expected_second"),
    [
        (range(1, 101), range(1, 101), WriteResult(0, 100, 0)),
        (range(1, 101), range(51, 151), WriteResult(50, 50, 0)),
        (range(1, 11), range(11, 21), WriteResult(10, 0, 0)),
    ],
    ids=["exact-replay", "overlapping-replay", "no-overlap"],
)
def test_replays_are_counted_as_duplicates_and_stored_once(
    open_sink: Any, es_client: Elasticsearch, first: range, second: range, expected_second: WriteResult
) -> None:
    sink = open_sink(batch_max_docs=30)
    es_prefix = sink.prefix
    assert sink.write(batch("probe-1", first), []) == WriteResult(len(first), 0, 0)
    assert sink.write(batch("probe-1", second), []) == expected_second
    assert count(es_client, f"{es_prefix}-readings-*") == len(set(first) | set(second))


def test_the_same_key_twice_in_one_batch_keeps_the_first(
    open_sink: Any, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink()
    env = reading("probe-1", 7, JAN_MS)
    assert sink.write([Delivery(env, JAN_MS + 10, "gw-1"), Delivery(env, JAN_MS + 20, "gw-2")], []) == WriteResult(
        1, 1, 0
    )
    source = es_client.get(index=f"{es_prefix}-readings-2024.01", id="probe-1:b1:7")["_source"]
    assert source["saltmarsh"]["gateway"] == "gw-1"


def _dotted_metric_clash(client: Elasticsearch, prefix: str) -> tuple[list[Delivery], str]:
    # "wind" is a float, so "wind.speed" cannot also exist under it in the same index.
    clashing = reading("probe-1", 2, JAN_MS, metrics={"wind.speed": 4.0})
    return deliver(reading("probe-1", 1, JAN_MS, metrics={"wind": 3.0}), clashing), "metrics.wind.speed"


def _index_mapped_by_hand(client: Elasticsearch, prefix: str) -> tuple[list[Delivery], str]:
    # An operator created this month's index with a conflicting explicit mapping.
    client.indices.create(
        index=f"{prefix}-readings-2024.01",
        mappings={"properties": {"metrics": {"properties": {"humidity": {"type": "boolean"}}}}},
    )
    return deliver(
        reading("probe-1", 1, JAN_MS), reading("probe-1", 2, JAN_MS, metrics={"humidity": 55.5})
    ), "metrics.humidity"


@pytest.mark.parametrize("make_conflict", [_dotted_metric_clash, _index_mapped_by_hand])
def test_a_message_elasticsearch_refuses_becomes_a_dead_letter_once(
    open_sink: Any, es_client: Elasticsearch, es_prefix: str, make_conflict: Any
) -> None:
    sink = open_sink()
    deliveries, field = make_conflict(es_client, es_prefix)
    assert sink.write(deliveries, []) == WriteResult(written=1, duplicates=0, dead_letters=1)
    # The replay stores neither a second reading nor a second dead letter.
    assert sink.write(deliveries, []) == WriteResult(written=0, duplicates=1, dead_letters=1)
    assert ids_in(es_client, f"{es_prefix}-readings-*") == ["probe-1:b1:1"]
    letters = es_client.search(index=f"{es_prefix}-deadletter-2024.01", query={"match_all": {}})["hits"]["hits"]
    assert len(letters) == 1
    assert letters[0]["_id"] == "sink_rejected:probe-1:b1:2"
    letter = letters[0]["_source"]
    assert (letter["reason"], letter["field"], letter["topic"]) == (
        "sink_rejected",
        field,
        "saltmarsh/v1/marsh-1/probe-1/reading",
    )
    assert letter["payload"] == deliveries[1].envelope.encode().decode()
    assert letter["error"]["status"] == 400
    assert sink.dead_letter_counts() == {"sink_rejected": 1}


def test_a_timestamp_beyond_any_calendar_month_becomes_a_dead_letter(open_sink: Any, es_client: Elasticsearch) -> None:
    sink = open_sink()
    # Past year 9999 yet within the envelope's ts bound (2**53 - 1); only a very loose
    # max_future_skew_s lets this through.
    far_future = reading("probe-1", 2, 2**53 - 1)
    received = Delivery(far_future, FEB_MS, "gw-1")
    assert sink.write([*batch("probe-1", range(1, 2)), received], []) == WriteResult(1, 0, 1)
    letter = es_client.get(index=f"{sink.prefix}-deadletter-2024.02", id="sink_rejected:probe-1:b1:2")["_source"]
    assert letter["detail"].startswith("timestamp_out_of_range: ")
    assert sink.dead_letter_counts() == {"sink_rejected": 1}


def test_dead_letters_from_the_ingester_are_stored_with_the_batch(
    open_sink: Any, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink()
    letters = [
        DeadLetter.of(
            JAN_MS,
            "saltmarsh/v1/marsh-1/probe-1/reading",
            b"{}",
            reason=Reason.WRONG_TYPE,
            field="seq",
            detail="expected integer",
        ),
        DeadLetter.of(
            FEB_MS,
            "saltmarsh/v1/marsh-1/probe-2/reading",
            b"\xff\xfe",
            reason=Reason.NOT_UTF8,
            field="payload",
            detail="bad byte",
        ),
        DeadLetter.of(FEB_MS + 1, "not/a/topic", b"x", reason=Reason.UNKNOWN_TOPIC, field="topic", detail="unknown"),
    ]
    assert sink.write(batch("probe-1", range(1, 6)), letters) == WriteResult(5, 0, 3)
    assert sink.write(batch("probe-1", range(1, 6)), letters) == WriteResult(0, 5, 3)  # a retried batch
    assert count(es_client, f"{es_prefix}-deadletter-*") == 3
    assert count(es_client, f"{es_prefix}-deadletter-2024.02") == 2
    assert sink.dead_letter_counts() == {"not_utf8": 1, "unknown_topic": 1, "wrong_type": 1}


@pytest.mark.parametrize(
    ("fault", "expected_requests"),
    [
        (lambda p: p.refuse_items(429, times=2, ids={"probe-1:b1:3", "probe-1:b1:7"}), [10, 2, 2]),
        (lambda p: p.refuse_items(503, times=1), [10, 10]),
        (lambda p: p.refuse_items(502, times=3, ids={"probe-1:b1:10"}), [10, 1, 1, 1]),
        (lambda p: p.refuse_requests(429, count=2), [10]),  # refused whole, never reached the items
        (lambda p: p.refuse_requests(503, count=1), [10]),
    ],
    ids=["items-429", "all-items-503", "one-item-502-x3", "request-429", "request-503"],
)
def test_a_busy_cluster_gets_only_the_refused_documents_again(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, fault: Any, expected_requests: list[int]
) -> None:
    sink = open_sink(proxy, retry_max=3)
    es_prefix = sink.prefix
    fault(proxy)
    assert sink.write(batch("probe-1", range(1, 11)), []) == WriteResult(10, 0, 0)
    assert proxy.bulk_item_counts == expected_requests
    assert count(es_client, f"{es_prefix}-readings-*") == 10
    assert sink.why == ""


def test_retries_run_out_then_the_same_batch_completes_without_duplicates(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink(proxy, retry_max=2)
    stubborn = {"probe-1:b1:2", "probe-1:b1:5", "probe-1:b1:9"}
    proxy.refuse_items(429, times=100, ids=stubborn)
    deliveries = batch("probe-1", range(1, 11))
    with pytest.raises(SinkUnavailable, match="3 of 10 documents still not stored after 2 retries"):
        sink.write(deliveries, [])
    assert "429" in sink.why
    assert proxy.bulk_item_counts == [10, 3, 3]
    assert count(es_client, f"{es_prefix}-readings-*") == 7
    proxy.heal()
    assert sink.write(deliveries, []) == WriteResult(written=3, duplicates=7, dead_letters=0)
    assert count(es_client, f"{es_prefix}-readings-*") == 10
    assert sink.why == ""


def test_cluster_down_acks_nothing_and_the_same_batch_goes_through_when_it_is_back(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink(proxy)
    assert sink.write(batch("probe-1", range(1, 6)), []) == WriteResult(5, 0, 0)
    proxy.stop()
    held = batch("probe-1", range(6, 56))
    for _ in range(3):  # the ingester keeps retrying the same unacked batch
        with pytest.raises(SinkUnavailable, match="unreachable"):
            sink.write(held, [])
    assert "unreachable" in sink.why
    assert count(es_client, f"{es_prefix}-readings-*") == 5
    proxy.start()
    assert sink.write(held, []) == WriteResult(50, 0, 0)
    assert count(es_client, f"{es_prefix}-readings-*") == 55
    assert sink.why == ""


def test_a_cluster_dying_mid_batch_loses_and_duplicates_nothing(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink(proxy, batch_max_docs=50)
    deliveries = batch("probe-1", range(1, 201))
    proxy.drop_after_bulks(2)
    with pytest.raises(SinkUnavailable):
        sink.write(deliveries, [])
    assert count(es_client, f"{es_prefix}-readings-*") == 100  # two bulk requests of 50 made it
    proxy.heal()
    assert sink.write(deliveries, []) == WriteResult(written=100, duplicates=100, dead_letters=0)
    report = run_audit(sink.stored_keys(), {"probe-1": ("b1", 200)})
    assert (report.readings, report.lost, report.duplicated) == (200, 0, 0)


def test_a_sink_opened_during_an_outage_installs_its_templates_before_the_first_write(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, es_prefix: str
) -> None:
    proxy.stop()
    sink = open_sink(proxy)  # the ingester must be able to start while the cluster is down
    assert "cannot install index templates" in sink.why
    with pytest.raises(SinkUnavailable):
        sink.write(batch("probe-1", range(1, 3)), [])
    proxy.start()
    assert sink.write(batch("probe-1", range(1, 3)), []) == WriteResult(2, 0, 0)
    index = f"{es_prefix}-readings-2024.01"
    props = es_client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert props["metrics"]["properties"]["temperature"]["type"] == "float"  # not a guessed mapping


def test_a_read_only_sink_refuses_writes(es_backend: EsBackend, es_prefix: str) -> None:
    sink = ElasticsearchSink(es_backend.config(es_prefix), client=es_backend.client(), read_only=True)
    protocols: tuple[Sink, AuditSource] = (sink, sink)  # mypy checks that it is both
    assert protocols[0].name == "elasticsearch"
    with contextlib.closing(sink):
        with pytest.raises(SinkUnavailable, match="read-only"):
            sink.write(batch("probe-1", range(1, 2)), [])
        assert list(sink.stored_keys()) == []
        assert sink.dead_letter_counts() == {}


def test_fleet_events_go_through_the_same_bulk_path(open_sink: Any, es_client: Elasticsearch, es_prefix: str) -> None:
    sink = open_sink()
    events = [
        BulkDoc(
            monthly_index(es_prefix, FLEET_EVENTS, JAN_MS + i),
            f"salt/job/2024{i}/ret/gw-{i}",
            {
                "@timestamp": "2024-01-01T00:00:00.000Z",
                "tag": f"salt/job/2024{i}/ret/gw-{i}",
                "minion_id": f"gw-{i}",
                "fun": "state.apply",
                "jid": f"2024{i}",
                "success": i % 2 == 0,
                "retcode": i % 2,
                "data": [{"any": "shape"}, 1] if i else "scalar",
            },
        )
        for i in range(4)
    ]
    assert (sink.index_documents(events).created, sink.index_documents(events).duplicates) == (4, 4)
    assert count(es_client, f"{es_prefix}-fleet-events") == 4
    es_client.indices.refresh(index=f"{es_prefix}-fleet-events-*")
    failed = es_client.count(index=f"{es_prefix}-fleet-events-*", query={"term": {"success": False}})
    assert failed["count"] == 2


def test_audit_streams_ten_thousand_of_keys_in_order(open_sink: Any, es_client: Elasticsearch, es_prefix: str) -> None:
    sink = open_sink(batch_max_docs=2000)
    sink.audit_page_size = 1500
    rng = random.Random(7)
    envelopes = []
    for device in ("probe-a", "probe-b", "probe-c", "probe-d"):
        for boot in ("b1", "b2"):
            # 1250 per boot, months interleaved, seq 700 never arrives for probe-b/b2.
            for seq in range(1, 1251):
                if (device, boot, seq) != ("probe-b", "b2", 700):
                    envelopes.append(reading(device, seq, (JAN_MS if seq % 2 else FEB_MS) + seq, boot=boot))
    rng.shuffle(envelopes)
    deliveries = deliver(*envelopes)
    for start in range(0, len(deliveries), 4000):
        sink.write(deliveries[start : start + 4000], [])
    keys = list(sink.stored_keys())
    assert len(keys) == 9_999
    assert keys == sorted(keys, key=lambda k: (k.device, k.boot, k.seq))
    assert keys[0] == StoredKey("probe-a", "b1", 1, JAN_MS + 1)
    assert keys[1] == StoredKey("probe-a", "b1", 2, FEB_MS + 2)
    report = run_audit(keys, dead_letters=sink.dead_letter_counts())
    assert (report.readings, report.lost, report.duplicated) == (9_999, 1, 0)
    gap = report.device("probe-b").gaps[0]
    assert (gap.boot, gap.first_missing, gap.last_missing) == ("b2", 700, 700)


def test_a_command_outcome_is_stored_with_its_command(open_sink: Any, es_client: Elasticsearch, es_prefix: str) -> None:
    outcome = CommandOutcome(
        "01HF7YAT00XGHYZ3KT8V94F16P", "r-1", CommandState.FAILED, reason="no reading", result={"tries": 3}
    )
    env = mint_cmdres(device="probe-1", site="marsh-1", boot="b1", seq=5, ts_ms=FEB_MS, outcome=outcome)
    sink = open_sink()
    assert sink.write([Delivery(env, FEB_MS + 10)], []) == WriteResult(1, 0, 0)
    es_client.indices.refresh(index=f"{es_prefix}-readings-*")
    (hit,) = es_client.search(index=f"{es_prefix}-readings-*", query={"match_all": {}})["hits"]["hits"]
    assert hit["_source"]["saltmarsh"]["command"] == outcome.to_json()
    assert hit["_source"]["event"]["action"] == "failed"


def cmdres(seq: int, state: CommandState) -> Delivery:
    outcome = CommandOutcome(
        "01HF7YAT00XGHYZ3KT8V94F16P",
        "r-1",
        state,
        reason="superseded" if state is CommandState.CANCELED else None,
        result={"tries": seq} if state is CommandState.SUCCEEDED else {},
    )
    env = mint_cmdres(device="probe-1", site="marsh-1", boot="b1", seq=seq, ts_ms=FEB_MS + seq, outcome=outcome)
    return Delivery(env, FEB_MS + seq + 10)


STATE_ID = "01HF7YAT00XGHYZ3KT8V94F16P/probe-1"


def test_a_targets_state_is_versioned_by_rank_so_a_later_lower_or_equal_one_is_ignored(
    open_sink: Any, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink()
    S = CommandState
    # (outcome, the state the cluster holds after it): a late DELIVERED and a CANCELED that
    # crossed the result are 409s, counted as stale, and each message is still stored once.
    steps = [
        (S.RUNNING, S.RUNNING),
        (S.DELIVERED, S.RUNNING),
        (S.TIMED_OUT, S.TIMED_OUT),
        (S.SUCCEEDED, S.SUCCEEDED),
        (S.CANCELED, S.SUCCEEDED),
        (S.RUNNING, S.SUCCEEDED),
    ]
    for seq, (state, held) in enumerate(steps, start=1):
        assert sink.write([cmdres(seq, state)], []) == WriteResult(1, 0, 0), state
        stored = es_client.get(index=f"{es_prefix}-commands", id=STATE_ID)
        assert (stored["_source"]["state"], stored["_version"]) == (held.value, held.rank), state
    assert (sink.command_states_stored, sink.command_states_stale) == (3, 3)
    (record,) = sink.command_states("r-1")
    assert (record.state, record.reported_by, record.result_json) == ("succeeded", "probe-1/b1/4", '{"tries":4}')
    assert count(es_client, f"{es_prefix}-readings-*") == len(steps)
    # One index for every rollout, mapped by our template, not guessed.
    template = es_client.indices.get_index_template(name=f"{es_prefix}-commands")["index_templates"][0]
    assert template["index_template"]["index_patterns"] == [f"{es_prefix}-commands"]
    props = es_client.indices.get_mapping(index=f"{es_prefix}-commands")[f"{es_prefix}-commands"]["mappings"]
    types = {name: spec.get("type", "object") for name, spec in props["properties"].items()}
    assert types == {
        **dict.fromkeys(("cmd_id", "device", "rollout", "site", "state", "hop", "reported_by"), "keyword"),
        **dict.fromkeys(("rank", "ts_ms", "received_ms"), "long"),
        "final": "boolean",
        "reason": "text",
        "result": "object",
    }
    assert props["properties"]["reason"]["fields"]["keyword"]["type"] == "keyword"
    assert props["properties"]["result"]["enabled"] is False


def test_a_busy_cluster_gets_only_the_refused_command_state_again(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink(proxy, retry_max=3)
    proxy.refuse_items(429, times=2, ids={STATE_ID})
    assert sink.write([cmdres(1, CommandState.SUCCEEDED)], []) == WriteResult(1, 0, 0)
    assert proxy.bulk_item_counts == [2, 1, 1]  # the message and its state in one request
    assert es_client.get(index=f"{es_prefix}-commands", id=STATE_ID)["_source"]["state"] == "succeeded"
    assert (sink.command_states_stored, sink.command_states_stale) == (1, 0)


def test_a_refused_command_state_fails_the_batch_and_dead_letters_nothing(
    open_sink: Any, proxy: FaultProxy, es_client: Elasticsearch, es_prefix: str
) -> None:
    sink = open_sink(proxy)
    proxy.refuse_items(400, times=1, ids={STATE_ID})
    held = [cmdres(1, CommandState.RUNNING), cmdres(2, CommandState.SUCCEEDED)]
    with pytest.raises(SinkUnavailable, match=f"refused 1 command states, e.g. {STATE_ID}: 400"):
        sink.write(held, [])
    assert count(es_client, f"{es_prefix}-readings-*") == 2  # stored, but the batch stays unacked
    proxy.heal()
    assert sink.write(held, []) == WriteResult(written=0, duplicates=2, dead_letters=0)
    assert [r.state for r in sink.command_states("r-1")] == ["succeeded"]
    assert count(es_client, f"{es_prefix}-deadletter-*") == 0
