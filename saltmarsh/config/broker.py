"""How a service reaches one MQTT broker: address, identity, credentials and TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saltmarsh.config.table import Secret, Table


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600

    @classmethod
    def from_table(cls, t: Table, default_client_id: str) -> BrokerConfig:
        cfg = cls(
            host=t.text("host", "127.0.0.1"),
            port=t.integer("port", 1883, lo=1, hi=65535),
            client_id=t.text("client_id", default_client_id),
            username=t.text("username", None),
            password=t.secret("password"),
            tls=t.flag("tls", False),
            ca_file=t.path("ca_file", None),
            cert_file=t.path("cert_file", None),
            key_file=t.private_file("key_file", None),
            tls_insecure=t.flag("tls_insecure", False),
            keepalive_s=t.integer("keepalive_s", 30, lo=5, hi=3600),
            session_expiry_s=t.integer("session_expiry_s", 7 * 24 * 3600, lo=0, hi=2**32 - 1),
        )
        if cfg.password is not None and cfg.username is None:
            raise t.error("username", "is required when a password is set")
        if (cfg.cert_file is None) != (cfg.key_file is None):
            raise t.error("cert_file", "cert_file and key_file go together")
        t.done()
        return cfg
