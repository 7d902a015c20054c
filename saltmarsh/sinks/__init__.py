"""Sinks: where the ingester commits messages. `open_sink` picks the backend from config.

In: validated `Delivery`s and `DeadLetter`s from the cloud ingester, one batch per `write`.
Out: durable rows (SQLite now; Elasticsearch and Kinesis later), and for `saltmarsh audit` every
stored key in order plus dead-letter counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from saltmarsh.config.ingester import SinkConfig
from saltmarsh.errors import ConfigError
from saltmarsh.sinks.base import (
    AuditSource,
    DeadLetter,
    Delivery,
    Sink,
    SinkUnavailable,
    StoredKey,
    WriteResult,
)
from saltmarsh.sinks.sqlite import SqliteSink


class ClosableAuditSource(AuditSource, Protocol):
    def close(self) -> None: ...


def open_sink(cfg: SinkConfig) -> Sink:
    """The one place that maps `[sink] type` to a backend; new backends add a branch here."""
    if cfg.type == "sqlite":
        if cfg.path is None:
            raise ConfigError("sink.path", "is required for sink type 'sqlite'")
        return SqliteSink(cfg.path)
    raise ConfigError("sink.type", f"{cfg.type!r} has no backend")


def open_audit_source(source: SinkConfig | Path) -> ClosableAuditSource:
    """Read-only access for `saltmarsh audit`: an ingester's SinkConfig, or a SQLite file path."""
    if isinstance(source, SinkConfig):
        if source.type != "sqlite":
            raise ConfigError("sink.type", f"{source.type!r} cannot be audited yet")
        if source.path is None:
            raise ConfigError("sink.path", "is required for sink type 'sqlite'")
        source = source.path
    return SqliteSink(source, read_only=True)


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
