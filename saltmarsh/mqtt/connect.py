"""The one place that turns a BrokerConfig into a WireClient: identity, credentials and TLS.

The WireClient twin of `saltmarsh.mqtt.paho.make_client`, with the same TLS rules.
"""

from __future__ import annotations

import ssl

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.mqtt.wire import WireClient


def tls_context(cfg: BrokerConfig) -> ssl.SSLContext | None:
    """None without TLS; else certificate-verifying, with the client certificate if configured."""
    if not cfg.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cfg.ca_file is not None:
        context.load_verify_locations(cafile=str(cfg.ca_file))
    else:
        context.load_default_certs()
    if cfg.cert_file is not None and cfg.key_file is not None:
        context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    if cfg.tls_insecure:
        # Like paho's tls_insecure_set: the chain is still verified, only the name is not.
        context.check_hostname = False
    return context


def wire_client(cfg: BrokerConfig, *, clean_start: bool, receive_maximum: int | None = None) -> WireClient:
    """An unconnected client for `cfg`; call `connect()`."""
    return WireClient(
        cfg.host,
        cfg.port,
        cfg.client_id,
        clean_start=clean_start,
        keepalive_s=cfg.keepalive_s,
        session_expiry_s=cfg.session_expiry_s,
        receive_maximum=receive_maximum,
        username=cfg.username,
        password=cfg.password.reveal() if cfg.password else None,
        tls_context=tls_context(cfg),
    )
