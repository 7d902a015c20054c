"""Every exception saltmarsh raises on purpose, in one place.

Each one names the field, key or path at fault, because an operator reading a log line at
3 a.m. should not have to guess which of forty keys was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class Reason(StrEnum):
    """Why a message was rejected; stored with every dead letter and counted per reason."""

    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    OVERSIZED = "oversized"
    UNKNOWN_TOPIC = "unknown_topic"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    NON_FINITE = "non_finite"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOPIC_MISMATCH = "topic_mismatch"
    UNSUPPORTED_VERSION = "unsupported_version"
    SINK_REJECTED = "sink_rejected"
    RETAINED = "retained"  # published with the retain flag: data is a stream, never a broker's last value
    # Commands (saltmarsh.contract.command): the reasons a hop refuses one, reported in its outcome.
    UNKNOWN_FIELD = "unknown_field"  # a command is signed as a whole: a field we do not know is refused
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"
    NOT_ADDRESSED = "not_addressed"
    UNKNOWN_OP = "unknown_op"


class SaltmarshError(Exception):
    """Base of every deliberate saltmarsh error."""


class ValidationError(SaltmarshError):
    """A message broke the wire contract. `field` is a dotted path such as `metrics.temperature`."""

    def __init__(self, reason: Reason, field: str, detail: str) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        super().__init__(f"{reason.value}: field {field!r}: {detail}")


class ConfigError(SaltmarshError):
    """A config file or pillar value is wrong. `key` is the dotted key at fault."""

    def __init__(self, key: str, detail: str, source: str = "") -> None:
        self.key = key
        self.detail = detail
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"config key {key!r}{where}: {detail}")


class SpoolError(SaltmarshError):
    """The disk spool could not be opened or written."""


class JournalError(SaltmarshError):
    """A device's command journal cannot be opened or written; the message names the file."""


class DriverError(SaltmarshError):
    """A sensor driver cannot start: hardware or library missing, or its input file is unusable."""


class ReplayError(DriverError):
    """A replay file is unusable: `source`, `line` and `column` say where."""

    def __init__(self, source: str, line: int, column: str | None, detail: str) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.detail = detail
        where = f"line {line}" + (f", column {column!r}" if column is not None else "")
        super().__init__(f"{source}: {where}: {detail}")


class SinkUnavailable(SaltmarshError):
    """The sink cannot commit now; the caller keeps the batch unacked and retries later."""


class KinesisUnavailable(SinkUnavailable):
    """Kinesis did not take every record. `committed` holds the indices that it did take."""

    def __init__(self, message: str, committed: Sequence[int]) -> None:
        super().__init__(message)
        self.committed = tuple(committed)


class WireError(Exception):
    """An MQTT-level failure that is not the socket's: a refused packet or an exhausted id space."""


class ProtocolError(WireError):
    """The peer sent something this codec cannot parse; the connection must be dropped."""
