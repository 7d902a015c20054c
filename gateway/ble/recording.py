"""A simulated site's BLE air: the advertisements a set of thermometers would send, for a replay.

The BLE collector's tests, its bench, the demo and the lab feed it recordings made here, written
with `replay.dump` as the JSON lines the replay backend reads. Each device makes one measurement
every `interval_s` and sends it `repeats` times a moment apart (as BTHome and Ruuvi firmware do,
so that one gets through), heard on each of the `adapters`; so every measurement arrives as
several advertisements, which the collector must turn into exactly one reading. A device with
`silent_after_s` stops then: it goes stale.

This encodes advertisements, it never decodes them: the formats are BTHome v2 (plain, and
AES-CCM encrypted with a bindkey, as the BTHome spec and `bthome-ble`'s tests lay them out) and
RuuviTag data format 5. The collector decodes with the maintained parser libraries only, and
`tests/test_ble_vectors.py` holds the libraries' own vectors; a recording that does not decode
as `expected` says so in the end-to-end test.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from gateway.ble.advertisement import Advertisement
from saltmarsh.contract.mac import normalize_mac

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"  # BTHome v2
BTHOME_UUID16 = b"\xd2\xfc"  # 0xFCD2, little-endian, as the nonce carries it
RUUVI_COMPANY = 0x0499
REPEAT_GAP_S = 0.1
ADAPTER_SKEW_S = 0.004  # the second adapter hears the same packet a few ms later


@dataclass(frozen=True, slots=True)
class SimDevice:
    mac: str
    kind: str  # "bthome" or "ruuvi"
    interval_s: float = 5.0
    bindkey: str | None = None  # hex: an encrypted BTHome device
    silent_after_s: float | None = None
    base_c: float = 21.0

    def __post_init__(self) -> None:
        if self.mac != normalize_mac(self.mac):
            raise ValueError(f"{self.mac!r} is not AA:BB:CC:DD:EE:FF")


def sim_devices(
    count: int, *, interval_s: float = 5.0, encrypted_every: int = 4, ruuvi_every: int = 3
) -> list[SimDevice]:
    """`count` devices: every `ruuvi_every`th a RuuviTag, every `encrypted_every`th BTHome encrypted."""
    out = []
    for n in range(1, count + 1):
        mac = normalize_mac(f"a4:c1:38:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}")
        if n % ruuvi_every == 0:
            out.append(SimDevice(mac, "ruuvi", interval_s, base_c=18 + n % 7))
        elif n % encrypted_every == 0:
            out.append(SimDevice(mac, "bthome", interval_s, bindkey=f"{n:032x}", base_c=19 + n % 5))
        else:
            out.append(SimDevice(mac, "bthome", interval_s, base_c=20 + n % 6))
    return out


def bthome_plain(packet_id: int, temperature_c: float, humidity_pct: float) -> bytes:
    return b"\x40" + _bthome_objects(packet_id, temperature_c, humidity_pct)


def bthome_encrypted(
    mac: str, bindkey: str, counter: int, *, packet_id: int, temperature_c: float, humidity_pct: float
) -> bytes:
    device_info = b"\x41"
    count = struct.pack("<I", counter & 0xFFFFFFFF)
    nonce = bytes.fromhex(mac.replace(":", "")) + BTHOME_UUID16 + device_info + count
    sealed = AESCCM(bytes.fromhex(bindkey), tag_length=4).encrypt(
        nonce, _bthome_objects(packet_id, temperature_c, humidity_pct), None
    )
    return device_info + sealed[:-4] + count + sealed[-4:]


def _bthome_objects(packet_id: int, temperature_c: float, humidity_pct: float) -> bytes:
    # Object ids in ascending order, as the spec asks: 0x00 packet id, 0x02 temperature, 0x03 humidity.
    temperature, humidity = round(temperature_c * 100), round(humidity_pct * 100)
    return struct.pack("<BBBhBH", 0x00, packet_id & 0xFF, 0x02, temperature, 0x03, humidity)


def ruuvi_v5(
    mac: str, sequence: int, *, temperature_c: float, humidity_pct: float, pressure_hpa: float, battery_mv: int
) -> bytes:
    power = ((battery_mv - 1600) << 5) | ((4 + 40) // 2)  # +4 dBm transmit power
    return struct.pack(
        ">BhHHhhhHBH6s",
        5,
        round(temperature_c / 0.005),
        round(humidity_pct / 0.0025),
        round(pressure_hpa * 100 - 50000),
        12,
        -8,
        1020,
        power,
        sequence % 255,
        sequence & 0xFFFF,
        bytes.fromhex(mac.replace(":", "")),
    )


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a device measured once: the reading the collector must make of its advertisements."""

    mac: str
    time_s: float
    temperature_c: float
    humidity_pct: float


def measurements(device: SimDevice, duration_s: float, start_s: float, rng: random.Random) -> list[Measurement]:
    out = []
    t = rng.uniform(0, device.interval_s)  # devices are not in step
    while t < duration_s and (device.silent_after_s is None or t < device.silent_after_s):
        temperature = round(device.base_c + 2 * math.sin(t / 300) + rng.uniform(-0.2, 0.2), 2)
        humidity = round(50 + 5 * math.cos(t / 400) + rng.uniform(-0.5, 0.5), 2)
        out.append(Measurement(device.mac, start_s + t, temperature, humidity))
        t += device.interval_s
    return out


def advertisements(
    device: SimDevice, taken: Sequence[Measurement], *, repeats: int, adapters: Sequence[str]
) -> Iterable[Advertisement]:
    for n, m in enumerate(taken, start=1):
        if device.kind == "ruuvi":
            manufacturer = {
                RUUVI_COMPANY: ruuvi_v5(
                    device.mac,
                    n,
                    temperature_c=m.temperature_c,
                    humidity_pct=m.humidity_pct,
                    pressure_hpa=1001.5,
                    battery_mv=2900,
                )
            }
            service: dict[str, bytes] = {}
        else:
            payload = (
                bthome_plain(n, m.temperature_c, m.humidity_pct)
                if device.bindkey is None
                else bthome_encrypted(
                    device.mac,
                    device.bindkey,
                    n,
                    packet_id=n,
                    temperature_c=m.temperature_c,
                    humidity_pct=m.humidity_pct,
                )
            )
            manufacturer, service = {}, {BTHOME_UUID: payload}
        for copy in range(repeats):
            for a, adapter in enumerate(adapters):
                yield Advertisement.of(
                    address=device.mac,
                    rssi=-60 - a * 7 - copy,
                    time_s=m.time_s + copy * REPEAT_GAP_S + a * ADAPTER_SKEW_S,
                    adapter=adapter,
                    service_data=service,
                    manufacturer_data=manufacturer,
                )


def site_recording(
    devices: Sequence[SimDevice],
    duration_s: float,
    *,
    start_s: float = 1_700_000_000.0,
    repeats: int = 2,
    adapters: Sequence[str] = ("hci0",),
    seed: int = 1,
) -> tuple[list[Advertisement], dict[str, list[Measurement]]]:
    """The site's advertisements in time order, and each device's measurements (what must arrive)."""
    rng = random.Random(seed)
    taken = {d.mac: measurements(d, duration_s, start_s, rng) for d in devices}
    air = [a for d in devices for a in advertisements(d, taken[d.mac], repeats=repeats, adapters=adapters)]
    air.sort(key=lambda a: (a.time_s, a.address, a.adapter))
    return air, taken
