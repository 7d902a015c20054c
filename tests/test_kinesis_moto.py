"""The Kinesis sink against moto's server: put, read back every shard, and compare."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.kinesis import KinesisConfig, kinesis_config
from saltmarsh.config.table import Table
from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.contract.topics import Channel
from saltmarsh.ops.localfleet.processes import free_port
from saltmarsh.sinks.kinesis.sink import KinesisForwarder, KinesisRecord, KinesisSink, forwarder_from_config
from tests.kinesis_support import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    FlakyClient,
    MotoServer,
    create_stream,
    decoded,
    delivery,
    envelope,
    fail_first_time,
    moto_server,
    read_stream,
)

SHARDS = 3
_stream_names = itertools.count()

SELECT = [
    {"name": "alerts", "kinds": ["alert"]},
    {"name": "hot", "thresholds": ["temperature > 35"]},
    {"name": "doors", "kinds": ["event"], "names": ["door_*"]},
]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def stream(moto: MotoServer) -> str:
    name = f"saltmarsh-test-{next(_stream_names)}"
    create_stream(moto.client(), name, SHARDS)
    return name


def config(endpoint_url: str, stream: str, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> KinesisConfig:
    monkeypatch.setenv("SM_TEST_AWS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("SM_TEST_AWS_SECRET", SECRET_ACCESS_KEY)
    doc: dict[str, Any] = {
        "stream_name": stream,
        "region": REGION,
        "endpoint_url": endpoint_url,
        "access_key_id_env": "SM_TEST_AWS_KEY_ID",
        "secret_access_key_env": "SM_TEST_AWS_SECRET",
        "select": SELECT,
        **extra,
    }
    return kinesis_config(Table(doc, "kinesis"))


def traffic(devices: int, per_device: int) -> list[Envelope]:
    """Interleaved devices; every third reading is hot, every fifth message an alert or a door event."""
    out = []
    for seq, dev in itertools.product(range(per_device), range(devices)):
        device = f"dev-{dev:03d}"
        if seq % 5 == 4:
            kind, name = (Channel.ALERT, "overheat") if dev % 2 else (Channel.EVENT, "door_open")
            out.append(envelope(device, seq, kind, name=name))
        else:
            out.append(envelope(device, seq, temperature=40.0 if seq % 3 == 0 else 20.0))
    return out


def per_device_seqs(shards: dict[str, list[dict[str, Any]]]) -> dict[str, list[int]]:
    """Each device's seqs in the order its shard holds them; a device must sit in one shard."""
    out: dict[str, list[int]] = {}
    owner: dict[str, str] = {}
    for shard_id, rows in shards.items():
        for doc in decoded(rows):
            assert owner.setdefault(doc["device"], shard_id) == shard_id
            out.setdefault(doc["device"], []).append(doc["seq"])
    return out


@pytest.mark.parametrize("ordering", ["per_device", "relaxed"])
def test_put_then_read_back_every_shard(
    moto: MotoServer, stream: str, monkeypatch: pytest.MonkeyPatch, ordering: str
) -> None:
    cfg = config(moto.endpoint_url, stream, monkeypatch, ordering=ordering)
    sink = KinesisSink.from_config(cfg)
    envelopes = traffic(devices=40, per_device=30)
    expected = {e.key: cfg.selection.match(e) for e in envelopes if cfg.selection.matches(e)}
    assert 0 < len(expected) < len(envelopes)
    result = sink.write([delivery(e) for e in envelopes], [])
    sink.close()
    assert (result.written, result.duplicates, result.dead_letters) == (len(expected), 0, 0)

    shards = read_stream(moto.client(), stream)
    assert len(shards) == SHARDS and sum(1 for rows in shards.values() if rows) > 1
    got = {f"{d['device']}:{d['boot']}:{d['seq']}": d for rows in shards.values() for d in decoded(rows)}
    assert sum(len(rows) for rows in shards.values()) == len(got) == len(expected)
    for key, match in expected.items():
        assert match is not None
        assert got[key]["selected_by"] == match.to_json()
    for rows in shards.values():
        assert all(row["PartitionKey"] == doc["device"] for row, doc in zip(rows, decoded(rows), strict=True))
    for device, seqs in per_device_seqs(shards).items():
        assert seqs == sorted(seqs), device
    counters = sink.counters
    assert counters.records_sent == len(expected) and counters.records_retried == 0
    # relaxed packs 500 to a call; per_device sends one round per message of the busiest device
    assert counters.batches == (-(-len(expected) // 500) if ordering == "relaxed" else len(expected) // 40)


def test_calls_stay_within_the_byte_limit(moto: MotoServer, stream: str) -> None:
    # 24 records of 900 KB: five fit a call, a sixth would pass 5 MiB, which moto refuses.
    client = FlakyClient(moto.client())
    forwarder = KinesisForwarder(client, stream, per_device_order=False)
    big = [KinesisRecord(f"dev-{i % 4}", b'{"pad":"' + b"x" * 900_000 + b'"}') for i in range(24)]
    assert forwarder.put_all(big).committed == 24
    assert [len(call) for call in client.calls] == [5, 5, 5, 5, 4]
    assert sum(len(rows) for rows in read_stream(moto.client(), stream).values()) == 24


@pytest.mark.parametrize(("ordering", "in_order"), [("per_device", True), ("relaxed", False)])
def test_order_per_device_after_a_partial_failure(
    moto: MotoServer, stream: str, monkeypatch: pytest.MonkeyPatch, ordering: str, in_order: bool
) -> None:
    cfg = config(moto.endpoint_url, stream, monkeypatch, ordering=ordering, backoff_base_ms=1, backoff_cap_ms=5)
    client = FlakyClient(moto.client(), fail_record=fail_first_time({("dev-000", 2), ("dev-001", 0)}))
    sink = KinesisSink(forwarder_from_config(cfg, client), cfg.selection)
    alerts = [envelope(f"dev-{d:03d}", seq, Channel.ALERT) for seq in range(6) for d in range(3)]
    assert sink.write([delivery(e) for e in alerts], []).written == len(alerts)
    seqs = per_device_seqs(read_stream(moto.client(), stream))
    assert sorted(seqs) == ["dev-000", "dev-001", "dev-002"]
    assert all(sorted(s) == list(range(6)) for s in seqs.values())  # each once, none lost
    if in_order:
        assert seqs == {device: list(range(6)) for device in seqs}
        assert sink.counters.out_of_order == 0
    else:
        assert seqs["dev-000"] == [0, 1, 3, 4, 5, 2]
        assert seqs["dev-001"] == [1, 2, 3, 4, 5, 0]
        assert sink.counters.out_of_order == 8
    # per_device meets the two failures in different rounds, relaxed in its one first call
    assert sink.counters.records_retried == 2
    assert sink.counters.throttled == (2 if in_order else 1)


def test_endpoint_down_raises_sink_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    cfg = config(nothing_listens, "saltmarsh-events", monkeypatch, retry_max=2, backoff_base_ms=5, backoff_cap_ms=10)
    sink = KinesisSink.from_config(cfg)
    with pytest.raises(SinkUnavailable, match="still failing after 2 retries"):
        sink.write([delivery(envelope("dev-1", 0, Channel.ALERT))], [])
    assert sink.counters.batches == 3 and sink.counters.records_sent == 0
    assert "EndpointConnectionError" in str(sink.counters.last_error)
    sink.close()


def test_missing_stream_raises_at_once(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = KinesisSink.from_config(config(moto.endpoint_url, "no-such-stream", monkeypatch))
    with pytest.raises(SinkUnavailable, match="ResourceNotFoundException"):
        sink.write([delivery(envelope("dev-1", 0, Channel.ALERT))], [])
    assert sink.counters.batches == 1
    sink.close()
