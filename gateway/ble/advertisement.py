"""One BLE advertisement as a scanner heard it: the record every backend delivers.

It holds what the parsers need and nothing a radio could not have sent: the sender's address,
the RSSI, the service data and manufacturer data exactly as received, when, and on which
adapter. It validates its shape (types, address format, value ranges) when made, so a bad
record from a backend or a replay file fails where it enters, naming the field. It does not
judge the payload bytes: that is the parsers' job, and bad payloads are counted, not refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from saltmarsh.contract.errors import Reason, ValidationError
from saltmarsh.contract.mac import MAC_PATTERN, normalize_mac

# bleak gives 128-bit UUIDs, lower-case; the parsers look service data up by exactly that form.
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
ADAPTER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MAX_NAME_CHARS = 248  # the longest local name a controller reports (Core spec, Vol 4, Part E 7.3.12)

ServiceData = tuple[tuple[str, bytes], ...]
ManufacturerData = tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Advertisement:
    """An advertisement; service and manufacturer data are sorted tuples, so records compare and hash."""

    address: str
    rssi: int
    service_data: ServiceData
    manufacturer_data: ManufacturerData
    time_s: float  # epoch seconds when the adapter heard it
    adapter: str  # `hci0`, or the replay's recorded adapter
    name: str | None = None  # the local name, when the device sent one

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not MAC_PATTERN.fullmatch(self.address):
            raise ValidationError(
                Reason.INVALID_VALUE, "address", f"{str(self.address)[:40]!r} is not an upper-case MAC address"
            )
        # RSSI is a signed byte on the HCI wire; anything outside it did not come from a controller.
        if isinstance(self.rssi, bool) or not isinstance(self.rssi, int):
            raise ValidationError(Reason.WRONG_TYPE, "rssi", f"expected integer, got {type(self.rssi).__name__}")
        if not -128 <= self.rssi <= 127:
            raise ValidationError(Reason.INVALID_VALUE, "rssi", f"{self.rssi} is outside -128..127 dBm")
        _check_service_data(self.service_data)
        _check_manufacturer_data(self.manufacturer_data)
        if isinstance(self.time_s, bool) or not isinstance(self.time_s, int | float):
            raise ValidationError(Reason.WRONG_TYPE, "time_s", f"expected number, got {type(self.time_s).__name__}")
        if not math.isfinite(self.time_s) or self.time_s <= 0:
            raise ValidationError(Reason.INVALID_VALUE, "time_s", f"{self.time_s} is not a positive epoch time")
        if not isinstance(self.adapter, str) or not ADAPTER_PATTERN.fullmatch(self.adapter):
            raise ValidationError(Reason.INVALID_VALUE, "adapter", f"{str(self.adapter)[:80]!r} is not an adapter name")
        if self.name is not None and (not isinstance(self.name, str) or len(self.name) > MAX_NAME_CHARS):
            raise ValidationError(Reason.INVALID_VALUE, "name", f"expected a string of at most {MAX_NAME_CHARS} chars")

    @classmethod
    def of(
        cls,
        *,
        address: str,
        rssi: int,
        time_s: float,
        adapter: str,
        service_data: Mapping[str, bytes] | None = None,
        manufacturer_data: Mapping[int, bytes] | None = None,
        name: str | None = None,
    ) -> Advertisement:
        """From the mappings bleak and the replay file use; the address and UUIDs are normalised first."""
        return cls(
            address=normalize_mac(address),
            rssi=rssi,
            service_data=tuple(sorted((str(uuid).lower(), value) for uuid, value in (service_data or {}).items())),
            manufacturer_data=tuple(sorted((manufacturer_data or {}).items())),
            time_s=time_s,
            adapter=adapter,
            name=name,
        )

    @property
    def service_data_map(self) -> dict[str, bytes]:
        return dict(self.service_data)

    @property
    def manufacturer_data_map(self) -> dict[int, bytes]:
        return dict(self.manufacturer_data)

    @property
    def content(self) -> tuple[str, ServiceData, ManufacturerData]:
        """What the device sent, without how it was heard: equal for two adapters hearing one advertisement."""
        return (self.address, self.service_data, self.manufacturer_data)


def _check_service_data(value: object) -> None:
    if not isinstance(value, tuple):
        raise ValidationError(Reason.WRONG_TYPE, "service_data", f"expected tuple, got {type(value).__name__}")
    seen: set[str] = set()
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValidationError(Reason.WRONG_TYPE, "service_data", "expected (uuid, bytes) pairs")
        uuid, data = item
        if not isinstance(uuid, str) or not UUID_PATTERN.fullmatch(uuid):
            raise ValidationError(Reason.INVALID_VALUE, "service_data", f"{str(uuid)[:60]!r} is not a lower-case UUID")
        if uuid in seen:
            raise ValidationError(Reason.INVALID_VALUE, f"service_data.{uuid}", "appears twice")
        seen.add(uuid)
        if not isinstance(data, bytes):
            raise ValidationError(
                Reason.WRONG_TYPE, f"service_data.{uuid}", f"expected bytes, got {type(data).__name__}"
            )


def _check_manufacturer_data(value: object) -> None:
    if not isinstance(value, tuple):
        raise ValidationError(Reason.WRONG_TYPE, "manufacturer_data", f"expected tuple, got {type(value).__name__}")
    seen: set[int] = set()
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValidationError(Reason.WRONG_TYPE, "manufacturer_data", "expected (company id, bytes) pairs")
        company, data = item
        # A company identifier is 16 bits (Bluetooth Assigned Numbers, section 7).
        if isinstance(company, bool) or not isinstance(company, int) or not 0 <= company <= 0xFFFF:
            raise ValidationError(Reason.INVALID_VALUE, "manufacturer_data", f"{company!r} is not a 16-bit company id")
        if company in seen:
            raise ValidationError(Reason.INVALID_VALUE, f"manufacturer_data.{company}", "appears twice")
        seen.add(company)
        if not isinstance(data, bytes):
            raise ValidationError(
                Reason.WRONG_TYPE, f"manufacturer_data.{company}", f"expected bytes, got {type(data).__name__}"
            )
