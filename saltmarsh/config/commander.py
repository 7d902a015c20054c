"""The master's side of commands: `saltmarsh cmd --config commander.toml` (the formula's master role).

signing_key_file = "/etc/saltmarsh/command.key"   # Ed25519, PEM, readable by its owner (root) only
store = "/var/lib/saltmarsh/commands/rollouts.db" # rollouts and their targets (saltmarsh.commands.rollout)
resend_s = 30                                     # a SENT target no hop answered is published again
salt_master_config = "/etc/salt/master"           # whose minion data resolves the targets

[broker]      # the cloud broker, as the master's own user (write on saltmarsh/v1/+/+/cmd)
host = "cloud.example"
port = 8883
username = "commander"
password_file = "/etc/saltmarsh/secrets/commander-password"

[sink]        # where the ingesters write each target's state: their own [sink] table
type = "sqlite"
path = "/var/lib/saltmarsh/ingester/saltmarsh.db"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.config.ingester import SinkConfig, sink_table_config
from saltmarsh.config.table import Table, load_toml


@dataclass(frozen=True, slots=True)
class CommanderConfig:
    signing_key_file: Path
    store: Path
    broker: BrokerConfig
    sink: SinkConfig
    resend_s: float = 30.0
    salt_master_config: Path = Path("/etc/salt/master")


def commander_config(t: Table) -> CommanderConfig:
    cfg = CommanderConfig(
        signing_key_file=t.private_file("signing_key_file"),
        store=t.path("store"),
        broker=BrokerConfig.from_table(t.table("broker", required=True), "saltmarsh-commander"),
        sink=sink_table_config(t.table("sink", required=True)),
        resend_s=t.number("resend_s", 30.0, lo=1, hi=3600),
        salt_master_config=t.path("salt_master_config", "/etc/salt/master"),
    )
    t.done()
    return cfg


def load_commander_config(path: Path) -> CommanderConfig:
    return commander_config(load_toml(path))
