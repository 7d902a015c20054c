"""Selection rules as a spec: one line per case, rules written as they would be in config."""

from __future__ import annotations

from typing import Any

import pytest

from saltmarsh.config.kinesis import selection_config
from saltmarsh.config.table import Table
from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.topics import Channel
from saltmarsh.sinks.kinesis.selection import Globs, Match, Op, Rule, Selection, TagRule, Threshold
from tests.kinesis_support import envelope

R, E, A = Channel.READING, Channel.EVENT, Channel.ALERT

RULES: list[dict[str, Any]] = [
    {"name": "alerts", "kinds": ["alert"]},
    {"name": "doors", "kinds": ["event"], "names": ["door_*", "tamper"]},
    {"name": "hot-or-cold", "thresholds": ["temperature > 35", "temperature < -5"]},
    {"name": "wet", "kinds": ["reading"], "thresholds": ["humidity >= 90"]},
    {"name": "lab-pis", "sites": ["lab-*"], "devices": ["pi-*"]},
    {"name": "north-events", "topics": ["saltmarsh/v1/north/*/event"]},
    {"name": "salt-returns", "tags": ["salt/job/*/ret/*"]},
]
SELECTION = selection_config([Table(rule, f"select[{i}]") for i, rule in enumerate(RULES)])

CASES: list[tuple[Envelope, str | None, str | None]] = [
    # envelope, topic (None: the envelope's own), expected (rule, why) as "rule | why" or None
    (envelope(kind=A, name="overheat"), None, "alerts | kind alert"),
    (envelope(kind=A, name="door_open"), None, "alerts | kind alert"),  # first match wins
    (envelope(kind=E, name="door_open"), None, "doors | kind event; name door_open ~ door_*"),
    (envelope(kind=E, name="tamper"), None, "doors | kind event; name tamper ~ tamper"),
    (envelope(kind=E, name="doorbell"), None, None),  # door_* needs the underscore
    (envelope(kind=E, name="Door_open"), None, None),  # globs are case-sensitive
    (envelope(temperature=35.5), None, "hot-or-cold | temperature 35.5 > 35"),
    (envelope(temperature=35.0), None, None),  # > is strict
    (envelope(temperature=-5.1), None, "hot-or-cold | temperature -5.1 < -5"),
    (envelope(temperature=-5.0), None, None),
    (envelope(kind=E, name="boot", temperature=40.0), None, "hot-or-cold | temperature 40 > 35"),  # any kind
    (envelope(humidity=90.0), None, "wet | kind reading; humidity 90 >= 90"),
    (envelope(humidity=89.9), None, None),
    (envelope(kind=E, name="x", humidity=95.0), None, None),  # wet is for readings only
    (envelope(light=1.0), None, None),  # a missing metric never crosses a threshold
    (envelope(site="lab-3", device="pi-7"), None, "lab-pis | site ~ lab-*; device ~ pi-*"),
    (envelope(site="lab-3", device="esp-7"), None, None),  # every condition must hold
    (envelope(site="north", kind=E, name="x"), None, "north-events | topic ~ saltmarsh/v1/north/*/event"),
    (envelope(site="north", kind=E, name="x"), "saltmarsh/v1/south/dev-1/event", None),  # the given topic wins
    (envelope(site="north"), None, None),
    (envelope(), None, None),  # a plain 20 degree reading: Elasticsearch only
]


@pytest.mark.parametrize(("env", "topic", "expected"), CASES)
def test_selection_cases(env: Envelope, topic: str | None, expected: str | None) -> None:
    match = SELECTION.match(env, topic)
    assert (None if match is None else f"{match.rule} | {match.why}") == expected
    assert SELECTION.matches(env, topic) is (expected is not None)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("salt/job/20240101/ret/minion-1", "salt-returns"),
        ("salt/job/20240101/new", None),
        ("salt/auth", None),
    ],
)
def test_tag_rules_work_on_plain_strings(tag: str, expected: str | None) -> None:
    match = SELECTION.match_tag(tag)
    assert (None if match is None else match.rule) == expected


def test_tag_rules_never_select_envelopes() -> None:
    only_tags = Selection(tag_rules=(TagRule("all", Globs(("*",))),))
    assert only_tags.match(envelope(kind=A, name="x")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temperature > 35", Threshold("temperature", Op.GT, 35.0)),
        ("temperature>=35", Threshold("temperature", Op.GE, 35.0)),
        ("  humidity <= 90.5 ", Threshold("humidity", Op.LE, 90.5)),
        ("temperature < -5", Threshold("temperature", Op.LT, -5.0)),
        ("pressure > 1e3", Threshold("pressure", Op.GT, 1000.0)),
    ],
)
def test_threshold_parse(text: str, expected: Threshold) -> None:
    assert Threshold.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("temperature => 35", "is not '<metric> <op> <number>'"),
        ("temperature == 35", "is not '<metric> <op> <number>'"),
        ("temperature > hot", "is not a number"),
        ("temperature > nan", "not finite"),
        ("temperature > inf", "not finite"),
        ("temp/x > 3", "must match"),
        ("> 3", "is not '<metric> <op> <number>'"),
    ],
)
def test_threshold_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Threshold.parse(text)


def test_rule_refuses_no_condition_status_kind_and_bad_names() -> None:
    with pytest.raises(ValueError, match="has no condition"):
        Rule("empty")
    with pytest.raises(ValueError, match="carries no data"):
        Rule("status", kinds=frozenset({Channel.STATUS}))
    with pytest.raises(ValueError, match="rule name"):
        Rule("bad name", kinds=frozenset({A}))
    with pytest.raises(ValueError, match="used twice"):
        Selection((Rule("x", kinds=frozenset({A})),), (TagRule("x", Globs(("*",))),))
    with pytest.raises(ValueError, match="at least one pattern"):
        Globs(())


def test_match_travels_as_json() -> None:
    assert Match("alerts", "kind alert").to_json() == {"rule": "alerts", "why": "kind alert"}
