"""The topic layout: parse and render round trip, ids that are safe everywhere, filters."""

from __future__ import annotations

import pytest

from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import BROADCAST, Channel, Topic, check_id, shared, site_commands


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("saltmarsh/v1/marsh-1/probe-7/reading", Topic("marsh-1", "probe-7", Channel.READING)),
        ("saltmarsh/v1/s/d/event", Topic("s", "d", Channel.EVENT)),
        ("saltmarsh/v1/S.1/D_2/alert", Topic("S.1", "D_2", Channel.ALERT)),
        ("saltmarsh/v1/s/d/status", Topic("s", "d", Channel.STATUS)),
        ("saltmarsh/v1/s/d/cmd", Topic("s", "d", Channel.COMMAND)),
        ("saltmarsh/v1/s/d/cmdres", Topic("s", "d", Channel.CMDRES)),
        ("saltmarsh/v1/s/_all/cmd", Topic("s", BROADCAST, Channel.COMMAND)),
    ],
)
def test_parse_and_render_round_trip(text: str, expected: Topic) -> None:
    assert Topic.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("probe-7", None),
        ("a" * 64, None),
        ("a" * 65, Reason.INVALID_VALUE),
        ("", Reason.INVALID_VALUE),
        ("-leading-dash", Reason.INVALID_VALUE),
        ("has space", Reason.INVALID_VALUE),
        ("slash/inside", Reason.INVALID_VALUE),
        ("plus+", Reason.INVALID_VALUE),
        ("hash#", Reason.INVALID_VALUE),
        ("naïve", Reason.INVALID_VALUE),
        ("trailing-newline\n", Reason.INVALID_VALUE),
        (7, Reason.WRONG_TYPE),
        (None, Reason.WRONG_TYPE),
    ],
)
def test_check_id(value: object, reason: Reason | None) -> None:
    if reason is None:
        assert check_id("device", value) == value
        return
    with pytest.raises(ValidationError) as caught:
        check_id("device", value)
    assert (caught.value.reason, caught.value.field) == (reason, "device")


def test_a_topic_with_a_bad_id_fails_at_construction_naming_the_level() -> None:
    with pytest.raises(ValidationError) as caught:
        Topic("marsh 1", "probe-7", Channel.READING)
    assert caught.value.field == "topic.site"


def test_shared_subscription_filter() -> None:
    assert shared("ingesters", "saltmarsh/v1/+/#") == "$share/ingesters/saltmarsh/v1/+/#"


def test_only_data_channels_carry_data() -> None:
    assert [c for c in Channel if c.carries_data] == [Channel.READING, Channel.EVENT, Channel.ALERT, Channel.CMDRES]


@pytest.mark.parametrize("channel", [c for c in Channel if c is not Channel.COMMAND])
def test_only_a_command_may_address_the_whole_site(channel: Channel) -> None:
    with pytest.raises(ValidationError) as caught:
        Topic("s", BROADCAST, channel)
    assert (caught.value.reason, caught.value.field) == (Reason.INVALID_VALUE, "topic.device")
    with pytest.raises(ValidationError) as parsed:
        Topic.parse(f"saltmarsh/v1/s/{BROADCAST}/{channel.value}")
    assert (parsed.value.reason, parsed.value.field) == (Reason.UNKNOWN_TOPIC, "topic.device")


def test_broadcast_is_no_site_and_no_device_id() -> None:
    with pytest.raises(ValidationError):
        check_id("device", BROADCAST)
    with pytest.raises(ValidationError) as caught:
        Topic(BROADCAST, "d", Channel.COMMAND)
    assert caught.value.field == "topic.site"


def test_site_commands_filter() -> None:
    assert site_commands("marsh-1") == "saltmarsh/v1/marsh-1/+/cmd"
    with pytest.raises(ValidationError) as caught:
        site_commands("+")
    assert caught.value.field == "site"
