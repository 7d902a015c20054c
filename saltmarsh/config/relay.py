"""The relay engine's config: which tags go where, the queue, the spool and the sinks.

    # /etc/saltmarsh/relay.toml, or the same keys inline under the engine in the master config
    relay_tags = ["salt/job/*/ret/*", "salt/beacon/*", "saltmarsh/*"]   # to Elasticsearch
    forward_tags = ["salt/job/*/ret/*"]                                   # to Kinesis as well
    queue_max = 10000
    spool_dir = "/var/lib/saltmarsh/relay/spool"
    spool_quota_bytes = 1_000_000_000
    flush_interval_ms = 500
    health_interval_s = 60
    sink_retry_s = 5

    [elasticsearch]               # saltmarsh.config.elasticsearch
    hosts = ["https://es.example:9200"]

    [kinesis]                     # optional; saltmarsh.config.kinesis
    stream_name = "saltmarsh-fleet"
    region = "eu-west-1"

    [commands]                    # optional: each command's terminal state as a Salt event
    commander_config = "/etc/saltmarsh/commander.toml"   # its store and [sink]
    poll_s = 5

With `[commands]`, the relay fires `saltmarsh/cmd/<rollout>/<state>` on the master's bus for
each target that reaches a terminal state (saltmarsh.relay.commands); without it, nothing is
polled.

`forward_tags` becomes the first tag rule of the Kinesis selection, named `forward_tags`; more
named rules may follow as `[[kinesis.select]]` entries with `tags`. Envelope rules (kinds,
thresholds, ...) are refused: a Salt event has only a tag.

The sender batches up to `elasticsearch.batch_max_docs` events, waiting at most
`flush_interval_ms` for a batch to fill; that batch is one bulk request and one PutRecords
plan.

For OpenSearch-API servers and emulators that refuse the client's vendor media types, set
`plain_json = true` in `[elasticsearch]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saltmarsh.config.elasticsearch import ElasticsearchConfig, elasticsearch_config
from saltmarsh.config.kinesis import KinesisConfig, kinesis_config
from saltmarsh.config.table import Table, read_toml
from saltmarsh.contract.errors import ConfigError
from saltmarsh.sinks.kinesis.selection import Globs, Selection

DEFAULT_RELAY_TAGS = (
    "salt/job/*/ret/*",
    "salt/beacon/*",
    "saltmarsh/*",
    "salt/auth",
    "minion_start",
    "salt/minion/*/start",
)
FORWARD_RULE = "forward_tags"
DEFAULT_SPOOL_DIR = "/var/lib/saltmarsh/relay/spool"
DEFAULT_COMMANDER_CONFIG = "/etc/saltmarsh/commander.toml"


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """`[commands]`: where the rollouts are (the commander's own config), and how often to look."""

    commander_config: Path = Path(DEFAULT_COMMANDER_CONFIG)
    poll_s: float = 5.0


@dataclass(frozen=True, slots=True)
class RelayConfig:
    elasticsearch: ElasticsearchConfig
    relay_tags: Globs
    forward: Selection  # tag rules only; empty when there is no Kinesis
    kinesis: KinesisConfig | None = None
    queue_max: int = 10_000
    spool_dir: Path = Path(DEFAULT_SPOOL_DIR)
    spool_quota_bytes: int = 1_000_000_000  # 0: no quota
    flush_interval_ms: int = 500
    health_interval_s: float = 60.0
    sink_retry_s: float = 5.0
    commands: CommandsConfig | None = None  # None: no command events

    @property
    def batch_max_events(self) -> int:
        return self.elasticsearch.batch_max_docs


def _tags(t: Table, name: str, default: list[str]) -> list[str]:
    values = t.array(name, default)
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise t.error(f"{name}[{i}]", f"expected a non-empty tag glob, got {value!r}")
    return list(values)


def _kinesis(doc: Mapping[str, Any], forward_tags: list[str], source: str) -> KinesisConfig:
    raw = doc["kinesis"]
    if not isinstance(raw, Mapping):
        raise ConfigError("kinesis", f"expected a table, got {type(raw).__name__}", source)
    rules = raw.get("select", [])
    if not isinstance(rules, list):
        raise ConfigError("kinesis.select", f"expected a list of tables, got {type(rules).__name__}", source)
    if forward_tags:
        # The shorthand is an ordinary tag rule, so Kinesis records say which rule chose them.
        rules = [{"name": FORWARD_RULE, "tags": forward_tags}, *rules]
    if not rules:
        raise ConfigError("forward_tags", "kinesis is configured but no tag is forwarded to it", source)
    cfg = kinesis_config(Table({**raw, "select": rules}, "kinesis", source))
    if cfg.selection.rules:
        raise ConfigError(
            "kinesis.select", "the relay forwards Salt events by tag only; use `tags` in every rule", source
        )
    return cfg


def _commands(t: Table) -> CommandsConfig:
    cfg = CommandsConfig(
        commander_config=t.path("commander_config", DEFAULT_COMMANDER_CONFIG),
        poll_s=t.number("poll_s", 5.0, lo=0.05, hi=3600.0),
    )
    t.done()
    return cfg


def relay_config(doc: Mapping[str, Any], source: str = "") -> RelayConfig:
    """Read and validate the relay's table; unknown keys are errors naming the key."""
    t = Table(doc, "", source)
    relay_tags = _tags(t, "relay_tags", list(DEFAULT_RELAY_TAGS))
    if not relay_tags:
        raise t.error("relay_tags", "is empty: nothing would reach Elasticsearch")
    forward_tags = _tags(t, "forward_tags", [])
    kinesis = None
    forward = Selection()
    if t.has("kinesis"):
        t.table("kinesis")  # marks the key as read; `_kinesis` checks its contents
        kinesis = _kinesis(doc, forward_tags, source)
        forward = Selection(tag_rules=kinesis.selection.tag_rules)
    elif forward_tags:
        raise t.error("forward_tags", "needs a [kinesis] table to forward to")
    cfg = RelayConfig(
        elasticsearch=elasticsearch_config(t.table("elasticsearch")),
        relay_tags=Globs(tuple(relay_tags)),
        forward=forward,
        kinesis=kinesis,
        queue_max=t.integer("queue_max", 10_000, lo=1, hi=10_000_000),
        spool_dir=t.path("spool_dir", DEFAULT_SPOOL_DIR),
        spool_quota_bytes=t.integer("spool_quota_bytes", 1_000_000_000, lo=0),
        flush_interval_ms=t.integer("flush_interval_ms", 500, lo=1, hi=60_000),
        health_interval_s=t.number("health_interval_s", 60.0, lo=0.1, hi=86_400.0),
        sink_retry_s=t.number("sink_retry_s", 5.0, lo=0.01, hi=3600.0),
        commands=_commands(t.table("commands")) if t.has("commands") else None,
    )
    t.done()
    return cfg


def engine_config(options: Mapping[str, Any]) -> RelayConfig:
    """The engine's options from the master config: `{config: <toml path>}`, or the keys inline."""
    if "config" not in options:
        return relay_config(options, "master config engines.saltmarsh_relay")
    if len(options) > 1:
        other = sorted(k for k in options if k != "config")[0]
        raise ConfigError(other, "set either config (a file) or inline options, not both", "engines.saltmarsh_relay")
    path = Path(str(options["config"]))
    return relay_config(read_toml(path), str(path))
