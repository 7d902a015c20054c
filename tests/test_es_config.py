"""The Elasticsearch sink config: defaults, every key, secrets only from files or env, key-named errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from elastic_transport import Urllib3HttpNode

from saltmarsh.config.elasticsearch import ElasticsearchConfig, elasticsearch_config
from saltmarsh.config.table import Secret, Table
from saltmarsh.contract.errors import ConfigError
from saltmarsh.sinks.elasticsearch.sink import open_client


def load(doc: dict[str, Any]) -> ElasticsearchConfig:
    return elasticsearch_config(Table(doc, "sink.elasticsearch"))


def test_defaults() -> None:
    assert load({}) == ElasticsearchConfig(
        hosts=("http://127.0.0.1:9200",),
        username=None,
        password=None,
        api_key=None,
        ca_file=None,
        verify_certs=True,
        index_prefix="saltmarsh",
        batch_max_docs=1000,
        batch_max_bytes=5_000_000,
        retry_max=5,
        retry_backoff_base_s=0.2,
        retry_backoff_cap_s=10.0,
        ilm_delete_after_days=None,
        request_timeout_s=30.0,
    )


def test_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    cfg = load(
        {
            "hosts": ["https://es-1:9200", "https://es-2:9200"],
            "username": "ingester",
            "password_file": str(tmp_path / "pw"),
            "ca_file": "/etc/saltmarsh/ca.pem",
            "verify_certs": False,
            "index_prefix": "marsh.prod",
            "batch_max_docs": 500,
            "batch_max_bytes": 2_000_000,
            "retry_max": 8,
            "retry_backoff_base_s": 0.5,
            "retry_backoff_cap_s": 30,
            "ilm_delete_after_days": 400,
            "request_timeout_s": 5,
        }
    )
    assert cfg.hosts == ("https://es-1:9200", "https://es-2:9200")
    assert cfg.password == Secret("s3cret")  # trailing newline of the file stripped
    assert (cfg.username, cfg.ca_file, cfg.verify_certs, cfg.index_prefix) == (
        "ingester",
        Path("/etc/saltmarsh/ca.pem"),
        False,
        "marsh.prod",
    )
    assert (cfg.batch_max_docs, cfg.batch_max_bytes) == (500, 2_000_000)
    assert (cfg.retry_max, cfg.retry_backoff_base_s, cfg.retry_backoff_cap_s) == (8, 0.5, 30.0)
    assert (cfg.ilm_delete_after_days, cfg.request_timeout_s) == (400, 5.0)


def test_api_key_from_env_is_never_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ES_KEY", "abc123topsecret")
    cfg = load({"api_key_env": "ES_KEY"})
    assert cfg.api_key is not None and cfg.api_key.reveal() == "abc123topsecret"
    assert "abc123topsecret" not in repr(cfg)


def test_the_production_client_carries_the_credentials_but_never_shows_them(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("c2VjcmV0LWtleQ==")
    (tmp_path / "key").chmod(0o600)
    cfg = load({"hosts": ["https://es-1:9200", "https://es-2:9200"], "api_key_file": str(tmp_path / "key")})
    client = open_client(cfg)
    try:
        nodes = client.transport.node_pool.all()
        assert {type(node) for node in nodes} == {Urllib3HttpNode}  # the client's default, not a test class
        assert sorted(node.base_url for node in nodes) == [
            "https://es-1:9200",
            "https://es-2:9200",
        ]
        assert client._headers["authorization"] == "ApiKey c2VjcmV0LWtleQ=="
        assert "c2VjcmV0LWtleQ" not in repr(client) + repr(cfg)
    finally:
        client.close()


def test_zero_retention_days_means_no_policy() -> None:
    assert load({"ilm_delete_after_days": 0}).ilm_delete_after_days is None


@pytest.mark.parametrize(
    ("doc", "key", "detail"),
    [
        ({"hosts": []}, "sink.elasticsearch.hosts", "at least one"),
        ({"hosts": "http://es:9200"}, "sink.elasticsearch.hosts", "expected a list"),
        ({"hosts": [9200]}, "sink.elasticsearch.hosts[0]", "expected a URL"),
        ({"hosts": ["es:9200"]}, "sink.elasticsearch.hosts[0]", "not an http"),
        ({"hosts": ["ftp://es"]}, "sink.elasticsearch.hosts[0]", "not an http"),
        ({"hosts": ["https://u:pw@es:9200"]}, "sink.elasticsearch.hosts[0]", "credentials in the URL"),
        ({"password": "inline"}, "sink.elasticsearch.password", "inline secrets are refused"),
        ({"api_key": "inline"}, "sink.elasticsearch.api_key", "inline secrets are refused"),
        ({"password_env": "HOME"}, "sink.elasticsearch.password", "needs username"),
        ({"api_key_env": "HOME", "username": "u", "password_env": "HOME"}, "sink.elasticsearch.api_key", "not both"),
        ({"password_env": "SALTMARSH_NO_SUCH_VAR", "username": "u"}, "sink.elasticsearch.password_env", "not set"),
        ({"index_prefix": "Saltmarsh"}, "sink.elasticsearch.index_prefix", "must match"),
        ({"index_prefix": "_hidden"}, "sink.elasticsearch.index_prefix", "must match"),
        ({"index_prefix": "a*b"}, "sink.elasticsearch.index_prefix", "must match"),
        ({"batch_max_docs": 0}, "sink.elasticsearch.batch_max_docs", "below the minimum"),
        ({"batch_max_bytes": 200_000_000}, "sink.elasticsearch.batch_max_bytes", "above the maximum"),
        ({"retry_max": -1}, "sink.elasticsearch.retry_max", "below the minimum"),
        ({"retry_backoff_base_s": 2, "retry_backoff_cap_s": 1}, "sink.elasticsearch.retry_backoff_cap_s", "below"),
        ({"verify_certs": "no"}, "sink.elasticsearch.verify_certs", "true or false"),
        ({"request_timeout_s": 0}, "sink.elasticsearch.request_timeout_s", "below the minimum"),
        ({"ca_file": "/ca.pem"}, "sink.elasticsearch.ca_file", "hosts[0] is http"),
        ({"hosts": ["https://a", "http://b"], "verify_certs": False}, "sink.elasticsearch.verify_certs", "hosts[1]"),
        ({"bulk_size": 10}, "sink.elasticsearch.bulk_size", "unknown key"),
        ({"flush_interval_ms": 1000}, "sink.elasticsearch.flush_interval_ms", "unknown key"),  # fed nothing
        ({"retry_backoff_base_s": 0}, "sink.elasticsearch.retry_backoff_base_s", "below the minimum"),
    ],
)
def test_errors_name_the_key(doc: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(doc)
    assert caught.value.key == key
    assert detail in caught.value.detail
    assert "pw@" not in str(caught.value)
