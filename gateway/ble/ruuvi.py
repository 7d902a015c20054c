"""RuuviTag (data formats 3, 5, 6 and E1) through ruuvitag-ble.

ruuvitag-ble keeps no per-advertisement state and does not deduplicate; data format 5 carries a
measurement sequence for that, which the intake deduplicates on. The sequence is read by the
library's own format 5 decoder, chosen by the format byte through the library's own table of
decoders (as its parser chooses), and only once the parser has accepted the advertisement.
"""

from __future__ import annotations

import struct

from habluetooth import BluetoothServiceInfoBleak
from ruuvitag_ble import RuuvitagBluetoothDeviceData
from ruuvitag_ble.df5_decoder import DataFormat5Decoder
from ruuvitag_ble.parser import decoder_classes

from gateway.ble.parsed import Parsed
from gateway.ble.reasons import BadReason
from gateway.ble.updates import FreshValues

RUUVI_COMPANY_ID = 0x0499  # Ruuvi Innovations Ltd. (1177)
SEQUENCE_UNAVAILABLE = 0xFFFF  # "not available" in data format 5


class RuuviParser:
    """One RuuviTag: the library's parser and its last values."""

    def __init__(self) -> None:
        self._parser = RuuvitagBluetoothDeviceData()
        self._fresh = FreshValues()

    def parse(self, service_info: BluetoothServiceInfoBleak) -> Parsed:
        try:
            update = self._parser.update(service_info)
        except (ValueError, IndexError):
            # Each format's decoder refuses data shorter than its format ("at least 24 bytes");
            # an empty payload fails reading its format byte.
            self._recover()
            return Parsed(bad=BadReason.TRUNCATED)
        except struct.error:
            # Reached only past the length check above, so the data is longer than its format.
            self._recover()
            return Parsed(bad=BadReason.OVERSIZED)
        except Exception:  # anything else the library raises on hostile bytes, counted
            self._recover()
            return Parsed(bad=BadReason.GARBAGE)
        fresh = self._fresh.take(update)
        if not fresh.metrics:
            # ruuvitag-ble returns without a value for a data format it has no decoder for.
            return Parsed(bad=BadReason.UNKNOWN_FORMAT)
        info = update.devices.get(None)
        return Parsed(
            metrics=fresh.metrics,
            units=fresh.units,
            model=info.model if info is not None else None,
            sequence=measurement_sequence(service_info.manufacturer_data.get(RUUVI_COMPANY_ID, b"")),
        )

    def _recover(self) -> None:
        if not self._fresh.resync():
            self._parser = RuuvitagBluetoothDeviceData()


def measurement_sequence(raw: bytes) -> int | None:
    """Data format 5's measurement sequence, None for other formats or when the tag has none."""
    if not raw or decoder_classes.get(raw[0]) is not DataFormat5Decoder:
        return None
    try:
        sequence = DataFormat5Decoder(raw).measurement_sequence_number
    except (ValueError, struct.error):
        return None
    return None if sequence == SEQUENCE_UNAVAILABLE else sequence
