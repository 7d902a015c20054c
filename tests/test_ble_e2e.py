"""The BLE collector end to end: a replayed site through the real site broker, forwarder, cloud
broker, ingester and sink; `kill -9` of the collector mid-replay; and the real bleak backend on
this machine, which has no Bluetooth.

The recording (`gateway.ble.recording`) is 20 devices over 10 minutes of their time, played at
SPEED times real time: BTHome plain and encrypted and RuuviTags, each measurement sent twice and
heard on two adapters (four advertisements for one reading), interleaved, one device falling
silent (stale), plus a device pillar does not list, a device with a wrong bindkey and garbage.
The audit checks `(device, boot, seq)`: no gap, no duplicate, each device's last seq as the
collector's status says; the content check: each measurement exactly once, in order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gateway.ble.advertisement import Advertisement
from gateway.ble.recording import BTHOME_UUID, Measurement, SimDevice, bthome_encrypted, sim_devices, site_recording
from gateway.ble.replay import dump
from saltmarsh.contract.mac import ble_device_id
from saltmarsh.ops.localfleet.configs import ble_device_rows, broker_table, write_config
from saltmarsh.ops.localfleet.fleet import LocalFleet
from saltmarsh.ops.localfleet.processes import ServiceProcess, wait_until
from saltmarsh.runtime.status import ServiceStatus
from tests.e2e import running_fleet

pytestmark = pytest.mark.timeout(240)

SPEED = 20.0
RECORDED_S = 600.0
INTERVAL_S = 5.0  # in the recording's time; SPEED times shorter on the wall
SILENT_AFTER_S = 150.0
STALE_FACTOR = 8.0  # of the wall interval: 2 s, well past a busy machine's scheduling delays
UNKNOWN_MAC = "C0:FF:EE:00:00:01"
WRONG_KEY = "00" * 16
COLLECTOR = "demo-gw1-ble"
PLAIN = bytes.fromhex("4002ca09")  # BTHome v2, 25.06 C
GARBAGE = bytes.fromhex("40ffff")  # BTHome v2, an object id no version defines


@dataclass
class Site:
    devices: list[SimDevice]
    taken: dict[str, list[Measurement]]
    recording: Path
    start_s: float  # the wall time the recording's first advertisement goes on the air
    first_s: float  # that advertisement's own time


def make_site(tmp_path: Path) -> Site:
    devices = sim_devices(20, interval_s=INTERVAL_S)
    devices[6] = replace(devices[6], silent_after_s=SILENT_AFTER_S)
    air, taken = site_recording(devices, RECORDED_S, adapters=("hci0", "hci1"), repeats=2)
    t0 = air[0].time_s
    extra = [
        # A thermometer nobody listed: heard, counted, never ingested.
        Advertisement.of(
            address=UNKNOWN_MAC,
            rssi=-80,
            time_s=t0 + 30,
            adapter="hci0",
            service_data={BTHOME_UUID: b"\x40\x02\xca\x09"},
        ),
        # Garbage from a listed device: counted by reason, nothing minted.
        Advertisement.of(
            address=devices[0].mac,
            rssi=-70,
            time_s=t0 + 31,
            adapter="hci0",
            service_data={BTHOME_UUID: b"\x40\xff\xff"},
        ),
    ]
    wrong = next(d for d in devices if d.bindkey is not None)
    extra += [
        # Sealed with a key that is not the one pillar gives: a decrypt failure, counted for that MAC.
        Advertisement.of(
            address=wrong.mac,
            rssi=-71,
            time_s=t0 + 32 + n,
            adapter="hci1",
            service_data={
                BTHOME_UUID: bthome_encrypted(
                    wrong.mac, WRONG_KEY, 10_000 + n, packet_id=200 + n, temperature_c=1.0, humidity_pct=2.0
                )
            },
        )
        for n in range(3)
    ]
    air = sorted([*air, *extra], key=lambda a: a.time_s)
    recording = tmp_path / "site.jsonl"
    recording.write_text("".join(dump(a) + "\n" for a in air))
    return Site(devices, taken, recording, 0.0, air[0].time_s)


def collector_config(fleet: LocalFleet, site: Site, keys_dir: Path, start_in_s: float = 2.0) -> Path:
    """The collector's config; its recording goes on the air `start_in_s` from now, restarts or not."""
    site.start_s = time.time() + start_in_s
    devices = [
        {**row, "place": f"shelf {row['mac'][-2:]}"}
        for row in ble_device_rows(site.devices, keys_dir, expected_interval_s=INTERVAL_S / SPEED)
    ]
    doc = {
        "collector": COLLECTOR,
        "site": fleet.plan.site,
        "state_dir": str(fleet.layout.state_dir("ble")),
        "status_dir": str(fleet.plan.status_dir),
        "stale_factor": STALE_FACTOR,
        "scan": {
            "backend": "replay",
            "replay_file": str(site.recording),
            "replay_speed": SPEED,
            "replay_start_s": site.start_s,
        },
        "broker": broker_table(fleet.gateway_broker.port),
        "confirmations": dict(fleet.plan.confirmations),
        "devices": devices,
    }
    return write_config(fleet.layout.config_path("ble"), doc)


@contextmanager
def collector(fleet: LocalFleet, config: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess.service("ble", "gateway.ble", config, fleet.layout.log_path("ble")).start()
    try:
        yield process
    finally:
        process.stop()


def ble_status(fleet: LocalFleet) -> ServiceStatus | None:
    found = fleet.status_of("ble")
    return found[0] if found else None


def stored(fleet: LocalFleet) -> dict[str, list[tuple[str, int, int, str, dict[str, float], str | None]]]:
    """Per device: (boot, seq, ts_ms, kind, metrics, name) of every message the sink holds."""
    out: dict[str, list[Any]] = {}
    db = sqlite3.connect(f"file:{fleet.plan.sink_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT device, boot, seq, ts_ms, kind, metrics, name FROM messages ORDER BY ts_ms, seq")
        for device, boot, seq, ts_ms, kind, metrics, name in rows:
            out.setdefault(device, []).append((boot, seq, ts_ms, kind, json.loads(metrics), name))
    finally:
        db.close()
    return out


def temperatures(rows: list[Any]) -> list[float]:
    return [metrics["temperature"] for _, _, _, kind, metrics, _ in rows if kind == "reading"]


def wait_delivered(fleet: LocalFleet, site: Site, timeout_s: float) -> ServiceStatus:
    """Until the replay has played out and the collector's spool is empty."""
    end_s = site.start_s + RECORDED_S / SPEED

    def done() -> bool:
        status = ble_status(fleet)
        return (
            status is not None
            and time.time() > end_s
            and status.counters.get("scan_state") == "finished"
            and status.counters.get("spool_depth") == 0
            and status.counters.get("unconfirmed") == 0
        )

    assert wait_until(done, timeout_s), f"collector not done: {ble_status(fleet)}"
    status = ble_status(fleet)
    assert status is not None
    return status


def test_a_replayed_site_of_20_ble_devices_reaches_the_sink_once_each(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running_fleet(tmp_path / "fleet", sensors=1, readings_per_sensor=20, rate_hz=2.0) as fleet:
        with collector(fleet, collector_config(fleet, site, tmp_path / "keys")) as process:
            wait_delivered(fleet, site, timeout_s=RECORDED_S / SPEED + 60)
            assert process.returncode() is None, process.log_tail()
        # Stopped: its last status is final (the one before may be a second behind).
        assert process.returncode() == 0, process.log_tail()
        report = fleet.audit()
        rows = stored(fleet)
        status = ble_status(fleet)
        assert status is not None
        counters = status.counters

    assert report.ok, report
    assert report.duplicated == 0
    silent = site.devices[6]
    for device in site.devices:
        device_id = ble_device_id(device.mac)
        expected = [m.temperature_c for m in site.taken[device.mac]]
        assert temperatures(rows[device_id]) == expected, device.mac
        row = counters["devices"][device_id]
        assert row["last_seq"] == len(rows[device_id]), device_id
        assert row["readings"] == len(expected)
        assert row["duplicates_dropped"] == 3 * len(expected)  # 2 repeats x 2 adapters, 1 kept
    # One stale event while the recording played, for the device that fell silent, in the sink like
    # a reading; once the recording is over every device falls silent, and may be stale too.
    end_ms = (site.start_s + RECORDED_S / SPEED) * 1000
    events = [(d, r[2], r[5]) for d, rs in rows.items() for r in rs if r[3] == "event"]
    assert {name for _, _, name in events} == {"stale"}
    during = [(d, ts_ms) for d, ts_ms, _ in events if ts_ms < end_ms]
    assert [d for d, _ in during] == [ble_device_id(silent.mac)]
    silent_at_ms = (site.start_s + (site.taken[silent.mac][-1].time_s - site.first_s) / SPEED) * 1000
    limit_ms = INTERVAL_S / SPEED * STALE_FACTOR * 1000
    assert silent_at_ms + limit_ms <= during[0][1] <= silent_at_ms + limit_ms + 5_000
    assert ble_device_id(silent.mac) in counters["stale_devices"]
    # The unknown thermometer is listed, not ingested; the garbage and the wrong key are counted.
    assert [u["mac"] for u in counters["ble_unknown_devices"]] == [UNKNOWN_MAC]
    assert ble_device_id(UNKNOWN_MAC) not in rows
    assert counters["devices"][ble_device_id(site.devices[0].mac)]["bad_input"] == {"garbage_service_data": 1}
    wrong = next(d for d in site.devices if d.bindkey is not None)
    assert counters["devices"][ble_device_id(wrong.mac)]["decrypt_failures"] == 3
    # The Pi sensor beside them is whole too.
    assert len(rows[fleet.plan.device(0)]) == 20


def test_kill9_of_the_collector_mid_replay_loses_and_repeats_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running_fleet(tmp_path / "fleet", sensors=0) as fleet:
        config = collector_config(fleet, site, tmp_path / "keys")
        with collector(fleet, config) as process:
            assert wait_until(lambda: time.time() > site.start_s + RECORDED_S / SPEED * 0.4, 60)
            first = ble_status(fleet)
            assert first is not None and first.counters["readings_total"] > 100
            process.kill9()
            killed_at = time.time()
            time.sleep(1.0)
            process.start()
            restarted_at = time.time()
            wait_delivered(fleet, site, timeout_s=RECORDED_S / SPEED + 60)
        assert process.returncode() == 0, process.log_tail()
        report = fleet.audit()
        rows = stored(fleet)
        status = ble_status(fleet)
        assert status is not None

    assert report.ok, report
    assert report.duplicated == 0
    boots = {boot for device_rows in rows.values() for boot, *_ in device_rows}
    assert len(boots) == 2 and status.counters["boot"] == max(boots) != first.counters["boot"]
    heard_late = 0
    for device in site.devices:
        device_id = ble_device_id(device.mac)
        got = temperatures(rows[device_id])
        expected = site.taken[device.mac]
        # In order, each at most once: a subsequence of what the device sent ...
        it = iter(m.temperature_c for m in expected)
        assert all(t in it for t in got), device_id
        # ... missing only what went on the air while no collector was running.
        kept = set(got)
        for m in expected:
            if m.temperature_c not in kept:
                aired_s = site.start_s + (m.time_s - site.first_s) / SPEED
                assert killed_at - 1.5 <= aired_s <= restarted_at + 5.0, (device_id, m)
                heard_late += 1
        # Within each boot, seq counts from 1 with no gap (the audit), and the second boot's
        # readings all come after the first's.
        by_boot: dict[str, list[int]] = {}
        for boot, _seq, ts_ms, *_ in rows[device_id]:
            by_boot.setdefault(boot, []).append(ts_ms)
        if len(by_boot) == 2:
            old, new = sorted(by_boot)
            assert max(by_boot[old]) < min(by_boot[new]), device_id
    # What was missed is about the outage's worth, not more.
    outage_s = restarted_at - killed_at + 3.0
    assert heard_late <= len(site.devices) * (outage_s * SPEED / INTERVAL_S + 2)


def test_without_bluetooth_the_collector_says_so_retries_and_the_site_goes_on(tmp_path: Path) -> None:
    if Path("/run/dbus/system_bus_socket").exists() or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"):
        pytest.skip("this machine has a D-Bus system bus: the no-Bluetooth path cannot be shown here")
    with running_fleet(tmp_path / "fleet", sensors=1, readings_per_sensor=10, rate_hz=2.0) as fleet:
        doc = {
            "collector": COLLECTOR,
            "site": fleet.plan.site,
            "state_dir": str(fleet.layout.state_dir("ble")),
            "status_dir": str(fleet.plan.status_dir),
            "scan": {"backend": "bleak"},
            "broker": broker_table(fleet.gateway_broker.port),
            "devices": [{"mac": "54:48:E6:8F:80:A5", "kind": "bthome"}],
        }
        with collector(fleet, write_config(fleet.layout.config_path("ble"), doc)) as process:

            def retried() -> bool:
                status = ble_status(fleet)
                return status is not None and int(status.counters.get("scan_failures") or 0) >= 2

            assert wait_until(retried, 30), process.log_tail()
            status = ble_status(fleet)
            assert status is not None
            assert status.counters["ble"] == "ble: unavailable (no D-Bus system bus; is bluetoothd running?)"
            assert status.counters["scan_state"] == "unavailable"
            assert status.counters["connected"] is True
            assert process.returncode() is None
            log = fleet.layout.log_path("ble").read_text()
            assert "ble: unavailable (no D-Bus system bus; is bluetoothd running?)" in log
            assert wait_until(fleet.sensors_done, 30)
            report = fleet.audit()
    assert report.ok and report.readings == 10, report
