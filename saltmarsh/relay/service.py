"""The relay service: config in, sinks and spool opened, the bus read until stopped; with
`[commands]`, the command announcer polling beside it on its own thread."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from elasticsearch import ApiError, TransportError

from saltmarsh.config.relay import RelayConfig
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.relay.bus import BusReader, Firer, Listener
from saltmarsh.relay.commands import CommandAnnouncer
from saltmarsh.relay.sender import Relay
from saltmarsh.runtime.spool import Spool
from saltmarsh.sinks.elasticsearch.bulk import BulkDoc, BulkResult
from saltmarsh.sinks.elasticsearch.sink import ElasticsearchSink
from saltmarsh.sinks.elasticsearch.templates import install_templates
from saltmarsh.sinks.kinesis.sink import KinesisForwarder, forwarder_from_config

log = logging.getLogger(__name__)


class FleetEventStore:
    """The Elasticsearch sink for fleet events, putting the index templates back after an outage.

    A cluster rebuilt or restored while the relay was spooling may have lost them, and a backfill
    written without them would auto-create the month's index with guessed mappings that no later
    fix can change. The templates are idempotent PUTs, so checking after each outage is cheap.
    """

    def __init__(self, sink: ElasticsearchSink) -> None:
        self.sink = sink
        self._after_outage = False

    def index_documents(self, docs: Sequence[BulkDoc]) -> BulkResult:
        try:
            if self._after_outage:
                self._reinstall_templates()
            return self.sink.index_documents(docs)
        except SinkUnavailable:
            self._after_outage = True
            raise

    def _reinstall_templates(self) -> None:
        try:
            install_templates(self.sink.client, self.sink.prefix, self.sink.cfg.ilm_delete_after_days)
        except (ApiError, TransportError) as err:
            raise SinkUnavailable(f"elasticsearch: cannot install index templates: {err}"[:500]) from err
        self._after_outage = False

    def close(self) -> None:
        self.sink.close()


class AnnouncingRelay(Relay):
    """The relay whose health event also carries the command announcer's counters."""

    def __init__(
        self,
        cfg: RelayConfig,
        store: FleetEventStore,
        forwarder: KinesisForwarder | None,
        spool: Spool,
        announcer: CommandAnnouncer | None,
    ) -> None:
        super().__init__(cfg, store, forwarder, spool)
        self.announcer = announcer

    def health(self) -> dict[str, Any]:
        health = super().health()
        return health if self.announcer is None else {**health, **self.announcer.health()}


def run(
    cfg: RelayConfig,
    open_listener: Callable[[], Listener],
    open_firer: Callable[[], Firer],
    stop: threading.Event | None = None,
) -> None:
    """Relay until `stop` is set (or the process is told to exit); the queue is spooled on the way out."""
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    store = FleetEventStore(ElasticsearchSink(cfg.elasticsearch))
    forwarder: KinesisForwarder | None = None
    try:
        forwarder = forwarder_from_config(cfg.kinesis) if cfg.kinesis is not None else None
        announcer = CommandAnnouncer(cfg.commands, open_firer) if cfg.commands is not None else None
        relay = AnnouncingRelay(cfg, store, forwarder, spool, announcer)
        log.info(
            "saltmarsh relay started",
            extra={
                "event": "relay_started",
                "spool_depth": spool.stats().depth_messages,
                "kinesis": forwarder is not None,
                "commands": announcer is not None,
            },
        )
        relay.start()
        if announcer is not None:
            announcer.start()
        try:
            BusReader(relay, open_listener, open_firer, cfg.health_interval_s, stop=stop).run()
        finally:
            if announcer is not None:
                announcer.stop()
            relay.stop()
    finally:
        store.close()
        if forwarder is not None:
            with contextlib.suppress(Exception):
                forwarder.close()
        spool.close()


def run_until_signalled(
    cfg: RelayConfig, open_listener: Callable[[], Listener], open_firer: Callable[[], Firer]
) -> None:
    """`run` in a Salt engine process, whose own SIGTERM handler ends the process with
    `os._exit`, skipping every `finally`. Ours stops the loop first, so the queue is spooled,
    then hands the signal to Salt's handler to finish as it always does."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run(cfg, open_listener, open_firer, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and callable(handler := previous[signal.Signals(received[0])]):
        handler(received[0], None)
