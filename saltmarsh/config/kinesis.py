"""The Kinesis forwarding sink's config: stream, credentials, PutRecords pacing and selection rules.

    [kinesis]
    stream_name = "saltmarsh-events"
    region = "eu-west-1"
    endpoint_url = "http://127.0.0.1:4567"        # optional: moto, kinesalite or LocalStack
    access_key_id_file = "/etc/saltmarsh/aws-key-id" # or access_key_id_env; both pairs optional,
    secret_access_key_env = "AWS_SECRET_ACCESS_KEY"  # else boto3's default credential chain
    ordering = "per_device"                          # or "relaxed"; see saltmarsh.sinks.kinesis.sink

    [[kinesis.select]]
    name = "alerts"
    kinds = ["alert"]

    [[kinesis.select]]
    name = "too-hot-or-cold"
    thresholds = ["temperature > 35", "temperature < -5"]

    [[kinesis.select]]
    name = "salt-job-returns"        # tag rules only apply to the Salt engine's plain events
    tags = ["salt/job/*/ret/*"]

Rule keys: `name` (required), `kinds`, `names`, `thresholds`, `topics`, `devices`, `sites`, or
`tags` alone. See `saltmarsh.sinks.kinesis.selection` for what they mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saltmarsh.config.table import Secret, Table
from saltmarsh.contract.topics import Channel
from saltmarsh.sinks.kinesis.selection import Globs, Rule, Selection, TagRule, Threshold

MAX_BATCH_RECORDS = 500  # the PutRecords limit
ORDERINGS = ("per_device", "relaxed")
STREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
RULE_KEYS = ("kinds", "names", "thresholds", "topics", "devices", "sites")


@dataclass(frozen=True, slots=True)
class KinesisConfig:
    stream_name: str
    region: str
    selection: Selection
    endpoint_url: str | None = None
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    ordering: str = "per_device"
    batch_max_records: int = MAX_BATCH_RECORDS
    retry_max: int = 5  # retries of one record, or of one whole call, before SinkUnavailable
    backoff_base_ms: int = 100
    backoff_cap_ms: int = 2000
    request_timeout_ms: int = 10_000


def _strings(t: Table, name: str) -> list[str]:
    values = t.array(name, [])
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise t.error(f"{name}[{i}]", f"expected a non-empty string, got {value!r}")
    return list(values)


def _globs(t: Table, name: str) -> Globs | None:
    patterns = _strings(t, name)
    if t.has(name) and not patterns:
        raise t.error(name, "is empty; leave the key out to not constrain on it")
    return Globs(tuple(patterns)) if patterns else None


def _kinds(t: Table) -> frozenset[Channel]:
    kinds: set[Channel] = set()
    for i, text in enumerate(_strings(t, "kinds")):
        try:
            kind = Channel(text)
        except ValueError:
            kind = None
        if kind is None or not kind.carries_data:
            raise t.error(f"kinds[{i}]", f"{text!r} is not one of reading, event, alert")
        kinds.add(kind)
    return frozenset(kinds)


def _thresholds(t: Table) -> tuple[Threshold, ...]:
    out = []
    for i, text in enumerate(_strings(t, "thresholds")):
        try:
            out.append(Threshold.parse(text))
        except ValueError as err:
            raise t.error(f"thresholds[{i}]", str(err)) from None
    return tuple(out)


def rule_config(t: Table) -> Rule | TagRule:
    """One `[[select]]` entry: an envelope rule, or a tag rule when it has `tags`."""
    name = t.text("name")
    try:
        if t.has("tags"):
            mixed = [key for key in RULE_KEYS if t.has(key)]
            if mixed:
                raise t.error(mixed[0], "cannot be combined with tags: tag rules see only a tag string")
            tags = _globs(t, "tags")
            if tags is None:
                raise t.error("tags", "needs at least one pattern")
            rule: Rule | TagRule = TagRule(name, tags)
        else:
            rule = Rule(
                name,
                kinds=_kinds(t),
                names=_globs(t, "names"),
                thresholds=_thresholds(t),
                topics=_globs(t, "topics"),
                devices=_globs(t, "devices"),
                sites=_globs(t, "sites"),
            )
    except ValueError as err:
        raise t.error("name", str(err)) from None
    t.done()
    return rule


def selection_config(rules: list[Table]) -> Selection:
    """The `[[select]]` array; rule order is match order."""
    parsed = [rule_config(t) for t in rules]
    envelope_rules = tuple(r for r in parsed if isinstance(r, Rule))
    tag_rules = tuple(r for r in parsed if isinstance(r, TagRule))
    try:
        return Selection(envelope_rules, tag_rules)
    except ValueError as err:
        # The only cross-rule check is name uniqueness; point at the second use.
        names = [r.name for r in parsed]
        dup = next(i for i, n in enumerate(names) if n in names[:i])
        raise rules[dup].error("name", str(err)) from None


def kinesis_config(t: Table) -> KinesisConfig:
    stream_name = t.text("stream_name")
    if not STREAM_NAME.match(stream_name):
        raise t.error("stream_name", f"{stream_name[:80]!r} must match {STREAM_NAME.pattern}")
    region = t.text("region")
    if not REGION.match(region):
        raise t.error("region", f"{region[:40]!r} does not look like an AWS region such as eu-west-1")
    endpoint_url = t.text("endpoint_url", None)
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise t.error("endpoint_url", f"{endpoint_url[:80]!r} must start with http:// or https://")
    access_key_id = t.secret("access_key_id")
    secret_access_key = t.secret("secret_access_key")
    if (access_key_id is None) != (secret_access_key is None):
        missing = "access_key_id" if access_key_id is None else "secret_access_key"
        raise t.error(missing, "set both access_key_id and secret_access_key, or neither for boto3's default chain")
    session_token = t.secret("session_token")
    if session_token is not None and access_key_id is None:
        raise t.error("session_token", "only makes sense with access_key_id and secret_access_key")
    batch_max_records = t.integer("batch_max_records", MAX_BATCH_RECORDS, lo=1, hi=MAX_BATCH_RECORDS)
    backoff_base_ms = t.integer("backoff_base_ms", 100, lo=1, hi=60_000)
    backoff_cap_ms = t.integer("backoff_cap_ms", 2000, lo=1, hi=300_000)
    if backoff_cap_ms < backoff_base_ms:
        raise t.error("backoff_cap_ms", f"{backoff_cap_ms} is below backoff_base_ms {backoff_base_ms}")
    selection = selection_config(t.tables("select"))
    if not selection.rules and not selection.tag_rules:
        raise t.error("select", "needs at least one rule, else nothing is ever forwarded")
    cfg = KinesisConfig(
        stream_name=stream_name,
        region=region,
        selection=selection,
        endpoint_url=endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        ordering=t.text("ordering", "per_device", choices=ORDERINGS),
        batch_max_records=batch_max_records,
        retry_max=t.integer("retry_max", 5, lo=0, hi=20),
        backoff_base_ms=backoff_base_ms,
        backoff_cap_ms=backoff_cap_ms,
        request_timeout_ms=t.integer("request_timeout_ms", 10_000, lo=100, hi=300_000),
    )
    t.done()
    return cfg
