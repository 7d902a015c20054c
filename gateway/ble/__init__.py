"""BLE sensors heard by the gateway: battery thermometers that cannot run a sensor agent.

In:  advertisements from a scan backend, each an `Advertisement` (address, RSSI, service data,
     manufacturer data, time, adapter): the real radio through bleak (`BleakBackend`, one
     `BleakScanner` per adapter, passive where supported) or a recording (`ReplayBackend`,
     JSON lines), run by `keep_scanning`, which reports `ble: unavailable (<reason>)` and
     retries with backoff when there is no Bluetooth.
Out: `BleReading`s (device id from the MAC, time, metrics and units, model, adapter, RSSI), one
     per advertisement that carries new data, for the collector to mint with the contract's
     `mint`; `DowngradeAlert`s; and counters: per device (`HealthTable`: last seen, adverts per
     minute, RSSI, readings, duplicates dropped, decrypt failures, bad input by reason) and in
     total (`IntakeCounts`).

Parts, in the order an advertisement takes them (wired in `Intake.accept`):
- `decode.kind_of`: BTHome or Ruuvi by the service data UUID or company id it carries.
- `health`: the device's health counters, every advertisement counted.
- `dedup.RepeatFilter`: the same bytes again within a second, on any adapter.
- `decode.Decoder`: one parser per device, `update()` called exactly once per advertisement,
  through `service_info` (habluetooth's `BluetoothServiceInfoBleak`): `bthome` (bthome-ble,
  whose own packet-id, replay and downgrade decisions are observed, never redone) and `ruuvi`
  (ruuvitag-ble); `updates` picks this advertisement's values out of the parser's cumulative
  `SensorUpdate`. Advertisement bytes are never parsed here: the libraries do that.
- `dedup.SequenceFilter`: a Ruuvi format 5 measurement sequence already read.
Reasons for dropping are in `reasons`; device ids in `device_id`.
"""

from gateway.ble.advertisement import Advertisement
from gateway.ble.backend import BleUnavailable, ScanBackend
from gateway.ble.bleak_backend import BleakBackend
from gateway.ble.decode import Decoder, kind_of
from gateway.ble.dedup import RepeatFilter, SequenceFilter
from gateway.ble.device_id import device_id_for
from gateway.ble.health import DeviceHealth, HealthTable
from gateway.ble.intake import BleReading, DowngradeAlert, Intake, IntakeCounts
from gateway.ble.parsed import Kind, Parsed
from gateway.ble.reasons import BadReason, DuplicateReason
from gateway.ble.replay import ReplayBackend
from gateway.ble.supervise import ScanState, ScanStatus, keep_scanning
from saltmarsh.contract.mac import normalize_mac

__all__ = [
    "Advertisement",
    "BadReason",
    "BleReading",
    "BleUnavailable",
    "BleakBackend",
    "Decoder",
    "DeviceHealth",
    "DowngradeAlert",
    "DuplicateReason",
    "HealthTable",
    "Intake",
    "IntakeCounts",
    "Kind",
    "Parsed",
    "RepeatFilter",
    "ReplayBackend",
    "ScanBackend",
    "ScanState",
    "ScanStatus",
    "SequenceFilter",
    "device_id_for",
    "keep_scanning",
    "kind_of",
    "normalize_mac",
]
