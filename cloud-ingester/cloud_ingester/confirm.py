"""The ingester's confirm stage: whom to tell that a message is committed, and what to skip.

In:  the PUBLISHes read from the cloud broker.
Out: for each, the gateway's `ack` topic and the forwarder's (run, number) from its `msg` user
     property, or None when it carries none (a plain MQTT client published it) or names no
     gateway this ingester can address; and, apart, the confirmations that other ingesters (and
     this one) published under the same shared subscription, which are not data.

The ack topic is built from the message's own site level and its `gw` property, which the cloud
broker's ACL ties to the gateway that published it, never from anything a client names as a
reply address. Pure functions, like `validate`.
"""

from __future__ import annotations

import functools

from saltmarsh.contract.confirmation import MESSAGE_PROPERTY, ack_topic, parse_message_id
from saltmarsh.contract.errors import ValidationError
from saltmarsh.contract.topics import Channel
from saltmarsh.mqtt.codec import GATEWAY_PROPERTY
from saltmarsh.mqtt.wire import Publish

Sender = tuple[str, str, int]
"""(ack topic, run, number): where and what to confirm once the message is committed."""

_DOWNLINK_SUFFIXES = ("/" + Channel.ACK.value, "/" + Channel.COMMAND.value)


def is_downlink(publish: Publish) -> bool:
    """A confirmation or a command on its way down to a gateway: under the ingesters' `#`
    filter, but not data (a command's outcome comes back up as `cmdres`, which is)."""
    return publish.topic.endswith(_DOWNLINK_SUFFIXES)


def sender_of(publish: Publish) -> Sender | None:
    gateway = number = None
    for name, value in publish.user_properties:
        if name == GATEWAY_PROPERTY:
            gateway = value
        elif name == MESSAGE_PROPERTY:
            number = value
    if gateway is None or number is None:
        return None
    numbered = parse_message_id(number)
    topic = _ack_topic(_site_level(publish.topic), gateway)
    if numbered is None or topic is None:
        return None
    return topic, numbered[0], numbered[1]


def _site_level(topic: str) -> str:
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 2 else ""


@functools.lru_cache(maxsize=4096)  # a few sites x gateways, on every message
def _ack_topic(site: str, gateway: str) -> str | None:
    try:
        return ack_topic(site, gateway)
    except ValidationError:
        return None
