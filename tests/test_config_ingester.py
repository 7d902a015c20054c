"""The ingester's config as a table: each bad file is refused with the dotted key at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from saltmarsh.config import Secret, Table, load_ingester_config
from saltmarsh.config.ingester import IngesterConfig, SinkConfig, ingester_config
from saltmarsh.contract.envelope import Limits
from saltmarsh.contract.errors import ConfigError


def minimal(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ingester_id": "ing-1",
        "status_dir": "/run/saltmarsh/status",
        "broker": {"host": "cloud.example", "port": 8883},
        "sink": {"type": "sqlite", "path": "/var/lib/saltmarsh/sink.db"},
    }
    doc.update(top)
    return doc


def with_broker(**broker: Any) -> dict[str, Any]:
    return minimal(broker={"host": "cloud.example", **broker})


def load(tmp_path: Path, doc: dict[str, Any]) -> IngesterConfig:
    path = tmp_path / "ingester.toml"
    path.write_text(tomli_w.dumps(doc))
    return load_ingester_config(path)


def test_minimal_config_fills_defaults() -> None:
    cfg = ingester_config(Table(minimal()))
    assert cfg.ingester_id == "ing-1"
    assert cfg.broker.client_id == "ingester-ing-1"  # fixed, so the broker keeps our session
    assert (cfg.broker.host, cfg.broker.port) == ("cloud.example", 8883)
    assert cfg.share_group == "saltmarsh-ingesters"
    assert cfg.site == "+"
    assert cfg.sink == SinkConfig("sqlite", Path("/var/lib/saltmarsh/sink.db"))
    assert cfg.limits == Limits()
    assert (cfg.batch_max_messages, cfg.batch_interval_ms) == (2000, 20)


def test_every_option_is_read() -> None:
    cfg = ingester_config(
        Table(
            minimal(
                share_group="blue",
                site="marsh-1",
                batch_max_messages=500,
                batch_interval_ms=5,
                limits={"max_payload_bytes": 1024, "max_future_skew_s": 1.5},
            )
        )
    )
    assert (cfg.share_group, cfg.site, cfg.batch_max_messages, cfg.batch_interval_ms) == ("blue", "marsh-1", 500, 5)
    assert cfg.limits == Limits(max_payload_bytes=1024, max_future_skew_ms=1500)


BAD: list[tuple[str, dict[str, Any], str]] = [
    # unknown keys: typos must not fall back to defaults silently
    ("unknown top-level key", minimal(batch_max_message=10), "batch_max_message"),
    ("unknown broker key", with_broker(hots="x"), "broker.hots"),
    ("unknown sink key", minimal(sink={"type": "sqlite", "path": "/x", "pth": "/y"}), "sink.pth"),
    ("unknown limits key", minimal(limits={"max_payload": 1}), "limits.max_payload"),
    # wrong types
    ("batch size as string", minimal(batch_max_messages="10"), "batch_max_messages"),
    ("batch size as bool", minimal(batch_max_messages=True), "batch_max_messages"),
    ("batch interval as float", minimal(batch_interval_ms=2.5), "batch_interval_ms"),
    ("status_dir as int", minimal(status_dir=5), "status_dir"),
    ("port as string", with_broker(port="1883"), "broker.port"),
    ("tls as string", with_broker(tls="yes"), "broker.tls"),
    ("keepalive as float", with_broker(keepalive_s=30.0), "broker.keepalive_s"),
    ("skew as string", minimal(limits={"max_future_skew_s": "5m"}), "limits.max_future_skew_s"),
    ("broker as string", minimal(broker="cloud.example"), "broker"),
    ("sink as list", minimal(sink=["sqlite"]), "sink"),
    # out of range
    ("port too big", with_broker(port=70000), "broker.port"),
    ("batch of zero", minimal(batch_max_messages=0), "batch_max_messages"),
    ("tiny payload limit", minimal(limits={"max_payload_bytes": 10}), "limits.max_payload_bytes"),
    ("negative skew", minimal(limits={"max_future_skew_s": -1}), "limits.max_future_skew_s"),
    # required and invalid values
    ("missing ingester_id", {k: v for k, v in minimal().items() if k != "ingester_id"}, "ingester_id"),
    ("missing status_dir", {k: v for k, v in minimal().items() if k != "status_dir"}, "status_dir"),
    ("missing sink", {k: v for k, v in minimal().items() if k != "sink"}, "sink"),
    ("sqlite without path", minimal(sink={"type": "sqlite"}), "sink.path"),
    ("unknown sink type", minimal(sink={"type": "mongodb", "path": "/x"}), "sink.type"),
    ("ingester_id with a space", minimal(ingester_id="ing 1"), "ingester_id"),
    ("share group with a slash", minimal(share_group="a/b"), "share_group"),
    # credentials
    ("inline password refused", with_broker(username="u", password="hunter2"), "broker.password"),
    ("password file and env both", with_broker(username="u", password_file="/f", password_env="E"), "broker.password"),
    ("password without username", with_broker(password_env="HOME"), "broker.username"),
    ("unreadable password file", with_broker(username="u", password_file="/nonexistent/pw"), "broker.password_file"),
    ("unset password env", with_broker(username="u", password_env="SALTMARSH_TEST_UNSET_VAR"), "broker.password_env"),
    ("cert without key", with_broker(tls=True, cert_file="/c.pem"), "broker.cert_file"),
]


@pytest.mark.parametrize(("doc", "key"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_the_key(tmp_path: Path, doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, doc)
    assert caught.value.key == key
    assert key in str(caught.value)
    assert str(tmp_path / "ingester.toml") in str(caught.value)  # and the file it came from


def test_inline_password_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, with_broker(username="u", password="hunter2"))
    assert "hunter2" not in str(caught.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('ingester_id = "ing-1"\n[broker\n')
    with pytest.raises(ConfigError) as caught:
        load_ingester_config(bad)
    assert caught.value.key == "<file>"
    assert "not valid TOML" in caught.value.detail
    with pytest.raises(ConfigError) as caught:
        load_ingester_config(tmp_path / "absent.toml")
    assert caught.value.key == "<file>"


def test_password_from_file_is_stripped_and_hidden(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    secret_file.chmod(0o600)
    cfg = load(tmp_path, with_broker(username="ingest", password_file=str(secret_file)))
    assert cfg.broker.username == "ingest"
    assert cfg.broker.password == Secret("s3cret")
    assert cfg.broker.password is not None and cfg.broker.password.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALTMARSH_TEST_PW", "from-env")
    cfg = load(tmp_path, with_broker(username="ingest", password_env="SALTMARSH_TEST_PW"))
    assert cfg.broker.password is not None and cfg.broker.password.reveal() == "from-env"
    assert "from-env" not in repr(cfg)
