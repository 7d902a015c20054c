"""A BLE device's MAC address, and the saltmarsh device id derived from it.

One spelling keeps one device one key: BlueZ and bleak report addresses upper-case with colons,
pillar and operators may write them with dashes or in lower case. The device id is `ble-` and
the twelve hex digits in lower case: stable for the device's life, and valid as a topic level.
"""

from __future__ import annotations

import re

from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.topics import check_id

MAC_PATTERN = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){5}\Z")
BLE_DEVICE_PREFIX = "ble-"


def normalize_mac(address: str) -> str:
    """`a4-c1-38-8d-18-b2` or `a4:c1:...` to `A4:C1:38:8D:18:B2`; ValidationError if it is no MAC."""
    text = address.strip().upper().replace("-", ":") if isinstance(address, str) else address
    if not isinstance(text, str) or not MAC_PATTERN.fullmatch(text):
        raise ValidationError(Reason.INVALID_VALUE, "address", f"{str(address)[:40]!r} is not a MAC address")
    return text


def ble_device_id(address: str) -> str:
    """The device id of a MAC address, in any of the spellings `normalize_mac` accepts."""
    return check_id("device", BLE_DEVICE_PREFIX + normalize_mac(address).replace(":", "").lower())
