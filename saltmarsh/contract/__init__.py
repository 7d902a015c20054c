"""The wire contract every hop shares: topics, the envelope, commands, minting, and every exception.

In: raw MQTT topics and payloads (from any hop), the fields of a new reading, alert or command
result (to `mint`, `mint_alert`, `mint_cmdres`), or of a new command (to `Command`, then `sign`).
Out: validated `Topic`s, `Envelope`s and `Command`s, or a `ValidationError` naming the field at
fault; `verify` and `check_deadline` say whether a parsed command may run, `validate_op` whether
its op and args are ones this role knows, and `advances` whether a reported state replaces the
stored one.
Pure code: no I/O, no threads, nothing that a Pi's sensor agent could not import.
"""

from saltmarsh.contract.command import (
    Command,
    check_addressed,
    check_deadline,
    new_cmd_id,
    parse_command,
    remaining_ms,
)
from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop, advances
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
from saltmarsh.contract.mint import mint, mint_alert, mint_cmdres, new_boot_id
from saltmarsh.contract.ops import OPS, ArgSpec, OpSpec, find_op, parse_cli_args, validate_op
from saltmarsh.contract.signature import generate_key, load_private_key, load_public_key, sign, verify
from saltmarsh.contract.topics import BROADCAST, Channel, Topic, site_commands

__all__ = [
    "BROADCAST",
    "MAX_SEQ",
    "OPS",
    "ArgSpec",
    "Channel",
    "Command",
    "CommandOutcome",
    "CommandState",
    "ConfigError",
    "DriverError",
    "Envelope",
    "Hop",
    "KinesisUnavailable",
    "Limits",
    "Location",
    "OpSpec",
    "ProtocolError",
    "Reason",
    "ReplayError",
    "SaltmarshError",
    "SinkUnavailable",
    "SpoolError",
    "Topic",
    "ValidationError",
    "WireError",
    "advances",
    "check_addressed",
    "check_deadline",
    "find_op",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "mint",
    "mint_alert",
    "mint_cmdres",
    "new_boot_id",
    "new_cmd_id",
    "parse",
    "parse_cli_args",
    "parse_command",
    "remaining_ms",
    "sign",
    "site_commands",
    "validate_op",
    "verify",
]
