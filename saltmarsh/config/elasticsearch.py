"""The Elasticsearch sink's config: where the cluster is, how to log in, how to batch and retry.

Credentials come only through `Table.secret` (`*_file` or `*_env`), and a host URL with
`user:pass@` in it is refused, so nothing secret ever sits in a config file, a repr or a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from saltmarsh.config.table import Secret, Table

# Elasticsearch index names are lowercase and may not start with -, _ or +; the prefix is the
# head of every index, template and alias name the sink creates.
INDEX_PREFIX_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ElasticsearchConfig:
    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    ca_file: Path | None = None
    verify_certs: bool = True
    index_prefix: str = "saltmarsh"
    batch_max_docs: int = 1000
    batch_max_bytes: int = 5_000_000
    retry_max: int = 5
    retry_backoff_base_s: float = 0.2
    retry_backoff_cap_s: float = 10.0
    ilm_delete_after_days: int | None = None  # None: keep everything, install no policy
    request_timeout_s: float = 30.0
    plain_json: bool = False  # OpenSearch-API servers that refuse the client's vendor media types


def _host(t: Table, index: int, value: object) -> str:
    key = f"hosts[{index}]"
    if not isinstance(value, str):
        raise t.error(key, f"expected a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise t.error(key, f"{value!r} is not an http:// or https:// URL")
    if "@" in parts.netloc:
        # Never echo the value: it carries a credential.
        raise t.error(key, "credentials in the URL are refused; use username with password_file or api_key_file")
    return value


def elasticsearch_config(t: Table) -> ElasticsearchConfig:
    """Read and validate one `[sink.elasticsearch]`-style table; unknown keys are errors."""
    hosts = tuple(_host(t, i, value) for i, value in enumerate(t.array("hosts", ["http://127.0.0.1:9200"])))
    if not hosts:
        raise t.error("hosts", "needs at least one URL")
    username = t.text("username", None)
    password = t.secret("password")
    api_key = t.secret("api_key")
    if password is not None and username is None:
        raise t.error("password", "needs username")
    if api_key is not None and password is not None:
        raise t.error("api_key", "set either api_key or username and password, not both")
    index_prefix = t.text("index_prefix", "saltmarsh")
    if not INDEX_PREFIX_PATTERN.match(index_prefix):
        raise t.error("index_prefix", f"{index_prefix!r} must match {INDEX_PREFIX_PATTERN.pattern}")
    # A wait of 0 would retry a busy cluster in a tight loop; runtime.backoff refuses it too.
    base_s = t.number("retry_backoff_base_s", 0.2, lo=0.001, hi=60.0)
    cap_s = t.number("retry_backoff_cap_s", 10.0, lo=0.001, hi=600.0)
    if cap_s < base_s:
        raise t.error("retry_backoff_cap_s", f"{cap_s} is below retry_backoff_base_s {base_s}")
    delete_after_days = t.integer("ilm_delete_after_days", None, lo=0, hi=36_500)
    ca_file = t.path("ca_file", None)
    verify_certs = t.flag("verify_certs", True)
    plain = [i for i, host in enumerate(hosts) if not host.startswith("https://")]
    if plain and (ca_file is not None or not verify_certs):
        # The client refuses TLS options on a plain-http node, and mixing them would send the
        # credentials unencrypted to some nodes only.
        name = "ca_file" if ca_file is not None else "verify_certs"
        raise t.error(name, f"applies to https hosts, but hosts[{plain[0]}] is http")
    cfg = ElasticsearchConfig(
        hosts=hosts,
        username=username,
        password=password,
        api_key=api_key,
        ca_file=ca_file,
        verify_certs=verify_certs,
        index_prefix=index_prefix,
        batch_max_docs=t.integer("batch_max_docs", 1000, lo=1, hi=100_000),
        # Elasticsearch refuses requests above http.max_content_length, 100 MB by default.
        batch_max_bytes=t.integer("batch_max_bytes", 5_000_000, lo=1024, hi=100_000_000),
        retry_max=t.integer("retry_max", 5, lo=0, hi=100),
        retry_backoff_base_s=base_s,
        retry_backoff_cap_s=cap_s,
        ilm_delete_after_days=delete_after_days or None,
        request_timeout_s=t.number("request_timeout_s", 30.0, lo=0.1, hi=3600.0),
        plain_json=t.flag("plain_json", False),
    )
    t.done()
    return cfg
