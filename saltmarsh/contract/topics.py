"""The MQTT topic layout, shared by every hop.

    saltmarsh/v1/{site}/{device}/{channel}

A command may instead be addressed to a whole site, as device `_all` (BROADCAST), which no
device id can be (ids start with a letter or digit); every device of the site answers for
itself, on its own `cmdres` topic.

The site and the device are in the topic so that broker ACLs can confine a device to its own
topics, and so that an operator can subscribe to one site or one device with a plain wildcard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from saltmarsh.contract.errors import Reason, ValidationError

ROOT = "saltmarsh/v1"
# \Z, not $: "$" also matches before a trailing newline, which would let "dev\n" through.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
BROADCAST = "_all"


class Channel(StrEnum):
    READING = "reading"
    EVENT = "event"
    ALERT = "alert"
    STATUS = "status"  # retained; the agent's last will lands here too
    COMMAND = "cmd"
    ACK = "ack"  # confirmations from the next durable owner (saltmarsh.contract.confirmation)
    CMDRES = "cmdres"  # a command's outcome at one device, sequenced like a reading

    @property
    def carries_data(self) -> bool:
        """Data channels carry sequenced envelopes that must reach the sink."""
        return self in _DATA_CHANNELS


_DATA_CHANNELS = frozenset((Channel.READING, Channel.EVENT, Channel.ALERT, Channel.CMDRES))


def check_id(field: str, value: object) -> str:
    """Validate a site, device or boot id: safe in topics, file names and Elasticsearch ids."""
    if not isinstance(value, str):
        raise ValidationError(Reason.WRONG_TYPE, field, f"expected string, got {type(value).__name__}")
    if not ID_PATTERN.fullmatch(value):
        raise ValidationError(Reason.INVALID_VALUE, field, f"{value[:80]!r} must match {ID_PATTERN.pattern}")
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    site: str
    device: str
    channel: Channel

    def __post_init__(self) -> None:
        check_id("topic.site", self.site)
        if self.device != BROADCAST:
            check_id("topic.device", self.device)
        elif self.channel is not Channel.COMMAND:
            # Only a command fans out; anything else from "_all" would be a device nobody is.
            raise ValidationError(
                Reason.INVALID_VALUE, "topic.device", f"{BROADCAST!r} addresses commands only, not {self.channel.value}"
            )

    def __str__(self) -> str:
        return f"{ROOT}/{self.site}/{self.device}/{self.channel.value}"

    @classmethod
    def parse(cls, topic: str) -> Topic:
        parts = topic.split("/")
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT:
            raise ValidationError(
                Reason.UNKNOWN_TOPIC, "topic", f"{topic[:200]!r} is not {ROOT}/<site>/<device>/<channel>"
            )
        try:
            channel = Channel(parts[4])
        except ValueError:
            raise ValidationError(Reason.UNKNOWN_TOPIC, "topic.channel", f"unknown channel {parts[4][:40]!r}") from None
        try:
            return cls(parts[2], parts[3], channel)
        except ValidationError as err:
            raise ValidationError(Reason.UNKNOWN_TOPIC, err.field, err.detail) from None


def site_commands(site: str) -> str:
    """The filter for every command to one site, its broadcasts included: a forwarder's subscription."""
    return f"{ROOT}/{check_id('site', site)}/+/{Channel.COMMAND.value}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription, so that several ingesters split one stream."""
    return f"$share/{group}/{topic_filter}"
