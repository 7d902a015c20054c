"""The ingester service: consumer -> validate -> sink (batched) -> ack, in one loop, with a status file."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cloud_ingester.batcher import Batch, BatchWriter, IngesterCounters
from cloud_ingester.confirm import is_downlink, sender_of
from cloud_ingester.consumer import Consumer
from cloud_ingester.validate import validate_publishes
from saltmarsh.config.ingester import IngesterConfig, load_ingester_config
from saltmarsh.contract.envelope import Limits
from saltmarsh.contract.errors import SinkUnavailable
from saltmarsh.contract.topics import ROOT, shared
from saltmarsh.mqtt.wire import Publish
from saltmarsh.runtime.daemon import serve
from saltmarsh.runtime.memory import return_large_buffers_to_the_os
from saltmarsh.runtime.status import StatusPublisher
from saltmarsh.sinks import open_sink

log = logging.getLogger("cloud_ingester")

# On SIGTERM the writer gets this long to commit and ack what it holds; past it (a sink that is
# down) the rest is left unacked for the broker to redeliver, so shutdown never hangs.
STOP_GRACE_S = 10.0
IDLE_POLL_S = 0.5  # how long an idle loop waits for traffic before looking at the stop flag


def run(cfg: IngesterConfig, stop_event: threading.Event) -> int:
    """Ingest until `stop_event` is set; 0 after a clean drain, 2 if the sink could not be opened."""
    try:
        sink = open_sink(cfg.sink)
    except SinkUnavailable as err:
        log.error("cannot open sink", extra={"event": "sink_open_failed", "error": str(err)})
        return 2  # cannot start (saltmarsh.runtime.daemon): the sink's file or address is unusable
    counters = IngesterCounters(sink.name)
    topic_filter = shared(cfg.share_group, f"{ROOT}/{cfg.site}/#")
    # Twice a batch unacked: one being written while the next arrives.
    consumer = Consumer(cfg.broker, topic_filter, cfg.receive_maximum or 2 * cfg.batch_max_messages)
    writer = BatchWriter(sink, counters, max_messages=cfg.batch_max_messages, interval_s=cfg.batch_interval_ms / 1000)

    def snapshot() -> dict[str, Any]:
        return {
            **counters.snapshot(),
            "connected": consumer.connected,
            "subscribed": consumer.subscribed,
            "inbox_depth": writer.held,
        }

    status = StatusPublisher(cfg.status_dir, "ingester", cfg.ingester_id, snapshot, metrics_dir=cfg.metrics_dir)
    log.info(
        "starting",
        extra={
            "event": "starting",
            "ingester_id": cfg.ingester_id,
            "broker": f"{cfg.broker.host}:{cfg.broker.port}",
            "client_id": cfg.broker.client_id,
            "filter": topic_filter,
            "sink": sink.name,
            "receive_maximum": consumer.receive_maximum,
        },
    )
    status.start()
    try:
        pump(consumer, writer, counters, cfg.limits, stop_event)
        log.info("stopping", extra={"event": "stopping", "held": writer.held})
        # Nothing more is read; what was taken is written and acked, or left to the broker.
        ack(consumer, counters, writer.drain(time.monotonic() + STOP_GRACE_S))
        if writer.held:
            log.warning("sink still failing at shutdown; leaving the rest unacked", extra={"event": "abandon_batch"})
    finally:
        consumer.close()
        sink.close()
        status.stop()
    log.info("stopped", extra={"event": "stopped", **counters.snapshot()})
    return 0


def pump(
    consumer: Consumer, writer: BatchWriter, counters: IngesterCounters, limits: Limits, stop_event: threading.Event
) -> None:
    """The loop: consumer -> validate -> sink -> ack, until `stop_event` is set.

    One thread does it all. SQLite's commit blocks the loop, but the broker keeps sending into
    the socket meanwhile, up to the receive maximum, so the next batch is ready when it returns.
    """
    while not stop_event.is_set():
        if not consumer.connected:
            connack = consumer.connect()
            if connack is not None and connack.session_present:
                writer.forget_before(consumer.connection)
        now = time.monotonic()
        wait_s = writer.wait_s(now)
        publishes = consumer.poll(IDLE_POLL_S if wait_s is None else min(wait_s, IDLE_POLL_S))
        if publishes:
            publishes = skip_downlink(consumer, counters, publishes)
        if publishes:
            now = time.monotonic()
            outcomes = validate_publishes(publishes, int(time.time() * 1000), limits)
            senders = [sender_of(p) for p in publishes]
            writer.take(outcomes, [p.packet_id for p in publishes], consumer.connection, now, senders)
        ack(consumer, counters, writer.write_due(now))


def skip_downlink(consumer: Consumer, counters: IngesterCounters, publishes: list[Publish]) -> list[Publish]:
    """Confirmations and commands to gateways share the ingesters' filter; acked if need be, never stored."""
    kept = [p for p in publishes if not is_downlink(p)]
    if len(kept) != len(publishes):
        skipped = [p for p in publishes if is_downlink(p)]
        consumer.ack([p.packet_id for p in skipped], consumer.connection)
        counters.skipped(len(skipped))
    return kept


def ack(consumer: Consumer, counters: IngesterCounters, written: list[Batch]) -> None:
    """What the sink has made durable: PUBACK it on the connection that delivered it, and confirm
    it to the forwarders that sent it, so that they can let go of it."""
    for batch in written:
        if batch.confirmations and consumer.confirm(messages := batch.confirmations.messages()):
            counters.confirmed(batch.confirmations.count, len(messages))
        if consumer.ack(batch.packet_ids, batch.connection):
            counters.acked(len(batch))


def _run_process(cfg: IngesterConfig, stop_event: threading.Event) -> int:
    # Large messages (dead-lettered as oversized) would otherwise leave their memory in the heap.
    return_large_buffers_to_the_os()
    return run(cfg, stop_event)


def main(argv: list[str] | None = None) -> int:
    return serve(
        prog="saltmarsh-ingester",
        service="ingester",
        description="Cloud MQTT -> sink ingester.",
        argv=argv,
        load=load_ingester_config,
        run=_run_process,
    )
