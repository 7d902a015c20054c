"""The confirmation contract as a table: message ids, ack topics, ranges, and one raw `ack` payload in,
the exact Confirmation or Reason and field out."""

from __future__ import annotations

import json

import pytest

from saltmarsh.contract.confirmation import (
    MAX_CONFIRMATION_BYTES,
    MAX_RANGES,
    Confirmation,
    ConfirmationBatch,
    ack_topic,
    message_id,
    parse_message_id,
    ranges_of,
)
from saltmarsh.contract.envelope import MAX_SEQ
from saltmarsh.contract.errors import Reason, ValidationError

RUN = "b-20240101.x_1"

# -- message ids -------------------------------------------------------------------------------

GOOD_IDS: list[tuple[str, str, tuple[str, int]]] = [
    ("simple", "r:1", ("r", 1)),
    ("run with dots, dashes, underscores", "b-2024.01_x:42", ("b-2024.01_x", 42)),
    ("largest number", f"r:{MAX_SEQ}", ("r", MAX_SEQ)),
    ("64-character run", f"{'a' * 64}:7", ("a" * 64, 7)),
]


@pytest.mark.parametrize(("text", "parsed"), [c[1:] for c in GOOD_IDS], ids=[c[0] for c in GOOD_IDS])
def test_parse_message_id(text: str, parsed: tuple[str, int]) -> None:
    assert parse_message_id(text) == parsed
    assert message_id(*parsed) == text


BAD_IDS: list[tuple[str, str]] = [
    ("empty", ""),
    ("no colon", "r1"),
    ("no number", "r:"),
    ("no run", ":1"),
    ("zero", "r:0"),
    ("negative", "r:-1"),
    ("plus sign", "r:+1"),
    ("space before number", "r: 1"),
    ("trailing newline", "r:1\n"),
    ("decimal", "r:1.0"),
    ("hex", "r:0x1"),
    ("above MAX_SEQ", f"r:{MAX_SEQ + 1}"),
    ("17 digits", "r:" + "1" * 17),
    ("run with a space", "a b:1"),
    ("run with a colon", "a:b:1"),
    ("run with a slash", "a/b:1"),
    ("run starting with a dash", "-r:1"),
    ("65-character run", f"{'a' * 65}:1"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_IDS], ids=[c[0] for c in BAD_IDS])
def test_parse_message_id_refuses(text: str) -> None:
    assert parse_message_id(text) is None


# str.isdigit() is true of every Unicode digit, and int() reads some of them but not others.
NON_ASCII_DIGITS: list[tuple[str, str]] = [
    ("superscript two", "r:\u00b2"),  # int() refuses it: a crash if it got that far
    ("arabic-indic one", "r:\u0661"),  # int() reads 1: a number message_id never writes
]


@pytest.mark.parametrize(
    "text",
    [pytest.param(c[1], id=c[0]) for c in NON_ASCII_DIGITS],
)
def test_parse_message_id_refuses_non_ascii_digits(text: str) -> None:
    assert parse_message_id(text) is None


# -- ack topics and ranges ---------------------------------------------------------------------


def test_ack_topic_is_the_senders_own_ack_channel() -> None:
    assert ack_topic("marsh-1", "probe-7") == "saltmarsh/v1/marsh-1/probe-7/ack"


@pytest.mark.parametrize(
    ("site", "device", "field"),
    [
        ("bad site", "d", "topic.site"),
        ("s", "+", "topic.device"),
        ("s", "a/b", "topic.device"),
        ("", "d", "topic.site"),
    ],
    ids=["site with a space", "wildcard device", "device with a slash", "empty site"],
)
def test_ack_topic_refuses_what_is_not_an_id(site: str, device: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ack_topic(site, device)
    assert caught.value.field == field


RANGES: list[tuple[str, list[int], tuple[tuple[int, int], ...]]] = [
    ("nothing", [], ()),
    ("one", [5], ((5, 5),)),
    ("a run", [1, 2, 3], ((1, 3),)),
    ("unsorted", [3, 1, 2], ((1, 3),)),
    ("duplicates collapse", [1, 1, 2, 2, 2], ((1, 2),)),
    ("gaps", [1, 3, 4, 7], ((1, 1), (3, 4), (7, 7))),
    ("every other", [1, 3, 5], ((1, 1), (3, 3), (5, 5))),
    ("the largest numbers", [MAX_SEQ, MAX_SEQ - 1], ((MAX_SEQ - 1, MAX_SEQ),)),
    ("ten thousand in a row", list(range(10_000, 0, -1)), ((1, 10_000),)),
]


@pytest.mark.parametrize(("numbers", "ranges"), [c[1:] for c in RANGES], ids=[c[0] for c in RANGES])
def test_ranges_of(numbers: list[int], ranges: tuple[tuple[int, int], ...]) -> None:
    assert ranges_of(numbers) == ranges
    assert ranges_of(iter(numbers)) == ranges  # any iterable, once


# -- Confirmation ------------------------------------------------------------------------------


def test_a_confirmation_encodes_compactly_and_parses_back() -> None:
    confirmation = Confirmation.of(RUN, [4, 1, 2])
    assert confirmation == Confirmation(RUN, ((1, 2), (4, 4)))
    assert confirmation.count == 3
    assert confirmation.encode() == b'{"v":1,"run":"b-20240101.x_1","ranges":[[1,2],[4,4]]}'
    assert Confirmation.parse(confirmation.encode()) == confirmation


def payload(run: object = RUN, ranges: object = ((1, 2),), **extra: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "run": run, "ranges": ranges}
    doc.update(extra)
    return json.dumps({k: v for k, v in doc.items() if v is not DROP}, separators=(",", ":")).encode()


DROP = object()
ISOLATED = [[n, n] for n in range(1, 2 * MAX_RANGES + 2, 2)]  # ranges that cannot merge
ISOLATED_PAIRS = tuple((n, n) for n, _ in ISOLATED[:MAX_RANGES])
LONG_INTEGER = payload().replace(b"[[1,2]]", b"[[1," + b"9" * 5000 + b"]]")
DEEP_RANGES = payload(ranges=[]).replace(b"[]", b"[" * 100_000)

ACCEPTED: list[tuple[str, bytes, Confirmation]] = [
    ("minimal", payload(), Confirmation(RUN, ((1, 2),))),
    ("adjacent ranges stay apart", payload(ranges=[[1, 2], [3, 4]]), Confirmation(RUN, ((1, 2), (3, 4)))),
    ("one number", payload(ranges=[[7, 7]]), Confirmation(RUN, ((7, 7),))),
    ("the whole number space", payload(ranges=[[1, MAX_SEQ]]), Confirmation(RUN, ((1, MAX_SEQ),))),
    ("64-character run", payload(run="r" * 64), Confirmation("r" * 64, ((1, 2),))),
    ("whitespace", b' { "v" : 1 , "run" : "r" , "ranges" : [ [ 1 , 2 ] ] } ', Confirmation("r", ((1, 2),))),
    ("MAX_RANGES ranges", payload(ranges=ISOLATED[:MAX_RANGES]), Confirmation(RUN, ISOLATED_PAIRS)),
    ("exactly MAX_CONFIRMATION_BYTES", payload().ljust(MAX_CONFIRMATION_BYTES), Confirmation(RUN, ((1, 2),))),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_confirmation_accepts(raw: bytes, expected: Confirmation) -> None:
    assert Confirmation.parse(raw) == expected


REJECTED: list[tuple[str, bytes, Reason, str]] = [
    # the payload as a whole
    ("empty", b"", Reason.MALFORMED_JSON, "payload"),
    ("truncated", payload()[:-1], Reason.MALFORMED_JSON, "payload"),
    ("not json", b"confirmed 1-2", Reason.MALFORMED_JSON, "payload"),
    ("trailing garbage", payload() + b"x", Reason.MALFORMED_JSON, "payload"),
    ("integer with 5000 digits", LONG_INTEGER, Reason.MALFORMED_JSON, "payload"),
    ("invalid UTF-8 in a string", payload(run="r\udcff").replace(b"\\udcff", b"\xff"), Reason.NOT_UTF8, "payload"),
    ("invalid UTF-8 continuation", b'{"v":1,"run":"\xc3\x28"}', Reason.NOT_UTF8, "payload"),
    ("one byte too many", payload().ljust(MAX_CONFIRMATION_BYTES + 1), Reason.OVERSIZED, "payload"),
    ("a list", b"[[1,2]]", Reason.WRONG_TYPE, "payload"),
    ("a string", b'"ranges"', Reason.WRONG_TYPE, "payload"),
    ("a number", b"1", Reason.WRONG_TYPE, "payload"),
    ("null", b"null", Reason.WRONG_TYPE, "payload"),
    # version
    ("empty object", b"{}", Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    ("no version", payload(v=DROP), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    ("version 2", payload(v=2), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    ("version 0", payload(v=0), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    ("version as string", payload(v="1"), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    ("version null", payload(v=None), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    # run
    ("no run", payload(run=DROP), Reason.MISSING_FIELD, "confirmation.run"),
    ("run null", payload(run=None), Reason.INVALID_VALUE, "confirmation.run"),
    ("run as number", payload(run=5), Reason.INVALID_VALUE, "confirmation.run"),
    ("run as list", payload(run=["r"]), Reason.INVALID_VALUE, "confirmation.run"),
    ("empty run", payload(run=""), Reason.INVALID_VALUE, "confirmation.run"),
    ("run with a space", payload(run="a b"), Reason.INVALID_VALUE, "confirmation.run"),
    ("run with a slash", payload(run="a/b"), Reason.INVALID_VALUE, "confirmation.run"),
    ("run with a colon", payload(run="a:1"), Reason.INVALID_VALUE, "confirmation.run"),
    ("run of 65 characters", payload(run="r" * 65), Reason.INVALID_VALUE, "confirmation.run"),
    # ranges as a whole
    ("no ranges", payload(ranges=DROP), Reason.MISSING_FIELD, "confirmation.ranges"),
    ("ranges empty", payload(ranges=[]), Reason.MISSING_FIELD, "confirmation.ranges"),
    ("ranges null", payload(ranges=None), Reason.WRONG_TYPE, "confirmation.ranges"),
    ("ranges as object", payload(ranges={"1": 2}), Reason.WRONG_TYPE, "confirmation.ranges"),
    ("ranges as string", payload(ranges="1-2"), Reason.WRONG_TYPE, "confirmation.ranges"),
    ("ranges flat", payload(ranges=[1, 2]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("one range too many", payload(ranges=ISOLATED[: MAX_RANGES + 1]), Reason.OVERSIZED, "confirmation.ranges"),
    # one range's shape and types
    ("a number among ranges", payload(ranges=[[1, 2], 3]), Reason.WRONG_TYPE, "confirmation.ranges[1]"),
    ("one bound", payload(ranges=[[1]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("three bounds", payload(ranges=[[1, 2, 3]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("no bounds", payload(ranges=[[]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("range as object", payload(ranges=[{"first": 1, "last": 2}]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("true as first", payload(ranges=[[True, 2]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("false as first", payload(ranges=[[False, 2]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("true as last", payload(ranges=[[1, True]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("float first", payload(ranges=[[1.0, 2]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("float last", payload(ranges=[[1, 2.5]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("string bound", payload(ranges=[["1", 2]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("null bound", payload(ranges=[[None, 2]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("nested bound", payload(ranges=[[[1], 2]]), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("NaN bound", b'{"v":1,"run":"r","ranges":[[1,NaN]]}', Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("infinite bound", b'{"v":1,"run":"r","ranges":[[1,1e400]]}', Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("bad type in the second range", payload(ranges=[[1, 2], [3, "4"]]), Reason.WRONG_TYPE, "confirmation.ranges[1]"),
    # one range's values and order
    ("zero", payload(ranges=[[0, 1]]), Reason.INVALID_VALUE, "confirmation.ranges[0]"),
    ("negative", payload(ranges=[[-1, 1]]), Reason.INVALID_VALUE, "confirmation.ranges[0]"),
    ("backwards", payload(ranges=[[2, 1]]), Reason.INVALID_VALUE, "confirmation.ranges[0]"),
    ("above MAX_SEQ", payload(ranges=[[1, MAX_SEQ + 1]]), Reason.INVALID_VALUE, "confirmation.ranges[0]"),
    ("overlapping by one", payload(ranges=[[1, 5], [5, 6]]), Reason.INVALID_VALUE, "confirmation.ranges[1]"),
    ("inside the previous", payload(ranges=[[1, 5], [3, 4]]), Reason.INVALID_VALUE, "confirmation.ranges[1]"),
    ("the same range twice", payload(ranges=[[1, 2], [1, 2]]), Reason.INVALID_VALUE, "confirmation.ranges[1]"),
    ("out of order", payload(ranges=[[5, 6], [1, 2]]), Reason.INVALID_VALUE, "confirmation.ranges[1]"),
    ("third range backwards", payload(ranges=[[1, 1], [3, 3], [9, 8]]), Reason.INVALID_VALUE, "confirmation.ranges[2]"),
]


@pytest.mark.parametrize(("raw", "reason", "field"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_confirmation_rejects(raw: bytes, reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Confirmation.parse(raw)
    assert (caught.value.reason, caught.value.field) == (reason, field)
    assert len(caught.value.detail) <= 120, "details are cut, whatever a peer sends"


# Refused the way `saltmarsh.contract.envelope.parse` refuses them: json.loads alone would take them.
ENVELOPE_REFUSES: list[tuple[str, bytes, Reason, str]] = [
    ("nested too deeply", b"[" * 100_000, Reason.MALFORMED_JSON, "payload"),
    ("ranges nested too deeply", DEEP_RANGES, Reason.MALFORMED_JSON, "payload"),
    ("UTF-16", payload().decode().encode("utf-16"), Reason.NOT_UTF8, "payload"),
    ("UTF-32", payload().decode().encode("utf-32"), Reason.NOT_UTF8, "payload"),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + payload(), Reason.MALFORMED_JSON, "payload"),
    ("version true", payload(v=True), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
    ("version 1.0", payload(v=1.0), Reason.UNSUPPORTED_VERSION, "confirmation.v"),
]


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [pytest.param(*c[1:4], id=c[0]) for c in ENVELOPE_REFUSES],
)
def test_confirmation_rejects_what_the_envelope_rejects(raw: bytes, reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Confirmation.parse(raw)
    assert (caught.value.reason, caught.value.field) == (reason, field)


CONSTRUCTED: list[tuple[str, object, object, Reason, str]] = [
    ("run not a string", 7, ((1, 1),), Reason.INVALID_VALUE, "confirmation.run"),
    ("no ranges", RUN, (), Reason.MISSING_FIELD, "confirmation.ranges"),
    ("range as list", RUN, ([1, 2],), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("bool bound", RUN, ((1, True),), Reason.WRONG_TYPE, "confirmation.ranges[0]"),
    ("overlap", RUN, ((1, 3), (2, 4)), Reason.INVALID_VALUE, "confirmation.ranges[1]"),
]


@pytest.mark.parametrize(
    ("run", "ranges", "reason", "field"), [c[1:] for c in CONSTRUCTED], ids=[c[0] for c in CONSTRUCTED]
)
def test_a_confirmation_validates_itself(run: object, ranges: object, reason: Reason, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Confirmation(run, ranges)  # type: ignore[arg-type]
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_confirmation_is_frozen() -> None:
    confirmation = Confirmation(RUN, ((1, 1),))
    with pytest.raises(AttributeError):
        confirmation.run = "other"  # type: ignore[misc]


# -- ConfirmationBatch -------------------------------------------------------------------------

TOPIC_A = ack_topic("s", "gw-a")
TOPIC_B = ack_topic("s", "gw-b")


def decoded(batch: ConfirmationBatch) -> list[tuple[str, Confirmation]]:
    return [(topic, Confirmation.parse(body)) for topic, body in batch.messages()]


def test_an_empty_batch_confirms_nothing() -> None:
    batch = ConfirmationBatch()
    assert not batch
    assert (batch.count, batch.messages()) == (0, [])


def test_a_batch_groups_by_topic_and_run() -> None:
    batch = ConfirmationBatch()
    for topic, run, number in [
        (TOPIC_A, "r1", 3),
        (TOPIC_A, "r1", 1),
        (TOPIC_B, "r1", 9),
        (TOPIC_A, "r2", 1),
        (TOPIC_A, "r1", 2),
        (TOPIC_A, "r1", 2),  # a copy committed twice
        (TOPIC_A, "r1", 7),
    ]:
        batch.add(topic, run, number)
    assert batch
    assert batch.count == 7, "every message counted, copies too"
    assert decoded(batch) == [
        (TOPIC_A, Confirmation("r1", ((1, 3), (7, 7)))),
        (TOPIC_B, Confirmation("r1", ((9, 9),))),
        (TOPIC_A, Confirmation("r2", ((1, 1),))),
    ]


def test_batches_extend_into_one() -> None:
    first, second, third = ConfirmationBatch(), ConfirmationBatch(), ConfirmationBatch()
    first.add(TOPIC_A, "r1", 1)
    second.add(TOPIC_A, "r1", 2)
    second.add(TOPIC_B, "r9", 5)
    first.extend(second)
    first.extend(third)  # an empty one changes nothing
    assert first.count == 3
    assert decoded(first) == [(TOPIC_A, Confirmation("r1", ((1, 2),))), (TOPIC_B, Confirmation("r9", ((5, 5),)))]
    assert second.count == 2, "the batch extended from is left as it was"


@pytest.mark.parametrize(
    ("base", "ranges", "messages"),
    [
        (1, MAX_RANGES, [MAX_RANGES]),
        (1, MAX_RANGES + 1, [MAX_RANGES, 1]),
        (1, 2 * MAX_RANGES + 1, [MAX_RANGES, MAX_RANGES, 1]),
        (MAX_SEQ - 2 * MAX_RANGES, MAX_RANGES, [MAX_RANGES]),  # the longest numbers still fit in a payload
    ],
    ids=["exactly MAX_RANGES", "one more", "two and a bit", "sixteen-digit numbers"],
)
def test_a_batch_splits_at_max_ranges(base: int, ranges: int, messages: list[int]) -> None:
    numbers = [base + 2 * i for i in range(ranges)]  # every other number: one range each
    batch = ConfirmationBatch()
    for number in reversed(numbers):
        batch.add(TOPIC_A, RUN, number)
    out = batch.messages()
    assert [len(Confirmation.parse(body).ranges) for _, body in out] == messages
    assert all(len(body) <= MAX_CONFIRMATION_BYTES for _, body in out)
    confirmed = [
        n for _, body in out for first, last in Confirmation.parse(body).ranges for n in range(first, last + 1)
    ]
    assert confirmed == numbers, "every number once, in order across the messages"
