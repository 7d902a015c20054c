"""The relay's config: defaults, the forward selection, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.relay import DEFAULT_RELAY_TAGS, FORWARD_RULE, RelayConfig, engine_config, relay_config
from saltmarsh.contract.errors import ConfigError
from saltmarsh.sinks.kinesis.selection import Globs, TagRule

KINESIS = {"stream_name": "fleet", "region": "eu-west-1"}


def load(**doc: Any) -> RelayConfig:
    return relay_config(doc, "relay.toml")


def test_defaults() -> None:
    cfg = load()
    assert cfg.relay_tags == Globs(DEFAULT_RELAY_TAGS)
    assert cfg.kinesis is None and cfg.forward.tag_rules == ()
    assert cfg.elasticsearch.hosts == ("http://127.0.0.1:9200",)
    assert cfg.elasticsearch.index_prefix == "saltmarsh"
    assert (cfg.queue_max, cfg.spool_quota_bytes, cfg.flush_interval_ms) == (10_000, 1_000_000_000, 500)
    assert (cfg.health_interval_s, cfg.sink_retry_s) == (60.0, 5.0)
    assert cfg.spool_dir == Path("/var/lib/saltmarsh/relay/spool")
    assert cfg.batch_max_events == 1000


def test_everything_set() -> None:
    cfg = load(
        relay_tags=["saltmarsh/*"],
        forward_tags=["salt/job/*/ret/*"],
        queue_max=50,
        spool_dir="/tmp/relay",
        spool_quota_bytes=0,
        flush_interval_ms=20,
        health_interval_s=2.5,
        sink_retry_s=0.5,
        elasticsearch={"hosts": ["http://es:9200"], "index_prefix": "fleet", "batch_max_docs": 200, "plain_json": True},
        kinesis={**KINESIS, "select": [{"name": "auth", "tags": ["salt/auth"]}]},
    )
    assert cfg.relay_tags == Globs(("saltmarsh/*",))
    assert cfg.forward.tag_rules == (
        TagRule(FORWARD_RULE, Globs(("salt/job/*/ret/*",))),
        TagRule("auth", Globs(("salt/auth",))),
    )
    assert cfg.kinesis is not None and cfg.kinesis.stream_name == "fleet"
    assert (cfg.queue_max, cfg.spool_dir, cfg.spool_quota_bytes) == (50, Path("/tmp/relay"), 0)
    assert (cfg.flush_interval_ms, cfg.health_interval_s, cfg.sink_retry_s) == (20, 2.5, 0.5)
    assert cfg.batch_max_events == 200
    assert cfg.elasticsearch.index_prefix == "fleet" and cfg.elasticsearch.plain_json


@pytest.mark.parametrize(
    ("doc", "key", "detail"),
    [
        ({"queue_maxx": 5}, "queue_maxx", "unknown key"),
        ({"queue_max": 0}, "queue_max", "below the minimum 1"),
        ({"queue_max": "10"}, "queue_max", "expected an integer"),
        ({"spool_quota_bytes": -1}, "spool_quota_bytes", "below the minimum 0"),
        ({"flush_interval_ms": 0}, "flush_interval_ms", "below the minimum 1"),
        ({"health_interval_s": 0}, "health_interval_s", "below the minimum"),
        ({"sink_retry_s": True}, "sink_retry_s", "expected a finite number"),
        ({"relay_tags": []}, "relay_tags", "is empty"),
        ({"relay_tags": "saltmarsh/*"}, "relay_tags", "expected a list"),
        ({"relay_tags": ["saltmarsh/*", ""]}, "relay_tags[1]", "non-empty tag glob"),
        ({"forward_tags": ["salt/auth"]}, "forward_tags", "needs a [kinesis] table"),
        ({"kinesis": KINESIS}, "forward_tags", "no tag is forwarded"),
        ({"kinesis": {**KINESIS, "select": "x"}}, "kinesis.select", "expected a list of tables"),
        ({"kinesis": {**KINESIS, "select": [{"name": "a", "kinds": ["alert"]}]}}, "kinesis.select", "by tag only"),
        ({"kinesis": "fleet"}, "kinesis", "expected a table"),
        ({"kinesis": {**KINESIS, "streamname": "x"}, "forward_tags": ["a"]}, "kinesis.streamname", "unknown key"),
        ({"kinesis": {"region": "eu-west-1"}, "forward_tags": ["a"]}, "kinesis.stream_name", "is required"),
        ({"elasticsearch": {"hosts": ["es:9200"]}}, "elasticsearch.hosts[0]", "not an http"),
        ({"elasticsearch": {"password": "x"}}, "elasticsearch.password", "inline secrets are refused"),
        ({"es_node_class": "x:Y"}, "es_node_class", "unknown key"),
    ],
)
def test_errors_name_the_key(doc: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**doc)
    assert caught.value.key == key
    assert detail in caught.value.detail


def test_forward_rule_names_must_be_unique() -> None:
    with pytest.raises(ConfigError) as caught:
        load(forward_tags=["a"], kinesis={**KINESIS, "select": [{"name": FORWARD_RULE, "tags": ["b"]}]})
    assert caught.value.key == "kinesis.select[1].name"


def test_engine_config_inline_or_from_a_file(tmp_path: Path) -> None:
    assert engine_config({"queue_max": 7}).queue_max == 7
    assert engine_config({}).queue_max == 10_000  # `saltmarsh_relay: {}` in the master config
    path = tmp_path / "relay.toml"
    path.write_text('queue_max = 9\nforward_tags = ["salt/auth"]\n[kinesis]\nstream_name = "s"\nregion = "eu-west-1"\n')
    cfg = engine_config({"config": str(path)})
    assert cfg.queue_max == 9 and cfg.kinesis is not None


@pytest.mark.parametrize(
    ("options", "key", "detail"),
    [
        ({"config": "/nonexistent/relay.toml"}, "<file>", "cannot read"),
        ({"config": "/x.toml", "queue_max": 1}, "queue_max", "either config"),
    ],
)
def test_engine_config_errors(options: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        engine_config(options)
    assert caught.value.key == key
    assert detail in caught.value.detail


def test_engine_config_reads_its_file_with_the_one_toml_loader(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_bytes(b'queue_max = 9\nrelay_tags = ["\xff"]\n')
    with pytest.raises(ConfigError, match=r"relay.toml: not UTF-8: byte 0xff at byte offset 29") as caught:
        engine_config({"config": str(path)})
    assert caught.value.source == str(path)


def test_engine_config_names_the_file_of_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("queue_max = 0\n")
    with pytest.raises(ConfigError, match=r"config key 'queue_max' in .*relay.toml"):
        engine_config({"config": str(path)})
    path.write_text("queue_max = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        engine_config({"config": str(path)})


def test_commands_are_off_without_the_table_and_have_defaults_with_it() -> None:
    from saltmarsh.config.relay import CommandsConfig

    assert load().commands is None
    assert load(commands={}).commands == CommandsConfig(Path("/etc/saltmarsh/commander.toml"), 5.0)
    cfg = load(commands={"commander_config": "/srv/commander.toml", "poll_s": 0.2}).commands
    assert cfg == CommandsConfig(Path("/srv/commander.toml"), 0.2)


@pytest.mark.parametrize(
    ("commands", "key", "detail"),
    [
        ("on", "commands", "expected a table"),
        ({"poll_s": 0}, "commands.poll_s", "below the minimum"),
        ({"poll_s": 7200}, "commands.poll_s", "above the maximum"),
        ({"poll_s": "5"}, "commands.poll_s", "expected a finite number"),
        ({"poll_s": True}, "commands.poll_s", "expected a finite number"),
        ({"commander_config": 1}, "commands.commander_config", "expected a string"),
        ({"commander": "/etc/saltmarsh/commander.toml"}, "commands.commander", "unknown key"),
    ],
)
def test_commands_errors_name_the_key(commands: Any, key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(commands=commands)
    assert caught.value.key == key
    assert detail in caught.value.detail
