"""Each service's config as the TOML document it reads, for a fleet on loopback.

One builder per service (`sensor_config`, `forwarder_config`, `ingester_config`, `ble_config`)
takes, by name, the keys that service cannot run without; every other keyword is a setting, written as given and
overriding what the builder wrote. `write_config` writes any of them. Production configs are rendered by
Salt from pillar; these are the same keys, for the demo, the tests, the benches and the lab.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from gateway.ble.recording import SimDevice

LOOPBACK = "127.0.0.1"

ConfigDoc = dict[str, Any]


def broker_table(port: int, host: str = LOOPBACK, **settings: Any) -> ConfigDoc:
    """A `[broker]`, `[local]` or `[uplink]` table."""
    return {"host": host, "port": port, **settings}


def sensor_config(
    *, device: str, site: str, broker: Mapping[str, Any], state_dir: Path, status_dir: Path, **settings: Any
) -> ConfigDoc:
    return {
        "device": device,
        "site": site,
        "state_dir": str(state_dir),
        "status_dir": str(status_dir),
        "broker": dict(broker),
        **settings,
    }


def forwarder_config(
    *,
    gateway_id: str,
    site: str,
    local: Mapping[str, Any],
    uplink: Mapping[str, Any],
    state_dir: Path,
    status_dir: Path,
    **settings: Any,
) -> ConfigDoc:
    return {
        "gateway_id": gateway_id,
        "site": site,
        "state_dir": str(state_dir),
        "status_dir": str(status_dir),
        "local": dict(local),
        "uplink": dict(uplink),
        **settings,
    }


def ingester_config(
    *, ingester_id: str, broker: Mapping[str, Any], sink: Mapping[str, Any], status_dir: Path, **settings: Any
) -> ConfigDoc:
    return {
        "ingester_id": ingester_id,
        "status_dir": str(status_dir),
        "broker": dict(broker),
        "sink": dict(sink),
        **settings,
    }


def ble_config(
    *,
    collector: str,
    site: str,
    broker: Mapping[str, Any],
    state_dir: Path,
    status_dir: Path,
    scan: Mapping[str, Any],
    devices: Sequence[Mapping[str, Any]],
    **settings: Any,
) -> ConfigDoc:
    """The BLE collector's (`saltmarsh.config.ble`): `scan` a `[scan]` table, `devices` its `[[devices]]` rows."""
    return {
        "collector": collector,
        "site": site,
        "state_dir": str(state_dir),
        "status_dir": str(status_dir),
        "scan": dict(scan),
        "broker": dict(broker),
        "devices": [dict(row) for row in devices],
        **settings,
    }


def sqlite_sink(path: Path) -> ConfigDoc:
    return {"type": "sqlite", "path": str(path)}


def ble_device_rows(devices: Sequence[SimDevice], keys_dir: Path, **settings: Any) -> list[ConfigDoc]:
    """`[[devices]]` rows for simulated BLE devices, each encrypted one's bindkey in its own 0600 file
    under `keys_dir`; `settings` go in every row."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ConfigDoc] = []
    for device in devices:
        row: ConfigDoc = {"mac": device.mac, "kind": device.kind, **settings}
        if device.bindkey is not None:
            key = keys_dir / (device.mac.replace(":", "") + ".key")
            key.write_text(device.bindkey + "\n")
            key.chmod(0o600)
            row["bindkey_file"] = str(key)
        rows.append(row)
    return rows


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(dict(doc)))
    return path
