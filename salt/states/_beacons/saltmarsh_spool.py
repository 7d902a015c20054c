"""Salt beacon: the gateway forwarder's spool on the event bus.

Reads the forwarder's status file (`<status_dir>/forwarder-<gateway id>.json`, written by
`saltmarsh.runtime.status`) and fires one event per forwarder, tagged `salt/beacon/<minion>/saltmarsh_spool/<id>`:

    {"gateway_id": "gw1", "spool_depth": 0, "oldest_unsent_age_s": 0.0, "drain_rate": 0.0,
     "evicted_total": 0, "unconfirmed": 0, "oldest_unconfirmed_age_s": 0.0,
     "stale": false, "updated_ms": 1732270000123}

`unconfirmed` is what the gateway has sent up that no ingester has yet confirmed committed to the
sink (it stays in the spool until then), and `oldest_unconfirmed_age_s` how long the oldest of it
has waited: a sink outage shows here first.

The gateway's BLE collector (`<status_dir>/ble-<collector>.json`) has a spool too, and its event
(tag `<collector>`) adds its scan state and each BLE device's health:

    {"collector": "gw1-ble", "ble": "ble: scanning (bleak on hci0)", "spool_depth": 0, ...,
     "devices": {"ble-5448e68f80a5": {"last_seen_age_s": 12.0, "adverts_per_min": 4.0,
                 "rssi": -71, "decrypt_failures": 0, "duplicates_dropped": 9, "stale": false}},
     "unknown_devices": 2, "stale": false, "updated_ms": 1732270000123}

`stale` is true when the file has not been rewritten for `stale_after_s` (the forwarder is hung or
down): the backlog numbers are then the last ones it reported.

    beacons:
      saltmarsh_spool:
        - status_dir: /run/saltmarsh/status
        - stale_after_s: 30
        - interval: 30
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__virtualname__ = "saltmarsh_spool"

FIELDS = (
    "spool_depth",
    "oldest_unsent_age_s",
    "drain_rate",
    "evicted_total",
    "unconfirmed",
    "oldest_unconfirmed_age_s",
)
DEFAULT_STATUS_DIR = "/run/saltmarsh/status"


def __virtual__() -> str:
    return __virtualname__


def _merged(config: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, dict):
        return dict(config)
    merged: dict[str, Any] = {}
    for item in config:
        merged.update(item)
    return merged


def validate(config: Any) -> tuple[bool, str]:
    if not isinstance(config, list | dict):
        return False, "saltmarsh_spool beacon configuration must be a list"
    settings = _merged(config)
    if not isinstance(settings.get("status_dir", DEFAULT_STATUS_DIR), str):
        return False, "saltmarsh_spool: status_dir must be a path"
    stale = settings.get("stale_after_s", 30)
    if isinstance(stale, bool) or not isinstance(stale, int | float) or stale <= 0:
        return False, "saltmarsh_spool: stale_after_s must be a positive number"
    return True, "Valid beacon configuration"


BLE_DEVICE_FIELDS = ("last_seen_age_s", "adverts_per_min", "rssi", "decrypt_failures", "duplicates_dropped", "stale")


def _read(path: Path) -> tuple[dict[str, Any], int, str] | None:
    try:
        doc = json.loads(path.read_text())
        return dict(doc["counters"]), int(doc["updated_ms"]), str(doc["instance"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_spools(status_dir: Path, stale_after_s: float, now_ms: int) -> list[dict[str, Any]]:
    """One event per readable forwarder and BLE collector status file; a file being replaced is read next time."""
    events: list[dict[str, Any]] = []
    for path in sorted(status_dir.glob("forwarder-*.json")):
        read = _read(path)
        if read is None:
            continue
        counters, updated_ms, gateway_id = read
        event: dict[str, Any] = {"tag": gateway_id, "gateway_id": gateway_id, "updated_ms": updated_ms}
        for field in FIELDS:
            event[field] = counters.get(field)
        event["stale"] = now_ms - updated_ms > stale_after_s * 1000
        events.append(event)
    for path in sorted(status_dir.glob("ble-*.json")):
        read = _read(path)
        if read is None:
            continue
        counters, updated_ms, collector = read
        event = {"tag": collector, "collector": collector, "updated_ms": updated_ms, "ble": counters.get("ble")}
        for field in FIELDS:
            event[field] = counters.get(field)
        devices = counters.get("devices")
        event["devices"] = {
            str(device): {field: row.get(field) for field in BLE_DEVICE_FIELDS}
            for device, row in (devices.items() if isinstance(devices, dict) else ())
            if isinstance(row, dict)
        }
        unknown = counters.get("ble_unknown_devices")
        event["unknown_devices"] = len(unknown) if isinstance(unknown, list) else 0
        event["stale"] = now_ms - updated_ms > stale_after_s * 1000
        events.append(event)
    return events


def beacon(config: Any) -> list[dict[str, Any]]:
    settings = _merged(config)
    status_dir = Path(settings.get("status_dir", DEFAULT_STATUS_DIR))
    return read_spools(status_dir, float(settings.get("stale_after_s", 30)), int(time.time() * 1000))
