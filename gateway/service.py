"""The forwarder service: `run` wires source -> committer -> spool -> sender, plus status and signals.

Threads, and why each exists:
- the loop (`loop.ForwarderLoop`, on the caller of `run`) owns both broker connections and
  selects on both: it carries every hand-off between the parts. No locks on the per-message path.
- the committer does the fsyncs, during which SQLite releases the GIL.
- a connector per link (`connector.Connector`), only while that link is down: connecting
  blocks, the loop must not.
- the status publisher writes the counters file once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.command_store import CommandStore
from gateway.commands import GatewayCommands
from gateway.committer import GroupCommitter
from gateway.connector import Connector
from gateway.loop import ForwarderLoop, Waker
from gateway.ops import EXIT_RESTART, GatewayOps, own_executor
from gateway.sender import Sender, connect_uplink
from gateway.source import LocalSource, connect_local
from saltmarsh.config.gateway import GatewayConfig, load_gateway_config
from saltmarsh.contract.errors import SpoolError
from saltmarsh.contract.mint import new_boot_id
from saltmarsh.mqtt.wire import ConnAck, WireClient
from saltmarsh.runtime.daemon import serve
from saltmarsh.runtime.memory import return_large_buffers_to_the_os
from saltmarsh.runtime.spool import Spool, SpoolStats
from saltmarsh.runtime.status import StatusPublisher

SERVICE = "forwarder"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

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
    mono_now: float,
) -> dict[str, Any]:
    live_rate, drain_rate = sender.rates()
    unconfirmed = sender.unconfirmed
    oldest_sent = unconfirmed.oldest_first_sent
    backlog_depth = sender.backlog_depth(stats.depth_messages)
    oldest_age_s = 0.0 if stats.oldest_spooled_ms is None else max(0.0, (now_ms - stats.oldest_spooled_ms) / 1000)
    return {
        "received_total": source.received_total,
        "skipped_total": source.skipped_total,
        "oversized_total": source.oversized_total,
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
        "salvaged_total": stats.salvaged,
        "uplink_connected": sender.connected,
        "local_connected": source.connected,
        "live_rate": live_rate,
        "drain_rate": drain_rate,
        "drain_rate_limit": sender.drain_rate_limit,
        "flushing_backlog": sender.flushing,
        "backlog_depth": backlog_depth,
        "drain_eta_s": drain_eta_s(backlog_depth, drain_rate, sender.drain_rate_limit),
        "inflight": sender.inflight,
        # Sent up and not yet confirmed committed by the sink: what a cloud broker holds of ours.
        "acknowledgement": cfg.confirmations.mode.value,
        "unconfirmed": unconfirmed.count,
        "unconfirmed_bytes": unconfirmed.nbytes,
        "oldest_unconfirmed_age_s": 0.0 if oldest_sent is None else round(max(0.0, mono_now - oldest_sent), 3),
        "window_full": sender.window_full,
        "window_full_total": sender.window_full_total,
        "confirmed_total": unconfirmed.confirmed_total,
        "resent_total": unconfirmed.resent_total,
        "bad_confirmations_total": sender.unconfirmed.bad_total,
        "stale_confirmations_total": unconfirmed.stale_total + unconfirmed.foreign_total,
        # Down to the devices: messages confirmed as spooled here.
        "device_confirmed_total": source.confirmed_total,
        "unconfirmable_total": source.unconfirmable_total,
    }


def open_spool(cfg: GatewayConfig) -> Spool:
    """The spool, quarantined and replaced by an empty one if it was unreadable (reported once)."""
    spool = Spool.open(cfg.spool_dir, cfg.spool_quota_bytes)
    if spool.stats().quarantined:
        log.error(
            "the spool was unreadable and has been quarantined; forwarding goes on with what could be read of it",
            extra={
                "event": "forwarder_spool_quarantined",
                "spool": str(cfg.spool_dir),
                "salvaged_messages": spool.stats().salvaged,
            },
        )
    return spool


def open_commands(cfg: GatewayConfig, sender: Sender, restart: Callable[[], None]) -> GatewayCommands | None:
    """The command relay, if the config trusts a command key: its hold beside the spool, and the
    gateway's own ops on `sender`, journalled beside it too."""
    if not cfg.commands.enabled:
        return None
    commands = GatewayCommands(
        gateway_id=cfg.gateway_id,
        site=cfg.site,
        boot=new_boot_id(),
        store=CommandStore.open(cfg.state_dir / "commands.db"),
        public_keys=cfg.commands.keys(),
        redeliver_s=cfg.commands.redeliver_s,
    )
    ops = GatewayOps(sender, restart)
    executor = own_executor(
        site=cfg.site,
        gateway_id=cfg.gateway_id,
        public_keys=cfg.commands.keys(),
        journal_path=cfg.state_dir / "journal.db",
        ops=ops,
        report=commands.report,
    )
    commands.serve_own(executor, ops.spooled)
    return commands


def _close_uplink(link: tuple[WireClient, ConnAck]) -> None:
    link[0].close()


def run(cfg: GatewayConfig, stop_event: threading.Event) -> int:
    """Forward until `stop_event` is set; returns the process exit code."""
    spool = open_spool(cfg)
    opened = spool.stats()
    waker = Waker()  # the committer and the connectors wake the loop through it
    # site broker -> source: PUBLISHes gathered into batches, PUBACKed only once spooled.
    source = LocalSource(cfg)
    local_link = Connector("local", lambda: connect_local(cfg), waker.wake, WireClient.close)
    # source -> committer -> spool: one transaction per batch, carrying the deletes of the
    # segments delivered since the last one; each commit goes back to the source (acks) and on
    # to the sender (its segments, records still in memory).
    committer = GroupCommitter(spool, waker.wake, cfg.commit_interval_ms)
    # spool -> sender -> uplink: live segments first, the backlog at `drain_rate_limit`; the
    # delivered segments go back to the committer.
    sender = Sender(cfg, spool)
    uplink_link = Connector("uplink", lambda: connect_uplink(cfg), waker.wake, _close_uplink)
    # cloud `cmd` -> held -> site broker, and the gateway's own outcomes into the spool; a
    # commanded restart stops the loop as SIGTERM would, and exits EXIT_RESTART.
    restarting = threading.Event()

    def restart() -> None:
        restarting.set()
        stop_event.set()

    commands = open_commands(cfg, sender, restart)
    # One thread carries every hand-off above, in that order, each step (see gateway.loop).
    # Seam for later: a BLE collector would feed `LocalSource.take` like the MQTT connection does.
    loop = ForwarderLoop(
        waker=waker,
        source=source,
        committer=committer,
        sender=sender,
        local_link=local_link,
        uplink_link=uplink_link,
        commit_max_messages=cfg.commit_max_messages,
        offline_gather_s=cfg.offline_commit_interval_ms / 1000.0,
        cycle_s=cfg.cycle_ms / 1000.0,
        commands=commands,
    )
    status = StatusPublisher(
        cfg.status_dir,
        SERVICE,
        cfg.gateway_id,
        lambda: (
            forwarder_counters(
                cfg,
                source=source,
                committer=committer,
                sender=sender,
                stats=spool.stats(),
                now_ms=int(time.time() * 1000),
                mono_now=time.monotonic(),
            )
            | ({} if commands is None else commands.status_counters())
        ),
        metrics_dir=cfg.metrics_dir,
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
            "acknowledgement": cfg.confirmations.mode.value,
            "run": sender.unconfirmed.run,
        },
    )
    if not cfg.confirmations.end_to_end:
        log.warning(
            "confirmations.mode is broker: a message leaves the spool when the cloud broker has it, "
            "so a crash of that broker can lose it",
            extra={"event": "hop_by_hop_acks"},
        )
    status.start()
    exit_code = EXIT_FAILED
    try:
        exit_code = EXIT_OK if loop.run(stop_event) else EXIT_FAILED
        if exit_code == EXIT_OK and restarting.is_set():
            exit_code = EXIT_RESTART
    finally:
        status.stop()
        waker.close()
        spool.close()
        if commands is not None:
            commands.close()
        log.info("forwarder stopped", extra={"event": "forwarder_stopped", "exit_code": exit_code})
    return exit_code


def _run_or_report(cfg: GatewayConfig, stop_event: threading.Event) -> int:
    return_large_buffers_to_the_os()
    try:
        return run(cfg, stop_event)
    except (OSError, SpoolError) as err:
        log.critical("forwarder cannot run", extra={"event": "forwarder_failed", "why": repr(err)})
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    return serve(
        prog="saltmarsh-forwarder",
        service=SERVICE,
        description="Store-and-forward from the site broker to the cloud broker.",
        argv=argv,
        load=load_gateway_config,
        run=_run_or_report,
    )
