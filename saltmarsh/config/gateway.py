"""The gateway forwarder's config: local broker, uplink, spool, quota and drain rate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.commands import NO_COMMANDS, CommandsConfig
from saltmarsh.config.confirmations import ConfirmationsConfig
from saltmarsh.config.table import Table, load_toml

# Unconfirmed window: a round trip to the sink at full speed. The cloud broker holds at most this
# much of a gateway's traffic, however long the sink is down; the rest waits in the spool.
FORWARDER_CONFIRMATIONS = ConfirmationsConfig(max_messages=20_000, max_bytes=8 * 2**20)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    site: str  # "+" forwards every site the local broker carries
    local: BrokerConfig
    uplink: BrokerConfig
    state_dir: Path
    status_dir: Path
    # Also write the status counters as Prometheus text here, for node_exporter's textfile
    # collector (saltmarsh.runtime.metrics); None: no metrics file.
    metrics_dir: Path | None = None
    spool_quota_bytes: int = 1_000_000_000
    commit_interval_ms: int = 5  # group commit: at most this long between fsyncs while busy
    commit_max_messages: int = 2000
    # While the uplink is down, batches (and so spool segments) grow for up to this long: far
    # fewer segments to track in memory during a long outage, at no cost to anyone waiting.
    offline_commit_interval_ms: int = 500
    # At a site's rate the forwarder reads both links once per cycle instead of at every packet:
    # one wake-up, one commit and one uplink write then cover the cycle's messages, and the CPU
    # per message falls with the rate instead of rising. A cycle gathers about 500 messages, and
    # lasts this long at the most. It costs latency only, up to a cycle: the senders keep every
    # message until it is confirmed. 0 reads as data comes, at any rate.
    cycle_ms: int = 1000
    # Confirmations to devices are gathered this long, then sent one per device: at 1 Hz a
    # sensor costs the site broker a confirmation per reading at less than a few seconds. The
    # sensors' unconfirmed windows (1,000) hold far more than that.
    confirm_interval_ms: int = 5000
    inflight_window: int = 1000  # uplink QoS 1 messages awaiting PUBACK
    drain_rate_limit: float = 5000.0  # backlog messages per second; live traffic is not limited
    drain_burst: int = 1000
    # The fleet's one message size limit (pillar saltmarsh:max_message_bytes): a larger message
    # from the site broker is acked, counted and logged, but not forwarded.
    max_message_bytes: int = 16_384
    confirmations: ConfirmationsConfig = FORWARDER_CONFIRMATIONS
    # The command keys this gateway trusts, for the commands it carries down (gateway.commands).
    commands: CommandsConfig = NO_COMMANDS

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"


def gateway_config(t: Table) -> GatewayConfig:
    gateway_id = t.ident("gateway_id")
    site = t.text("site", "+")
    if site != "+":
        site = t.ident("site")
    cfg = GatewayConfig(
        gateway_id=gateway_id,
        site=site,
        local=BrokerConfig.from_table(t.table("local", required=True), f"forwarder-{gateway_id}"),
        uplink=BrokerConfig.from_table(t.table("uplink", required=True), f"gateway-{gateway_id}"),
        state_dir=t.path("state_dir"),
        status_dir=t.path("status_dir"),
        metrics_dir=t.path("metrics_dir", None),
        spool_quota_bytes=t.integer("spool_quota_bytes", 1_000_000_000, lo=0),
        commit_interval_ms=t.integer("commit_interval_ms", 5, lo=0, hi=10_000),
        commit_max_messages=t.integer("commit_max_messages", 2000, lo=1, hi=100_000),
        offline_commit_interval_ms=t.integer("offline_commit_interval_ms", 500, lo=0, hi=60_000),
        cycle_ms=t.integer("cycle_ms", 1000, lo=0, hi=5000),
        confirm_interval_ms=t.integer("confirm_interval_ms", 5000, lo=0, hi=60_000),
        inflight_window=t.integer("inflight_window", 1000, lo=1, hi=65535),
        drain_rate_limit=t.number("drain_rate_limit", 5000.0, lo=1),
        drain_burst=t.integer("drain_burst", 1000, lo=1),
        max_message_bytes=t.integer("max_message_bytes", 16_384, lo=64, hi=10_000_000),
        confirmations=ConfirmationsConfig.from_table(t.table("confirmations"), defaults=FORWARDER_CONFIRMATIONS),
        commands=CommandsConfig.from_table(t.table("commands")),
    )
    t.done()
    if cfg.commands.enabled and site == "+":
        raise t.error("commands", "a gateway carries one site's commands: set site to that site's id")
    return cfg


def load_gateway_config(path: Path) -> GatewayConfig:
    return gateway_config(load_toml(path))
