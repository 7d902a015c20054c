"""The one place that turns a BrokerConfig into a connected paho-mqtt 2.x client (MQTT 5)."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from saltmarsh.config.broker import BrokerConfig
from saltmarsh.mqtt.codec import puback_delivered


def make_client(cfg: BrokerConfig, *, manual_ack: bool = False) -> mqtt.Client:
    """A client with identity, credentials and TLS applied; call `connect_client` to connect."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password.reveal() if cfg.password else None)
    if cfg.tls:
        client.tls_set(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.cert_file) if cfg.cert_file else None,
            keyfile=str(cfg.key_file) if cfg.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.tls_insecure_set(cfg.tls_insecure)
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    return client


def connect_properties(cfg: BrokerConfig, receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = cfg.session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def connect_client(
    client: mqtt.Client, cfg: BrokerConfig, *, clean_start: bool, receive_maximum: int | None = None
) -> None:
    """Connect asynchronously; paho's loop thread retries until the broker answers."""
    client.connect_async(
        cfg.host,
        cfg.port,
        keepalive=cfg.keepalive_s,
        clean_start=clean_start,
        properties=connect_properties(cfg, receive_maximum),
    )


def delivered(reason: ReasonCode) -> bool:
    """paho's side of the one delivery rule, `saltmarsh.mqtt.codec.puback_delivered`: a
    "No matching subscribers" PUBACK (0x10) is success-class, but the broker threw the message
    away, so the sender keeps it and tries again."""
    return puback_delivered(reason.value)
