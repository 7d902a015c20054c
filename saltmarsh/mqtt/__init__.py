"""A lean MQTT 5 wire path for the forwarder and ingester hot loops: a pure codec and a threadless client."""

from saltmarsh.contract.errors import ProtocolError, WireError
from saltmarsh.mqtt.codec import ConnAck, Publish, puback_delivered
from saltmarsh.mqtt.wire import WireClient

__all__ = ["ConnAck", "ProtocolError", "Publish", "WireClient", "WireError", "puback_delivered"]
