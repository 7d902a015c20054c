"""The device's retained presence message on its status topic: online, or offline.

"offline" is also the MQTT last will, so the broker says it for us when the Pi loses power.
A will is registered at connect time, so it carries no timestamp; the explicit messages do.
"""

from __future__ import annotations

import json

from saltmarsh.config.sensor import SensorConfig
from saltmarsh.contract.topics import Channel, Topic

ONLINE = "online"
OFFLINE = "offline"


def status_topic(cfg: SensorConfig) -> str:
    return str(Topic(cfg.site, cfg.device, Channel.STATUS))


def presence(cfg: SensorConfig, boot: str, state: str, ts_ms: int | None = None) -> bytes:
    doc: dict[str, object] = {
        "v": 1,
        "kind": Channel.STATUS.value,
        "device": cfg.device,
        "site": cfg.site,
        "boot": boot,
        "state": state,
    }
    if ts_ms is not None:
        doc["ts"] = ts_ms
    for name, value in (("model", cfg.model), ("firmware", cfg.firmware)):
        if value is not None:
            doc[name] = value
    return json.dumps(doc, separators=(",", ":")).encode()
