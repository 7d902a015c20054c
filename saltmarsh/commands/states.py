"""Each target's command state as the ingesters wrote it to the sink, read back on the master.

In: the sink's config (the commander's `[sink]` table, the ingesters' own). Out: a function from
a rollout to its `CommandRecord`s, for `saltmarsh cmd status`, the dispatcher and the relay engine.
A sink that is not there yet (nothing written) reads as no records, never as an error; one that
cannot be reached raises `SinkUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable

from saltmarsh.config.ingester import SinkConfig
from saltmarsh.contract.errors import ConfigError, SinkUnavailable
from saltmarsh.sinks.command_state import CommandRecord

ReadStates = Callable[[str], list[CommandRecord]]


def state_reader(sink: SinkConfig) -> ReadStates:
    if sink.type == "elasticsearch" and sink.elasticsearch is not None:
        from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink

        # Opening connects to nothing (read-only: no templates to install), and the one client
        # then keeps its connections across the dispatcher's reads.
        return ElasticsearchSink(sink.elasticsearch, read_only=True).command_states
    if sink.type != "sqlite" or sink.path is None:
        raise ConfigError("sink.type", f"{sink.type!r}: command state is read from the SQLite or Elasticsearch sink")
    path = sink.path

    def read(rollout: str) -> list[CommandRecord]:
        from saltmarsh.sinks.sqlite import SqliteSink

        if not path.exists():
            return []  # nothing written yet
        try:
            db = SqliteSink(path, read_only=True)
        except SinkUnavailable:
            return []
        try:
            return db.command_states(rollout)
        finally:
            db.close()

    return read
