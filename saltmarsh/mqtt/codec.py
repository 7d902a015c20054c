"""MQTT 5 packets as bytes, for the hot paths: pure encode and decode functions.

paho-mqtt costs about 50 us of CPU per message per connection, mostly in per-packet Python
machinery and a wake-up of its network thread per call. The forwarder and ingester move tens of
thousands of messages a second through two connections each, so their hot paths speak the
protocol directly: many packets parsed per `recv`, many written per `send`, no threads.
Only what saltmarsh uses is here: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH at QoS 0/1,
PUBACK, PINGREQ/PINGRESP and DISCONNECT.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from saltmarsh.contract.errors import ProtocolError

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21
PROP_TOPIC_ALIAS_MAXIMUM = 0x22
PROP_USER_PROPERTY = 0x26
PROP_MAXIMUM_PACKET_SIZE = 0x27
PROP_REASON_STRING = 0x1F

RC_SUCCESS = 0x00
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RC_FIRST_FAILURE = 0x80

# Subscription options (MQTT 5 section 3.8.3.1), OR-ed with the QoS in a SUBSCRIBE's filter list.
NO_LOCAL = 0x04
RETAIN_AS_PUBLISHED = 0x08
RETAIN_SEND_IF_NEW_SUB = 0x10  # retained messages on a new subscription only, not on every reconnect
RETAIN_DO_NOT_SEND = 0x20

MAX_PACKET_ID = 0xFFFF
QOS_AT_MOST_ONCE = 0  # confirmations only: losing one costs a resend, never a message
QOS_AT_LEAST_ONCE = 1  # every saltmarsh data publish and subscription
GATEWAY_PROPERTY = "gw"  # MQTT 5 user property: the gateway that carried a message to the cloud
MAX_REMAINING_LENGTH = 268_435_455

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def varint(value: int) -> bytes:
    """MQTT's variable byte integer (section 1.5.5)."""
    if value < 0x80:
        return bytes((value,))
    if value > MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); raises IndexError when the buffer ends inside it."""
    value = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("variable byte integer longer than 4 bytes")


def utf8(text: str | bytes) -> bytes:
    """A length-prefixed string or binary field."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError(f"string field of {len(raw)} bytes is longer than 65535")
    return _U16.pack(len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + varint(len(body)) + body


def user_property(key: str, value: str) -> bytes:
    return bytes((PROP_USER_PROPERTY,)) + utf8(key) + utf8(value)


def properties(*encoded: bytes) -> bytes:
    """A property block, length included, from already encoded properties."""
    body = b"".join(encoded)
    return varint(len(body)) + body


# How each property's value is laid out, by identifier (MQTT 5 section 2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _PAIR = range(6)
_PROPERTY_LAYOUT: dict[int, int] = {
    0x01: _BYTE,  # payload format indicator
    0x02: _FOUR,  # message expiry interval
    0x03: _STRING,  # content type
    0x08: _STRING,  # response topic
    0x09: _STRING,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _FOUR,  # session expiry interval
    0x12: _STRING,  # assigned client identifier
    0x13: _TWO,  # server keep alive
    0x15: _STRING,  # authentication method
    0x16: _STRING,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _FOUR,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _STRING,  # response information
    0x1C: _STRING,  # server reference
    0x1F: _STRING,  # reason string
    0x21: _TWO,  # receive maximum
    0x22: _TWO,  # topic alias maximum
    0x23: _TWO,  # topic alias
    0x24: _BYTE,  # maximum QoS
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _FOUR,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifiers available
    0x2A: _BYTE,  # shared subscription available
}


def read_properties(buf: bytes, pos: int, end: int) -> tuple[dict[int, int | bytes], tuple[tuple[str, str], ...]]:
    """The properties in `buf[pos:end]`: scalar ones by identifier, and the user properties in order.

    String and binary values stay bytes; a repeated scalar property keeps its last value.
    """
    values: dict[int, int | bytes] = {}
    user: list[tuple[str, str]] = []
    try:
        while pos < end:
            ident = buf[pos]
            pos += 1
            layout = _PROPERTY_LAYOUT.get(ident)
            if layout == _BYTE:
                values[ident] = buf[pos]
                pos += 1
            elif layout == _TWO:
                values[ident] = _U16.unpack_from(buf, pos)[0]
                pos += 2
            elif layout == _FOUR:
                values[ident] = _U32.unpack_from(buf, pos)[0]
                pos += 4
            elif layout == _VARINT:
                values[ident], pos = read_varint(buf, pos)
            elif layout == _STRING:
                size = _U16.unpack_from(buf, pos)[0]
                values[ident] = bytes(buf[pos + 2 : pos + 2 + size])
                pos += 2 + size
            elif layout == _PAIR:
                key_len = _U16.unpack_from(buf, pos)[0]
                key = bytes(buf[pos + 2 : pos + 2 + key_len]).decode()
                pos += 2 + key_len
                val_len = _U16.unpack_from(buf, pos)[0]
                user.append((key, bytes(buf[pos + 2 : pos + 2 + val_len]).decode()))
                pos += 2 + val_len
            else:
                raise ProtocolError(f"unknown property identifier 0x{ident:02x}")
    except (IndexError, struct.error, UnicodeDecodeError) as err:
        raise ProtocolError(f"malformed properties: {err}") from err
    if pos != end:
        raise ProtocolError(f"properties overrun their block by {pos - end} bytes")
    return values, tuple(user)


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_connect(
    client_id: str,
    *,
    clean_start: bool,
    keepalive_s: int,
    session_expiry_s: int = 0,
    receive_maximum: int | None = None,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    props = [bytes((PROP_SESSION_EXPIRY,)) + _U32.pack(session_expiry_s)]
    if receive_maximum is not None:
        props.append(bytes((PROP_RECEIVE_MAXIMUM,)) + _U16.pack(receive_maximum))
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += properties() + utf8(will.topic) + utf8(will.payload)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += utf8(password)
    variable = utf8("MQTT") + bytes((5, flags)) + _U16.pack(keepalive_s) + properties(*props)
    return _packet(CONNECT << 4, variable + payload)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """`filters` pairs a topic filter with its options byte: the QoS, OR-ed with NO_LOCAL etc."""
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    body = _U16.pack(packet_id) + properties()
    for topic_filter, options in filters:
        body += utf8(topic_filter) + bytes((options,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


_PUBLISH_HEAD_1 = struct.Struct(">BBH")  # first byte, one-byte remaining length, topic length
_PUBLISH_HEAD_2 = struct.Struct(">BBBH")  # first byte, two-byte remaining length, topic length


def encode_publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    packet_id: int = 0,
    *,
    props: bytes = b"\x00",
    dup: bool = False,
    retain: bool = False,
) -> bytes:
    """`props` is the encoded property block (length included), built once by the caller."""
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    topic_len = len(topic)
    length = topic_len + len(props) + len(payload) + (4 if qos else 2)
    # Readings are a few hundred bytes: a two-byte remaining length, packed in one call.
    if length < 0x80:
        head = _PUBLISH_HEAD_1.pack(first, length, topic_len)
    elif length < 0x4000:
        head = _PUBLISH_HEAD_2.pack(first, (length & 0x7F) | 0x80, length >> 7, topic_len)
    else:
        head = bytes((first,)) + varint(length) + _U16.pack(topic_len)
    if qos:
        return b"".join((head, topic, _U16.pack(packet_id), props, payload))
    return b"".join((head, topic, props, payload))


def encode_puback(packet_id: int) -> bytes:
    # Reason code and properties may be omitted for success (MQTT 5 section 3.4.2.1).
    return b"\x40\x02" + _U16.pack(packet_id)


PINGREQ_PACKET = bytes((PINGREQ << 4, 0))
PINGRESP_PACKET = bytes((PINGRESP << 4, 0))
DISCONNECT_PACKET = bytes((DISCONNECT << 4, 0))


class Publish(NamedTuple):
    """A received PUBLISH. A tuple rather than a dataclass: one is built per message on hot paths."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    dup: bool
    retain: bool
    user_properties: tuple[tuple[str, str], ...]


class Packet(NamedTuple):
    """Any other received packet, undecoded: its type, the low four bits of its first byte, its body."""

    kind: int
    flags: int
    body: bytes


_new_tuple = tuple.__new__


def parse_stream(data: bytes) -> tuple[list[Publish], list[tuple[int, int]], list[Packet], int]:
    """Every complete packet at the front of `data`, sorted by what the hot loop does with it.

    Returns (PUBLISHes, PUBACKs as (packet id, reason code), other packets, bytes consumed); the
    caller keeps `data[consumed:]`, the start of a packet still arriving.
    """
    # One loop with the common cases inline: this runs once per message on both hot paths,
    # where a function call or a NamedTuple's Python-level __new__ per packet shows up.
    publishes: list[Publish] = []
    pubacks: list[tuple[int, int]] = []
    others: list[Packet] = []
    add_publish = publishes.append
    pos = 0
    end = len(data)
    try:
        while end - pos >= 2:
            first = data[pos]
            length = data[pos + 1]
            if length < 0x80:
                start = pos + 2
            elif end - pos >= 3 and data[pos + 2] < 0x80:
                length = (length & 0x7F) | (data[pos + 2] << 7)
                start = pos + 3
            else:
                try:
                    length, start = read_varint(data, pos + 1)
                except IndexError:
                    break
            stop = start + length
            if stop > end:
                break
            kind = first >> 4
            if kind == PUBLISH:
                topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
                if topic_end > stop:
                    raise ProtocolError("PUBLISH topic runs past the packet")
                qos = (first >> 1) & 0x03
                if qos:
                    packet_id = (data[topic_end] << 8) | data[topic_end + 1]
                    at = topic_end + 2
                else:
                    packet_id = 0
                    at = topic_end
                if at >= stop or qos > 2:
                    raise ProtocolError("malformed PUBLISH header")
                if data[at]:
                    user_props, at = _publish_properties(data, at, stop)
                else:
                    user_props = ()
                    at += 1
                add_publish(
                    _new_tuple(
                        Publish,
                        (
                            data[start + 2 : topic_end].decode(),
                            data[at:stop],
                            qos,
                            packet_id,
                            first & 0x08 != 0,
                            first & 0x01 != 0,
                            user_props,
                        ),
                    )
                )
            elif kind == PUBACK:
                if length < 2:
                    raise ProtocolError(f"PUBACK of {length} bytes")
                pubacks.append(((data[start] << 8) | data[start + 1], data[start + 2] if length > 2 else RC_SUCCESS))
            else:
                others.append(Packet(kind, first & 0x0F, data[start:stop]))
            pos = stop
    except UnicodeDecodeError as err:
        raise ProtocolError(f"PUBLISH topic is not UTF-8: {err}") from err
    except IndexError as err:
        raise ProtocolError(f"packet shorter than its own fields: {err}") from err
    return publishes, pubacks, others, pos


def _publish_properties(data: bytes, at: int, stop: int) -> tuple[tuple[tuple[str, str], ...], int]:
    props_len, at = read_varint(data, at)
    end = at + props_len
    if end > stop:
        raise ProtocolError("PUBLISH properties run past the packet")
    # saltmarsh's own publishes carry user properties only (`gw`, `msg`): read those pairs
    # inline, once per message on both hot paths; anything else takes the general reader.
    user: list[tuple[str, str]] = []
    pos = at
    try:
        while pos < end and data[pos] == PROP_USER_PROPERTY:
            key_end = pos + 3 + ((data[pos + 1] << 8) | data[pos + 2])
            value_end = key_end + 2 + ((data[key_end] << 8) | data[key_end + 1])
            if value_end > end:
                raise ProtocolError("a user property runs past its property block")
            user.append((data[pos + 3 : key_end].decode(), data[key_end + 2 : value_end].decode()))
            pos = value_end
    except (IndexError, UnicodeDecodeError) as err:
        raise ProtocolError(f"malformed properties: {err}") from err
    if pos == end:
        return tuple(user), end
    return read_properties(data, at, end)[1], end


def decode_publish(packet: bytes) -> Publish:
    """One whole PUBLISH packet, fixed header included (for tests and one-offs)."""
    publishes, _, _, consumed = parse_stream(packet)
    if len(publishes) != 1 or consumed != len(packet):
        raise ProtocolError("not exactly one PUBLISH packet")
    return publishes[0]


def puback_delivered(reason: int) -> bool:
    """Whether a QoS 1 PUBACK's reason code means someone downstream now has the message.

    MQTT 5 brokers answer "No matching subscribers" (0x10) with a success-class code, but the
    message was thrown away: on a fresh site before the forwarder first subscribes, or on the
    cloud before the first ingester (re)subscribes. Treating it as delivered would lose the
    reading, so the sender keeps it and tries again. The one rule for both MQTT clients.
    """
    return reason < RC_FIRST_FAILURE and reason != RC_NO_MATCHING_SUBSCRIBERS


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int
    receive_maximum: int = MAX_PACKET_ID  # the protocol's default when the server sends none


def decode_connack(body: bytes) -> ConnAck:
    if len(body) < 2:
        raise ProtocolError(f"CONNACK of {len(body)} bytes")
    receive_maximum = MAX_PACKET_ID
    if len(body) > 2:
        try:
            props_len, pos = read_varint(body, 2)
        except IndexError as err:
            raise ProtocolError("CONNACK properties truncated") from err
        values, _ = read_properties(body, pos, pos + props_len)
        received = values.get(PROP_RECEIVE_MAXIMUM)
        if isinstance(received, int):
            receive_maximum = received
    return ConnAck(bool(body[0] & 0x01), body[1], receive_maximum)


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """(packet id, one granted QoS or failure reason code per filter)."""
    if len(body) < 3:
        raise ProtocolError(f"SUBACK of {len(body)} bytes")
    packet_id = _U16.unpack_from(body, 0)[0]
    try:
        props_len, pos = read_varint(body, 2)
    except IndexError as err:
        raise ProtocolError("SUBACK properties truncated") from err
    return packet_id, list(body[pos + props_len :])


def decode_disconnect(body: bytes) -> tuple[int, str]:
    """(reason code, reason string or ""): why the server is closing the connection."""
    if not body:
        return RC_SUCCESS, ""
    reason_string = ""
    if len(body) > 1:
        try:
            props_len, pos = read_varint(body, 1)
        except IndexError as err:
            raise ProtocolError("DISCONNECT properties truncated") from err
        values, _ = read_properties(body, pos, pos + props_len)
        text = values.get(PROP_REASON_STRING)
        if isinstance(text, bytes):
            reason_string = text.decode(errors="replace")
    return body[0], reason_string
