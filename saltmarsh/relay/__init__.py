"""The Salt master's event relay, run by the engine in salt/engines/saltmarsh_relay.py.

In: every event on the master's bus.
Out: the selected ones (`relay_tags`) as documents in `{prefix}-fleet-events-YYYY.MM`, some of
them (`forward_tags`) also to Kinesis, and a periodic `saltmarsh/relay/health` event.

The layout reads in the order events flow: `bus` (reading, reconnecting, health) -> `sender`
(bounded queue, sender thread, spool, backfill) -> `documents` (what is stored, and its id);
`config` is the one typed config, `service.run` wires them.
"""

from saltmarsh.config.relay import DEFAULT_RELAY_TAGS, RelayConfig, engine_config, relay_config
from saltmarsh.relay.bus import BusReader
from saltmarsh.relay.documents import event_document, event_id, fleet_event, json_safe, kinesis_record
from saltmarsh.relay.sender import HEALTH_TAG, Relay, Router
from saltmarsh.relay.service import run, run_until_signalled

__all__ = [
    "DEFAULT_RELAY_TAGS",
    "HEALTH_TAG",
    "BusReader",
    "Relay",
    "RelayConfig",
    "Router",
    "engine_config",
    "event_document",
    "event_id",
    "fleet_event",
    "json_safe",
    "kinesis_record",
    "relay_config",
    "run",
    "run_until_signalled",
]
