"""`make demo` on the embedded default: a short run through a cut uplink must audit clean.

And its exit codes: 1 when a service it started dies (the run is checked, and it is wrong), 2
when it cannot run at all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from saltmarsh.ops.cli import main
from saltmarsh.ops.localfleet.fleet import FleetPlan, LocalFleet, ble_site

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_demo_runs_and_audits_clean(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    # The demo's 4 BLE thermometers (its default) measure for as long as the sensors produce.
    _, _, taken = ble_site(FleetPlan(demo_dir, readings_per_sensor=60, rate_hz=5, ble_devices=4))
    ble_readings = sum(len(m) for m in taken.values())
    assert ble_readings >= 4 * 5
    result = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "demo",
            f"DEMO_ARGS=--sensors 3 --rate 5 --duration 12 --outage 4 --dir {demo_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "stopping the cloud broker" in out
    assert "cloud broker back" in out
    assert "+ 4 BLE thermometers (replay)" in out
    assert f"{180 + ble_readings} readings, 0 lost, 0 duplicated" in out, out
    assert (demo_dir / "state" / "ingester" / "saltmarsh.db").exists()


@pytest.mark.slow
def test_a_service_dying_mid_run_exits_1_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    start = LocalFleet.start

    def start_then_kill_the_forwarder(fleet: LocalFleet) -> None:
        start(fleet)
        fleet.forwarder.kill9()

    monkeypatch.setattr(LocalFleet, "start", start_then_kill_the_forwarder)
    argv = ["demo", "--sensors", "1", "--rate", "5", "--duration", "5", "--outage", "0", "--dir", str(tmp_path)]
    assert main(argv) == 1
    assert "demo: forwarder exited -9" in capsys.readouterr().err


def test_elasticsearch_without_a_url_exits_2_before_starting_anything(tmp_path: Path) -> None:
    assert main(["demo", "--sink", "elasticsearch", "--dir", str(tmp_path / "demo")]) == 2
    assert not (tmp_path / "demo").exists()
