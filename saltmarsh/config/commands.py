"""Which commands a device runs: `[commands]`, the same table for a sensor and a gateway.

    [commands]
    public_keys = ["base64 of a raw Ed25519 public key", ...]  # pillar saltmarsh:commands:public_keys
    queue_max = 100   # commands waiting to run here; a full queue leaves the rest with the gateway
    redeliver_s = 30  # a gateway: deliver a held command again this often until its result comes

Without public keys a device trusts no command: it does not subscribe to its command topics at
all, so a fleet that has not rolled out a command key has no command path to attack. Several
keys may be trusted at once, so that a new key can be rolled out before the old one is retired.
The private key never appears here (`saltmarsh.contract.signature`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from saltmarsh.config.table import Table
from saltmarsh.contract.errors import ConfigError
from saltmarsh.contract.signature import load_public_key

MAX_KEYS = 8


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    public_keys: tuple[str, ...] = ()
    queue_max: int = 100
    redeliver_s: float = 30.0

    def __post_init__(self) -> None:
        if len(self.public_keys) > MAX_KEYS:
            raise ConfigError("commands.public_keys", f"{len(self.public_keys)} keys; at most {MAX_KEYS}")
        for i, key in enumerate(self.public_keys):
            load_public_key(key, f"commands.public_keys[{i}]")
        if not 1 <= self.queue_max <= 10_000:
            raise ConfigError("commands.queue_max", f"{self.queue_max} is outside 1..10000")
        if not 0.1 <= self.redeliver_s <= 3600:
            raise ConfigError("commands.redeliver_s", f"{self.redeliver_s} is outside 0.1..3600 seconds")

    @property
    def enabled(self) -> bool:
        return bool(self.public_keys)

    def keys(self) -> list[Ed25519PublicKey]:
        return [load_public_key(key) for key in self.public_keys]

    @classmethod
    def from_table(cls, t: Table) -> CommandsConfig:
        keys = t.array("public_keys", [])
        try:
            cfg = cls(
                public_keys=tuple(keys),
                queue_max=t.integer("queue_max", 100),
                redeliver_s=t.number("redeliver_s", 30.0),
            )
        except ConfigError as err:
            # The dataclass names the key; the table adds the file it is in.
            raise t.error(err.key.removeprefix("commands."), err.detail) from None
        t.done()
        return cfg


NO_COMMANDS = CommandsConfig()
