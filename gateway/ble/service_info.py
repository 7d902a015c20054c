"""An `Advertisement` as the object the Bluetooth-Devices parsers take: `BluetoothServiceInfoBleak`.

habluetooth defines it (home-assistant-bluetooth 2.0 only re-exports habluetooth's), and both
bthome-ble and ruuvitag-ble read from it. The parsers read the address, the name, the RSSI, the
service and manufacturer data and the time; they never connect, so the `BLEDevice` is a
placeholder without platform details, and the raw advertisement is left out: with `raw`,
bluetooth-sensor-state-data would re-parse the bytes itself instead of reading our fields.
"""

from __future__ import annotations

from bleak.backends.device import BLEDevice
from habluetooth import BluetoothServiceInfoBleak

from gateway.ble.advertisement import Advertisement


def to_service_info(advertisement: Advertisement) -> BluetoothServiceInfoBleak:
    # Home Assistant names a nameless device by its address, and bthome-ble's titles expect that.
    name = advertisement.name or advertisement.address
    return BluetoothServiceInfoBleak(
        name=name,
        address=advertisement.address,
        rssi=advertisement.rssi,
        manufacturer_data=advertisement.manufacturer_data_map,
        service_data=advertisement.service_data_map,
        service_uuids=[uuid for uuid, _ in advertisement.service_data],
        source=advertisement.adapter,
        device=BLEDevice(advertisement.address, name, None),
        advertisement=None,
        connectable=False,
        time=advertisement.time_s,
        tx_power=None,
    )
