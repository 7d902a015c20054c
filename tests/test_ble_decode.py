"""The BLE intake as tables: advertisements in, exactly one counter and the right reading out.

Dedup (repeats on any adapter, bthome-ble's packet ids, Ruuvi sequences), bad input by reason,
health per device, the record's own validation, replay files, and the real bleak backend on a
machine without a D-Bus system bus. Payload bytes come from the parser libraries' own tests
(see tests/test_ble_vectors.py); no test touches the network or a radio.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ble import (
    Advertisement,
    BadReason,
    BleakBackend,
    BleReading,
    Decoder,
    DuplicateReason,
    Intake,
    Kind,
    ReplayBackend,
    ScanState,
    ScanStatus,
    device_id_for,
    keep_scanning,
    normalize_mac,
)
from gateway.ble.bleak_backend import NO_SYSTEM_BUS, describe_failure, or_patterns
from gateway.ble.bthome import BTHOME_UUIDS
from gateway.ble.dedup import RepeatFilter, SequenceFilter
from gateway.ble.replay import dump, load, parse_line
from gateway.ble.ruuvi import RUUVI_COMPANY_ID
from saltmarsh.contract.errors import ConfigError, ReplayError, ValidationError
from saltmarsh.runtime.backoff import BackoffPolicy

T0 = 1767225600.0
V2 = "0000fcd2-0000-1000-8000-00805f9b34fb"
ATC, ENC, TAG, TAG2 = "A4:C1:38:8D:18:B2", "54:48:E6:8F:80:A5", "C8:25:2D:8E:EF:AF", "C8:25:2D:8E:00:03"
BINDKEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
WRONG_KEY = bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")
PLAIN = "400009015d025d0903b718"  # bthome-ble: packet id 9, battery, temperature, humidity
PLAIN_TH = "4002ca0903bf13"  # bthome-ble: 25.06 °C, 50.55 %
KEYED = "41a47266c95f730011223378237214"  # bthome-ble: encrypted 25.06 °C, 50.55 %
UNKEYED = "41d2fcefe52eb212d600112233bc38c966"  # bthome-ble: encrypted, for a key that is not ours
DF5 = "0505a060a0c89afd34028cff006376726976dead7b3fefaf"  # ruuvitag-ble: data format 5
DF3 = "03b20c1fca20007a002603d0088f"  # ruuvitag-ble: data format 3
FIXTURE = Path(__file__).parent / "data" / "ble" / "site.jsonl"
NO_BUS_MESSAGE = "ble: unavailable (no D-Bus system bus; is bluetoothd running?)"


def bthome(address: str, hex_bytes: str, t: float = 0.0, adapter: str = "hci0", uuid: str = V2) -> Advertisement:
    return Advertisement.of(
        address=address,
        rssi=-60,
        time_s=T0 + t,
        adapter=adapter,
        name="ATC_8D18B2",
        service_data={uuid: bytes.fromhex(hex_bytes)},
    )


def ruuvi(address: str, hex_bytes: str, t: float = 0.0, adapter: str = "hci0") -> Advertisement:
    return Advertisement.of(
        address=address,
        rssi=-70,
        time_s=T0 + t,
        adapter=adapter,
        manufacturer_data={RUUVI_COMPANY_ID: bytes.fromhex(hex_bytes)},
    )


def intake(**bindkeys: bytes) -> Intake:
    """An intake whose bindkeys are given as MAC-with-underscores=key (ENC is `54_48_E6_8F_80_A5`)."""
    return Intake(Decoder({mac.replace("_", ":"): key for mac, key in bindkeys.items()}))


def outcome(result: BleReading | None, before: dict[str, Any], after: dict[str, Any]) -> str:
    """The one counter an advertisement moved: `reading`, `not_sensor`, `dup:<reason>` or `bad:<reason>`."""
    moved = []
    if after["readings"] != before["readings"]:
        moved.append("reading")
    if after["not_sensors"] != before["not_sensors"]:
        moved.append("not_sensor")
    moved += [f"dup:{r}" for r, n in after["duplicates"].items() if n != before["duplicates"].get(r, 0)]
    moved += [f"bad:{r}" for r, n in after["bad_input"].items() if n != before["bad_input"].get(r, 0)]
    assert len(moved) == 1, moved
    assert (result is not None) == (moved[0] == "reading")
    return moved[0]


def run(steps: list[Advertisement], into: Intake | None = None) -> list[str]:
    target = into or intake(**{"54_48_E6_8F_80_A5": BINDKEY})
    outcomes = []
    for advertisement in steps:
        before = target.counts.status()
        result = target.accept(advertisement)
        outcomes.append(outcome(result, before, target.counts.status()))
    return outcomes


# --- dedup: one reading per advertisement, however often and wherever it is heard -------------
# fmt: off
DEDUP_CASES: list[tuple[str, list[Advertisement], list[str]]] = [
    ("two adapters, one BTHome frame", [bthome(ATC, PLAIN), bthome(ATC, PLAIN, 0.005, "hci1")],
     ["reading", "dup:repeat"]),
    ("two adapters, the later copy first", [bthome(ATC, PLAIN, 0.005, "hci1"), bthome(ATC, PLAIN, 0.0)],
     ["reading", "dup:repeat"]),
    ("two adapters, one Ruuvi frame", [ruuvi(TAG, DF5), ruuvi(TAG, DF5, 0.01, "hci1")],
     ["reading", "dup:repeat"]),
    ("BTHome re-sent past the repeat window: bthome-ble's packet id",
     [bthome(ATC, PLAIN), bthome(ATC, PLAIN, 1.5, "hci1")],
     ["reading", "dup:packet_id"]),
    ("BTHome packet id again after 4 s: bthome-ble takes it as new", [bthome(ATC, PLAIN), bthome(ATC, PLAIN, 5.0)],
     ["reading", "reading"]),
    ("BTHome older packet id", [bthome(ATC, "400009"), bthome(ATC, "400008", 1.5)],
     ["reading", "dup:packet_id"]),
    ("Ruuvi format 5 sequence again", [ruuvi(TAG, DF5), ruuvi(TAG, DF5, 2.0)],
     ["reading", "dup:sequence"]),
    ("Ruuvi format 5 sequence after the window (a rebooted tag)", [ruuvi(TAG, DF5), ruuvi(TAG, DF5, 61.0)],
     ["reading", "reading"]),
    ("Ruuvi format 3 has no sequence: the same frame later is a reading", [ruuvi(TAG, DF3), ruuvi(TAG, DF3, 1.5)],
     ["reading", "reading"]),
    ("the same encrypted frame within 4 s: its counter", [bthome(ENC, KEYED), bthome(ENC, KEYED, 2.0, "hci1")],
     ["reading", "dup:same_encrypted"]),
    ("the same encrypted frame after 4 s: bthome-ble", [bthome(ENC, KEYED), bthome(ENC, KEYED, 5.0)],
     ["reading", "dup:same_encrypted"]),
    ("two devices, the same bytes: two readings", [bthome(ATC, PLAIN), bthome("A4:C1:38:00:00:01", PLAIN, 0.001)],
     ["reading", "reading"]),
]
# fmt: on


@pytest.mark.parametrize(("steps", "expected"), [c[1:] for c in DEDUP_CASES], ids=[c[0] for c in DEDUP_CASES])
def test_dedup(steps: list[Advertisement], expected: list[str]) -> None:
    assert run(steps) == expected


def test_dedup_counts_per_device_and_in_total() -> None:
    target = intake()
    run([bthome(ATC, PLAIN), bthome(ATC, PLAIN, 0.005, "hci1"), bthome(ATC, PLAIN, 1.5, "hci1")], target)
    device = target.health.get(ATC)
    assert device is not None
    assert (device.adverts, device.readings, device.duplicates_dropped) == (3, 1, 2)
    assert dict(device.duplicates) == {DuplicateReason.REPEAT: 1, DuplicateReason.PACKET_ID: 1}
    assert device.rssi_by_adapter == {"hci0": -60, "hci1": -60}
    assert target.counts.status()["duplicates"] == {"packet_id": 1, "repeat": 1}


# --- bad input, by reason; never a reading, never an exception --------------------------------
# fmt: off
BAD_CASES: list[tuple[str, Advertisement, BadReason]] = [
    ("BTHome empty service data", bthome(ATC, ""), BadReason.TRUNCATED),
    ("BTHome encrypted, too short to decrypt", bthome(ENC, "41ba0db07aeef600"), BadReason.TRUNCATED),
    ("Ruuvi empty manufacturer data", ruuvi(TAG, ""), BadReason.TRUNCATED),
    ("Ruuvi format 5 cut short", ruuvi(TAG, DF5[:-2]), BadReason.TRUNCATED),
    ("Ruuvi format 3 cut short", ruuvi(TAG2, "03b20c"), BadReason.TRUNCATED),
    ("Ruuvi format 5 one byte long", ruuvi(TAG, DF5 + "00"), BadReason.OVERSIZED),
    ("service data longer than an AD structure holds", bthome(ATC, "40" + "02ca09" * 100), BadReason.OVERSIZED),
    ("Ruuvi data format 7", ruuvi(TAG, "07" + "00" * 23), BadReason.UNKNOWN_FORMAT),
    ("BTHome version 7", bthome(ATC, "e102000c0404138a01"), BadReason.UNKNOWN_FORMAT),
    ("BTHome unknown object id", bthome(ATC, "40feca09"), BadReason.GARBAGE),
    ("BTHome header and nothing else", bthome(ATC, "40"), BadReason.GARBAGE),
    ("BTHome wrong key", bthome(ENC, UNKEYED), BadReason.DECRYPT_FAILED),
    ("BTHome encrypted, no key configured", bthome(ATC, KEYED), BadReason.MISSING_BINDKEY),
    ("BTHome plaintext from a keyed device", bthome(ENC, PLAIN_TH), BadReason.DOWNGRADE),
]
# fmt: on


@pytest.mark.parametrize(("advertisement", "reason"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_counted_by_reason(advertisement: Advertisement, reason: BadReason) -> None:
    target = intake(**{"54_48_E6_8F_80_A5": BINDKEY})
    assert target.accept(advertisement) is None
    assert target.counts.status()["bad_input"] == {reason.value: 1}
    assert target.counts.readings == 0
    device = target.health.get(advertisement.address)
    assert device is not None
    assert dict(device.bad) == {reason: 1}
    assert device.decrypt_failures == (1 if reason.is_decrypt_failure else 0)


def test_a_downgrade_raises_one_alert_per_device_per_interval() -> None:
    target = intake(**{"54_48_E6_8F_80_A5": BINDKEY})
    assert run([bthome(ENC, KEYED), bthome(ENC, PLAIN_TH, 2.0), bthome(ENC, "4002cb0903bf13", 3.0)], target) == [
        "reading",
        "bad:downgrade",
        "bad:downgrade",
    ]
    alerts = target.take_alerts()
    assert [(a.device_id, a.address, a.ts_ms) for a in alerts] == [("ble-5448e68f80a5", ENC, round((T0 + 2) * 1000))]
    assert (target.counts.alerts, target.counts.alerts_held_back) == (1, 1)
    assert target.take_alerts() == []
    target.accept(bthome(ENC, PLAIN_TH, 2.0 + 601))
    assert len(target.take_alerts()) == 1


def test_a_bad_advertisement_does_not_leak_into_the_next_reading() -> None:
    """A parser that fails midway keeps no half-set values for the next advertisement."""
    target = intake()
    assert run([ruuvi(TAG, DF5), ruuvi(TAG, DF5 + "00", 1.0), ruuvi(TAG, DF3, 2.0)], target) == [
        "reading",
        "bad:oversized",
        "reading",
    ]
    reading = target.accept(ruuvi(TAG, "03b28145ca20007a002603d0088f", 3.0))
    assert reading is not None
    assert reading.metrics["temperature"] == -1.69
    assert "movement_counter" not in reading.metrics  # a format 5 value, not carried into format 3


def test_not_sensors_are_counted_and_not_tracked() -> None:
    target = intake()
    phone = Advertisement.of(
        address="4C:11:22:33:44:55", rssi=-50, time_s=T0, adapter="hci0", manufacturer_data={0x004C: b"\x10\x05"}
    )
    assert run([phone, phone]) == ["not_sensor", "not_sensor"]
    target.accept(phone)
    assert len(target.health) == 0


ADDRESSES = st.sampled_from([ATC, ENC, TAG])
PAYLOAD_KINDS = st.sampled_from([*sorted(BTHOME_UUIDS), "ruuvi"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(ADDRESSES, PAYLOAD_KINDS, st.binary(max_size=300), st.floats(0, 10)), min_size=1, max_size=12)
)
def test_random_bytes_never_raise_and_always_count(frames: list[tuple[str, str, bytes, float]]) -> None:
    target = intake(**{"54_48_E6_8F_80_A5": BINDKEY, "C8_25_2D_8E_EF_AF": WRONG_KEY})
    for address, where, payload, t in frames:
        if where == "ruuvi":
            data: dict[str, Any] = {"manufacturer_data": {RUUVI_COMPANY_ID: payload}}
        else:
            data = {"service_data": {where: payload}}
        advertisement = Advertisement.of(address=address, rssi=-60, time_s=T0 + t, adapter="hci0", **data)
        before = target.counts.status()
        result = target.accept(advertisement)
        outcome(result, before, target.counts.status())
        if result is not None:
            assert result.metrics or result.events
    counts = target.counts
    assert counts.heard == len(frames)
    assert counts.heard == counts.readings + counts.not_sensors + sum(counts.duplicates.values()) + sum(
        counts.bad.values()
    )


# --- health ----------------------------------------------------------------------------------
def test_health_rate_rssi_and_last_seen() -> None:
    target = intake()
    # 30 advertisements a minute for two minutes, alternating adapters.
    for n in range(60):
        target.accept(bthome(ATC, PLAIN, n * 2.0, "hci0" if n % 2 else "hci1"))
    status = target.status(T0 + 120.0)["devices"]["ble-a4c1388d18b2"]  # type: ignore[index]
    assert status["adverts"] == 60
    assert status["adverts_per_min"] == 30.0
    assert status["last_seen_ms"] == round((T0 + 118.0) * 1000)
    assert status["last_seen_age_s"] == 2.0
    assert status["rssi_by_adapter"] == {"hci0": -60, "hci1": -60}
    assert status["kind"] == "bthome"
    assert target.status(T0 + 400.0)["devices"]["ble-a4c1388d18b2"]["adverts_per_min"] == 0.0  # type: ignore[index]


# --- the record and the device id ------------------------------------------------------------
GOOD = {"address": ATC, "rssi": -60, "service_data": (), "manufacturer_data": (), "time_s": T0, "adapter": "hci0"}
# fmt: off
RECORD_REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("lower-case MAC", {"address": ATC.lower()}, "address"),
    ("short MAC", {"address": "A4:C1:38:8D:18"}, "address"),
    ("MAC with a newline", {"address": ATC + "\n"}, "address"),
    ("rssi as bool", {"rssi": True}, "rssi"),
    ("rssi as float", {"rssi": -60.5}, "rssi"),
    ("rssi above a signed byte", {"rssi": 128}, "rssi"),
    ("service data as dict", {"service_data": {V2: b""}}, "service_data"),
    ("service data UUID not 128-bit", {"service_data": (("fcd2", b""),)}, "service_data"),
    ("service data UUID upper-case", {"service_data": ((V2.upper(), b""),)}, "service_data"),
    ("service data twice", {"service_data": ((V2, b""), (V2, b"\x01"))}, f"service_data.{V2}"),
    ("service data as str", {"service_data": ((V2, "40"),)}, f"service_data.{V2}"),
    ("company id past 16 bits", {"manufacturer_data": ((0x10000, b""),)}, "manufacturer_data"),
    ("company id negative", {"manufacturer_data": ((-1, b""),)}, "manufacturer_data"),
    ("manufacturer data as list", {"manufacturer_data": ((1177, [5]),)}, "manufacturer_data.1177"),
    ("time NaN", {"time_s": float("nan")}, "time_s"),
    ("time zero", {"time_s": 0}, "time_s"),
    ("time as str", {"time_s": "now"}, "time_s"),
    ("adapter empty", {"adapter": ""}, "adapter"),
    ("adapter with a slash", {"adapter": "hci0/x"}, "adapter"),
    ("name too long", {"name": "x" * 249}, "name"),
]
# fmt: on


@pytest.mark.parametrize(("change", "field"), [c[1:] for c in RECORD_REJECTIONS], ids=[c[0] for c in RECORD_REJECTIONS])
def test_record_rejects(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Advertisement(**{**GOOD, **change})
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("spelling", "device_id"),
    [(ATC, "ble-a4c1388d18b2"), ("a4:c1:38:8d:18:b2", "ble-a4c1388d18b2"), ("A4-C1-38-8D-18-B2", "ble-a4c1388d18b2"),
     (" 54:48:e6:8f:80:a5 ", "ble-5448e68f80a5")],
)  # fmt: skip
def test_device_id_is_stable_and_a_topic_level(spelling: str, device_id: str) -> None:
    assert device_id_for(spelling) == device_id
    hex_digits = device_id[len("ble-") :].upper()
    assert normalize_mac(spelling) == ":".join(hex_digits[i : i + 2] for i in range(0, 12, 2))


@pytest.mark.parametrize(
    "bad", ["", "A4C1388D18B2", "A4:C1:38:8D:18:B2:00", "G4:C1:38:8D:18:B2", "A4:C1:38:8D:18:B2/x"]
)
def test_device_id_refuses_what_is_no_mac(bad: str) -> None:
    with pytest.raises(ValidationError):
        device_id_for(bad)


def test_a_bindkey_must_be_16_bytes() -> None:
    with pytest.raises(ConfigError, match="bindkey"):
        Decoder({ENC: b"short"}).decode(bthome(ENC, KEYED), Kind.BTHOME)


# --- filters on their own --------------------------------------------------------------------
def test_repeat_window_opens_at_the_first_copy() -> None:
    repeats = RepeatFilter(window_s=1.0)
    times = [0.0, 0.4, 0.8, 1.2, 1.6, 2.3]
    assert [repeats.is_repeat(bthome(ATC, PLAIN, t)) for t in times] == [False, True, True, False, True, False]


def test_sequence_filter_is_per_device_and_bounded() -> None:
    sequences = SequenceFilter(window_s=60.0, per_device=2)
    assert [sequences.is_duplicate(TAG, s, T0) for s in (1, 1, 2, 3, 1)] == [False, True, False, False, False]
    assert sequences.is_duplicate(TAG2, 1, T0) is False


# --- replay -----------------------------------------------------------------------------------
def test_replay_line_round_trips() -> None:
    advertisement = Advertisement.of(
        address=ATC, rssi=-61, time_s=T0 + 0.25, adapter="hci1", name="ATC_8D18B2",
        service_data={V2: bytes.fromhex(PLAIN)}, manufacturer_data={RUUVI_COMPANY_ID: bytes.fromhex(DF5)},
    )  # fmt: skip
    assert parse_line(dump(advertisement)) == advertisement


# fmt: off
REPLAY_REJECTIONS: list[tuple[str, str, str | None]] = [
    ("not JSON", "{", None),
    ("a list", "[]", None),
    ("no address", '{"t": 1767225600, "rssi": -60, "adapter": "hci0"}', "address"),
    ("no time", '{"address": "A4:C1:38:8D:18:B2", "rssi": -60, "adapter": "hci0"}', "t"),
    ("unknown field", '{"t": 1767225600, "address": "A4:C1:38:8D:18:B2", "rssi": -60, "adapter": "hci0", "x": 1}', "x"),
    ("bad MAC", '{"t": 1767225600, "address": "nope", "rssi": -60, "adapter": "hci0"}', "address"),
    ("bytes not hex", '{"t": 1767225600, "address": "A4:C1:38:8D:18:B2", "rssi": -60, "adapter": "hci0", '
                      '"manufacturer_data": {"1177": "zz"}}', "manufacturer_data.1177"),
    ("company id not decimal", '{"t": 1767225600, "address": "A4:C1:38:8D:18:B2", "rssi": -60, "adapter": "hci0", '
                               '"manufacturer_data": {"0x499": "05"}}', "manufacturer_data.0x499"),
]
# fmt: on


@pytest.mark.parametrize(("line", "column"), [c[1:] for c in REPLAY_REJECTIONS], ids=[c[0] for c in REPLAY_REJECTIONS])
def test_replay_rejects_a_bad_record_naming_the_line(line: str, column: str | None) -> None:
    with pytest.raises(ReplayError) as caught:
        parse_line(line, "site.jsonl", 7)
    assert (caught.value.source, caught.value.line, caught.value.column) == ("site.jsonl", 7, column)


def test_replay_of_a_recorded_site_through_the_intake() -> None:
    records = load(FIXTURE)
    target = intake(**{"54_48_E6_8F_80_A5": BINDKEY})
    readings: list[BleReading] = []
    statuses: list[ScanStatus] = []

    def emit(advertisement: Advertisement) -> None:
        reading = target.accept(advertisement)
        if reading is not None:
            readings.append(reading)

    asyncio.run(keep_scanning(ReplayBackend(records, source="site.jsonl"), emit, asyncio.Event(), statuses.append))
    assert [s.state for s in statuses] == [ScanState.STARTING, ScanState.SCANNING, ScanState.FINISHED]
    assert statuses[1].message == "ble: scanning (11 advertisements from site.jsonl)"
    assert [(r.device_id, r.ts_ms, r.adapter) for r in readings] == [
        ("ble-a4c1388d18b2", 1767225600000, "hci0"),
        ("ble-c8252d8eefaf", 1767225600200, "hci0"),
        ("ble-5448e68f80a5", 1767225604000, "hci0"),
        ("ble-a4c1388d18b2", 1767225610000, "hci0"),
    ]
    assert readings[0].metrics == {"packet_id": 9.0, "battery": 93.0, "temperature": 23.97, "humidity": 63.27}
    assert readings[2].metrics == {"temperature": 25.06, "humidity": 50.55} and readings[2].encrypted
    assert target.counts.status() == {
        "heard": 11,
        "not_sensors": 1,
        "readings": 4,
        "duplicates": {"packet_id": 1, "repeat": 2, "sequence": 1},
        "bad_input": {"downgrade": 1, "truncated": 1},
        "alerts": 1,
        "alerts_held_back": 0,
    }


def test_replay_paced_and_rebased_stops_when_told() -> None:
    records = [bthome(ATC, "400009", 0.0), bthome(ATC, "40000a", 0.02), bthome(ATC, "40000b", 60.0)]
    heard: list[Advertisement] = []

    async def main() -> None:
        stop = asyncio.Event()
        backend = ReplayBackend(records, speed=1.0, rebase=True, clock=lambda: T0 + 1000)

        def emit(advertisement: Advertisement) -> None:
            heard.append(advertisement)
            if len(heard) == 2:
                asyncio.get_running_loop().call_later(0.05, stop.set)

        await asyncio.wait_for(backend.run(emit, stop, lambda _: None), 5)

    asyncio.run(main())
    assert [a.time_s for a in heard] == [T0 + 1000, T0 + 1000.02]


# --- the real radio, on a machine without one -------------------------------------------------
def scan_until(failures: int, backend: BleakBackend) -> tuple[list[ScanStatus], int]:
    """Run `keep_scanning` until it has failed `failures` times; count a neighbour task's ticks."""
    statuses: list[ScanStatus] = []
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        stop = asyncio.Event()

        def report(status: ScanStatus) -> None:
            statuses.append(status)
            if status.failures >= failures:
                stop.set()

        async def neighbour() -> None:  # the forwarder's stand-in: it must keep running
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        await asyncio.wait_for(
            asyncio.gather(
                keep_scanning(backend, lambda _: None, stop, report, policy=BackoffPolicy(0.02, 0.05)), neighbour()
            ),
            20,
        )

    asyncio.run(main())
    return statuses, ticks


def check_unavailable(statuses: list[ScanStatus], ticks: int, caplog: pytest.LogCaptureFixture) -> None:
    assert statuses[0] == ScanStatus(ScanState.STARTING, "bleak on default")
    unavailable = statuses[1:-1]
    assert [s.message for s in unavailable] == [NO_BUS_MESSAGE] * 3
    assert [s.failures for s in unavailable] == [1, 2, 3]
    assert all(s.retry_in_s is not None and 0 <= s.retry_in_s <= 0.05 for s in unavailable)
    assert statuses[-1].state is ScanState.STOPPED
    assert ticks > 3
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [NO_BUS_MESSAGE] * 3


def test_no_system_bus_is_reported_and_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Wherever it runs: point D-Bus at a socket that does not exist, as a machine without one is."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-system-bus'}")
    caplog.set_level(logging.WARNING, logger="gateway.ble")
    check_unavailable(*scan_until(3, BleakBackend()), caplog)


@pytest.mark.skipif(
    bool(os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")) or Path("/var/run/dbus/system_bus_socket").exists(),
    reason="this machine has a D-Bus system bus",
)
def test_this_machine_has_no_bluetooth_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.ble")
    check_unavailable(*scan_until(3, BleakBackend()), caplog)


# fmt: off
FAILURES: list[tuple[str, Callable[[], BaseException], str]] = [
    ("socket missing", lambda: FileNotFoundError(2, "No such file or directory"), NO_SYSTEM_BUS),
    ("socket refused", lambda: ConnectionRefusedError(111, "Connection refused"), NO_SYSTEM_BUS),
]
# fmt: on


@pytest.mark.parametrize(("make", "reason"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_describe_failure(make: Callable[[], BaseException], reason: str) -> None:
    assert describe_failure(make()) == reason


def test_passive_scan_listens_for_bthome_and_ruuvi_as_on_the_air() -> None:
    contents = sorted(pattern.content_of_pattern for pattern in or_patterns())
    # UUID16s 0x181C, 0x181E, 0xFCD2 and company id 0x0499, little-endian.
    assert contents == sorted([b"\x1c\x18", b"\x1e\x18", b"\xd2\xfc", b"\x99\x04"])
