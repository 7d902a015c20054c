"""The forwarder service: source -> spool -> sender, plus its status file and signal handling."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gateway.committer import GroupCommitter
from gateway.sender import Sender
from gateway.source import LocalSource
from saltmarsh.config.gateway import GatewayConfig, load_gateway_config
from saltmarsh.errors import ConfigError, SpoolError
from saltmarsh.logs import setup
from saltmarsh.spool import Spool, SpoolStats
from saltmarsh.status import StatusPublisher

SERVICE = "forwarder"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
_WATCH_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


def drain_eta_s(backlog_depth: int, drain_rate: float, drain_rate_limit: float) -> float:
    """Seconds until the backlog is gone: at the measured drain rate, or the limit before one is measured."""
    if backlog_depth <= 0:
        return 0.0
    rate = drain_rate if drain_rate > 0 else drain_rate_limit
    return round(backlog_depth / rate, 1)


def forwarder_counters(
    cfg: GatewayConfig,
    *,
    source: LocalSource,
    committer: GroupCommitter,
    sender: Sender,
    stats: SpoolStats,
    now_ms: int,
) -> dict[str, Any]:
    live_rate, drain_rate = sender.rates()
    backlog_depth = sender.backlog_depth(stats.depth_messages)
    oldest_age_s = 0.0 if stats.oldest_spooled_ms is None else max(0.0, (now_ms - stats.oldest_spooled_ms) / 1000)
    return {
        "received_total": source.received_total,
        "skipped_total": source.skipped_total,
        "spooled_total": committer.spooled_total,
        "forwarded_total": sender.forwarded_total,
        "refused_total": sender.refused_total,
        "commit_failures_total": committer.commit_failures_total,
        "spool_depth": stats.depth_messages,
        "spool_bytes": stats.depth_bytes,
        "spool_segments": stats.segments,
        "spool_quota_bytes": stats.quota_bytes,
        "oldest_unsent_age_s": round(oldest_age_s, 3),
        "evicted_total": stats.evicted_messages,
        "quarantined": stats.quarantined,
        "uplink_connected": sender.connected,
        "local_connected": source.connected,
        "live_rate": live_rate,
        "drain_rate": drain_rate,
        "drain_rate_limit": cfg.drain_rate_limit,
        "backlog_depth": backlog_depth,
        "drain_eta_s": drain_eta_s(backlog_depth, drain_rate, cfg.drain_rate_limit),
        "inflight": sender.inflight,
    }


def run(cfg: GatewayConfig, stop_event: threading.Event) -> int:
    """Forward until `stop_event` is set; returns the process exit code."""
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    opened = spool.stats()
    if opened.quarantined:
        log.error(
            "the spool was unreadable and has been quarantined; forwarding continues with an empty one",
            extra={"event": "forwarder_spool_quarantined", "spool": str(cfg.spool_dir)},
        )
    sender = Sender(cfg, spool)
    source = LocalSource(cfg)
    committer = GroupCommitter(source, spool, sender.spooled, cfg.commit_interval_ms, cfg.commit_max_messages)
    # Seams for later: a downlink relay (cloud `cmd` -> site broker) would be a fourth part
    # beside these; a BLE collector would append to `source.inbox` like the MQTT source does.
    status = StatusPublisher(
        cfg.status_dir,
        SERVICE,
        cfg.gateway_id,
        lambda: forwarder_counters(
            cfg,
            source=source,
            committer=committer,
            sender=sender,
            stats=spool.stats(),
            now_ms=int(time.time() * 1000),
        ),
    )
    log.info(
        "forwarder starting",
        extra={
            "event": "forwarder_starting",
            "gateway_id": cfg.gateway_id,
            "site": cfg.site,
            "local": f"{cfg.local.host}:{cfg.local.port}",
            "uplink": f"{cfg.uplink.host}:{cfg.uplink.port}",
            "spool_depth": opened.depth_messages,
            "evicted_total": opened.evicted_messages,
        },
    )
    sender.start()
    committer.start()
    source.start()
    status.start()
    exit_code = EXIT_OK
    try:
        while not stop_event.wait(_WATCH_INTERVAL_S):
            if not (committer.alive() and sender.alive()):
                log.critical("a forwarder thread died; exiting to be restarted", extra={"event": "forwarder_crashed"})
                exit_code = EXIT_FAILED
                break
    finally:
        # Order matters: no more acks, then everything received is spooled, then the uplink
        # gets a moment for in-flight PUBACKs, then the spool is closed.
        source.stop()
        committer.stop()
        sender.stop()
        status.stop()
        spool.close()
        log.info("forwarder stopped", extra={"event": "forwarder_stopped", "exit_code": exit_code})
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="saltmarsh-forwarder", description="Store-and-forward from the site broker to the cloud broker."
    )
    parser.add_argument("--config", type=Path, required=True, help="path to the forwarder's TOML config")
    args = parser.parse_args(argv)
    try:
        cfg = load_gateway_config(args.config)
    except ConfigError as err:
        print(f"saltmarsh-forwarder: {err}", file=sys.stderr)
        return EXIT_CONFIG
    setup(SERVICE)
    stop_event = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return run(cfg, stop_event)
    except (OSError, SpoolError) as err:
        log.critical("forwarder cannot run", extra={"event": "forwarder_failed", "why": repr(err)})
        return EXIT_FAILED
