"""The MQTT 5 codec as a table: bytes a broker would send or expect, and what they mean."""

from __future__ import annotations

import pytest

from saltmarsh.contract.errors import ProtocolError
from saltmarsh.mqtt.codec import (
    DISCONNECT_PACKET,
    PINGREQ,
    PINGREQ_PACKET,
    PINGRESP,
    PINGRESP_PACKET,
    RETAIN_SEND_IF_NEW_SUB,
    SUBACK,
    ConnAck,
    Packet,
    Publish,
    Will,
    decode_connack,
    decode_disconnect,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    parse_stream,
    properties,
    puback_delivered,
    read_properties,
    read_varint,
    user_property,
    varint,
)

GW = user_property("gw", "gw-1")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded
    assert read_varint(b"\xaa" + encoded + b"\xbb", 1) == (value, 1 + len(encoded))


def test_varint_limits() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        varint(268_435_456)
    with pytest.raises(ProtocolError, match="longer than 4 bytes"):
        read_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(IndexError):
        read_varint(b"\x80", 0)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        # (topic, payload, qos, packet id, props) -> exact bytes, per MQTT 5 section 3.3
        ((b"a/b", b"hi", 1, 10, b"\x00"), b"\x32\x0a\x00\x03a/b\x00\x0a\x00hi"),
        ((b"a/b", b"hi", 0, 0, b"\x00"), b"\x30\x08\x00\x03a/b\x00hi"),
        ((b"t", b"", 1, 65535, b"\x00"), b"\x32\x06\x00\x01t\xff\xff\x00"),
        ((b"t", b"x", 1, 1, properties(GW)), b"\x32\x12\x00\x01t\x00\x01\x0b\x26\x00\x02gw\x00\x04gw-1x"),
    ],
)
def test_encode_publish_exact_bytes(encoded: tuple[bytes, bytes, int, int, bytes], expected: bytes) -> None:
    topic, payload, qos, packet_id, props = encoded
    assert encode_publish(topic, payload, qos, packet_id, props=props) == expected


MORE_PROPS = properties(b"\x01\x01", b"\x02\x00\x00\x00\x3c", GW, b"\x03\x00\x04json", user_property("k", "v"))


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (b"\x00", Publish("saltmarsh/v1/s/d/reading", b'{"seq": 1}', 1, 1, False, False, ())),
        (b"\x00", Publish("saltmarsh/v1/s/d/reading", b"", 1, 65535, True, False, ())),
        (b"\x00", Publish("t", b"x" * 200, 0, 0, False, True, ())),  # two-byte remaining length
        (b"\x00", Publish("t", b"x" * 20_000, 1, 7, False, False, ())),  # three-byte remaining length
        (properties(GW), Publish("t/\u00e9", b"\x00\xff", 1, 2, False, False, (("gw", "gw-1"),))),
        (MORE_PROPS, Publish("t", b"p", 1, 3, False, False, (("gw", "gw-1"), ("k", "v")))),
        # User properties only, read inline; then one after another kind, by the general reader.
        (
            properties(GW, user_property("msg", "6b0f-1:42"), user_property("", "\u00e9")),
            Publish("t", b"p", 1, 4, False, False, (("gw", "gw-1"), ("msg", "6b0f-1:42"), ("", "\u00e9"))),
        ),
        (
            properties(GW, b"\x01\x01", user_property("msg", "r:1")),
            Publish("t", b"p", 1, 5, False, False, (("gw", "gw-1"), ("msg", "r:1"))),
        ),
    ],
)
def test_publish_round_trip(props: bytes, expected: Publish) -> None:
    packet = encode_publish(
        expected.topic.encode(),
        expected.payload,
        expected.qos,
        expected.packet_id,
        props=props,
        dup=expected.dup,
        retain=expected.retain,
    )
    assert decode_publish(packet) == expected


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"\x40\x02\x00\x07", (7, 0x00)),  # success may omit the reason code
        (b"\x40\x03\x01\x00\x10", (256, 0x10)),  # no matching subscribers
        (b"\x40\x04\x00\x09\x87\x00", (9, 0x87)),  # not authorized, empty properties
        (encode_puback(65535), (65535, 0x00)),
    ],
)
def test_puback(packet: bytes, expected: tuple[int, int]) -> None:
    assert parse_stream(packet) == ([], [expected], [], len(packet))


@pytest.mark.parametrize(
    ("reason", "delivered"),
    [(0x00, True), (0x10, False), (0x80, False), (0x87, False), (0x97, False)],
)
def test_puback_delivered(reason: int, delivered: bool) -> None:
    assert puback_delivered(reason) is delivered


def test_parse_stream_many_packets_and_a_partial_tail() -> None:
    pub = encode_publish(b"a", b"1", 1, 5)
    stream = pub + encode_puback(3) + PINGRESP_PACKET + pub
    for cut in range(len(stream) + 1):
        publishes, pubacks, others, consumed = parse_stream(stream[:cut])
        # Only whole packets count, and the rest is left for the next read.
        whole = [n for n in (len(pub), len(pub) + 4, len(pub) + 6, 2 * len(pub) + 6) if n <= cut]
        assert consumed == (whole[-1] if whole else 0)
        rest_publishes, rest_pubacks, rest_others, rest_consumed = parse_stream(stream[consumed:])
        assert len(publishes) + len(rest_publishes) == 2
        assert pubacks + rest_pubacks == [(3, 0)]
        assert others + rest_others == [Packet(PINGRESP, 0, b"")]
        assert consumed + rest_consumed == len(stream)


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        (b"\x32\x03\x00\x05a", "topic runs past"),
        (b"\x32\x05\x00\x01t\x00\x01", "malformed PUBLISH header"),  # no property length
        (b"\x32\x08\x00\x01t\x00\x01\x02\x99\x00", "unknown property"),
        (b"\x32\x06\x00\x01\xff\x00\x01\x00", "not UTF-8"),
        # user properties: a value longer than its block, a key cut short, a value not UTF-8
        (b"\x32\x0d\x00\x01t\x00\x01\x07\x26\x00\x01k\x00\x09v", "runs past its property block"),
        (b"\x32\x09\x00\x01t\x00\x01\x03\x26\x00\x05", "malformed properties"),
        (b"\x32\x0d\x00\x01t\x00\x01\x07\x26\x00\x01k\x00\x01\xff", "malformed properties"),
        (b"\x40\x01\x00", "PUBACK of 1 bytes"),
    ],
)
def test_parse_stream_rejects_malformed(packet: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_stream(packet)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x00\x00", ConnAck(False, 0, 65535)),  # MQTT 3-style, no properties
        (b"\x01\x00\x00", ConnAck(True, 0, 65535)),
        (b"\x00\x00\x03\x21\x03\xe8", ConnAck(False, 0, 1000)),
        # Mosquitto 2.0 style: topic alias maximum, receive maximum, retain available, a reason string
        (b"\x00\x00\x0d\x22\x00\x0a\x21\x00\x14\x25\x01\x1f\x00\x02ok", ConnAck(False, 0, 20)),
        (b"\x00\x87\x00", ConnAck(False, 0x87, 65535)),
        (b"\x00\x00\x07\x26\x00\x01k\x00\x01v", ConnAck(False, 0, 65535)),
    ],
)
def test_decode_connack(body: bytes, expected: ConnAck) -> None:
    assert decode_connack(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"\x00", b"\x00\x00\x05\x21\x00", b"\x00\x00\x02\x99\x00"],
)
def test_decode_connack_rejects_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_connack(body)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"clean_start": True, "keepalive_s": 30},
            b"\x10\x14\x00\x04MQTT\x05\x02\x00\x1e\x05\x11\x00\x00\x00\x00\x00\x02id",
        ),
        (
            {"clean_start": False, "keepalive_s": 60, "session_expiry_s": 3600, "receive_maximum": 4000},
            b"\x10\x17\x00\x04MQTT\x05\x00\x00\x3c\x08\x11\x00\x00\x0e\x10\x21\x0f\xa0\x00\x02id",
        ),
        (
            {"clean_start": True, "keepalive_s": 5, "username": "u", "password": "p"},
            b"\x10\x1a\x00\x04MQTT\x05\xc2\x00\x05\x05\x11\x00\x00\x00\x00\x00\x02id\x00\x01u\x00\x01p",
        ),
        (
            {"clean_start": True, "keepalive_s": 5, "will": Will("w", b"gone")},
            b"\x10\x1e\x00\x04MQTT\x05\x2e\x00\x05\x05\x11\x00\x00\x00\x00\x00\x02id\x00\x00\x01w\x00\x04gone",
        ),
    ],
)
def test_encode_connect(kwargs: dict[str, object], expected: bytes) -> None:
    assert encode_connect("id", **kwargs) == expected  # type: ignore[arg-type]


def test_encode_subscribe() -> None:
    packet = encode_subscribe(1, [("a/#", 1 | RETAIN_SEND_IF_NEW_SUB), ("b", 0)])
    assert packet == b"\x82\x0d\x00\x01\x00\x00\x03a/#\x11\x00\x01b\x00"
    with pytest.raises(ValueError, match="at least one"):
        encode_subscribe(1, [])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\x00\x01\x00\x01", (1, [1])),
        (b"\x12\x34\x00\x01\x00\x87", (0x1234, [1, 0, 0x87])),
        (b"\x00\x02\x05\x1f\x00\x02no\x80", (2, [0x80])),
    ],
)
def test_decode_suback(body: bytes, expected: tuple[int, list[int]]) -> None:
    assert decode_suback(body) == expected
    assert parse_stream(bytes((SUBACK << 4, len(body))) + body)[2] == [Packet(SUBACK, 0, body)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (0, "")),
        (b"\x8e", (0x8E, "")),  # session taken over
        (b"\x8e\x00", (0x8E, "")),
        (b"\x8b\x07\x1f\x00\x04down", (0x8B, "down")),
    ],
)
def test_decode_disconnect(body: bytes, expected: tuple[int, str]) -> None:
    assert decode_disconnect(body) == expected


def test_fixed_packets() -> None:
    assert PINGREQ_PACKET == bytes((PINGREQ << 4, 0)) == b"\xc0\x00"
    assert DISCONNECT_PACKET == b"\xe0\x00"


def test_read_properties_values_and_user_properties_in_order() -> None:
    block = b"".join(
        (b"\x11\x00\x00\x00\x3c", user_property("a", "1"), b"\x0b\x80\x01", user_property("a", "2"), b"\x09\x00\x01z")
    )
    values, user = read_properties(block, 0, len(block))
    assert values == {0x11: 60, 0x0B: 128, 0x09: b"z"}
    assert user == (("a", "1"), ("a", "2"))
    with pytest.raises(ProtocolError, match="overrun"):
        read_properties(block, 0, len(block) - 1)
