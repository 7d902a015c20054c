"""`saltmarsh status` text: counters one a line, a BLE collector's devices one a line under it."""

from __future__ import annotations

import pytest

from saltmarsh.ops.cli import format_counters

DEVICE = {
    "mac": "54:48:E6:8F:80:A5",
    "kind": "bthome",
    "place": "cold room",
    "last_seq": 12,
    "last_seen_age_s": 4.2,
    "adverts_per_min": 8.0,
    "rssi": -70,
    "duplicates_dropped": 30,
    "decrypt_failures": 2,
    "bad_input": {"missing_bindkey": 2},
    "stale": True,
}


@pytest.mark.parametrize(
    ("counters", "lines"),
    [
        (
            {"spool_depth": 3, "publish_rate": 1.5},
            ["    publish_rate                 1.50", "    spool_depth                  3"],
        ),
        ({"intake": {"heard": 2}}, ['    intake                       {"heard": 2}']),
        (
            {"devices": {"ble-5448e68f80a5": DEVICE}},
            [
                "    devices                      1",
                "      ble-5448e68f80a5   54:48:E6:8F:80:A5  bthome  'cold room'  seq 12  seen 4s ago  8.0/min"
                '  rssi -70  dup 30  decrypt_failures 2  bad {"missing_bindkey": 2}  STALE',
            ],
        ),
        (
            {"devices": {"ble-000000000001": {"mac": "00:00:00:00:00:01", "kind": "ruuvi", "last_seq": 0}}},
            [
                "    devices                      1",
                "      ble-000000000001   00:00:00:00:00:01  ruuvi  -  seq 0  never heard  0/min  rssi None  dup 0"
                "  decrypt_failures 0",
            ],
        ),
        (
            {"ble_unknown_devices": [{"mac": "C0:FF:EE:00:00:01", "heard": 3}]},
            ["    ble_unknown_devices          1", '      {"mac": "C0:FF:EE:00:00:01", "heard": 3}'],
        ),
    ],
)
def test_status_lines(counters: dict[str, object], lines: list[str]) -> None:
    assert format_counters(counters) == lines
