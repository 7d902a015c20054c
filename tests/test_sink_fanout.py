"""The store of record plus Kinesis: both commit before the ingester may ack, and a retry is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError  # type: ignore[import-untyped]

from saltmarsh.config.ingester import ingester_config
from saltmarsh.config.table import Table
from saltmarsh.contract.errors import ConfigError, SinkUnavailable
from saltmarsh.contract.topics import Channel
from saltmarsh.sinks import SqliteSink
from saltmarsh.sinks.fanout import FanoutSink
from saltmarsh.sinks.kinesis.selection import Rule, Selection
from saltmarsh.sinks.kinesis.sink import KinesisForwarder, KinesisSink, RetryPolicy
from tests.kinesis_support import FlakyClient, MemoryKinesis, delivery, envelope

ALERTS = Selection((Rule("alerts", kinds=frozenset({Channel.ALERT})),))


def fanout(tmp_path: Path, client: FlakyClient) -> tuple[FanoutSink, SqliteSink]:
    record = SqliteSink(tmp_path / "sink.db")
    forwarder = KinesisForwarder(client, "events", policy=RetryPolicy(retry_max=1), sleep=lambda s: None)
    return FanoutSink(record, KinesisSink(forwarder, ALERTS)), record


def batch() -> list:  # type: ignore[type-arg]
    return [
        delivery(envelope("d1", 1)),
        delivery(envelope("d1", 2, kind=Channel.ALERT)),
        delivery(envelope("d2", 1)),
    ]


def test_everything_is_stored_and_only_selected_messages_reach_kinesis(tmp_path: Path) -> None:
    stream = MemoryKinesis()
    sink, record = fanout(tmp_path, FlakyClient(stream))
    result = sink.write(batch(), ())
    assert (result.written, result.duplicates, result.dead_letters) == (3, 0, 0)
    assert [doc["seq"] for doc in stream.by_key()["d1"]] == [2]
    assert "d2" not in stream.by_key()
    assert [(k.device, k.seq) for k in record.stored_keys()] == [("d1", 1), ("d1", 2), ("d2", 1)]
    assert sink.name == "sqlite+kinesis"


def test_kinesis_down_fails_the_write_and_the_retry_is_exact_in_both(tmp_path: Path) -> None:
    stream = MemoryKinesis()
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    client = FlakyClient(stream, fail_calls=[down, down, down])
    sink, record = fanout(tmp_path, client)
    with pytest.raises(SinkUnavailable):
        sink.write(batch(), ())
    assert stream.by_key() == {}
    result = sink.write(batch(), ())  # the ingester never acked, so the broker redelivers
    assert (result.written, result.duplicates) == (0, 3)
    assert [doc["seq"] for doc in stream.by_key()["d1"]] == [2]
    assert sum(1 for _ in record.stored_keys()) == 3


def _sink_table(sink: dict[str, object]) -> Table:
    return Table({"ingester_id": "i1", "status_dir": "/tmp/s", "sink": sink})


@pytest.mark.parametrize(
    ("sink", "key"),
    [
        ({"type": "elasticsearch"}, "sink.elasticsearch"),
        (
            {"type": "sqlite", "path": "/tmp/x.db", "elasticsearch": {"hosts": ["http://127.0.0.1:1"]}},
            "sink.elasticsearch",
        ),
        ({"type": "sqlite", "path": "/tmp/x.db", "kinesis": {"region": "eu-west-1"}}, "sink.kinesis.stream_name"),
        ({"type": "kafka"}, "sink.type"),
    ],
)
def test_bad_sink_config_names_the_key(sink: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ingester_config(_sink_table(sink))
    assert err.value.key == key


def test_sink_config_with_elasticsearch_and_kinesis() -> None:
    cfg = ingester_config(
        _sink_table(
            {
                "type": "elasticsearch",
                "elasticsearch": {"hosts": ["http://127.0.0.1:1"]},
                "kinesis": {
                    "stream_name": "events",
                    "region": "eu-west-1",
                    "select": [{"name": "alerts", "kinds": ["alert"]}],
                },
            }
        )
    )
    assert cfg.sink.elasticsearch is not None and cfg.sink.elasticsearch.hosts == ("http://127.0.0.1:1",)
    assert cfg.sink.kinesis is not None and cfg.sink.kinesis.stream_name == "events"
