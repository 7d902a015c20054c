"""A lean MQTT 5 wire path for the forwarder and ingester hot loops: a pure codec and a threadless client."""

from saltmarsh.wire.client import WireClient
from saltmarsh.wire.codec import ConnAck, ProtocolError, Publish, WireError, puback_delivered

__all__ = ["ConnAck", "ProtocolError", "Publish", "WireClient", "WireError", "puback_delivered"]
