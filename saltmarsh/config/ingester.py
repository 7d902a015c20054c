"""The cloud ingester's config: broker, shared-subscription group, validation limits and sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.elasticsearch import ElasticsearchConfig, elasticsearch_config
from saltmarsh.config.kinesis import KinesisConfig, kinesis_config
from saltmarsh.config.table import Table, load_toml
from saltmarsh.contract.envelope import Limits

SINK_TYPES = ("sqlite", "elasticsearch")  # the store of record; Kinesis forwards alongside it


@dataclass(frozen=True, slots=True)
class SinkConfig:
    type: str = "sqlite"
    path: Path | None = None  # sqlite database file
    elasticsearch: ElasticsearchConfig | None = None
    kinesis: KinesisConfig | None = None  # selected messages are also forwarded here


@dataclass(frozen=True, slots=True)
class IngesterConfig:
    ingester_id: str
    broker: BrokerConfig
    status_dir: Path
    sink: SinkConfig
    share_group: str = "saltmarsh-ingesters"
    site: str = "+"
    limits: Limits = field(default_factory=Limits)
    batch_max_messages: int = 2000
    batch_interval_ms: int = 20
    # Unacked messages the broker may send at once (MQTT 5 receive maximum), which bounds what
    # the ingester holds in memory; 0 means twice batch_max_messages.
    receive_maximum: int = 0
    # Also write the status counters as Prometheus text here, for node_exporter's textfile
    # collector (saltmarsh.runtime.metrics); None: no metrics file.
    metrics_dir: Path | None = None


def sink_table_config(t: Table) -> SinkConfig:
    """A `[sink]` table: the ingester's, and the commander's, which reads command state from it."""
    kind = t.text("type", "sqlite", choices=SINK_TYPES)
    es_table = t.table("elasticsearch", required=kind == "elasticsearch")
    cfg = SinkConfig(
        type=kind,
        path=t.path("path", None),
        elasticsearch=elasticsearch_config(es_table) if kind == "elasticsearch" else None,
        kinesis=kinesis_config(t.table("kinesis")) if t.has("kinesis") else None,
    )
    if kind == "sqlite" and cfg.path is None:
        raise t.error("path", "is required for sink type 'sqlite'")
    if kind != "elasticsearch" and t.has("elasticsearch"):
        raise t.error("elasticsearch", f"is set but sink type is {kind!r}")
    t.done()
    return cfg


def ingester_config(t: Table) -> IngesterConfig:
    ingester_id = t.ident("ingester_id")
    limits_table = t.table("limits")
    limits = Limits(
        max_payload_bytes=limits_table.integer("max_payload_bytes", 16_384, lo=64, hi=10_000_000),
        max_future_skew_ms=int(limits_table.number("max_future_skew_s", 300.0, lo=0) * 1000),
    )
    limits_table.done()
    cfg = IngesterConfig(
        ingester_id=ingester_id,
        broker=BrokerConfig.from_table(t.table("broker"), f"ingester-{ingester_id}"),
        status_dir=t.path("status_dir"),
        metrics_dir=t.path("metrics_dir", None),
        sink=sink_table_config(t.table("sink", required=True)),
        share_group=t.ident("share_group", "saltmarsh-ingesters"),
        site=t.text("site", "+"),
        limits=limits,
        batch_max_messages=t.integer("batch_max_messages", 2000, lo=1, hi=100_000),
        batch_interval_ms=t.integer("batch_interval_ms", 20, lo=0, hi=10_000),
        receive_maximum=t.integer("receive_maximum", 0, lo=0, hi=65_535),
    )
    t.done()
    return cfg


def load_ingester_config(path: Path) -> IngesterConfig:
    return ingester_config(load_toml(path))


def load_sink_config(path: Path) -> SinkConfig:
    """Only the `[sink]` of an ingester config: what an audit reads, from a machine that does not
    hold the ingester's broker credentials (the lab's host, reading a node's config)."""
    return sink_table_config(load_toml(path).table("sink", required=True))
