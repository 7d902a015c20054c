"""MQTT 5 for every hop: the lean wire client and the paho adapter side by side.

In: a `BrokerConfig` (`connect` turns it into a client, with TLS), bytes off a socket (`codec`).
Out: PUBLISH, PUBACK and CONNACK packets; `wire.WireClient`, the threadless client of the
forwarder's and ingester's hot loops; `paho`, the sensor's paho-mqtt client. Both clients follow
one delivery rule, `codec.puback_delivered`, and use one QoS and one gateway property name.
"""

from saltmarsh.contract.errors import ProtocolError, WireError
from saltmarsh.mqtt.codec import ConnAck, Publish, puback_delivered
from saltmarsh.mqtt.wire import WireClient

__all__ = ["ConnAck", "ProtocolError", "Publish", "WireClient", "WireError", "puback_delivered"]
