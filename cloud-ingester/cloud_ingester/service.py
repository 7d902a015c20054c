"""The ingester service: consumer -> validate -> batch writer -> sink, with a status file."""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from cloud_ingester.batcher import BatchWriter, IngesterCounters
from cloud_ingester.consumer import Consumer, Inbound
from saltmarsh import logs
from saltmarsh.config.ingester import IngesterConfig, load_ingester_config
from saltmarsh.errors import ConfigError
from saltmarsh.sinks import SinkUnavailable, open_sink
from saltmarsh.status import StatusPublisher
from saltmarsh.topics import ROOT, shared

log = logging.getLogger("cloud_ingester")

# On SIGTERM the writer gets this long to commit and ack what it holds; past it (a sink that is
# down) the batch is left unacked for the broker to redeliver, so shutdown never hangs.
STOP_GRACE_S = 10.0
WATCH_S = 0.5


def run(cfg: IngesterConfig, stop_event: threading.Event) -> int:
    """Ingest until `stop_event` is set; 0 after a clean drain, 1 if the sink or writer failed."""
    try:
        sink = open_sink(cfg.sink)
    except SinkUnavailable as err:
        log.error("cannot open sink", extra={"event": "sink_open_failed", "error": str(err)})
        return 1
    # Twice a batch in flight: one being written while the next arrives.
    receive_maximum = 2 * cfg.batch_max_messages
    inbox: queue.Queue[Inbound] = queue.Queue(maxsize=receive_maximum + cfg.batch_max_messages)
    counters = IngesterCounters(sink.name)
    topic_filter = shared(cfg.share_group, f"{ROOT}/{cfg.site}/#")
    consumer = Consumer(cfg.broker, topic_filter, inbox, receive_maximum)
    writer = BatchWriter(
        inbox,
        sink,
        consumer.ack,
        counters,
        cfg.limits,
        max_messages=cfg.batch_max_messages,
        interval_s=cfg.batch_interval_ms / 1000,
    )

    def snapshot() -> dict[str, Any]:
        return {
            **counters.snapshot(),
            "connected": consumer.connected,
            "subscribed": consumer.subscribed.is_set(),
            "inbox_depth": inbox.qsize(),
        }

    status = StatusPublisher(cfg.status_dir, "ingester", cfg.ingester_id, snapshot)
    draining, abandon = threading.Event(), threading.Event()
    writer_thread = threading.Thread(target=writer.run, args=(draining, abandon), name="batch-writer", daemon=True)
    log.info(
        "starting",
        extra={
            "event": "starting",
            "ingester_id": cfg.ingester_id,
            "broker": f"{cfg.broker.host}:{cfg.broker.port}",
            "client_id": cfg.broker.client_id,
            "filter": topic_filter,
            "sink": sink.name,
        },
    )
    status.start()
    writer_thread.start()
    consumer.start()
    exit_code = 0
    while not stop_event.wait(WATCH_S):
        if not writer_thread.is_alive():
            log.error("batch writer stopped unexpectedly", extra={"event": "writer_died"})
            exit_code = 1
            break
    log.info("stopping", extra={"event": "stopping"})
    consumer.stop_taking()
    draining.set()
    writer_thread.join(STOP_GRACE_S)
    if writer_thread.is_alive():
        log.warning("sink still failing at shutdown; leaving the batch unacked", extra={"event": "abandon_batch"})
        abandon.set()
        writer_thread.join()
    consumer.close()
    sink.close()
    status.stop()
    log.info("stopped", extra={"event": "stopped", **counters.snapshot()})
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saltmarsh-ingester", description="Cloud MQTT -> sink ingester.")
    parser.add_argument("--config", required=True, type=Path, help="ingester TOML config")
    args = parser.parse_args(argv)
    try:
        cfg = load_ingester_config(args.config)
    except ConfigError as err:
        print(f"saltmarsh-ingester: {err}", file=sys.stderr)
        return 2
    logs.setup("ingester")
    stop_event = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(cfg, stop_event)
