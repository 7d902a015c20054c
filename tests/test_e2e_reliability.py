"""End to end with real brokers and real processes: each run ends with an audit of 0 lost, 0 duplicated.

The audit compares the sink with each sensor's own record of what it produced (boot and last
seq), so a missing tail counts as loss, not only gaps. The forwarder's and the ingester's kill -9
runs are the lab's chaos plans now (tests/test_lab.py: kill-brokers, ingester-and-sink), where the
units Salt rendered bring them back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from saltmarsh.ops.localfleet.fleet import LocalFleet
from tests.e2e import running_fleet, wait_until_audited

pytestmark = pytest.mark.slow

SENSORS = 3
RATE_HZ = 20.0


def _assert_clean(fleet: LocalFleet, timeout_s: float = 120.0) -> None:
    report = wait_until_audited(fleet, timeout_s)
    expected = SENSORS * fleet.plan.readings_per_sensor
    assert report.lost == 0, report
    assert report.duplicated == 0, report
    assert report.readings == expected, report
    assert set(fleet.expectations()) == {fleet.plan.device(i) for i in range(SENSORS)}


def test_steady_flow(tmp_path: Path) -> None:
    with running_fleet(tmp_path / "fleet", sensors=SENSORS, rate_hz=RATE_HZ, readings_per_sensor=200) as fleet:
        _assert_clean(fleet)


def test_cloud_broker_stopped_for_30s_mid_run(tmp_path: Path) -> None:
    # 38 s of readings: 5 s live, 30 s with the cloud down, then live again while the backlog drains.
    with running_fleet(tmp_path / "fleet", sensors=SENSORS, rate_hz=RATE_HZ, readings_per_sensor=760) as fleet:
        time.sleep(5)
        fleet.stop_cloud()
        time.sleep(30)
        spooled = sum(int(s.counters.get("spool_depth", 0)) for s in fleet.status_of("forwarder"))
        assert spooled > 0, "the gateway should be holding the outage's readings"
        fleet.start_cloud()
        _assert_clean(fleet)


def test_forwarder_restarted_while_cloud_down(tmp_path: Path) -> None:
    with running_fleet(tmp_path / "fleet", sensors=SENSORS, rate_hz=RATE_HZ, readings_per_sensor=400) as fleet:
        time.sleep(3)
        fleet.stop_cloud()
        time.sleep(3)
        fleet.forwarder.kill9()
        fleet.restart(fleet.forwarder)
        time.sleep(4)
        fleet.forwarder.stop()
        fleet.restart(fleet.forwarder)
        time.sleep(2)
        fleet.start_cloud()
        _assert_clean(fleet)


def test_gateway_broker_unreachable_from_sensors(tmp_path: Path) -> None:
    with running_fleet(tmp_path / "fleet", sensors=SENSORS, rate_hz=RATE_HZ, readings_per_sensor=400) as fleet:
        time.sleep(3)
        fleet.gateway_broker.stop()
        time.sleep(6)
        held = sum(int(s.counters.get("spool_depth", 0)) for s in fleet.status_of("sensor"))
        assert held > 0, "sensors should be spooling while their gateway is unreachable"
        fleet.gateway_broker.start()
        _assert_clean(fleet)
