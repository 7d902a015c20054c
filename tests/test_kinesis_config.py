"""The [kinesis] table: defaults, secrets, bounds, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saltmarsh.config.kinesis import KinesisConfig, kinesis_config
from saltmarsh.config.table import Secret, Table
from saltmarsh.contract.errors import ConfigError
from saltmarsh.contract.topics import Channel
from saltmarsh.sinks.kinesis.selection import Rule, TagRule

ALERTS = [{"name": "alerts", "kinds": ["alert"]}]


def load(**doc: Any) -> KinesisConfig:
    """A minimal valid table with `doc` laid over it; a None value removes the key."""
    base: dict[str, Any] = {"stream_name": "saltmarsh-events", "region": "eu-west-1", "select": ALERTS}
    base.update(doc)
    return kinesis_config(Table({k: v for k, v in base.items() if v is not None}, "kinesis"))


def test_defaults() -> None:
    cfg = load()
    assert cfg.stream_name == "saltmarsh-events"
    assert cfg.endpoint_url is None
    assert cfg.access_key_id is None and cfg.secret_access_key is None  # boto3's default chain
    assert (cfg.batch_max_records, cfg.retry_max) == (500, 5)
    assert cfg.ordering == "per_device"
    assert cfg.selection.rules == (Rule("alerts", kinds=frozenset({Channel.ALERT})),)


def test_everything_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key-id"
    key_file.write_text("AKIDEXAMPLE\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("SM_TEST_SECRET", "s3cr3t")
    cfg = load(
        endpoint_url="http://127.0.0.1:4567",
        access_key_id_file=str(key_file),
        secret_access_key_env="SM_TEST_SECRET",
        ordering="relaxed",
        batch_max_records=100,
        retry_max=3,
        backoff_base_ms=20,
        backoff_cap_ms=400,
        request_timeout_ms=2000,
        select=[*ALERTS, {"name": "salt", "tags": ["salt/job/*"]}],
    )
    assert cfg.access_key_id == Secret("AKIDEXAMPLE")
    assert cfg.secret_access_key == Secret("s3cr3t")
    assert "s3cr3t" not in repr(cfg)
    assert (cfg.ordering, cfg.batch_max_records, cfg.backoff_cap_ms) == ("relaxed", 100, 400)
    assert [type(r) for r in (*cfg.selection.rules, *cfg.selection.tag_rules)] == [Rule, TagRule]


@pytest.mark.parametrize(
    ("doc", "key", "message"),
    [
        ({"stream_name": None}, "kinesis.stream_name", "is required"),
        ({"stream_name": "has space"}, "kinesis.stream_name", "must match"),
        ({"region": "Europe"}, "kinesis.region", "AWS region"),
        ({"endpoint_url": "localhost:4567"}, "kinesis.endpoint_url", "http://"),
        ({"secret_access_key": "inline"}, "kinesis.secret_access_key", "inline secrets are refused"),
        ({"access_key_id_env": "SM_TEST_UNSET_VAR"}, "kinesis.access_key_id_env", "is not set"),
        ({"batch_max_records": 501}, "kinesis.batch_max_records", "above the maximum 500"),
        ({"batch_max_records": 0}, "kinesis.batch_max_records", "below the minimum"),
        ({"retry_max": "3"}, "kinesis.retry_max", "expected an integer"),
        ({"backoff_base_ms": 500, "backoff_cap_ms": 100}, "kinesis.backoff_cap_ms", "below backoff_base_ms"),
        # Keys that once fed only the deleted buffered producer are unknown now.
        ({"buffer_max_records": 10_000}, "kinesis.buffer_max_records", "unknown key"),
        ({"flush_interval_ms": 200}, "kinesis.flush_interval_ms", "unknown key"),
        ({"ordering": "strict"}, "kinesis.ordering", "per_device, relaxed"),
        ({"flush_interval": 5}, "kinesis.flush_interval", "unknown key"),
        ({"select": []}, "kinesis.select", "at least one rule"),
        ({"select": [{"kinds": ["alert"]}]}, "kinesis.select[0].name", "is required"),
        ({"select": [{"name": "x"}]}, "kinesis.select[0].name", "has no condition"),
        ({"select": [{"name": "x y", "kinds": ["alert"]}]}, "kinesis.select[0].name", "rule name"),
        ({"select": [{"name": "x", "kinds": ["status"]}]}, "kinesis.select[0].kinds[0]", "reading, event, alert"),
        ({"select": [{"name": "x", "kinds": "alert"}]}, "kinesis.select[0].kinds", "expected a list"),
        ({"select": [{"name": "x", "names": []}]}, "kinesis.select[0].names", "is empty"),
        ({"select": [{"name": "x", "devices": ["pi-*", 3]}]}, "kinesis.select[0].devices[1]", "non-empty string"),
        ({"select": [{"name": "x", "thresholds": ["t >> 3"]}]}, "kinesis.select[0].thresholds[0]", "<metric> <op>"),
        ({"select": [{"name": "x", "kinds": ["alert"], "kind": ["x"]}]}, "kinesis.select[0].kind", "unknown key"),
        ({"select": [{"name": "x", "tags": ["a"], "sites": ["b"]}]}, "kinesis.select[0].sites", "combined with tags"),
        ({"select": [{"name": "x", "tags": []}]}, "kinesis.select[0].tags", "is empty"),
        ({"select": [*ALERTS, {"name": "alerts", "tags": ["a"]}]}, "kinesis.select[1].name", "used twice"),
    ],
)
def test_errors_name_the_key(doc: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(**doc)
    assert caught.value.key == key


def test_credentials_come_in_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SM_TEST_KEY", "k")
    with pytest.raises(ConfigError, match="set both") as caught:
        load(access_key_id_env="SM_TEST_KEY")
    assert caught.value.key == "kinesis.secret_access_key"
    with pytest.raises(ConfigError, match="only makes sense") as caught:
        load(session_token_env="SM_TEST_KEY")
    assert caught.value.key == "kinesis.session_token"
