"""BLE advertisements as a table: raw bytes in, the complete metrics (or the verdict) out.

The bytes, addresses, names, bindkeys and expected values are the parser libraries' own test
vectors: bthome-ble's tests/test_parser_v2.py (its ADVERTISEMENT_TIME too) and ruuvitag-ble 0.4's
tests/test_v3.py and tests/test_v5.py. Where a library test checks only the outcome (counters,
replays), the values are the ones bthome-ble 3.25 gives, and say so. Each row goes through the
gateway's own path: `Advertisement` -> `kind_of` -> `Decoder` (one parser call) -> `Parsed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.ble import Advertisement, BadReason, Decoder, DuplicateReason, Intake, Kind, Parsed, kind_of
from gateway.ble.ruuvi import RUUVI_COMPANY_ID

ADVERTISEMENT_TIME = 1709331995.5181565  # bthome-ble's tests
BTHOME_V2 = "0000fcd2-0000-1000-8000-00805f9b34fb"
BINDKEY = "231d39c1d7cc1ab1aee224cd096db932"
WRONG_KEY = "814aac74c4f17b6c1581e1ab87816b99"
ATC = "A4:C1:38:8D:18:B2"  # bthome-ble's plain device
ENC = "54:48:E6:8F:80:A5"  # bthome-ble's encrypted device
RUUVI = "00:00:00:00:00:00"  # ruuvitag-ble's tests/utils.py

TH = {"temperature": "°C", "humidity": "%"}
RUUVI_UNITS = {
    "temperature": "°C",
    "humidity": "%",
    "pressure": "hPa",
    "voltage": "mV",
    "acceleration_x": "m/s²",
    "acceleration_y": "m/s²",
    "acceleration_z": "m/s²",
    "acceleration_total": "m/s²",
}
Verdict = dict[str, float] | BadReason | DuplicateReason


@dataclass(frozen=True)
class Vector:
    id: str
    kind: Kind
    address: str
    name: str
    hex: str
    bindkey: str | None
    expect: Verdict
    units: dict[str, str] | None = None
    model: str | None = None
    firmware: str | None = None


def advertisement(
    kind: Kind, address: str, name: str, hex_bytes: str, time_s: float = ADVERTISEMENT_TIME
) -> Advertisement:
    payload = bytes.fromhex(hex_bytes)
    return Advertisement.of(
        address=address,
        rssi=-60,
        time_s=time_s,
        adapter="hci0",
        name=name,
        service_data={BTHOME_V2: payload} if kind is Kind.BTHOME else None,
        manufacturer_data={RUUVI_COMPANY_ID: payload} if kind is Kind.RUUVI else None,
    )


def decoder_for(address: str, bindkey: str | None) -> Decoder:
    return Decoder({address: bytes.fromhex(bindkey)} if bindkey else {})


B, R = Kind.BTHOME, Kind.RUUVI
T_H = "Temperature/Humidity sensor"
V2, V2_ENC = "BTHome BLE v2", "BTHome BLE v2 (encrypted)"
TH_25_06 = {"temperature": 25.06, "humidity": 50.55}
TH_25_07 = {"temperature": 25.07, "humidity": 50.55}
MBAR = {"pressure": "mbar"}
ACCEL = ("acceleration_x", "acceleration_y", "acceleration_z", "acceleration_total")
RUUVI_NO_ACCEL_UNITS = {k: v for k, v in RUUVI_UNITS.items() if k not in ACCEL}
DF5 = {"temperature": 7.2, "humidity": 61.84, "pressure": 1013.54, "voltage": 2395, "movement_counter": 114}
DF5_ACCEL = dict(zip(ACCEL, (-7.02, 6.39, -2.51, 9.82), strict=True))
DF3 = {"humidity": 89.0, "pressure": 1017.44, "voltage": 2191, **dict(zip(ACCEL, (1.2, 0.37, 9.57, 9.65), strict=True))}
DF5_HEX = "0505a060a0c89afd34028cff006376726976dead7b3fefaf"
DF5_BAD_ACCEL_HEX = "0505a060a0c89a8000028cff006376726976dead7b3fefaf"
TD = "TEST DEVICE"
DF3_HEX = "03b20c1fca20007a002603d0088f"
KEYED_FRAME = "41a47266c95f730011223378237214"  # bthome-ble's test_bindkey_correct
UNKEYED_FRAME = "41d2fcefe52eb212d600112233bc38c966"  # bthome-ble's test_bindkey_wrong
PID_T_H_BATTERY = {"packet_id": 9, "battery": 93, "temperature": 23.97, "humidity": 63.27}
# fmt: off
VECTORS = [
    # bthome-ble tests/test_parser_v2.py
    Vector("bthome-temperature-humidity", B, ATC, "ATC_8D18B2", "4002ca0903bf13", None, TH_25_06, TH, T_H, V2),
    Vector("bthome-encrypted", B, ENC, TD, KEYED_FRAME, BINDKEY, TH_25_06, TH, "BTHome sensor", V2_ENC),
    Vector("bthome-encrypted-with-mac", B, ENC, TD, "43a5808fe64854f196c06ffb4900112233f08ecbde", BINDKEY,
           TH_25_06, TH, "BTHome sensor", V2_ENC),
    Vector("bthome-encrypted-counter-1122867", B, ENC, TD, "41e445f3c9962b332211006c7c4519", BINDKEY,
           TH_25_06, TH),
    Vector("bthome-encrypted-counter-max", B, ENC, TD, "41ba0db07aeef6ffffffff21fd4600", BINDKEY, TH_25_07, TH),
    Vector("bthome-packet-id-temperature-humidity-battery", B, ATC, "ATC_8D18B2", "400009015d025d0903b718", None,
           PID_T_H_BATTERY, {"battery": "%", **TH}, T_H),
    Vector("bthome-packet-id", B, ATC, "ATC_8D18B2", "400009", None, {"packet_id": 9}, {}, T_H, V2),
    Vector("bthome-pressure", B, ATC, TD, "4004138a01", None, {"pressure": 1008.83}, MBAR, "BTHome sensor"),
    Vector("bthome-pressure-with-mac", B, ATC, TD, "42b2188d38c1a404138a01", None, {"pressure": 1008.83}, MBAR),
    Vector("bthome-illuminance", B, ATC, TD, "4005138a14", None, {"illuminance": 13460.67}, {"illuminance": "lx"}),
    Vector("bthome-mass-kg", B, ATC, TD, "40065e1f", None, {"mass": 80.3}, {"mass": "kg"}),
    Vector("bthome-mass-lb", B, ATC, TD, "40073e1d", None, {"mass": 74.86}, {"mass": "lb"}),
    Vector("bthome-dew-point", B, ATC, TD, "4008ca06", None, {"dew_point": 17.38}, {"dew_point": "°C"}),
    Vector("bthome-count", B, ATC, TD, "400960", None, {"count": 96}, {}),
    Vector("bthome-energy", B, ATC, TD, "400a138a14", None, {"energy": 1346.067}, {"energy": "kWh"}),
    Vector("bthome-power", B, ATC, TD, "400b021b00", None, {"power": 69.14}, {"power": "W"}),
    Vector("bthome-voltage", B, ATC, TD, "400c020c", None, {"voltage": 3.074}, {"voltage": "V"}),
    Vector("bthome-binary-generic", B, ATC, TD, "400f01", None, {"generic": 1.0}, {}),
    Vector("bthome-battery-then-wrong-object-id", B, ATC, "ATC_8D18B2", "40015dfe5d0903b718", None, {"battery": 93},
           {"battery": "%"}),
    Vector("bthome-wrong-object-id", B, ATC, "ATC_8D18B2", "40feca09", None, BadReason.GARBAGE),
    Vector("bthome-wrong-key", B, ATC, "Test Sensor", UNKEYED_FRAME, WRONG_KEY, BadReason.DECRYPT_FAILED),
    Vector("bthome-wrong-key-on-good-frame", B, ENC, TD, KEYED_FRAME, WRONG_KEY, BadReason.DECRYPT_FAILED),
    Vector("bthome-key-needed", B, ATC, "ATC_8D18B2", UNKEYED_FRAME, None, BadReason.MISSING_BINDKEY),
    Vector("bthome-encrypted-too-short", B, ENC, TD, "41ba0db07aeef600", BINDKEY, BadReason.TRUNCATED),
    Vector("bthome-v7-does-not-exist", B, ATC, ATC, "e102000c0404138a01", None, BadReason.UNKNOWN_FORMAT),
    Vector("bthome-plaintext-from-keyed-device", B, ENC, TD, "4002ca0903bf13", BINDKEY, BadReason.DOWNGRADE),
    # ruuvitag-ble tests/test_v5.py and tests/test_v3.py
    Vector("ruuvi-df5-outdoor", R, RUUVI, "Test", DF5_HEX, None, {**DF5, **DF5_ACCEL}, RUUVI_UNITS, "RuuviTag"),
    Vector("ruuvi-df5-invalid-acceleration", R, RUUVI, "Test", DF5_BAD_ACCEL_HEX, None, DF5, RUUVI_NO_ACCEL_UNITS),
    Vector("ruuvi-df3", R, RUUVI, "Test", DF3_HEX, None, {"temperature": 12.31, **DF3}, RUUVI_UNITS, "RuuviTag"),
    Vector("ruuvi-df3-subzero", R, RUUVI, "Test", "03b28145ca20007a002603d0088f", None, {"temperature": -1.69, **DF3},
           RUUVI_UNITS),
]
# fmt: on


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_vector(vector: Vector) -> None:
    adv = advertisement(vector.kind, vector.address, vector.name, vector.hex)
    assert kind_of(adv) is vector.kind
    parsed = decoder_for(vector.address, vector.bindkey).decode(adv, vector.kind)
    if isinstance(vector.expect, BadReason):
        assert parsed == Parsed(bad=vector.expect, encrypted=parsed.encrypted)
    elif isinstance(vector.expect, DuplicateReason):
        assert parsed.duplicate is vector.expect
    else:
        assert parsed.is_reading
        assert parsed.metrics == vector.expect
        assert all(isinstance(value, float) for value in parsed.metrics.values())
        if vector.units is not None:
            assert parsed.units == vector.units
        if vector.model is not None:
            assert parsed.model == vector.model
        if vector.firmware is not None:
            assert parsed.firmware == vector.firmware


def test_ruuvi_df5_sequence_is_read_by_the_library() -> None:
    adv = advertisement(R, RUUVI, "Test", DF5_HEX)
    # 26998 (0x6976) as ruuvitag-ble's DataFormat5Decoder reads it. (Read by eye, the vector's
    # "dead" looked like the sequence: it is not, which is the case for leaving bytes to the library.)
    assert Decoder().decode(adv, R).sequence == 26998
    df3 = advertisement(R, RUUVI, "Test", "03b20c1fca20007a002603d0088f")
    assert Decoder().decode(df3, R).sequence is None


Step = tuple[str, float, Verdict]
# fmt: off
SEQUENCES: list[tuple[str, str, str | None, list[Step]]] = [
    # bthome-ble test_identical_packet_id: 9, 9 again, then 8 (older), then 9 five seconds later.
    ("packet-id-repeat", ATC, None, [
        ("400009", 0, {"packet_id": 9}),
        ("400009", 0, DuplicateReason.PACKET_ID),
        ("400008", 0, DuplicateReason.PACKET_ID),
        ("400009", 5, {"packet_id": 9}),
    ]),
    # bthome-ble test_increasing_packet_id: 189, 190, 253, then 47 (rolled over past 255).
    ("packet-id-increasing", ATC, None, [
        ("4000bd", 0, {"packet_id": 189}),
        ("4000be", 0, {"packet_id": 190}),
        ("4000fd", 0, {"packet_id": 253}),
        ("40002f", 0, {"packet_id": 47}),
    ]),
    # bthome-ble test_increasing_encryption_counter: 1122867 then 1122868 (values: bthome-ble 3.25).
    ("counter-increasing", ENC, BINDKEY, [
        ("41e445f3c9962b332211006c7c4519", 0, {"temperature": 25.06, "humidity": 50.55}),
        ("413e932cc7175f34221100553876af", 0, {"temperature": 25.06, "humidity": 50.55}),
    ]),
    # bthome-ble test_decreasing_encryption_counter: 1122866 after 1122867 is a replay, refused.
    ("counter-decreasing", ENC, BINDKEY, [
        ("41e445f3c9962b332211006c7c4519", 0, {"temperature": 25.06, "humidity": 50.55}),
        ("41723d3035fb88322211009e7414c0", 0, BadReason.REPLAYED),
    ]),
    # bthome-ble test_reset_encryption_counter: 0xFFFFFFFF then 0, a wrap it accepts.
    ("counter-wraps", ENC, BINDKEY, [
        ("41ba0db07aeef6ffffffff21fd4600", 0, {"temperature": 25.07, "humidity": 50.55}),
        ("41de40b50e676600000000d7cb95de", 0, {"temperature": 25.07, "humidity": 50.55}),
    ]),
    # bthome-ble test_same_service_data: the same encrypted frame again. Within 4 s bthome-ble lets it
    # through and the equal counter makes it a duplicate here; after 4 s bthome-ble skips it itself.
    ("same-encrypted-frame", ENC, BINDKEY, [
        ("41e445f3c9962b332211006c7c4519", 0, {"temperature": 25.06, "humidity": 50.55}),
        ("41e445f3c9962b332211006c7c4519", 0, DuplicateReason.SAME_ENCRYPTED),
        ("41e445f3c9962b332211006c7c4519", 5, DuplicateReason.SAME_ENCRYPTED),
    ]),
]
# fmt: on


@pytest.mark.parametrize(("address", "bindkey", "steps"), [s[1:] for s in SEQUENCES], ids=[s[0] for s in SEQUENCES])
def test_sequence(address: str, bindkey: str | None, steps: list[Step]) -> None:
    decoder = decoder_for(address, bindkey)
    for number, (hex_bytes, offset_s, expect) in enumerate(steps, 1):
        adv = advertisement(B, address, "ATC_8D18B2", hex_bytes, ADVERTISEMENT_TIME + offset_s)
        parsed = decoder.decode(adv, B)
        if isinstance(expect, dict):
            assert parsed.metrics == expect, f"step {number}"
        elif isinstance(expect, DuplicateReason):
            assert parsed.duplicate is expect, f"step {number}"
        else:
            assert parsed.bad is expect, f"step {number}"


def test_wrong_key_is_a_counted_decrypt_failure_per_mac() -> None:
    intake = Intake(Decoder({ENC: bytes.fromhex(WRONG_KEY)}))
    frames = ["41a47266c95f730011223378237214", "41e445f3c9962b332211006c7c4519"]
    for offset, hex_bytes in enumerate(frames):
        assert intake.accept(advertisement(B, ENC, "TEST DEVICE", hex_bytes, ADVERTISEMENT_TIME + offset * 2)) is None
    health = intake.health.get(ENC)
    assert health is not None
    assert health.decrypt_failures == 2
    assert dict(health.bad) == {BadReason.DECRYPT_FAILED: 2}
    assert intake.counts.readings == 0
    assert intake.counts.status()["bad_input"] == {"decrypt_failed": 2}
    assert intake.status(ADVERTISEMENT_TIME + 2)["devices"]["ble-5448e68f80a5"]["decrypt_failures"] == 2  # type: ignore[index]
