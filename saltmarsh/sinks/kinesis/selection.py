"""Which messages go to Kinesis as well as to Elasticsearch: named rules, first match wins.

In: an `Envelope` and the topic it came on (or, for the Salt engine, a plain event tag).
Out: a `Match` naming the rule and saying why it matched, or None. Everything unmatched goes
only to Elasticsearch.

A rule is a conjunction of conditions, and each condition is a disjunction of its values:

    kinds = ["event"], names = ["door_*", "tamper"]   ->  an event named door_* or tamper
    thresholds = ["temperature > 35", "temperature < -5"]   ->  either bound is crossed

Globs are `fnmatch` patterns, matched case-sensitively. In a topic glob `*` also matches `/`,
so `saltmarsh/v1/marsh-*/*/alert` means every alert of the sites whose id starts `marsh-`.

Everything here is pure and frozen; `saltmarsh.config.kinesis` builds it from config, and bad
values fail in `__post_init__` with a `ValueError` naming the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from saltmarsh.contract.envelope import Envelope
from saltmarsh.contract.topics import ID_PATTERN, Channel

RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_THRESHOLD = re.compile(r"^\s*(?P<metric>\S+?)\s*(?P<op>>=|<=|>|<)\s*(?P<value>\S+)\s*$")


class Op(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="

    def holds(self, left: float, right: float) -> bool:
        if self is Op.GT:
            return left > right
        if self is Op.GE:
            return left >= right
        if self is Op.LT:
            return left < right
        return left <= right


@dataclass(frozen=True, slots=True)
class Threshold:
    """`metric op value`; a message without the metric never crosses it."""

    metric: str
    op: Op
    value: float

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.metric):
            raise ValueError(f"metric {self.metric[:80]!r} must match {ID_PATTERN.pattern}")
        if not math.isfinite(self.value):
            raise ValueError(f"threshold value {self.value!r} is not finite")

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """'temperature > 35' -> Threshold('temperature', Op.GT, 35.0)."""
        found = _THRESHOLD.match(text)
        if found is None:
            raise ValueError(f"{text[:80]!r} is not '<metric> <op> <number>' with op one of > >= < <=")
        try:
            value = float(found["value"])
        except ValueError:
            raise ValueError(f"{found['value'][:40]!r} in {text[:80]!r} is not a number") from None
        return cls(found["metric"], Op(found["op"]), value)

    def crossed_by(self, metrics: Mapping[str, float]) -> str | None:
        reading = metrics.get(self.metric)
        if reading is None or not self.op.holds(reading, self.value):
            return None
        return f"{self.metric} {reading:g} {self.op.value} {self.value:g}"

    def __str__(self) -> str:
        return f"{self.metric} {self.op.value} {self.value:g}"


@dataclass(frozen=True, slots=True)
class Globs:
    """A set of fnmatch patterns; matches when any one does."""

    patterns: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("needs at least one pattern")
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"pattern {pattern!r} must be a non-empty string")

    def first_match(self, text: str) -> str | None:
        """The first pattern that matches `text`, for the match's reason."""
        for pattern in self.patterns:
            if fnmatchcase(text, pattern):
                return pattern
        return None


def _check_rule_name(name: str) -> None:
    if not isinstance(name, str) or not RULE_NAME.match(name):
        raise ValueError(f"rule name {str(name)[:80]!r} must match {RULE_NAME.pattern}")


@dataclass(frozen=True, slots=True)
class Match:
    """Which rule selected a message and why; it travels in the Kinesis record."""

    rule: str
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "why": self.why}


@dataclass(frozen=True, slots=True)
class Rule:
    """Selects envelopes. Unset conditions do not constrain; at least one must be set."""

    name: str
    kinds: frozenset[Channel] = frozenset()
    names: Globs | None = None  # the event or alert name; a message without a name never matches
    thresholds: tuple[Threshold, ...] = ()
    topics: Globs | None = None
    devices: Globs | None = None
    sites: Globs | None = None

    def __post_init__(self) -> None:
        _check_rule_name(self.name)
        for kind in self.kinds:
            if not kind.carries_data:
                raise ValueError(f"kind {kind.value!r} carries no data; use reading, event or alert")
        if not (self.kinds or self.names or self.thresholds or self.topics or self.devices or self.sites):
            # An empty rule would forward everything: far more likely a mistake than a wish.
            # Whoever wants everything says so with topics = ["*"].
            raise ValueError(f"rule {self.name!r} has no condition")

    def explain(self, envelope: Envelope, topic: str) -> str | None:
        """Why this rule matches, as '; '-joined conditions, or None when it does not."""
        why: list[str] = []
        if self.kinds:
            if envelope.kind not in self.kinds:
                return None
            why.append(f"kind {envelope.kind.value}")
        if self.names is not None:
            pattern = None if envelope.name is None else self.names.first_match(envelope.name)
            if pattern is None:
                return None
            why.append(f"name {envelope.name} ~ {pattern}")
        for what, text, globs in (
            ("site", envelope.site, self.sites),
            ("device", envelope.device, self.devices),
            ("topic", topic, self.topics),
        ):
            if globs is not None:
                pattern = globs.first_match(text)
                if pattern is None:
                    return None
                why.append(f"{what} ~ {pattern}")
        if self.thresholds:
            crossed = next((c for t in self.thresholds if (c := t.crossed_by(envelope.metrics))), None)
            if crossed is None:
                return None
            why.append(crossed)
        return "; ".join(why)


@dataclass(frozen=True, slots=True)
class TagRule:
    """Selects plain string tags, such as Salt event tags, which have no envelope."""

    name: str
    tags: Globs

    def __post_init__(self) -> None:
        _check_rule_name(self.name)

    def explain(self, tag: str) -> str | None:
        pattern = self.tags.first_match(tag)
        return None if pattern is None else f"tag ~ {pattern}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Envelope rules and tag rules, each tried in order; the first that matches wins."""

    rules: tuple[Rule, ...] = ()
    tag_rules: tuple[TagRule, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in [r.name for r in self.rules] + [r.name for r in self.tag_rules]:
            if name in seen:
                raise ValueError(f"rule name {name!r} is used twice")
            seen.add(name)

    def match(self, envelope: Envelope, topic: str | None = None) -> Match | None:
        """The first rule that selects this envelope; `topic` defaults to the envelope's own."""
        topic_text = str(envelope.topic) if topic is None else topic
        for rule in self.rules:
            why = rule.explain(envelope, topic_text)
            if why is not None:
                return Match(rule.name, why)
        return None

    def matches(self, envelope: Envelope, topic: str | None = None) -> bool:
        return self.match(envelope, topic) is not None

    def match_tag(self, tag: str) -> Match | None:
        for rule in self.tag_rules:
            why = rule.explain(tag)
            if why is not None:
                return Match(rule.name, why)
        return None
