"""A BLE device's saltmarsh id, derived from its MAC address.

`A4:C1:38:8D:18:B2` becomes `ble-a4c1388d18b2`: the same MAC gives the same id on every gateway
and at every restart, so its readings keep one `(device, boot, seq)` history; and the id is a
valid topic level and id (`saltmarsh.contract.topics.ID_PATTERN`: letters, digits, `_.-`,
starting with a letter), so the ACL can name it. The prefix keeps BLE ids apart from the ids
operators give their Pi sensors.
"""

from __future__ import annotations

from saltmarsh.contract.mac import BLE_DEVICE_PREFIX as PREFIX
from saltmarsh.contract.mac import ble_device_id as device_id_for

__all__ = ["PREFIX", "device_id_for"]
