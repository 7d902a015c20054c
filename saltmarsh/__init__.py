"""saltmarsh: the shared core of the fleet.

Holds the wire contract (`envelope`, `topics`), per-service config (`config`), the crash-safe
disk spool (`spool`), the sinks (`sinks`), service counters (`status`) and the `saltmarsh` CLI.
Data flows sensor/ -> gateway/ -> cloud-ingester/ -> saltmarsh.sinks.
"""

from saltmarsh.envelope import Envelope, Limits, Location, parse
from saltmarsh.errors import ConfigError, Reason, SaltmarshError, SpoolError, ValidationError
from saltmarsh.spool import Lane, Segment, Spool
from saltmarsh.topics import Channel, Topic

__all__ = [
    "Channel",
    "ConfigError",
    "Envelope",
    "Lane",
    "Limits",
    "Location",
    "Reason",
    "SaltmarshError",
    "Segment",
    "Spool",
    "SpoolError",
    "Topic",
    "ValidationError",
    "parse",
]
