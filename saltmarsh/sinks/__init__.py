"""Sinks: where the ingester commits messages. `open_sink` picks the backend from config.

In: validated `Delivery`s and `DeadLetter`s from the cloud ingester, one batch per `write`.
Out: durable rows in the store of record (SQLite, the embedded default, or Elasticsearch), selected
messages forwarded to Kinesis alongside it, and for `saltmarsh audit` every stored key in order plus
dead-letter counts. Backend modules are imported only when chosen, so a SQLite-only install needs
neither boto3 nor the Elasticsearch client.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from saltmarsh.contract.errors import ConfigError, SinkUnavailable
from saltmarsh.sinks.base import (
    AuditSource,
    DeadLetter,
    Delivery,
    Sink,
    StoredKey,
    WriteResult,
)
from saltmarsh.sinks.sqlite import SqliteSink

if TYPE_CHECKING:
    from saltmarsh.config.ingester import SinkConfig
    from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink


class ClosableAuditSource(AuditSource, Protocol):
    def close(self) -> None: ...


def _record_sink(cfg: SinkConfig, read_only: bool = False) -> SqliteSink | ElasticsearchSink:
    if cfg.type == "sqlite":
        if cfg.path is None:
            raise ConfigError("sink.path", "is required for sink type 'sqlite'")
        return SqliteSink(cfg.path, read_only=read_only)
    if cfg.type == "elasticsearch":
        if cfg.elasticsearch is None:
            raise ConfigError("sink.elasticsearch", "is required for sink type 'elasticsearch'")
        from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink

        return ElasticsearchSink(cfg.elasticsearch, read_only=read_only)
    raise ConfigError("sink.type", f"{cfg.type!r} has no backend")


def open_sink(cfg: SinkConfig) -> Sink:
    """The one place that maps `[sink]` to backends: the store of record, plus Kinesis if set."""
    record = _record_sink(cfg)
    if cfg.kinesis is None:
        return record
    from saltmarsh.sinks.fanout import FanoutSink
    from saltmarsh.sinks.kinesis.sink import KinesisSink

    return FanoutSink(record, KinesisSink.from_config(cfg.kinesis))


def open_audit_source(source: SinkConfig | Path) -> ClosableAuditSource:
    """Read-only access for `saltmarsh audit`: an ingester's SinkConfig, or a SQLite file path."""
    if isinstance(source, Path):
        return SqliteSink(source, read_only=True)
    return _record_sink(source, read_only=True)


__all__ = [
    "AuditSource",
    "ClosableAuditSource",
    "DeadLetter",
    "Delivery",
    "Sink",
    "SinkUnavailable",
    "SqliteSink",
    "StoredKey",
    "WriteResult",
    "open_audit_source",
    "open_sink",
]
