"""The wire contract every hop shares: topics, the envelope, minting, and every exception.

In: raw MQTT topics and payloads (from any hop), or the fields of a new reading or alert (to
`mint`, `mint_alert`).
Out: validated `Topic`s and `Envelope`s, or a `ValidationError` naming the field at fault.
Pure code: no I/O, no threads, nothing that a Pi's sensor agent could not import.
"""

from saltmarsh.contract.envelope import MAX_SEQ, Envelope, Limits, Location, parse
from saltmarsh.contract.errors import (
    ConfigError,
    DriverError,
    KinesisUnavailable,
    ProtocolError,
    Reason,
    ReplayError,
    SaltmarshError,
    SinkUnavailable,
    SpoolError,
    ValidationError,
    WireError,
)
from saltmarsh.contract.mint import mint, mint_alert, new_boot_id
from saltmarsh.contract.topics import Channel, Topic

__all__ = [
    "MAX_SEQ",
    "Channel",
    "ConfigError",
    "DriverError",
    "Envelope",
    "KinesisUnavailable",
    "Limits",
    "Location",
    "ProtocolError",
    "Reason",
    "ReplayError",
    "SaltmarshError",
    "SinkUnavailable",
    "SpoolError",
    "Topic",
    "ValidationError",
    "WireError",
    "mint",
    "mint_alert",
    "new_boot_id",
    "parse",
]
