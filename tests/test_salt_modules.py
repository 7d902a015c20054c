"""The formula's custom Salt modules as plain functions: unit parsing and the spool beacon."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from saltmarsh.runtime.status import write_status
from tests.salt_support import STATES


def load_salt_module(relative: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, STATES / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


svc = load_salt_module("_modules/saltmarsh_svc.py", "saltmarsh_svc_under_test")
spool = load_salt_module("_beacons/saltmarsh_spool.py", "saltmarsh_spool_under_test")


def test_dropin_resets_and_replaces_exec_start() -> None:
    unit = "[Unit]\nDescription=x\n[Service]\nExecStartPre=/bin/mkdir -p /run/m\nExecStart=/usr/sbin/mosquitto -c /a\n"
    dropin = (
        "[Service]\nExecStartPre=\nExecStart=\nExecStart=/usr/sbin/mosquitto \\\n  -c /b.conf\nRestart=on-failure\n"
    )
    section = svc.parse_service_section([unit, dropin])
    assert section["ExecStart"] == ["/usr/sbin/mosquitto  -c /b.conf"]
    assert section["ExecStartPre"] == []
    assert section["Restart"] == ["on-failure"]


def test_spool_beacon_reports_each_forwarder(tmp_path: Path) -> None:
    counters = {
        "spool_depth": 42,
        "oldest_unsent_age_s": 3.5,
        "drain_rate": 100.0,
        "evicted_total": 0,
        "unconfirmed": 7,
        "oldest_unconfirmed_age_s": 1.25,
        "other": 1,
    }
    write_status(tmp_path, "forwarder", "gw1", counters)
    write_status(tmp_path, "sensor", "s1", {"spool_depth": 9})
    (tmp_path / "forwarder-torn.json").write_text("{")
    now_ms = json.loads((tmp_path / "forwarder-gw1.json").read_text())["updated_ms"]
    events = spool.read_spools(tmp_path, 30, now_ms)
    assert events == [
        {
            "tag": "gw1",
            "gateway_id": "gw1",
            "updated_ms": now_ms,
            "spool_depth": 42,
            "oldest_unsent_age_s": 3.5,
            "drain_rate": 100.0,
            "evicted_total": 0,
            "unconfirmed": 7,
            "oldest_unconfirmed_age_s": 1.25,
            "stale": False,
        }
    ]
    assert spool.read_spools(tmp_path, 30, now_ms + 31_000)[0]["stale"] is True


def test_spool_beacon_reports_the_ble_collector_and_each_of_its_devices(tmp_path: Path) -> None:
    device = {
        "mac": "54:48:E6:8F:80:A5",
        "last_seq": 12,
        "last_seen_age_s": 4.0,
        "adverts_per_min": 8.0,
        "rssi": -70,
        "decrypt_failures": 2,
        "duplicates_dropped": 30,
        "stale": False,
    }
    counters = {
        "ble": "ble: unavailable (no D-Bus system bus; is bluetoothd running?)",
        "spool_depth": 3,
        "unconfirmed": 1,
        "devices": {"ble-5448e68f80a5": device, "bad": "row"},
        "ble_unknown_devices": [{"mac": "C0:FF:EE:00:00:01"}],
    }
    write_status(tmp_path, "ble", "gw1-ble", counters)
    now_ms = json.loads((tmp_path / "ble-gw1-ble.json").read_text())["updated_ms"]
    [event] = spool.read_spools(tmp_path, 30, now_ms)
    assert event["tag"] == event["collector"] == "gw1-ble"
    assert event["ble"] == counters["ble"]
    assert (event["spool_depth"], event["unconfirmed"], event["unknown_devices"]) == (3, 1, 1)
    assert event["devices"] == {
        "ble-5448e68f80a5": {k: device[k] for k in spool.BLE_DEVICE_FIELDS},
    }
    assert event["stale"] is False


def test_spool_beacon_validates_its_config() -> None:
    assert spool.validate([{"status_dir": "/run/saltmarsh/status"}, {"interval": 30}])[0] is True
    assert spool.validate([{"stale_after_s": -1}])[0] is False
    assert spool.validate("nope")[0] is False
