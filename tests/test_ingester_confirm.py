"""The ingester's confirm stage as a table: one PUBLISH in, whom to confirm it to (or None) out."""

from __future__ import annotations

import pytest
from cloud_ingester.confirm import Sender, is_downlink, sender_of

from saltmarsh.contract.confirmation import Confirmation, ConfirmationBatch
from saltmarsh.mqtt.codec import Publish

READING = "saltmarsh/v1/marsh-1/probe-7/reading"
ACK = "saltmarsh/v1/marsh-1/gw-1/ack"


def publish(topic: str = READING, *props: tuple[str, str]) -> Publish:
    return Publish(topic, b"{}", 1, 17, False, False, props)


GW = ("gw", "gw-1")
MSG = ("msg", "run-1:7")


@pytest.mark.parametrize(
    ("topic", "confirmation"),
    [
        (ACK, True),
        ("saltmarsh/v1/+/gw-1/ack", True),  # as it would never arrive, but the suffix is all that counts
        (READING, False),
        ("saltmarsh/v1/marsh-1/probe-7/alert", False),
        ("saltmarsh/v1/marsh-1/ack/reading", False),  # a device named "ack"
        ("saltmarsh/v1/marsh-1/gw-1/acks", False),
        ("saltmarsh/v1/marsh-1/gw-1/ack/x", False),
        ("ack", False),
        ("", False),
        ("saltmarsh/v1/marsh-1/probe-7/cmd", True),
        ("saltmarsh/v1/marsh-1/_all/cmd", True),
        ("saltmarsh/v1/marsh-1/probe-7/cmdres", False),  # an outcome is data
    ],
    ids=[
        "ack",
        "wildcard site",
        "reading",
        "alert",
        "device named ack",
        "acks",
        "below ack",
        "bare ack",
        "empty",
        "cmd",
        "broadcast cmd",
        "cmdres",
    ],
)
def test_is_downlink(topic: str, confirmation: bool) -> None:
    assert is_downlink(publish(topic)) is confirmation


SENDERS: list[tuple[str, str, tuple[tuple[str, str], ...], Sender | None]] = [
    ("gateway and number", READING, (GW, MSG), (ACK, "run-1", 7)),
    ("either order", READING, (MSG, GW), (ACK, "run-1", 7)),
    ("among other properties", READING, (("trace", "x"), GW, ("k", ""), MSG), (ACK, "run-1", 7)),
    (
        "the site is the topic's",
        "saltmarsh/v1/marsh-2/probe-7/event",
        (GW, MSG),
        ("saltmarsh/v1/marsh-2/gw-1/ack", "run-1", 7),
    ),
    ("any channel", "saltmarsh/v1/marsh-1/probe-7/whatever", (GW, MSG), (ACK, "run-1", 7)),
    ("the largest number", READING, (GW, ("msg", "r:9007199254740991")), (ACK, "r", 2**53 - 1)),
    # nothing to confirm to
    ("no properties", READING, (), None),
    ("a plain MQTT client's number, no gateway", READING, (MSG,), None),
    ("a gateway, no number", READING, (GW,), None),
    ("property names are exact", READING, (("GW", "gw-1"), ("Msg", "run-1:7")), None),
    # a gateway that is not an id
    ("empty gateway", READING, (("gw", ""), MSG), None),
    ("gateway with a space", READING, (("gw", "gw 1"), MSG), None),
    ("gateway with a slash", READING, (("gw", "a/b"), MSG), None),
    ("gateway as a wildcard", READING, (("gw", "+"), MSG), None),
    ("gateway as a multi-level wildcard", READING, (("gw", "#"), MSG), None),
    ("gateway of 65 characters", READING, (("gw", "g" * 65), MSG), None),
    # a number that is not one
    ("number without run", READING, (GW, ("msg", "7")), None),
    ("number zero", READING, (GW, ("msg", "run-1:0")), None),
    ("number not digits", READING, (GW, ("msg", "run-1:seven")), None),
    ("number above MAX_SEQ", READING, (GW, ("msg", "run-1:9007199254740992")), None),
    ("run with a space", READING, (GW, ("msg", "run 1:7")), None),
    ("empty number", READING, (GW, ("msg", "")), None),
    # a topic with no valid site level
    ("topic with no site level", "saltmarsh/v1", (GW, MSG), None),
    ("site level empty", "saltmarsh/v1//probe-7/reading", (GW, MSG), None),
    ("site with a space", "saltmarsh/v1/marsh 1/probe-7/reading", (GW, MSG), None),
]


@pytest.mark.parametrize(("topic", "props", "expected"), [c[1:] for c in SENDERS], ids=[c[0] for c in SENDERS])
def test_sender_of(topic: str, props: tuple[tuple[str, str], ...], expected: Sender | None) -> None:
    assert sender_of(publish(topic, *props)) == expected


def test_sender_of_a_number_in_superscript_digits_is_none() -> None:
    assert sender_of(publish(READING, GW, ("msg", "run-1:\u00b2"))) is None


def test_senders_of_a_batch_make_one_confirmation_per_gateway_run() -> None:
    """What the ingester does with a committed batch: `sender_of` each, into a ConfirmationBatch."""
    publishes = [
        publish(READING, ("gw", "gw-1"), ("msg", "a:1")),
        publish(READING, ("gw", "gw-1"), ("msg", "a:2")),
        publish("saltmarsh/v1/marsh-1/probe-8/reading", ("gw", "gw-2"), ("msg", "b:9")),
        publish(READING),  # nobody to confirm to
        publish(READING, ("gw", "gw-1"), ("msg", "a:4")),
        publish(READING, ("gw", "gw-1"), ("msg", "a0:1")),  # the same gateway, restarted
    ]
    batch = ConfirmationBatch()
    for sender in map(sender_of, publishes):
        if sender is not None:
            batch.add(*sender)
    assert batch.count == 5
    assert [(topic, Confirmation.parse(body)) for topic, body in batch.messages()] == [
        (ACK, Confirmation("a", ((1, 2), (4, 4)))),
        ("saltmarsh/v1/marsh-1/gw-2/ack", Confirmation("b", ((9, 9),))),
        (ACK, Confirmation("a0", ((1, 1),))),
    ]
