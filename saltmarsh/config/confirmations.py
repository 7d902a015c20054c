"""When a sender may let go of a message, and how much it may have out unconfirmed: `[confirmations]`.

The sensor and the forwarder read the same table (with their own window sizes as defaults):

    [confirmations]
    mode = "end-to-end"   # delete when the next durable owner confirms; "broker": on its PUBACK
    overtaken_s = 10      # resend what later messages overtook by this long
    silence_s = 60        # nothing confirmed this long: one resend round, then twice as long...
    silence_max_s = 600   # ...up to this
    max_messages = 20000  # unconfirmed window: no new message goes out past it
    max_bytes = 8388608

"broker" is hop by hop, as MQTT's QoS 1 is: for a site whose cloud is a plain broker with no
saltmarsh ingester to confirm. It gives up the end-to-end guarantee, and says so in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from saltmarsh.config.table import Table
from saltmarsh.contract.errors import ConfigError
from saltmarsh.runtime.backoff import BackoffPolicy


class AckMode(StrEnum):
    END_TO_END = "end-to-end"
    BROKER = "broker"


@dataclass(frozen=True, slots=True)
class ConfirmationsConfig:
    max_messages: int
    max_bytes: int
    mode: AckMode = AckMode.END_TO_END
    overtaken_s: float = 10.0
    silence_s: float = 60.0
    silence_max_s: float = 600.0

    def __post_init__(self) -> None:
        if self.silence_max_s < self.silence_s:
            raise ConfigError("confirmations.silence_max_s", f"{self.silence_max_s} is below silence_s")

    @property
    def end_to_end(self) -> bool:
        return self.mode is AckMode.END_TO_END

    def silence_policy(self) -> BackoffPolicy:
        # No jitter: the step is a floor, a silent round never comes early.
        return BackoffPolicy(self.silence_s, self.silence_max_s, jitter=False)

    @classmethod
    def from_table(cls, t: Table, *, defaults: ConfirmationsConfig) -> ConfirmationsConfig:
        silence_s = t.number("silence_s", 60.0, lo=0.1, hi=86_400)
        silence_max_s = t.number("silence_max_s", max(600.0, silence_s), lo=0.1, hi=86_400)
        if silence_max_s < silence_s:
            raise t.error("silence_max_s", f"{silence_max_s} is below silence_s {silence_s}")
        cfg = cls(
            mode=AckMode(t.text("mode", AckMode.END_TO_END.value, choices=tuple(m.value for m in AckMode))),
            overtaken_s=t.number("overtaken_s", 10.0, lo=0.1, hi=3600),
            silence_s=silence_s,
            silence_max_s=silence_max_s,
            max_messages=t.integer("max_messages", defaults.max_messages, lo=1, hi=10_000_000),
            max_bytes=t.integer("max_bytes", defaults.max_bytes, lo=0),
        )
        t.done()
        return cfg
